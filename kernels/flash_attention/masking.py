"""The mask of one (query block, key block) tile, and which key/query blocks can be visible.

The kernels see a mask as static structure (`MaskSpec`) plus small per-token
arrays, never as an n x n array:
- a band `left`/`right` (None = unbounded): query at position p sees keys at
  positions p - left .. p + right; causal is `right = 0` folded in by the caller;
- segment ids: a query sees keys of its own segment, and key segment 0 is
  padding (key lengths are folded into key segment 0 by the caller);
- `kv_len`: keys at index >= kv_len are block padding.

With default positions (position == index) the band also bounds the loops:
query block i only visits key blocks [lo, hi) that intersect the band, so a
window W costs O(n W) and causal skips the blocks above the diagonal
(FlashAttention-2, Dao 2023, Sec. 3.1.1). With explicit positions the band
is evaluated per element over every block.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

# Finite so a fully masked tile keeps the running max finite (exp2(NEG - NEG) = 1
# is then cancelled by the rescale, or the row is detected as empty at the end).
NEG = -1e30


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    left: int | None
    right: int | None
    has_segments: bool
    has_positions: bool
    kv_len: int  # real key count; keys past it (block padding) are masked when it is not a block multiple

    @property
    def banded(self) -> bool:
        return self.left is not None or self.right is not None


def tile_mask(spec: MaskSpec, q_pos, k_pos, k_idx, q_seg=None, k_seg=None, *, kv_padded: bool):
    """Boolean [bq, bk] (True = attend), or None when nothing in the tile can be masked."""
    mask = None

    def _and(m, new):
        return new if m is None else jnp.logical_and(m, new)

    if spec.banded:
        delta = q_pos[:, None] - k_pos[None, :]  # q_pos - k_pos
        if spec.left is not None:
            mask = _and(mask, delta <= spec.left)
        if spec.right is not None:
            mask = _and(mask, delta >= -spec.right)
    if spec.has_segments:
        mask = _and(mask, (q_seg[:, None] == k_seg[None, :]) & (k_seg[None, :] != 0))
    if kv_padded:
        mask = _and(mask, (k_idx < spec.kv_len)[None, :])
    return mask


def _band_blocks(idx, size: int, other: int, before: int | None, after: int | None, n_other: int):
    """Blocks [lo, hi) of the other axis (blocks of `other`) that block `idx` (of `size`) meets,
    when element p of this axis meets elements p - before .. p + after of the other one."""
    lo, hi = 0, n_other
    if before is not None:
        lo = lax.div(jnp.maximum(idx * size - before, 0), other)
    if after is not None:
        # last visible index: idx*size + size - 1 + after; blocks up to and including it
        last = idx * size + size - 1 + after
        hi = jnp.clip(lax.div(jnp.maximum(last, -1) + other, other), 0, n_other)
    return lo, hi


def key_block_range(spec: MaskSpec, i, bq: int, bk: int, n_kv_blocks: int):
    """Key blocks [lo, hi) that query block i can see (all of them with explicit positions)."""
    if spec.has_positions or not spec.banded:
        return 0, n_kv_blocks
    return _band_blocks(i, bq, bk, spec.left, spec.right, n_kv_blocks)


def query_block_range(spec: MaskSpec, j, bq: int, bk: int, n_q_blocks: int):
    """Query blocks [lo, hi) that can see key block j (the transpose: left and right swap roles)."""
    if spec.has_positions or not spec.banded:
        return 0, n_q_blocks
    return _band_blocks(j, bk, bq, spec.right, spec.left, n_q_blocks)


def token_inputs(spec: MaskSpec, q_seg, k_seg, q_pos, k_pos, q_tok_spec, k_tok_spec) -> tuple[list, list]:
    """(extra pallas_call inputs, their BlockSpecs): segment ids, then positions, when the mask has them.

    The kernels read them back in the same order with `split_token_refs`.
    """
    args, specs = [], []
    if spec.has_segments:
        args += [q_seg, k_seg]
        specs += [q_tok_spec, k_tok_spec]
    if spec.has_positions:
        args += [q_pos, k_pos]
        specs += [q_tok_spec, k_tok_spec]
    return args, specs


def split_token_refs(spec: MaskSpec, refs):
    """(q_seg_ref, k_seg_ref, q_pos_ref, k_pos_ref, remaining refs) from the refs after the tensor inputs;
    absent inputs are None (the order `token_inputs` passes them in)."""
    q_seg = k_seg = q_pos = k_pos = None
    if spec.has_segments:
        q_seg, k_seg, *refs = refs
    if spec.has_positions:
        q_pos, k_pos, *refs = refs
    return q_seg, k_seg, q_pos, k_pos, list(refs)


def iota(n: int, start) -> jax.Array:
    return start + lax.broadcasted_iota(jnp.int32, (n,), 0)
