"""Suite 2, memory at scale: N idle clients of llc-14 and of python3 (ssl,
sqlite3, ctypes imported) under ld.so, through ldpool, and under ld.so with
KSM merging them; per-process Pss, USS and Private_Dirty from smaps, in
total and per library.  Also issue 4's acceptance figure: per-process
private memory of pooled objects at N = 16, ldpool against ld.so."""
import time

from . import ksm, measure, runners

ACCEPT_N = 16
ACCEPT_MAX = 0.05


def run(ctx):
    ns = (1, 16) if ctx.quick else (1, 4, 16, 64)
    ksm_cap = 8 if ctx.quick else 40
    ksm_ok = ksm.writable()
    out = {"N": list(ns), "programs": {},
           "ldpool": {"available": ctx.ldpool_ok, "reason": ctx.ldpool_reason},
           "ksm": {"available": ksm_ok, "max_wait_s": ksm_cap,
                   "settings": {"run": 1, "pages_to_scan": 1000, "sleep_millisecs": 20},
                   **({} if ksm_ok else {"reason": "/sys/kernel/mm/ksm is not writable"})}}
    for prog, argv in runners.IDLE_CLIENTS.items():
        if runners.resolve(argv) is None:
            out["programs"][prog] = {"skipped": "not installed"}
            continue
        res = out["programs"][prog] = {"argv": argv, "by_N": {}}
        # a broker of its own per program, so that the broker's share
        # charged to these clients is for their images only
        broker = runners.Broker() if ctx.ldpool_ok else None
        try:
            if broker and not broker.start():
                broker.close()
                broker = None
            why = ctx.ldpool_reason if not ctx.ldpool_ok else "a fresh broker did not start"
            for n in ns:
                res["by_N"][str(n)] = _row(ctx, prog, argv, n, broker, why, ksm_cap if ksm_ok else None,
                                           out["ksm"].get("reason"))
        finally:
            if broker:
                broker.close()
    out["acceptance"] = acceptance(out)
    return out


def _row(ctx, prog, argv, n, broker, why, ksm_cap, ksm_why):
    row = {}
    ctx.step(f"memory: {n} x {prog} under ld.so")
    row["ldso"] = measure_clients(argv, n)
    if broker:
        ctx.step(f"memory: {n} x {prog} through ldpool")
        row["ldpool"] = measure_clients(argv, n, broker=broker)
    else:
        row["ldpool"] = {"available": False, "reason": why}
    if ksm_cap:
        ctx.step(f"memory: {n} x {prog} under ld.so + KSM")
        row["ldso_ksm"] = measure_clients_ksm(argv, n, ksm_cap)
    else:
        row["ldso_ksm"] = {"available": False, "reason": ksm_why}
    return row


def measure_clients(argv, n, broker=None):
    env = broker.env() if broker else None
    with runners.Clients(argv, n, env=env, ldpool=broker is not None) as c:
        if not c.ready:
            return {"available": False, "reason": c.failure()}
        pool_paths = broker.pool_paths if broker else ()
        if broker:
            on_pool = [measure.has_mapping(pid, lambda p: p in pool_paths or p.startswith("/dev/shm/ldpool"))
                       for pid in c.pids]
            if not all(on_pool):
                return {"available": False,
                        "reason": f"{on_pool.count(False)} of {n} clients do not map the pool (fallback?)"}
        mean, per_obj = measure.mean_memory(c.pids, broker.ranges() if broker else (), pool_paths)
        out = {"available": True, "per_process_kB": mean, "per_object_kB": _top(per_obj),
               # every object, not just the top ones: issue 4's per-object figure
               "reloc_per_object_kB": {l: e["reloc_Private_Dirty"] for l, e in per_obj.items()
                                       if e["kind"] == "object"}}
        if broker and broker.proc:
            # the broker is ldpool's cost too: it maps the pool (sharing the
            # pages' Pss with the clients) and is a Python process
            b = measure.process_memory(broker.proc.pid, broker.ranges(), pool_paths)[1]["all"]
            out["broker_kB"] = {k: b[k] for k in ("Rss", "Pss", "USS")}
            out["pss_with_broker_share_kB"] = round(mean["all"]["Pss"] + b["Pss"] / n, 1)
        else:
            out["pss_with_broker_share_kB"] = mean["all"]["Pss"]
        return out


