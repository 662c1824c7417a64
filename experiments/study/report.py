"""Markdown report and plots for one study's ``results.jsonl``.

    python -m experiments.study.report results/<name> [--baseline POINT] [--metric eval/bpb]
                                                [--correction holm|bh] [--use final|best]

writes ``results/<name>/report.md``, ``metric_vs_compute.png``, ``curves.png`` and, when
every run has the same compute, ``metric_vs_params.png``.

The statistics (and the design choices that affect numbers, also stated in each report) are
``analysis.py``'s.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from experiments.study import stats
from experiments.study.analysis import _CORRECTION_NAMES, FIT_KINDS, _unit, analyze, apply_family
from experiments.study.plots import (_save, plot_curves, plot_metric_vs_compute,  # noqa: F401  (public API)
                                      plot_metric_vs_params)
from experiments.study.results import load_results
from experiments.study.fits import _g, _num, _si
from nn.errors import ReportError
from trainer.metrics import higher_is_better

__all__ = ["ReportError", "analyze", "apply_family", "write_study_reports", "render_markdown", "plot_metric_vs_compute", "plot_metric_vs_params",
           "plot_curves", "write_report", "main"]

ALPHA = 0.05


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
    role = an.get("role")
    if role is not None:
        lines.append(f"- Protocol: primary metric `{role['primary']}`"
                     + (f"; secondary: {', '.join(f'`{m}`' for m in role['secondary'])}" if role["secondary"] else "")
                     + (". **This is the primary metric.**" if role["primary"] == metric else
                        ". **This report is for a secondary metric**: its results support, and never replace, "
                        "the primary metric's; none is a headline result."))
    budgets = sorted({b for p in an["points"] for b in p["budgets"]}, key=str)
    if an["modes"]:
        bdesc = ", ".join(f"{m} = {_g(v)}" for m, v in budgets if m is not None)
        lines.append(f"- Budget mode: **{', '.join(an['modes'])}** ({bdesc})")
    else:
        lines.append("- Budget mode: not recorded")
    use_desc = "value at the last eval" if an["use"] == "final" else "best (minimum) value over evals"
    fam = an.get("family") or {"m": sum(c['status'] == 'ok' for c in an['comparisons']), "n_metrics": 1}
    if fam["n_metrics"] > 1:
        family = (f"p-values corrected as one family of {fam['m']} tests (every comparison and trend test of "
                  f"all {fam['n_metrics']} metrics of the study)")
    elif an.get("trends"):
        family = f"p-values corrected across {fam['m']} tests (comparisons and trend tests)"
    else:
        family = f"p-values corrected across {fam['m']} comparisons"
    lines += [
        f"- Metric: `{metric}`, {use_desc} of each run; {'higher' if higher_is_better(metric) else 'lower'} is better.",
        f"- Runs: {an['n_records']} records, {len(an['points'])} points; baseline: `{an['baseline']}`.",
        f"- Means: {conf:.0%} Student-t CIs over seeds. Comparisons vs the baseline: paired t-test on common "
        f"seeds when both points have seed-determined data order, Welch's t-test otherwise; "
        f"{family} with {_CORRECTION_NAMES[corr]}. Significance at corrected p < {ALPHA}.",
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
    comp = {c["point"]: c for c in an["comparisons"] if c["baseline"] == an["baseline"]}
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
        elif p["point"] not in comp:
            row += ["not compared", "–", "–", "–"]
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
        tag = "(secondary) " if role is not None and role["primary"] != metric else ""
        lines += [f"- {tag}{_plain_line(c, corr, unit, higher_is_better(metric))}" for c in an["comparisons"]]
    else:
        lines.append("- No comparisons (a single point, or every point has a single seed).")

    lines += _trend_lines(an, unit)
    lines += _reference_lines(an)
    lines += _breakdown_lines(an)
    lines += ["", "## Scaling fit", ""]
    if not an.get("fits"):
        lines += ["No scaling fit: this study declares none. Fits are opt-in: a study names each fit it wants "
                  "and the question it answers (never a power law across architectures or router arms).", ""]
    else:
        lines += ["Fits declared by the study, with the question each answers:", ""]
        lines += [f"- `{k}` ({FIT_KINDS[k]}){': ' + q if q else ''}" for k, q in an["fits"].items()] + [""]
        if an.get("fit_note"):
            lines += [an["fit_note"], ""]
    lines += _frontier_lines(an) + _param_lines(an)
    if an.get("scaling") is not None:
        from experiments.study.scaling_report import scaling_lines

        lines += scaling_lines(an)

    ec = an.get("eval_check")
    if ec is not None and ec["status"] != "missing":
        lines += ["## Evaluation-set uncertainty", "", ec["text"], ""]
    if an.get("tuning_lines"):
        lines += list(an["tuning_lines"])
    lim = list(an["limitations"])
    if load_errors:
        lim.insert(0, f"{len(load_errors)} malformed line(s) in results.jsonl were skipped: "
                      + "; ".join(f"line {n} ({r})" for n, r in load_errors))
    lines += ["## Limitations", ""] + ([f"- {x}" for x in lim] if lim else ["- None noted."])
    lines += ["", "## Plots", "", f"![{metric} vs compute](metric_vs_compute{suffix}.png)", "",
              f"![{metric} curves](curves{suffix}.png)", ""]
    if an.get("param_fit_note") is not None:
        lines += [f"![{metric} vs parameters](metric_vs_params{suffix}.png)", ""]
    if (an.get("scaling") or {}).get("isoflop") is not None:
        lines += [f"![IsoFLOP profiles](isoflop{suffix}.png)", ""]
    return "\n".join(lines)


def _reference_lines(an: dict) -> list[str]:
    """The no-training baselines (study.references) and, per point, whether its CI is clear of the best."""
    refs, metric = an.get("references") or {}, an["metric"]
    if not refs:
        return []
    higher = higher_is_better(metric)
    best_name = (max if higher else min)(refs, key=lambda k: refs[k][metric])
    best = refs[best_name][metric]
    lines = ["", "## Reference baselines (no training)", "",
             f"Rules that need no training, scored on the same evaluation split (`references.json`). A point "
             f"whose {an['confidence']:.0%} CI is not clear of the best of them has not shown that it learned "
             f"more than that rule.", "", f"| baseline | {metric} | rule |", "|---|---|---|"]
    lines += [f"| `{_esc(k)}` | {r[metric]:.4f} | {_esc(r.get('how', ''))} |" for k, r in refs.items()]
    lines.append("")
    for p in an["points"]:
        if p["n"] < 2:
            lines.append(f"- `{_esc(p['point'])}`: {p['mean']:.4f} from {p['n']} seed(s): no CI to compare.")
            continue
        better = p["ci_low"] > best if higher else p["ci_high"] < best
        worse = p["ci_high"] < best if higher else p["ci_low"] > best
        verdict = ("**beats it** (its CI is clear of it)" if better else
                   "**worse than it** (its whole CI is on the wrong side)" if worse else
                   "not distinguishable from it (its CI contains it)")
        lines.append(f"- `{_esc(p['point'])}`: {p['mean']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}] against the "
                     f"best baseline `{_esc(best_name)}` ({best:.4f}, difference {p['mean'] - best:+.4f}): {verdict}.")
    return lines


def _bucket_order(name: str):
    import re

    m = re.search(r"\d+", name)
    return (int(m.group()) if m else math.inf, name)


def _breakdown_lines(an: dict) -> list[str]:
    """The study's breakdowns (Study.breakdowns): per point and bucket, the seed mean with its t CI."""
    out = []
    refs = an.get("references") or {}
    for title, pattern in (an.get("breakdowns") or {}).items():
        prefix, suffix = pattern.split("*")
        found = {k[len(prefix):-len(suffix)] for p in an["points"] for r in p["records"]
                 for k in (r.get("final") or {}) if k.startswith(prefix) and k.endswith(suffix)}
        buckets = sorted((b for b in found if b and "/" not in b), key=_bucket_order)
        out += ["", f"## Breakdown: {title}", "",
                f"`{pattern}` per bucket (`*`), at each run's last eval: seed mean [{an['confidence']:.0%} t CI]. "
                f"Descriptive: no tests, not part of the corrected family."
                + (" Reference baselines (no training) on the same buckets below the points." if refs else ""), ""]
        if not buckets:
            out += ["No run recorded these metrics.", ""]
            continue
        out += ["| point | " + " | ".join(f"`{b}`" for b in buckets) + " |", "|---|" + "---|" * len(buckets)]
        counts = []
        for b in buckets:
            vals = {r["final"].get(f"{prefix}{b}/examples") for p in an["points"] for r in p["records"]}
            counts.append(f"{vals.pop():g}" if len(vals) == 1 and None not in vals else "varies")
        if any(c != "varies" for c in counts):
            out.append("| examples | " + " | ".join(counts) + " |")
        for p in an["points"]:
            cells = []
            for b in buckets:
                v = np.array([_num(r["final"].get(f"{prefix}{b}{suffix}")) for r in p["records"]], dtype=float)
                v = v[np.isfinite(v)]
                if v.size >= 2:
                    s = stats.summarize(v, confidence=an["confidence"])
                    cells.append(f"{s['mean']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}]")
                else:
                    cells.append(f"{v[0]:.4f} (n=1)" if v.size else "n/a")
            out.append(f"| `{_esc(p['point'])}` | " + " | ".join(cells) + " |")
        for name, r in refs.items():
            if any(f"{prefix}{b}{suffix}" in r for b in buckets):
                out.append(f"| reference `{_esc(name)}` | " + " | ".join(
                    f"{r[f'{prefix}{b}{suffix}']:.4f}" if f"{prefix}{b}{suffix}" in r else "n/a" for b in buckets) + " |")
        out.append("")
    return out


