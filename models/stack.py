"""The model's stack of Transformer blocks: a Python loop, or a scan over stacked parameters; remat per block.

Two parameter layouts (`model.scan_layers`):

- unscanned (default): `blocks.{i}.<param>`, one module per layer, run by a
  Python loop, so XLA compiles `n_layers` copies of the block;
- scanned: `layers.{j}.<param>` with a leading `layers` axis of length
  G = n_layers / P, run by one `jax.lax.scan` whose body holds P blocks.
  P is the period of the layer pattern (`model.ffn_every`: an MoE FFN on
  every k-th layer repeats every k layers), so layer i = g * P + j is block j
  of scan step g. Compile time stays flat in depth.

The layouts hold the same numbers: `stack_params` / `unstack_params` convert
a parameter tree (or any tree with the parameters' structure, such as
optimizer moments) between them, and a model run in either layout computes
the same function (tests/test_scan.py). A variant whose computation depends
on the layer index (Performer's random features) reads it from
`ForwardContext.layer`, which the scan sets as a traced integer.

Decoding with KV caches in the scanned layout runs the layers one by one
over slices of the stacked parameters (the per-layer caches stay a list, as
`models/decode.py` and `inference/` expect); decoding is not where compile
time matters.

`model.remat` wraps each block in `jax.checkpoint` with a named policy
(REMAT_POLICIES); "save_attention_out" keeps the attention core's output,
tagged with `checkpoint_name` in attention/base.py, and recomputes the rest.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models.block import TransformerBlock
from nn.context import ForwardContext
from sharding import axes as ax

_cp = jax.checkpoint_policies

# Names the attention layer tags with checkpoint_name (attention/base.py).
ATTENTION_OUT = "attention_out"
QKV_NAMES = ("query_proj", "key_proj", "value_proj")

# `model.remat` -> jax.checkpoint policy (None: no rematerialisation).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,                                    # keep every activation (fastest, most memory)
    "full": _cp.nothing_saveable,                    # keep only each block's input, recompute the rest
    "dots_saveable": _cp.dots_saveable,              # keep matmul outputs, recompute elementwise work
    "dots_with_no_batch_dims_saveable": _cp.dots_with_no_batch_dims_saveable,  # keep projections, not QK^T/AV
    "save_attention_out": _cp.save_only_these_names(ATTENTION_OUT),  # keep the attention core's output
    "save_qkv_attention_out": _cp.save_only_these_names(ATTENTION_OUT, *QKV_NAMES),  # ... and Q, K, V
}


def scan_period(cfg) -> int:
    """P: the layer pattern repeats every `model.ffn_every` layers."""
    return int(cfg.get("ffn_every", 1) or 1)


def is_scanned(cfg) -> bool:
    return bool(cfg.get("scan_layers", False))


def ffn_for_layer(cfg, layer: int) -> str:
    """FFN type of one layer: `model.ffn`, except dense on layers skipped by `model.ffn_every`."""
    every = scan_period(cfg)
    return cfg.ffn if layer % every == every - 1 else "mlp"


def build_layers(cfg, rngs: nnx.Rngs) -> nnx.List:
    """The unscanned list of n_layers blocks, or (scanned) P blocks whose parameters lead with a `layers` axis."""
    if not is_scanned(cfg):
        return nnx.List([TransformerBlock(cfg, rngs=rngs, ffn=ffn_for_layer(cfg, i)) for i in range(cfg.n_layers)])
    P = scan_period(cfg)
    G = cfg.n_layers // P

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        r = nnx.Rngs(params=key)
        return nnx.List([TransformerBlock(cfg, rngs=r, ffn=ffn_for_layer(cfg, j)) for j in range(P)])

    layers = make(jax.random.split(rngs.params(), G))
    for _, v in nnx.iter_graph(layers):
        if isinstance(v, nnx.Variable):
            names = tuple(v.get_metadata().get("logical_axes") or (None,) * (v.ndim - 1))
            v.set_metadata(logical_axes=(ax.LAYERS,) + names)
    return layers


def _with_layer(ctx: ForwardContext | None, layer) -> ForwardContext:
    return dataclasses.replace(ctx or ForwardContext(), layer=layer)


def _call_block(blk, x_BTD, *, cache, ctx, mask, remat: str):
    """blk(x), under jax.checkpoint with the named policy when training (no caches) and remat != "none".

    The block, the context and the masks are closed over: jax.checkpoint
    turns closed-over arrays into inputs, so gradients reach the parameters.
    """
    if remat == "none" or cache is not None:
        return blk(x_BTD, cache=cache, ctx=ctx, **mask)

    def fwd(x_BTD):
        y_BTD, _, a = blk(x_BTD, cache=None, ctx=ctx, **mask)
        return y_BTD, a

    y_BTD, a = jax.checkpoint(fwd, policy=REMAT_POLICIES[remat])(x_BTD)
    return y_BTD, None, a


def run_layers(layers: nnx.List, x_BTD: jax.Array, *, n_layers: int, remat: str, scanned: bool, caches=None,
               ctx=None, **mask):
    """Runs the stack; returns (x_BTD, new caches list or None, [LayerAux per layer])."""
    with_cache = caches is not None
    if not scanned:
        new_caches, aux = [], []
        for i, blk in enumerate(layers):
            x_BTD, c, a = _call_block(blk, x_BTD, cache=None if caches is None else caches[i], ctx=ctx, mask=mask,
                                      remat=remat)
            new_caches.append(c)
            aux.append(a)
        return x_BTD, (new_caches if with_cache else None), aux

    P = len(layers)
    G = n_layers // P
    split = [nnx.split(blk) for blk in layers]
    graphdefs = [g for g, _ in split]
    states = tuple(s for _, s in split)

    if with_cache:
        # Decoding: layer by layer over slices of the stacked parameters (caches stay per layer).
        new_caches, aux = [], []
        for i in range(n_layers):
            g, j = divmod(i, P)
            blk = nnx.merge(graphdefs[j], jax.tree.map(lambda a: a[g], states[j]))
            x_BTD, c, a = blk(x_BTD, cache=caches[i], ctx=_with_layer(ctx, i), **mask)
            new_caches.append(c)
            aux.append(a)
        return x_BTD, new_caches, aux

    def body(x_BTD, xs):
        states_g, g = xs
        auxs = []
        for j in range(P):
            blk = nnx.merge(graphdefs[j], states_g[j])
            x_BTD, _, a = _call_block(blk, x_BTD, cache=None, ctx=_with_layer(ctx, g * P + j), mask=mask, remat=remat)
            auxs.append(a)
        return x_BTD, tuple(auxs)

    x_BTD, auxs = jax.lax.scan(body, x_BTD, (states, jnp.arange(G, dtype=jnp.int32)))
    aux = [jax.tree.map(lambda a, g=g: a[g], auxs[j]) for g in range(G) for j in range(P)]
    return x_BTD, None, aux


class BlockStack:
    """Mixin for models with a block stack: `init_stack` in __init__, `run_stack` in __call__.

    Sets `self.blocks` (unscanned) or `self.layers` (scanned), so a
    checkpoint's parameter paths say which layout it holds.
    """

    def init_stack(self, cfg, rngs: nnx.Rngs) -> None:
        self.n_layers, self.remat, self.scanned = int(cfg.n_layers), str(cfg.get("remat", "none")), is_scanned(cfg)
        if self.scanned:
            self.layers = build_layers(cfg, rngs)
        else:
            self.blocks = build_layers(cfg, rngs)

    def run_stack(self, x_BTD: jax.Array, *, caches=None, ctx=None, **mask):
        """(x_BTD, new caches or None, [LayerAux per layer])."""
        return run_layers(self.layers if self.scanned else self.blocks, x_BTD, n_layers=self.n_layers,
                          remat=self.remat, scanned=self.scanned, caches=caches, ctx=ctx, **mask)

    def block_modules(self) -> list:
        """One block module per layer (scanned: the stacked module of its group position), for static
        attributes such as the KV-cache shapes."""
        if self.scanned:
            return [self.layers[i % len(self.layers)] for i in range(self.n_layers)]
        return list(self.blocks)


# --------------------------------------------------------------------------
# Converting parameter trees between the layouts
# --------------------------------------------------------------------------

def stack_params(tree: dict, cfg) -> dict:
    """Unscanned -> scanned: `blocks.{i}.*` -> `layers.{j}.*` stacked over g (i = g * P + j); other keys kept."""
    P = scan_period(cfg)
    L = int(cfg.n_layers)
    if L % P:
        raise ValueError(f"model.n_layers={L} is not a multiple of model.ffn_every={P}")
    if "blocks" not in tree:
        raise ValueError(f"no 'blocks' in the tree (keys {sorted(tree)}): not the unscanned layout")
    blocks = tree["blocks"]
    out = {k: v for k, v in tree.items() if k != "blocks"}
    out["layers"] = {j: jax.tree.map(lambda *xs: jnp.stack(xs), *[blocks[g * P + j] for g in range(L // P)])
                     for j in range(P)}
    return out


def unstack_params(tree: dict, cfg) -> dict:
    """Scanned -> unscanned: the inverse of `stack_params`."""
    P = scan_period(cfg)
    L = int(cfg.n_layers)
    if "layers" not in tree:
        raise ValueError(f"no 'layers' in the tree (keys {sorted(tree)}): not the scanned layout")
    layers = tree["layers"]
    out = {k: v for k, v in tree.items() if k != "layers"}
    out["blocks"] = {i: jax.tree.map(lambda a, g=i // P: a[g], layers[i % P]) for i in range(L)}
    return out


def params_layout(tree) -> str:
    """"scanned" or "unscanned": the layout of a parameter tree (the first block stack found, depth first)."""
    if isinstance(tree, dict):
        if "layers" in tree or "blocks" in tree:
            return "scanned" if "layers" in tree else "unscanned"
        for v in tree.values():
            found = params_layout(v)
            if found != "none":
                return found
    return "none"
