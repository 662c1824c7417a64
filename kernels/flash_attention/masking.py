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


def key_block_range(spec: MaskSpec, i, bq: int, bk: int, n_kv_blocks: int):
    """Key blocks [lo, hi) that query block i can see (all of them with explicit positions)."""
    if spec.has_positions or not spec.banded:
        return 0, n_kv_blocks
    lo, hi = 0, n_kv_blocks
    if spec.left is not None:
        lo = lax.div(jnp.maximum(i * bq - spec.left, 0), bk)
    if spec.right is not None:
        # last visible key index: i*bq + bq - 1 + right; blocks up to and including it
        last = i * bq + bq - 1 + spec.right
        hi = jnp.clip(lax.div(jnp.maximum(last, -1) + bk, bk), 0, n_kv_blocks)
    return lo, hi


def query_block_range(spec: MaskSpec, j, bq: int, bk: int, n_q_blocks: int):
    """Query blocks [lo, hi) that can see key block j (the transpose of `key_block_range`)."""
    if spec.has_positions or not spec.banded:
        return 0, n_q_blocks
    lo, hi = 0, n_q_blocks
    if spec.right is not None:
        lo = lax.div(jnp.maximum(j * bk - spec.right, 0), bq)
    if spec.left is not None:
        last = j * bk + bk - 1 + spec.left  # last query index that sees this block
        hi = jnp.clip(lax.div(jnp.maximum(last, -1) + bq, bq), 0, n_q_blocks)
    return lo, hi


def iota(n: int, start) -> jax.Array:
    return start + lax.broadcasted_iota(jnp.int32, (n,), 0)
