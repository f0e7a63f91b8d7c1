"""PNG plots of a results dict (suite.collect), readable at a glance: every
picture puts ldpool beside ld.so (and KSM) from the same run, and says
"not available" in the picture itself when ldpool's side was not measured."""
import os

MODES = (("ldso", "ld.so", "tab:blue"), ("ldpool", "ldpool", "tab:green"),
         ("ldso_ksm", "ld.so + KSM", "tab:orange"))


def write_all(res, out_dir):
    """Returns ([png names], reason plots are missing or "")."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: no plots (pip install matplotlib)"
    made = []
    for fn in (_startup, _memory, _time_to_share, _relocation, _broker):
        try:
            for name, fig in fn(res, plt):
                fig.tight_layout()
                fig.savefig(os.path.join(out_dir, name), dpi=110)
                plt.close(fig)
                made.append(name)
        except Exception as e:  # noqa: BLE001 -- a plot must never lose the JSON or report
            made.append(f"(plot {fn.__name__[1:]} failed: {e})")
    return [m for m in made if m.endswith(".png")], "; ".join(m for m in made if not m.endswith(".png"))


def _na(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="gray", wrap=True)


def _startup(res, plt):
    s = res.get("startup")
    if not s or "programs" not in s:
        return
    names = [n for n, e in s["programs"].items() if "ldso_median_s" in e]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    warm = [s["programs"][n].get("warm", {}).get("ratio_median") for n in names]
    cold = [s["programs"][n].get("cold", {}).get("ratio_median") for n in names]
    x = range(len(names))
    if any(w is not None for w in warm):
        for off, vals, label, color in ((-0.2, warm, "warm pool", "tab:green"), (0.2, cold, "cold pool", "tab:olive")):
            bars = ax.bar([i + off for i in x], [v or 0 for v in vals], 0.4, label=label, color=color)
            ax.bar_label(bars, labels=[f"{v:.2f}" if v else "" for v in vals], fontsize=7)
        ax.axhline(1.0, color="tab:blue", lw=1, ls="--", label="ld.so = 1")
        ax.set_yscale("log")
        ax.set_ylabel("wall time, ldpool-exec / ld.so\n(median of paired runs, log scale)")
        ax.legend(fontsize=8)
    else:
        ax.bar(list(x), [s["programs"][n]["ldso_median_s"] * 1e3 for n in names], 0.5,
               color="tab:blue", label="ld.so")
        ax.set_ylabel("ld.so wall time (ms)")
        _na(ax, "ldpool: not available\n" + (s.get("ldpool", {}).get("reason") or "")[:90])
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_title("Start-up time")
    yield "startup.png", fig


def _memory(res, plt):
    m = res.get("memory")
    if not m or "programs" not in m:
        return
    for prog, pres in m["programs"].items():
        if "by_N" not in pres:
            continue
        ns = [int(n) for n in pres["by_N"]]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, (group, field, title) in zip(axes, (("all", "Pss", "whole process, Pss (+ broker's share / N)"),
                                                    ("objects", "Private_Dirty",
                                                     "program + non-glibc libraries, Private_Dirty"))):
            missing = []
            for (key, label, color), style in zip(MODES, ("o-", "s-", "x--")):
                pts = [(n, pres["by_N"][str(n)].get(key, {})) for n in ns]
                pts = [(n, (e.get("pss_with_broker_share_kB") if field == "Pss" else None)
                        or e["per_process_kB"][group][field]) for n, e in pts if e.get("available")]
                pts = [(n, v / 1024) for n, v in pts]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, color=color)
                else:
                    missing.append(label)
            if field == "Pss":  # ldpool without its broker, for reference
                pts = [(n, pres["by_N"][str(n)].get("ldpool", {})) for n in ns]
                pts = [(n, e["per_process_kB"]["all"]["Pss"] / 1024) for n, e in pts if e.get("available")]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ":", color="tab:green",
                            label="ldpool clients alone (no broker)")
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_xlabel("clients (N)")
            ax.set_ylabel("MiB per process" + (" (log scale)" if field == "Pss" else ""))
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
            if missing:
                ax.text(0.02, 0.02, "not available: " + ", ".join(missing), transform=ax.transAxes,
                        fontsize=7, color="gray")
        fig.suptitle(f"Memory per process vs N: {prog}")
        yield f"memory_{prog.replace('/', '_')}.png", fig


def _time_to_share(res, plt):
    k = res.get("time_to_share")
    if not k or "runs" not in k:
        return
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label, color in (("ksm_aslr_on", "KSM, ASLR on", "tab:orange"),
                              ("ksm_aslr_off", "KSM, ASLR off (setarch -R)", "tab:red")):
        r = k["runs"].get(key, {})
        if r.get("available"):
            ax.plot([s["t"] for s in r["samples"]], [s["recovered_pct"] for s in r["samples"]], label=label, color=color)
            ax2.plot([s["t"] for s in r["samples"]], [s["ksmd_cpu_s"] for s in r["samples"]], label=label, color=color)
    lp = k["runs"].get("ldpool", {})
    if lp.get("available") and lp.get("recovered_pct") is not None:
        dur = k.get("duration_s", 1)
        ax.plot([0, dur], [lp["recovered_pct"]] * 2, label="ldpool (complete at t = 0)", color="tab:green", lw=2)
        ax2.plot([0, dur], [0, 0], label="ldpool (no scanner)", color="tab:green", lw=2)
    else:
        ax.text(0.02, 0.92, "ldpool: not available", transform=ax.transAxes, fontsize=8, color="gray")
    if not k.get("available"):
        _na(ax, "KSM: " + (k.get("reason") or "not available"))
    ax.set_xlabel("seconds after the clients went idle")
    ax.set_ylabel("% of relocated library memory shared")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"Time to share: {k.get('N')} x {k.get('program')}", fontsize=9)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("ksmd CPU time (s)")
    ax2.legend(fontsize=8)
    ax2.set_title("Scanner cost", fontsize=9)
    yield "time_to_share.png", fig


def _relocation(res, plt):
    r = res.get("relocation")
    if not r or "programs" not in r:
        return
    libs = [l for l, e in r["programs"].items() if "ldso" in e]
    if not libs:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(libs))
    ax.bar([i - 0.2 for i in x], [r["programs"][l]["ldso"]["relocs_per_s"] / 1e6 for l in libs], 0.4,
           label="ld.so (LD_DEBUG=statistics)", color="tab:blue")
    lp = [r["programs"][l].get("ldpool", {}) for l in libs]
    if any(e.get("available") for e in lp):
        ax.bar([i + 0.2 for i in x], [e.get("relocs_per_s", 0) / 1e6 for e in lp], 0.4,
               label="ldpool pre-relocation (cold acquire)", color="tab:green")
    else:
        _na(ax, "ldpool: not available")
    eng = {l: e for l, e in r.get("engine", {}).items() if e.get("available")}
    if eng:
        base = len(libs)
        ax.bar([base + i for i in range(len(eng))], [e["relocs_per_s"] / 1e6 for e in eng.values()], 0.4,
               label="ldpool engine alone (bind + apply)", color="tab:olive")
        libs = libs + [l.split(".so")[0] + " (engine)" for l in eng]
        x = range(len(libs))
    ax.set_xticks(list(x), libs, fontsize=7, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("million relocations / s (log scale)")
    ax.legend(fontsize=8)
    ax.set_title("Relocation throughput")
    yield "relocation.png", fig


def _broker(res, plt):
    b = res.get("broker")
    if not b or not b.get("latency"):
        return
    pts = [(int(n), e) for n, e in b["latency"].items() if e.get("available")]
    paced = [(int(n), e) for n, e in b.get("latency_paced", {}).items() if e.get("available")]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for series, tag, color in ((pts, "back to back", "tab:purple"), (paced, "paced", "tab:green")):
        if not series:
            continue
        ns = [n for n, _ in series]
        for q, ls in (("p50", "o-"), ("p99", "s--")):
            ax.plot(ns, [e["acquire_us"][q] for _, e in series], ls, label=f"acquire {q}, {tag}", color=color)
    ns = [n for n, _ in pts]
    ax.axhline(1000, color="gray", lw=1, ls=":", label="1 ms target (p99)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("round trip (us)")
    ax.legend(fontsize=7)
    ax.set_title("Broker latency (images already in the pool)")
    yield "broker_latency.png", fig
