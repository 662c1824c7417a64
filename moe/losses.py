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
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def route_fractions(expert_GSK: jax.Array, num_experts: int) -> jax.Array:
    """f_E: fraction of token-routes sent to each expert (before any capacity drop)."""
    counts_E = jnp.sum(jax.nn.one_hot(expert_GSK, num_experts, dtype=jnp.float32), axis=(0, 1, 2))
    return counts_E / expert_GSK.size


def switch_balance_loss(probs_GSE: jax.Array, expert_GSK: jax.Array) -> jax.Array:
    """E * sum_i f_i * P_i (Switch Transformer, Fedus et al. 2021, eq. 4-6).

    f_i is not differentiable (an argmax count); the gradient flows through
    P_i, the mean router probability, and pushes probability away from
    over-used experts.
    """
    E = probs_GSE.shape[-1]
    f_E = route_fractions(expert_GSK, E)
    p_E = jnp.mean(probs_GSE.astype(jnp.float32), axis=(0, 1))
    return E * jnp.sum(f_E * p_E)


def squared_balance_loss(probs_GSE: jax.Array, expert_GSK: jax.Array) -> jax.Array:
    """sum_i (f_i - 1/E)^2 with a differentiable f.

    The hard route fractions carry no gradient, so f here is the
    straight-through estimate f_hard + P - stop_gradient(P): its value is the
    route fraction, its gradient that of the mean router probability.
    """
    E = probs_GSE.shape[-1]
    p_E = jnp.mean(probs_GSE.astype(jnp.float32), axis=(0, 1))
    f_E = route_fractions(expert_GSK, E) + p_E - jax.lax.stop_gradient(p_E)
    return jnp.sum(jnp.square(f_E - 1.0 / E))


def router_z_loss(logits_GSE: jax.Array) -> jax.Array:
    """Mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022, eq. 5).

    Keeps router logits small, where float32 softmax stays accurate.
    """
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_GSE.astype(jnp.float32), axis=-1)))


BALANCE_LOSSES = {"switch": switch_balance_loss, "squared": squared_balance_loss}
