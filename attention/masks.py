"""Attention masks from structure, never from dense n x n inputs.

A mask is described by a causal flag, query/key positions, segment ids
(packed sequences: a token sees only its own segment; id 0 marks padding)
and key lengths (keys at index >= length are padding). Implementations
that need a dense mask build it here from those pieces; efficient ones
(blocked, Pallas) evaluate the same predicate per block.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def default_positions(batch: int, length: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def dense_mask_BTS(
    *,
    batch: int,
    q_len: int,
    kv_len: int,
    causal: bool,
    q_positions_BT: jax.Array | None = None,
    kv_positions_BS: jax.Array | None = None,
    q_segment_ids_BT: jax.Array | None = None,
    kv_segment_ids_BS: jax.Array | None = None,
    kv_lengths_B: jax.Array | None = None,
    window: tuple[int | None, int | None] | None = None,
) -> jax.Array | None:
    """Boolean mask (True = attend) broadcastable to [B, T, S], or None when nothing is masked.

    The leading axis is 1 when the mask is the same for every row (positions
    not given, no segment ids or lengths), so XLA can fold it to a constant.
    `window=(left, right)` keeps keys with q_pos - left <= k_pos <= q_pos + right
    (None on a side means unbounded); sliding-window variants use it.
    """
    mask = None

    def _and(m, new):
        return new if m is None else jnp.logical_and(m, new)

    need_pos = causal or window is not None
    if need_pos:
        qp = default_positions(1, q_len) if q_positions_BT is None else q_positions_BT
        kp = default_positions(1, kv_len) if kv_positions_BS is None else kv_positions_BS
        delta_BTS = qp[:, :, None] - kp[:, None, :]  # q_pos - k_pos
        if causal:
            mask = _and(mask, delta_BTS >= 0)
        if window is not None:
            left, right = window
            if left is not None:
                mask = _and(mask, delta_BTS <= left)
            if right is not None:
                mask = _and(mask, -delta_BTS <= right)
    if q_segment_ids_BT is not None or kv_segment_ids_BS is not None:
        qs = q_segment_ids_BT if q_segment_ids_BT is not None else kv_segment_ids_BS
        ks = kv_segment_ids_BS if kv_segment_ids_BS is not None else q_segment_ids_BT
        same_BTS = (qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0)
        mask = _and(mask, same_BTS)
    if kv_lengths_B is not None:
        valid_BS = jnp.arange(kv_len)[None, :] < kv_lengths_B[:, None]
        mask = _and(mask, valid_BS[:, None, :])
    return mask
