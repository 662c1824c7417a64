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
"""
from __future__ import annotations

import argparse
import json
import os
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
    perf = ", ".join(f"{n}: {fmt(s)}" for n, s in sorted(c["performer_speedup_vs_dense_fwd_bwd"].items()))
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,1024,2048,4096,8192,16384,32768")
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-gib", type=float, default=12.0, help="skip configurations planning more memory")
    p.add_argument("--out", default=OUT, help="folder for the JSON, markdown and PNG ('' to only print)")
    p.add_argument("--no-kernel-smoke", action="store_true", help="skip the Pallas interpret-mode correctness smoke")
    a = p.parse_args(argv)
    lengths = [int(x) for x in a.lengths.split(",")]
    rows = []
    for n in lengths:
        for kind in a.types.split(","):
            r = measure(kind, n, a.repeats, a.max_gib * 2**30)
            rows.append(r)
            t = f"fwd {r['fwd_s']:.4f}s fwd+bwd {r['fwd_bwd_s']:.4f}s" if "fwd_s" in r else r["skipped"]
            print(f"n={n:6d} {kind:10s} {t}  planned peak {r['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    vs_jax = [dense_vs_jax(n, a.repeats) for n in lengths if 1024 <= n <= 4096]
    smoke = kernel_smoke(min(lengths)) if not a.no_kernel_smoke else None
    summary = summarize(rows, vs_jax, smoke)
    note = (f"Measured with `python -m benchmarks.attention` on {jax.devices()[0].device_kind} "
            f"({os.cpu_count()} cores), batch 1, width 256, 4 heads of 64, bidirectional; medians of {a.repeats}.")
    md = markdown(rows, summary, note)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "attention_complexity.json"), "w") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=1)
        with open(os.path.join(a.out, "report.md"), "w") as f:
            f.write(md + "\n![time and memory vs n](attention_complexity.png)\n")
        plot(rows, os.path.join(a.out, "attention_complexity.png"))


if __name__ == "__main__":
    main()
