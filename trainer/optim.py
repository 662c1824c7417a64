"""AdamW with linear warmup, cosine decay and global-norm clipping."""
from __future__ import annotations

import jax
import optax


def lr_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
    peak = float(optim_cfg.learning_rate)
    warmup = int(optim_cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=peak * float(optim_cfg.min_lr_ratio),
    )


def make_optimizer(optim_cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(optim_cfg, num_steps)
    # Decay matrices only: norm scales (1-D) keep their scale (as in GPT-2/nanoGPT).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(float(optim_cfg.grad_clip)),
        optax.adamw(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
                    weight_decay=float(optim_cfg.weight_decay), mask=decay_mask),
    )
    return tx, schedule
