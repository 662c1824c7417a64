"""Markdown report and plots for one study's ``results.jsonl``.

    python -m experiments.report results/<name> [--baseline POINT] [--metric eval/bpb]
                                                [--correction holm|bh] [--use final|best]

writes ``results/<name>/report.md``, ``metric_vs_compute.png``, ``curves.png`` and, when
every run has the same compute, ``metric_vs_params.png``.

Design choices (the ones that affect numbers are also stated in the report):
- Lower metric is better (loss, bpb), consistent with ``best`` being a minimum.
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

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import stats
from experiments.results import load_results

__all__ = ["ReportError", "analyze", "render_markdown", "plot_metric_vs_compute", "plot_metric_vs_params",
           "plot_curves", "write_report", "main"]

ALPHA = 0.05
MIN_SEEDS_RECOMMENDED = 5
COMPUTE_TOL_DECADES = 0.05
# Frontier, for curves whose evals do not line up by index: a compute level spans
# at most this many decades (~6%). Narrower than COMPUTE_TOL_DECADES on purpose:
# the last two of 10 evenly spaced evals (0.9 and 1.0 of the budget) are only
# 0.046 decades apart and must stay separate levels.
LEVEL_WIDTH_DECADES = 0.025
# Frontier levels below this fraction of the largest level's compute (less the
# COMPUTE_TOL_DECADES step-rounding tolerance) are left out of the fit: the
# first evals of a run are dominated by warm-up, not by the compute law.
FRONTIER_MIN_FRACTION = 0.1
_BUDGET_WORDS = {"flops": "FLOPs", "tokens": "tokens", "steps": "steps"}
_CORRECTION_NAMES = {"holm": "Holm-Bonferroni (Holm 1979)", "bh": "Benjamini-Hochberg (1995)"}


class ReportError(ValueError):
    """Bad input for a report; the message is one line naming the thing and value."""


# --------------------------------------------------------------------------- analysis

def _budget(rec) -> tuple[str | None, float | None]:
    b = rec.get("budget")
    if not isinstance(b, dict):
        return None, None
    v = _num(b.get("value"))
    return b.get("mode"), (v if math.isfinite(v) else None)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _nanmean(vals) -> float:
    arr = np.array([_num(v) for v in vals], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def analyze(records: list[dict], baseline: str | None = None, metric: str = "eval/bpb",
            correction: str = "holm", use: str = "final", confidence: float = 0.95,
            n_boot: int = 1000) -> dict:
    """Per-point summaries, comparisons against the baseline and the power-law fits.

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

    comparisons = []
    for p in points:
        if p["point"] == baseline:
            continue
        c = {"point": p["point"], "baseline": baseline, "status": "ok", "dropped": None,
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
                limitations.append(f"`{p['point']}` vs `{baseline}`: paired on common seeds {common}; "
                                   f"unmatched seeds dropped (`{p['point']}`: {only_p}, `{baseline}`: {only_b}).")
        else:
            res = stats.compare(p["values"], base["values"], paired=False, confidence=confidence)
        c.update(res)
        comparisons.append(c)

    raw = np.array([c.get("p", np.nan) if c["status"] == "ok" else np.nan for c in comparisons], dtype=float)
    adj = stats.correct_pvalues(raw, method=correction)
    for c, q in zip(comparisons, adj):
        c["p_adj"] = float(q)

    for c in comparisons:
        if c["status"] != "ok":
            continue
        p, b = by_name[c["point"]], base
        if p["ci_low"] <= b["ci_high"] and b["ci_low"] <= p["ci_high"]:
            limitations.append(
                f"The {confidence:.0%} CIs of `{p['point']}` [{p['ci_low']:.4f}, {p['ci_high']:.4f}] and "
                f"`{b['point']}` [{b['ci_low']:.4f}, {b['ci_high']:.4f}] overlap; overlap alone does not mean "
                f"\"no difference\" (see the CI of the difference, which for paired seeds is narrower).")

    fit, fit_note = _fit(points, metric, n_boot, confidence)
    # Selection rule: >= 3 distinct compute values -> the per-run fit above, as before.
    # Fewer (a FLOPs-matched grid) -> the compute law from the learning-curve frontier.
    frontier = frontier_fit = frontier_note = None
    if _n_compute(points) < 3:
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

    param_fit, param_fit_note, matched_compute, lims = _param_fit(points, metric, use, n_boot, confidence)
    limitations += lims

    studies = sorted({str(r.get("study")) for r in records if r.get("study") is not None})
    return {"metric": metric, "use": use, "correction": correction, "confidence": confidence,
            "baseline": baseline, "points": points, "comparisons": comparisons, "fit": fit,
            "fit_note": fit_note, "limitations": limitations, "modes": modes, "studies": studies,
            "n_records": len(records), "frontier": frontier, "frontier_fit": frontier_fit,
            "frontier_note": frontier_note, "param_fit": param_fit, "param_fit_note": param_fit_note,
            "matched_compute": matched_compute}


def _matched_phrase(p: dict, base: dict) -> str:
    pb, bb = p["budgets"], base["budgets"]
    if len(pb) == 1 and pb == bb and pb[0][0] is not None:
        return f"at matched {_BUDGET_WORDS.get(pb[0][0], pb[0][0])}"
    if not pb or not bb or any(m is None for m, _ in pb + bb):
        return "at unrecorded budgets"

    def desc(bs):
        return "/".join(f"{_BUDGET_WORDS.get(m, m)} {_g(v)}" for m, v in bs)
    return f"at different budgets ({desc(pb)} vs {desc(bb)})"


def _g(v) -> str:
    v = _num(v)
    return f"{v:.3g}" if math.isfinite(v) else "n/a"


def _distinct_compute(xs: np.ndarray) -> int:
    lx = np.sort(np.log10(xs))
    return int(1 + np.sum(np.diff(lx) > COMPUTE_TOL_DECADES)) if lx.size else 0


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


# --------------------------------------------------------------------------- frontier and L(N)

def _curve_compute(rec, metric) -> list[tuple[int, float, float]]:
    """(eval index, C, value) for each eval of one run, sorted by step.

    C = FLOPs/token x tokens/step x step (train_flops/steps x step when
    flops_per_token or tokens is missing). The eval index is round(step / e),
    e = the run's eval interval (median step gap, counting from step 0), capped
    at floor(steps / e): the trainer evaluates every e steps and once more at
    the last step when steps is not a multiple of e, and that final eval takes
    the index of the regular eval just before it. Evals at step <= 0 and
    non-finite values are skipped.
    """
    steps = _num(rec.get("steps"))
    if not (math.isfinite(steps) and steps > 0):
        return []
    per_step = _num(rec.get("flops_per_token")) * _num(rec.get("tokens")) / steps
    if not (math.isfinite(per_step) and per_step > 0):
        per_step = _num(rec.get("train_flops")) / steps
    if not (math.isfinite(per_step) and per_step > 0):
        return []
    evals = []
    for e in rec.get("curve") or []:
        if isinstance(e, dict):
            st = _num(e.get("step"))
            if math.isfinite(st) and st > 0:
                evals.append((st, _num(e.get(metric))))
    if not evals:
        return []
    evals.sort(key=lambda t: t[0])
    every = float(np.median(np.diff([0.0] + [st for st, _ in evals])))
    if every <= 0:  # duplicated steps only
        every = evals[0][0]
    last = max(1, int(math.floor(steps / every + 1e-9)))
    return [(min(max(1, int(round(st / every))), last), per_step * st, v)
            for st, v in evals if math.isfinite(v)]


def _level_starts(log_c: np.ndarray) -> np.ndarray:
    """Greedy compute levels over sorted log10 C: a value more than
    LEVEL_WIDTH_DECADES above the current level's first value starts a new level.

    The fallback grouping for curves whose evals do not line up by index.
    Unlike single linkage it cannot chain neighbouring levels together.
    """
    starts: list[float] = []
    for v in np.sort(log_c):
        if not starts or v > starts[-1] + LEVEL_WIDTH_DECADES:
            starts.append(float(v))
    return np.array(starts)


def _levels(entries, log_c: np.ndarray, n_points: int) -> tuple[np.ndarray, str]:
    """Level of each entry (grid index, run index, eval index, C, value) and how it was found.

    By eval index when, at every index, the points' mean computes agree within
    COMPUTE_TOL_DECADES (a FLOPs-matched grid evaluated at the same fractions
    of the budget: they differ by step rounding only); otherwise by compute
    (``_level_starts``).
    """
    idx = np.array([e[2] for e in entries])
    pts = np.array([e[0] for e in entries])
    aligned = True
    for k in np.unique(idx):
        sel = idx == k
        means = [log_c[sel & (pts == g)].mean() for g in range(n_points) if np.any(sel & (pts == g))]
        if max(means) - min(means) > COMPUTE_TOL_DECADES:
            aligned = False
            break
    if aligned:
        return np.searchsorted(np.unique(idx), idx), "eval index"
    starts = _level_starts(log_c)
    # same log values as the starts: no rounding mismatch at a level's first value
    return np.searchsorted(starts, log_c, side="right") - 1, "compute"


def _seed_means(vals: list[np.ndarray]) -> np.ndarray:
    """(points, levels) mean over a point's runs; +inf where it has no value at a level."""
    out = np.full((len(vals), vals[0].shape[1]), np.inf)
    for i, v in enumerate(vals):
        fin = np.isfinite(v)
        cnt = fin.sum(axis=0)
        out[i] = np.where(cnt > 0, np.where(fin, v, 0.0).sum(axis=0) / np.maximum(cnt, 1), np.inf)
    return out


def _frontier_obs(vals, comps, winners, present, keep):
    """Per-seed observations on the frontier: x = the winner's compute at the level, y = its seeds' values."""
    xs, ys = [], []
    for j in np.flatnonzero(keep & present):
        col = vals[winners[j]][:, j]
        col = col[np.isfinite(col)]
        xs += [comps[winners[j], j]] * col.size
        ys += col.tolist()
    return np.array(xs, dtype=float), np.array(ys, dtype=float)


def _percentile(boot: list[float], confidence: float) -> tuple[float, float]:
    if len(boot) < 2:
        return float("nan"), float("nan")
    alpha = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(boot, [alpha, 100 - alpha])
    return float(lo), float(hi)


def _ci(vals: np.ndarray, confidence: float) -> tuple[float, float]:
    if vals.size < 2:
        return float("nan"), float("nan")
    s = stats.summarize(vals, confidence=confidence)
    return s["ci_low"], s["ci_high"]


def _frontier(points, metric, n_boot, confidence):
    """Compute-efficient frontier of the learning curves and L(C) fitted on it.

    Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", Fig. 1 left
    and Sec. 6.1) read the loss-vs-compute law off the lower envelope of the
    learning curves of many model sizes. Here, for a grid of points x seeds:

    1. Every eval of a run is a point (C, metric), C = FLOPs/token x tokens/step x step.
    2. Evals are grouped into compute levels (``_levels``): by eval index when
       the grid is FLOPs-matched and evaluated at the same fractions of the
       budget (the trainer's extra final eval takes the last regular eval's
       index), else by compute, in levels at most LEVEL_WIDTH_DECADES wide
       (rounding to 0.05 decades would merge the evals at 0.9 and 1.0 of the
       budget, 0.046 decades apart). A run with two evals in one level
       contributes its later one.
    3. At each level the point with the lowest seed-mean is the frontier; its
       per-seed values, at its compute, are the observations of the fit.
    4. Levels below FRONTIER_MIN_FRACTION of the largest compute (warm-up) and
       incomplete levels (a point whose curve spans the level's compute has no
       eval in it, so its best point need not be on the frontier) are dropped
       from the fit, but stay in the table.
    5. CI on b: seeds are resampled with replacement within each point (a
       resampled run keeps its whole curve, so levels stay correlated as in the
       data), the frontier is recomputed (the winner may change) and refitted;
       percentile interval, fixed seed. The share of resamples that keep the
       winner of each level is reported too.

    Returns (frontier, fit, note, limitations); frontier is None when no run has
    a curve, fit is None when there are < 3 levels to fit or the fit fails.
    """
    entries = []  # (grid index, run index, eval index, C, value)
    grid, no_curve = [], 0
    for p in points:
        runs = [_curve_compute(r, metric) for r in p["records"]]
        no_curve += sum(not c for c in runs)
        runs = [c for c in runs if c]
        if not runs:
            continue
        for r, run in enumerate(runs):
            entries += [(len(grid), r, k, c, v) for k, c, v in run]
        grid.append((p, len(runs)))
    if not grid:
        return None, None, (f"Frontier fit skipped: no run has a `{metric}` learning curve "
                            f"(curve entries with step and {metric})."), []
    lims = []
    if no_curve:
        lims.append(f"{no_curve} run(s) have no usable `{metric}` learning curve and are left out of the frontier.")

    log_c = np.log10(np.array([e[3] for e in entries]))
    level, grouping = _levels(entries, log_c, len(grid))
    n_lev = int(level.max()) + 1
    vals = [np.full((n, n_lev), np.nan) for _, n in grid]
    cmat = [np.full((n, n_lev), np.nan) for _, n in grid]
    for (g, r, _, c, v), j in zip(entries, level):  # a run's entries are sorted by step: the later eval wins
        vals[g][r, j], cmat[g][r, j] = v, c
    level_min = np.array([log_c[level == j].min() for j in range(n_lev)])
    comps = np.full((len(grid), n_lev), np.nan)
    for g, cm in enumerate(cmat):
        fin = np.isfinite(cm)
        cnt = fin.sum(axis=0)
        comps[g] = np.where(cnt > 0, np.where(fin, cm, 0.0).sum(axis=0) / np.maximum(cnt, 1), np.nan)

    cols = np.arange(n_lev)
    means = _seed_means(vals)
    winners = np.argmin(means, axis=0)
    present = np.isfinite(means[winners, cols])
    early = level_min < float(log_c.max()) + math.log10(FRONTIER_MIN_FRACTION) - COMPUTE_TOL_DECADES
    # A level is incomplete when a point whose curve spans its compute has no eval in it (evals that do not
    # line up, compute grouping only): its best point need not be on the frontier, so it is not fitted.
    pts = np.array([e[0] for e in entries])
    span_lo = np.array([log_c[pts == g].min() for g in range(len(grid))])
    span_hi = np.array([log_c[pts == g].max() for g in range(len(grid))])
    centre = np.array([log_c[level == j].mean() for j in range(n_lev)])
    covers = (span_lo[:, None] <= centre[None, :]) & (centre[None, :] <= span_hi[:, None])
    incomplete = np.any(covers & ~np.isfinite(means), axis=0)
    keep = ~early & ~incomplete

    xs, ys = _frontier_obs(vals, comps, winners, present, keep)
    n_fit_levels = int(np.unique(xs).size)
    fit, note = None, None
    if n_fit_levels < 3:
        note = (f"Frontier fit skipped: {n_fit_levels} complete compute level(s) at or above "
                f"{FRONTIER_MIN_FRACTION:.0%} of the largest compute (need 3).")
    else:
        try:
            fit = stats.fit_power_law(xs, ys, n_boot=0, seed=0, confidence=confidence)
        except (RuntimeError, ValueError) as e:
            note = f"Frontier fit failed: {' '.join(str(e).split())}"

    rng = np.random.default_rng(0)
    same_winner = np.zeros(n_lev)
    boot: list[float] = []
    for _ in range(n_boot):
        vb = [v[rng.integers(0, v.shape[0], v.shape[0])] for v in vals]
        mb = _seed_means(vb)
        wb = np.argmin(mb, axis=0)
        pb = np.isfinite(mb[wb, cols])
        same_winner += (wb == winners) & pb
        if fit is None:
            continue
        xb, yb = _frontier_obs(vb, comps, wb, pb, keep)
        if np.unique(xb).size < 3:
            continue
        try:
            boot.append(stats.refit_power_law(xb, yb, fit)["b"])
        except (RuntimeError, ValueError):
            continue

    levels = []
    for j in range(n_lev):
        if not present[j]:
            continue
        w = winners[j]
        col = vals[w][:, j]
        col = col[np.isfinite(col)]
        lo, hi = _ci(col, confidence)
        order = [i for i in np.argsort(means[:, j], kind="stable") if np.isfinite(means[i, j]) and i != w]
        levels.append({"compute": float(comps[w, j]), "winner": grid[w][0]["point"], "mean": float(means[w, j]),
                       "ci_low": lo, "ci_high": hi, "n": int(col.size),
                       "runner_up": grid[order[0]][0]["point"] if order else None,
                       "margin": float(means[order[0], j] - means[w, j]) if order else float("nan"),
                       "win_share": float(same_winner[j] / n_boot) if n_boot else float("nan"),
                       "in_fit": bool(keep[j]), "n_points": int(np.isfinite(means[:, j]).sum()),
                       "excluded": ("below min fraction" if early[j] else "incomplete" if incomplete[j] else None)})
    curves = {}
    for g, (p, _) in enumerate(grid):
        m = np.where(np.isfinite(means[g]), means[g], np.nan)
        ci = [_ci(vals[g][:, j][np.isfinite(vals[g][:, j])], confidence) for j in range(n_lev)]
        curves[p["point"]] = {"compute": comps[g], "mean": m, "ci_low": np.array([c[0] for c in ci]),
                              "ci_high": np.array([c[1] for c in ci]),
                              "n": np.isfinite(vals[g]).sum(axis=0)}
    frontier = {"levels": levels, "curves": curves, "x": xs, "y": ys,
                "min_fraction": FRONTIER_MIN_FRACTION, "grouping": grouping,
                "level_width_decades": LEVEL_WIDTH_DECADES if grouping == "compute" else None,
                "n_runs": int(sum(n for _, n in grid))}

    lims.append("The frontier is built from intermediate evals of runs whose cosine learning-rate schedule spans "
                "the whole budget: before the last level the rate has not decayed, so those losses sit above "
                "what a run annealed at that compute would reach (most at mid-budget, not at all at the final "
                "eval; Hoffmann et al. 2022 make this point about Kaplan et al.'s frontier). The frontier is an "
                "upper bound on the achievable loss; because the gap shrinks towards the full budget the fitted "
                "exponent may overstate how fast loss falls with compute. Runs whose schedules end at several "
                "budgets would remove this bias.")
    unstable = [lv for lv in levels if lv["in_fit"] and math.isfinite(lv["win_share"]) and lv["win_share"] < 0.8]
    if unstable:
        lims.append(f"At {len(unstable)} frontier level(s) (C = {', '.join(_g(lv['compute']) for lv in unstable)}) "
                    f"the best point changes in more than 20% of the bootstrap resamples: there the leading "
                    f"points are within seed noise of each other.")
    partial = [lv for lv in levels if lv["excluded"] == "incomplete"]
    if partial:
        lims.append(f"{len(partial)} compute level(s) (C = {', '.join(_g(lv['compute']) for lv in partial)}) are "
                    f"left out of the frontier fit: a point whose learning curve spans that compute has no eval "
                    f"there, so the best point at that level may not be on the frontier.")
    top = max(levels, key=lambda lv: lv["compute"])
    pn = {p["point"]: p["params"] for p, _ in grid if math.isfinite(p["params"])}
    if len(set(pn.values())) >= 2 and top["winner"] in pn:
        if pn[top["winner"]] == max(pn.values()):
            lims.append(f"At the largest compute the best point is `{top['winner']}`, the largest model in the "
                        f"grid: the compute-optimal size there may be larger than any size tried.")
        elif pn[top["winner"]] == min(pn.values()):
            lims.append(f"At the largest compute the best point is `{top['winner']}`, the smallest model in the "
                        f"grid: the compute-optimal size there may be smaller than any size tried.")

    if fit is None:
        if note:
            lims.append(note)
        return frontier, None, note, lims
    lo, hi = _percentile(boot, confidence)
    xmin, xmax = float(xs.min()), float(xs.max())
    span = math.log10(xmax / xmin)
    fit.update(b_ci_low=lo, b_ci_high=hi, n_boot=int(n_boot), n_boot_ok=len(boot), n_levels=n_fit_levels,
               n_obs=int(xs.size), compute_min=xmin, compute_max=xmax, span_decades=span,
               ci_method="percentile bootstrap over seeds within each point")
    n_early, n_incomplete = int(np.sum(present & early)), int(np.sum(present & ~early & incomplete))
    note = (f"Fitted {metric} = a·C^(-b) + c on the compute-efficient frontier: {xs.size} per-seed observations "
            f"at {n_fit_levels} compute levels from {xmin:.3g} to {xmax:.3g} FLOPs ({span:.2f} decades"
            + (f"; {n_early} level(s) below {FRONTIER_MIN_FRACTION:.0%} of the largest compute left out" if n_early
               else "")
            + (f"; {n_incomplete} incomplete level(s) left out" if n_incomplete else "")
            + f"): a = {fit['a']:.4g}, b = {fit['b']:.4f} ({confidence:.0%} bootstrap CI "
            f"[{lo:.4f}, {hi:.4f}], {len(boot)}/{n_boot} refits resampling seeds within each point), "
            f"c = {fit['c']:.4g}.")
    if span < 2:
        lims.append(f"The frontier spans only {span:.2f} decades of compute: over so short a range the exponent b "
                    f"and the floor c trade off, and the law should not be extrapolated far beyond it.")
    lims += _fit_quality_lims(fit, n_fit_levels, "frontier fit", "compute levels")
    return frontier, fit, note, lims


def _fit_quality_lims(fit, k, what, unit) -> list[str]:
    out = []
    if k == 3:
        out.append(f"The {what} has 3 parameters and only 3 {unit}: it interpolates the means, so a, b and c "
                   f"are weakly determined.")
    if fit["b_at_bound"]:
        out.append(f"The {what}'s exponent b = {fit['b']:.3g} sits on its bound [0, 10]; the data do not "
                   f"support a decreasing power law.")
    if fit["n_boot"] and fit["n_boot_ok"] < 0.9 * fit["n_boot"]:
        out.append(f"Only {fit['n_boot_ok']} of {fit['n_boot']} bootstrap refits of the {what} succeeded; "
                   f"the CI on b is less reliable.")
    return out


def _param_fit(points, metric, use, n_boot, confidence):
    """L(N) = a·N^(-b) + c over per-run (params, metric) when every run has the same compute.

    Bootstrap CI on b: seeds resampled with replacement within each point (the
    sizes are fixed by design), refit, percentile interval, fixed seed.
    Returns (fit, note, matched_compute, limitations); note is None when the
    fit does not apply (compute not matched, or fewer than 2 parameter counts).
    """
    tf = np.array([_num(r.get("train_flops")) for p in points for r in p["records"]], dtype=float)
    if tf.size == 0 or not np.all(np.isfinite(tf) & (tf > 0)) or _distinct_compute(tf) != 1:
        return None, None, None, []
    compute = float(np.mean(tf))
    groups = []  # (point, params per run, values)
    for p in points:
        n = np.array([_num(r.get("params")) for r in p["records"]], dtype=float)
        ok = np.isfinite(n) & (n > 0)
        if ok.any():
            groups.append((p, n[ok], p["values"][ok]))
    x = np.concatenate([g[1] for g in groups]) if groups else np.array([])
    k = int(np.unique(x).size)
    if k < 2:
        return None, None, compute, []
    where = f"at matched compute C = {compute:.3g} FLOPs"
    if k < 3:
        note = f"Parameter fit skipped: {k} distinct parameter counts {where} (need 3)."
        return None, note, compute, [note]
    y = np.concatenate([g[2] for g in groups])
    try:
        fit = stats.fit_power_law(x, y, n_boot=0, seed=0, confidence=confidence)
    except (RuntimeError, ValueError) as e:
        note = f"Parameter fit failed: {' '.join(str(e).split())}"
        return None, note, compute, [note]
    rng = np.random.default_rng(0)
    boot: list[float] = []
    for _ in range(n_boot):
        idx = [rng.integers(0, g[1].size, g[1].size) for g in groups]
        xb = np.concatenate([g[1][i] for g, i in zip(groups, idx)])
        yb = np.concatenate([g[2][i] for g, i in zip(groups, idx)])
        try:
            boot.append(stats.refit_power_law(xb, yb, fit)["b"])
        except (RuntimeError, ValueError):
            continue
    lo, hi = _percentile(boot, confidence)
    fit.update(b_ci_low=lo, b_ci_high=hi, n_boot=int(n_boot), n_boot_ok=len(boot), n_params=k, n_obs=int(x.size),
               compute=compute, ci_method="percentile bootstrap over seeds within each point")
    note = (f"Fitted {metric} = a·N^(-b) + c {where} over {x.size} runs at {k} parameter counts "
            f"({use} values): a = {fit['a']:.4g}, b = {fit['b']:.4f} ({confidence:.0%} bootstrap CI "
            f"[{lo:.4f}, {hi:.4f}], {len(boot)}/{n_boot} refits resampling seeds within each point), "
            f"c = {fit['c']:.4g}.")
    lims = _fit_quality_lims(fit, k, "parameter fit", "parameter counts")
    best = min((g for g in groups if g[2].size), key=lambda g: float(np.mean(g[2])))
    if float(best[1][0]) < float(x.max()):
        lims.append(f"{where.capitalize()} the lowest mean {metric} is at `{best[0]['point']}` "
                    f"(N = {_si(best[1][0])}), not at the largest model: past the compute-optimal size the loss "
                    f"rises again (an IsoFLOP profile, Hoffmann et al. 2022), which a decreasing power law in N "
                    f"cannot follow, so its b is not a parameter-scaling exponent.")
    return fit, note, compute, lims


# --------------------------------------------------------------------------- rendering

def _esc(s: str) -> str:
    return str(s).replace("|", "\\|")


def _si(v) -> str:
    v = _num(v)
    if not math.isfinite(v):
        return "n/a"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def _p(v) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.2g}"


