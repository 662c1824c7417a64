"""Dense (full softmax) attention: the core function and the registered layer.

`dense_attention` dispatches on `impl`: "xla" is the einsum path below
(grouped-query heads handled by a reshape, never by repeating K/V);
Pallas kernels add entries to `DENSE_IMPLS` when they land.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from attention.base import MultiHeadAttention
from attention.masks import dense_mask_BTS
from attention.registry import register_attention


def dense_attention_xla(
    q_BTNH, k_BSKH, v_BSKH, *, causal=False, q_positions_BT=None, kv_positions_BS=None,
    q_segment_ids_BT=None, kv_segment_ids_BS=None, kv_lengths_B=None, window=None, scale=None,
):
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    q_BTKGH = q_BTNH.reshape(B, T, K, G, H)  # query head n = k * G + g
    logits_BKGTS = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
    ) * scale
    mask_BTS = dense_mask_BTS(
        batch=B, q_len=T, kv_len=S, causal=causal,
        q_positions_BT=q_positions_BT, kv_positions_BS=kv_positions_BS,
        q_segment_ids_BT=q_segment_ids_BT, kv_segment_ids_BS=kv_segment_ids_BS,
        kv_lengths_B=kv_lengths_B, window=window,
    )
    if mask_BTS is not None:
        # A large finite negative keeps fully masked rows NaN-free; they are zeroed below.
        logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS, -1e30)
    weights_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1)
    if mask_BTS is not None:
        any_BT = jnp.any(mask_BTS, axis=-1)
        weights_BKGTS = weights_BKGTS * any_BT[:, None, None, :, None]
    out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", weights_BKGTS.astype(v_BSKH.dtype), v_BSKH)
    return out_BTKGH.reshape(B, T, N, H)  # B T (K G) H


DENSE_IMPLS: dict[str, Callable[..., jax.Array]] = {"xla": dense_attention_xla}


def dense_attention(q_BTNH, k_BSKH, v_BSKH, *, impl: str = "xla", **mask):
    if impl not in DENSE_IMPLS:
        raise KeyError(f"model.attention_impl={impl!r} is not available; choose one of {sorted(DENSE_IMPLS)}")
    return DENSE_IMPLS[impl](q_BTNH, k_BSKH, v_BSKH, **mask)


@register_attention("dense")
class DenseAttention(MultiHeadAttention):
    """Full softmax attention (Vaswani et al. 2017, eq. 1)."""

    def core(self, q_BTNH, k_BSKH, v_BSKH, **mask):
        return dense_attention(q_BTNH, k_BSKH, v_BSKH, impl=self.impl, **mask)
