"""Paged-attention decode as a Pallas kernel (Kwon et al. 2023, PagedAttention, section 4.1).

One program per (sequence b, KV head k): it holds the G = N / K query heads
that share KV head k, walks the sequence's block table one physical block
at a time (only the ceil(length / block_size) blocks in use), and keeps an
online softmax (Milakov & Gimelshein 2018) so no [S] row of scores is ever
materialized. Grouped-query heads therefore read each KV block once.

The pools are passed whole and indexed through the block table inside the
kernel. That is the layout `interpret=True` runs on CPU, which is how the
tests check it against `inference.paged_attention.paged_decode_attention_ref`;
a TPU/GPU build would keep the pools in HBM (`memory_space=pl.ANY`) and
copy each block in with a DMA. Call it under `jax.jit` (the wrapper is jitted).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _decode_kernel(tables_ref, lengths_ref, q_ref, k_ref, v_ref, o_ref, *, block_size: int, scale: float):
    # tables_ref [1, L] (this row), lengths_ref [1], q_ref/o_ref [1, 1, G, H], k_ref/v_ref [P, bs, K, H].
    kv_head = pl.program_id(1)
    length = lengths_ref[0]
    q_GH = q_ref[0, 0].astype(jnp.float32) * scale
    G, H = q_GH.shape

    def body(l, carry):
        m_G, s_G, acc_GH = carry
        phys = tables_ref[0, l]
        k_bH = k_ref[phys, :, kv_head, :].astype(jnp.float32)
        v_bH = v_ref[phys, :, kv_head, :].astype(jnp.float32)
        # Broadcast-and-sum rather than jnp.dot: G (query heads per KV head) is 1..8, below the 16 rows a
        # Triton tl.dot needs, and a decode step is bound by reading K/V, not by these products.
        logits_Gb = jnp.sum(q_GH[:, None, :] * k_bH[None, :, :], axis=-1)
        pos_b = l * block_size + jax.lax.broadcasted_iota(jnp.int32, (1, block_size), 1)
        logits_Gb = jnp.where(pos_b < length, logits_Gb, -1e30)
        m_new_G = jnp.maximum(m_G, logits_Gb.max(axis=-1))
        p_Gb = jnp.exp(logits_Gb - m_new_G[:, None])
        corr_G = jnp.exp(m_G - m_new_G)
        s_G = s_G * corr_G + p_Gb.sum(axis=-1)
        acc_GH = acc_GH * corr_G[:, None] + jnp.sum(p_Gb[:, :, None] * v_bH[None, :, :], axis=1)
        return m_new_G, s_G, acc_GH

    init = (jnp.full((G,), -1e30, jnp.float32), jnp.zeros((G,), jnp.float32), jnp.zeros((G, H), jnp.float32))
    n_blocks = (length + block_size - 1) // block_size
    _, s_G, acc_GH = jax.lax.fori_loop(0, n_blocks, body, init)
    # A row with length 0 (an idle batch slot) has s = 0: return zeros, not NaN.
    o_ref[0, 0] = (acc_GH / jnp.maximum(s_G, 1e-30)[:, None]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("interpret",))
def paged_decode_attention(q_BNH: jax.Array, k_pool_PbKH: jax.Array, v_pool_PbKH: jax.Array,
                           block_tables_BL: jax.Array, lengths_B: jax.Array, *, interpret: bool | None = None):
    """softmax(q k^T / sqrt(H)) v over each row's first lengths_B[b] cached positions; [B, N, H].

    `interpret=None` interprets on CPU and compiles elsewhere.
    """
    B, N, H = q_BNH.shape
    P, bs, K, _ = k_pool_PbKH.shape
    L = block_tables_BL.shape[1]
    G = N // K
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    compiler_params = None
    if not interpret:
        # Triton, as the other kernels here: without these parameters a GPU pallas_call goes to Mosaic GPU,
        # which stages every block (the whole pools) in shared memory and so cannot compile this layout.
        from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415 (GPU only)

        compiler_params = plgpu.CompilerParams(num_warps=4, num_stages=2)
    q_BKGH = q_BNH.reshape(B, K, G, H)  # query head n = k * G + g
    pool_spec = pl.BlockSpec((P, bs, K, H), lambda b, k: (0, 0, 0, 0))
    out_BKGH = pl.pallas_call(
        functools.partial(_decode_kernel, block_size=bs, scale=H**-0.5),
        grid=(B, K),
        in_specs=[
            pl.BlockSpec((1, L), lambda b, k: (b, 0)),
            pl.BlockSpec((1,), lambda b, k: (b,)),
            pl.BlockSpec((1, 1, G, H), lambda b, k: (b, k, 0, 0)),
            pool_spec,
            pool_spec,
        ],
        out_specs=pl.BlockSpec((1, 1, G, H), lambda b, k: (b, k, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((B, K, G, H), q_BNH.dtype),
        interpret=interpret,
        compiler_params=compiler_params,
    )(block_tables_BL.astype(jnp.int32), lengths_B.astype(jnp.int32), q_BKGH, k_pool_PbKH, v_pool_PbKH)
    return out_BKGH.reshape(B, N, H)
