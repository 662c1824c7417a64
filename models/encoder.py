"""Bidirectional Transformer encoder with a pooled classification head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nn.dtypes import dtype_of
from models.layers import Embed, RMSNorm
from models.stack import BlockStack
from sharding import axes as ax
from sharding.axes import constrain

POOLINGS = ("cls", "mean")


class EncoderClassifier(BlockStack, nnx.Module):
    """Embedding -> bidirectional blocks -> RMSNorm -> pool -> linear head.

    Padding is token-level: `segment_ids_BT` uses 0 for padding (and distinct
    ids for packed examples); `pooling="cls"` reads position 0, `"mean"`
    averages non-padding positions. `__call__` returns (logits_BC, aux), aux
    a list with one `nn.layer_aux.LayerAux` per layer.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        if cfg.causal:
            raise ValueError("model.causal=True: the encoder classifier is bidirectional; set model.causal=False")
        self.dtype = dtype_of(cfg.dtype)
        self.pooling = cfg.pooling
        self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
        self.init_stack(cfg, rngs)  # self.blocks, or self.layers with model.scan_layers (models/stack.py)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head_DC = nnx.Param(
            jax.nn.initializers.normal(cfg.init_std)(rngs.params(), (cfg.d_model, cfg.num_classes)),
            logical_axes=(ax.EMBED, None),
        )

    def __call__(self, tokens_BT: jax.Array, *, segment_ids_BT=None, positions_BT=None, ctx=None):
        x_BTD = constrain(self.embed(tokens_BT, self.dtype), (ax.BATCH, ax.LENGTH, ax.EMBED))
        x_BTD, _, aux = self.run_stack(x_BTD, ctx=ctx, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT)
        x_BTD = self.final_norm(x_BTD)
        if self.pooling == "cls":
            pooled_BD = x_BTD[:, 0]
        else:
            valid_BT = jnp.ones(tokens_BT.shape, bool) if segment_ids_BT is None else segment_ids_BT != 0
            w_BT = valid_BT.astype(jnp.float32)
            pooled_BD = jnp.einsum("BTD,BT->BD", x_BTD.astype(jnp.float32), w_BT) / jnp.maximum(
                w_BT.sum(-1, keepdims=True), 1.0
            )
        logits_BC = jnp.einsum("BD,DC->BC", pooled_BD.astype(self.dtype), self.head_DC[...].astype(self.dtype),
                               preferred_element_type=jnp.float32)
        return logits_BC, aux
