"""AdamW with global-norm clipping and a learning-rate schedule whose numbers are train-step inputs.

`optim.schedule` picks the shape (every one starts with a linear warmup from 0
over `optim.warmup_steps` and ends at `learning_rate * min_lr_ratio`, except
"constant"):

- "cosine" (default): cosine decay from the peak to the end value at `train.num_steps`;
- "wsd": warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024): the
  peak is held until the last `decay_fraction` of the steps, which decay to the
  end value, linearly or as 1 - sqrt (Hägele et al., eq. for the "(1-sqrt)" cooldown);
- "constant": the peak after warmup, to the end.

The schedule's numbers and the weight decay (`schedule_values`) enter the
compiled train step as arguments, not constants: runs that differ only in
them share one program (trainer/loop.py `reuse_programs`).

`optim.moment_dtype = "bfloat16"` stores both Adam moments in bfloat16 (half
the optimizer memory); the update itself is computed in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nn.errors import ConfigError

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")
MOMENT_DTYPES = ("float32", "bfloat16")


def validate_optim_config(optim_cfg, num_steps: int) -> None:
    """One-line ConfigErrors naming the field, before anything compiles."""
    name = optim_cfg.get("schedule", "cosine")
    if name not in SCHEDULES:
        raise ConfigError(f"optim.schedule={name!r} must be one of {list(SCHEDULES)}")
    if name == "wsd":
        shape = optim_cfg.get("decay_shape", "1-sqrt")
        if shape not in DECAY_SHAPES:
            raise ConfigError(f"optim.decay_shape={shape!r} must be one of {list(DECAY_SHAPES)}")
        frac = optim_cfg.get("decay_fraction", 0.2)
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
            raise ConfigError(f"optim.decay_fraction={frac!r} must be a number in (0, 1]")
        if int(optim_cfg.warmup_steps) + wsd_decay_steps(optim_cfg, num_steps) > num_steps:
            raise ConfigError(
                f"optim.warmup_steps={optim_cfg.warmup_steps} + the decay ({wsd_decay_steps(optim_cfg, num_steps)} "
                f"steps: optim.decay_fraction={frac} of train.num_steps={num_steps}) exceed train.num_steps")
    moments = optim_cfg.get("moment_dtype", "float32")
    if moments not in MOMENT_DTYPES:
        raise ConfigError(f"optim.moment_dtype={moments!r} must be one of {list(MOMENT_DTYPES)}")
    z = optim_cfg.get("z_loss", 0.0)
    if isinstance(z, bool) or not isinstance(z, (int, float)) or z < 0:
        raise ConfigError(f"optim.z_loss={z!r} must be a number >= 0 (0: off)")


def wsd_decay_steps(optim_cfg, num_steps: int) -> int:
    """Length of the WSD decay phase: `decay_fraction` of the run, at least one step."""
    return max(1, round(float(optim_cfg.get("decay_fraction", 0.2)) * num_steps))


def schedule_values(optim_cfg, num_steps: int) -> dict[str, float]:
    """The numbers of the learning-rate schedule and the weight decay, as a dict of floats.

    The train step takes them as an argument (traced, not baked into the program as constants), so
    runs that differ only in these numbers and in their length (a study's tuning runs, its budgets)
    share one compiled program; the schedule's shape (`optim.schedule`, `optim.decay_shape`) is static.
    """
    return {**_lr_values(optim_cfg, num_steps), "weight_decay": float(optim_cfg.weight_decay)}


def _lr_values(optim_cfg, num_steps: int) -> dict[str, float]:
    validate_optim_config(optim_cfg, num_steps)
    peak = float(optim_cfg.learning_rate)
    warmup = int(optim_cfg.warmup_steps)
    v = {"peak": peak, "end": peak * float(optim_cfg.min_lr_ratio), "warmup": float(warmup)}
    name = optim_cfg.get("schedule", "cosine")
    if name == "cosine":
        v["decay_steps"] = float(max(num_steps, warmup + 1) - warmup)  # the cosine ends at num_steps
    elif name == "wsd":
        decay = wsd_decay_steps(optim_cfg, num_steps)
        v["decay_start"], v["decay_steps"] = float(num_steps - decay), float(decay)
    return v


def lr_at(count, values: dict, name: str = "cosine", decay_shape: str = "1-sqrt"):
    """The learning rate after `count` updates: a linear warmup from 0 over `warmup` steps, then

    - cosine: end + (peak - end) (1 + cos(pi t / decay_steps)) / 2, t = count - warmup (clipped);
    - wsd: the peak until `decay_start`, then to `end` over `decay_steps`, linearly or as
      end + (peak - end)(1 - sqrt(t / decay_steps)) (Hägele et al. 2024's "(1-sqrt)" cooldown;
      optax's polynomial schedule with power 0.5 is (1 - t)^0.5, another curve);
    - constant: the peak.
    `values` (schedule_values) may be traced.
    """
    count = jnp.asarray(count, jnp.float32)
    peak, end, warmup = values["peak"], values["end"], values["warmup"]
    warm = peak * count / jnp.maximum(warmup, 1.0)
    if name == "cosine":
        frac = jnp.clip((count - warmup) / values["decay_steps"], 0.0, 1.0)
        after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    elif name == "wsd":
        frac = jnp.clip((count - values["decay_start"]) / values["decay_steps"], 0.0, 1.0)
        after = end + (peak - end) * ((1.0 - frac) if decay_shape == "linear" else (1.0 - jnp.sqrt(frac)))
    else:
        after = jnp.broadcast_to(jnp.asarray(peak, jnp.float32), count.shape)
    return jnp.where(count < warmup, warm, after)


def lr_schedule(optim_cfg, num_steps: int, values: dict | None = None) -> optax.Schedule:
    """count -> learning rate for this config (`values`, e.g. traced ones, replace the config's numbers)."""
    values = _lr_values(optim_cfg, num_steps) if values is None else values
    name, shape = optim_cfg.get("schedule", "cosine"), optim_cfg.get("decay_shape", "1-sqrt")
    return lambda count: lr_at(count, values, name, shape)


def with_state_dtype(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
    """`inner` whose floating-point state is stored in `dtype` and updated in float32.

    (optax's `mu_dtype` covers the first Adam moment only; this covers both.)
    """
    def is_float(x):
        return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)

    def store(state):
        return jax.tree.map(lambda x: x.astype(dtype) if is_float(x) else x, state)

    def load(state):
        return jax.tree.map(lambda x: x.astype(jnp.float32) if is_float(x) else x, state)

    def init(params):
        return store(inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_state = inner.update(updates, load(state), params)
        return new_updates, store(new_state)

    return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg, num_steps: int, values: dict | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (+ clipping) and its schedule; `values` (schedule_values, possibly traced) replace the
    config's learning-rate numbers and weight decay, the rest (betas, eps, clip, dtypes) comes from it."""
    values = schedule_values(optim_cfg, num_steps) if values is None else values
    schedule = lr_schedule(optim_cfg, num_steps, values)
    # Decay matrices only: norm scales (1-D) keep their scale (as in GPT-2/nanoGPT).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    b1, b2, eps = float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps)
    if optim_cfg.get("moment_dtype", "float32") == "float32":
        adam = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=values["weight_decay"], mask=decay_mask)
    else:
        # optax.adamw's own chain, with both moments stored in bfloat16.
        adam = optax.chain(
            with_state_dtype(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), jnp.bfloat16),
            optax.add_decayed_weights(values["weight_decay"], decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    tx = optax.chain(optax.clip_by_global_norm(float(optim_cfg.grad_clip)), adam)
    return tx, schedule
