"""Per-layer-group norms of parameters, gradients and updates, computed inside the train step.

What a loss-spike investigation looks at: which layer's gradient jumped, and
whether an update was large against its weights (the update-to-weight ratio;
healthy AdamW runs sit near lr, a spike shows as a jump in one group).

Groups follow the parameter tree:
- `layer_<i>`: block i, from the unscanned layout `blocks.<i>.*` or from the
  scanned layout `layers.<j>.*` (models/stack.py: a leading axis of G scan
  steps, layer i = g * P + j with P the number of `layers.<j>` entries), so both
  layouts log the same names;
- anything else: its first path component (`embed`, `final_norm`, `head`, ...).
A prefix above the blocks is kept (CLIP: `image.layer_0`, `text.layer_0`; the
tower's other parameters are `image`, `text`).

Logged as `train/param_norm/<group>`, `train/grad_norm/<group>` (before
clipping, like `train/grad_norm`), `train/update_norm/<group>` (the update
the optimizer applied: after clipping, Adam, weight decay and the learning
rate) and `train/update_ratio/<group>` (update norm / parameter norm before
the update), plus the whole-model `train/param_norm` and `train/update_ratio`.
The cost is one sum of squares per array and per tree, a few reductions
beside the step's matmuls.
"""
from __future__ import annotations

from collections import defaultdict

import jax
import jax.numpy as jnp

BLOCKS, STACKED = "blocks", "layers"


def _keys(path) -> list:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
    return out


def _is_index(k) -> bool:
    return isinstance(k, int) or (isinstance(k, str) and k.isdigit())


def _period(tree) -> dict[tuple, int]:
    """{prefix: P} for each scanned stack `<prefix>.layers.<j>` (P: the number of distinct j)."""
    seen: dict[tuple, set] = defaultdict(set)
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = _keys(path)
        for i in range(len(keys) - 1):
            if keys[i] == STACKED and _is_index(keys[i + 1]):
                seen[tuple(keys[:i])].add(int(keys[i + 1]))
                break
    return {prefix: len(js) for prefix, js in seen.items()}


def _join(prefix, name: str) -> str:
    return ".".join([*map(str, prefix), name])


def group_sq_sums(tree, periods: dict[tuple, int] | None = None) -> dict[str, jax.Array]:
    """{group: sum of squares of its entries} (float32); `periods` from `_period` of the parameter tree."""
    periods = _period(tree) if periods is None else periods
    sums: dict[str, jax.Array] = {}

    def add(name, value):
        sums[name] = value if name not in sums else sums[name] + value

    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = _keys(path)
        x = jnp.asarray(x, jnp.float32)
        for i, k in enumerate(keys):
            if k == BLOCKS and i + 1 < len(keys) and _is_index(keys[i + 1]):
                add(_join(keys[:i], f"layer_{int(keys[i + 1])}"), jnp.sum(jnp.square(x)))
                break
            if k == STACKED and i + 1 < len(keys) and _is_index(keys[i + 1]) and tuple(keys[:i]) in periods:
                # [G, ...]: one sum per scan step g, which holds layer g * P + j.
                per_g = jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1)
                p, j = periods[tuple(keys[:i])], int(keys[i + 1])
                for g in range(x.shape[0]):
                    add(_join(keys[:i], f"layer_{g * p + j}"), per_g[g])
                break
        else:
            add(str(keys[0]), jnp.sum(jnp.square(x)))  # not in a block: its first path component
    return sums


def group_norms(params, grads, updates) -> dict[str, jax.Array]:
    """The `train/...` norm metrics of one step (see the module docstring)."""
    periods = _period(params)
    p2, g2, u2 = (group_sq_sums(t, periods) for t in (params, grads, updates))
    out: dict[str, jax.Array] = {}
    for name in sorted(p2):
        p, u = jnp.sqrt(p2[name]), jnp.sqrt(u2[name])
        out[f"train/param_norm/{name}"] = p
        out[f"train/grad_norm/{name}"] = jnp.sqrt(g2[name])
        out[f"train/update_norm/{name}"] = u
        out[f"train/update_ratio/{name}"] = u / jnp.maximum(p, 1e-12)
    p_all, u_all = jnp.sqrt(sum(p2.values())), jnp.sqrt(sum(u2.values()))
    out["train/param_norm"] = p_all
    out["train/update_ratio"] = u_all / jnp.maximum(p_all, 1e-12)
    return out
