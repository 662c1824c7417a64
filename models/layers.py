"""Shared layers: RMSNorm and the token embedding (optionally tied to the head)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nn.linear import linear
from nn.norm import rms_norm
from sharding import axes as ax


class RMSNorm(nnx.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / rms(x) * scale, statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        self.eps = eps
        self.scale_D = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=(ax.NORM,))

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        return rms_norm(x_BTD, self.scale_D[...], self.eps)


class Embed(nnx.Module):
    """Token embedding table [V, D]; `attend` reuses it as the output head."""

    def __init__(self, vocab: int, dim: int, std: float, *, rngs: nnx.Rngs):
        self.table_VD = nnx.Param(
            jax.nn.initializers.normal(std)(rngs.params(), (vocab, dim)), logical_axes=(ax.VOCAB, ax.EMBED)
        )

    def __call__(self, tokens_BT: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.table_VD[...], tokens_BT, axis=0).astype(dtype)

    def attend(self, x_BTD: jax.Array) -> jax.Array:
        # BTD,VD->BTV as a 2-D matmul (see attention/linear.py)
        return linear(x_BTD, self.table_VD[...].astype(x_BTD.dtype).T, preferred_element_type=jnp.float32)
