"""The MoE feed-forward layer, registered as `model.ffn = "moe"`.

Owns the parameters (router, expert weights with an `expert` logical axis,
optional shared expert) and wires the pure pieces together: router
(`moe.router`) -> auxiliary losses (`moe.losses`) -> dispatch, expert MLPs
and combine (`moe.dispatch`, or `moe.parallel` when experts are sharded) ->
health metrics. Which layers are MoE is `model.ffn_every` (1: all, 2: every
other layer), as for any FFN type.

Returns (y_BTD, aux), aux an `nn.layer_aux.LayerAux` with, under `moe/`:
losses, the weighted terms `aux_loss` (balance_weight * balance) and
`z_loss` (z_loss_weight * router_z) that the task adds to the objective;
metrics, their raw values `balance` and `router_z` and the health metrics
`max_fraction`, `load_entropy`, `collapsed`, `starved_experts` (moe/health.py),
`dropped_fraction`, `router_confidence`;
breakdown (training only), the load per expert `expert_fraction/e{i}`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from nn.dtypes import dtype_of
from nn.layer_aux import LayerAux
from moe import dispatch as dsp
from moe import health, losses, parallel, router
from moe.gmm import blocked_gmm
from models.ffn import register_ffn
from sharding import axes as ax
from sharding.axes import constrain

ROUTERS = ("token_choice", "expert_choice")
DISPATCH_MODES = ("capacity", "dropless")
GMM_IMPLS = ("blocked", "ragged_dot", "pallas")


def moe_dims(cfg) -> tuple[int, int, int, int]:
    """(E, k, F per expert, F of the shared expert block)."""
    m = cfg.moe
    F = int(m.d_ff or cfg.d_ff)
    return int(m.num_experts), int(m.top_k), F, int(m.num_shared_experts) * F


def _mlp_matrices(activation: str) -> int:
    return 3 if activation == "swiglu" else 2


def validate_moe_config(cfg) -> None:
    """Raises ValueError naming the first bad `model.moe` field (checked before compiling)."""
    m = cfg.moe

    def positive_int(field):
        v = m.get(field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"model.moe.{field}={v!r} must be a positive integer")

    positive_int("num_experts")
    positive_int("dead_window")
    k = m.top_k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"model.moe.top_k={k!r} must be an integer >= 1")
    if k > m.num_experts:
        raise ValueError(f"model.moe.top_k={k} exceeds model.moe.num_experts={m.num_experts}")
    for field, allowed in (("router", ROUTERS), ("dispatch", DISPATCH_MODES), ("noise", router.NOISE_TYPES),
                           ("balance_loss", tuple(losses.BALANCE_LOSSES)), ("gmm_impl", GMM_IMPLS),
                           ("balance_groups", losses.BALANCE_GROUPS)):
        if m.get(field) not in allowed:
            raise ValueError(f"model.moe.{field}={m.get(field)!r} must be one of {list(allowed)}")
    for field in ("capacity_factor", "eval_capacity_factor"):
        if not float(m.get(field)) > 0:
            raise ValueError(f"model.moe.{field}={m.get(field)!r} must be > 0")
    for field in ("balance_weight", "z_loss_weight", "noise_scale"):
        v = float(m.get(field))
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"model.moe.{field}={m.get(field)!r} must be a finite number >= 0")
    scale = m.get("router_init_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale and math.isfinite(scale)):
        # 0 would make every logit equal: top-k then breaks the ties towards the lowest indices.
        raise ValueError(f"model.moe.router_init_scale={scale!r} must be a finite number > 0")
    for field in ("d_ff", "num_shared_experts", "noise_anneal_steps"):
        v = m.get(field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"model.moe.{field}={v!r} must be an integer >= 0")
    if m.router == "expert_choice" and m.dispatch != "capacity":
        raise ValueError(f"model.moe.dispatch={m.dispatch!r}: expert-choice routing needs dispatch='capacity'")


@register_ffn("moe")
class MoEFFN(nnx.Module):
    """Top-k Mixture-of-Experts FFN (Shazeer et al. 2017; GShard; Switch; ST-MoE)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        m = cfg.moe
        D = cfg.d_model
        E, self.k, F, F_shared = moe_dims(cfg)
        self.num_experts = E
        self.router_type = m.router
        self.mode = m.dispatch
        self.renormalize = bool(m.renormalize)
        self.capacity_factor = (float(m.capacity_factor), float(m.eval_capacity_factor))
        self.balance_loss = m.balance_loss
        self.balance_groups = m.balance_groups
        self.weights = (float(m.balance_weight), float(m.z_loss_weight))
        self.noise = (m.noise, float(m.noise_scale), int(m.noise_anneal_steps))
        self.gmm_impl = m.gmm_impl
        self.activation = cfg.activation
        self.dtype = dtype_of(cfg.dtype)
        init = jax.nn.initializers.normal
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        # Router weights stay float32 (and are used in float32): see moe/router.py. Their scale sets how
        # confident (and how unequal) the initial routing is: model.moe.router_init_scale x init_std.
        router_std = cfg.init_std * float(m.router_init_scale)
        self.router_DE = nnx.Param(init(router_std)(rngs.params(), (D, E)), logical_axes=(ax.EMBED, None))
        in_axes, out_axes = (ax.EXPERT, ax.EMBED, ax.MLP), (ax.EXPERT, ax.MLP, ax.EMBED)
        self.w_in_EDF = nnx.Param(init(cfg.init_std)(rngs.params(), (E, D, F)), logical_axes=in_axes)
        if self.activation == "swiglu":
            self.w_gate_EDF = nnx.Param(init(cfg.init_std)(rngs.params(), (E, D, F)), logical_axes=in_axes)
        self.w_out_EFD = nnx.Param(init(out_std)(rngs.params(), (E, F, D)), logical_axes=out_axes)
        self.has_shared = F_shared > 0
        if self.has_shared:
            self.shared_in_DF = nnx.Param(init(cfg.init_std)(rngs.params(), (D, F_shared)), logical_axes=(ax.EMBED, ax.MLP))
            if self.activation == "swiglu":
                self.shared_gate_DF = nnx.Param(init(cfg.init_std)(rngs.params(), (D, F_shared)),
                                                logical_axes=(ax.EMBED, ax.MLP))
            self.shared_out_FD = nnx.Param(init(out_std)(rngs.params(), (F_shared, D)), logical_axes=(ax.MLP, ax.EMBED))

    # --- analytic counts (models/flops.py) ------------------------------------
    @staticmethod
    def param_count(cfg) -> int:
        E, _, F, F_shared = moe_dims(cfg)
        per = _mlp_matrices(cfg.activation) * cfg.d_model
        return cfg.d_model * E + E * per * F + per * F_shared

    @staticmethod
    def flops_per_token(cfg) -> float:
        """Active forward FLOPs per token: router + k experts + shared expert.

        Capacity mode computes C slots per expert (capacity_factor times the
        active work, padding included) and the one-hot dispatch/combine
        einsums; those are overheads of the implementation, measured in
        benchmarks/moe.py, not part of the model's FLOPs.
        """
        E, k, F, F_shared = moe_dims(cfg)
        per = _mlp_matrices(cfg.activation) * cfg.d_model
        return 2.0 * (cfg.d_model * E + k * per * F + per * F_shared)

    @staticmethod
    def validate_config(cfg) -> None:
        validate_moe_config(cfg)

    @staticmethod
    def validate_mesh(cfg, mesh_shape: dict) -> None:
        ep = mesh_shape.get("expert", 1)
        if cfg.moe.num_experts % ep:
            raise ValueError(f"model.moe.num_experts={cfg.moe.num_experts} is not divisible by the expert mesh "
                             f"axis size {ep} (mesh.shape.expert)")

    # --- statistics carried in the train state (models/variants.py) ----------
    @staticmethod
    def init_stats(cfg) -> dict:
        return health.init_load_history(cfg)

    @staticmethod
    def update_stats(stats: dict, metrics, cfg) -> tuple[dict, dict]:
        return health.update_load_history(stats, metrics, cfg)

    # --- forward --------------------------------------------------------------
    def _weights(self, w_in, w_gate, w_out) -> dict:
        """{"in", "gate" (SwiGLU only), "out"} in the compute dtype, as the dispatch functions take them."""
        w = {"in": w_in[...].astype(self.dtype), "out": w_out[...].astype(self.dtype)}
        if self.activation == "swiglu":
            w["gate"] = w_gate[...].astype(self.dtype)
        return w

    def _gmm(self):
        if self.gmm_impl == "pallas":
            from kernels.gmm import gmm  # noqa: PLC0415 (optional fast path)

            return gmm
        if self.gmm_impl == "blocked":
            return blocked_gmm
        return jax.lax.ragged_dot

    def __call__(self, x_BTD: jax.Array, ctx=None) -> tuple[jax.Array, LayerAux]:
        B, T, D = x_BTD.shape
        E, k = self.num_experts, self.k
        train = ctx is not None and ctx.train
        x_BTD = x_BTD.astype(self.dtype)

        # Router (float32), with exploration noise during training only.
        noise, scale, anneal = self.noise
        rng = ctx.rng if (train and noise != "none" and ctx.rng is not None) else None
        if rng is not None:
            rng = jax.random.fold_in(rng, 0x5EED)  # not the stream other layers draw from
        logits_BTE = router.router_logits(x_BTD, self.router_DE[...], noise=noise,
                                          scale=router.noise_scale(scale, ctx.step if train else None, anneal),
                                          rng=rng)
        probs_BTE = jax.nn.softmax(logits_BTE, axis=-1)
        factor = self.capacity_factor[0 if train else 1]
        axis = parallel.expert_mesh_axis()
        w = self._weights(self.w_in_EDF, getattr(self, "w_gate_EDF", None), self.w_out_EFD)

        # Dispatch, experts, combine. Groups are sequences: G = B, S = T.
        if self.router_type == "expert_choice":
            cap = dsp.capacity(T, k, E, factor)
            token_BEC, gate_BEC = router.expert_choice_route(probs_BTE, min(cap, T))
            dispatch_BTEC, combine_BTEC, kept = dsp.expert_choice_masks(token_BEC, gate_BEC, T)
            # f_i for the losses: the routes each expert took, as a [B, E*C] index array.
            expert_BTK = jnp.broadcast_to(jnp.arange(E, dtype=jnp.int32)[:, None], (E, token_BEC.shape[-1]))
            expert_BTK = jnp.broadcast_to(expert_BTK.reshape(1, 1, -1), (B, 1, expert_BTK.size))
        else:
            expert_BTK, gate_BTK = router.top_k_route(probs_BTE, k, self.renormalize)
            if self.mode == "capacity":
                cap = dsp.capacity(T, k, E, factor)
                dispatch_BTEC, combine_BTEC, kept = dsp.token_choice_masks(expert_BTK, gate_BTK, E, cap)
            else:
                kept = jnp.ones((), jnp.float32)

        if self.mode == "dropless" and self.router_type == "token_choice":
            x_XD, e_XK, g_XK = x_BTD.reshape(B * T, D), expert_BTK.reshape(B * T, k), gate_BTK.reshape(B * T, k)
            if axis is None:
                y_XD = dsp.dropless_moe(x_XD, e_XK, g_XK, w, self.activation, gmm=self._gmm())
            else:
                y_XD = parallel.dropless_moe_ep(x_XD, e_XK, g_XK, w, self.activation, axis, gmm=self._gmm())
            y_BTD = y_XD.reshape(B, T, D)
        elif axis is None:
            y_BTD = dsp.capacity_moe(x_BTD, dispatch_BTEC, combine_BTEC, w, self.activation)
        else:
            y_BTD = parallel.capacity_moe_ep(x_BTD, dispatch_BTEC, combine_BTEC, w, self.activation, axis)

        if self.has_shared:
            ws = self._weights(self.shared_in_DF, getattr(self, "shared_gate_DF", None), self.shared_out_FD)
            y_BTD = y_BTD + dsp.shared_ffn(x_BTD, ws, self.activation)
        y_BTD = constrain(y_BTD, (ax.BATCH, ax.LENGTH, ax.EMBED))
        return y_BTD, self._aux(logits_BTE, probs_BTE, expert_BTK, kept)

    def _aux(self, logits_BTE, probs_BTE, expert_BTK, kept) -> LayerAux:
        E = self.num_experts
        balance = losses.BALANCE_LOSSES[self.balance_loss](probs_BTE, expert_BTK, self.balance_groups)
        z = losses.router_z_loss(logits_BTE)
        f_E = losses.route_fractions(expert_BTK, E)
        w_balance, w_z = self.weights
        weighted = {
            "moe/aux_loss": w_balance * balance,
            "moe/z_loss": w_z * z,
        }
        metrics = {
            "moe/balance": balance,
            "moe/router_z": z,
            **health.load_health(f_E),
            "moe/dropped_fraction": 1.0 - kept,
            "moe/router_confidence": jnp.mean(jnp.max(probs_BTE, axis=-1)),
        }
        per_expert = {f"moe/expert_fraction/e{i}": f_E[i] for i in range(E)}
        return LayerAux(losses=weighted, metrics=metrics, breakdown=per_expert)
