"""Autoregressive sampling from a DecoderLM with a KV cache, at fixed shapes.

Prefill runs the (right-padded) prompts in one pass; each step then feeds
one token per row. Shapes never change, so one compilation serves a whole
generation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_logits(logits_BV: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Greedy when temperature == 0, else softmax(logits / temperature) over the top-k."""
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def generate(model, prompt_BP: jax.Array, prompt_lengths_B: jax.Array, *, max_new_tokens: int,
             rng: jax.Array, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """Returns the [B, max_new_tokens] continuation of each prompt (call under jit)."""
    B, P = prompt_BP.shape
    caches = model.init_caches(B, P + max_new_tokens)
    logits_BPV, caches, _ = model(prompt_BP, caches=caches)
    caches = [c.with_lengths(prompt_lengths_B) for c in caches]
    last_BV = jnp.take_along_axis(logits_BPV, (prompt_lengths_B - 1)[:, None, None], axis=1)[:, 0]

    def step(carry, rng_t):
        last_BV, caches = carry
        tok_B = sample_logits(last_BV, rng_t, temperature, top_k)
        logits_B1V, caches, _ = model(tok_B[:, None], caches=caches)
        return (logits_B1V[:, 0], caches), tok_B

    _, toks_NB = jax.lax.scan(step, (last_BV, caches), jax.random.split(rng, max_new_tokens))
    return toks_NB.T
