"""Model config defaults and validation (one-line errors naming field and value)."""
from __future__ import annotations

import math

import ml_collections

from attention.registry import ATTENTION_REGISTRY
from models.ffn import ACTIVATIONS, FFN_REGISTRY
from nn.errors import ConfigError



def default_model_config() -> ml_collections.ConfigDict:
    """The model fields, plus one sub-dict per variant with settings of its own.

    Each attention variant declares its sub-dict beside its code, as a
    `default_config()` static method (attention/performer.py ->
    `model.performer.*`, attention/longformer.py -> `model.longformer.*`);
    they are gathered here from the attention registry. The MoE FFN's
    `model.moe.*` is spelled out below: the `moe` package sits above this
    floor and registers itself only when imported.
    """
    c = ml_collections.ConfigDict(dict(
        vocab_size=256,
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=4,
        head_dim=0,            # 0: d_model // n_heads
        d_ff=512,
        activation="gelu",     # gelu | swiglu
        attention="dense",     # key into attention.registry
        attention_impl="xla",  # attention core: xla | pallas (flash kernel; interpret mode on CPU) | cudnn (GPU) | auto (pallas on GPU/TPU)
        ffn="mlp",             # key into models.ffn registry
        ffn_every=1,           # FFN type on every k-th layer, "mlp" elsewhere
        causal=True,
        rope=True,
        rope_base=10000.0,
        tie_embeddings=True,
        dtype="float32",       # compute dtype; parameters stay float32
        norm_eps=1e-6,
        init_std=0.02,
        num_classes=0,         # classifier head width (encoder only)
        pooling="cls",         # encoder pooling: cls | mean
        # Depth and stability (models/stack.py, attention/base.py; docs/training.md)
        scan_layers=False,       # stack block parameters on a leading `layers` axis and run them with a scan
        remat="none",            # per-block rematerialisation policy: a key of models.stack.REMAT_POLICIES
        qk_norm=False,           # RMSNorm on queries and keys per head, before RoPE
        attn_logit_softcap=0.0,  # > 0: attention logits -> cap * tanh(logits / cap) (Gemma 2); 0: off
        final_logit_softcap=0.0, # > 0: the same on the output logits; 0: off
        # Mixture-of-Experts (ffn="moe"; see moe/layer.py)
        moe=ml_collections.ConfigDict(dict(
            num_experts=8,             # E
            top_k=2,                   # k routes per token (1: Switch, 2: GShard/Mixtral)
            router="token_choice",     # token_choice | expert_choice
            renormalize=True,          # gates: softmax renormalised over the chosen k
            dispatch="capacity",       # capacity (drops over C) | dropless (grouped matmul)
            capacity_factor=1.25,      # C = ceil(factor * tokens_per_group * k / E), training
            eval_capacity_factor=2.0,  # the same at evaluation
            balance_loss="switch",     # switch: E sum f_i P_i | squared: sum (f_i - 1/E)^2
            balance_groups="batch",    # batch: f, P pooled over the batch (Switch) | sequence: per sequence, averaged
            balance_weight=0.01,
            z_loss_weight=1e-3,        # router z-loss (ST-MoE)
            noise="none",              # none | jitter (input x U(1-s, 1+s)) | gaussian (logits + N(0, s^2))
            noise_scale=0.0,
            noise_anneal_steps=0,      # noise scale decays linearly to 0 over these steps (0: constant)
            router_init_scale=1.0,     # router weights ~ N(0, (scale * init_std)^2): larger, more unequal at init
            d_ff=0,                    # hidden width per expert (0: model.d_ff)
            num_shared_experts=0,      # always-on experts, fused into one MLP
            dead_window=100,           # dead expert: < 1/(10E) of the load over the last N steps
            gmm_impl="blocked",        # dropless grouped matmul: blocked (XLA, fast on CPU) | ragged_dot | pallas
        )),
    ))
    # Attention variants' own settings, model.<name>.* (read only when model.attention=<name>).
    for name in ATTENTION_REGISTRY:
        defaults = getattr(ATTENTION_REGISTRY[name], "default_config", None)
        if defaults is not None:
            c[name] = ml_collections.ConfigDict(defaults())
    return c


def _positive_int(cfg, field: str) -> int:
    value = cfg.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"model.{field}={value!r} must be a positive integer")
    return value


