"""The statistics of one study's ``results.jsonl``: per-point summaries, comparisons,
dose-response trends and the declared fits (``analyze``); ``report.py`` renders them.

Design choices (the ones that affect numbers are also stated in the report):
- Each metric's direction is ``trainer.metrics.higher_is_better``'s (accuracy up, loss and bpb
  down); ``best`` is a run's best eval in that direction.
- A point with a single usable seed is listed with n=1 and no CI; its comparison
  is "not enough seeds". A *baseline* with < 2 seeds is an error (exit 2) when
  some other point has >= 2 seeds, because then every comparison the user asked
  for is impossible and another baseline would work; if every point has a single
  seed (a quick single-seed sweep) the report is written without comparisons.
- Pairing: two points are compared with a paired t-test when both have
  ``data_order == "seed"`` on every record and share >= 2 seeds; the pairs are
  the common seeds, and seeds present in only one point are dropped (listed
  under Limitations). Otherwise Welch's t-test on all seeds.
- Runs whose metric is NaN/inf (diverged) are excluded from the statistics and
  listed; a duplicated (point, seed) keeps the last record in the file.
- The power law is fitted on per-run (train_flops, metric) points when the
  points span >= 3 distinct compute values, where values within 0.05 decades
  (~12%) count as one: flop-matched grids differ only by step rounding.
- Otherwise (a FLOPs-matched grid: every run has the same compute) the
  loss-vs-compute law is fitted on the compute-efficient frontier of the
  learning curves (Kaplan et al. 2020, Fig. 1 left and Sec. 6.1): each eval of
  a run is a point (C = FLOPs/token x tokens/step x step, metric); evals are
  grouped into compute levels (by eval index when the points' evals line up,
  else by compute), the point (grid point) with the lowest seed-mean at a level
  is the frontier there, and its per-seed values are the fit's observations.
  Levels below 10% of the largest compute are not fitted (warm-up). See
  ``_frontier`` for the grouping and the bootstrap.
- When every run has the same compute, L(N) = a*N^(-b) + c is also fitted over
  the per-run (params, metric) points, labelled "at matched compute".
- Significance statements use the corrected p-value at alpha = 0.05.
"""

from __future__ import annotations

import math

import numpy as np

from experiments.study import stats
from experiments.study.fits import COMPUTE_TOL_DECADES, _distinct_compute, _frontier, _g, _num, _param_fit
from nn.errors import ReportError

__all__ = ["FIT_KINDS", "analyze", "apply_family"]

MIN_SEEDS_RECOMMENDED = 5
_BUDGET_WORDS = {"flops": "FLOPs", "tokens": "tokens", "steps": "steps"}
_CORRECTION_NAMES = {"holm": "Holm-Bonferroni (Holm 1979)", "bh": "Benjamini-Hochberg (1995)"}



def _budget(rec) -> tuple[str | None, float | None]:
    b = rec.get("budget")
    if not isinstance(b, dict):
        return None, None
    v = _num(b.get("value"))
    return b.get("mode"), (v if math.isfinite(v) else None)


