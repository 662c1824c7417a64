"""Contiguous KV cache for autoregressive decoding.

One cache per attention layer: keys and values for up to S_max positions
and, per sequence, how many are filled. Writing T new positions puts them at
[length, length + T) of each row. Rows of different lengths (mixed-length
prompts) are handled by per-row lengths: padded prompt positions past a
row's true length are written but masked out, and the next write
overwrites them. The paged variant (block tables) keeps this interface.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from attention.masks import default_positions


@flax.struct.dataclass
class KVCache:
    k_BSKH: jax.Array
    v_BSKH: jax.Array
    lengths_B: jax.Array  # int32: filled positions per row

    @classmethod
    def init(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> "KVCache":
        z = jnp.zeros((batch, max_len, kv_heads, head_dim), dtype)
        return cls(k_BSKH=z, v_BSKH=z, lengths_B=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k_BSKH.shape[1]

    def write(self, k_BTKH: jax.Array, v_BTKH: jax.Array) -> "KVCache":
        """Appends T positions to every row (lengths advance by T)."""
        T = k_BTKH.shape[1]

        def put(buf_SKH, new_TKH, start):
            return jax.lax.dynamic_update_slice_in_dim(buf_SKH, new_TKH.astype(buf_SKH.dtype), start, axis=0)

        k = jax.vmap(put)(self.k_BSKH, k_BTKH, self.lengths_B)
        v = jax.vmap(put)(self.v_BSKH, v_BTKH, self.lengths_B)
        return KVCache(k_BSKH=k, v_BSKH=v, lengths_B=self.lengths_B + T)

    def attend(self, core, q_BTNH: jax.Array, q_positions_BT: jax.Array, *, ctx=None) -> jax.Array:
        """The layer's attention `core` for the new queries over every filled position.

        Called after `write`; the cache decides how its keys are laid out
        (inference/paged_cache.py gathers them through block tables).
        """
        B, S = self.k_BSKH.shape[:2]
        return core(
            q_BTNH, self.k_BSKH, self.v_BSKH, ctx=ctx, causal=True,
            q_positions_BT=q_positions_BT, kv_positions_BS=default_positions(B, S), kv_lengths_B=self.lengths_B,
        )

    def with_lengths(self, lengths_B: jax.Array) -> "KVCache":
        """Sets the filled lengths, e.g. to the true prompt lengths after a padded prefill."""
        return self.replace(lengths_B=lengths_B.astype(jnp.int32))
