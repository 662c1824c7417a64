"""Scaling-law fits for FLOPs-matched studies: the compute-efficient frontier and L(N).

`analysis.py` runs them and states the design choices; `report.py` renders the results.
"""

from __future__ import annotations

import math

import numpy as np

from experiments.study import stats

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


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")

def _g(v) -> str:
    v = _num(v)
    return f"{v:.3g}" if math.isfinite(v) else "n/a"

def _distinct_compute(xs: np.ndarray) -> int:
    lx = np.sort(np.log10(xs))
    return int(1 + np.sum(np.diff(lx) > COMPUTE_TOL_DECADES)) if lx.size else 0

def _si(v) -> str:
    v = _num(v)
    if not math.isfinite(v):
        return "n/a"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"

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