def _nanmean(vals) -> float:
    arr = np.array([_num(v) for v in vals], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


FIT_KINDS = {
    "compute": "per-run L(C) = a·C^(-b) + c over >= 3 compute values",
    "frontier": "L(C) on the compute-efficient frontier of the learning curves (FLOPs-matched grids)",
    "params": "L(N) = a·N^(-b) + c at matched compute",
    "isoflop": "Chinchilla approach 2: per-budget parabolas, N_opt(C) and L_opt(C)",
    "parametric": "Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta, held-out budget, sensitivity",
}


def analyze(records: list[dict], baseline: str | None = None, metric: str = "eval/bpb",
            correction: str = "holm", use: str = "final", confidence: float = 0.95,
            n_boot: int = 1000, fits=(), comparisons=None, trend: str | None = None) -> dict:
    """Per-point summaries, comparisons, dose-response trends and the declared fits.

    ``fits``: the fits to run (keys of FIT_KINDS, or a {kind: question} dict); none by default,
    fits are opt-in per study. ``comparisons``: (point, baseline) pairs to test; default every
    point against ``baseline``. ``trend``: a dotted override key of an ordered factor
    (``data.batch_size``): for every group of points that agree on their other overrides and
    span >= 2 levels of it, the OLS slope of the metric on log2(level) with a t CI
    (``stats.trend_test``) and a Jonckheere-Terpstra check.

    Returns a plain dict (see ``render_markdown`` for how it is presented).
    Besides the per-run compute fit (``fit``, ``fit_note``) it holds:

    - ``frontier``: None unless the points span < 3 compute values; else dict(levels
      (per compute level: compute, winner, mean, ci_low, ci_high, n, runner_up, margin,
      win_share, in_fit, excluded, n_points), curves ({point: compute, mean, ci_low,
      ci_high, n per level}), x, y (the fit's observations), grouping, min_fraction,
      level_width_decades, n_runs). ``frontier_fit``: ``stats.fit_power_law``'s dict
      with the seed-bootstrap CI on b and n_levels, n_obs, compute_min, compute_max,
      span_decades, ci_method; None if not fitted. ``frontier_note``: one line.
    - ``param_fit`` / ``param_fit_note``: L(N) at matched compute (fit dict with
      n_params, n_obs, compute, ci_method), None when not applicable; ``matched_compute``:
      the common train FLOPs when every run has the same compute, else None.

    Raises ReportError for unusable input.
    """
    if use not in ("final", "best"):
        raise ReportError(f"unknown --use {use!r}; use 'final' or 'best'")
    if correction not in _CORRECTION_NAMES:
        raise ReportError(f"unknown --correction {correction!r}; use 'holm' or 'bh'")
    if not records:
        raise ReportError("no valid records in results file")
    fits = dict(fits) if isinstance(fits, dict) else {k: "" for k in fits}
    unknown = sorted(set(fits) - set(FIT_KINDS))
    if unknown:
        raise ReportError(f"unknown fit(s) {unknown}; known: {sorted(FIT_KINDS)}")

    missing = [r for r in records if not isinstance(r.get(use), dict) or metric not in r[use]]
    if missing:
        avail = sorted({k for r in records if isinstance(r.get(use), dict) for k in r[use]})
        first = missing[0]
        raise ReportError(f"metric {metric!r} missing from '{use}' in {len(missing)} of {len(records)} records "
                          f"(first: point {first['point']!r} seed {first['seed']}); available: {avail}")

    limitations: list[str] = []

    # Group by point in file order; a later duplicate (point, seed) replaces the earlier one.
    groups: dict[str, dict[int, dict]] = {}
    dup_count: dict[tuple[str, int], int] = {}
    for r in records:
        g = groups.setdefault(r["point"], {})
        if r["seed"] in g:
            dup_count[(r["point"], r["seed"])] = dup_count.get((r["point"], r["seed"]), 1) + 1
        g[r["seed"]] = r
    for (p, s), k in dup_count.items():
        limitations.append(f"`{p}` seed {s} appears {k} times in the file; the last record was used.")

    if baseline is None:
        baseline = next(iter(groups))
    elif baseline not in groups:
        raise ReportError(f"unknown baseline point {baseline!r}; available points: {list(groups)}")

    points = []
    for name, by_seed in groups.items():
        seeds_all = sorted(by_seed)
        vals = {s: _num(by_seed[s][use][metric]) for s in seeds_all}
        bad = [s for s in seeds_all if not math.isfinite(vals[s])]
        if bad:
            limitations.append(f"`{name}`: {metric} is non-finite for seed(s) {bad} (diverged?); "
                               f"excluded from the statistics.")
        seeds = [s for s in seeds_all if s not in bad]
        recs = [by_seed[s] for s in seeds]
        v = np.array([vals[s] for s in seeds], dtype=float)
        pt = {"point": name, "seeds": seeds, "values": v, "n": len(seeds), "records": recs,
              "params": _nanmean(r.get("params") for r in recs),
              "train_flops": _nanmean(r.get("train_flops") for r in recs),
              "data_order": "seed" if recs and all(r.get("data_order") == "seed" for r in recs) else "independent",
              "budgets": sorted({_budget(r) for r in recs}, key=str),
              "mean": float(v.mean()) if v.size else float("nan"),
              "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
        if v.size >= 2:
            s = stats.summarize(v, confidence=confidence)
            pt.update(std=s["std"], ci_low=s["ci_low"], ci_high=s["ci_high"])
        points.append(pt)
    by_name = {p["point"]: p for p in points}
    base = by_name[baseline]

    others_with_ci = [p["point"] for p in points if p["point"] != baseline and p["n"] >= 2]
    if base["n"] < 2 and others_with_ci:
        raise ReportError(f"baseline point {baseline!r} has {base['n']} usable seed(s); need at least 2 seeds "
                          f"for a confidence interval (choose another --baseline, e.g. {others_with_ci[0]!r})")

    few = [p for p in points if p["n"] < MIN_SEEDS_RECOMMENDED]
    if few:
        limitations.append("Fewer than 5 seeds: " + ", ".join(f"`{p['point']}` (n={p['n']})" for p in few)
                           + ". CIs are wide and the t interval's normality assumption cannot be checked.")
    for p in points:
        if p["n"] < 2:
            limitations.append(f"`{p['point']}` has {p['n']} usable seed(s): no confidence interval, "
                               f"and its comparison is listed as \"not enough seeds\".")

    modes = sorted({m for p in points for (m, _) in p["budgets"] if m is not None})
    if len(modes) > 1:
        limitations.append(f"Budget modes are mixed across runs ({', '.join(modes)}); "
                           f"points were not trained under one matched budget.")

    if comparisons is None:
        pairs = [(p["point"], baseline) for p in points if p["point"] != baseline]
    else:
        pairs = [tuple(x) for x in comparisons]
        bad = sorted({x for pr in pairs for x in pr if x not in by_name})
        if bad:
            raise ReportError(f"declared comparison(s) name unknown point(s) {bad}; points are {list(by_name)}")
    comparisons = []
    for pname, bname in pairs:
        p, base = by_name[pname], by_name[bname]
        c = {"point": p["point"], "baseline": bname, "status": "ok", "dropped": None,
             "matched": _matched_phrase(p, base)}
        if p["n"] < 2 or base["n"] < 2:
            c["status"] = "not enough seeds"
            comparisons.append(c)
            continue
        common = sorted(set(p["seeds"]) & set(base["seeds"]))
        if p["data_order"] == "seed" and base["data_order"] == "seed" and len(common) >= 2:
            a = np.array([p["values"][p["seeds"].index(s)] for s in common])
            b = np.array([base["values"][base["seeds"].index(s)] for s in common])
            res = stats.compare(a, b, paired=True, confidence=confidence)
            only_p = sorted(set(p["seeds"]) - set(common))
            only_b = sorted(set(base["seeds"]) - set(common))
            if only_p or only_b:
                c["dropped"] = (only_p, only_b)
                limitations.append(f"`{p['point']}` vs `{bname}`: paired on common seeds {common}; "
                                   f"unmatched seeds dropped (`{p['point']}`: {only_p}, `{bname}`: {only_b}).")
        else:
            res = stats.compare(p["values"], base["values"], paired=False, confidence=confidence)
        c.update(res)
        comparisons.append(c)

    trends = _trends(points, trend, confidence) if trend else []
    tests = [c for c in comparisons if c["status"] == "ok"] + trends
    adj = stats.correct_pvalues([t["p"] for t in tests], method=correction)
    for c in comparisons:
        c["p_adj"] = float("nan")
    for t, q in zip(tests, adj):
        t["p_adj"] = float(q)

    for c in comparisons:
        if c["status"] != "ok":
            continue
        p, b = by_name[c["point"]], by_name[c["baseline"]]
        if p["ci_low"] <= b["ci_high"] and b["ci_low"] <= p["ci_high"]:
            limitations.append(
                f"The {confidence:.0%} CIs of `{p['point']}` [{p['ci_low']:.4f}, {p['ci_high']:.4f}] and "
                f"`{b['point']}` [{b['ci_low']:.4f}, {b['ci_high']:.4f}] overlap; overlap alone does not mean "
                f"\"no difference\" (see the CI of the difference, which for paired seeds is narrower).")

    fit = fit_note = None
    if "compute" in fits:
        fit, fit_note = _fit(points, metric, n_boot, confidence)
    frontier = frontier_fit = frontier_note = None
    if "frontier" in fits and _n_compute(points) < 3:
        frontier, frontier_fit, frontier_note, lims = _frontier(points, metric, n_boot, confidence)
        limitations += lims
    if fit_note and not fit_note.startswith("Fitted") and frontier_fit is None:
        limitations.append(fit_note)
    if fit is not None:
        if fit["n_compute"] == 3:
            limitations.append("The power law has 3 parameters and the points span only 3 compute values: "
                               "the fit interpolates the means, so a, b and c are weakly determined.")
        if fit["b_at_bound"]:
            limitations.append(f"The fitted exponent b = {fit['b']:.3g} sits on its bound [0, 10]; "
                               f"the data do not support a decreasing power law.")
        if fit["n_boot_ok"] < 0.9 * fit["n_boot"]:
            limitations.append(f"Only {fit['n_boot_ok']} of {fit['n_boot']} bootstrap refits of the power law "
                               f"succeeded; the CI on b is less reliable.")

    param_fit = param_fit_note = matched_compute = None
    if "params" in fits:
        param_fit, param_fit_note, matched_compute, lims = _param_fit(points, metric, use, n_boot, confidence)
        limitations += lims
    scaling_an = None
    if "isoflop" in fits or "parametric" in fits:
        from experiments.study.scaling_report import analyze_scaling

        scaling_an, lims = analyze_scaling(points, metric, fits, confidence)
        limitations += lims

    eval_check = _eval_uncertainty(points, metric) if use == "final" else None
    if eval_check is not None and eval_check["status"] != "ok":
        limitations.append(eval_check["text"])

    studies = sorted({str(r.get("study")) for r in records if r.get("study") is not None})
    return {"metric": metric, "use": use, "correction": correction, "confidence": confidence,
            "baseline": baseline, "points": points, "comparisons": comparisons, "fit": fit,
            "fit_note": fit_note, "limitations": limitations, "modes": modes, "studies": studies,
            "n_records": len(records), "frontier": frontier, "frontier_fit": frontier_fit,
            "frontier_note": frontier_note, "param_fit": param_fit, "param_fit_note": param_fit_note,
            "matched_compute": matched_compute, "fits": fits, "trends": trends, "trend_factor": trend,
            "scaling": scaling_an, "family": {"m": len(tests), "n_metrics": 1, "method": correction},
            "role": None, "eval_check": eval_check}


_EVAL_RATIO = {"eval/loss": ("weight", 1.0), "eval/bpb": ("bytes", 1.0 / math.log(2))}


def _eval_uncertainty(points, metric, n_boot: int = 500) -> dict | None:
    """Sampling error of the evaluation set, from the last eval's per-batch sums (loss and bpb only).

    Per run: the bootstrap SE of sum(nll)/sum(denominator) resampling evaluation batches with
    replacement (fixed seed). Compared with each point's seed SD: the eval set is "small enough" when
    the median eval SE is below half the median seed SD. Returns None for other metrics.
    """
    if metric not in _EVAL_RATIO:
        return None
    den, scale = _EVAL_RATIO[metric]
    rng = np.random.default_rng(0)
    ses, sds, n_batches, missing = [], [], [], 0
    for p in points:
        if p["n"] >= 2:
            sds.append(p["std"])
        for r in p["records"]:
            eb = r.get("eval_batches")
            if not eb or any(den not in b or "nll" not in b for b in eb):
                missing += 1
                continue
            nll = np.array([b["nll"] for b in eb], dtype=float)
            w = np.array([b[den] for b in eb], dtype=float)
            idx = rng.integers(0, nll.size, (n_boot, nll.size))
            vals = scale * nll[idx].sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1.0)
            ses.append(float(np.std(vals, ddof=1)))
            n_batches.append(nll.size)
    total = sum(len(p["records"]) for p in points)
    if missing:
        return {"status": "missing", "text": (
            f"Evaluation-set sampling error not measured: {missing} of {total} runs did not record the "
            f"per-batch sums of their last eval (runs older than that record). Every run is scored on the "
            f"same evaluation batches, so this error shifts all points alike and largely cancels in paired "
            f"comparisons, but it is part of any absolute {metric} figure.")}
    se, sd = float(np.median(ses)), float(np.median(sds)) if sds else float("nan")
    ok = math.isfinite(sd) and se < 0.5 * sd
    text = (f"Evaluation-set sampling error: bootstrap over the {int(np.median(n_batches))} evaluation batches "
            f"of each run's last eval ({n_boot} resamples): median SE {se:.2g} {_unit(metric)} (largest "
            f"{max(ses):.2g}), against a median seed SD of {sd:.2g}"
            + (f": {se / sd:.2f} of it, small." if ok else
               (f": {se / sd:.2f} of it, NOT small; absolute {metric} figures carry this extra error "
                f"(common to every run, as all see the same eval batches)." if math.isfinite(sd) else ".")))
    return {"status": "ok" if ok else "large", "text": text, "se": se, "seed_sd": sd}


def _trends(points, factor: str, confidence: float) -> list[dict]:
    """One trend test per group of points that agree on every override but `factor`."""
    groups: dict[str, list] = {}
    for p in points:
        ov = p["records"][0].get("overrides", {}) if p["records"] else {}
        if factor not in ov:
            continue
        key = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in ov.items() if k != factor) or "all points"
        groups.setdefault(key, []).append((float(ov[factor]), p))
    out = []
    for key, members in groups.items():
        members.sort(key=lambda m: m[0])
        if len({lv for lv, _ in members}) < 2:
            continue
        x = np.concatenate([[lv] * p["n"] for lv, p in members])
        y = np.concatenate([p["values"] for _, p in members])
        if x.size < 3:
            continue
        t = stats.trend_test(x, y, confidence=confidence)
        jt = stats.jonckheere_terpstra([p["values"] for _, p in members if p["n"]])
        t.update(group=key, factor=factor, levels=[lv for lv, _ in members], points=[p["point"] for _, p in members],
                 p_jt=jt["p"], jt_exact=jt["exact"])
        out.append(t)
    return out


