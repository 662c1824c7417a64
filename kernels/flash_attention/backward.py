"""Flash-attention backward kernels (FlashAttention-2, Dao 2023, Alg. 2), split in two passes.

Both recompute the probabilities from the saved base-2 log-sum-exp,
p = exp2(s2 - lse2), instead of storing the [T, S] matrix, and use
delta_t = sum_h dO_th O_th (computed outside in XLA: one cheap pass) for the
softmax Jacobian: dS = P * (dP - delta), dP = dO V^T (Alg. 2, lines 16-20).

- dK/dV: grid (B, K, S / bk). One program owns a key block of one KV head and
  loops over its G query heads and the query blocks that can see it
  (`masking.query_block_range`), so GQA gradients are summed on chip and
  K/V are never repeated.
- dQ: grid (B, N, T / bq), the forward's loop over key blocks.
Two passes (rather than one with atomic dQ adds) keep every output written
by exactly one program, which the Triton and TPU lowerings both support.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.flash_attention.forward import LOG2E, dot_f32
from kernels.flash_attention.masking import (NEG, MaskSpec, iota, key_block_range, query_block_range,
                                              split_token_refs, tile_mask, token_inputs)


def _dkdv_kernel(*refs, spec: MaskSpec, G: int, bq: int, bk: int, n_q_blocks: int, scale: float, precision):
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest = refs
    q_seg_ref, k_seg_ref, q_pos_ref, k_pos_ref, rest = split_token_refs(spec, rest)
    dk_ref, dv_ref = rest
    j = pl.program_id(2)
    H = k_ref.shape[-1]
    kv_padded = spec.kv_len % bk != 0
    scale2 = scale * LOG2E

    k = k_ref[...]
    v = v_ref[...]
    k_idx = iota(bk, j * bk)
    k_pos = k_pos_ref[...] if spec.has_positions else k_idx
    k_seg = k_seg_ref[...] if spec.has_segments else None
    lo, hi = query_block_range(spec, j, bq, bk, n_q_blocks)

    dk = jnp.zeros((bk, H), jnp.float32)
    dv = jnp.zeros((bk, H), jnp.float32)
    for g in range(G):  # static: the query heads that share this KV head
        def body(i, carry, g=g):
            dk, dv = carry
            start = pl.multiple_of(i * bq, bq)
            qs = pl.ds(start, bq)
            q = q_ref[qs, g, :]
            do = do_ref[qs, g, :]
            s = dot_f32(q, k, trans_b=True, precision=precision) * scale2  # [bq, bk]
            q_idx = iota(bq, start)
            mask = tile_mask(spec, q_pos_ref[qs] if spec.has_positions else q_idx, k_pos, k_idx,
                             q_seg_ref[qs] if spec.has_segments else None, k_seg, kv_padded=kv_padded)
            if mask is not None:
                s = jnp.where(mask, s, NEG)
            p = jnp.exp2(s - lse_ref[g, qs][:, None])
            dv = dv + dot_f32(p.astype(do.dtype), do, trans_a=True, precision=precision)
            dp = dot_f32(do, v, trans_b=True, precision=precision)
            ds = p * (dp - delta_ref[g, qs][:, None])
            dk = dk + dot_f32(ds.astype(q.dtype), q, trans_a=True, precision=precision)
            return dk, dv

        dk, dv = lax.fori_loop(lo, hi, body, (dk, dv))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, spec: MaskSpec, bq: int, bk: int, n_kv_blocks: int, scale: float, precision):
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *rest = refs
    q_seg_ref, k_seg_ref, q_pos_ref, k_pos_ref, rest = split_token_refs(spec, rest)
    (dq_ref,) = rest
    i = pl.program_id(2)
    H = q_ref.shape[-1]
    kv_padded = spec.kv_len % bk != 0
    scale2 = scale * LOG2E

    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]
    q_idx = iota(bq, i * bq)
    q_pos = q_pos_ref[...] if spec.has_positions else q_idx
    q_seg = q_seg_ref[...] if spec.has_segments else None

    def body(j, dq):
        start = pl.multiple_of(j * bk, bk)
        ks = pl.ds(start, bk)
        k_idx = iota(bk, start)
        k = k_ref[ks, :]
        s = dot_f32(q, k, trans_b=True, precision=precision) * scale2
        mask = tile_mask(spec, q_pos, k_pos_ref[ks] if spec.has_positions else k_idx, k_idx,
                         q_seg, k_seg_ref[ks] if spec.has_segments else None, kv_padded=kv_padded)
        if mask is not None:
            s = jnp.where(mask, s, NEG)
        p = jnp.exp2(s - lse[:, None])
        dp = dot_f32(do, v_ref[ks, :], trans_b=True, precision=precision)
        ds = p * (dp - delta[:, None])
        return dq + dot_f32(ds.astype(k.dtype), k, precision=precision)

    lo, hi = key_block_range(spec, i, bq, bk, n_kv_blocks)
    dq = lax.fori_loop(lo, hi, body, jnp.zeros((bq, H), jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def flash_backward(q, k, v, do, lse2, delta, q_seg, k_seg, q_pos, k_pos, *, spec: MaskSpec, scale: float,
                   blocks_dkv: tuple[int, int], blocks_dq: tuple[int, int], interpret, compiler_params, precision):
    """-> (dq, dk, dv) in the input dtypes. lse2/delta: [B, N, Tp] float32."""
    B, Tp, N, H = q.shape
    Sp, K = k.shape[1], k.shape[2]
    G = N // K

    # dK/dV: per key block of one KV head; queries of its G heads read whole.
    bq, bk = blocks_dkv
    in_specs = [
        pl.BlockSpec((None, Tp, G, H), lambda b, h, j: (b, 0, h, 0)),
        pl.BlockSpec((None, bk, None, H), lambda b, h, j: (b, j, h, 0)),
        pl.BlockSpec((None, bk, None, H), lambda b, h, j: (b, j, h, 0)),
        pl.BlockSpec((None, Tp, G, H), lambda b, h, j: (b, 0, h, 0)),
        pl.BlockSpec((None, G, Tp), lambda b, h, j: (b, h, 0)),
        pl.BlockSpec((None, G, Tp), lambda b, h, j: (b, h, 0)),
    ]
    args = [q, k, v, do, lse2, delta]
    extra_args, extra_specs = token_inputs(spec, q_seg, k_seg, q_pos, k_pos,
                                           pl.BlockSpec((None, Tp), lambda b, h, j: (b, 0)),
                                           pl.BlockSpec((None, bk), lambda b, h, j: (b, j)))
    args += extra_args
    in_specs += extra_specs
    kv_spec = pl.BlockSpec((None, bk, None, H), lambda b, h, j: (b, j, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, spec=spec, G=G, bq=bq, bk=bk, n_q_blocks=Tp // bq, scale=scale,
                          precision=precision),
        grid=(B, K, Sp // bk),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=interpret,
        compiler_params=compiler_params,
        name="flash_attention_dkdv",
    )(*args)

    # dQ: per query block of one head, looping over key blocks like the forward.
    bq, bk = blocks_dq
    in_specs = [
        pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0)),
        pl.BlockSpec((None, Sp, None, H), lambda b, n, i: (b, 0, n // G, 0)),
        pl.BlockSpec((None, Sp, None, H), lambda b, n, i: (b, 0, n // G, 0)),
        pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0)),
        pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i)),
        pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i)),
    ]
    args = [q, k, v, do, lse2, delta]
    extra_args, extra_specs = token_inputs(spec, q_seg, k_seg, q_pos, k_pos,
                                           pl.BlockSpec((None, bq), lambda b, n, i: (b, i)),
                                           pl.BlockSpec((None, Sp), lambda b, n, i: (b, 0)))
    args += extra_args
    in_specs += extra_specs
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, spec=spec, bq=bq, bk=bk, n_kv_blocks=Sp // bk, scale=scale,
                          precision=precision),
        grid=(B, N, Tp // bq),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bq, None, H), lambda b, n, i: (b, i, n, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=interpret,
        compiler_params=compiler_params,
        name="flash_attention_dq",
    )(*args)
    return dq, dk, dv
