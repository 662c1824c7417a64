"""Shape-suffix legend and logical activation constraints.

Arrays are named by their axes (`x_BTD`, `q_BTNH`) and einsums use the same
letters. The legend, in one place:

  B batch            T query length      S key length       D model width
  F MLP hidden       N query heads       K KV heads         H head dim
  V vocab            E experts           C expert capacity  M random features
  W window           P patches           G heads per KV head (N // K)
  X rows of a grouped-query matmul (G * T)
  Longformer blocks: U blocks, L queries per block, J keys per block,
  A global-token slots, R dilation rate

Parameters carry logical axis names as variable metadata (`logical_axes=`),
activations go through `constrain(x, names)`. Neither knows the mesh: the
train loop activates a rule table with `logical_rules(rules)` while it traces,
and `constrain` is a no-op outside it (unit tests, notebooks).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Mapping, Sequence

import jax
from jax.sharding import PartitionSpec as P

LEGEND = {
    "B": "batch", "T": "query length", "S": "key length", "D": "model width",
    "F": "MLP hidden", "N": "query heads", "K": "KV heads", "H": "head dim",
    "V": "vocab", "E": "experts", "C": "expert capacity", "M": "random features",
    "W": "window", "P": "patches", "G": "query heads per KV head", "X": "grouped-query rows (G * T)",
    "U": "blocks", "L": "queries per block", "J": "keys per block", "A": "global-token slots", "R": "dilation rate",
}

# Logical axis names used by parameters and activations.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
NORM = "norm"
EXPERT = "expert"
LAYERS = "layers"  # the stacked-layers axis of model.scan_layers=True; no preset shards it

_state = threading.local()


def current_rules() -> Mapping[str, object] | None:
    return getattr(_state, "rules", None)


@contextlib.contextmanager
def logical_rules(rules: Mapping[str, object] | None) -> Iterator[None]:
    """Activates a logical-name -> mesh-axis table for `constrain` while tracing."""
    previous = current_rules()
    _state.rules = rules
    try:
        yield
    finally:
        _state.rules = previous


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; identity when no rules are active."""
    rules = current_rules()
    if rules is None:
        return x
    spec: P = logical_to_spec(names, rules)
    return jax.lax.with_sharding_constraint(x, spec)


def logical_to_spec(names: Sequence[str | None] | None, rules: Mapping[str, Any]) -> P:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    if names is None:
        return P()
    used: set[str] = set()
    parts = []
    for name in names:
        target = rules.get(name) if name is not None else None
        targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        parts.append(None if not targets else (targets[0] if len(targets) == 1 else targets))
    return P(*parts)
