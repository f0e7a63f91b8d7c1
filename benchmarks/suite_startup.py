"""Suite 1, start-up: `ldpool-exec PROG` against PROG run directly by
ld.so, paired A B A B, with a warm pool (the broker already holds every
image) and a cold one (a fresh broker and pool for each B run), plus the
launcher's own breakdown (LDPOOL_TIMING=1)."""
import statistics

from . import measure, runners


def run(ctx):
    quick = ctx.quick
    n_warm, n_cold = (7, 1) if quick else (31, 5)
    out = {"pairs_warm": n_warm, "pairs_cold": n_cold, "programs": {},
           "ldpool": {"available": ctx.ldpool_ok, "reason": ctx.ldpool_reason}}
    for name, argv in runners.PROGRAMS.items():
        ctx.step(f"startup: {name}")
        argv = runners.resolve(argv)
        if argv is None:
            out["programs"][name] = {"skipped": "not installed"}
            continue
        entry = out["programs"][name] = {"argv": argv}
        ok, why = (ctx.ldpool_ok, ctx.ldpool_reason)
        if ok:
            ok, why = runners.verify_output(argv, ctx.broker)
        if not ok:
            # ld.so alone, so the table still shows the baseline
            times = [measure.time_run(argv)[0] for _ in range(n_warm)]
            entry["ldso_median_s"] = statistics.median(times)
            entry["ldpool"] = {"available": False, "reason": why}
            continue
        b_argv = runners.ldpool_argv(argv)
        warm = measure.paired(argv, b_argv, n_warm, b_env=ctx.broker.env())
        entry["ldso_median_s"] = warm["a_median_s"]
        entry["warm"] = _pair_summary(warm)
        # the breakdown from separate runs, so the timed ones carry no instrumentation
        env = dict(ctx.broker.env(), LDPOOL_TIMING="1")
        errs = [measure.time_run(b_argv, env, capture_stderr=True)[2] for _ in range(5)]
        entry["warm"]["breakdown_us"] = measure.median_breakdown(errs)
        entry["cold"] = _cold(ctx, argv, n_cold)
        entry["ldpool"] = {"available": True}
    return out


def _pair_summary(p):
    keys = ("n", "a_median_s", "b_median_s", "ratio_median", "ratio_of_medians", "exit_codes")
    return {k: p[k] for k in keys}


def _cold(ctx, argv, n):
    """Each B run gets a brand-new broker and pool: the images are read,
    placed and pre-relocated during that run."""
    a, b, ratios, breakdowns = [], [], [], []
    for _ in range(n):
        ta = measure.time_run(argv)[0]
        with runners.Broker() as br:
            if not br.start():
                return {"available": False, "reason": br.error}
            env = dict(br.env(), LDPOOL_TIMING="1")
            tb, code, err = measure.time_run(runners.ldpool_argv(argv), env, capture_stderr=True)
        if code != measure.time_run(argv)[1]:
            return {"available": False, "reason": f"exit status {code} differs from native"}
        a.append(ta)
        b.append(tb)
        ratios.append(tb / ta)
        breakdowns.append(err)
    return {"n": n, "a_median_s": statistics.median(a), "b_median_s": statistics.median(b),
            "ratio_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median(b) / statistics.median(a),
            "breakdown_us": measure.median_breakdown(breakdowns)}
