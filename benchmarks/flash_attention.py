"""Flash attention forward+backward: our Pallas kernel against jax.nn.dot_product_attention (cudnn, xla).

    python -m benchmarks.flash_attention                       # on a GPU: n = 2K, 8K, 16K, bf16
    python -m benchmarks.flash_attention --lengths 64 --batch 1 --heads 2 --head-dim 16 --repeats 1  # CPU smoke

For each length n and causal/not it times, in this one process, the
forward and the forward+backward (one `jax.vjp` pull-back, which includes
the forward) of each implementation on the same bf16 inputs (layout BTNH,
N = 16 heads of H = 128, batch B = clamp(32K / n, 2, 8) so every length
sees the same token count), median of `--repeats` after a warm-up. It
prints TFLOP/s (useful FLOPs: 4 B N n^2 H forward, halved when causal;
backward 2.5x forward, the FlashAttention-2 convention), our speed relative
to each baseline (> 1: ours is faster), the fraction of the chip's bf16
dense peak when the card is known, and the largest difference between our
output and the first baseline's as a correctness check. A baseline that
fails (cuDNN off-GPU, XLA out of memory at 16K) is reported and skipped.
On CPU our kernel runs in interpret mode: only the correctness column means
anything there.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.attention import median_time
from kernels.flash_attention import flash_attention

# bf16 dense tensor-core peak (no sparsity), from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def peak_flops(kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in kind), None)


def attention_fn(impl: str, causal: bool, window: tuple[int, int] | None = None):
    """`window=(left, right)`: a query at p sees keys p - left .. p + right (causal: right = 0)."""
    if impl == "pallas":
        return lambda q, k, v: flash_attention(q, k, v, causal=causal, window=window)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=window,
                                                        implementation=impl)


def flops_fwd(B, N, n, H, causal, window: tuple[int, int] | None = None) -> float:
    """Useful forward FLOPs, 4 B N H x (query, key) pairs that are attended (exact for a causal window)."""
    if window is not None and causal:
        W = min(window[0], n - 1)  # query i sees min(i + 1, W + 1) keys
        pairs = (W + 1) * (W + 2) / 2 + (n - W - 1) * (W + 1)
        return 4.0 * B * N * H * pairs
    return 4.0 * B * N * n * n * H / (2.0 if causal else 1.0)


def measure(n: int, B: int, N: int, H: int, causal: bool, impls: list[str], repeats: int, dtype,
            window: tuple[int, int] | None = None, on_row=None) -> list[dict]:
    ks = jax.random.split(jax.random.key(n), 4)
    q, k, v, do = (jax.random.normal(kk, (B, n, N, H), jnp.float32).astype(dtype) for kk in ks)
    rows, first_out, pallas_out = [], None, None
    for impl in impls:
        attn = attention_fn(impl, causal, window)
        fwd = jax.jit(attn)
        fwd_bwd = jax.jit(lambda q, k, v, do, attn=attn: jax.vjp(attn, q, k, v)[1](do))
        row = {"n": n, "B": B, "causal": causal, "window": window[0] if window else None, "impl": impl}
        try:
            out = jax.block_until_ready(fwd(q, k, v))
            row["fwd_s"] = median_time(fwd, (q, k, v), repeats)
            row["fwd_bwd_s"] = median_time(fwd_bwd, (q, k, v, do), repeats)
        except Exception as e:  # noqa: BLE001  a baseline may be unavailable here (cuDNN on CPU) or run out of memory
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            rows.append(row)
            if on_row:
                on_row(row)
            continue
        if impl == "pallas":
            pallas_out = out
        elif first_out is None:
            first_out = out
        f = flops_fwd(B, N, n, H, causal, window)
        row["fwd_tflops"] = f / row["fwd_s"] / 1e12
        row["fwd_bwd_tflops"] = 3.5 * f / row["fwd_bwd_s"] / 1e12
        rows.append(row)
        if on_row:
            on_row(row)
    if pallas_out is not None and first_out is not None:
        diff = float(jnp.max(jnp.abs(pallas_out.astype(jnp.float32) - first_out.astype(jnp.float32))))
        for r in rows:
            if r["impl"] == "pallas":
                r["max_abs_diff_vs_baseline"] = diff
    return rows


def report(rows: list[dict], kind: str) -> str:
    peak = peak_flops(kind)
    lines = [f"device: {kind}" + (f" (bf16 dense peak {peak / 1e12:.0f} TFLOP/s)" if peak else ""), "",
             "| n | B | causal | impl | fwd TFLOP/s | fwd+bwd TFLOP/s | ours fwd+bwd speed / this | % of peak | max |diff| |",
             "|---|---|---|---|---|---|---|---|---|"]
    ours = {(r["n"], r["causal"]): r for r in rows if r["impl"] == "pallas" and "fwd_bwd_s" in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['B']} | {r['causal']} | {r['impl']} | failed: {r['error']} | | | | |")
            continue
        o = ours.get((r["n"], r["causal"]))
        ratio = f"{r['fwd_bwd_s'] / o['fwd_bwd_s']:.2f}x" if o and r["impl"] != "pallas" else ""
        pct = f"{100 * r['fwd_bwd_tflops'] * 1e12 / peak:.0f}%" if peak else ""
        diff = f"{r['max_abs_diff_vs_baseline']:.3g}" if "max_abs_diff_vs_baseline" in r else ""
        lines.append(f"| {r['n']} | {r['B']} | {r['causal']} | {r['impl']} | {r['fwd_tflops']:.3g} | "
                     f"{r['fwd_bwd_tflops']:.3g} | {ratio} | {pct} | {diff} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="2048,8192,16384")
    p.add_argument("--batch", type=int, default=0, help="0: clamp(32768 / n, 2, 8)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--impls", default="pallas,cudnn,xla", help="pallas first; the first baseline is the reference")
    p.add_argument("--causal", default="false,true")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    kind = jax.devices()[0].device_kind
    rows = []
    for n in (int(x) for x in a.lengths.split(",")):
        B = a.batch or int(np.clip(32768 // n, 2, 8))
        for causal in (c.strip() == "true" for c in a.causal.split(",")):
            new = measure(n, B, a.heads, a.head_dim, causal, a.impls.split(","), a.repeats, jnp.dtype(a.dtype))
            for r in new:
                print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            rows += new
    print(report(rows, kind))
    return rows


if __name__ == "__main__":
    main()
