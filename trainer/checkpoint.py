"""Orbax checkpoints of the whole train state, with the config beside them.

Each checkpoint holds `state` (parameters, optimizer state, step, RNG key
data; flattened to dotted names, so trees with integer keys round-trip) and
`meta` (the config, the data position and the abstract shapes). Restoring
builds abstract arrays with the *current* run's shardings, so a checkpoint
written on one mesh restores onto another without any flag (`mesh.*` is not
an identity field).

Crash safety. Orbax (0.12.8) writes step N into `N.orbax-checkpoint-tmp-<t>/`
and, once every process has written its shards and the metadata, renames it
to `N/` in one atomic step (on object stores without atomic rename it writes
`commit_success.txt` last instead). `CheckpointManager` lists only finalized
steps, and old checkpoints beyond `keep` are deleted only after the new one is
finalized, so a process killed mid-save (SIGKILL, a lost host) leaves the
previous checkpoint intact and the next launch restores it; the unfinished
temporary folder is removed when the next launch opens the manager.
`tests/test_fault_tolerance.py` kills a real process during an async save to
check exactly this.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from nn.errors import CheckpointMismatchError

# Config sections that define what a run is: a checkpoint written under
# different values cannot be continued. `train.*`, `optim.*`, `mesh.*` and
# `sample.*` may change between launches (longer runs, new mesh).
IDENTITY_FIELDS = ("task", "seed", "model", "data")
_DATA_FREE = ("eval_batches", "eval_batch_size")



def _name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    return {_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(template: Any, flat: dict[str, Any]) -> Any:
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    return jax.tree_util.tree_unflatten(treedef, [flat[_name(p)] for p, _ in paths])


def _identity(cfg_dict: dict) -> dict[str, Any]:
    out = {}
    for section in IDENTITY_FIELDS:
        value = cfg_dict.get(section)
        if isinstance(value, dict):
            for k, v in sorted(value.items()):
                if section == "data" and k in _DATA_FREE:
                    continue
                out[f"{section}.{k}"] = v
        else:
            out[section] = value
    return out


def check_compatible(saved_cfg: dict, current_cfg: dict, workdir: str) -> None:
    saved, current = _identity(saved_cfg), _identity(current_cfg)
    for field in sorted(set(saved) | set(current)):
        if saved.get(field) != current.get(field):
            raise CheckpointMismatchError(
                f"workdir {workdir!r} holds a checkpoint with {field}={saved.get(field)!r}, "
                f"but the config has {field}={current.get(field)!r}; use a new --workdir or the old config"
            )


class Checkpointer:
    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=True,  # leftovers of a save that a crash cut short
            ),
        )

    def latest_step(self) -> int | None:
        """The newest *finalized* checkpoint (temporary folders of unfinished saves are not steps)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        if not os.path.exists(path):
            restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(restored["meta"])
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(flatten(state)), meta=ocp.args.JsonSave(meta)),
        )

    def restore(self, step: int, abstract_state: Any) -> Any:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(flatten(abstract_state)))
        )
        return unflatten(abstract_state, restored["state"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