def _pm(mean: float, half: float) -> tuple[str, str]:
    """Format a value and its CI half-width: half-width to 2 significant digits, at least 2 decimals."""
    if not math.isfinite(half) or half <= 0:
        return f"{mean:.4f}", f"{half:.2g}" if math.isfinite(half) else "n/a"
    dec = max(2, 1 - math.floor(math.log10(half)))
    return f"{mean:.{dec}f}", f"{half:.{dec}f}"


def _unit(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]


def _plain_line(c: dict, corr: str, unit: str) -> str:
    if c["status"] != "ok":
        return f"`{c['point']}` vs `{c['baseline']}`: not enough seeds for a comparison (need >= 2 in each)."
    half = (c["ci_high"] - c["ci_low"]) / 2
    diff_s, half_s = _pm(abs(c["diff"]), half)
    n = c["n_a"] if c["paired"] else f"{c['n_a']}+{c['n_b']}"
    test = f"paired t on {n} common seeds" if c["paired"] else f"Welch t on {n} seeds"
    if c["paired"]:
        test += f", Wilcoxon p = {_p(c['p_wilcoxon'])}"
    if math.isfinite(c["p_adj"]) and c["p_adj"] < ALPHA and c["diff"] != 0:
        # The verb carries the direction, so the sentence gives magnitudes.
        verb = "beats" if c["diff"] < 0 else "is worse than"
        tail = f"(p_{corr} = {_p(c['p_adj'])}, {c['d_kind']} = {abs(c['d']):.2f}; {test})"
        return f"{c['point']} {verb} {c['baseline']} by {diff_s} ± {half_s} {unit} {c['matched']} {tail}"
    tail = f"(p_{corr} = {_p(c['p_adj'])}, {c['d_kind']} = {c['d']:.2f}; {test})"
    sdiff, _ = _pm(c["diff"], half)
    sdiff = sdiff if sdiff.startswith("-") else "+" + sdiff
    return (f"{c['point']} does not differ significantly from {c['baseline']}: {sdiff} ± {half_s} {unit} "
            f"{c['matched']} {tail}")


