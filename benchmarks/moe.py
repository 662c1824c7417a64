"""MoE layer cost on CPU: forward+backward time against a dense FFN of equal active FLOPs.

    python -m benchmarks.moe                   # the README figures
    python -m benchmarks.moe --repeats 3 --tokens 512 --experts 8   # quick look

One layer, X tokens of width D (default X = 4096 = 16 sequences of 256,
D = 256). The dense baseline is a GELU MLP of hidden width F = 1024; each
MoE expert has width F / k, so with top-k routing the active FFN FLOPs per
token equal the dense layer's (the router adds 2 D E). Timed, in one
process, interleaved, median of `--repeats` rounds: value-and-gradient
with respect to the input and every weight, of
- dense: the baseline MLP;
- dropless (blocked): sort + block-padded grouped matmul (moe/gmm.py), the default;
- dropless (ragged_dot): the same with `jax.lax.ragged_dot` (XLA's CPU lowering);
- capacity: one-hot einsum dispatch with capacity factor 1.25;
and, for each E in `--overhead-experts`, the share of the dropless layer's
time spent outside the expert matmuls (router, top-k, sorting, gathers and
scatters, combine): 1 - (expert grouped matmuls alone, on the same sorted
inputs) / (whole layer).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import moe  # noqa: F401  (registers the "moe" FFN type)
from experiments.configs.defaults import base_config
from models.ffn import get_ffn
from moe.gmm import blocked_gmm


def layer_cfg(ffn: str, D: int, F: int, E: int, k: int, dispatch: str = "dropless", gmm: str = "blocked"):
    cfg = base_config().model
    cfg.update(d_model=D, d_ff=F, n_layers=1, activation="gelu", ffn=ffn)
    cfg.moe.update(num_experts=E, top_k=k, d_ff=F // k, dispatch=dispatch, gmm_impl=gmm, capacity_factor=1.25)
    return cfg


def fwd_bwd(cfg, x_BTD):
    """A jitted value-and-grad of sum(sin(layer(x))) with respect to x and the parameters."""
    layer = get_ffn(cfg.ffn)(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)

    def loss(params, x):
        y, aux = nnx.merge(graphdef, params)(x)
        return jnp.sum(jnp.sin(y)) + sum(aux.losses.values())

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return fn, (params, x_BTD)


def experts_only(cfg, x_BTD):
    """The dropless layer's expert grouped matmuls alone, on inputs already sorted by expert."""
    B, T, D = x_BTD.shape
    E, k, F = cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.d_ff
    A = B * T * k
    sizes = np.full(E, A // E, np.int32)
    sizes[: A - sizes.sum()] += 1
    w = {"in": jax.random.normal(jax.random.key(1), (E, D, F)) * 0.02,
         "out": jax.random.normal(jax.random.key(2), (E, F, D)) * 0.02}
    x_AD = jax.random.normal(jax.random.key(3), (A, D))
    gs = jnp.asarray(sizes)

    def loss(w, x):
        h = jax.nn.gelu(blocked_gmm(x, w["in"], gs))
        return jnp.sum(jnp.sin(blocked_gmm(h, w["out"], gs)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (w, x_AD)


def interleaved_medians(fns: dict, repeats: int) -> dict:
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))  # compile
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, args) in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--overhead-experts", default="8,32,128")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    D, F, E, k = a.d_model, a.d_ff, a.experts, a.k
    x = jax.random.normal(jax.random.key(0), (a.tokens // 256 or 1, min(a.tokens, 256), D))

    fns = {
        "dense": fwd_bwd(layer_cfg("mlp", D, F, E, k), x),
        "dropless (blocked)": fwd_bwd(layer_cfg("moe", D, F, E, k), x),
        "dropless (ragged_dot)": fwd_bwd(layer_cfg("moe", D, F, E, k, gmm="ragged_dot"), x),
        "capacity 1.25": fwd_bwd(layer_cfg("moe", D, F, E, k, dispatch="capacity"), x),
    }
    t = interleaved_medians(fns, a.repeats)
    print(f"MoE layer forward+backward, {x.shape[0] * x.shape[1]} tokens, D={D}, dense F={F}, "
          f"E={E}, k={k}, expert F={F // k} (equal active FLOPs); median of {a.repeats}")
    print(f"{'variant':<24}{'ms':>10}{'vs dense':>10}")
    for name, v in t.items():
        print(f"{name:<24}{v * 1e3:>10.1f}{v / t['dense']:>9.2f}x")

    print("\nrouter + dispatch overhead of the dropless layer (share of its time outside the expert matmuls)")
    print(f"{'E':>5}{'layer ms':>10}{'experts ms':>12}{'overhead':>10}")
    for e in [int(s) for s in a.overhead_experts.split(",") if s]:
        cfg = layer_cfg("moe", D, F, e, k)
        r = interleaved_medians({"layer": fwd_bwd(cfg, x), "experts": experts_only(cfg, x)}, a.repeats)
        print(f"{e:>5}{r['layer'] * 1e3:>10.1f}{r['experts'] * 1e3:>12.1f}{1 - r['experts'] / r['layer']:>9.0%}")


if __name__ == "__main__":
    main()
