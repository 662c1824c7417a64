"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p).

All choices are jnp functions of fixed shape, so one compiled decode step
serves every sampling setting of the same kind (the settings are static).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nn.errors import InferenceError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise InferenceError(f"temperature={self.temperature!r} must be >= 0")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InferenceError(f"top_k={self.top_k!r} must be a non-negative integer")
        if not 0.0 < self.top_p <= 1.0:
            raise InferenceError(f"top_p={self.top_p!r} must be in (0, 1]")


def filter_logits(logits_BV: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature-scaled logits with tokens outside the top-k / top-p set at -inf."""
    logits_BV = logits_BV.astype(jnp.float32) / params.temperature
    if params.top_k:
        kth_B1 = jax.lax.top_k(logits_BV, min(params.top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if params.top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020, eq. 3): the smallest set of most
        # likely tokens whose probability mass reaches p. A token is kept when the
        # mass strictly before it (in sorted order) is below p, so the top token always is.
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept_B = jnp.sum(before_BV < params.top_p, axis=-1)  # >= 1
        cutoff_B1 = jnp.take_along_axis(sorted_BV, (kept_B - 1)[:, None], axis=-1)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return logits_BV


def sample_token(logits_BV: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
    """[B] int32 next tokens."""
    if params.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_BV, params), axis=-1).astype(jnp.int32)
