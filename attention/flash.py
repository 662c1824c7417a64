"""Attention cores on the Pallas flash kernel, and the `model.attention_impl` choice.

`model.attention_impl`:
- "xla":    the batched-matmul cores (dense.py, longformer.py's blocked window);
- "pallas": kernels/flash_attention on GPU (Triton) and on CPU (interpret
            mode: exact but slow, for tests); on TPU jax's bundled splash
            attention (kernels/flash_attention/splash_tpu.py), because our
            kernels' block layout is GPU-only;
- "cudnn":  dense attention through cuDNN's fused kernel (attention/dense_cudnn.py), GPU only;
- "auto":   "pallas" on GPU and TPU, "xla" on CPU.
The choice is made when the model is traced, from `jax.default_backend()`.
On TPU two cases stay on XLA: dense attention with explicit positions (KV-cache
decoding; splash masks are index-based) and Longformer with global tokens
(the merge needs a differentiable log-sum-exp, which splash does not give).

Dense attention maps its mask arguments one to one onto the kernel's.
Longformer's sliding window (dilation d) becomes the kernel's band: each
head's d interleaved sub-sequences (indices r, r + d, ...) are folded into
the batch, where the dilated band is a plain band of W/2 (W causal) steps,
so the kernel's block skipping gives O(n W). Global tokens join through the
kernel's log-sum-exp: the window softmax (global keys dropped from it) and
the softmax over the A global keys are merged exactly,
out = (e^lse_w out_w + e^lse_g out_g) / (e^lse_w + e^lse_g).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.dense_xla import dense_attention_xla
from kernels.flash_attention import flash_attention
from kernels.flash_attention.splash_tpu import splash_attention_tpu

IMPLS = ("xla", "pallas", "cudnn", "auto")  # "cudnn": dense attention only (attention/dense_cudnn.py)


def backend() -> str:
    """The platform the model is traced for (a function, so tests can stand in a TPU under interpret mode)."""
    return jax.default_backend()


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """"xla", "pallas" or "cudnn" for a configured `model.attention_impl`."""
    if impl not in IMPLS:
        raise KeyError(f"model.attention_impl={impl!r} is not available; choose one of {sorted(IMPLS)}")
    if impl != "auto":
        return impl
    platform = backend() if platform is None else platform
    return "pallas" if platform in ("gpu", "tpu") else "xla"


def dense_attention_pallas(
    q_BTNH, k_BSKH, v_BSKH, *, causal=False, q_positions_BT=None, kv_positions_BS=None,
    q_segment_ids_BT=None, kv_segment_ids_BS=None, kv_lengths_B=None, window=None, scale=None,
):
    """Same contract as `dense_attention_xla`, computed by the flash kernel (splash attention on TPU)."""
    if backend() == "tpu":
        mask = dict(causal=causal, q_segment_ids_BT=q_segment_ids_BT, kv_segment_ids_BS=kv_segment_ids_BS,
                    kv_lengths_B=kv_lengths_B, window=window, scale=scale)
        if q_positions_BT is not None or kv_positions_BS is not None:
            return dense_attention_xla(q_BTNH, k_BSKH, v_BSKH, q_positions_BT=q_positions_BT,
                                       kv_positions_BS=kv_positions_BS, **mask)
        return splash_attention_tpu(q_BTNH, k_BSKH, v_BSKH, **mask)
    return flash_attention(
        q_BTNH, k_BSKH, v_BSKH, causal=causal, window=window, q_positions_BT=q_positions_BT,
        kv_positions_BS=kv_positions_BS, q_segment_ids_BT=q_segment_ids_BT,
        kv_segment_ids_BS=kv_segment_ids_BS, kv_lengths_B=kv_lengths_B, scale=scale)


def _fold(x_BT_, rate: int, fill):
    """[B, T, ...] -> [B * rate, ceil(T / rate), ...]: row b * rate + r holds indices r, r + rate, ..."""
    B, T = x_BT_.shape[:2]
    U = -(-T // rate)
    if U * rate != T:
        widths = [(0, 0)] * x_BT_.ndim
        widths[1] = (0, U * rate - T)
        x_BT_ = jnp.pad(x_BT_, widths, constant_values=fill)
    x = x_BT_.reshape(B, U, rate, *x_BT_.shape[2:])  # index t = u * rate + r
    return jnp.moveaxis(x, 2, 1).reshape(B * rate, U, *x_BT_.shape[2:])


def _unfold(x_XU_, B: int, T: int, rate: int):
    """Inverse of `_fold`."""
    U = x_XU_.shape[1]
    x = x_XU_.reshape(B, rate, U, *x_XU_.shape[2:])
    return jnp.moveaxis(x, 1, 2).reshape(B, U * rate, *x_XU_.shape[2:])[:, :T]


def window_attention_pallas(q_BTNH, k_BSKH, v_BSKH, *, rate: int, left: int, right: int, seg_q_BT, seg_k_BS,
                            scale, global_keys=None):
    """Dilated band attention of heads sharing one dilation rate, through the kernel.

    `left`/`right` are the band in sub-sequence steps; seg_k_BS already carries
    padding and dropped keys as segment 0. `global_keys = (kA_BAKH, vA_BAKH,
    mask_BTA)` adds A extra keys to every query's softmax, merged through the
    log-sum-exp (module docstring).
    """
    B, T = q_BTNH.shape[:2]
    fold = lambda x, fill=0: _fold(x, rate, fill)  # noqa: E731
    if backend() == "tpu":
        assert global_keys is None, "Longformer global tokens stay on the XLA path on TPU"
        out = splash_attention_tpu(fold(q_BTNH), fold(k_BSKH), fold(v_BSKH), window=(left, right),
                                   q_segment_ids_BT=fold(seg_q_BT), kv_segment_ids_BS=fold(seg_k_BS), scale=scale)
        return _unfold(out, B, T, rate)
    out, lse_XNU = flash_attention(
        fold(q_BTNH), fold(k_BSKH), fold(v_BSKH), window=(left, right), q_segment_ids_BT=fold(seg_q_BT),
        kv_segment_ids_BS=fold(seg_k_BS), scale=scale, return_lse=True)
    out_BTNH = _unfold(out, B, T, rate)
    if global_keys is None:
        return out_BTNH
    kA_BAKH, vA_BAKH, mask_BTA = global_keys
    lse_w = _unfold(jnp.moveaxis(lse_XNU, 1, 2), B, T, rate).transpose(0, 2, 1)  # B N T
    N, K, H = q_BTNH.shape[2], kA_BAKH.shape[2], q_BTNH.shape[3]
    G = N // K
    logits = jnp.einsum("BTKGH,BAKH->BKGTA", q_BTNH.reshape(B, T, K, G, H), kA_BAKH,
                        preferred_element_type=jnp.float32) * scale
    mask = mask_BTA[:, None, None]  # B 1 1 T A
    # Finite fill and guarded sums: rows that see no global key get lse_g = -1e30 and NaN-free gradients.
    logits = jnp.where(mask, logits, -1e30)
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(logits - m), 0.0)
    total = jnp.sum(e, axis=-1)
    seen = total > 0
    total = jnp.where(seen, total, 1.0)
    lse_g = jnp.where(seen, m[..., 0] + jnp.log(total), -1e30).reshape(B, N, T)
    out_g = jnp.einsum("BKGTA,BAKH->BTKGH", (e / total[..., None]).astype(vA_BAKH.dtype), vA_BAKH,
                       preferred_element_type=jnp.float32).reshape(B, T, N, H)
    # Exact merge of two softmaxes over disjoint key sets: weights e^lse / (e^lse_w + e^lse_g).
    top = jnp.maximum(lse_w, lse_g)
    a_w, a_g = jnp.exp(lse_w - top), jnp.exp(lse_g - top)  # an empty side (huge negative lse) weighs 0
    f = lambda a: (a / (a_w + a_g)).transpose(0, 2, 1)[..., None]  # noqa: E731  B N T -> B T N 1
    return (f(a_w) * out_BTNH.astype(jnp.float32) + f(a_g) * out_g).astype(q_BTNH.dtype)
