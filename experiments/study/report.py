"""Markdown report and plots for one study's ``results.jsonl``.

    python -m experiments.study.report results/<name> [--baseline POINT] [--metric eval/bpb]
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

from experiments.study import stats
from experiments.study.plots import (_save, plot_curves, plot_metric_vs_compute,  # noqa: F401  (public API)
                                      plot_metric_vs_params)
from experiments.study.results import load_results
from experiments.study.fits import COMPUTE_TOL_DECADES, _distinct_compute, _frontier, _g, _num, _param_fit, _si
from nn.errors import ReportError
from trainer.metrics import higher_is_better

__all__ = ["ReportError", "analyze", "render_markdown", "plot_metric_vs_compute", "plot_metric_vs_params",
           "plot_curves", "write_report", "main"]

ALPHA = 0.05
MIN_SEEDS_RECOMMENDED = 5
_BUDGET_WORDS = {"flops": "FLOPs", "tokens": "tokens", "steps": "steps"}
_CORRECTION_NAMES = {"holm": "Holm-Bonferroni (Holm 1979)", "bh": "Benjamini-Hochberg (1995)"}



# --------------------------------------------------------------------------- analysis

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


# --------------------------------------------------------------------------- rendering

def _esc(s: str) -> str:
    return str(s).replace("|", "\\|")


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


def _plain_line(c: dict, corr: str, unit: str, higher: bool = False) -> str:
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
        verb = "beats" if (c["diff"] > 0) == higher else "is worse than"
        tail = f"(p_{corr} = {_p(c['p_adj'])}, {c['d_kind']} = {abs(c['d']):.2f}; {test})"
        return f"{c['point']} {verb} {c['baseline']} by {diff_s} ± {half_s} {unit} {c['matched']} {tail}"
    tail = f"(p_{corr} = {_p(c['p_adj'])}, {c['d_kind']} = {c['d']:.2f}; {test})"
    sdiff, _ = _pm(c["diff"], half)
    sdiff = sdiff if sdiff.startswith("-") else "+" + sdiff
    return (f"{c['point']} does not differ significantly from {c['baseline']}: {sdiff} ± {half_s} {unit} "
            f"{c['matched']} {tail}")


def render_markdown(an: dict, title: str = "", load_errors=(), suffix: str = "") -> str:
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
        f"- Metric: `{metric}`, {use_desc} of each run; {'higher' if higher_is_better(metric) else 'lower'} is better.",
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
        lines += [f"- {_plain_line(c, corr, unit, higher_is_better(metric))}" for c in an["comparisons"]]
    else:
        lines.append("- No comparisons (a single point, or every point has a single seed).")

    lines += ["", "## Scaling fit", "", an["fit_note"], ""]
    lines += _frontier_lines(an) + _param_lines(an)

    lim = list(an["limitations"])
    if load_errors:
        lim.insert(0, f"{len(load_errors)} malformed line(s) in results.jsonl were skipped: "
                      + "; ".join(f"line {n} ({r})" for n, r in load_errors))
    lines += ["## Limitations", ""] + ([f"- {x}" for x in lim] if lim else ["- None noted."])
    lines += ["", "## Plots", "", f"![{metric} vs compute](metric_vs_compute{suffix}.png)", "",
              f"![{metric} curves](curves{suffix}.png)", ""]
    if an.get("param_fit_note") is not None:
        lines += [f"![{metric} vs parameters](metric_vs_params{suffix}.png)", ""]
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


# --------------------------------------------------------------------------- entry points

def write_report(results_dir, baseline: str | None = None, metric: str = "eval/bpb",
                 correction: str = "holm", use: str = "final", n_boot: int = 1000, suffix: str = "") -> Path:
    """Write report.md, metric_vs_compute.png, curves.png and (matched compute, >= 2 model sizes)
    metric_vs_params.png into ``results_dir``; return report.md's path.

    ``suffix`` is appended to every file name (``report_bpb.md``, ``curves_bpb.png``) so one
    results folder can hold a report per metric.

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
    md = render_markdown(an, title=", ".join(an["studies"]) or results_dir.name, load_errors=errors, suffix=suffix)
    _save(lambda ax: plot_metric_vs_compute(ax, an), results_dir / f"metric_vs_compute{suffix}.png")
    _save(lambda ax: plot_curves(ax, records, metric), results_dir / f"curves{suffix}.png")
    if an["param_fit_note"] is not None:
        _save(lambda ax: plot_metric_vs_params(ax, an), results_dir / f"metric_vs_params{suffix}.png")
    out = results_dir / f"report{suffix}.md"
    out.write_text(md, encoding="utf-8")
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line on stderr, like every other input error of this command.
        self.exit(2, f"error: {' '.join(message.split())}\n")


def main(argv=None) -> int:
    ap = _Parser(prog="python -m experiments.study.report",
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