def render_markdown(an: dict, title: str = "", load_errors=()) -> str:
    """Markdown text of the report for an ``analyze`` result."""
    metric, corr, conf = an["metric"], an["correction"], an["confidence"]
    unit = _unit(metric)
    lines = [f"# Report: {title or ', '.join(an['studies']) or 'study'}", ""]
    budgets = sorted({b for p in an["points"] for b in p["budgets"]}, key=str)
    if an["modes"]:
        bdesc = ", ".join(f"{m} = {_g(v)}" for m, v in budgets if m is not None)
        lines.append(f"- Budget mode: **{', '.join(an['modes'])}** ({bdesc})")
    else:
        lines.append("- Budget mode: not recorded")
    use_desc = "value at the last eval" if an["use"] == "final" else "best (minimum) value over evals"
    lines += [
        f"- Metric: `{metric}`, {use_desc} of each run; lower is better.",
        f"- Runs: {an['n_records']} records, {len(an['points'])} points; baseline: `{an['baseline']}`.",
        f"- Means: {conf:.0%} Student-t CIs over seeds. Comparisons vs the baseline: paired t-test on common "
        f"seeds when both points have seed-determined data order, Welch's t-test otherwise; "
        f"p-values corrected across {sum(c['status'] == 'ok' for c in an['comparisons'])} comparisons with "
        f"{_CORRECTION_NAMES[corr]}. Significance at corrected p < {ALPHA}.",
        "- Cohen's d: pooled-SD d for Welch comparisons; d_z = mean(diff)/sd(diff) for paired ones "
        "(Cohen 1988), which is larger than d when seeds are correlated. The Wilcoxon signed-rank p "
        "(paired only, uncorrected) is a distribution-free check; with n pairs it cannot go below 2^(1-n) "
        "(0.0625 for 5 seeds).",
        "",
        "## Results",
        "",
        "| point | params | train FLOPs | n | mean ± CI | diff vs baseline ± CI | p (raw) | p (corrected) | Cohen's d |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    comp = {c["point"]: c for c in an["comparisons"]}
    for p in an["points"]:
        if p["n"] >= 2:
            m, h = _pm(p["mean"], (p["ci_high"] - p["ci_low"]) / 2)
            ms = f"{m} ± {h}"
        elif p["n"] == 1:
            ms = f"{p['mean']:.4f} (no CI)"
        else:
            ms = "n/a"
        name = f"`{_esc(p['point'])}`"
        row = [name, _si(p["params"]), f"{p['train_flops']:.3g}" if math.isfinite(p["train_flops"]) else "n/a",
               str(p["n"]), ms]
        if p["point"] == an["baseline"]:
            row[0] += " (baseline)"
            row += ["baseline", "–", "–", "–"]
        elif comp[p["point"]]["status"] != "ok":
            row += ["not enough seeds", "–", "–", "–"]
        else:
            c = comp[p["point"]]
            d, h = _pm(c["diff"], (c["ci_high"] - c["ci_low"]) / 2)
            d = d if d.startswith("-") else "+" + d
            row += [f"{d} ± {h}", _p(c["p"]), _p(c["p_adj"]), f"{c['d']:.2f} ({c['d_kind']})"]
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Comparisons", ""]
    if an["comparisons"]:
        lines += [f"- {_plain_line(c, corr, unit)}" for c in an["comparisons"]]
    else:
        lines.append("- No comparisons (a single point, or every point has a single seed).")

    lines += ["", "## Scaling fit", "", an["fit_note"], ""]
    lines += _frontier_lines(an) + _param_lines(an)

    lim = list(an["limitations"])
    if load_errors:
        lim.insert(0, f"{len(load_errors)} malformed line(s) in results.jsonl were skipped: "
                      + "; ".join(f"line {n} ({r})" for n, r in load_errors))
    lines += ["## Limitations", ""] + ([f"- {x}" for x in lim] if lim else ["- None noted."])
    lines += ["", "## Plots", "", f"![{metric} vs compute](metric_vs_compute.png)", "",
              f"![{metric} curves](curves.png)", ""]
    if an.get("param_fit_note") is not None:
        lines += [f"![{metric} vs parameters](metric_vs_params.png)", ""]
    return "\n".join(lines)


def _frontier_lines(an: dict) -> list[str]:
    fr, note = an.get("frontier"), an.get("frontier_note")
    if fr is None and note is None:
        return []
    metric, conf = an["metric"], an["confidence"]
    out = ["### Loss vs compute: compute-efficient frontier of the learning curves", ""]
    if fr is not None:
        group = ("by eval index (the points' evals sit at the same fractions of one budget; a final eval a few "
                 "steps after the last regular one takes its place)" if fr["grouping"] == "eval index" else
                 f"by compute, each at most {fr['level_width_decades']} decades wide (the points' evals do not "
                 f"line up by index; a run with two evals in one level contributes the later one)")
        out += [f"Method (Kaplan et al. 2020, Fig. 1 left): every eval of every run is a point "
                f"(C = FLOPs/token × tokens/step × step, `{metric}` at that eval, whatever the "
                f"final/best choice above). Evals are grouped into compute levels {group}. At each level "
                f"the point with the lowest seed mean is on the frontier, and its per-seed values at its compute "
                f"are the observations for L(C) = a·C^(-b) + c. Levels below {fr['min_fraction']:.0%} of the "
                f"largest compute (warm-up), and levels where a point whose curve spans that compute has no eval, "
                f"are listed but not fitted. CI on b: "
                f"percentile bootstrap resampling seeds with replacement within each point (each run's curve "
                f"kept whole), recomputing the frontier and refitting; with few seeds per point it is somewhat "
                f"narrower than the true uncertainty. \"Same winner\" is the share of those resamples in which "
                f"the same point wins the level.", ""]
    if note:
        out += [note, ""]
    if fr is not None and fr["levels"]:
        out += [f"Best point at each compute level (which size is compute-optimal at C); mean ± {conf:.0%} CI "
                f"over its seeds:", "",
                "| compute (FLOPs) | best point | mean ± CI | n | next best (Δ) | same winner | in fit |",
                "|---|---|---|---|---|---|---|"]
        for lv in fr["levels"]:
            if lv["n"] >= 2:
                m, h = _pm(lv["mean"], (lv["ci_high"] - lv["ci_low"]) / 2)
                ms = f"{m} ± {h}"
            else:
                ms = f"{lv['mean']:.4f} (no CI)"
            nxt = (f"`{_esc(lv['runner_up'])}` (+{lv['margin']:.3g})" if lv["runner_up"] is not None else "–")
            share = f"{lv['win_share']:.0%}" if math.isfinite(lv["win_share"]) else "n/a"
            fitted = ("yes" if lv["in_fit"] else
                      f"no (< {fr['min_fraction']:.0%} of max)" if lv["excluded"] == "below min fraction" else
                      "no (incomplete)")
            out.append(f"| {lv['compute']:.3g} | `{_esc(lv['winner'])}` | {ms} | {lv['n']} | {nxt} | {share} | "
                       f"{fitted} |")
        out.append("")
    return out


def _param_lines(an: dict) -> list[str]:
    note = an.get("param_fit_note")
    if note is None:
        return []
    return ["### Loss vs parameters at matched compute", "",
            f"Method: per-run (parameters N, `{an['metric']}`) points, every run trained with the same compute "
            f"C = {an['matched_compute']:.3g} FLOPs, fitted with L(N) = a·N^(-b) + c; CI on b from the percentile "
            f"bootstrap over seeds within each point. At matched compute a smaller model sees more tokens, so "
            f"this is loss vs size along one compute budget (an IsoFLOP slice), not L(N) at convergence as in "
            f"Kaplan et al. 2020.", "", note, ""]


# --------------------------------------------------------------------------- plots

def plot_metric_vs_compute(ax, an: dict) -> None:
    """Per-seed points, per-point mean ± CI and (if fitted) the power law, x = train FLOPs (log).

    When the compute law comes from the learning-curve frontier (no per-run fit,
    ``an["frontier"]`` set), it shows each point's mean learning curve vs compute
    instead, the frontier levels and the frontier fit.
    """
    if an["fit"] is None and an.get("frontier") is not None:
        _plot_frontier(ax, an)
        return
    metric = an["metric"]
    cmap = _colors(len(an["points"]))
    legend_points = len(an["points"]) <= 12
    for i, p in enumerate(an["points"]):
        xs = np.array([_num(r.get("train_flops")) for r in p["records"]])
        ok = np.isfinite(xs) & (xs > 0)
        if not ok.any():
            continue
        ax.scatter(xs[ok], p["values"][ok], s=12, alpha=0.4, color=cmap[i], zorder=2)
        yerr = None
        if p["n"] >= 2:
            yerr = [[p["mean"] - p["ci_low"]], [p["ci_high"] - p["mean"]]]
        ax.errorbar([p["train_flops"]], [p["mean"]], yerr=yerr, fmt="o", ms=6, capsize=4, color=cmap[i],
                    zorder=3, label=p["point"] if legend_points else None)
    fit = an["fit"]
    if fit is not None:
        xs = [_num(r.get("train_flops")) for p in an["points"] for r in p["records"]]
        xs = np.array([x for x in xs if math.isfinite(x) and x > 0])
        grid = np.logspace(np.log10(xs.min()) - 0.1, np.log10(xs.max()) + 0.1, 200)
        ax.plot(grid, stats.power_law(grid, fit["a"], fit["b"], fit["c"]), "k--", zorder=1,
                label=(f"fit {fit['a']:.3g}·C^(-b) + {fit['c']:.3g}, b = {fit['b']:.3f} "
                       f"[{fit['b_ci_low']:.3f}, {fit['b_ci_high']:.3f}]"))
    ax.set_xscale("log")
    ax.set_xlabel("train FLOPs")
    ax.set_ylabel(f"{metric} ({an['use']})")
    ax.set_title(f"{metric} vs compute (mean ± {an['confidence']:.0%} CI)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _plot_frontier(ax, an: dict) -> None:
    fr, fit, metric = an["frontier"], an.get("frontier_fit"), an["metric"]
    names = [p["point"] for p in an["points"]]
    cmap = dict(zip(names, _colors(len(names))))
    legend_points = len(names) <= 12
    for name, cv in fr["curves"].items():
        ok = np.isfinite(cv["compute"]) & np.isfinite(cv["mean"])
        ax.plot(cv["compute"][ok], cv["mean"][ok], "-", marker=".", ms=4, lw=1.2, alpha=0.85, color=cmap[name],
                zorder=2, label=name if legend_points else None)
        band = ok & np.isfinite(cv["ci_low"]) & np.isfinite(cv["ci_high"])
        if band.sum() >= 2:
            ax.fill_between(cv["compute"][band], cv["ci_low"][band], cv["ci_high"][band], color=cmap[name],
                            alpha=0.15, lw=0, zorder=1)
    for in_fit in (True, False):
        sel = [lv for lv in fr["levels"] if lv["in_fit"] == in_fit]
        if not sel:
            continue
        ax.scatter([lv["compute"] for lv in sel], [lv["mean"] for lv in sel], s=60, zorder=4, edgecolors="k",
                   linewidths=1.2, facecolors=[cmap[lv["winner"]] for lv in sel] if in_fit else "none")
        # Neutral legend handle: the markers themselves take the winner's colour.
        ax.scatter([], [], s=60, edgecolors="k", linewidths=1.2, facecolors="white" if in_fit else "none",
                   label=("frontier: best point per level (its colour)" if in_fit else
                          "best point, level not fitted"))
    if fit is not None:
        grid = np.logspace(np.log10(fit["compute_min"]) - 0.05, np.log10(fit["compute_max"]) + 0.05, 200)
        ax.plot(grid, stats.power_law(grid, fit["a"], fit["b"], fit["c"]), "k--", zorder=3,
                label=(f"frontier fit {fit['a']:.3g}·C^(-b) + {fit['c']:.3g}, b = {fit['b']:.3f} "
                       f"[{fit['b_ci_low']:.3f}, {fit['b_ci_high']:.3f}]"))
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs so far, C")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} learning curves vs compute and their frontier (mean ± {an['confidence']:.0%} CI)",
                 fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def plot_metric_vs_params(ax, an: dict) -> None:
    """At matched compute: per-seed points, per-point mean ± CI and (if fitted) L(N), x = parameters (log)."""
    metric, fit = an["metric"], an.get("param_fit")
    cmap = _colors(len(an["points"]))
    legend_points = len(an["points"]) <= 12
    xs_all = []
    for i, p in enumerate(an["points"]):
        xs = np.array([_num(r.get("params")) for r in p["records"]], dtype=float)
        ok = np.isfinite(xs) & (xs > 0)
        if not ok.any():
            continue
        xs_all += xs[ok].tolist()
        ax.scatter(xs[ok], p["values"][ok], s=12, alpha=0.4, color=cmap[i], zorder=2)
        yerr = [[p["mean"] - p["ci_low"]], [p["ci_high"] - p["mean"]]] if p["n"] >= 2 else None
        ax.errorbar([p["params"]], [p["mean"]], yerr=yerr, fmt="o", ms=6, capsize=4, color=cmap[i], zorder=3,
                    label=p["point"] if legend_points else None)
    if fit is not None and xs_all:
        grid = np.logspace(np.log10(min(xs_all)) - 0.1, np.log10(max(xs_all)) + 0.1, 200)
        ax.plot(grid, stats.power_law(grid, fit["a"], fit["b"], fit["c"]), "k--", zorder=1,
                label=(f"fit {fit['a']:.3g}·N^(-b) + {fit['c']:.3g}, b = {fit['b']:.3f} "
                       f"[{fit['b_ci_low']:.3f}, {fit['b_ci_high']:.3f}]"))
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"{metric} ({an['use']})")
    c = an.get("matched_compute")
    where = f" at matched compute C = {c:.3g} FLOPs" if c is not None else ""
    ax.set_title(f"{metric} vs parameters{where} (mean ± {an['confidence']:.0%} CI)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def plot_curves(ax, records: list[dict], metric: str) -> None:
    """Eval metric vs step, one line per run, one colour per point."""
    order = list(dict.fromkeys(r["point"] for r in records))
    cmap = dict(zip(order, _colors(len(order))))
    labelled = set()
    drawn = 0
    for r in records:
        pts = [(c.get("step"), c.get(metric)) for c in r.get("curve") or [] if isinstance(c, dict)]
        pts = [(s, v) for s, v in pts if s is not None and v is not None]
        if not pts:
            continue
        s, v = zip(*pts)
        lab = r["point"] if r["point"] not in labelled and len(order) <= 12 else None
        labelled.add(r["point"])
        ax.plot(s, v, color=cmap[r["point"]], alpha=0.7, lw=1, label=lab)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, f"no '{metric}' curves in the records", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training ({drawn} runs)")
    if labelled and drawn and len(order) <= 12:
        ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


def _colors(n: int):
    from matplotlib import colormaps
    cm = colormaps["tab10" if n <= 10 else "viridis"]
    return [cm(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _save(draw, path: Path) -> None:
    # Figure + Agg canvas, not pyplot: no global backend switch, safe inside notebooks.
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


# --------------------------------------------------------------------------- entry points

def write_report(results_dir, baseline: str | None = None, metric: str = "eval/bpb",
                 correction: str = "holm", use: str = "final", n_boot: int = 1000) -> Path:
    """Write report.md, metric_vs_compute.png, curves.png and (matched compute, >= 2 model sizes)
    metric_vs_params.png into ``results_dir``; return report.md's path.

    ``n_boot`` is the number of bootstrap refits for the CI on the power-law
    exponent. Deterministic for the same input (bootstrap seeds are fixed).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    with warnings.catch_warnings():
        # Malformed lines are reported inside the report instead.
        warnings.simplefilter("ignore", UserWarning)
        records, errors = load_results(results_dir / "results.jsonl", return_errors=True)
    if errors:
        warnings.warn(f"{results_dir / 'results.jsonl'}: skipped {len(errors)} malformed line(s) at "
                      f"line(s) {[n for n, _ in errors]}", UserWarning, stacklevel=2)
    an = analyze(records, baseline=baseline, metric=metric, correction=correction, use=use, n_boot=n_boot)
    md = render_markdown(an, title=", ".join(an["studies"]) or results_dir.name, load_errors=errors)
    _save(lambda ax: plot_metric_vs_compute(ax, an), results_dir / "metric_vs_compute.png")
    _save(lambda ax: plot_curves(ax, records, metric), results_dir / "curves.png")
    if an["param_fit_note"] is not None:
        _save(lambda ax: plot_metric_vs_params(ax, an), results_dir / "metric_vs_params.png")
    out = results_dir / "report.md"
    out.write_text(md, encoding="utf-8")
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line on stderr, like every other input error of this command.
        self.exit(2, f"error: {' '.join(message.split())}\n")


def main(argv=None) -> int:
    ap = _Parser(prog="python -m experiments.report",
                                 description="Write report.md and plots for a study's results.jsonl.")
    ap.add_argument("results_dir", help="directory containing results.jsonl")
    ap.add_argument("--baseline", default=None, help="point to compare against (default: first in file)")
    ap.add_argument("--metric", default="eval/bpb")
    ap.add_argument("--correction", choices=["holm", "bh"], default="holm")
    ap.add_argument("--use", choices=["final", "best"], default="final")
    args = ap.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = write_report(args.results_dir, baseline=args.baseline, metric=args.metric,
                                correction=args.correction, use=args.use)
    except (ReportError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
