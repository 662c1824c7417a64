"""Multi-head self-attention layer: projections, RoPE, KV cache, and a core.

The layer owns the weights; the attention math is a pure function (the
`core`) that subclasses choose. Masks arrive as structure (causal flag,
positions, segment ids, key lengths), never as n x n arrays, so linear and
blocked cores can honour them without materializing one.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from nn.context import ForwardContext
from attention.kv_cache import KVCache
from nn.linear import linear
from attention.masks import default_positions
from attention.rope import apply_rope
from nn.dtypes import dtype_of
from sharding import axes as ax
from sharding.axes import constrain


def head_dim_of(cfg) -> int:
    return cfg.head_dim if cfg.get("head_dim") else cfg.d_model // cfg.n_heads


def variant_settings(cfg, name: str, defaults: Mapping) -> Mapping:
    """`model.<name>`: a variant's own config sub-dict, checked to hold only the fields it declares.

    Variants declare their fields and defaults in a `default_config()`
    static method; models/config.py gathers them into the model config.
    Raises ValueError (one line) when the sub-dict is missing or names an
    unknown field; the values are the variant's `validate_config`'s to check.
    """
    sub = cfg.get(name)
    if sub is None:
        raise ValueError(f"model.{name} is missing: model.attention={name!r} reads its settings there "
                         "(start from models.config.default_model_config())")
    unknown = sorted(set(sub) - set(defaults))
    if unknown:
        raise ValueError(f"model.{name}.{unknown[0]} is not a field of model.{name}; choose from {sorted(defaults)}")
    return sub


class MultiHeadAttention(nnx.Module):
    """Q/K/V/O projections with logical axes; subclasses implement `core`."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, head_dim_of(cfg)
        self.num_heads, self.num_kv_heads, self.head_dim = N, K, H
        self.causal = bool(cfg.causal)
        self.use_rope = bool(cfg.get("rope", True))
        self.rope_base = float(cfg.get("rope_base", 10000.0))
        self.impl = cfg.get("attention_impl", "xla")
        self.dtype = dtype_of(cfg.dtype)
        std = cfg.init_std
        out_std = std / (2 * cfg.n_layers) ** 0.5  # GPT-2 residual scaling
        init = jax.nn.initializers.normal
        self.wq_DNH = nnx.Param(init(std)(rngs.params(), (D, N, H)), logical_axes=(ax.EMBED, ax.HEADS, ax.HEAD_DIM))
        self.wk_DKH = nnx.Param(init(std)(rngs.params(), (D, K, H)), logical_axes=(ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM))
        self.wv_DKH = nnx.Param(init(std)(rngs.params(), (D, K, H)), logical_axes=(ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM))
        self.wo_NHD = nnx.Param(init(out_std)(rngs.params(), (N, H, D)), logical_axes=(ax.HEADS, ax.HEAD_DIM, ax.EMBED))

    @staticmethod
    def param_count(cfg) -> int:
        return cfg.d_model * head_dim_of(cfg) * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)

    @staticmethod
    def core_flops_per_token(cfg, seq_len: int) -> float:
        """Forward FLOPs of the attention core per query token (QK^T and AV over all keys)."""
        return 4.0 * seq_len * cfg.n_heads * head_dim_of(cfg)

    @staticmethod
    def validate_config(cfg) -> None:
        """Raise ValueError naming the field for variant-specific config errors."""

    def core(self, q_BTNH, k_BSKH, v_BSKH, *, ctx: ForwardContext | None = None, **mask: Any) -> jax.Array:
        raise NotImplementedError(f"{type(self).__name__} must implement core()")

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache.init(batch, max_len, self.num_kv_heads, self.head_dim, self.dtype)

    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        positions_BT: jax.Array | None = None,
        segment_ids_BT: jax.Array | None = None,
        kv_lengths_B: jax.Array | None = None,
        cache: KVCache | None = None,
        ctx: ForwardContext | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        B, T, _ = x_BTD.shape
        x_BTD = x_BTD.astype(self.dtype)
        # Positions left as None tell the core the mask is the same for every row
        # (a foldable constant); RoPE still needs them.
        given_positions_BT = positions_BT
        positions_BT = self.positions(B, T, positions_BT, cache)
        q_BTNH, k_BTKH, v_BTKH = self.project_qkv(x_BTD, positions_BT)

        if cache is None:
            out_BTNH = self.core(
                q_BTNH, k_BTKH, v_BTKH, ctx=ctx, causal=self.causal,
                q_positions_BT=given_positions_BT, kv_positions_BS=given_positions_BT,
                q_segment_ids_BT=segment_ids_BT, kv_segment_ids_BS=segment_ids_BT,
                kv_lengths_B=kv_lengths_B,
            )
            new_cache = None
        else:
            # Decoding: attend over everything cached so far plus the new positions.
            if segment_ids_BT is not None:
                raise ValueError("segment ids are not supported together with a KV cache")
            new_cache = cache.write(k_BTKH, v_BTKH)
            out_BTNH = new_cache.attend(self.core, q_BTNH, positions_BT, ctx=ctx)
        return self.project_out(out_BTNH), new_cache

    # Pieces of __call__ that variants with their own call (Longformer) reuse.
    @staticmethod
    def positions(B: int, T: int, positions_BT: jax.Array | None, cache: KVCache | None) -> jax.Array:
        """Given positions, or consecutive ones after what the cache already holds."""
        if positions_BT is not None:
            return positions_BT
        start_B = cache.lengths_B if cache is not None else jnp.zeros((B,), jnp.int32)
        return start_B[:, None] + default_positions(B, T)

    def project_qkv(self, x_BTD: jax.Array, positions_BT: jax.Array):
        """Q, K, V projections (2-D matmuls, see attention/linear.py), RoPE on Q and K."""
        q_BTNH = linear(x_BTD, self.wq_DNH[...].astype(self.dtype))  # BTD,DNH->BTNH
        k_BTKH = linear(x_BTD, self.wk_DKH[...].astype(self.dtype))  # BTD,DKH->BTKH
        v_BTKH = linear(x_BTD, self.wv_DKH[...].astype(self.dtype))  # BTD,DKH->BTKH
        q_BTNH = constrain(q_BTNH, (ax.BATCH, ax.LENGTH, ax.HEADS, ax.HEAD_DIM))
        if self.use_rope:
            q_BTNH = apply_rope(q_BTNH, positions_BT, self.rope_base)
            k_BTKH = apply_rope(k_BTKH, positions_BT, self.rope_base)
        return q_BTNH, k_BTKH, v_BTKH

    def project_out(self, out_BTNH: jax.Array) -> jax.Array:
        out_BTNH = constrain(out_BTNH, (ax.BATCH, ax.LENGTH, ax.HEADS, ax.HEAD_DIM))
        return linear(out_BTNH, self.wo_NHD[...].astype(self.dtype), n_in=2)  # BTNH,NHD->BTD
