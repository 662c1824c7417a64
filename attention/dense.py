"""Dense (full softmax) attention: the core function and the registered layer.

`dense_attention` dispatches on `impl` (`model.attention_impl`): "xla" is the
batched-matmul path (attention/dense_xla.py: grouped-query heads handled by a
reshape, never by repeating K/V); "pallas" is the flash kernel (attention/flash.py); "cudnn"
is cuDNN's fused attention (attention/dense_cudnn.py, GPU only); "auto" picks "pallas" on
GPU/TPU and "xla" on CPU when the model is traced.
"""
from __future__ import annotations

from typing import Callable

import jax

from attention.base import MultiHeadAttention
from attention.dense_cudnn import dense_attention_cudnn
from attention.dense_xla import dense_attention_xla
from attention.flash import dense_attention_pallas, resolve_impl
from attention.registry import register_attention


def dense_attention_auto(q_BTNH, k_BSKH, v_BSKH, **mask):
    """The flash kernel on GPU/TPU, the XLA path on CPU (decided at trace time)."""
    return DENSE_IMPLS[resolve_impl("auto")](q_BTNH, k_BSKH, v_BSKH, **mask)


DENSE_IMPLS: dict[str, Callable[..., jax.Array]] = {
    "xla": dense_attention_xla,
    "pallas": dense_attention_pallas,
    "cudnn": dense_attention_cudnn,
    "auto": dense_attention_auto,
}


def dense_attention(q_BTNH, k_BSKH, v_BSKH, *, impl: str = "xla", **mask):
    if impl not in DENSE_IMPLS:
        raise KeyError(f"model.attention_impl={impl!r} is not available; choose one of {sorted(DENSE_IMPLS)}")
    return DENSE_IMPLS[impl](q_BTNH, k_BSKH, v_BSKH, **mask)


@register_attention("dense")
class DenseAttention(MultiHeadAttention):
    """Full softmax attention (Vaswani et al. 2017, eq. 1)."""

    supports_pallas = True  # model.attention_impl="pallas" runs the flash kernel (attention/flash.py)
    supports_cudnn = True  # model.attention_impl="cudnn" runs cuDNN's fused attention (attention/dense_cudnn.py)

    def core(self, q_BTNH, k_BSKH, v_BSKH, *, ctx=None, **mask):
        if self.logit_softcap:  # computed on the XLA path only (models/config.py rejects the kernels)
            return dense_attention_xla(q_BTNH, k_BSKH, v_BSKH, logit_softcap=self.logit_softcap, **mask)
        return dense_attention(q_BTNH, k_BSKH, v_BSKH, impl=self.impl, **mask)
