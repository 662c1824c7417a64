"""The base config every experiment file starts from, and `:arg` parsing.

Config files follow big_vision's convention: `get_config(arg)` takes the
string after the colon in `--config path/to/file.py:arg`, e.g. `smoke` or
`smoke,d_model=256`, so one file serves the CPU smoke run and the real run.
"""
from __future__ import annotations

import ml_collections

from models.config import default_model_config


def parse_arg(arg: str | None) -> dict[str, str | bool]:
    """'smoke,size=S' -> {'smoke': True, 'size': 'S'}."""
    out: dict[str, str | bool] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        out[key.strip()] = value.strip() if sep else True
    return out


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 0
    c.model = default_model_config()
    c.data = ml_collections.ConfigDict(dict(
        path="",             # "" = the embedded pydoc corpus; else a UTF-8 file or folder of .txt
        seq_len=128,
        batch_size=32,       # global batch (all devices, all processes)
        eval_batch_size=0,   # 0: same as batch_size
        eval_batches=16,
        val_fraction=0.1,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=3e-3, warmup_steps=100, min_lr_ratio=0.1, weight_decay=0.1,
        b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
        accum_steps=1,       # micro-batches per step (gradient accumulation)
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, log_every=50, eval_every=250, checkpoint_every=250, keep_checkpoints=2,
        stop_at=0,           # >0: end this launch at that step (the schedule still spans num_steps)
        async_checkpointing=True, tensorboard=True,
        nan_policy="raise",  # raise | skip: a non-finite loss/gradient stops the run or drops that update
        debug_nan_step=0, debug_nan_param="",  # test-only: NaN into one gradient at one step (nan_guard.py)
    ))
    c.sample = ml_collections.ConfigDict(dict(prompt="The ", num_tokens=64, temperature=0.8, top_k=0))
    c.mesh = ml_collections.ConfigDict(dict(
        shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1)),
        rules="fsdp",        # dp | fsdp | tensor: logical-axis presets in sharding/rules.py
    ))
    return c


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any config to a few seconds on CPU (used by `:smoke` and the tests)."""
    c.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64, head_dim=0)
    c.data.update(seq_len=32, batch_size=8, eval_batches=2)
    c.optim.update(warmup_steps=2)
    c.train.update(num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
    c.sample.update(num_tokens=8)
    return c
