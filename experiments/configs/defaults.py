"""The base config every experiment file starts from, and `:arg` parsing.

Config files follow big_vision's convention: `get_config(arg)` takes the
string after the colon in `--config path/to/file.py:arg`, e.g. `smoke` or
`experts=16,k=1`, so one file serves the CPU smoke run and the real run.
Study files (`get_study(arg)`) parse theirs the same way.
"""
from __future__ import annotations

import difflib
import os
import sys

import ml_collections

from models.config import default_model_config
from nn.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Parses a config file's `:arg` against the arguments the file declares, as big_vision does.

        args = parse_arg(arg, smoke=False, experts=8, dispatch=("dropless", "capacity"))
        # arg "smoke,experts=16" -> args.smoke True, args.experts 16, args.dispatch "dropless"

    Each keyword declares one argument; its default's type says how to parse it:
    a bool is a flag (`smoke`, or `smoke=true|false`), an int, float or str
    takes `key=value`, and a tuple lists the allowed values (its first item is
    the default; repeats are dropped, so `("dense", *REGISTRY)` reads "dense,
    or any registered name"). An unknown key or a bad value raises ConfigError
    naming the calling file and its arg: a typo such as `:smoek` must stop
    the launch, not silently start the full run.
    """
    # The file whose get_config/get_study called us, for the message (every caller passes its own arg).
    caller = sys._getframe(1).f_globals.get("__file__", "<config>")
    where = f"{_relative(caller)}:{arg or ''}"
    values = {k: tuple(dict.fromkeys(d))[0] if isinstance(d, tuple) else d for k, d in spec.items()}
    for part in (arg or "").split(","):
        key, has_value, value = (s.strip() for s in part.partition("="))
        if not key and not has_value:
            continue
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(spec) or "none"
            raise ConfigError(f"{where}: unknown argument {key!r}{hint} (this file takes: {known})")
        values[key] = _parse_value(key, value, bool(has_value), spec[key], where)
    return ml_collections.ConfigDict(values)


def _parse_value(key: str, value: str, has_value: bool, default, where: str):
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key}={value!r} must be {expected}")

    if isinstance(default, bool):
        if not has_value or value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise bad("a boolean (the bare flag, true or false)")
    if not has_value:
        raise ConfigError(f"{where}: argument {key!r} needs a value ({key}=...)")
    if isinstance(default, tuple):
        choices = list(dict.fromkeys(default))
        for c in choices:
            if str(c) == value:
                return c
        raise bad(f"one of {choices}")
    if type(default) not in _TYPE_NAMES:
        raise TypeError(f"parse_arg: {key}={default!r}: defaults must be bool, int, float, str or a tuple of choices")
    try:
        return type(default)(value)
    except ValueError:
        raise bad(_TYPE_NAMES[type(default)]) from None


def _relative(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 0
    c.model = default_model_config()
    c.data = ml_collections.ConfigDict(dict(
        corpus="pydoc",      # pydoc | stdlib | path (data.path): embedded corpora, docs/data.md
        path="",             # a UTF-8 file, or a folder of .txt / .jsonl (`text` field); sets corpus="path"
        tokenizer="bytes",   # bytes | a tokenizer.json / sentencepiece .model | "bpe:N" (trained once, cached)
        packed=False,        # True: prepared shards, grain, documents packed with segment ids (docs/data.md);
                             # implied by a non-byte tokenizer, stdlib, a mixture or data.shards
        mixture=ml_collections.FieldReference(None, field_type=object),  # {"stdlib": 0.8, "pydoc": 0.2}
        shards="",           # a folder written by `python -m data.prepare` ("" = prepare into the cache)
        cache_dir="",        # "" = $SCALING_STUDIES_DATA or ~/.cache/scaling-studies/data
        prefetch=2,          # batches read ahead (grain threads)
        workers=0,           # grain worker processes (0: read in this process's threads)
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
        schedule="cosine",   # cosine | wsd | constant, each after a linear warmup (trainer/optim.py)
        decay_fraction=0.2, decay_shape="1-sqrt",  # wsd: the last 20% of steps decay (linear | 1-sqrt)
        moment_dtype="float32",  # float32 | bfloat16: storage of both Adam moments
        z_loss=0.0,          # weight of the output-logit z-loss w * mean(log^2 Z) (PaLM: 1e-4); 0: off
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, log_every=50, eval_every=250, checkpoint_every=250, keep_checkpoints=2,
        eval_steps=(),       # extra evaluations at these steps besides every eval_every (0: before the first update)
        stop_at=0,           # >0: end this launch at that step (the schedule still spans num_steps)
        async_checkpointing=True, tensorboard=True,
        nan_policy="raise",  # raise | skip: a non-finite loss/gradient stops the run or drops that update
        debug_nan_step=0, debug_nan_param="",  # test-only: NaN into one gradient at one step (nan_guard.py)
        init_from="",        # "<workdir>[:step]": a new run starts from that run's parameters (not its optimizer)
        log_norms=True,      # per-layer-group parameter/gradient/update norms at log_every (trainer/norms.py)
        profile_steps=(0, 0),  # (start, stop), stop > start: a jax.profiler trace of those steps in <workdir>/profile
        wandb_project="",    # non-empty: also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works)
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
    # No text sample at evaluation, so a smoke run never compiles the sampler (the tests keep
    # one run that samples on purpose).
    c.sample.update(num_tokens=0)
    return c
