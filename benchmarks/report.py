"""The Markdown report and the short headline of a results dict: every
figure a ratio or a side-by-side pair from the same run, and every missing
figure marked "not available" with its reason."""
import os

NA = "not available"
_GLOBAL_WHY = [None]  # the run-wide reason ldpool was not measured, said once at the top


def _why(reason):
    if not reason or reason == _GLOBAL_WHY[0]:
        return "" if not reason else "see above"
    return reason


def _mib(kb):
    return f"{kb / 1024:.1f} MiB" if kb is not None else NA


def _x(r):
    if r is None:
        return NA
    return f"{r:.2f}x" if r >= 0.01 else f"{r:.2g}x"


def _s(t):
    return "never" if t is None else f"{t:.0f} s"


def headlines(res):
    """The figures the closing note quotes, as (label, text) pairs."""
    out = []
    row = res.get("memory", {}).get("programs", {}).get("llc-14", {}).get("by_N", {}).get("16")
    if row:
        a, b = row.get("ldso", {}), row.get("ldpool", {})
        pa = a["per_process_kB"]["objects"]["Private_Dirty"] if a.get("available") else None
        pb = b["per_process_kB"]["objects"]["Private_Dirty"] if b.get("available") else None
        sa = a["per_process_kB"]["all"]["Pss"] if a.get("available") else None
        sb = b.get("pss_with_broker_share_kB") if b.get("available") else None
        sb0 = b["per_process_kB"]["all"]["Pss"] if b.get("available") else None
        out.append(("llc-14 at N=16, per process (Pss; private library memory)",
                    f"ld.so {_mib(sa)}; {_mib(pa)} -- ldpool {_mib(sb0)} ({_mib(sb)} with the broker's share); "
                    f"{_mib(pb)}"
                    + ("" if b.get("available") else f" ({_why(b.get('reason'))})")))
    k = res.get("time_to_share", {})
    for key, label in (("ksm_aslr_on", "ASLR on"), ("ksm_aslr_off", "ASLR off")):
        r = k.get("runs", {}).get(key)
        if r and r.get("available"):
            t90 = r["time_to_90pct_s"]
            out.append((f"KSM, {k['N']} x llc-14, {label}",
                        f"{r['final_recovered_pct']:.0f} % of relocated library memory shared after "
                        f"{k['duration_s']} s (90 % at: {_s(t90)}), "
                        f"ksmd CPU {r['ksmd_cpu_s']:.2f} s"))
    if k and not k.get("available"):
        out.append(("KSM", f"{NA}: {k.get('reason')}"))
    lp = k.get("runs", {}).get("ldpool")
    if lp:
        out.append(("ldpool, same clients", (f"{lp['recovered_pct']:.0f} % shared at t = 0, no scanner CPU"
                                             if lp.get("available") else f"{NA}: {_why(lp.get('reason'))}")))
    s = res.get("startup", {}).get("programs", {})
    ratios = [f"{n} {_x(e.get('warm', {}).get('ratio_median'))}" for n, e in s.items() if "ldso_median_s" in e]
    if ratios and all(NA in r for r in ratios):
        out.append(("start-up, ldpool-exec / ld.so", f"{NA} ({_why(res.get('startup', {}).get('ldpool', {}).get('reason'))})"))
    elif ratios:
        out.append(("start-up, ldpool-exec / ld.so, warm pool", ", ".join(ratios)))
    return out


def headline_text(res):
    _GLOBAL_WHY[0] = res.get("ldpool", {}).get("reason")
    lines = ["ldpool bench: headline figures (same run)"]
    if _GLOBAL_WHY[0]:
        lines.append(f"  ldpool's side: {NA}: {_GLOBAL_WHY[0]}")
    lines += [f"  {label}: {text}" for label, text in headlines(res)]
    acc = res.get("memory", {}).get("acceptance", {}).get("programs", {})
    for prog, e in acc.items():
        if e.get("measured"):
            lines.append(f"  issue 4 acceptance, {prog}: private library memory ldpool/ld.so = "
                         f"{e['private_dirty']['ratio']:.1%} with .bss ({'PASS' if e['pass'] else 'FAIL'}), "
                         f"{e['private_dirty_no_bss']['ratio']:.1%} without "
                         f"({'PASS' if e['pass_no_bss'] else 'FAIL'}), "
                         + _reloc_headline(e) + "; limit 5 %")
        else:
            lines.append(f"  issue 4 acceptance, {prog}: {NA} ({_why(e.get('reason'))})")
    return "\n".join(lines)


