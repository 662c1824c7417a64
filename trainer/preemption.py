"""SIGTERM and Ctrl-C as "save and stop": what TPU VMs and Slurm send before evicting a job.

The loop asks `watcher.reached(step)` after every step. On a notice it
finishes that step, saves a checkpoint, flushes metrics and raises
`Preempted`; `train.py` prints one line and exits 0, and rerunning the same
command resumes exactly (batches are a pure function of (seed, step)).

- One process: a Python SIGTERM handler sets a flag (restored on close).
- Ctrl-C (SIGINT) does the same on process 0 of a run started by hand: the
  first one saves at the current step and stops like SIGTERM; a second one
  while the step or the save is still running exits at once with status
  130, for a user who does not want to wait. Nothing saved is damaged by
  that: a checkpoint cut mid-save is an unfinished temporary folder that the
  next launch removes (trainer/checkpoint.py).
- Several processes: the notice may reach only some of them, and all must
  save at the *same* step or the collective save deadlocks. JAX's
  preemption sync manager (started by `jax.distributed.initialize`, it
  catches SIGTERM itself) agrees on that step across processes:
  `multihost_utils.reached_preemption_sync_point(step)` turns True on every
  process at the same step.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import jax

log = logging.getLogger("train")


class Preempted(Exception):
    """The run saved a checkpoint at `step` and stopped on a preemption notice."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted: saved checkpoint at step {step} in {directory}; "
                         f"rerun the same command to resume")
        self.step = step


class PreemptionWatcher:
    def __init__(self):
        self._multi = jax.process_count() > 1
        self._flag = threading.Event()
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            signals = [signal.SIGINT] if self._multi else [signal.SIGTERM, signal.SIGINT]
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # Only set a flag: the loop decides where it is safe to stop.
        if signum == signal.SIGINT:
            if self._flag.is_set():  # the second Ctrl-C: stop now, without waiting for the save
                print("interrupted: exiting without saving", file=sys.stderr, flush=True)
                os._exit(130)
            log.warning("Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to exit at once)")
        self._flag.set()

    def reached(self, step: int) -> bool:
        """True once a notice arrived (on every process at the same step when there are several)."""
        if self._multi:
            from jax.experimental import multihost_utils

            # Ctrl-C on a multi-process run has no agreed step: only SIGTERM (the sync manager's) saves.
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
