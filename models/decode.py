"""Cached autoregressive decoding for DecoderLM at fixed shapes.

Prefill runs the right-padded prompts through the model in one pass and
fills the KV caches; each later step feeds one token per row. The whole
generation is one `jax.lax.while_loop` over a fixed-size token buffer, so a
single compilation serves every step, and the loop ends as soon as every
row has hit a stop token, its token budget, or the end of its cache.

`generate` works with any cache the model's layers accept (the contiguous
`attention.kv_cache.KVCache` by default; `inference.paged_cache` builds
paged ones for the same code path).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nn.errors import InferenceError
from models.sampling import SamplingParams, sample_token

PAD_TOKEN = -1  # marks positions after a row stopped in the returned token buffer


def check_prompts(lengths_B, context: int, max_new_tokens: int) -> None:
    """One-line errors for prompts the model cannot take (host side, before compiling)."""
    lengths = np.asarray(lengths_B)
    if max_new_tokens < 1:
        raise InferenceError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if lengths.size and lengths.min() < 1:
        raise InferenceError(f"prompt length {int(lengths.min())} must be >= 1 token")
    if lengths.size and lengths.max() >= context:
        raise InferenceError(
            f"prompt of {int(lengths.max())} tokens does not fit the model context of {context} tokens "
            f"(at most {context - 1} leaves room for one new token)"
        )


def prefill(model, prompt_BP: jax.Array, lengths_B: jax.Array, caches):
    """Runs the padded prompts in one pass; returns (logits of each row's last prompt token [B, V], caches)."""
    logits_BPV, caches, _ = model(prompt_BP, caches=caches)
    # Padded positions past a row's length were written too; resetting the
    # lengths masks them now and lets the next writes overwrite them.
    caches = [c.with_lengths(lengths_B) for c in caches]
    last_BV = jnp.take_along_axis(logits_BPV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return last_BV, caches


def decode_step(model, tokens_B: jax.Array, caches):
    """Feeds one token per row; returns (next-token logits [B, V] in float32, caches)."""
    logits_B1V, caches, _ = model(tokens_B[:, None], caches=caches)
    return logits_B1V[:, 0], caches


def generate(model, prompt_BP: jax.Array, lengths_B: jax.Array, *, max_new_tokens: int, rng: jax.Array,
             sampling: SamplingParams = SamplingParams(), stop_tokens: Sequence[int] = (),
             context: int | None = None, caches=None, return_logits: bool = False) -> dict:
    """Generates up to `max_new_tokens` per row (call under jit; the keyword settings are static).

    Returns {"tokens_BN": int32 [B, N] (PAD_TOKEN after a row stops), "num_tokens_B": emitted per row
    (a stop token counts and is included)}, plus "logits_BNV" (the logits each token was drawn from)
    with `return_logits`. The cache holds `context` positions (default prompt + new tokens); a row
    also stops when its cache is full.
    """
    B, P = prompt_BP.shape
    N = int(max_new_tokens)
    S = int(context) if context else P + N
    if caches is None:
        caches = model.init_caches(B, max(S, P))  # padding may make P exceed the context
    stop_K = jnp.asarray(list(stop_tokens) or [PAD_TOKEN], jnp.int32)

    last_BV, caches = prefill(model, prompt_BP, lengths_B, caches)

    def emit(i, logits_BV, done_B, count_B, out_BN, logits_BNV):
        tok_B = sample_token(logits_BV, jax.random.fold_in(rng, i), sampling)
        tok_B = jnp.where(done_B, PAD_TOKEN, tok_B)
        out_BN = out_BN.at[:, i].set(tok_B)
        if return_logits:
            logits_BNV = logits_BNV.at[:, i].set(logits_BV)
        count_B = count_B + (~done_B).astype(jnp.int32)
        # Full: the token just emitted sits at position len + count - 1 = S - 1, nothing left to feed it into.
        done_B = done_B | jnp.isin(tok_B, stop_K) | (count_B >= N) | (lengths_B + count_B >= S)
        return tok_B, done_B, count_B, out_BN, logits_BNV

    out_BN = jnp.full((B, N), PAD_TOKEN, jnp.int32)
    logits_BNV = jnp.zeros((B, N, last_BV.shape[-1]), jnp.float32) if return_logits else None
    carry = emit(0, last_BV, jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32), out_BN, logits_BNV)

    def cond(state):
        i, _, (_, done_B, *_), _ = state
        return (i < N) & ~jnp.all(done_B)

    def body(state):
        i, caches, (tok_B, done_B, count_B, out_BN, logits_BNV), _ = state
        # Rows that stopped feed a dummy token; their outputs are masked by `done_B`.
        logits_BV, caches = decode_step(model, jnp.maximum(tok_B, 0), caches)
        return i + 1, caches, emit(i, logits_BV, done_B, count_B, out_BN, logits_BNV), None

    _, caches, (_, _, count_B, out_BN, logits_BNV), _ = jax.lax.while_loop(cond, body, (1, caches, carry, None))
    result = {"tokens_BN": out_BN, "num_tokens_B": count_B}
    if return_logits:
        result["logits_BNV"] = logits_BNV
    return result


def pad_prompts(prompts: Sequence[Sequence[int]], multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists to a common length (rounded up to `multiple`, fewer compilations)."""
    if not prompts:
        raise InferenceError("no prompts given")
    lengths = np.array([len(p) for p in prompts], np.int32)
    P = max(int(-(-lengths.max() // multiple) * multiple), 1)
    out = np.zeros((len(prompts), P), np.int32)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, lengths
