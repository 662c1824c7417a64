"""Sending tokens to experts and combining their outputs (pure functions).

Two modes:
- capacity: each expert of a group takes at most C tokens, C = ceil(factor *
  S * k / E) for S tokens per group (GShard, Lepikhin et al. 2020; Switch).
  Dispatch and combine are one-hot tensors over [G, S, E, C] contracted with
  einsums: the readable reference, and the layout expert parallelism
  shards (an all-to-all over E, see `moe.parallel`). Routes over capacity
  are dropped in priority order, all top-1 choices of a group before any
  top-2 choice (as in GShard's second-expert rule); a token whose routes are
  all dropped contributes nothing, so the block's residual carries it.
- dropless: the T * k token-routes are sorted by expert and run through a
  grouped matmul (`jax.lax.ragged_dot`, or a Pallas kernel), no capacity
  and nothing dropped (MegaBlocks, Gale et al. 2022).

Legend: G groups (one sequence each), S tokens per group, E experts, C
capacity, K routes per token, A = X * K routes in flat order, X tokens.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from nn.linear import linear


def capacity(tokens_per_group: int, k: int, num_experts: int, factor: float) -> int:
    """C = ceil(factor * tokens * k / E), at least 1."""
    return max(1, math.ceil(factor * tokens_per_group * k / num_experts))


# --------------------------------------------------------------------------
# Capacity mode
# --------------------------------------------------------------------------

def token_choice_masks(expert_GSK: jax.Array, gate_GSK: jax.Array, num_experts: int, cap: int, dtype=jnp.float32):
    """(dispatch_GSEC, combine_GSEC, kept_fraction) for top-k token-choice routes.

    A route's slot in its expert's buffer is its rank among the routes to
    that expert, counted in priority order: all k=0 routes of the group in
    token order, then all k=1 routes, ...; routes ranked >= C are dropped.
    """
    G, S, K = expert_GSK.shape
    onehot_GKSE = jax.nn.one_hot(jnp.swapaxes(expert_GSK, 1, 2), num_experts, dtype=jnp.int32)
    flat_GAE = onehot_GKSE.reshape(G, K * S, num_experts)  # priority order: k-major
    rank_GAE = (jnp.cumsum(flat_GAE, axis=1) - 1) * flat_GAE
    rank_GKS = jnp.sum(rank_GAE, axis=-1).reshape(G, K, S)
    keep_GKS = (rank_GKS < cap).astype(dtype)
    slot_GKSC = jax.nn.one_hot(rank_GKS, cap, dtype=dtype) * keep_GKS[..., None]
    routed_GKSE = onehot_GKSE.astype(dtype)
    dispatch_GSEC = jnp.einsum("GKSE,GKSC->GSEC", routed_GKSE, slot_GKSC)
    gate_GKS = jnp.swapaxes(gate_GSK, 1, 2).astype(dtype)
    combine_GSEC = jnp.einsum("GKSE,GKSC->GSEC", routed_GKSE * gate_GKS[..., None], slot_GKSC)
    kept = jnp.mean(keep_GKS.astype(jnp.float32))
    return dispatch_GSEC, combine_GSEC, kept


def expert_choice_masks(token_GEC: jax.Array, gate_GEC: jax.Array, tokens_per_group: int, dtype=jnp.float32):
    """(dispatch_GSEC, combine_GSEC, covered_fraction) for expert-choice routes.

    `covered_fraction` is the fraction of tokens that at least one expert took.
    """
    dispatch_GECS = jax.nn.one_hot(token_GEC, tokens_per_group, dtype=dtype)
    dispatch_GSEC = jnp.transpose(dispatch_GECS, (0, 3, 1, 2))
    combine_GSEC = dispatch_GSEC * gate_GEC[:, None].astype(dtype)  # [G, 1, E, C] over S
    covered = jnp.mean((jnp.sum(dispatch_GSEC, axis=(2, 3)) > 0).astype(jnp.float32))
    return dispatch_GSEC, combine_GSEC, covered


def expert_ffn(x_ECD: jax.Array, w: dict, activation: str) -> jax.Array:
    """Each expert's MLP on its own rows: x[e] -> act(x[e] W_in[e]) W_out[e].

    Rows may carry leading axes after E (x_ECD or x_EGCD): they are flattened
    so each projection is one [E]-batched 3-D matmul (XLA's CPU backend is
    much slower on 4-D contractions, see attention/linear.py).
    """
    E, D = x_ECD.shape[0], x_ECD.shape[-1]
    x_ERD = x_ECD.reshape(E, -1, D)
    h_ERF = jnp.einsum("ERD,EDF->ERF", x_ERD, w["in"])
    if activation == "swiglu":
        h_ERF = jax.nn.silu(jnp.einsum("ERD,EDF->ERF", x_ERD, w["gate"])) * h_ERF
    else:
        h_ERF = jax.nn.gelu(h_ERF)
    y_ERD = jnp.einsum("ERF,EFD->ERD", h_ERF, w["out"])
    return y_ERD.reshape(x_ECD.shape)


def dispatch_to_experts(x_GSD: jax.Array, dispatch_GSEC: jax.Array) -> jax.Array:
    """x_EGCD: each expert's C slots per group (one [G]-batched matmul over the flattened E*C slots)."""
    G, S, E, C = dispatch_GSEC.shape
    x_GMD = jnp.einsum("GSM,GSD->GMD", dispatch_GSEC.reshape(G, S, E * C).astype(x_GSD.dtype), x_GSD)
    return jnp.swapaxes(x_GMD.reshape(G, E, C, -1), 0, 1)