def _pct(r):
    return NA if r is None else f"{r:.1%}"


def _reloc_headline(e):
    """The relocation-caused figure (older results.json files lack it)."""
    r = e.get("private_dirty_reloc")
    if not r:
        return f"relocation-caused {NA}"
    return (f"relocation-caused {_pct(r['ratio'])} ({_mib(r['ldpool_kB'])} of {_mib(r['ldso_kB'])}, "
            f"{'PASS' if e.get('pass_reloc') else 'FAIL'})")


def markdown(res, pngs, plot_note=""):
    m = res.get("machine", {})
    _GLOBAL_WHY[0] = res.get("ldpool", {}).get("reason")
    L = ["# ldpool benchmark report", "",
         f"- date: {m.get('date')}; mode: {'--quick' if res.get('quick') else 'full'}; "
         f"total time {res.get('elapsed_s')} s",
         f"- machine: {m.get('os')}, kernel {m.get('kernel')}, {m.get('cpus')} x {m.get('cpu')}, "
         f"{m.get('mem_total')}",
         f"- ldpool side: {'measured' if res.get('ldpool', {}).get('available') else NA + ': ' + str(res.get('ldpool', {}).get('reason'))}",
         f"- KSM: {'writable' if res.get('ksm', {}).get('writable') else NA + ' (not writable)'}; "
         f"settings before {res.get('ksm', {}).get('settings_before')}, after {res.get('ksm', {}).get('settings_after')}",
         "", "## Headline figures", ""]
    L += [f"- **{label}**: {text}" for label, text in headlines(res)]
    L += ["", "```", headline_text(res), "```", ""]
    L += _startup(res.get("startup")) + _memory(res.get("memory")) + _ksm(res.get("time_to_share"))
    L += _reloc(res.get("relocation")) + _broker(res.get("broker"))
    L += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    if plot_note:
        L += ["", f"Plots: {plot_note}"]
    return "\n".join(L) + "\n"


def _section_na(title, sec):
    if sec is None:
        return [f"## {title}", "", "not run", ""]
    if sec.get("error"):
        return [f"## {title}", "", f"{NA}: the suite failed: `{sec['error']}`", ""]
    return None


def _startup(s):
    na = _section_na("Start-up (ldpool-exec vs ld.so, paired A B A B)", s)
    if na:
        return na
    L = ["## Start-up (ldpool-exec vs ld.so, paired A B A B)", "",
         f"Median of per-pair ratios; warm pool {s['pairs_warm']} pairs, cold pool {s['pairs_cold']} "
         "(a fresh broker and pool for every cold run).", "",
         "| program | ld.so | ldpool warm | ratio warm | ldpool cold | ratio cold | launcher breakdown (us, warm) |",
         "|---|---:|---:|---:|---:|---:|---|"]
    for n, e in s["programs"].items():
        if "skipped" in e:
            L.append(f"| {n} | {e['skipped']} | | | | | |")
            continue
        w, c = e.get("warm", {}), e.get("cold", {})
        if not e.get("ldpool", {}).get("available"):
            L.append(f"| {n} | {e['ldso_median_s'] * 1e3:.2f} ms | {NA}: {_why(e.get('ldpool', {}).get('reason'))} | | | | |")
            continue
        bd = w.get("breakdown_us") or {}
        L.append(f"| {n} | {w['a_median_s'] * 1e3:.2f} ms | {w['b_median_s'] * 1e3:.2f} ms | {_x(w['ratio_median'])} | "
                 + (f"{c['b_median_s'] * 1e3:.1f} ms | {_x(c['ratio_median'])} | " if c.get("n") else f"{NA} | | ")
                 + (", ".join(f"{k} {v:.0f}" for k, v in bd.items()) or NA) + " |")
    return L + [""]


