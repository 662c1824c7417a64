"""Rule presets: logical axis name -> mesh axis (or axes, or None).

- `dp`:     pure data parallel; every parameter replicated.
- `fsdp`:   parameters and optimizer state sharded over `fsdp` along the model
            width (ZeRO-3 style); the batch over `data` and `fsdp`.
- `tensor`: Megatron-style tensor parallel, heads and MLP hidden over `tensor`;
            the batch over `data` (and `fsdp` when the mesh has one).

Every preset puts MoE experts on the `expert` axis (expert parallelism,
`moe/parallel.py`) and also shards the batch over it.

No preset names the stacked `layers` axis of `model.scan_layers=True`
(models/stack.py), so it is never sharded: each device holds every layer's
slice of a parameter, and the scan reads one slice per step.

A rule may name a mesh axis the mesh lacks (or one of size 1): such names
are dropped, so one preset serves every mesh shape.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
from jax.sharding import Mesh, NamedSharding

from nn.errors import ConfigError
from sharding import axes as ax
from sharding.axes import logical_to_spec

# The expert axis doubles as a data axis outside the MoE layers (as in MaxText).
_BATCH_AXES = ("data", "fsdp", "expert")

RULE_PRESETS: dict[str, dict[str, Any]] = {
    "dp": {ax.BATCH: _BATCH_AXES, ax.EXPERT: "expert"},
    "fsdp": {ax.BATCH: _BATCH_AXES, ax.EMBED: "fsdp", ax.EXPERT: "expert"},
    "tensor": {
        ax.BATCH: _BATCH_AXES,
        ax.HEADS: "tensor",
        ax.KV_HEADS: "tensor",
        ax.MLP: "tensor",
        ax.VOCAB: "tensor",
        ax.EXPERT: "expert",
    },
}


def rules_from_config(preset: str, mesh: Mesh | None = None) -> dict[str, Any]:
    """The preset's table, restricted to axes of size > 1 in `mesh`."""
    if preset not in RULE_PRESETS:
        raise ConfigError(f"mesh.rules={preset!r} is not a known preset; choose one of {sorted(RULE_PRESETS)}")
    table = RULE_PRESETS[preset]
    if mesh is None:
        return dict(table)
    present = {name for name, size in mesh.shape.items() if size > 1}
    out: dict[str, Any] = {}
    for logical, target in table.items():
        targets = (target,) if isinstance(target, str) else tuple(target)
        kept = tuple(t for t in targets if t in present)
        if kept:
            out[logical] = kept[0] if len(kept) == 1 else kept
    return out


def logical_axes_of(variables: Any) -> Any:
    """Pure-dict tree of logical axis tuples, from an `nnx.State` of Variables."""
    from flax import nnx

    def names(v):
        return tuple(v.get_metadata().get("logical_axes", (None,) * v.ndim)) if isinstance(v, nnx.Variable) else None

    return nnx.to_pure_dict(jax.tree.map(names, variables, is_leaf=lambda v: isinstance(v, nnx.Variable)))


def tree_shardings(logical_tree: Any, shapes: Any, mesh: Mesh, rules: Mapping[str, Any]) -> Any:
    """NamedShardings for a tree of logical-axis tuples, checked against the shapes.

    Raises a one-line ValueError naming the parameter when a sharded dimension
    does not divide over its mesh axes: a silent fallback to replication would
    hide a memory blow-up at scale.
    """
    paths_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])

    def one(path, names):
        spec = logical_to_spec(names, rules)
        shape = paths_shapes[path].shape if hasattr(paths_shapes[path], "shape") else paths_shapes[path]
        for dim, part in zip(shape, spec):
            if part is None:
                continue
            size = 1
            for a in (part,) if isinstance(part, str) else part:
                size *= mesh.shape[a]
            if dim % size:
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path)} of shape {tuple(shape)}: dimension {dim} "
                    f"does not divide over mesh axes {part} of size {size}"
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, logical_tree, is_leaf=lambda x: isinstance(x, tuple))
