"""`ldpool bench [--quick] [--out DIR] [--only SECTION]`: every suite in one
run, ld.so and KSM measured side by side with ldpool, written as a JSON
file with every figure (results.json), PNG plots and a Markdown report
(report.md).  ldpool's side is probed first; when the launcher or broker
does not work yet, its columns say "not available" and why."""
import json
import os
import time

from loader.errors import LdpoolError

from . import ksm, measure, runners
from . import suite_broker, suite_ksm, suite_memory, suite_reloc, suite_startup

SECTIONS = {
    "startup": suite_startup,
    "memory": suite_memory,
    "time_to_share": suite_ksm,
    "relocation": suite_reloc,
    "broker": suite_broker,
}


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="smaller N and fewer repetitions (< 3 minutes)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where to write results.json, the plots and report.md (default: ./ldpool-bench-DATE)")
    p.add_argument("--only", metavar="SECTION", action="append", choices=list(SECTIONS),
                   help="run only this section (repeatable): " + ", ".join(SECTIONS))


class Context:
    """What every suite gets: the mode, a private warm broker, whether
    ldpool's side works (and why not), and a progress callback."""

    def __init__(self, quick, step):
        self.quick = quick
        self.step = step
        self.broker = None
        self.broker_ok, self.broker_reason = False, ""
        self.ldpool_ok, self.ldpool_reason = False, ""

    def start(self):
        self.broker = runners.Broker()
        self.broker_ok = self.broker.start()
        self.broker_reason = "" if self.broker_ok else (self.broker.error or "broker did not start")
        if self.broker_ok:
            self.ldpool_ok, self.ldpool_reason = runners.probe(self.broker)
        else:
            self.ldpool_reason = self.broker_reason
            if not runners.ldpool_exec():
                self.ldpool_reason = "ldpool-exec is not on PATH; " + self.broker_reason

    def close(self):
        if self.broker:
            self.broker.close()


def collect(quick=False, only=None, step=lambda s: None, on_section=lambda name: None):
    """Run the suites; returns the results dict (the JSON's content)."""
    t0 = time.monotonic()
    leftover = ksm.available() and ksm.recover_leftover()
    res = {"machine": measure.machine_description(), "quick": quick,
           "ksm": {"available": ksm.available(), "writable": ksm.writable(),
                   "settings_before": ksm.settings() if ksm.available() else None,
                   "restored_leftover_settings": bool(leftover)}}
    ctx = Context(quick, step)
    try:
        step("starting a private broker and probing ldpool-exec")
        ctx.start()
        res["ldpool"] = {"available": ctx.ldpool_ok, "reason": ctx.ldpool_reason,
                         "broker_available": ctx.broker_ok, "broker_reason": ctx.broker_reason,
                         "ldpool_exec": runners.ldpool_exec()}
        for name, mod in SECTIONS.items():
            if only and name not in only:
                continue
            on_section(name)
            t = time.monotonic()
            try:
                res[name] = mod.run(ctx)
            except LdpoolError as e:  # the thing under test failed: say so, go on
                res[name] = {"available": False, "reason": f"ldpool failed: {e}"}
            except Exception as e:  # noqa: BLE001 -- one broken suite must not hide the others
                res[name] = {"available": False, "error": f"{type(e).__name__}: {e}"}
            res[name]["elapsed_s"] = round(time.monotonic() - t, 1)
    finally:
        ctx.close()
        if ksm.available():
            res["ksm"]["settings_after"] = ksm.settings()
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


def write(res, out_dir):
    from . import plots, report
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=False, default=str)
    pngs, why = plots.write_all(res, out_dir)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report.markdown(res, pngs, why))
    return pngs


def run(args):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    # SIGTERM/SIGHUP unwind like Ctrl-C: clients killed, brokers stopped,
    # KSM settings restored
    ksm.raise_on_termination()
    out_dir = args.out or "ldpool-bench-" + time.strftime("%Y%m%d-%H%M%S")
    names = [n for n in SECTIONS if not args.only or n in args.only]
    console = Console(stderr=True)
    cols = (SpinnerColumn(), TextColumn("[bold]{task.fields[section]}[/] {task.description}"),
            BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*cols, console=console, transient=False) as prog:
        task = prog.add_task("", total=len(names), section="bench")
        state = {"n": -1}

        def on_section(name):
            state["n"] += 1
            prog.update(task, completed=state["n"], section=name)

        def step(desc):
            prog.update(task, description=desc)
            if not console.is_terminal:
                console.print(f"ldpool bench: {desc}", highlight=False)

        res = collect(args.quick, args.only, step, on_section)
        prog.update(task, completed=len(names), description="writing results")
        write(res, out_dir)
    from . import report
    print(report.headline_text(res), flush=True)
    console.print(f"ldpool bench: results in {out_dir}/ (results.json, report.md, *.png)", highlight=False)
    return 0
