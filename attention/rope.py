"""Rotary position embeddings (Su et al. 2021, RoFormer, eq. 34).

Pairs (x[i], x[i + H/2]) are rotated by angle pos * base^(-2i/H): the
"rotate-half" layout used by GPT-NeoX and Llama, so q.k depends on positions
only through their difference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, base: float = 10000.0) -> jax.Array:
    H = x_BTNH.shape[-1]
    assert H % 2 == 0, f"RoPE needs an even head dim, got {H}"
    freqs_h = base ** (-jnp.arange(0, H // 2, dtype=jnp.float32) * 2.0 / H)
    angles_BTh = positions_BT.astype(jnp.float32)[:, :, None] * freqs_h[None, None, :]
    sin_BT1h = jnp.sin(angles_BTh)[:, :, None, :]
    cos_BT1h = jnp.cos(angles_BTh)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BT1h - x2 * sin_BT1h, x2 * cos_BT1h + x1 * sin_BT1h], axis=-1)
    return out.astype(x_BTNH.dtype)