def _memory(mem):
    na = _section_na("Memory at scale", mem)
    if na:
        return na
    L = ["## Memory at scale", "",
         "Mean per process, from /proc/PID/smaps. *objects* = the program and its non-glibc libraries "
         "(what ldpool pools), .bss included; Pss/USS of the whole process. KSM: ld.so clients opted in with "
         f"prctl(PR_SET_MEMORY_MERGE), scanned at {mem.get('ksm', {}).get('settings')} for up to "
         f"{mem.get('ksm', {}).get('max_wait_s')} s (three full scans, at least half that time).", "",
         "ldpool's Pss column adds the broker's Pss divided by N: the broker maps the pool and is ldpool's cost.", "",
         "| program | N | mode | Pss | USS | objects Private_Dirty | objects USS | note |",
         "|---|---:|---|---:|---:|---:|---:|---|"]
    for prog, p in mem["programs"].items():
        for n, row in p.get("by_N", {}).items():
            for key, label in (("ldso", "ld.so"), ("ldpool", "ldpool"), ("ldso_ksm", "ld.so + KSM")):
                e = row.get(key, {})
                if not e.get("available"):
                    L.append(f"| {prog} | {n} | {label} | {NA} | | | | {_why(e.get('reason'))} |")
                    continue
                pp = e["per_process_kB"]
                note = (f"waited {e['waited_s']} s, {e['full_scans']} scans, ksmd {e['ksmd_cpu_s']} s"
                        if key == "ldso_ksm" else "")
                if key == "ldpool" and "broker_kB" in e:
                    note = (f"clients alone {_mib(pp['all']['Pss'])}; broker Pss {_mib(e['broker_kB']['Pss'])} "
                            "(the Python process and the pool pages it maps)")
                L.append(f"| {prog} | {n} | {label} | {_mib(e.get('pss_with_broker_share_kB', pp['all']['Pss']))} | "
                         f"{_mib(pp['all']['USS'])} | "
                         f"{_mib(pp['objects']['Private_Dirty'])} | {_mib(pp['objects']['USS'])} | {note} |")
    acc = mem.get("acceptance", {})
    L += ["", f"### Issue 4 acceptance: private memory of pooled objects at N = {acc.get('N')} (limit 5 % of ld.so's)", ""]
    for prog, e in acc.get("programs", {}).items():
        if not e.get("measured"):
            L.append(f"- {prog}: {NA} ({_why(e.get('reason'))})")
            continue
        a, b = e["private_dirty"], e["private_dirty_no_bss"]
        L.append(f"- {prog}: with .bss, ld.so {_mib(a['ldso_kB'])}, ldpool {_mib(a['ldpool_kB'])}: "
                 f"**{a['ratio']:.1%}** ({'PASS' if e['pass'] else 'FAIL'}); without .bss (zero-fill memory "
                 f"no loader can share) {_mib(b['ldso_kB'])} vs {_mib(b['ldpool_kB'])}: "
                 f"**{b['ratio']:.1%}** ({'PASS' if e['pass_no_bss'] else 'FAIL'}); "
                 + _reloc_line(e))
    L += _reloc_per_object(acc)
    L += _per_library(mem)
    return L


def _reloc_line(e):
    r = e.get("private_dirty_reloc")
    if not r:
        return f"relocation-caused: {NA}"
    st = r["straddling"]
    return (f"relocation-caused (pages only a loader writes: RELRO and read-only segments; ldpool's "
            f"stub and slot pages too) {_mib(r['ldso_kB'])} vs {_mib(r['ldpool_kB'])}: "
            f"**{_pct(r['ratio'])}** ({'PASS' if e.get('pass_reloc') else 'FAIL'})"
            + ("" if not (st["ldso"] or st["ldpool"]) else
               f"; mappings straddling a RELRO edge, left out: ld.so {st['ldso']}, ldpool {st['ldpool']}"))


