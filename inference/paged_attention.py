"""Decode attention through block tables: the pure-jnp gather reference.

One new query token per row attends over that row's cached positions,
which live in physical blocks of a shared pool named by the row's block
table (PagedAttention, Kwon et al. 2023, section 4.1). The reference
gathers each row's blocks into a contiguous [S = L * block_size] view and
runs masked softmax attention (Vaswani et al. 2017, eq. 1) on it; grouped-
query heads (N = K * G) are handled by a reshape, never by repeating K/V.
The Pallas kernel in kernels/paged_attention is tested against this.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gather_kv(k_pool_PbKH: jax.Array, v_pool_PbKH: jax.Array, block_tables_BL: jax.Array):
    """Each row's blocks in logical order: ([B, L * bs, K, H], same for V)."""
    B, L = block_tables_BL.shape
    _, bs, K, H = k_pool_PbKH.shape
    k_BSKH = k_pool_PbKH[block_tables_BL].reshape(B, L * bs, K, H)  # B L bs K H -> B (L bs) K H
    v_BSKH = v_pool_PbKH[block_tables_BL].reshape(B, L * bs, K, H)
    return k_BSKH, v_BSKH


def paged_decode_attention_ref(q_BNH: jax.Array, k_pool_PbKH: jax.Array, v_pool_PbKH: jax.Array,
                               block_tables_BL: jax.Array, lengths_B: jax.Array, scale: float | None = None) -> jax.Array:
    """softmax(q k^T * scale) v over the first lengths_B[b] positions of row b; [B, N, H]."""
    B, N, H = q_BNH.shape
    K = k_pool_PbKH.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    k_BSKH, v_BSKH = gather_kv(k_pool_PbKH, v_pool_PbKH, block_tables_BL)
    S = k_BSKH.shape[1]
    q_BKGH = q_BNH.reshape(B, K, G, H)  # query head n = k * G + g
    logits_BKGS = jnp.einsum("BKGH,BSKH->BKGS", q_BKGH, k_BSKH, preferred_element_type=jnp.float32) * scale
    valid_BS = jnp.arange(S)[None, :] < lengths_B[:, None]
    logits_BKGS = jnp.where(valid_BS[:, None, None, :], logits_BKGS, -1e30)
    weights_BKGS = jax.nn.softmax(logits_BKGS, axis=-1).astype(v_BSKH.dtype)
    out_BKGH = jnp.einsum("BKGS,BSKH->BKGH", weights_BKGS, v_BSKH)
    return out_BKGH.reshape(B, N, H).astype(q_BNH.dtype)


def paged_decode_attention(q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B, *, use_kernel: bool = False):
    """The reference, or the Pallas kernel (kernels/paged_attention) with `use_kernel`."""
    if use_kernel:
        from kernels.paged_attention.kernel import paged_decode_attention as kernel

        return kernel(q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B)
    return paged_decode_attention_ref(q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B)
