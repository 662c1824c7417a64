"""Decoder-only Transformer language model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nn.dtypes import dtype_of
from nn.linear import linear
from models.block import TransformerBlock
from models.layers import Embed, RMSNorm
from sharding import axes as ax
from sharding.axes import constrain


class DecoderLM(nnx.Module):
    """Token embedding -> n_layers pre-norm blocks (causal) -> RMSNorm -> logits.

    `__call__` returns (logits_BTV in float32, caches, aux) where `aux` is a
    list with one `nn.layer_aux.LayerAux` per layer (empty for dense FFNs).
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.dtype = dtype_of(cfg.dtype)
        self.tie_embeddings = bool(cfg.tie_embeddings)
        self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
        self.blocks = nnx.List([TransformerBlock(cfg, rngs=rngs, ffn=ffn_for_layer(cfg, i)) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not self.tie_embeddings:
            self.head_DV = nnx.Param(
                jax.nn.initializers.normal(cfg.init_std)(rngs.params(), (cfg.d_model, cfg.vocab_size)),
                logical_axes=(ax.EMBED, ax.VOCAB),
            )

    def init_caches(self, batch: int, max_len: int):
        return [blk.attn.init_cache(batch, max_len) for blk in self.blocks]

    def __call__(self, tokens_BT: jax.Array, *, caches=None, positions_BT=None, segment_ids_BT=None, ctx=None):
        """`ctx` (attention.context.ForwardContext) carries train flag, step and RNG; None = evaluation."""
        x_BTD = constrain(self.embed(tokens_BT, self.dtype), (ax.BATCH, ax.LENGTH, ax.EMBED))
        new_caches, aux = [], []
        for i, blk in enumerate(self.blocks):
            x_BTD, c, a = blk(
                x_BTD, cache=None if caches is None else caches[i],
                positions_BT=positions_BT, segment_ids_BT=segment_ids_BT, ctx=ctx,
            )
            new_caches.append(c)
            aux.append(a)
        x_BTD = self.final_norm(x_BTD)
        if self.tie_embeddings:
            logits_BTV = self.embed.attend(x_BTD)
        else:
            logits_BTV = linear(x_BTD, self.head_DV[...].astype(self.dtype), preferred_element_type=jnp.float32)
        logits_BTV = constrain(logits_BTV, (ax.BATCH, ax.LENGTH, ax.VOCAB))
        return logits_BTV, (new_caches if caches is not None else None), aux


def ffn_for_layer(cfg, layer: int) -> str:
    """FFN type of one layer: `model.ffn`, except dense on layers skipped by `model.ffn_every`."""
    every = int(cfg.get("ffn_every", 1) or 1)
    return cfg.ffn if layer % every == every - 1 else "mlp"
