"""Feed-forward layers by config string (`model.ffn`).

Every FFN returns `(y_BTD, aux)`, where `aux` is an `nn.layer_aux.LayerAux`
of auxiliary losses and metrics (empty for the MLP; the MoE layer fills it),
so the block treats all of them alike.
"""
from __future__ import annotations

import jax
from flax import nnx

from nn.dtypes import dtype_of
from nn.layer_aux import LayerAux
from nn.linear import linear
from nn.registry import Registry
from sharding import axes as ax
from sharding.axes import constrain

FFN_REGISTRY = Registry("FFN type", "model.ffn")
register_ffn = FFN_REGISTRY.register
get_ffn = FFN_REGISTRY.get


ACTIVATIONS = ("gelu", "swiglu")


@register_ffn("mlp")
class MLP(nnx.Module):
    """Two-layer MLP with GELU, or the gated SwiGLU variant (Shazeer 2020, eq. 6)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.d_ff
        self.activation = cfg.activation
        self.dtype = dtype_of(cfg.dtype)
        init = jax.nn.initializers.normal
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        self.wi_DF = nnx.Param(init(cfg.init_std)(rngs.params(), (D, F)), logical_axes=(ax.EMBED, ax.MLP))
        if self.activation == "swiglu":
            self.wg_DF = nnx.Param(init(cfg.init_std)(rngs.params(), (D, F)), logical_axes=(ax.EMBED, ax.MLP))
        self.wo_FD = nnx.Param(init(out_std)(rngs.params(), (F, D)), logical_axes=(ax.MLP, ax.EMBED))

    @staticmethod
    def param_count(cfg) -> int:
        return (3 if cfg.activation == "swiglu" else 2) * cfg.d_model * cfg.d_ff

    @staticmethod
    def flops_per_token(cfg) -> float:
        return 2.0 * MLP.param_count(cfg)

    def __call__(self, x_BTD: jax.Array, ctx=None) -> tuple[jax.Array, LayerAux]:
        x_BTD = x_BTD.astype(self.dtype)
        h_BTF = linear(x_BTD, self.wi_DF[...].astype(self.dtype))
        if self.activation == "swiglu":
            g_BTF = linear(x_BTD, self.wg_DF[...].astype(self.dtype))
            h_BTF = jax.nn.silu(g_BTF) * h_BTF
        else:
            h_BTF = jax.nn.gelu(h_BTF)
        h_BTF = constrain(h_BTF, (ax.BATCH, ax.LENGTH, ax.MLP))
        return linear(h_BTF, self.wo_FD[...].astype(self.dtype)), LayerAux.none()
