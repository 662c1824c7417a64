"""Soft-capping (Gemma 2): cap * tanh(x / cap) keeps values in (-cap, cap), near-identity for |x| << cap."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap), in x's dtype; `cap` > 0 (callers skip it when the setting is 0)."""
    return (cap * jnp.tanh(x / cap)).astype(x.dtype)