def _reloc_per_object(acc):
    """Relocation-caused private memory per object, both loaders, same run."""
    L = []
    for prog, e in acc.get("programs", {}).items():
        r = e.get("private_dirty_reloc") if e.get("measured") else None
        if not r:
            continue
        L += ["", f"#### {prog}, N = {acc.get('N')}: relocation-caused private memory per object, kB per process", "",
              "| object | ld.so | ldpool |", "|---|---:|---:|"]
        L += [f"| {os.path.basename(lib)} | {v['ldso_kB']:.0f} | {v['ldpool_kB']:.0f} |"
              for lib, v in r["per_object"].items() if v["ldso_kB"] or v["ldpool_kB"]]
        L.append(f"| **total** | **{r['ldso_kB']:.0f}** | **{r['ldpool_kB']:.0f}** |")
    return L


def _per_library(mem):
    """Per library at the largest N up to 16: where each loader's memory goes."""
    L = []
    for prog, p in mem["programs"].items():
        ns = [int(n) for n in p.get("by_N", {}) if int(n) <= 16]
        if not ns:
            continue
        n = max(ns)
        row = p["by_N"][str(n)]
        modes = [(k, lbl) for k, lbl in (("ldso", "ld.so"), ("ldpool", "ldpool"), ("ldso_ksm", "ld.so+KSM"))
                 if row.get(k, {}).get("available")]
        if not modes:
            continue
        libs = {}
        for k, _ in modes:
            for lib, e in row[k]["per_object_kB"].items():
                libs.setdefault(lib, {})[k] = e
        top = sorted(libs, key=lambda l: -max(e["Private_Dirty"] for e in libs[l].values()))[:10]
        L += ["", f"#### {prog}, N = {n}: per library, kB per process (Pss / USS / Private_Dirty)", "",
              "| library | " + " | ".join(lbl for _, lbl in modes) + " |",
              "|---|" + "---:|" * len(modes)]
        for lib in top:
            cells = []
            for k, _ in modes:
                e = libs[lib].get(k)
                cells.append(f"{e['Pss']:.0f} / {e['USS']:.0f} / {e['Private_Dirty']:.0f}" if e else "")
            L.append(f"| {os.path.basename(lib)} | " + " | ".join(cells) + " |")
    return L + [""]


def _ksm(k):
    na = _section_na("Time to share: KSM against ldpool", k)
    if na:
        return na
    L = ["## Time to share: KSM against ldpool", "",
         f"{k.get('N')} x {k.get('program')} idle, KSM at the kernel's default scan rate {k.get('settings')}, "
         f"sampled every second for {k.get('duration_s')} s. Shared = share of the clients' relocated library "
         "memory (Private_Dirty of file-backed non-glibc object mappings) that is no longer private.", ""]
    if not k.get("available"):
        L.append(f"KSM: {NA}: {k.get('reason')}")
    L += ["| run | shared at end | 50 % at | 90 % at | ksmd CPU |", "|---|---:|---:|---:|---:|"]
    for key, label in (("ksm_aslr_on", "KSM, ASLR on"), ("ksm_aslr_off", "KSM, ASLR off")):
        r = k.get("runs", {}).get(key)
        if r and r.get("available"):
            L.append(f"| {label} | {r['final_recovered_pct']:.1f} % | {_s(r['time_to_50pct_s'])} | "
                     f"{_s(r['time_to_90pct_s'])} | {r['ksmd_cpu_s']:.2f} s |")
        elif r:
            L.append(f"| {label} | {NA}: {r.get('reason')} | | | |")
    lp = k.get("runs", {}).get("ldpool", {})
    if lp.get("available"):
        L.append(f"| ldpool | {lp['recovered_pct']:.1f} % | 0 s | 0 s | 0 s (broker CPU {lp.get('broker_cpu_s') or 0:.2f} s) |")
    else:
        L.append(f"| ldpool | {NA}: {_why(lp.get('reason'))} | | | |")
    return L + [""]


