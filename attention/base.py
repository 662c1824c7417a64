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
from jax.ad_checkpoint import checkpoint_name

from nn.linear import linear
from nn.norm import rms_norm
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
    """Q/K/V/O projections with logical axes; subclasses implement `core`.

    `model.qk_norm=True` adds QK-norm (Dehghani et al. 2023; OLMo 2): an
    RMSNorm over the head dimension of every query and key head, with one
    learned scale [H] for queries and one for keys, applied before RoPE (so
    KV caches hold normalised keys). `model.attn_logit_softcap` is read by
    the cores that compute logits (attention/dense.py).

    The core's output and the projected Q, K, V carry `checkpoint_name`s
    ("attention_out", "query_proj", "key_proj", "value_proj") that the remat
    policies of models/stack.py select by name.
    """

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
        self.qk_norm = bool(cfg.get("qk_norm", False))
        self.norm_eps = float(cfg.get("norm_eps", 1e-6))
        self.logit_softcap = float(cfg.get("attn_logit_softcap", 0.0) or 0.0)
        if self.qk_norm:
            self.q_norm_H = nnx.Param(jnp.ones((H,), jnp.float32), logical_axes=(ax.NORM,))
            self.k_norm_H = nnx.Param(jnp.ones((H,), jnp.float32), logical_axes=(ax.NORM,))

    @staticmethod
    def param_count(cfg) -> int:
        qk_norm = 2 * head_dim_of(cfg) if cfg.get("qk_norm", False) else 0
        return cfg.d_model * head_dim_of(cfg) * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + qk_norm

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
        q_BTNH, k_BTKH = self.normalize_qk(q_BTNH, k_BTKH)
        if self.use_rope:
            q_BTNH = apply_rope(q_BTNH, positions_BT, self.rope_base)
            k_BTKH = apply_rope(k_BTKH, positions_BT, self.rope_base)
        return (checkpoint_name(q_BTNH, "query_proj"), checkpoint_name(k_BTKH, "key_proj"),
                checkpoint_name(v_BTKH, "value_proj"))

    def normalize_qk(self, q_BTNH: jax.Array, k_BTKH: jax.Array):
        """QK-norm (model.qk_norm): RMSNorm over H of each query and key head; identity when off."""
        if not self.qk_norm:
            return q_BTNH, k_BTKH
        return (rms_norm(q_BTNH, self.q_norm_H[...], self.norm_eps),
                rms_norm(k_BTKH, self.k_norm_H[...], self.norm_eps))

    def project_out(self, out_BTNH: jax.Array) -> jax.Array:
        out_BTNH = constrain(out_BTNH, (ax.BATCH, ax.LENGTH, ax.HEADS, ax.HEAD_DIM))
        out_BTNH = checkpoint_name(out_BTNH, "attention_out")
        return linear(out_BTNH, self.wo_NHD[...].astype(self.dtype), n_in=2)  # BTNH,NHD->BTD
