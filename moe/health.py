"""Dead-expert tracking across steps: a window of per-layer expert loads in the train state.

The per-step health metrics come from the layer (moe/layer.py), which
declares this window as its carried statistics (models/variants.py). "Dead" needs
history: an expert is dead when it received less than 1/(10 E) of the
token-routes on average over the last `model.moe.dead_window` steps. The
window is a ring buffer [layers, N, E] carried in the train state (so a
resumed run continues it) and updated inside the jitted step from that
step's `moe/expert_fraction/e{i}/layer_{l}` metrics.

Collapse is defined up front, on one batch's load f (fractions of the
token-routes per expert; `load_health`), so the same definition serves the
training log and held-out evaluation (`eval/moe/...`, averaged over the
eval batches and the MoE layers):
- `moe/load_entropy`: H(f) / log E, 1 when balanced; exp(H) is the
  effective number of experts in use;
- `moe/starved_experts`: experts with less than DEAD_SHARE / E of this
  batch's routes (the one-batch counterpart of the windowed `dead_experts`
  below; held-out batches cannot carry a window);
- `moe/collapsed`: 1 when the router uses few of its experts, by either
  measure: H(f) / log E < COLLAPSE_ENTROPY (0.5: fewer than sqrt(E)
  effective experts, 4 of 16), or at least COLLAPSE_STARVED (half) of the
  experts starved. The second catches what entropy misses under top-k: with
  k=2 one expert in every token's top 2 and the rest spread over 7 experts
  still scores an entropy of 0.6, with 8 of 16 experts idle. Routing onto
  exactly k experts scores log k / log E (0.25 for k=2, E=16).
Averaged over held-out batches, `eval/moe/collapsed` is the fraction of
(batch, MoE layer) pairs that are collapsed; a run counts as collapsed when
it is at least 0.5.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from models.lm import ffn_for_layer

COLLAPSE_ENTROPY = 0.5   # collapsed: normalised load entropy below this ...
COLLAPSE_STARVED = 0.5   # ... or at least this fraction of the experts starved
DEAD_SHARE = 0.1         # dead / starved: less than DEAD_SHARE / E of the routes


def load_entropy(f_E: jax.Array) -> jax.Array:
    """H(f) / log E (natural logs; 1 for E = 1), with 0 log 0 = 0."""
    E = f_E.shape[-1]
    if E == 1:
        return jnp.ones(f_E.shape[:-1], jnp.float32)
    h = -jnp.sum(jnp.where(f_E > 0, f_E * jnp.log(jnp.where(f_E > 0, f_E, 1.0)), 0.0), axis=-1)
    return h / math.log(E)


def load_health(f_E: jax.Array) -> dict[str, jax.Array]:
    """The per-batch load statistics of one MoE layer (see the module docstring)."""
    E = f_E.shape[-1]
    entropy = load_entropy(f_E)
    starved = jnp.sum(f_E < DEAD_SHARE / E).astype(jnp.float32)
    collapsed = (entropy < COLLAPSE_ENTROPY) | (starved >= COLLAPSE_STARVED * E)
    return {
        "moe/max_fraction": jnp.max(f_E),
        "moe/load_entropy": entropy,
        "moe/collapsed": collapsed.astype(jnp.float32),
        "moe/starved_experts": starved,
    }


def moe_layer_indices(model_cfg) -> list[int]:
    return [i for i in range(int(model_cfg.n_layers)) if ffn_for_layer(model_cfg, i) == "moe"]


def init_load_history(model_cfg) -> dict:
    layers = moe_layer_indices(model_cfg)
    if not layers:
        return {}
    m = model_cfg.moe
    return {"load": jnp.zeros((len(layers), int(m.dead_window), int(m.num_experts)), jnp.float32),
            "seen": jnp.zeros((), jnp.int32)}


def update_load_history(history: dict, metrics: dict, model_cfg) -> tuple[dict, dict]:
    """(new history, {"moe/dead_experts": mean over layers, ".../layer_l": per layer})."""
    if not history:
        return history, {}
    layers = moe_layer_indices(model_cfg)
    _, window, E = history["load"].shape
    f_LE = jnp.stack([jnp.stack([metrics[f"moe/expert_fraction/e{i}/layer_{l}"] for i in range(E)])
                      for l in layers])
    slot = history["seen"] % window
    load = history["load"].at[:, slot].set(f_LE)
    seen = history["seen"] + 1
    mean_LE = jnp.sum(load, axis=1) / jnp.minimum(seen, window)  # unwritten slots are zero
    dead_L = jnp.sum(mean_LE < DEAD_SHARE / E, axis=-1).astype(jnp.float32)
    out = {"moe/dead_experts": jnp.mean(dead_L)}
    for j, l in enumerate(layers):
        out[f"moe/dead_experts/layer_{l}"] = dead_L[j]
    return {"load": load, "seen": seen}, out
