"""Pre-norm Transformer block: x + attn(norm(x)), then x + ffn(norm(x)).

The attention and FFN classes come from their registries by config string;
the block has no per-variant branches.
"""
from __future__ import annotations

import jax
from flax import nnx

from attention.registry import get_attention
from models.ffn import get_ffn
from models.layers import RMSNorm
from nn.layer_aux import LayerAux
from sharding import axes as ax
from sharding.axes import constrain


class TransformerBlock(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs, ffn: str | None = None):
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = get_attention(cfg.attention)(cfg, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = get_ffn(ffn or cfg.ffn)(cfg, rngs=rngs)

    def __call__(self, x_BTD: jax.Array, *, cache=None, ctx=None, **mask) -> tuple[jax.Array, object, LayerAux]:
        y_BTD, cache = self.attn(self.attn_norm(x_BTD), cache=cache, ctx=ctx, **mask)
        x_BTD = constrain(x_BTD + y_BTD, (ax.BATCH, ax.LENGTH, ax.EMBED))
        y_BTD, aux = self.ffn(self.ffn_norm(x_BTD), ctx=ctx)
        x_BTD = constrain(x_BTD + y_BTD, (ax.BATCH, ax.LENGTH, ax.EMBED))
        return x_BTD, cache, aux
