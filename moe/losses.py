"""Router auxiliary losses (pure functions, float32).

Each returns the unweighted value; the layer multiplies by its configured
weight and reports both.

k > 1 convention for the load-balancing loss: f_i is the fraction of the
T * k token-routes that go to expert i (so sum_i f_i = 1 for any k). The
loss E * sum_i f_i P_i is then exactly 1 under a perfectly balanced router
for every k, so one default weight (0.01) means the same thing for Switch
(k=1) and top-2 routing, and values are comparable across k in the health
plots. (Counting routes per token instead, as some top-2 implementations do,
makes the balanced value k.)

Groups (`model.moe.balance_groups`): "batch" pools f and P over every token
of the batch, the Switch paper's formula read literally (one group); with
"sequence" each sequence is a group, the loss is computed per group and
averaged over groups, as flaxformer and MaxText do (their group is the
dispatch group, here a sequence). The per-group form also penalises
imbalance inside a sequence that averages out across the batch (sequence 1
all on expert 0, sequence 2 all on expert 1, E = 2, confident router): the
pooled loss of such a batch is about 1 (balanced), the per-sequence one
about 2. In general per-sequence = pooled + E sum_i cov_g(f_gi, P_gi), the
covariance over sequences of each expert's route share and mean
probability; it is positive when sequences prefer different experts, so the
pooled value is the lower one (by a few percent on random logits).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


BALANCE_GROUPS = ("batch", "sequence")


def route_fractions(expert_GSK: jax.Array, num_experts: int) -> jax.Array:
    """f_E: fraction of token-routes sent to each expert (before any capacity drop)."""
    counts_E = jnp.sum(jax.nn.one_hot(expert_GSK, num_experts, dtype=jnp.float32), axis=(0, 1, 2))
    return counts_E / expert_GSK.size


def _grouped(probs_GSE: jax.Array, expert_GSK: jax.Array, groups: str) -> tuple[jax.Array, jax.Array]:
    """(f_NE, P_NE) per balancing group: N = 1 for "batch", N = G (one per sequence) for "sequence"."""
    if groups not in BALANCE_GROUPS:
        raise ValueError(f"balance groups {groups!r} must be one of {list(BALANCE_GROUPS)}")
    E = probs_GSE.shape[-1]
    probs_GSE = probs_GSE.astype(jnp.float32)
    if groups == "batch":
        return route_fractions(expert_GSK, E)[None], jnp.mean(probs_GSE, axis=(0, 1))[None]
    counts_GE = jnp.sum(jax.nn.one_hot(expert_GSK, E, dtype=jnp.float32), axis=(1, 2))
    f_GE = counts_GE / (expert_GSK.shape[1] * expert_GSK.shape[2])
    return f_GE, jnp.mean(probs_GSE, axis=1)


def switch_balance_loss(probs_GSE: jax.Array, expert_GSK: jax.Array, groups: str = "batch") -> jax.Array:
    """E * sum_i f_i * P_i (Switch Transformer, Fedus et al. 2021, eq. 4-6), averaged over groups.

    f_i is not differentiable (an argmax count); the gradient flows through
    P_i, the mean router probability, and pushes probability away from
    over-used experts.
    """
    E = probs_GSE.shape[-1]
    f_NE, p_NE = _grouped(probs_GSE, expert_GSK, groups)
    return E * jnp.mean(jnp.sum(f_NE * p_NE, axis=-1))


def squared_balance_loss(probs_GSE: jax.Array, expert_GSK: jax.Array, groups: str = "batch") -> jax.Array:
    """sum_i (f_i - 1/E)^2 with a differentiable f, averaged over groups.

    The hard route fractions carry no gradient, so f here is the
    straight-through estimate f_hard + P - stop_gradient(P): its value is the
    route fraction, its gradient that of the mean router probability.
    """
    E = probs_GSE.shape[-1]
    f_NE, p_NE = _grouped(probs_GSE, expert_GSK, groups)
    f_NE = f_NE + p_NE - jax.lax.stop_gradient(p_NE)
    return jnp.mean(jnp.sum(jnp.square(f_NE - 1.0 / E), axis=-1))


def router_z_loss(logits_GSE: jax.Array) -> jax.Array:
    """Mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022, eq. 5).

    Keeps router logits small, where float32 softmax stays accurate.
    """
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_GSE.astype(jnp.float32), axis=-1)))


BALANCE_LOSSES = {"switch": switch_balance_loss, "squared": squared_balance_loss}