def validate_model_config(cfg) -> None:
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
        _positive_int(cfg, field)
    for registry, name in ((ATTENTION_REGISTRY, cfg.attention), (FFN_REGISTRY, cfg.ffn)):
        try:
            registry.get(name)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation={cfg.activation!r} must be one of {list(ACTIVATIONS)}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype={cfg.dtype!r} must be 'float32' or 'bfloat16'")
    if not cfg.head_dim and cfg.d_model % cfg.n_heads:
        raise ConfigError(
            f"model.n_heads={cfg.n_heads} does not divide model.d_model={cfg.d_model} (set model.head_dim to decouple them)"
        )
    if cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError(f"model.n_kv_heads={cfg.n_kv_heads} does not divide model.n_heads={cfg.n_heads}")
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    if cfg.rope and head_dim % 2:
        raise ConfigError(f"model.head_dim={head_dim} must be even when model.rope=True")
    try:
        ATTENTION_REGISTRY[cfg.attention].validate_config(cfg)
        for ffn in {cfg.ffn, "mlp"}:
            validate_ffn = getattr(FFN_REGISTRY[ffn], "validate_config", None)
            if validate_ffn is not None:
                validate_ffn(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    every = cfg.get("ffn_every", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"model.ffn_every={every!r} must be a positive integer")
    _validate_depth_and_stability(cfg)
    from attention.dense import DENSE_IMPLS

    if cfg.attention_impl not in DENSE_IMPLS:
        raise ConfigError(f"model.attention_impl={cfg.attention_impl!r} must be one of {sorted(DENSE_IMPLS)}")
    if cfg.attention_impl == "pallas" and not getattr(ATTENTION_REGISTRY[cfg.attention], "supports_pallas", False):
        # "auto" quietly means XLA for such variants; an explicit "pallas" that would do nothing is an error.
        raise ConfigError(f"model.attention_impl='pallas' has no kernel for model.attention={cfg.attention!r} "
                          "(use 'xla' or 'auto')")
    if cfg.attention_impl == "cudnn":
        import jax

        if not getattr(ATTENTION_REGISTRY[cfg.attention], "supports_cudnn", False):
            raise ConfigError(f"model.attention_impl='cudnn' is for dense attention, not model.attention="
                              f"{cfg.attention!r} (use 'xla', 'pallas' or 'auto')")
        if jax.default_backend() != "gpu":
            raise ConfigError(f"model.attention_impl='cudnn' needs an NVIDIA GPU (this backend is "
                              f"{jax.default_backend()!r}); use 'xla', 'pallas' or 'auto'")


def _validate_depth_and_stability(cfg) -> None:
    """`model.scan_layers`, `remat`, `qk_norm` and the soft-caps (one-line ConfigErrors)."""
    from models.stack import REMAT_POLICIES, scan_period  # noqa: PLC0415 (models.stack imports the layers)

    for field in ("scan_layers", "qk_norm"):
        if not isinstance(cfg.get(field, False), bool):
            raise ConfigError(f"model.{field}={cfg.get(field)!r} must be True or False")
    remat = cfg.get("remat", "none")
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"model.remat={remat!r} must be one of {list(REMAT_POLICIES)}")
    if cfg.get("scan_layers", False) and cfg.n_layers % scan_period(cfg):
        raise ConfigError(f"model.n_layers={cfg.n_layers} must be a multiple of model.ffn_every={scan_period(cfg)} "
                          "when model.scan_layers=True (the scan runs groups of ffn_every layers)")
    for field in ("attn_logit_softcap", "final_logit_softcap"):
        v = cfg.get(field, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"model.{field}={v!r} must be a finite number >= 0 (0: off)")
    if cfg.get("attn_logit_softcap", 0.0):
        if cfg.attention != "dense":
            raise ConfigError(f"model.attn_logit_softcap={cfg.attn_logit_softcap!r} is supported with "
                              f"model.attention='dense' only, not {cfg.attention!r}")
        if cfg.attention_impl in ("pallas", "cudnn"):
            raise ConfigError(f"model.attn_logit_softcap={cfg.attn_logit_softcap!r} is not supported by "
                              f"model.attention_impl={cfg.attention_impl!r}: use 'xla' (or 'auto', which then runs XLA)")
