"""CLIP towers (Radford et al. 2021): a ViT image encoder, a Transformer text encoder,
linear projections to a joint width Z, L2 normalisation and a learnable logit scale.

Both towers are stacks of the shared `models.block.TransformerBlock`, so any
attention type in `attention.registry` (and any FFN type) works in either
tower by config string. Config layout (see experiments/configs/clip_shapes.py):
`config.model` is the text tower (a full model config, the one train.py
validates), `config.vision` the image tower (a model config plus
`image_size`, `patch_size`, `channels`, `pos_emb`, `pooling`), and
`config.clip` the joint part (projection widths, text pooling, loss,
logit-scale init and clamp).

Shape letters beyond the legend in sharding/axes.py: I image side in pixels,
Y image channels, Q values per patch (patch^2 * channels), Z joint embedding
width.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from nn.dtypes import dtype_of
from attention.registry import get_attention
from models.ffn import get_ffn
from models.layers import Embed, RMSNorm
from models.stack import BlockStack, ffn_for_layer
from sharding import axes as ax
from sharding.axes import constrain

POS_EMBS = ("learned", "sincos")
IMAGE_POOLINGS = ("cls", "mean")
TEXT_POOLINGS = ("eos", "cls")
LOSSES = ("softmax", "sigmoid")


def fixed_temperature(clip_cfg) -> float:
    """`clip.fixed_temperature`: T > 0 holds the logit scale at 1/T (never trained); 0 learns it."""
    return float(clip_cfg.get("fixed_temperature", 0.0) or 0.0)


def default_logit_init(clip_cfg) -> tuple[float, float]:
    """(scale, bias) at init: 1/0.07 for softmax (CLIP); 10 and -10 for sigmoid (SigLIP, Zhai et al. 2023);
    1/T with a fixed temperature T."""
    T = fixed_temperature(clip_cfg)
    scale = 1.0 / T if T else float(clip_cfg.logit_scale_init) or (1 / 0.07 if clip_cfg.loss == "softmax" else 10.0)
    return scale, float(clip_cfg.logit_bias_init)


def sincos_2d(grid: int, dim: int) -> jax.Array:
    """Fixed 2-D sine-cosine position embeddings [grid*grid, dim] (as in MAE / big_vision's ViT):
    a quarter of the channels each for sin(y w), cos(y w), sin(x w), cos(x w), w = 10000^(-k/(dim/4))."""
    y_P, x_P = [a.reshape(-1) for a in jnp.meshgrid(jnp.arange(grid), jnp.arange(grid), indexing="ij")]
    omega = 1.0 / 10000.0 ** (jnp.arange(dim // 4) / (dim // 4))
    y, x = y_P[:, None] * omega[None], x_P[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(y), jnp.cos(y), jnp.sin(x), jnp.cos(x)], axis=1).astype(jnp.float32)


def patchify(images_BIIY: jax.Array, patch: int) -> jax.Array:
    """[B, I, I, Y] -> [B, P, Q]: non-overlapping patch x patch tiles in row-major order."""
    B, I, _, Y = images_BIIY.shape
    g = I // patch
    x = images_BIIY.reshape(B, g, patch, g, patch, Y)   # [B, gy, py, gx, px, Y]
    x = x.transpose(0, 1, 3, 2, 4, 5)                   # [B, gy, gx, py, px, Y]
    return x.reshape(B, g * g, patch * patch * Y)       # [B, P, Q]


def _pool_eos(x_BTD: jax.Array, segment_ids_BT: jax.Array) -> jax.Array:
    """The hidden state at each row's last real token (the EOS the tokenizer always keeps)."""
    last_B = jnp.sum((segment_ids_BT != 0).astype(jnp.int32), axis=1) - 1
    return jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)[:, 0]


