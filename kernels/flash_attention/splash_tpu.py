"""TPU path: jax's bundled splash attention (Pallas/Mosaic), behind the same contract as `flash_attention`.

Our flash kernels are written for the GPU (Triton) lowering: their BlockSpecs
squeeze the head axis next to the head dim, which Mosaic's (8, 128) tiling
rules reject. On TPU the dispatcher therefore uses
`jax.experimental.pallas.ops.tpu.splash_attention`, which already does
block-sparse flash attention with its own forward and backward kernels.
This module maps our masks onto it:
- causal / window (left, right) -> `LocalMask` / `CausalMask` / `FullMask`
  (static, per (T, S) shape; only fully masked blocks are skipped);
- segment ids and key lengths -> `SegmentIds`, with our "key segment 0 is
  padding" rule made explicit (query 0 -> -2, key 0 -> -1: never equal), and
  rows of padding queries zeroed as the oracle does;
- sequence lengths are padded to the 128-wide tiles (padded keys get
  segment -1), q is pre-scaled (splash applies no softmax scale);
- grouped-query heads are passed as they are (splash supports K < N).
Not covered: explicit positions (callers fall back to XLA) and zeroing
non-padding rows that see no key at all (the oracle gives zeros; splash
averages over its masked values there).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

TILE = 128


def _mask(T: int, S: int, N: int, left, right):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
    if left is None and right is None:
        m = mask_lib.FullMask((T, S))
    elif left is None and right == 0:
        m = mask_lib.CausalMask((T, S))
    else:
        m = mask_lib.LocalMask((T, S), window_size=(left, right), offset=0)
    return mask_lib.MultiHeadMask([m] * N)


def splash_attention_tpu(q_BTNH, k_BSKH, v_BSKH, *, causal=False, window=None, q_segment_ids_BT=None,
                         kv_segment_ids_BS=None, kv_lengths_B=None, scale=None, interpret: bool = False):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    B, T, N, H = q_BTNH.shape
    S = k_BSKH.shape[1]
    scale = H**-0.5 if scale is None else scale
    left, right = (None, None) if window is None else window
    if causal:
        right = 0 if right is None else min(right, 0)
    Tp, Sp = -(-T // TILE) * TILE, -(-S // TILE) * TILE

    q_seg = q_segment_ids_BT if q_segment_ids_BT is not None else kv_segment_ids_BS
    k_seg = kv_segment_ids_BS if kv_segment_ids_BS is not None else q_segment_ids_BT
    q_seg = jnp.ones((B, T), jnp.int32) if q_seg is None else q_seg.astype(jnp.int32)
    k_seg = jnp.ones((B, S), jnp.int32) if k_seg is None else k_seg.astype(jnp.int32)
    if kv_lengths_B is not None:
        k_seg = jnp.where(jnp.arange(S)[None] < kv_lengths_B[:, None], k_seg, 0)
    q_seg = jnp.pad(jnp.where(q_seg == 0, -2, q_seg), ((0, 0), (0, Tp - T)), constant_values=-2)
    k_seg = jnp.pad(jnp.where(k_seg == 0, -1, k_seg), ((0, 0), (0, Sp - S)), constant_values=-1)

    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))  # noqa: E731
    q_BNTH = (pad(q_BTNH, Tp - T) * jnp.asarray(scale, q_BTNH.dtype)).transpose(0, 2, 1, 3)
    k_BKSH = pad(k_BSKH, Sp - S).transpose(0, 2, 1, 3)
    v_BKSH = pad(v_BSKH, Sp - S).transpose(0, 2, 1, 3)
    kernel = splash.make_splash_mha(_mask(Tp, Sp, N, left, right), head_shards=1, q_seq_shards=1,
                                    block_sizes=splash.BlockSizes.get_default(), interpret=interpret)
    run = functools.partial(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=splash.SegmentIds(qs, ks)))
    out_BNTH = jax.vmap(run)(q_BNTH, k_BKSH, v_BKSH, q_seg, k_seg)
    out_BTNH = out_BNTH.transpose(0, 2, 1, 3)[:, :T]
    return jnp.where((q_seg[:, :T] == -2)[:, :, None, None], 0, out_BTNH).astype(q_BTNH.dtype)
