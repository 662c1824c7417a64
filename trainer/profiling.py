"""A `jax.profiler` trace of a window of train steps: `train.profile_steps = (start, stop)`.

The trace covers the steps that take the state from step `start` to step
`stop` (logged as steps start+1 .. stop), so `(10, 15)` skips compilation and
warm-up and records five steady steps. It is written on process 0 only, to
`<workdir>/profile/plugins/profile/<time>/` (xplane.pb): `tensorboard
--logdir <workdir>` shows it in the Profile tab (`pip install
tensorboard-plugin-profile`), and Perfetto (ui.perfetto.dev) opens the
trace too. `(0, 0)` (the default) traces nothing.
"""
from __future__ import annotations

import logging

import jax

from nn.errors import ConfigError

log = logging.getLogger("train")


def profile_window(train_cfg) -> tuple[int, int] | None:
    """(start, stop) from `train.profile_steps`, None when off; a one-line ConfigError when malformed."""
    value = train_cfg.get("profile_steps", (0, 0))
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or (tuple(value) != (0, 0) and not 0 <= value[0] < value[1]):
        raise ConfigError(f"train.profile_steps={value!r} must be two integers (start, stop) with "
                          f"0 <= start < stop, or (0, 0) for no trace")
    return None if tuple(value) == (0, 0) else (int(value[0]), int(value[1]))


class StepProfiler:
    """Starts the trace before step `start` runs and stops it once step `stop - 1` has finished."""

    def __init__(self, window: tuple[int, int] | None, logdir: str, enabled: bool):
        self.window = window if enabled else None
        self.logdir = logdir
        self.active = False

    def before(self, step: int) -> None:
        if self.window and not self.active and self.window[0] <= step < self.window[1]:
            jax.profiler.start_trace(self.logdir)
            self.active = True
            log.info("profiling steps %d..%d into %s", step, self.window[1], self.logdir)

    def after(self, step: int, state) -> None:
        """After running step `step` (state now at step + 1)."""
        if self.active and step + 1 >= self.window[1]:
            jax.block_until_ready(state)  # the trace holds the whole of the last step
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.window = None
