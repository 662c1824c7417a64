"""Metrics to `workdir/metrics.jsonl` and TensorBoard, and a progress bar.

Only process 0 writes. JSON lines are flushed as written, so a crash loses
at most the line being written. A resumed run first drops the rows past the
step it resumed from (they belong to steps it is about to redo) and tells
TensorBoard to purge them too, so every (step, kind) appears once however
often a run crashes and resumes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Mapping

log = logging.getLogger("train")


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else str(f)


def drop_rows_after(path: str, step: int) -> int:
    """Rewrites `path` (JSON lines) without rows past `step` or cut by a crash; returns how many were dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
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
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None):
        """`resume_step`: the step a resumed run restarts from (rows after it are dropped first)."""
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None:
            dropped = drop_rows_after(path, resume_step)
            if dropped:
                log.info("dropped %d metrics rows past the resumed step %d from %s", dropped, resume_step, path)
        self._jsonl = open(path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step: TensorBoard hides events at or after it from earlier event files.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
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

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


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
