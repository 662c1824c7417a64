"""Dense attention through cuDNN's fused flash attention: `model.attention_impl = "cudnn"` (GPU only).

Same contract as `dense_attention_xla`, computed by
`jax.nn.dot_product_attention(implementation="cudnn")` (layout BTNH, grouped-
query heads without repeating K/V). Causal masking, a causal sliding window
and key lengths map onto cuDNN's own masks, so it skips the masked tiles;
anything else (packed segments, explicit positions, a window open to the
right without causality) becomes a boolean mask, which cuDNN applies as a
bias over the full [T, S] square. As in the XLA core, a query that sees no
key outputs zeros. The baseline the Pallas kernel is measured against
(benchmarks/flash_attention.py, benchmarks/gpu_suite.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.masks import dense_mask_BTS
from nn.errors import ConfigError

IMPLEMENTATION = "cudnn"  # a module constant, so a CPU test can check the mask mapping through "xla"


def backend() -> str:
    return jax.default_backend()


def dense_attention_cudnn(
    q_BTNH, k_BSKH, v_BSKH, *, causal=False, q_positions_BT=None, kv_positions_BS=None,
    q_segment_ids_BT=None, kv_segment_ids_BS=None, kv_lengths_B=None, window=None, scale=None,
):
    if IMPLEMENTATION == "cudnn" and backend() != "gpu":
        raise ConfigError(f"model.attention_impl='cudnn' needs an NVIDIA GPU (this backend is {backend()!r}); "
                          "use 'xla', 'pallas' or 'auto'")
    B, T = q_BTNH.shape[:2]
    S = k_BSKH.shape[1]
    lengths = None if kv_lengths_B is None else kv_lengths_B.astype(jnp.int32)
    left, right = window if window is not None else (None, None)
    native = (q_positions_BT is None and kv_positions_BS is None and q_segment_ids_BT is None
              and kv_segment_ids_BS is None and (window is None or causal or right == 0))
    if native:
        local = None
        if window is not None and left is not None:
            local = (left, 0)  # causal (or right == 0): the band's right edge is the diagonal
        is_causal = causal or (window is not None and right == 0)
        out = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, scale=scale, is_causal=is_causal,
                                           key_value_seq_lengths=lengths, local_window_size=local,
                                           implementation=IMPLEMENTATION)
        if lengths is None:
            return out
        return out * (lengths > 0)[:, None, None, None].astype(out.dtype)  # a row with no keys: zeros
    mask_BTS = dense_mask_BTS(batch=B, q_len=T, kv_len=S, causal=causal, q_positions_BT=q_positions_BT,
                              kv_positions_BS=kv_positions_BS, q_segment_ids_BT=q_segment_ids_BT,
                              kv_segment_ids_BS=kv_segment_ids_BS, kv_lengths_B=kv_lengths_B, window=window)
    mask_BTS = jnp.broadcast_to(mask_BTS, (B, T, S))
    out = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask_BTS[:, None], scale=scale,
                                       implementation=IMPLEMENTATION)
    return out * jnp.any(mask_BTS, axis=-1)[:, :, None, None].astype(out.dtype)
