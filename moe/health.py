"""Dead-expert tracking across steps: a window of per-layer expert loads in the train state.

The per-step health metrics come from the layer (moe/layer.py), which
declares this window as its carried statistics (models/variants.py). "Dead" needs
history: an expert is dead when it received less than 1/(10 E) of the
token-routes on average over the last `model.moe.dead_window` steps. The
window is a ring buffer [layers, N, E] carried in the train state (so a
resumed run continues it) and updated inside the jitted step from that
step's `moe/expert_fraction/e{i}/layer_{l}` metrics.
"""
from __future__ import annotations

import jax.numpy as jnp

from models.lm import ffn_for_layer


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
    dead_L = jnp.sum(mean_LE < 1.0 / (10 * E), axis=-1).astype(jnp.float32)
    out = {"moe/dead_experts": jnp.mean(dead_L)}
    for j, l in enumerate(layers):
        out[f"moe/dead_experts/layer_{l}"] = dead_L[j]
    return {"load": load, "seen": seen}, out
