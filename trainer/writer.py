"""Metrics to `workdir/metrics.jsonl`, TensorBoard and (optionally) Weights & Biases, and a progress bar.

Only process 0 writes. JSON lines are flushed as written, so a crash loses
at most the line being written. A resumed run first drops the rows past the
step it resumed from (they belong to steps it is about to redo) and tells
TensorBoard to purge them too, so every (step, kind) appears once however
often a run crashes and resumes.

`train.wandb_project` (off when empty) also sends every row to Weights &
Biases; `wandb` is imported only then (it is not a dependency: `pip install
wandb`), the run's id is derived from the workdir so a resumed launch
continues the same W&B run, and `WANDB_MODE=offline` keeps everything in
`<workdir>/wandb/` (what the tests use).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
from typing import Any, Mapping

from etils import epath

from nn.errors import ConfigError
from trainer.paths import is_local, workdir_path

log = logging.getLogger("train")


def check_wandb(train_cfg) -> None:
    """A one-line ConfigError when `train.wandb_project` is set but wandb is not installed (before anything runs)."""
    project = train_cfg.get("wandb_project", "")
    if project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.wandb_project={project!r} needs the wandb package, which is not installed "
                          f"(pip install wandb), or leave train.wandb_project empty")


def wandb_run_id(workdir: str) -> str:
    """A stable W&B run id for a workdir: relaunches of the same run log to the same W&B run."""
    return hashlib.sha1(str(workdir_path(workdir)).encode()).hexdigest()[:16]


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else str(f)


def drop_rows_after(path, step: int) -> int:
    """Rewrites `path` (JSON lines) without rows past `step` or cut by a crash; returns how many were dropped."""
    path = epath.Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return dropped


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None,
                 wandb_project: str = "", run_config: dict | None = None):
        """`resume_step`: the step a resumed run restarts from (rows after it are dropped first)."""
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._remote: tuple[epath.Path, list[str]] | None = None
        if not enabled:
            return
        wd = workdir_path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        path = wd / "metrics.jsonl"
        if resume_step is not None:
            dropped = drop_rows_after(path, resume_step)
            if dropped:
                log.info("dropped %d metrics rows past the resumed step %d from %s", dropped, resume_step, path)
        if is_local(workdir):
            self._jsonl = path.open("a", encoding="utf-8")
        else:
            # Object stores cannot append: the file is rewritten whole at each write (rows are small).
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
            self._remote = (path, lines)
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step: TensorBoard hides events at or after it from earlier event files.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(wd / "tensorboard"), purge_step=purge)
        if wandb_project:
            import wandb

            # W&B keeps its files in a local folder: the workdir's when local, ./wandb otherwise.
            self._wandb = wandb.init(project=wandb_project, dir=str(wd) if is_local(workdir) else None,
                                     config=run_config or {}, id=wandb_run_id(workdir), resume="allow",
                                     name=wd.name)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        if self._remote is not None:
            path, lines = self._remote
            lines.append(json.dumps(record) + "\n")
            path.write_text("".join(lines), encoding="utf-8")
        else:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k == "step":
                    continue
                if isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
                elif isinstance(v, str):
                    self._tb.add_text(k, v, step)
        if self._wandb is not None:
            # W&B drops rows at a step below one it has seen (a resumed run's redone steps): they were logged.
            self._wandb.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (float, str))},
                            step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def progress_enabled() -> bool:
    """A progress bar only on an interactive terminal, never in CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """A progress bar on a terminal; with output piped (nohup, Slurm logs), a plain log line per update."""

    def __init__(self, total: int, initial: int, enabled: bool, bar: bool | None = None):
        self._bar = None
        self.enabled = enabled
        self.total = total
        self.done = initial
        if enabled and (progress_enabled() if bar is None else bar):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step")

    def update(self, n: int, **postfix: Any) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
        elif self.enabled:
            log.info("step %d/%d %s", self.done, self.total, " ".join(f"{k}={v}" for k, v in postfix.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