def _trend_lines(an: dict, unit: str) -> list[str]:
    trends = an.get("trends") or []
    if not an.get("trend_factor"):
        return []
    factor = an["trend_factor"]
    out = ["", f"## Dose-response: `{factor}`", "",
           f"Ordered factor `{factor}`: the metric regressed on log2({factor.rsplit('.', 1)[-1]}) over every run "
           f"(each seed a point), slope = change per doubling with its {an['confidence']:.0%} t CI; p tests slope 0 "
           f"and is corrected with the comparisons. The Jonckheere-Terpstra p (two-sided, "
           f"permutation; uncorrected) is a distribution-free check of a monotone trend.", ""]
    if not trends:
        return out + ["No group of points spans two levels of the factor.", ""]
    out += ["| group | levels | slope per doubling ± CI | p (raw) | p (corrected) | JT p | R² |",
            "|---|---|---|---|---|---|---|"]
    for t in trends:
        sl, h = _pm(t["slope"], (t["ci_high"] - t["ci_low"]) / 2)
        out.append(f"| {_esc(t['group'])} | {', '.join(_g(v) for v in t['levels'])} | {sl} ± {h} {unit} | "
                   f"{_p(t['p'])} | {_p(t['p_adj'])} | {_p(t['p_jt'])} | {t['r2']:.2f} |")
    out.append("")
    for t in trends:
        sl, h = _pm(abs(t["slope"]), (t["ci_high"] - t["ci_low"]) / 2)
        if t["p_adj"] < ALPHA:
            word = "rises" if t["slope"] > 0 else "falls"
            out.append(f"- {t['group']}: the metric {word} by {sl} ± {h} {unit} per doubling of "
                       f"{factor.rsplit('.', 1)[-1]} (p_{an['correction']} = {_p(t['p_adj'])}).")
        else:
            out.append(f"- {t['group']}: no significant trend with {factor.rsplit('.', 1)[-1]} "
                       f"(slope {t['slope']:+.3g} ± {(t['ci_high'] - t['ci_low']) / 2:.2g} {unit} per doubling, "
                       f"p_{an['correction']} = {_p(t['p_adj'])}).")
    return out + [""]


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
                 correction: str = "holm", use: str = "final", n_boot: int = 1000, suffix: str = "",
                 fits=(), comparisons=None, trend: str | None = None) -> Path:
    """Write report.md, metric_vs_compute.png, curves.png and (matched compute, >= 2 model sizes)
    metric_vs_params.png into ``results_dir``; return report.md's path.

    ``suffix`` is appended to every file name (``report_bpb.md``, ``curves_bpb.png``) so one
    results folder can hold a report per metric.

    ``n_boot`` is the number of bootstrap refits for the CI on the power-law
    exponent. Deterministic for the same input (bootstrap seeds are fixed).
    """
    records, errors = _load(results_dir)
    an = analyze(records, baseline=baseline, metric=metric, correction=correction, use=use, n_boot=n_boot,
                 fits=fits, comparisons=comparisons, trend=trend)
    return _write(Path(results_dir), an, records, errors, suffix)


