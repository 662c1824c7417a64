"""Compute dtypes by their config names (`model.dtype`)."""
from __future__ import annotations

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str):
    return DTYPES[name]
