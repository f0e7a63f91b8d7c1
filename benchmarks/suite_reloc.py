"""Suite 4, relocation throughput: relocations per second when ldpool
pre-relocates the biggest libraries on the machine (libLLVM-14 with libz3,
libcrypto) against what ld.so achieves for programs using them, from its
own LD_DEBUG=statistics (TSC cycles, converted with the measured TSC rate).

ldpool's side is measured end to end where the engine sits in production:
a brand-new broker receives ACQUIRE_PROGRAM and reads, hashes, places and
pre-relocates every image of the program's closure before it answers; a
second (warm) acquire of the same program on that broker gives the cost of
planning alone, which is subtracted.  The relocation count is ld.so's for
the same program (the same work; glibc's own few are included).  This
charges ldpool for more than relocation (file hashing, images), so it is
a lower bound of the engine's throughput."""
import os
import statistics
import time

from . import measure, runners

PROGRAMS = {  # library of interest -> a program that loads it
    "libLLVM-14 + libz3": ["llc-14", "--version"],
    "libcrypto": ["openssl", "version"],
}
# the engine alone (_native.reloc), per library, in this process
ENGINE_LIBS = ("libLLVM-14.so.1", "libz3.so.4", "libcrypto.so.3")
BASE, SPACING = 0x7E0000000000, 0x100000000


def run(ctx):
    n = 3 if ctx.quick else 9
    n_cold = 1 if ctx.quick else 3
    hz = measure.tsc_hz()
    out = {"tsc_hz": round(hz), "programs": {}}
    for lib, argv in PROGRAMS.items():
        argv = runners.resolve(argv)
        if argv is None:
            out["programs"][lib] = {"skipped": "not installed"}
            continue
        ctx.step(f"relocation: ld.so statistics, {os.path.basename(argv[0])}")
        stats = []
        env = dict(os.environ, LD_DEBUG="statistics")
        for _ in range(n):
            _, code, err = measure.time_run(argv, env, capture_stderr=True)
            st = measure.ldso_statistics(err)
            if "reloc_cycles" in st:
                stats.append(st)
        if not stats:
            out["programs"][lib] = {"skipped": "no LD_DEBUG=statistics output"}
            continue
        count = stats[0].get("relocations", 0) + stats[0].get("relative_relocations", 0)
        secs = statistics.median(s["reloc_cycles"] for s in stats) / hz
        entry = out["programs"][lib] = {
            "program": argv, "relocations": count,
            "ldso": {"reloc_s": secs, "relocs_per_s": count / secs,
                     "startup_s": statistics.median(s["startup_cycles"] for s in stats) / hz}}
        now = [measure.ldso_statistics(measure.time_run(argv, dict(env, LD_BIND_NOW="1"), capture_stderr=True)[2])
               for _ in range(n)]
        now = [s for s in now if "reloc_cycles" in s]
        if now:
            c = now[0].get("relocations", 0) + now[0].get("relative_relocations", 0)
            t = statistics.median(s["reloc_cycles"] for s in now) / hz
            entry["ldso_bind_now"] = {"relocations": c, "reloc_s": t, "relocs_per_s": c / t}
        entry["ldpool"] = _cold_acquire(ctx, argv[0], count, n_cold)
        if entry["ldpool"].get("available"):
            entry["ratio_throughput"] = entry["ldpool"]["relocs_per_s"] / entry["ldso"]["relocs_per_s"]
    out["engine"] = {}
    for lib in ENGINE_LIBS:
        ctx.step(f"relocation: engine pre-relocating {lib}")
        out["engine"][lib] = _engine(lib, 1 if ctx.quick else 5)
    return out


def _engine(lib, rounds):
    """bind + apply of every relocation of `lib` against its canonical
    scope (built once, untimed), into an image laid out at its address."""
    try:
        from _native import reloc
        from loader.image import memory_image
        from loader.resolve import resolve_library
        from loader.scope import Scope
        res = resolve_library(lib)
        scope = Scope([(o.elf, BASE + i * SPACING, o.is_glibc) for i, o in enumerate(res.objects)],
                      main_is_exec=False)
        img, image_addr = memory_image(scope.elf(0), scope.l_addr(0))
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            b = reloc.bind(scope, 0)
            reloc.apply(img, image_addr, b)
            times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 -- engine missing or changed: say so
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    t = statistics.median(times)
    return {"available": True, "relocations": b.count, "bind_apply_s": t, "relocs_per_s": b.count / t,
            "rounds": rounds}


def _cold_acquire(ctx, path, count, n):
    if not ctx.broker_ok:
        return {"available": False, "reason": ctx.broker_reason}
    from .brokerclient import Conn
    times = []
    for _ in range(n):
        ctx.step(f"relocation: cold broker acquire of {os.path.basename(path)}")
        with runners.Broker() as br:
            if not br.start():
                return {"available": False, "reason": br.error}
            try:
                with Conn(br.socket) as c:
                    t0 = time.perf_counter()
                    c.acquire(path)
                    t1 = time.perf_counter()
                    c.acquire(path)  # warm: the same plan, no image to build
                    t2 = time.perf_counter()
                    times.append((t1 - t0, t2 - t1))
            except Exception as e:  # noqa: BLE001 -- reported as "not available"
                return {"available": False, "reason": f"acquire failed: {e}"}
    cold = statistics.median(t[0] for t in times)
    warm = statistics.median(t[1] for t in times)
    build = max(cold - warm, 1e-9)
    return {"available": True,
            "method": "cold minus warm ACQUIRE_PROGRAM on a fresh broker (read, hash, place, pre-relocate)",
            "acquire_s": cold, "warm_acquire_s": warm, "build_s": build,
            "relocs_per_s": count / build, "samples": len(times)}