def _load(results_dir):
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    with warnings.catch_warnings():
        # Malformed lines are reported inside the report instead.
        warnings.simplefilter("ignore", UserWarning)
        records, errors = load_results(results_dir / "results.jsonl", return_errors=True)
    if errors:
        warnings.warn(f"{results_dir / 'results.jsonl'}: skipped {len(errors)} malformed line(s) at "
                      f"line(s) {[n for n, _ in errors]}", UserWarning, stacklevel=3)
    return records, errors


def _write(results_dir: Path, an: dict, records, errors, suffix: str) -> Path:
    metric = an["metric"]
    md = render_markdown(an, title=", ".join(an["studies"]) or results_dir.name, load_errors=errors, suffix=suffix)
    _save(lambda ax: plot_metric_vs_compute(ax, an), results_dir / f"metric_vs_compute{suffix}.png")
    _save(lambda ax: plot_curves(ax, records, metric), results_dir / f"curves{suffix}.png")
    if an["param_fit_note"] is not None:
        _save(lambda ax: plot_metric_vs_params(ax, an), results_dir / f"metric_vs_params{suffix}.png")
    if (an.get("scaling") or {}).get("isoflop") is not None:
        from experiments.study.plots import plot_isoflop

        _save(lambda ax: plot_isoflop(ax, an), results_dir / f"isoflop{suffix}.png")
    out = results_dir / f"report{suffix}.md"
    out.write_text(md, encoding="utf-8")
    return out