def measure_clients_ksm(argv, n, cap):
    """KSM's steady state, as favourable to it as we can make it: a fast
    scan rate, and we wait for three full scans after the clients went idle
    and at least cap/2 seconds (at most `cap`)."""
    settings = dict(run=1, pages_to_scan=1000, sleep_millisecs=20)
    with ksm.Session(**settings):
        cpu0 = ksm.ksmd_cpu_seconds()
        with runners.Clients(argv, n, ksm_merge=True) as c:
            if not c.ready:
                return {"available": False, "reason": c.failure()}
            if not all(ksm.process_merge_any(p) for p in c.pids):
                return {"available": False, "reason": "prctl(PR_SET_MEMORY_MERGE) did not survive exec"}
            scans0 = ksm.counters().get("full_scans", 0)
            t0 = time.monotonic()
            # a scan already under way when the clients appeared counts as
            # one: wait for three, and at least half the cap
            while time.monotonic() - t0 < cap and (
                    time.monotonic() - t0 < cap / 2 or ksm.counters().get("full_scans", 0) < scans0 + 3):
                time.sleep(0.5)
            waited = time.monotonic() - t0
            mean, per_obj = measure.mean_memory(c.pids)
            merging = sum(ksm.process_merging_pages(p) for p in c.pids)
            full = ksm.counters().get("full_scans", 0) - scans0
        cpu = ksm.ksmd_cpu_seconds() - cpu0
    return {"available": True, "per_process_kB": mean, "per_object_kB": _top(per_obj),
            "waited_s": round(waited, 1), "full_scans": full, "ksmd_cpu_s": round(cpu, 2),
            "merging_pages": merging}


def _top(per_obj, k=25):
    """The objects that cost the most, so the JSON stays readable."""
    objs = {l: e for l, e in per_obj.items() if e["kind"] != "other"}
    top = sorted(objs.items(), key=lambda kv: -kv[1]["Pss"])[:k]
    return dict(top)


def acceptance(mem):
    """Issue 4: per-process private memory from pooled objects at N = 16
    must be at most 5 % of ld.so's.  Reported with and without the objects'
    anonymous .bss (which no loader can share), and as relocation-caused
    private memory: only the pages a loader alone writes (RELRO, read-only
    segments; relocmem.py), which leaves out the .data/.bss the program
    dirties itself under any loader."""
    out = {"N": ACCEPT_N, "max_ratio": ACCEPT_MAX, "programs": {}}
    for prog, res in mem["programs"].items():
        row = res.get("by_N", {}).get(str(ACCEPT_N))
        if not row:
            out["programs"][prog] = {"measured": False, "reason": f"N={ACCEPT_N} not run"}
            continue
        a, b = row["ldso"], row["ldpool"]
        if not (a.get("available") and b.get("available")):
            out["programs"][prog] = {"measured": False, "reason": b.get("reason") or a.get("reason")}
            continue
        ent = {"measured": True}
        for key, group in (("private_dirty", "objects"), ("private_dirty_no_bss", "objects_file")):
            x, y = a["per_process_kB"][group]["Private_Dirty"], b["per_process_kB"][group]["Private_Dirty"]
            ent[key] = {"ldso_kB": x, "ldpool_kB": y, "ratio": (y / x) if x else None}
        ent["private_dirty_reloc"] = _reloc_figure(a, b)
        for key, verdict in (("private_dirty", "pass"), ("private_dirty_no_bss", "pass_no_bss"),
                             ("private_dirty_reloc", "pass_reloc")):
            r = ent[key]["ratio"]
            ent[verdict] = r is not None and r <= ACCEPT_MAX
        out["programs"][prog] = ent
    return out


def _reloc_figure(a, b):
    """Relocation-caused private memory, ld.so against ldpool, in total and
    per object (kB per process), with the count of mappings that straddled
    a loader-only edge and so were left out (0 when the figure is exact)."""
    x = a["per_process_kB"]["objects_reloc"]["Private_Dirty"]
    y = b["per_process_kB"]["objects_reloc"]["Private_Dirty"]
    pa, pb = a.get("reloc_per_object_kB", {}), b.get("reloc_per_object_kB", {})
    per = {l: {"ldso_kB": pa.get(l, 0), "ldpool_kB": pb.get(l, 0)} for l in sorted(set(pa) | set(pb))}
    return {"ldso_kB": x, "ldpool_kB": y, "ratio": (y / x) if x else None,
            "straddling": {"ldso": a["per_process_kB"]["objects_reloc"]["straddling"],
                           "ldpool": b["per_process_kB"]["objects_reloc"]["straddling"]},
            "per_object": dict(sorted(per.items(), key=lambda kv: -max(kv[1].values())))}
