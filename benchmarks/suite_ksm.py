"""Suite 3, time to share: N llc-14 clients under ld.so opted into KSM with
prctl(PR_SET_MEMORY_MERGE), with ASLR on and with ASLR off (setarch -R),
sampled every second: how much of their relocated library memory KSM has
merged, pages_sharing, and ksmd's CPU time.  ldpool goes on the same time
axis: its sharing is complete when the clients start and no scanner runs.

"Relocated library memory" is the clients' Private_Dirty in file-backed
mappings of non-glibc objects (relocated RELRO, GOT, written .data), summed
over clients; "recovered" is the share of it that is no longer private."""
import os
import time

from . import ksm, measure, runners

PROG = "llc-14"
# the kernel's defaults: KSM as a distribution ships it
SETTINGS = dict(run=1, pages_to_scan=100, sleep_millisecs=20)


def run(ctx):
    n = 4 if ctx.quick else 16
    duration = 15 if ctx.quick else 120
    out = {"program": PROG, "N": n, "duration_s": duration, "settings": SETTINGS, "runs": {}}
    argv = runners.IDLE_CLIENTS[PROG]
    if runners.resolve(argv) is None:
        out.update(available=False, reason=f"{PROG} is not installed")
        return out
    if not ksm.writable():
        out.update(available=False, reason="/sys/kernel/mm/ksm is not writable (needs root, not in a container)")
    else:
        out["available"] = True
        for label, no_aslr in (("ksm_aslr_on", False), ("ksm_aslr_off", True)):
            ctx.step(f"time to share: KSM, ASLR {'off' if no_aslr else 'on'}, {n} x {PROG}, {duration}s")
            out["runs"][label] = ksm_run(argv, n, duration, no_aslr)
    out["runs"]["ldpool"] = ldpool_run(ctx, argv, n, out["runs"])
    return out


def private_kB(pids):
    return sum(measure.process_memory(p)[1]["objects_file"]["Private_Dirty"] for p in pids)


def ksm_run(argv, n, duration, no_aslr):
    with ksm.Session(**SETTINGS) as s:
        with runners.Clients(argv, n, ksm_merge=True, no_aslr=no_aslr) as c:
            if not c.ready:
                return {"available": False, "reason": c.failure()}
            if not all(ksm.process_merge_any(p) for p in c.pids):
                return {"available": False, "reason": "prctl(PR_SET_MEMORY_MERGE) did not survive exec"}
            cpu0 = ksm.ksmd_cpu_seconds()
            base = ksm.counters()
            t0 = time.monotonic()
            d0 = private_kB(c.pids)
            samples = []
            for i in range(duration + 1):
                while time.monotonic() < t0 + i:
                    time.sleep(0.05)
                cnt = ksm.counters()
                d = private_kB(c.pids)
                samples.append({
                    "t": round(time.monotonic() - t0, 2),
                    "pages_sharing": cnt.get("pages_sharing", 0) - base.get("pages_sharing", 0),
                    "pages_shared": cnt.get("pages_shared", 0) - base.get("pages_shared", 0),
                    "merging_pages": sum(ksm.process_merging_pages(p) for p in c.pids),
                    "private_kB": d,
                    "recovered_pct": round(100.0 * (1 - d / d0), 2) if d0 else None,
                    "ksmd_cpu_s": round(ksm.ksmd_cpu_seconds() - cpu0, 3),
                })
    last = samples[-1]
    return {"available": True, "aslr": not no_aslr, "initial_private_kB": d0,
            "samples": samples, "final_recovered_pct": last["recovered_pct"],
            "ksmd_cpu_s": last["ksmd_cpu_s"],
            "time_to_50pct_s": _first(samples, 50), "time_to_90pct_s": _first(samples, 90),
            "restore_errors": getattr(s, "restore_errors", [])}


def _first(samples, pct):
    for s in samples:
        if s["recovered_pct"] is not None and s["recovered_pct"] >= pct:
            return s["t"]
    return None


def ldpool_run(ctx, argv, n, ksm_runs):
    """ldpool's point: measured once, at t = 0, against the same clients
    under plain ld.so in this run (the KSM run's starting figure, or a fresh
    one when KSM is not available)."""
    if not ctx.ldpool_ok:
        return {"available": False, "reason": ctx.ldpool_reason}
    ctx.step(f"time to share: ldpool, {n} x {PROG}")
    ref = ksm_runs.get("ksm_aslr_on", {}).get("initial_private_kB")
    if not ref:
        with runners.Clients(argv, n) as c:
            ref = private_kB(c.pids) if c.ready else None
    broker = ctx.broker
    cpu0 = _cpu(broker.proc.pid) if broker.proc else None
    with runners.Clients(argv, n, env=broker.env(), ldpool=True) as c:
        if not c.ready:
            return {"available": False, "reason": c.failure()}
        d = sum(measure.process_memory(p, broker.ranges(), broker.pool_paths)[1]["objects_file"]["Private_Dirty"]
                for p in c.pids)
    cpu = (_cpu(broker.proc.pid) - cpu0) if cpu0 is not None and broker.proc else None
    return {"available": True, "t": 0.0, "private_kB": d, "ldso_private_kB": ref,
            "recovered_pct": round(100.0 * (1 - d / ref), 2) if ref else None,
            "scanner_cpu_s": 0.0, "broker_cpu_s": cpu}


def _cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
