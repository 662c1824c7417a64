"""Decode attention through block tables: the pure-jnp gather reference.

One new query token per row attends over that row's cached positions,
which live in physical blocks of a shared pool named by the row's block
table (PagedAttention, Kwon et al. 2023, section 4.1). The reference
gathers each row's blocks into a contiguous [S = L * block_size] view and
runs masked softmax attention (Vaswani et al. 2017, eq. 1) on it; grouped-
query heads (N = K * G) are handled by a reshape, never by repeating K/V.
`paged_decode_attention_blocked` computes the same in chunks with an
online softmax (what the paged cache uses by default); the Pallas kernel in
kernels/paged_attention is tested against the reference too.
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
    # A row with no cached position attends to nothing: zeros (as the kernel), not a mean of unused blocks.
    out_BKGH = out_BKGH * (lengths_B > 0)[:, None, None, None].astype(out_BKGH.dtype)
    return out_BKGH.reshape(B, N, H).astype(q_BNH.dtype)


def paged_decode_attention_blocked(q_BNH: jax.Array, k_pool_PbKH: jax.Array, v_pool_PbKH: jax.Array,
                                   block_tables_BL: jax.Array, lengths_B: jax.Array, scale: float | None = None,
                                   chunk_tokens: int = 32) -> jax.Array:
    """The same attention, a chunk of blocks at a time with an online softmax (Milakov & Gimelshein
    2018; the flash-decoding loop), stopping after the longest row's last chunk.

    The gather reference materializes every row's whole table ([B, L * bs, K, H]) and reads it
    again, three passes over the KV; here each chunk of C blocks is gathered, used and dropped
    while small, and chunks past max(lengths) are never read, so short batches cost less.
    `chunk_tokens`: 32 measured fastest of 16..1024 for the lm_tiny shape on 2 CPU cores (bigger
    chunks spill the gathered K/V out of cache; see benchmarks/decode.py).
    """
    B, N, H = q_BNH.shape
    _, bs, K, _ = k_pool_PbKH.shape
    G = N // K
    L = block_tables_BL.shape[1]
    C = max(1, min(L, chunk_tokens // bs))  # blocks per chunk
    n_chunks = -(-L // C)
    # Pad the tables to whole chunks with any valid block: those positions are masked by length.
    tables_BX = jnp.pad(block_tables_BL, ((0, 0), (0, n_chunks * C - L)), mode="edge")
    scale = H**-0.5 if scale is None else scale
    q_BKGH = (q_BNH.astype(jnp.float32) * scale).astype(k_pool_PbKH.dtype).reshape(B, K, G, H)
    offsets_S = jnp.arange(C * bs)

    def body(i, carry):
        m_BKG, l_BKG, acc_BKGH = carry
        tab_BC = jax.lax.dynamic_slice_in_dim(tables_BX, i * C, C, axis=1)
        k_BSKH = k_pool_PbKH[tab_BC].reshape(B, C * bs, K, H)  # B C bs K H -> B (C bs) K H
        v_BSKH = v_pool_PbKH[tab_BC].reshape(B, C * bs, K, H)
        s_BKGS = jnp.einsum("BKGH,BSKH->BKGS", q_BKGH, k_BSKH, preferred_element_type=jnp.float32)
        valid_BS = (i * C * bs + offsets_S)[None, :] < lengths_B[:, None]
        s_BKGS = jnp.where(valid_BS[:, None, None, :], s_BKGS, -1e30)
        m_new_BKG = jnp.maximum(m_BKG, s_BKGS.max(-1))
        p_BKGS = jnp.exp(s_BKGS - m_new_BKG[..., None])
        corr_BKG = jnp.exp(m_BKG - m_new_BKG)
        l_BKG = l_BKG * corr_BKG + p_BKGS.sum(-1)
        pv_BKGH = jnp.einsum("BKGS,BSKH->BKGH", p_BKGS.astype(v_BSKH.dtype), v_BSKH,
                             preferred_element_type=jnp.float32)
        return m_new_BKG, l_BKG, acc_BKGH * corr_BKG[..., None] + pv_BKGH

    init = (jnp.full((B, K, G), -1e30, jnp.float32), jnp.zeros((B, K, G), jnp.float32),
            jnp.zeros((B, K, G, H), jnp.float32))
    used = jnp.minimum(-(-jnp.max(lengths_B) // (C * bs)), n_chunks)
    _, l_BKG, acc_BKGH = jax.lax.fori_loop(0, used, body, init)
    # Rows of length 0 saw only masked scores (or no chunk at all): zeros, as the reference and the kernel.
    empty_B = lengths_B <= 0
    l_BKG = jnp.where(empty_B[:, None, None], 1.0, l_BKG)
    out_BKGH = jnp.where(empty_B[:, None, None, None], 0.0, acc_BKGH / l_BKG[..., None])
    return out_BKGH.reshape(B, N, H).astype(q_BNH.dtype)


def _pallas(q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B):
    from kernels.paged_attention.kernel import paged_decode_attention as kernel

    return kernel(q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B)


# How the paged cache computes one-token decode attention (`impl=` of PagedKVCache / Engine).
PAGED_IMPLS = {
    "blocked": paged_decode_attention_blocked,  # default: chunked online softmax, skips unused chunks
    "gather": paged_decode_attention_ref,       # the oracle
    "pallas": _pallas,                          # kernels/paged_attention
}


def paged_decode_attention(q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B, *, impl: str = "blocked"):
    if impl not in PAGED_IMPLS:
        raise KeyError(f"impl={impl!r} is not a paged attention implementation; choose one of {sorted(PAGED_IMPLS)}")
    return PAGED_IMPLS[impl](q_BNH, k_pool_PbKH, v_pool_PbKH, block_tables_BL, lengths_B)
