"""A trained run's parameters outside its training loop: inference and evaluation-only launches.

`restore_model(workdir)` rebuilds the model exactly as trained (from the
config stored with the checkpoint); `evaluate_checkpoint(config, workdir)`
evaluates a checkpoint without training, possibly on other data
(`--mode=eval`), writing `eval.jsonl` beside the run's own metrics, which it
never touches.
"""
from __future__ import annotations

import json

import jax
import ml_collections
from flax import nnx

from nn.errors import InputError
from trainer import loop
from trainer.checkpoint import Checkpointer, check_compatible
from trainer.paths import workdir_path


def _open(workdir: str) -> Checkpointer:
    if not (workdir_path(workdir) / "checkpoints").is_dir():
        raise InputError(f"--workdir={workdir!r} holds no checkpoints/ folder")
    return Checkpointer(workdir, keep=1, async_save=False)


def _restore_state(ckpt: Checkpointer, step: int, s) -> dict:
    with jax.set_mesh(s.mesh):
        try:
            return ckpt.restore(step, loop.abstract_state(s))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 (a damaged checkpoint: one line, not a tensorstore traceback)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise InputError(f"checkpoint at step {step} in {ckpt.directory} cannot be restored ({first}); "
                             f"pass an earlier step (available: {ckpt.all_steps()})") from None


def _step(ckpt: Checkpointer, step: int | None, workdir: str) -> int:
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.all_steps():
        raise InputError(f"--workdir={workdir!r} has no checkpoint at step {step} (available: {ckpt.all_steps()})")
    return step


def _meta(ckpt: Checkpointer, step: int) -> dict:
    try:
        meta = ckpt.read_meta(step)
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no config in its metadata")
        return meta
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"checkpoint at step {step} in {ckpt.directory} has unreadable metadata ({e}); "
                         f"pass an earlier step (available: {ckpt.all_steps()})") from None


def restore_model(workdir: str, step: int | None = None, devices=None):
    """(model, config, step) from `workdir`'s checkpoint at `step` (default: the latest), on one device
    unless `devices` says otherwise. Raises `InputError` (one line) when there is no such checkpoint."""
    ckpt = _open(workdir)
    try:
        step = _step(ckpt, step, workdir)
        config = ml_collections.ConfigDict(_meta(ckpt, step)["config"])
        s = loop.setup(config, jax.devices()[:1] if devices is None else devices)
        state = _restore_state(ckpt, step, s)
        return nnx.merge(s.graphdef, state["params"]), config, step
    finally:
        ckpt.close()


def evaluate_checkpoint(config, workdir: str, step: int | None = None, devices=None) -> dict:
    """Evaluates `workdir`'s checkpoint with `config`'s data and evaluation settings; no training.

    The model and task must be the checkpoint's (anything else in `data.*`,
    e.g. another `data.path`, may differ). Appends one row to
    `workdir/eval.jsonl`: the step, the data config and the metrics.
    """
    s = loop.setup(config, devices)
    ckpt = _open(workdir)
    try:
        step = _step(ckpt, step, workdir)
        check_compatible(_meta(ckpt, step)["config"], loop.config_to_dict(s.config), workdir,
                         fields=("task", "model"))
        state = _restore_state(ckpt, step, s)
    finally:
        ckpt.close()
    with jax.set_mesh(s.mesh):
        metrics = loop.evaluate(s, loop.jit_eval_step(s), state["params"])
    if jax.process_index() == 0:
        row = {"step": step, "data": loop.config_to_dict(s.config)["data"],
               **{f"eval/{k}": float(v) for k, v in metrics.items()}}
        path = workdir_path(workdir) / "eval.jsonl"
        # Appended by rewriting (object stores cannot append); one row per evaluation command.
        earlier = path.read_text(encoding="utf-8") if path.exists() else ""
        path.write_text(earlier + json.dumps(row) + "\n", encoding="utf-8")
    return {f"eval/{k}": float(v) for k, v in metrics.items()}