def metric_suffix(j: int, metric: str) -> str:
    """'' for the first (primary) metric, else '_<last part of the name>'."""
    import re

    return "" if j == 0 else "_" + re.sub(r"[^A-Za-z0-9]+", "_", metric.split("/", 1)[-1])


def write_study_reports(results_dir, study, n_boot: int = 1000, tuning_lines=None) -> list[Path]:
    """One report per metric of a study, under its declared protocol.

    The primary metric (``study.primary``, default the first of ``study.metrics``) gets
    ``report.md``; every secondary metric ``report_<name>.md``, marked secondary. Every test
    printed in any of them (comparisons and trend slopes of every metric) is corrected as one
    family with ``study.correction``. The declared fits run on the primary metric only.
    ``tuning_lines``: the tuning stage's section (markdown lines), added to every report.
    """
    records, errors = _load(results_dir)
    primary = study.primary or study.metrics[0]
    metrics = [primary] + [m for m in study.metrics if m != primary]
    analyses = []
    for m in metrics:
        analyses.append(analyze(records, baseline=study.baseline, metric=m, correction=study.correction,
                                n_boot=n_boot, fits=study.fits if m == primary else (),
                                comparisons=study.comparisons if study.compare else [], trend=study.trend))
    apply_family(analyses, study.correction)
    role = {"primary": primary, "secondary": metrics[1:]}
    refs_path = Path(results_dir) / "references.json"
    refs = json.loads(refs_path.read_text(encoding="utf-8"))["references"] if refs_path.exists() else {}
    paths = []
    for j, an in enumerate(analyses):
        an["role"] = role
        an["tuning_lines"] = tuning_lines
        an["references"] = {k: r for k, r in refs.items() if an["metric"] in r}
        an["breakdowns"] = dict(getattr(study, "breakdowns", None) or {})
        paths.append(_write(Path(results_dir), an, records, errors, metric_suffix(j, an["metric"])))
    return paths


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
    ap.add_argument("--fit", action="append", default=[], choices=sorted(FIT_KINDS),
                    help="a scaling fit to add (repeatable); none by default")
    ap.add_argument("--trend", default=None, help="dotted override key of an ordered factor, e.g. data.batch_size")
    args = ap.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = write_report(args.results_dir, baseline=args.baseline, metric=args.metric,
                                correction=args.correction, use=args.use, fits=args.fit, trend=args.trend)
    except (ReportError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