def apply_family(analyses: list[dict], method: str = "holm") -> None:
    """Correct every test of several metrics' analyses as one family (in place).

    The family is every comparison t-test and every trend slope of every metric; ``p_adj``
    of each is replaced by the family-wise Holm (or BH) adjusted value.
    """
    tests = [t for an in analyses for t in [c for c in an["comparisons"] if c["status"] == "ok"] + an["trends"]]
    adj = stats.correct_pvalues([t["p"] for t in tests], method=method)
    for t, q in zip(tests, adj):
        t["p_adj"] = float(q)
    for an in analyses:
        an["correction"] = method
        an["family"] = {"m": len(tests), "n_metrics": len(analyses), "method": method}


def _matched_phrase(p: dict, base: dict) -> str:
    pb, bb = p["budgets"], base["budgets"]
    if len(pb) == 1 and pb == bb and pb[0][0] is not None:
        return f"at matched {_BUDGET_WORDS.get(pb[0][0], pb[0][0])}"
    if not pb or not bb or any(m is None for m, _ in pb + bb):
        return "at unrecorded budgets"

    def desc(bs):
        return "/".join(f"{_BUDGET_WORDS.get(m, m)} {_g(v)}" for m, v in bs)
    return f"at different budgets ({desc(pb)} vs {desc(bb)})"


