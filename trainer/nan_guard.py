"""What the loop does when a step's loss or gradient is not finite.

`train.nan_policy`:

- `"raise"` (default): the run stops at the first non-finite step with a
  `NonFiniteError` naming the step and the first parameter group whose
  gradient is not finite. Nothing is saved after that step, so the last
  checkpoint on disk is the last good one.
- `"skip"`: the update of that step is dropped inside the jitted step
  (parameters and optimizer state keep their previous values through a
  select; the step counter and the data still advance) and the loop counts
  skipped steps in the metrics (`train/skipped_steps`, carried across
  resumes in the checkpoint's meta).

The device side (`finite_check`, `keep_if`, `inject_nan`) are pure jnp
functions called inside `train_step`. The host side (`NanMonitor`) reads
each step's flag one step late, so checking costs no pipeline stall: step
n+1 is already dispatched when step n's flag is fetched. It is flushed
before every checkpoint and evaluation, so a bad step is never saved.

`train.debug_nan_step` / `train.debug_nan_param` are test-only knobs: they
put NaN into one parameter group's gradient at one step, to exercise both
policies end to end (0 / "" = off / the first group).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from nn.errors import ConfigError

log = logging.getLogger("train")

POLICIES = ("raise", "skip")
FLAG, LEAF = "nan_guard/nonfinite", "nan_guard/first_bad_leaf"


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient under nan_policy='raise'."""


def leaf_names(tree) -> list[str]:
    """Dotted names of a tree's leaves in `jax.tree.leaves` order (`blocks.0.ffn.wi_DF`)."""
    from trainer.checkpoint import flatten  # the same names checkpoints use

    return list(flatten(tree))


def validate(train_cfg, params) -> tuple[str, tuple[int, int] | None]:
    """(policy, injection) from the config: injection = (1-based step, leaf index) or None."""
    policy = train_cfg.get("nan_policy", "raise")
    if policy not in POLICIES:
        raise ConfigError(f"train.nan_policy={policy!r} must be one of {list(POLICIES)}")
    at = train_cfg.get("debug_nan_step", 0)
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        raise ConfigError(f"train.debug_nan_step={at!r} must be an integer >= 0")
    if not at:
        return policy, None
    names = leaf_names(params)
    want = train_cfg.get("debug_nan_param", "") or names[0]
    if want not in names:
        raise ConfigError(f"train.debug_nan_param={want!r} is not a parameter; e.g. {names[0]!r}")
    return policy, (at, names.index(want))


def inject_nan(grads, step, injection):
    """Test-only: NaN in one leaf's gradient at training step `injection[0]` (state step + 1)."""
    if injection is None:
        return grads
    at, index = injection
    leaves, treedef = jax.tree.flatten(grads)
    hit = (step + 1) == at
    leaves[index] = leaves[index] * jnp.where(hit, jnp.nan, 1.0).astype(leaves[index].dtype)
    return jax.tree.unflatten(treedef, leaves)


def finite_check(loss, grads) -> tuple[jax.Array, jax.Array]:
    """(all finite, index of the first leaf with a non-finite gradient or -1)."""
    leaf_ok = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    ok = jnp.all(leaf_ok) & jnp.isfinite(loss)
    first_bad = jnp.where(jnp.all(leaf_ok), -1, jnp.argmin(leaf_ok))
    return ok, first_bad.astype(jnp.int32)


def keep_if(ok, new, old):
    """`new` where the step was finite, else `old` (leafwise select, no host round trip)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


class NanMonitor:
    """Reads the guard's per-step flags one step late and applies the policy."""

    def __init__(self, policy: str, names: list[str], skipped: int = 0):
        self.policy, self.names, self.skipped = policy, names, skipped
        self._pending = None

    def push(self, step: int, metrics: dict) -> None:
        """Takes this step's flags out of `metrics` and checks the previous step's."""
        flags = (step, metrics.pop(FLAG), metrics.pop(LEAF))
        self.flush()
        self._pending = flags

    def flush(self) -> None:
        if self._pending is None:
            return
        step, flag, leaf = self._pending
        self._pending = None
        if not bool(jax.device_get(flag)):
            return
        leaf = int(jax.device_get(leaf))
        where = (f"non-finite gradient at step {step}, first in parameter group {self.names[leaf]}" if leaf >= 0
                 else f"non-finite loss at step {step} (gradients finite)")
        if self.policy == "raise":
            raise NonFiniteError(where)
        self.skipped += 1
        log.warning("%s: update skipped (%d skipped so far)", where, self.skipped)
