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

Damaged checkpoints. A finalized checkpoint can still be damaged afterwards
(a truncated array file, lost metadata, a partial copy between machines).
`restore_newest` then says so in one line, moves the damaged folder aside
as `checkpoints/<step>.damaged` (never deleting it) and falls back to the
newest checkpoint that restores, so a user never has to delete folders by
hand; a checkpoint of another config is still an error, not damage.
"""
from __future__ import annotations

import gc
import json
import sys
from typing import Any

import logging
from typing import Callable

import jax
import orbax.checkpoint as ocp

from nn.errors import CheckpointMismatchError
from trainer.paths import workdir_path

log = logging.getLogger("train")

# Config sections that define what a run is: a checkpoint written under
# different values cannot be continued. `train.*`, `optim.*`, `mesh.*` and
# `sample.*` may change between launches (longer runs, new mesh).
IDENTITY_FIELDS = ("task", "seed", "model", "data")
# Model fields a run may change between launches (rematerialisation changes memory, not numbers).
_FREE_FIELDS = ("model.remat",)
# Model fields added after checkpoints were written: a checkpoint without one was written with this value.
_ADDED_DEFAULTS = {"model.scan_layers": False, "model.qk_norm": False, "model.attn_logit_softcap": 0.0,
                   "model.final_logit_softcap": 0.0}
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


def _identity(cfg_dict: dict, fields=IDENTITY_FIELDS) -> dict[str, Any]:
    out = {}
    for section in fields:
        value = cfg_dict.get(section)
        if isinstance(value, dict):
            for k, v in sorted(value.items()):
                if section == "data" and k in _DATA_FREE:
                    continue
                out[f"{section}.{k}"] = v
        else:
            out[section] = value
    return out


def check_compatible(saved_cfg: dict, current_cfg: dict, workdir: str, fields=IDENTITY_FIELDS) -> None:
    """CheckpointMismatchError naming the first identity field (of `fields`' sections) that differs."""
    saved, current = _identity(saved_cfg, fields), _identity(current_cfg, fields)
    for field in sorted(set(saved) | set(current)):
        if field in _FREE_FIELDS:
            continue
        if saved.get(field, _ADDED_DEFAULTS.get(field)) != current.get(field, _ADDED_DEFAULTS.get(field)):
            if field == "model.scan_layers":
                layout = "scanned" if saved.get(field) else "unscanned"
                raise CheckpointMismatchError(
                    f"workdir {workdir!r} holds a checkpoint in the {layout} parameter layout "
                    f"(model.scan_layers={saved.get(field)!r}), but the config has model.scan_layers="
                    f"{current.get(field)!r}; keep the old value, or start a new --workdir with "
                    f"train.init_from={workdir!r}, which converts the parameters (models.stack.stack_params)")
            raise CheckpointMismatchError(
                f"workdir {workdir!r} holds a checkpoint with {field}={saved.get(field)!r}, "
                f"but the config has {field}={current.get(field)!r}; use a new --workdir or the old config"
            )


def _one_writer_per_array_in_one_process() -> None:
    """In a single process, save each replicated array from one device, not a slice from each replica.

    Orbax's replica-parallel saving (its default off GPU) has every replica of a replicated array
    write a slice of it: across hosts that spreads the writes, but within one process all replicas
    are on the same host, so it only adds one eager device slice per array and replica (8 fake CPU
    devices: about 0.6 s of CPU per save of a small model). The files written are the same.
    """
    global _ONE_WRITER
    if jax.process_count() == 1 and not _ONE_WRITER:
        absl_log = logging.getLogger("absl")  # orbax logs a warning for any override of a handler
        level = absl_log.level
        absl_log.setLevel(logging.ERROR)
        try:
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
        finally:
            absl_log.setLevel(level)
        _ONE_WRITER = True


_ONE_WRITER = False


def _collect_abandoned_reads() -> None:
    """Collect, quietly, the array reads that orbax abandons when one read of a restore fails.

    They stay behind as suspended coroutines; garbage-collected later (in whatever code runs then),
    each one prints an "Exception ignored in: <coroutine ...>" traceback about the closed event loop.
    The damage is already being reported in one line, so they are collected here with the
    unraisable-exception hook muted.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


class Checkpointer:
    def __init__(self, workdir: str, keep: int, async_save: bool = True):
        _one_writer_per_array_in_one_process()
        self.path = workdir_path(workdir) / "checkpoints"  # local (made absolute) or any epath, e.g. gs://
        self.directory = str(self.path)
        self.manager = ocp.CheckpointManager(
            self.path,
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
        path = self.path / str(step) / "meta" / "metadata"
        if not path.exists():
            restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(restored["meta"])
        return json.loads(path.read_text(encoding="utf-8"))

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

    def quarantine(self, step: int) -> str:
        """Renames checkpoint `step` to `<step>.damaged` (or `.damaged-<n>`) on process 0; returns the new path."""
        src = self.path / str(step)
        dst, n = self.path / f"{step}.damaged", 1
        while dst.exists():
            dst, n = self.path / f"{step}.damaged-{n}", n + 1
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        self.manager.reload()
        return str(dst)

    def restore_newest(self, abstract_state: Any, check_meta: Callable[[dict], None]) -> tuple[int | None, Any, dict]:
        """(step, state, meta) of the newest checkpoint that restores; (None, None, {}) when none does.

        `check_meta(meta)` may raise (e.g. CheckpointMismatchError): that is
        the user's input, not damage, and propagates. Any other failure to
        read a checkpoint moves it aside and tries the one before.
        """
        for step in reversed(self.all_steps()):
            try:
                meta = self.read_meta(step)
                if not isinstance(meta.get("config"), dict):
                    raise ValueError("its metadata holds no config")
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 (any read failure of a checkpoint is damage)
                self._report_damage(step, e)
                continue
            check_meta(meta)
            try:
                return step, self.restore(step, abstract_state), meta
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001
                self._report_damage(step, e)
        return None, None, {}

    def _report_damage(self, step: int, error: Exception) -> None:
        _collect_abandoned_reads()
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        moved = self.quarantine(step)
        log.warning("checkpoint at step %d cannot be restored (%s: %s); moved aside to %s, trying the one before",
                    step, type(error).__name__, first, moved)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