def _reloc(r):
    na = _section_na("Relocation throughput", r)
    if na:
        return na
    L = ["## Relocation throughput", "",
         f"ld.so: LD_DEBUG=statistics, relocation cycles at the measured TSC rate ({r['tsc_hz'] / 1e9:.3f} GHz). "
         "ldpool: a fresh broker's first ACQUIRE_PROGRAM (read, hash, place and pre-relocate every image) minus "
         "a second, warm one (planning alone); same relocation count. That charges ldpool for hashing and "
         "image building too: a lower bound. ld.so pays its cost in every process, ldpool once per broker epoch.", "",
         "| libraries | relocations | ld.so | ldpool | ratio |", "|---|---:|---:|---:|---:|"]
    for lib, e in r["programs"].items():
        if "skipped" in e:
            L.append(f"| {lib} | {e['skipped']} | | | |")
            continue
        lp = e.get("ldpool", {})
        lps = f"{lp['relocs_per_s'] / 1e6:.2f} M/s ({lp['build_s'] * 1e3:.0f} ms)" if lp.get("available") else f"{NA}: {_why(lp.get('reason'))}"
        L.append(f"| {lib} | {e['relocations']} | {e['ldso']['relocs_per_s'] / 1e6:.1f} M/s "
                 f"({e['ldso']['reloc_s'] * 1e3:.1f} ms) | {lps} | {_x(e.get('ratio_throughput'))} |")
        bn = e.get("ldso_bind_now")
        if bn:
            L.append(f"| {lib}, LD_BIND_NOW=1 | {bn['relocations']} | {bn['relocs_per_s'] / 1e6:.1f} M/s "
                     f"({bn['reloc_s'] * 1e3:.1f} ms) | | |")
    if r.get("engine"):
        L += ["", "The engine alone (`_native.reloc`: bind every relocation against the library's canonical "
              "scope, then apply them to its image), in this process, scope built beforehand:", "",
              "| library | relocations | bind + apply | throughput |", "|---|---:|---:|---:|"]
        for lib, e in r["engine"].items():
            if e.get("available"):
                L.append(f"| {lib} | {e['relocations']} | {e['bind_apply_s'] * 1e3:.1f} ms | "
                         f"{e['relocs_per_s'] / 1e6:.1f} M/s |")
            else:
                L.append(f"| {lib} | {NA}: {e.get('reason')} | | |")
    return L + [""]


def _broker(b):
    na = _section_na("Broker latency and churn", b)
    if na:
        return na
    L = ["## Broker latency and churn", ""]
    if not b.get("available"):
        return L + [f"{NA}: {_why(b.get('reason'))}", ""]
    L += [f"ACQUIRE_PROGRAM/RELEASE of {b['program']} (images already pooled), {b['iterations_per_client']} "
          "round trips per client, clients in separate Python processes started together. *Back to back*: no "
          "pause between round trips, so with many clients on this machine's CPUs a round trip mostly waits "
          f"for a CPU. *Paced*: a random 0-{2 * b.get('pace_ms', 0):.0f} ms pause before each round trip.", "",
          "| clients | mode | acquire p50 | acquire p99 | release p50 | release p99 | ping p99 |",
          "|---:|---|---:|---:|---:|---:|---:|"]
    for key, mode in (("latency", "back to back"), ("latency_paced", "paced")):
        for n, e in b.get(key, {}).items():
            if not e.get("available"):
                L.append(f"| {n} | {mode} | {NA}: {e.get('reason')} | | | | |")
                continue
            L.append(f"| {n} | {mode} | {e['acquire_us']['p50']} us | {e['acquire_us']['p99']} us | "
                     f"{e['release_us']['p50']} us | {e['release_us']['p99']} us | {e['ping_us']['p99']} us |")
    c = b.get("churn", {})
    if c.get("available"):
        L += ["", f"Kill churn: {c['iterations']} clients SIGKILLed at random moments ({c['kills_per_s']}/s); "
              f"references left after settling ({c['settle_s']} s): {c['refs_after']} "
              f"({'leak-free' if c['leak_free'] else 'LEAK'})."]
    elif c:
        L += ["", f"Kill churn: {NA}: {c.get('reason')}"]
    return L + [""]