def _n_compute(points) -> int:
    return _distinct_compute(np.array([p["train_flops"] for p in points
                                       if math.isfinite(p["train_flops"]) and p["train_flops"] > 0]))


def _fit(points, metric, n_boot, confidence):
    xs, ys = [], []
    for p in points:
        for r, v in zip(p["records"], p["values"]):
            f = _num(r.get("train_flops"))
            if math.isfinite(f) and f > 0:
                xs.append(f)
                ys.append(v)
    xs, ys = np.array(xs), np.array(ys)
    k = _n_compute(points)
    if k < 3:
        return None, (f"Power-law fit skipped: {k} distinct compute value(s) across points "
                      f"(need 3; values within {COMPUTE_TOL_DECADES} decades count as one).")
    try:
        fit = stats.fit_power_law(xs, ys, n_boot=n_boot, seed=0, confidence=confidence)
    except (RuntimeError, ValueError) as e:
        return None, f"Power-law fit failed: {' '.join(str(e).split())}"
    fit["n_compute"] = k
    return fit, (f"Fitted {metric} = a·C^(-b) + c over {xs.size} runs at {k} compute values: "
                 f"a = {fit['a']:.4g}, b = {fit['b']:.4f} ({confidence:.0%} bootstrap CI "
                 f"[{fit['b_ci_low']:.4f}, {fit['b_ci_high']:.4f}], {fit['n_boot_ok']}/{fit['n_boot']} refits), "
                 f"c = {fit['c']:.4g}.")



def _unit(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]
