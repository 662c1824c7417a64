"""Routers: which experts each token goes to, and with what weight.

All routing math is float32 whatever the compute dtype: the softmax over
experts and the top-k choice are sensitive to rounding (ST-MoE, Zoph et al.
2022, section 3.3 keeps the router in float32 for stability).

Two router types:
- token choice (Switch k=1, Fedus et al. 2021; GShard/Mixtral k=2): every
  token picks its top-k experts;
- expert choice (Zhou et al. 2022): every expert picks its top-C tokens of a
  group, so load is balanced by construction but a token may get 0..E experts.
  In a causal LM this peeks at later tokens of the group (an expert's choice
  depends on them); it is here for comparison, as in the paper.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NOISE_TYPES = ("none", "jitter", "gaussian")


def noise_scale(scale: float, step, anneal_steps: int) -> jax.Array:
    """Linear annealing of the noise scale to 0 over `anneal_steps` (0: constant)."""
    if anneal_steps <= 0 or step is None:
        return jnp.asarray(scale, jnp.float32)
    frac = jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / anneal_steps, 0.0, 1.0)
    return scale * frac


def router_logits(x_GSD: jax.Array, w_DE: jax.Array, *, noise: str = "none", scale=0.0, rng=None) -> jax.Array:
    """Router logits in float32, with optional exploration noise (training only).

    - "jitter": multiplies the router *input* by U(1 - eps, 1 + eps)
      (Switch Transformer, section 2.4 "input jitter");
    - "gaussian": adds N(0, sigma^2) to the logits (Shazeer et al. 2017,
      noisy top-k gating, without the learned noise scale).
    """
    x_GSD = x_GSD.astype(jnp.float32)
    if noise == "jitter" and rng is not None:
        x_GSD = x_GSD * jax.random.uniform(rng, x_GSD.shape, jnp.float32, 1.0 - scale, 1.0 + scale)
    logits_GSE = jnp.einsum("GSD,DE->GSE", x_GSD, w_DE.astype(jnp.float32))
    if noise == "gaussian" and rng is not None:
        logits_GSE = logits_GSE + scale * jax.random.normal(rng, logits_GSE.shape, jnp.float32)
    return logits_GSE


def top_k_route(probs_GSE: jax.Array, k: int, renormalize: bool = True) -> tuple[jax.Array, jax.Array]:
    """Token choice: (expert_GSK, gate_GSK), the k best experts and their combine weights.

    With `renormalize` the gates are the softmax renormalised over the chosen
    k (they sum to 1, as in Mixtral); without it they are the raw softmax
    probabilities (GShard, Switch with k=1).
    """
    gate_GSK, expert_GSK = jax.lax.top_k(probs_GSE, k)
    if renormalize:
        gate_GSK = gate_GSK / jnp.sum(gate_GSK, axis=-1, keepdims=True)
    return expert_GSK.astype(jnp.int32), gate_GSK


def expert_choice_route(probs_GSE: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Expert choice: (token_GEC, gate_GEC), each expert's top-`capacity` tokens of the group."""
    gate_GEC, token_GEC = jax.lax.top_k(jnp.swapaxes(probs_GSE, 1, 2), capacity)
    return token_GEC.astype(jnp.int32), gate_GEC
