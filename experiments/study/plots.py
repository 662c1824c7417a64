"""Plots of a study report (matplotlib Figure + Agg canvas, never pyplot)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.study import stats
from experiments.study.fits import _num

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
        _draw_fit(ax, [x for x in xs if math.isfinite(x) and x > 0], fit, "C")
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
        _draw_fit(ax, xs_all, fit, "N")
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


def _draw_fit(ax, xs, fit: dict, var: str) -> None:
    """The fitted a·x^(-b) + c over the span of xs (log x), labelled with b and its CI."""
    grid = np.logspace(np.log10(min(xs)) - 0.1, np.log10(max(xs)) + 0.1, 200)
    ax.plot(grid, stats.power_law(grid, fit["a"], fit["b"], fit["c"]), "k--", zorder=1,
            label=(f"fit {fit['a']:.3g}·{var}^(-b) + {fit['c']:.3g}, b = {fit['b']:.3f} "
                   f"[{fit['b_ci_low']:.3f}, {fit['b_ci_high']:.3f}]"))


def plot_isoflop(ax, an: dict) -> None:
    """IsoFLOP profiles: per budget the seed means against N (log), the fitted parabola and its vertex ± CI."""
    iso = an["scaling"]["isoflop"]
    cmap = _colors(len(iso["budgets"]))
    for i, b in enumerate(iso["budgets"]):
        n = np.array([s[0] for s in b["sizes"]])
        m = np.array([s[1] for s in b["sizes"]])
        ax.plot(n, m, "o", color=cmap[i], ms=5, zorder=3, label=f"C = {b['C']:.2g}" + (f" ({b['edge']})" if b["edge"]
                                                                                       else ""))
        if np.isfinite(b["curvature"]) and b["curvature"] > 0 and math.isfinite(b["n_opt"]):
            x = np.linspace(np.log10(n.min()) - 0.1, np.log10(n.max()) + 0.1, 100)
            xv = math.log10(b["n_opt"])
            ax.plot(10 ** x, b["l_opt"] + b["curvature"] * (x - xv) ** 2, "-", color=cmap[i], lw=1, alpha=0.8)
            lo, hi = b["n_opt_ci"]
            xerr = [[b["n_opt"] - lo], [hi - b["n_opt"]]] if math.isfinite(lo) else None
            ax.errorbar([b["n_opt"]], [b["l_opt"]], xerr=xerr, fmt="*", ms=11, color=cmap[i], mec="k", capsize=3,
                        zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(an["metric"])
    title = "IsoFLOP profiles: parabola in log N per budget, ★ = N_opt (95% CI)"
    if math.isfinite(iso["a"]):
        title += f"\nN_opt ∝ C^{iso['a']:.2f} [{iso['a_ci'][0]:.2f}, {iso['a_ci'][1]:.2f}]"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
