"""`ldpool demo`: the README's main job.  With a private (embedded) broker
it runs a handful of real programs through the pool, checks they behave as
under ld.so, and prints a short table of memory per process and start-up
time against ld.so, measured right then.  No root needed; the KSM
comparison runs only where /sys/kernel/mm/ksm is writable."""
import time

from . import ksm, measure, runners

STARTUP = ("xz", "openssl", "curl", "python3", "llc-14")
CLIENTS = 8


def add_arguments(p):
    p.add_argument("--pairs", type=int, default=9, metavar="N",
                   help="paired start-up runs per program (default 9)")
    p.add_argument("--clients", type=int, default=CLIENTS, metavar="N",
                   help=f"idle clients per program for the memory figures (default {CLIENTS})")
    p.add_argument("--ksm-seconds", type=int, default=20, metavar="S",
                   help="how long KSM gets to merge the ld.so clients (default 20)")


def run(args):
    from rich.console import Console
    from rich.table import Table
    # SIGTERM/SIGHUP unwind like Ctrl-C: clients killed, brokers stopped,
    # KSM settings restored
    ksm.raise_on_termination()
    console = Console()
    err = Console(stderr=True)
    rows_t, rows_m, notes = [], [], []
    with err.status("starting a private broker") as status:
        broker = runners.Broker()
        try:
            ok = broker.start()
            why = broker.error
            if ok:
                status.update("checking that ldpool-exec runs programs from the pool")
                ok, why = runners.probe(broker)
            if not ok:
                notes.append(f"ldpool is not available here: {why}. Showing ld.so alone.")
            for name in STARTUP:
                argv = runners.resolve(runners.PROGRAMS[name])
                if argv is None:
                    continue
                status.update(f"start-up: {name} under ld.so and through ldpool-exec")
                rows_t.append(_startup(name, argv, broker, ok, args.pairs))
            for name, argv in runners.IDLE_CLIENTS.items():
                if runners.resolve(argv) is None:
                    continue
                status.update(f"memory: {args.clients} x {name} under ld.so and through ldpool")
                row, note = _memory(name, argv, broker, ok, args.clients)
                rows_m.append(row)
                if note:
                    notes.append(f"{name} through ldpool: {note}")
            ksm_line = _ksm(status, args, broker, ok)
        finally:
            broker.close()

    t = Table(title="Start-up time (median of paired runs, measured now)")
    for col in ("program", "ld.so", "ldpool", "ldpool / ld.so", "same output"):
        t.add_column(col, justify="left" if col == "program" else "right")
    for r in rows_t:
        t.add_row(*r)
    console.print(t)
    m = Table(title=f"Memory per process, {args.clients} clients each (smaps)")
    for col in ("program", "ld.so Pss", "ldpool Pss", "+ broker / N", "ld.so private lib.", "ldpool private lib."):
        m.add_column(col, justify="left" if col == "program" else "right")
    for r in rows_m:
        m.add_row(*r)
    console.print(m)
    console.print("private lib. = Private_Dirty of the program and its non-glibc libraries: "
                  "what each process pays for relocated data. + broker / N = the broker's Pss (the Python "
                  "process and the relocated pool pages) shared out over the clients: ldpool's fixed cost.", style="dim")
    console.print(ksm_line)
    for n in notes:
        console.print(f"[bold yellow]note:[/] {n}")
    return 0 if ok else 1


def _ms(s):
    return f"{s * 1e3:.1f} ms"


def _startup(name, argv, broker, ok, pairs):
    if not ok:
        times = [measure.time_run(argv)[0] for _ in range(pairs)]
        return (name, _ms(sorted(times)[len(times) // 2]), "n/a", "n/a", "n/a")
    same, why = runners.verify_output(argv, broker)
    if not same:
        times = [measure.time_run(argv)[0] for _ in range(pairs)]
        return (name, _ms(sorted(times)[len(times) // 2]), "n/a", "n/a", f"no: {why}")
    p = measure.paired(argv, runners.ldpool_argv(argv), pairs, b_env=broker.env())
    return (name, _ms(p["a_median_s"]), _ms(p["b_median_s"]), f"{p['ratio_median']:.2f}x", "yes")


def _mib(kb):
    return f"{kb / 1024:.1f} MiB"


def _memory(name, argv, broker, ok, n):
    with runners.Clients(argv, n) as c:
        if not c.ready:
            return (name, "failed", "", "", "", ""), "under ld.so: " + c.failure()
        a, _ = measure.mean_memory(c.pids)
    b = note = None
    share = "n/a"
    if ok:
        with runners.Clients(argv, n, env=broker.env(), ldpool=True) as c:
            if c.ready:
                b, _ = measure.mean_memory(c.pids, broker.ranges(), broker.pool_paths)
                if broker.proc:
                    share = "+ " + _mib(measure.process_memory(broker.proc.pid)[1]["all"]["Pss"] / n)
            else:
                note = c.failure()
    row = (name, _mib(a["all"]["Pss"]), _mib(b["all"]["Pss"]) if b else "n/a", share,
           _mib(a["objects"]["Private_Dirty"]), _mib(b["objects"]["Private_Dirty"]) if b else "n/a")
    return row, note


def _ksm(status, args, broker, ok):
    if not ksm.writable():
        return "[dim]KSM comparison skipped: /sys/kernel/mm/ksm is not writable (needs root outside a container).[/]"
    argv = runners.IDLE_CLIENTS["llc-14"]
    if runners.resolve(argv) is None:
        return "[dim]KSM comparison skipped: llc-14 is not installed.[/]"
    n = min(args.clients, 8)
    status.update(f"KSM: {n} x llc-14 under ld.so, merging for {args.ksm_seconds} s")
    with ksm.Session(run=1, pages_to_scan=100, sleep_millisecs=20):
        cpu0 = ksm.ksmd_cpu_seconds()
        with runners.Clients(argv, n, ksm_merge=True) as c:
            if not c.ready:
                return "KSM comparison: clients did not start"
            priv = lambda: sum(measure.process_memory(p)[1]["objects_file"]["Private_Dirty"] for p in c.pids)  # noqa: E731
            d0 = priv()
            time.sleep(args.ksm_seconds)
            d1 = priv()
        cpu = ksm.ksmd_cpu_seconds() - cpu0
    pct = 100 * (1 - d1 / d0) if d0 else 0
    line = (f"KSM (ASLR on, {n} x llc-14): after {args.ksm_seconds} s it shared {pct:.0f} % of the "
            f"relocated library memory, using {cpu:.2f} s of ksmd CPU.")
    if ok:
        line += " ldpool shares it from the first instruction, with no scanner."
    return line