class VisionTower(BlockStack, nnx.Module):
    """ViT (Dosovitskiy et al. 2021): patch embedding + position embedding -> blocks -> norm -> pool."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.dtype = dtype_of(cfg.dtype)
        self.patch, self.pooling, self.pos_emb = cfg.patch_size, cfg.pooling, cfg.pos_emb
        self.grid = cfg.image_size // cfg.patch_size
        D, Q = cfg.d_model, cfg.patch_size ** 2 * cfg.channels
        init = jax.nn.initializers.normal
        # Fan-in scaled: the patch projection sees Q raw pixel values.
        self.patch_QD = nnx.Param(init(1.0 / math.sqrt(Q))(rngs.params(), (Q, D)), logical_axes=(None, ax.EMBED))
        self.patch_bias_D = nnx.Param(jnp.zeros((D,), jnp.float32), logical_axes=(ax.EMBED,))
        n_pos = self.grid ** 2 + (cfg.pooling == "cls")
        if cfg.pos_emb == "learned":
            self.pos_PD = nnx.Param(init(cfg.init_std)(rngs.params(), (n_pos, D)), logical_axes=(None, ax.EMBED))
        if cfg.pooling == "cls":
            self.cls_D = nnx.Param(init(cfg.init_std)(rngs.params(), (D,)), logical_axes=(ax.EMBED,))
        self.init_stack(cfg, rngs)  # self.blocks, or self.layers with model.scan_layers (models/stack.py)
        self.final_norm = RMSNorm(D, cfg.norm_eps)

    def __call__(self, images_BIIY: jax.Array, *, ctx=None) -> tuple[jax.Array, list]:
        patches_BPQ = patchify(images_BIIY.astype(self.dtype), self.patch)
        x_BPD = jnp.einsum("BPQ,QD->BPD", patches_BPQ, self.patch_QD[...].astype(self.dtype)) + self.patch_bias_D[...]
        B, _, D = x_BPD.shape
        if self.pooling == "cls":
            x_BPD = jnp.concatenate([jnp.broadcast_to(self.cls_D[...].astype(x_BPD.dtype), (B, 1, D)), x_BPD], axis=1)
        if self.pos_emb == "learned":
            pos_PD = self.pos_PD[...]
        else:
            pos_PD = sincos_2d(self.grid, D)
            if self.pooling == "cls":  # the CLS token has no place on the grid: position zero
                pos_PD = jnp.concatenate([jnp.zeros((1, D), jnp.float32), pos_PD], axis=0)
        x_BPD = constrain((x_BPD + pos_PD[None]).astype(self.dtype), (ax.BATCH, ax.LENGTH, ax.EMBED))
        x_BPD, _, aux = self.run_stack(x_BPD, ctx=ctx)
        x_BPD = self.final_norm(x_BPD)
        pooled_BD = x_BPD[:, 0] if self.pooling == "cls" else jnp.mean(x_BPD.astype(jnp.float32), axis=1)
        return pooled_BD, aux


class TextTower(BlockStack, nnx.Module):
    """Token embedding -> blocks (causal or bidirectional) -> norm -> EOS or CLS (=BOS) pooling."""

    def __init__(self, cfg, pooling: str, *, rngs: nnx.Rngs):
        self.dtype = dtype_of(cfg.dtype)
        self.pooling = pooling
        self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
        self.init_stack(cfg, rngs)  # self.blocks, or self.layers with model.scan_layers (models/stack.py)
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def __call__(self, tokens_BT: jax.Array, segment_ids_BT: jax.Array, *, ctx=None) -> tuple[jax.Array, list]:
        x_BTD = constrain(self.embed(tokens_BT, self.dtype), (ax.BATCH, ax.LENGTH, ax.EMBED))
        x_BTD, _, aux = self.run_stack(x_BTD, segment_ids_BT=segment_ids_BT, ctx=ctx)
        x_BTD = self.final_norm(x_BTD)
        pooled_BD = x_BTD[:, 0] if self.pooling == "cls" else _pool_eos(x_BTD, segment_ids_BT)
        return pooled_BD, aux


def l2_normalize(x_BZ: jax.Array, eps: float = 1e-6) -> jax.Array:
    x_BZ = x_BZ.astype(jnp.float32)
    return x_BZ * jax.lax.rsqrt(jnp.sum(x_BZ * x_BZ, axis=-1, keepdims=True) + eps)


class CLIPModel(nnx.Module):
    """Both towers, the projections W_i [D_img, Z] and W_t [D_txt, Z], and the logit scale t.

    The logit scale is stored as its log t (s = exp t), initialised to ln(1/0.07)
    for the softmax loss as in CLIP; `clamp_logit_scale` keeps t <= ln(max) after
    every optimizer update (open_clip clamps the same parameter to ln 100 after
    each step; CLIP's paper: "clipped to prevent scaling the logits by more than 100").
    The sigmoid loss adds a learnable bias b (SigLIP). With `clip.fixed_temperature` = T > 0 the
    scale is held at 1/T: `scale()` stops its gradient, so the optimizer never moves it (a zero
    gradient gives a zero Adam update, and scalars are not weight-decayed).
    """

    def __init__(self, config, *, rngs: nnx.Rngs):
        v, t, c = config.vision, config.model, config.clip
        self.image = VisionTower(v, rngs=rngs)
        self.text = TextTower(t, c.text_pooling, rngs=rngs)
        init = jax.nn.initializers.normal
        Z = int(c.image_proj_dim)
        self.image_proj_DZ = nnx.Param(init(v.d_model ** -0.5)(rngs.params(), (v.d_model, Z)), logical_axes=(ax.EMBED, None))
        self.text_proj_DZ = nnx.Param(init(t.d_model ** -0.5)(rngs.params(), (t.d_model, Z)), logical_axes=(ax.EMBED, None))
        scale, bias = default_logit_init(c)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(scale), jnp.float32), logical_axes=())
        self.learn_logit_scale = not fixed_temperature(c)
        if c.loss == "sigmoid":
            self.logit_bias = nnx.Param(jnp.asarray(bias, jnp.float32), logical_axes=())

    def scale(self) -> jax.Array:
        """t (the log of the logit scale) as the losses take it: a constant with a fixed temperature."""
        t = self.logit_scale[...]
        return t if self.learn_logit_scale else jax.lax.stop_gradient(t)

    def encode_image(self, images_BIIY, *, ctx=None) -> tuple[jax.Array, list]:
        pooled_BD, aux = self.image(images_BIIY, ctx=ctx)
        return l2_normalize(pooled_BD.astype(jnp.float32) @ self.image_proj_DZ[...]), aux

    def encode_text(self, tokens_BT, segment_ids_BT, *, ctx=None) -> tuple[jax.Array, list]:
        pooled_BD, aux = self.text(tokens_BT, segment_ids_BT, ctx=ctx)
        return l2_normalize(pooled_BD.astype(jnp.float32) @ self.text_proj_DZ[...]), aux

    def __call__(self, images_BIIY, tokens_BT, segment_ids_BT, *, ctx=None):
        """(unit image embeddings [B, Z], unit text embeddings [B, Z], one `LayerAux` per layer: image, then text)."""
        img_BZ, aux_i = self.encode_image(images_BIIY, ctx=ctx)
        txt_BZ, aux_t = self.encode_text(tokens_BT, segment_ids_BT, ctx=ctx)
        return img_BZ, txt_BZ, aux_i + aux_t


def clamp_logit_scale(params: dict, max_scale: float) -> dict:
    """Pure-dict params with t = min(t, ln max_scale) (open_clip's clamp after every update)."""
    out = dict(params)
    out["logit_scale"] = jnp.minimum(params["logit_scale"], math.log(max_scale))
    return out


# --------------------------------------------------------------------------
# Analytic counts (conventions of models/flops.py: 2mkn per matmul, train = 3x forward)
# --------------------------------------------------------------------------

def _blocks_params(cfg) -> int:
    attn = get_attention(cfg.attention).param_count(cfg)
    return sum(attn + 2 * cfg.d_model + get_ffn(ffn_for_layer(cfg, i)).param_count(cfg) for i in range(cfg.n_layers))


def _blocks_flops_per_token(cfg, seq_len: int) -> float:
    attn_cls = get_attention(cfg.attention)
    per_layer = 2 * attn_cls.param_count(cfg) + attn_cls.core_flops_per_token(cfg, seq_len)
    return float(sum(per_layer + get_ffn(ffn_for_layer(cfg, i)).flops_per_token(cfg) for i in range(cfg.n_layers)))


def vision_tokens(v) -> int:
    return (v.image_size // v.patch_size) ** 2 + (v.pooling == "cls")


def clip_param_count(config) -> int:
    v, t, c = config.vision, config.model, config.clip
    Q, Z = v.patch_size ** 2 * v.channels, int(c.image_proj_dim)
    n_img = Q * v.d_model + v.d_model + _blocks_params(v) + v.d_model + v.d_model * Z
    n_img += vision_tokens(v) * v.d_model if v.pos_emb == "learned" else 0
    n_img += v.d_model if v.pooling == "cls" else 0
    n_txt = t.vocab_size * t.d_model + _blocks_params(t) + t.d_model + t.d_model * Z
    return n_img + n_txt + 1 + (c.loss == "sigmoid")


def clip_train_flops_per_example(config, text_len: int, micro_batch: int) -> float:
    """Training FLOPs per image-text pair: both towers, projections, and the B x B similarity
    matrix (2 B Z per pair: each pair's row of it; the sharded loss does no extra matmul work).

    `text_len` is the caption length L and `micro_batch` the B of one loss evaluation (the
    negatives); both come from the task's data and optimizer settings, which the model never reads.
    """
    v, t, c = config.vision, config.model, config.clip
    Q, Z = v.patch_size ** 2 * v.channels, int(c.image_proj_dim)
    P, L = vision_tokens(v), int(text_len)
    img = 2 * (P - (v.pooling == "cls")) * Q * v.d_model + P * _blocks_flops_per_token(v, P) + 2 * v.d_model * Z
    txt = L * _blocks_flops_per_token(t, L) + 2 * t.d_model * Z
    sim = 2 * int(micro_batch) * Z
    return 3.0 * (img + txt + sim)
