"""Flash-attention forward kernel: online softmax over key blocks (FlashAttention-2, Dao 2023, Alg. 1).

Grid (B, N, T / bq): one program per query block of one head. It keeps the
block's queries, a float32 accumulator [bq, H], the running max m and the
running sum l on chip, and loops over the key blocks the mask can reach
(`masking.key_block_range`). Scores live in base 2: s2 = q k^T * scale *
log2(e), so exp2 replaces exp (the identity e^x = 2^(x log2 e)), and the
saved log-sum-exp `lse2` is in the same units. Grouped-query heads: query
head n reads KV head n // G through the BlockSpec index map, so K/V are
never repeated in memory.

A row that sees no key keeps m == NEG; it outputs zeros and saves
lse2 = -NEG, which makes every backward probability exp2(NEG - lse2) zero.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.flash_attention.masking import (NEG, MaskSpec, iota, key_block_range, split_token_refs,
                                              tile_mask, token_inputs)

LOG2E = math.log2(math.e)


def dot_f32(a, b, *, trans_b: bool = False, trans_a: bool = False, precision=None):
    """a @ b (optionally transposed operands) with float32 accumulation."""
    ca = 0 if trans_a else 1
    cb = 1 if trans_b else 0
    return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=jnp.float32,
                           precision=precision)


def _fwd_kernel(*refs, spec: MaskSpec, bq: int, bk: int, n_kv_blocks: int, scale2: float, precision):
    q_ref, k_ref, v_ref, *rest = refs
    q_seg_ref, k_seg_ref, q_pos_ref, k_pos_ref, rest = split_token_refs(spec, rest)
    o_ref, lse_ref = rest
    i = pl.program_id(2)
    H = q_ref.shape[-1]
    kv_padded = spec.kv_len % bk != 0

    q = q_ref[...]
    q_idx = iota(bq, i * bq)
    q_pos = q_pos_ref[...] if spec.has_positions else q_idx
    q_seg = q_seg_ref[...] if spec.has_segments else None

    def body(j, carry):
        acc, m, l = carry
        start = pl.multiple_of(j * bk, bk)
        ks = pl.ds(start, bk)
        k_idx = iota(bk, start)
        s = dot_f32(q, k_ref[ks, :], trans_b=True, precision=precision) * scale2  # [bq, bk]
        mask = tile_mask(spec, q_pos, k_pos_ref[ks] if spec.has_positions else k_idx, k_idx,
                         q_seg, k_seg_ref[ks] if spec.has_segments else None, kv_padded=kv_padded)
        if mask is not None:
            s = jnp.where(mask, s, NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        corr = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        l = corr * l + jnp.sum(p, axis=1)
        v = v_ref[ks, :]
        acc = corr[:, None] * acc + dot_f32(p.astype(v.dtype), v, precision=precision)
        return acc, m_new, l

    lo, hi = key_block_range(spec, i, bq, bk, n_kv_blocks)
    init = (jnp.zeros((bq, H), jnp.float32), jnp.full((bq,), NEG, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    empty = m <= 0.5 * NEG
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = jnp.where(empty[:, None], 0.0, acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -NEG, m + jnp.log2(l_safe))


def flash_forward(q, k, v, q_seg, k_seg, q_pos, k_pos, *, spec: MaskSpec, scale: float, bq: int, bk: int,
                  interpret, compiler_params, precision):
    """q [B, Tp, N, H], k/v [B, Sp, K, H] (block multiples) -> (o [B, Tp, N, H], lse2 [B, N, Tp] float32)."""
    B, Tp, N, H = q.shape
    Sp, K = k.shape[1], k.shape[2]
    G = N // K
    nq, nk = Tp // bq, Sp // bk
    in_specs = [
        pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0)),
        pl.BlockSpec((None, Sp, None, H), lambda b, n, i: (b, 0, n // G, 0)),
        pl.BlockSpec((None, Sp, None, H), lambda b, n, i: (b, 0, n // G, 0)),
    ]
    args = [q, k, v]
    extra_args, extra_specs = token_inputs(spec, q_seg, k_seg, q_pos, k_pos,
                                           pl.BlockSpec((None, bq), lambda b, n, i: (b, i)),
                                           pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)))
    args += extra_args
    in_specs += extra_specs
    kernel = functools.partial(_fwd_kernel, spec=spec, bq=bq, bk=bk, n_kv_blocks=nk, scale2=scale * LOG2E,
                               precision=precision)
    return pl.pallas_call(
        kernel,
        grid=(B, N, nq),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0)),
                   pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, N, Tp), jnp.float32)],
        interpret=interpret,
        compiler_params=compiler_params,
        name="flash_attention_fwd",
    )(*args)
