"""Decoder-only Transformer language model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nn.dtypes import dtype_of
from nn.linear import linear
from nn.softcap import softcap
from models.layers import Embed, RMSNorm
from models.stack import BlockStack, ffn_for_layer
from sharding import axes as ax
from sharding.axes import constrain


class DecoderLM(BlockStack, nnx.Module):
    """Token embedding -> n_layers pre-norm blocks (causal) -> RMSNorm -> logits.

    `__call__` returns (logits_BTV in float32, caches, aux) where `aux` is a
    list with one `nn.layer_aux.LayerAux` per layer (empty for dense FFNs).
    The blocks are `self.blocks` (one module per layer) or, with
    `model.scan_layers=True`, `self.layers` (stacked parameters run by a
    scan; models/stack.py). `model.final_logit_softcap` > 0 caps the logits
    at +-cap with cap * tanh(logits / cap) (Gemma 2).
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.dtype = dtype_of(cfg.dtype)
        self.tie_embeddings = bool(cfg.tie_embeddings)
        self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
        self.init_stack(cfg, rngs)
        self.final_logit_softcap = float(cfg.get("final_logit_softcap", 0.0) or 0.0)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if not self.tie_embeddings:
            self.head_DV = nnx.Param(
                jax.nn.initializers.normal(cfg.init_std)(rngs.params(), (cfg.d_model, cfg.vocab_size)),
                logical_axes=(ax.EMBED, ax.VOCAB),
            )

    def init_caches(self, batch: int, max_len: int):
        return [blk.attn.init_cache(batch, max_len) for blk in self.block_modules()]

    def __call__(self, tokens_BT: jax.Array, *, caches=None, positions_BT=None, segment_ids_BT=None, ctx=None):
        """`ctx` (attention.context.ForwardContext) carries train flag, step and RNG; None = evaluation."""
        x_BTD = constrain(self.embed(tokens_BT, self.dtype), (ax.BATCH, ax.LENGTH, ax.EMBED))
        x_BTD, new_caches, aux = self.run_stack(x_BTD, caches=caches, ctx=ctx, positions_BT=positions_BT,
                                                segment_ids_BT=segment_ids_BT)
        x_BTD = self.final_norm(x_BTD)
        if self.tie_embeddings:
            logits_BTV = self.embed.attend(x_BTD)
        else:
            logits_BTV = linear(x_BTD, self.head_DV[...].astype(self.dtype), preferred_element_type=jnp.float32)
        if self.final_logit_softcap:
            logits_BTV = softcap(logits_BTV, self.final_logit_softcap)
        logits_BTV = constrain(logits_BTV, (ax.BATCH, ax.LENGTH, ax.VOCAB))
        return logits_BTV, new_caches, aux


__all__ = ["DecoderLM", "ffn_for_layer"]
