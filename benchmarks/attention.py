"""Attention cost against sequence length: dense vs Performer vs Longformer.

    python -m benchmarks.attention        # writes experiments/results/attention_complexity/
    python -m benchmarks.attention --lengths 512,1024,2048 --repeats 2 --out ''    # quick look, printed only

For each attention layer (bidirectional, as in the ListOps encoder: width
256, 4 heads of 64; Performer M=256 features; Longformer window W=256, one
global token) and each length n (batch 1), it measures the forward and
forward+backward time of the layer (median of repeats, all in this
process) and the peak memory XLA plans for the compiled forward+backward
(arguments + outputs + temporaries, from `memory_analysis()`, so no run is
needed to know it). A configuration whose planned memory exceeds
`--max-gib` is skipped and reported as such. It also times our dense core
against `jax.nn.dot_product_attention(implementation="xla")` at 1K-4K.

It also runs our Pallas flash kernel (kernels/flash_attention) in interpret
mode at the smallest length as a correctness smoke only: its error against
the XLA dense core, forward and gradients (interpreted Pallas is far too
slow on CPU for its time to mean anything; GPU timings are
benchmarks/flash_attention.py's job).

It fits the exponent of time and memory in n (least squares on log-log
between 2K and 32K) and writes `attention_complexity.json`, `report.md`
and `attention_complexity.png` to `--out`. The claim under test: dense is
O(n^2 d), Performer O(n M d), Longformer O(n W d).

    python -m benchmarks.attention --sweep knobs    # the d, M and W sweeps; ~5-10 minutes on a shared 2-core VM

`--sweep knobs` tests the other factors of those formulas at a fixed n
(`--knob-n`, 4096): the width d (all three; 4 heads, so the head dim is
d/4), Performer's features M and Longformer's window W, each with the
other knobs fixed (d=256, M=256, W=256). It times the attention core alone
(q, k, v -> output, forward, no projections: those cost n d^2 and are not
in the formulas; Longformer without global tokens), every configuration of
a sweep interleaved in a fresh random order within each repeat, a sample
being the fastest of `--inner` back-to-back calls. It fits log time on log
knob once per repeat and reports the mean slope with its Student-t 95%
interval over repeats (and the slope of the medians with its regression t
interval), beside the formula's exponent (1) and the exponent of the FLOPs
and bytes XLA counts for the compiled core. Results go to
`attention_knobs.json` and `attention_knobs.png`; `report.md` holds both
sweeps (each part rendered from its JSON, so either sweep can be rerun alone).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention  # noqa: F401  (registers the variants)
from attention.dense_xla import dense_attention_xla
from attention.registry import get_attention
from experiments.configs.defaults import base_config

TYPES = ("dense", "performer", "longformer")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "results",
                   "attention_complexity")


def layer_config(kind: str):
    cfg = base_config().model
    cfg.update(d_model=256, n_heads=4, n_kv_heads=4, d_ff=1024, n_layers=1, causal=False, attention=kind)
    cfg.performer.update(num_features=256, redraw_every=0)
    cfg.longformer.update(window=256, num_global=1, dilation=(1,))
    return cfg


def median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(kind: str, n: int, repeats: int, max_bytes: float) -> dict:
    cfg = layer_config(kind)
    layer = get_attention(kind)(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (1, n, cfg.d_model), jnp.float32)

    def fwd(params, x):
        return nnx.merge(graphdef, params)(x)[0]

    def loss(params, x):
        return jnp.sum(fwd(params, x) ** 2)

    fwd_j = jax.jit(fwd)
    grad_j = jax.jit(jax.grad(loss, argnums=(0, 1)))
    mem = grad_j.lower(params, x).compile().memory_analysis()
    peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    row = {"type": kind, "n": n, "peak_bytes": peak}
    if peak > max_bytes:
        row["skipped"] = f"planned memory {peak / 2**30:.1f} GiB > limit"
        return row
    row["fwd_s"] = median_time(fwd_j, (params, x), repeats)
    row["fwd_bwd_s"] = median_time(grad_j, (params, x), repeats)
    return row


def dense_vs_jax(n: int, repeats: int) -> dict:
    q, k, v = (jax.random.normal(jax.random.key(i), (1, n, 4, 64)) for i in range(3))
    ours = jax.jit(lambda q, k, v: dense_attention_xla(q, k, v))
    theirs = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    t_ours, t_theirs = median_time(ours, (q, k, v), repeats), median_time(theirs, (q, k, v), repeats)
    return {"n": n, "ours_s": t_ours, "jax_nn_s": t_theirs, "ours_speedup": t_theirs / t_ours}


def kernel_smoke(n: int) -> dict:
    """Largest |difference| between the flash kernel (interpret mode) and the XLA dense core at length n."""
    from kernels.flash_attention import flash_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (1, n, 4, 64)) for i in range(3))

    def fwd_and_grads(attn):
        out, pullback = jax.vjp(attn, q, k, v)
        return (out, *pullback(jnp.cos(out)))

    ours = jax.jit(lambda: fwd_and_grads(lambda q, k, v: flash_attention(q, k, v, interpret=True)))()
    xla = jax.jit(lambda: fwd_and_grads(dense_attention_xla))()
    errs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(ours, xla)]
    return {"n": n, "max_abs_err_out": errs[0], "max_abs_err_grads": max(errs[1:])}


def exponent(rows: list[dict], kind: str, key: str, lo: int = 2048, hi: int = 32768) -> float | None:
    pts = [(r["n"], r[key]) for r in rows if r["type"] == kind and key in r and lo <= r["n"] <= hi]
    if len(pts) < 2:
        return None
    n, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(n, y, 1)[0])


def summarize(rows: list[dict], vs_jax: list[dict], smoke: dict | None = None) -> dict:
    out = {"exponents": {}, "checks": {}}
    for kind in TYPES:
        out["exponents"][kind] = {k: exponent(rows, kind, k) for k in ("fwd_s", "fwd_bwd_s", "peak_bytes")}
    by = {(r["type"], r["n"]): r for r in rows}

    def ratio(a, b, n, key):
        ra, rb = by.get((a, n), {}), by.get((b, n), {})
        return rb[key] / ra[key] if key in ra and key in rb else None

    out["checks"]["longformer_speedup_vs_dense_fwd_bwd_8k"] = ratio("longformer", "dense", 8192, "fwd_bwd_s")
    out["checks"]["longformer_memory_saving_vs_dense_16k"] = ratio("longformer", "dense", 16384, "peak_bytes")
    faster = {r["n"]: ratio("performer", "dense", r["n"], "fwd_bwd_s") for r in rows if r["type"] == "dense"}
    out["checks"]["performer_speedup_vs_dense_fwd_bwd"] = faster
    slower = sorted(n for n, s in faster.items() if s is not None and s < 1.0)
    out["checks"]["performer_slower_than_dense_at"] = slower
    out["checks"]["dense_vs_jax_nn"] = vs_jax
    out["checks"]["pallas_kernel_smoke"] = smoke
    return out


def plot(rows: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate((("fwd_bwd_s", "forward+backward time (s)"), ("peak_bytes", "planned peak memory (bytes)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for kind in TYPES:
            pts = sorted((r["n"], r[key]) for r in rows if r["type"] == kind and key in r)
            if pts:
                ax.plot(*zip(*pts), "o-", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def markdown(rows: list[dict], summary: dict, peak_note: str) -> str:
    lines = ["# Attention cost vs sequence length", "", peak_note, "",
             "| n | type | forward (s) | forward+backward (s) | planned peak memory (MiB) |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], TYPES.index(r["type"]))):
        f = lambda k: f"{r[k]:.4f}" if k in r else r.get("skipped", "-")  # noqa: E731
        lines.append(f"| {r['n']} | {r['type']} | {f('fwd_s')} | {f('fwd_bwd_s')} | {r['peak_bytes'] / 2**20:.0f} |")
    lines += ["", "Exponents of n (least squares on log-log, 2K-32K where measured):", ""]
    for kind, ex in summary["exponents"].items():
        parts = [f"{k} {v:.2f}" for k, v in ex.items() if v is not None]
        lines.append(f"- {kind}: " + (", ".join(parts) if parts else "not enough points"))
    c = summary["checks"]
    lines += ["", "Checks:", ""]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}x"  # noqa: E731
    lines.append(f"- Longformer forward+backward speed-up over dense at n=8K: {fmt(c['longformer_speedup_vs_dense_fwd_bwd_8k'])}")
    lines.append(f"- Longformer planned-memory saving over dense at n=16K: {fmt(c['longformer_memory_saving_vs_dense_16k'])}")
    # int(n): lengths come back from the JSON file as string keys
    perf = ", ".join(f"{n}: {fmt(s)}" for n, s in sorted(c["performer_speedup_vs_dense_fwd_bwd"].items(),
                                                           key=lambda kv: int(kv[0])))
    lines.append(f"- Performer forward+backward speed-up over dense by n: {perf}")
    lines.append(f"- Lengths where Performer is slower than dense: {c['performer_slower_than_dense_at'] or 'none'}")
    for r in c["dense_vs_jax_nn"]:
        lines.append(f"- Dense core vs jax.nn.dot_product_attention(xla) at n={r['n']}: ours {r['ours_s'] * 1e3:.1f} ms, "
                     f"jax.nn {r['jax_nn_s'] * 1e3:.1f} ms ({r['ours_speedup']:.2f}x)")
    s = c.get("pallas_kernel_smoke")
    if s:
        lines.append(f"- Pallas flash kernel, interpret mode (correctness only) at n={s['n']}: max |diff| vs the XLA "
                     f"core {s['max_abs_err_out']:.1e} (output), {s['max_abs_err_grads']:.1e} (gradients)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# The other factors of the formulas: d, M and W at a fixed n
# --------------------------------------------------------------------------

KNOBS = {
    # knob: (variants swept, values, the formula's term it tests)
    "d": (TYPES, (64, 128, 256, 512, 1024), {"dense": "n^2 d", "performer": "n M d", "longformer": "n W d"}),
    "M": (("performer",), (64, 128, 256, 512, 1024), {"performer": "n M d"}),
    "W": (("longformer",), (64, 128, 256, 512, 1024), {"longformer": "n W d"}),
}
KNOB_FIXED = {"d": 256, "M": 256, "W": 256}
EXPECTED = 1.0  # every formula is linear in its knob
BAND = (0.8, 1.2)  # a fitted exponent whose interval lies inside this band supports linear growth


def knob_config(kind: str, knob: str, value: int):
    """The benchmark layer with one knob set: d = model width (4 heads, head dim d/4), M features, W window."""
    cfg = layer_config(kind)
    d = value if knob == "d" else KNOB_FIXED["d"]
    cfg.update(d_model=d, d_ff=4 * d)
    cfg.performer.update(num_features=value if knob == "M" else KNOB_FIXED["M"])
    cfg.longformer.update(window=value if knob == "W" else KNOB_FIXED["W"], num_global=0)
    return cfg


def core_fn(kind: str, knob: str, value: int, n: int):
    """The jitted attention core (q, k, v -> out, bidirectional) and its arguments, compiled; XLA's cost counts."""
    cfg = knob_config(kind, knob, value)
    layer = get_attention(kind)(cfg, rngs=nnx.Rngs(0))
    N, H = cfg.n_heads, cfg.d_model // cfg.n_heads
    q, k, v = (jax.random.normal(jax.random.key(i), (1, n, N, H), jnp.float32) for i in range(3))
    fn = jax.jit(lambda q, k, v: layer.core(q, k, v, causal=False))
    compiled = fn.lower(q, k, v).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, (q, k, v), {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def fit_exponent(x, y_RK) -> dict:
    """Log-log slopes of y against x: one per repeat (rows of y_RK), and one through the medians over repeats.

    `slope` is the mean of the per-repeat slopes with its Student-t interval over repeats (the primary
    figure); `median_slope` comes with the regression's own t interval (df = points - 2); `top3` is the
    per-repeat slope over the three largest x only (the local exponent at the top of the range).
    """
    from scipy import stats as st

    from experiments.study.stats import summarize

    lx = np.log(np.asarray(x, float))
    ly = np.log(np.asarray(y_RK, float))
    if ly.ndim != 2 or ly.shape[1] != lx.size or lx.size < 3:
        raise ValueError(f"need repeats x >= 3 points matching x, got y {ly.shape} for {lx.size} x values")
    per_repeat = [float(np.polyfit(lx, row, 1)[0]) for row in ly]
    top = np.argsort(lx)[-3:]
    top3 = [float(np.polyfit(lx[top], row[top], 1)[0]) for row in ly]
    med = np.median(ly, axis=0)
    reg = st.linregress(lx, med)
    half = float(st.t.ppf(0.975, lx.size - 2)) * reg.stderr if lx.size > 2 else float("nan")
    return {"slope": summarize(per_repeat), "per_repeat": per_repeat, "top3": summarize(top3),
            "median_slope": {"mean": float(reg.slope), "ci_low": float(reg.slope - half),
                             "ci_high": float(reg.slope + half)}}


def knob_verdict(fit: dict, flops_exp: float, lo: float = BAND[0], hi: float = BAND[1]) -> str:
    """supported / supported at the top of the range / not supported / inconclusive, from the intervals."""
    inside = lambda s: lo <= s["ci_low"] and s["ci_high"] <= hi  # noqa: E731
    outside = lambda s: s["ci_high"] < lo or s["ci_low"] > hi  # noqa: E731
    s, t = fit["slope"], fit["top3"]
    if inside(s):
        return "supported"
    if inside(t):
        return "supported at the top of the range only (a knob-independent term dominates below it)"
    if outside(s) and outside(t):
        if lo <= flops_exp <= hi:
            return (f"not supported for time (exponent {'below' if s['ci_high'] < lo else 'above'} the band); "
                    f"XLA's FLOP count does grow as the formula says (exponent {flops_exp:.2f}), so a term the "
                    f"formula leaves out (memory traffic, work independent of the knob) takes the time here")
        return (f"not testable at this scale: even XLA's FLOP count grows as knob^{flops_exp:.2f} here, other "
                f"terms dominate the formula's")
    return f"inconclusive (the interval straddles the band's edge {lo if s['ci_low'] < lo else hi})"


def _log_slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def run_knobs(n: int, repeats: int, inner: int, knobs=tuple(KNOBS), values: dict | None = None, seed: int = 0) -> dict:
    """Every (knob, variant, value) compiled, then `repeats` rounds that time each once, in a new random order."""
    rng = np.random.default_rng(seed)
    configs = []
    for knob in knobs:
        kinds, vals, _ = KNOBS[knob]
        for kind in kinds:
            for v in (values or {}).get(knob, vals):
                fn, args, cost = core_fn(kind, knob, v, n)
                jax.block_until_ready(fn(*args))  # warm up
                configs.append({"knob": knob, "type": kind, "value": v, "fn": fn, "args": args, **cost, "times": []})
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for i in rng.permutation(len(configs)):
            c, best = configs[i], float("inf")
            for _ in range(inner):
                t = time.perf_counter()
                jax.block_until_ready(c["fn"](*c["args"]))
                best = min(best, time.perf_counter() - t)
            c["times"].append(best)
        load.append(os.getloadavg()[0])
    rows = [{k: v for k, v in c.items() if k not in ("fn", "args")} for c in configs]
    fits = []
    for knob in knobs:
        kinds, _, terms = KNOBS[knob]
        for kind in kinds:
            rs = sorted((r for r in rows if r["knob"] == knob and r["type"] == kind), key=lambda r: r["value"])
            x = [r["value"] for r in rs]
            fit = fit_exponent(x, np.array([r["times"] for r in rs]).T)
            f = {"knob": knob, "type": kind, "formula": f"O({terms[kind]})", "expected": EXPECTED, "values": x,
                 "flops_exponent": _log_slope(x, [r["flops"] for r in rs]),
                 "bytes_exponent": _log_slope(x, [r["bytes"] for r in rs]), **fit}
            f["verdict"] = knob_verdict(fit, f["flops_exponent"])
            fits.append(f)
    return {"n": n, "repeats": repeats, "inner": inner, "fixed": KNOB_FIXED, "band": BAND, "loadavg": load,
            "rows": rows, "fits": fits}


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def knobs_markdown(res: dict) -> str:
    ci = lambda s: f"{s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"  # noqa: E731
    load = res["loadavg"]
    lines = [
        "## Cost against d, M and W at a fixed n",
        "",
        f"Command: `{res['command']}`; {res['machine']}, shared with a niced background study and other agents' "
        f"jobs (1-minute load average {min(load):.1f}-{max(load):.1f} during the timing; 2 is a full machine); "
        f"{res['date']}.",
        "",
        f"n = {res['n']}, batch 1, 4 heads, bidirectional, float32. The attention core alone (q, k, v -> output, "
        f"forward): the projections (n d^2) are not in the formulas. Fixed knobs: d = {res['fixed']['d']} "
        f"(head dim 64), M = {res['fixed']['M']}, W = {res['fixed']['W']}; Longformer without global tokens. "
        f"Each repeat times every configuration of every sweep once, in a new random order (a sample = the fastest "
        f"of {res['inner']} back-to-back calls); {res['repeats']} repeats.",
        "",
        "Exponent = slope of log time on log knob: the mean of the per-repeat slopes [Student-t 95% interval over "
        "repeats] (primary); the slope through the medians [its regression t interval]; the per-repeat slope over "
        "the three largest values only [t interval] (the local exponent at the top of the range). Beside them, the "
        "formula's exponent and the exponent of the FLOPs and bytes XLA counts for the compiled core. Verdict: "
        f"supported when the primary interval lies inside {res['band'][0]}-{res['band'][1]}.",
        "",
        "| knob | variant | formula | values | expected | exponent (per-repeat fits) | exponent (medians) | "
        "top-3 exponent | XLA FLOPs exp. | XLA bytes exp. | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in res["fits"]:
        lines.append(f"| {f['knob']} | {f['type']} | {f['formula']} | {f['values'][0]}-{f['values'][-1]} | "
                     f"{f['expected']:.0f} | {ci(f['slope'])} | {ci(f['median_slope'])} | {ci(f['top3'])} | "
                     f"{f['flops_exponent']:.2f} | {f['bytes_exponent']:.2f} | "
                     f"{knob_verdict(f, f['flops_exponent'], *res['band'])} |")
    values = sorted({r["value"] for r in res["rows"]})
    lines += ["", "Median time (ms) by value:", "", "| knob | variant | " + " | ".join(map(str, values)) + " |",
              "|---|---|" + "---|" * len(values)]
    for f in res["fits"]:
        med = {r["value"]: 1e3 * float(np.median(r["times"])) for r in res["rows"]
               if r["knob"] == f["knob"] and r["type"] == f["type"]}
        lines.append(f"| {f['knob']} | {f['type']} | " + " | ".join(
            f"{med[v]:.1f}" if v in med else "-" for v in values) + " |")
    lines += [
        "",
        "Reading the exponents: the formulas count the leading matrix products only. Dense and Longformer also "
        "exponentiate and normalise every score (n^2 per head for dense, about 1.5 n W per head for Longformer's "
        "blocks), and Performer exponentiates n M features per head: work that does not grow with d, so at widths "
        "where it is a large share of the time the exponent in d sits below 1 even though the FLOP count follows "
        "the formula. XLA's byte count covers the inputs and outputs of each fused kernel, not the traffic inside "
        "one (for the dense core at d = 256 it is 50 MB, less than one copy of the 268 MB score matrix). "
        "Absolute times are inflated by the machine's load (the ratios within a repeat are what the "
        "fits use); compare the n sweep above, run on a quieter machine.",
        "",
        "![time against d, M and W](attention_knobs.png)",
        "",
    ]
    return "\n".join(lines)


def plot_knobs(res: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    knobs = list(dict.fromkeys(f["knob"] for f in res["fits"]))
    fig = Figure(figsize=(4.2 * len(knobs), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    for i, knob in enumerate(knobs):
        ax = fig.add_subplot(1, len(knobs), i + 1)
        for f in (f for f in res["fits"] if f["knob"] == knob):
            rs = sorted((r for r in res["rows"] if r["knob"] == knob and r["type"] == f["type"]), key=lambda r: r["value"])
            x = np.array([r["value"] for r in rs], float)
            med = np.array([np.median(r["times"]) for r in rs])
            line, = ax.plot(x, med, "o-", label=f"{f['type']} ({f['slope']['mean']:.2f})")
            for r in rs:
                ax.plot([r["value"]] * len(r["times"]), r["times"], ".", color=line.get_color(), alpha=0.3)
            ax.plot(x, med[0] * x / x[0], ":", color=line.get_color(), alpha=0.6)  # exponent 1 from the first point
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel({"d": "model width d (4 heads)", "M": "random features M", "W": "window W"}[knob])
        ax.set_ylabel("core forward time (s)")
        ax.set_title(f"n = {res['n']}; dotted: exponent 1")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


# The note of the n sweep committed before the note was stored in its JSON.
N_NOTE = ("Measured with `python -m benchmarks.attention` on cpu (2 cores), batch 1, width 256, 4 heads of 64, "
          "bidirectional; medians of 3.")


def write_report(out: str) -> str:
    """report.md from whichever of the two sweeps' JSON files exist in `out`."""
    parts = []
    n_path, k_path = os.path.join(out, "attention_complexity.json"), os.path.join(out, "attention_knobs.json")
    if os.path.exists(n_path):
        with open(n_path) as f:
            d = json.load(f)
        parts.append(markdown(d["rows"], d["summary"], d.get("note", N_NOTE))
                     + "\n![time and memory vs n](attention_complexity.png)\n")
    if os.path.exists(k_path):
        with open(k_path) as f:
            parts.append(knobs_markdown(json.load(f)))
    md = "\n".join(parts)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md)
    return md


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="n", choices=("n", "knobs"), help="n: lengths; knobs: d, M and W at --knob-n")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192,16384,32768")
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--repeats", type=int, default=None, help="n sweep: medians of this many (3); knobs: rounds (7)")
    p.add_argument("--max-gib", type=float, default=12.0, help="skip configurations planning more memory")
    p.add_argument("--knob-n", type=int, default=4096, help="knobs: the fixed sequence length")
    p.add_argument("--knobs", default=",".join(KNOBS), help="knobs: which of d,M,W")
    p.add_argument("--knob-values", default="", help="knobs: the values of every knob, e.g. 16,32,64 (default per knob)")
    p.add_argument("--inner", type=int, default=3, help="knobs: a sample is the fastest of this many calls")
    p.add_argument("--out", default=OUT, help="folder for the JSON, markdown and PNG ('' to only print)")
    p.add_argument("--no-kernel-smoke", action="store_true", help="skip the Pallas interpret-mode correctness smoke")
    a = p.parse_args(argv)
    command = " ".join(["python -m benchmarks.attention", *(sys.argv[1:] if argv is None else argv)])
    if a.sweep == "knobs":
        knobs = [k for k in a.knobs.split(",") if k]
        vals = [int(v) for v in a.knob_values.split(",") if v]
        res = run_knobs(a.knob_n, a.repeats or 7, a.inner, knobs, {k: vals for k in knobs} if vals else None)
        res.update(command=command, machine=_machine(), date=time.strftime("%Y-%m-%d"))
        print(knobs_markdown(res))
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "attention_knobs.json"), "w") as f:
                json.dump(res, f, indent=1)
            plot_knobs(res, os.path.join(a.out, "attention_knobs.png"))
            write_report(a.out)
        return res
    repeats = a.repeats or 3
    lengths = [int(x) for x in a.lengths.split(",")]
    rows = []
    for n in lengths:
        for kind in a.types.split(","):
            r = measure(kind, n, repeats, a.max_gib * 2**30)
            rows.append(r)
            t = f"fwd {r['fwd_s']:.4f}s fwd+bwd {r['fwd_bwd_s']:.4f}s" if "fwd_s" in r else r["skipped"]
            print(f"n={n:6d} {kind:10s} {t}  planned peak {r['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    vs_jax = [dense_vs_jax(n, repeats) for n in lengths if 1024 <= n <= 4096]
    smoke = kernel_smoke(min(lengths)) if not a.no_kernel_smoke else None
    summary = summarize(rows, vs_jax, smoke)
    note = (f"Measured with `python -m benchmarks.attention` on {jax.devices()[0].device_kind} "
            f"({os.cpu_count()} cores), batch 1, width 256, 4 heads of 64, bidirectional; medians of {repeats}.")
    print(markdown(rows, summary, note))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "attention_complexity.json"), "w") as f:
            json.dump({"rows": rows, "summary": summary, "note": note}, f, indent=1)
        plot(rows, os.path.join(a.out, "attention_complexity.png"))
        write_report(a.out)
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
