"""The attention oracle: plain softmax(Q K^T / sqrt(H)) V.

Every other attention path in the project (blocked, linearized, Pallas) is
tested against this function. It favours obviousness over speed: KV heads
are repeated to the query heads and the full [B, N, T, S] logits are built.

Conventions shared by all implementations:
- inputs are q_BTNH, k_BSKH, v_BSKH with N % K == 0 (grouped-query heads:
  query head n uses KV head n // (N // K));
- logits and softmax in float32 whatever the input dtype; output in q's dtype;
- a query with no visible key (padding) outputs zeros, not NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.masks import dense_mask_BTS


def reference_attention(
    q_BTNH: jax.Array,
    k_BSKH: jax.Array,
    v_BSKH: jax.Array,
    *,
    causal: bool = False,
    q_positions_BT: jax.Array | None = None,
    kv_positions_BS: jax.Array | None = None,
    q_segment_ids_BT: jax.Array | None = None,
    kv_segment_ids_BS: jax.Array | None = None,
    kv_lengths_B: jax.Array | None = None,
    window: tuple[int | None, int | None] | None = None,
    scale: float | None = None,
    logit_softcap: float | None = None,
) -> jax.Array:
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    assert N % K == 0, f"query heads {N} must be a multiple of KV heads {K}"
    scale = H**-0.5 if scale is None else scale
    k_BSNH = jnp.repeat(k_BSKH, N // K, axis=2)
    v_BSNH = jnp.repeat(v_BSKH, N // K, axis=2)
    logits_BNTS = jnp.einsum(
        "BTNH,BSNH->BNTS", q_BTNH.astype(jnp.float32), k_BSNH.astype(jnp.float32)
    ) * scale
    if logit_softcap:  # Gemma 2: cap * tanh(logits / cap), before the mask
        logits_BNTS = logit_softcap * jnp.tanh(logits_BNTS / logit_softcap)
    mask_BTS = dense_mask_BTS(
        batch=B, q_len=T, kv_len=S, causal=causal,
        q_positions_BT=q_positions_BT, kv_positions_BS=kv_positions_BS,
        q_segment_ids_BT=q_segment_ids_BT, kv_segment_ids_BS=kv_segment_ids_BS,
        kv_lengths_B=kv_lengths_B, window=window,
    )
    if mask_BTS is not None:
        logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, -jnp.inf)
    row_max = jnp.max(logits_BNTS, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights_BNTS = jnp.exp(logits_BNTS - row_max)
    denom = jnp.sum(weights_BNTS, axis=-1, keepdims=True)
    weights_BNTS = weights_BNTS / jnp.where(denom == 0, 1.0, denom)
    out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", weights_BNTS, v_BSNH.astype(jnp.float32))
    return out_BTNH.astype(q_BTNH.dtype)