def combine_from_experts(y_EGCD: jax.Array, combine_GSEC: jax.Array) -> jax.Array:
    """y_GSD: each token's gate-weighted sum over its expert slots."""
    E, G, C, D = y_EGCD.shape
    y_GMD = jnp.swapaxes(y_EGCD, 0, 1).reshape(G, E * C, D)
    return jnp.einsum("GSM,GMD->GSD", combine_GSEC.reshape(G, -1, E * C).astype(y_GMD.dtype), y_GMD)


def capacity_moe(x_GSD: jax.Array, dispatch_GSEC: jax.Array, combine_GSEC: jax.Array, w: dict,
                 activation: str) -> jax.Array:
    """Reference capacity-mode MoE: dispatch, run every expert on its C slots, combine."""
    y_EGCD = expert_ffn(dispatch_to_experts(x_GSD, dispatch_GSEC), w, activation)
    return combine_from_experts(y_EGCD, combine_GSEC)


# --------------------------------------------------------------------------
# Dropless mode
# --------------------------------------------------------------------------

GroupedMatmul = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def dropless_moe(x_XD: jax.Array, expert_XK: jax.Array, gate_XK: jax.Array, w: dict, activation: str,
                 *, expert_offset=0, gmm: GroupedMatmul = jax.lax.ragged_dot) -> jax.Array:
    """Dropless MoE over the experts in `w` (E_local of them, numbered from `expert_offset`).

    Routes to experts outside [offset, offset + E_local) are sorted to the
    end, outside every group: the grouped matmul leaves their rows zero.
    That is how one device of an expert-parallel group serves only its own
    experts (`moe.parallel`); with the full expert set every route is local.
    """
    X, K = expert_XK.shape
    E_local = w["in"].shape[0]
    local_A = expert_XK.reshape(-1) - expert_offset  # A = X * K routes, token-major
    valid_A = (local_A >= 0) & (local_A < E_local)
    key_A = jnp.where(valid_A, local_A, E_local)
    order_A = jnp.argsort(key_A, stable=True)
    token_A = order_A // K  # the token each sorted route came from
    group_sizes_E = jnp.bincount(key_A, length=E_local + 1)[:E_local].astype(jnp.int32)
    gate_A = jnp.where(valid_A, gate_XK.reshape(-1), 0.0)[order_A]

    x_AD = x_XD[token_A]
    h_AF = gmm(x_AD, w["in"], group_sizes_E)
    if activation == "swiglu":
        h_AF = jax.nn.silu(gmm(x_AD, w["gate"], group_sizes_E)) * h_AF
    else:
        h_AF = jax.nn.gelu(h_AF)
    y_AD = gmm(h_AF, w["out"], group_sizes_E) * gate_A[:, None].astype(x_XD.dtype)
    return jnp.zeros_like(x_XD).at[token_A].add(y_AD)


def shared_ffn(x_XD: jax.Array, w: dict, activation: str) -> jax.Array:
    """The always-on shared expert(s) (DeepSeekMoE, Dai et al. 2024): a plain MLP on every token."""
    h_XF = linear(x_XD, w["in"])
    if activation == "swiglu":
        h_XF = jax.nn.silu(linear(x_XD, w["gate"])) * h_XF
    else:
        h_XF = jax.nn.gelu(h_XF)
    return linear(h_XF, w["out"])
