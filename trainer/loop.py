"""The generic sharded train loop: setup, the pure train step, evaluation, restore.

A task (see `tasks/`) supplies the model, loss, data and evaluation; this
module supplies everything else: the mesh and shardings, the optimizer, the
jitted `train_step`, evaluation, checkpoints (a rerun with the same workdir
resumes) and metric logging. `train_and_evaluate(config, workdir)` is the
entry point for the CLI (`train.py`), tests, studies and notebooks;
`restore_params(workdir)` rebuilds a trained model for inference.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from models import variants
from models.config import validate_model_config
from models.stack import params_layout, stack_params, unstack_params
from nn.context import ForwardContext
from nn.errors import ConfigError, InputError, MeshError
from sharding.axes import logical_rules, logical_to_spec
from sharding.mesh import make_mesh
from sharding.rules import logical_axes_of, rules_from_config, tree_shardings
from tasks import get_task
from trainer import mfu, nan_guard, norms
from trainer.checkpoint import Checkpointer, check_compatible
from trainer.metrics import higher_is_better
from trainer.nan_guard import NanMonitor, NonFiniteError
from trainer.optim import make_optimizer, schedule_values, validate_optim_config
from trainer.paths import read_json, workdir_path, write_json_atomic
from trainer.profiling import StepProfiler, profile_window
from trainer.preemption import Preempted, PreemptionWatcher
from trainer.writer import MetricWriter, Progress, check_wandb

log = logging.getLogger("train")

# Errors in the user's input: reported as one line with exit status 2 (nn/errors.py).
INPUT_ERRORS = (InputError,)


@dataclasses.dataclass
class Setup:
    """Everything decided before compiling: checked config, mesh, task, shardings."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    rules: dict
    task: Any
    graphdef: Any
    abstract_params: Any
    param_shardings: Any
    state_shardings: Any
    batch_shardings: dict
    tx: optax.GradientTransformation     # with the config's schedule numbers: for init and shapes
    schedule_values: dict                # the train step's `hparams` (trainer/optim.py schedule_values)
    nan_policy: str = "raise"
    nan_injection: tuple[int, int] | None = None  # test-only (trainer/nan_guard.py)


# --------------------------------------------------------------------------
# Validation (before anything compiles)
# --------------------------------------------------------------------------

def validate_config(config, mesh) -> None:
    validate_model_config(config.model)
    d, o = config.data, config.optim
    for section, field in (("data", "seq_len"), ("data", "batch_size"), ("train", "num_steps"),
                           ("train", "log_every"), ("train", "eval_every"), ("train", "checkpoint_every"),
                           ("train", "keep_checkpoints"), ("optim", "accum_steps"), ("data", "eval_batches")):
        v = config[section][field]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{section}.{field}={v!r} must be a positive integer")
    init_from = str(config.train.get("init_from", "") or "")
    if init_from:
        src, sep, tail = init_from.rpartition(":")
        src = src if sep and tail.isdigit() else init_from
        if not (workdir_path(src) / "checkpoints").is_dir():
            raise InputError(f"train.init_from={init_from!r}: {src!r} holds no checkpoints/ folder")
    eval_steps = config.train.get("eval_steps", ())
    if not isinstance(eval_steps, (tuple, list)) or any(
            not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in eval_steps):
        raise ConfigError(f"train.eval_steps={eval_steps!r} must be a tuple of integers >= 0 (0: before training)")
    stop_at = config.train.get("stop_at", 0)
    if not isinstance(stop_at, int) or isinstance(stop_at, bool) or stop_at < 0:
        raise ConfigError(f"train.stop_at={stop_at!r} must be an integer >= 0 (0: run to train.num_steps)")
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    validate_optim_config(o, int(config.train.num_steps))
    profile_window(config.train)
    check_wandb(config.train)
    if float(o.learning_rate) <= 0:
        raise ConfigError(f"optim.learning_rate={o.learning_rate} must be > 0")
    # The batch is sharded over every axis but `tensor` (see sharding/rules.py).
    dp = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1) * mesh.shape.get("expert", 1)
    if d.batch_size % o.accum_steps:
        raise ConfigError(f"data.batch_size={d.batch_size} is not divisible by optim.accum_steps={o.accum_steps}")
    micro = d.batch_size // o.accum_steps
    if micro % dp:
        raise ConfigError(
            f"data.batch_size={d.batch_size} (micro-batch {micro}) is not divisible by the data-parallel size {dp} "
            f"(mesh data x fsdp x expert)"
        )
    try:
        variants.validate_mesh(config.model, mesh.shape)  # each layer variant's own mesh checks
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for note in variants.seq_len_notes(config.model, d.seq_len):
        log.warning(note)
    eval_bs = d.eval_batch_size or d.batch_size
    if eval_bs % dp:
        raise ConfigError(f"data.eval_batch_size={eval_bs} is not divisible by the data-parallel size {dp}")
    if jax.process_count() > 1 and (d.batch_size % jax.process_count() or eval_bs % jax.process_count()):
        raise ConfigError(
            f"data.batch_size={d.batch_size} is not divisible by the process count {jax.process_count()}"
        )


def config_to_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


# --------------------------------------------------------------------------
# The train step: pure, jitted once with explicit shardings and donated state
# --------------------------------------------------------------------------

def train_step(state: dict, batch: dict, hparams: dict, *, graphdef, task, make_tx, accum_steps: int, rules,
               nan_policy: str = "raise", nan_injection=None, log_norms: bool = False):
    """(state, batch, hparams) -> (state, metrics). Metrics are scalars, namespaced `train/...`.

    `hparams` are the optimizer's numbers (trainer/optim.py schedule_values) as traced scalars;
    `make_tx(hparams)` builds the optimizer from them, so they are inputs, not compiled constants.

    Two `nan_guard/...` entries flag a non-finite loss or gradient (the loop
    takes them out); under nan_policy="skip" such a step leaves parameters
    and optimizer state as they were.
    """
    with logical_rules(rules):
        tx, schedule = make_tx(hparams)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_fn(params, micro, r):
            ctx = ForwardContext(train=True, step=state["step"], rng=r)
            return task.loss(nnx.merge(graphdef, params), micro, ctx)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        # [B, ...] -> [A, B/A, ...]: micro-batch a takes rows a*B/A .. (a+1)*B/A.
        micro_batches = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)
        own = None if accum_steps == 1 else task.accumulate(  # a task whose loss couples rows (CLIP)
            lambda p: nnx.merge(graphdef, p), state["params"], micro_batches,
            lambda i: ForwardContext(train=True, step=state["step"], rng=jax.random.fold_in(rng, i)))
        if accum_steps == 1:
            (loss, metrics), grads = grad_fn(state["params"], batch, rng)
        elif own is not None:
            (loss, metrics), grads = own
        else:
            def body(carry, xs):
                micro, i = xs
                (l, m), g = grad_fn(state["params"], micro, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (g, m, l)), None

            zeros = jax.eval_shape(lambda: grad_fn(state["params"], jax.tree.map(lambda x: x[0], micro_batches), rng))
            init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[1], zeros[0][1], zeros[0][0]))
            (grads, metrics, loss), _ = jax.lax.scan(body, init, (micro_batches, jnp.arange(accum_steps)))
            grads, metrics, loss = jax.tree.map(lambda x: x / accum_steps, (grads, metrics, loss))

        grads = nan_guard.inject_nan(grads, state["step"], nan_injection)
        finite, first_bad_leaf = nan_guard.finite_check(loss, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = task.post_update(optax.apply_updates(state["params"], updates))  # Task hook (CLIP: clamp)
        stats, extra = task.update_stats(state["stats"], metrics)
        if nan_policy == "skip":
            # A skipped step changes nothing: parameters, optimizer state and carried statistics.
            params, opt_state, stats = nan_guard.keep_if(
                finite, (params, opt_state, stats), (state["params"], state["opt_state"], state["stats"]))
        metrics = {f"train/{k}": v for k, v in {**metrics, **extra}.items()}
        metrics[nan_guard.FLAG] = ~finite
        metrics[nan_guard.LEAF] = first_bad_leaf
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        metrics["train/lr"] = schedule(state["step"])
        if log_norms:
            metrics.update(norms.group_norms(state["params"], grads, updates))
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"],
                     "stats": stats}
        return new_state, metrics


def eval_step(params, batch, *, graphdef, task, rules):
    with logical_rules(rules):
        return task.eval_sums(nnx.merge(graphdef, params), batch)


# --------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------

def setup(config, devices=None) -> Setup:
    """Checks the config and derives mesh, task, shapes and shardings; compiles nothing."""
    mesh = make_mesh(config.mesh.shape, devices)
    validate_config(config, mesh)
    rules = rules_from_config(config.mesh.rules, mesh)
    task = get_task(config.task)(config, jax.process_index(), jax.process_count())

    abstract_model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(int(config.seed))))
    graphdef, abstract_vars = nnx.split(abstract_model)
    abstract_params = nnx.to_pure_dict(abstract_vars)
    try:
        param_shardings = tree_shardings(logical_axes_of(abstract_vars), abstract_params, mesh, rules)
    except ValueError as e:
        raise MeshError(f"mesh.rules={config.mesh.rules!r}: {e}") from None

    values = schedule_values(config.optim, int(config.train.num_steps))
    tx, _ = make_optimizer(config.optim, int(config.train.num_steps), values)
    replicated = NamedSharding(mesh, P())
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    # Optimizer moments shard like their parameters; counters are replicated.
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: replicated,
    )
    stats_shardings = jax.tree.map(lambda _: replicated, jax.eval_shape(task.init_stats))
    state_shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": replicated, "rng": replicated,
                       "stats": stats_shardings}
    batch_shardings = {k: NamedSharding(mesh, logical_to_spec(v, rules)) for k, v in task.batch_axes().items()}
    nan_policy, nan_injection = nan_guard.validate(config.train, abstract_params)
    return Setup(config, mesh, rules, task, graphdef, abstract_params, param_shardings, state_shardings,
                 batch_shardings, tx, values, nan_policy=nan_policy, nan_injection=nan_injection)


def abstract_state(s: Setup) -> dict:
    shapes = {
        "params": s.abstract_params,
        "opt_state": jax.eval_shape(s.tx.init, s.abstract_params),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
        "stats": jax.eval_shape(s.task.init_stats),
    }
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, s.state_shardings)


# Runs whose configs differ only in `seed`, in the optimizer's numbers (traced `hparams` of the
# train step) or in host-side loop settings (a study's seeds, tuning rates and budgets) compile the
# same programs: inside
# `reuse_programs()` they share their jitted init, train and eval functions, so a seed after the first
# skips tracing, lowering and compiling. Keyed by the whole config but the seed, and the mesh's devices.
_programs: collections.OrderedDict | None = None
_PROGRAMS_KEPT = 6  # a few (program, config) pairs: seeds run consecutively, so the last point's suffice


@contextlib.contextmanager
def reuse_programs():
    """Within this block, runs that differ only in `config.seed` reuse each other's jitted programs."""
    global _programs
    outer = _programs
    _programs = collections.OrderedDict() if outer is None else outer
    try:
        yield
    finally:
        _programs = outer


# Config fields that no program depends on: the seed and the schedule numbers are program inputs,
# the rest only steer the host loop. Everything else (model, data shapes, optimizer kind, betas,
# clipping, accumulation, NaN policy, ...) is part of the key.
_NOT_IN_PROGRAMS = {"": ("seed",), "optim": ("learning_rate", "warmup_steps", "min_lr_ratio", "decay_fraction",
                                              "weight_decay"),
                    "train": ("num_steps", "stop_at", "log_every", "eval_every", "checkpoint_every")}


def _program(s: Setup, name: str, build, *extra):
    if _programs is None:
        return build()
    cfg = config_to_dict(s.config)
    for section, fields in _NOT_IN_PROGRAMS.items():
        for f in fields:
            (cfg.get(section, {}) if section else cfg).pop(f, None)
    key = json.dumps([name, cfg, [int(d.id) for d in s.mesh.devices.flat], dict(s.mesh.shape), extra],
                     sort_keys=True, default=str)
    fn = _programs.get(key)
    if fn is None:
        fn = _programs[key] = build()
        while len(_programs) > _PROGRAMS_KEPT:
            _programs.popitem(last=False)
    else:
        _programs.move_to_end(key)
    return fn


def init_state(s: Setup) -> dict:
    task, tx = s.task, s.tx

    def init(seed):
        params = nnx.to_pure_dict(nnx.state(task.build_model(nnx.Rngs(jax.random.key(seed)))))
        rng = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
        return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng,
                "stats": task.init_stats()}

    with jax.set_mesh(s.mesh), logical_rules(s.rules):
        fn = _program(s, "init", lambda: jax.jit(init, out_shardings=s.state_shardings))
        return fn(jnp.asarray(int(s.config.seed), jnp.uint32))


def jit_train_step(s: Setup, example_batch: dict):
    """`train_step` jitted once (explicit in/out shardings, state donated), as (state, batch) -> ...

    with this run's optimizer numbers bound as the (replicated, float32) `hparams` input.
    """
    optim_cfg, num_steps = s.config.optim, int(s.config.train.num_steps)
    fn = _program(s, "train", lambda: jax.jit(
        functools.partial(train_step, graphdef=s.graphdef, task=s.task,
                          make_tx=lambda h: make_optimizer(optim_cfg, num_steps, h),
                          accum_steps=int(s.config.optim.accum_steps), rules=s.rules,
                          nan_policy=s.nan_policy, nan_injection=s.nan_injection,
                          log_norms=bool(s.config.train.get("log_norms", False))),
        in_shardings=(s.state_shardings, {k: s.batch_shardings[k] for k in example_batch},
                      NamedSharding(s.mesh, P())),
        out_shardings=(s.state_shardings, None),
        donate_argnums=0,
    ), sorted(example_batch))
    return TrainStep(fn, {k: np.float32(v) for k, v in s.schedule_values.items()})


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A jitted train step (possibly shared by several runs) with one run's optimizer numbers bound."""
    jitted: Any
    hparams: dict

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.hparams)


def jit_eval_step(s: Setup):
    return _program(s, "eval", lambda: jax.jit(
        functools.partial(eval_step, graphdef=s.graphdef, task=s.task, rules=s.rules),
        in_shardings=(s.param_shardings, s.batch_shardings),
    ))


def host_params_for_extras(params):
    """Parameters a single process can use on its own (for samples at evaluation).

    With several processes a parameter's shards live on other hosts, and a
    computation over them must run on every process; gathering a host copy
    (all processes take part) lets process 0 sample alone.
    """
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def to_global(batch: dict, shardings: dict) -> dict:
    """Assembles the global batch from this process's rows."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------

EVAL_BATCH_KEYS = ("nll", "weight", "bytes")  # per-batch eval sums kept for a bootstrap over eval batches


def evaluate(s: Setup, eval_fn, params, per_batch: list | None = None) -> dict[str, float]:
    totals: dict[str, float] = {}
    for batch in s.task.eval_batches():
        sums = eval_fn(params, to_global(batch, s.batch_shardings))
        host = {k: float(v) for k, v in jax.device_get(sums).items()}
        for k, v in host.items():
            totals[k] = totals.get(k, 0.0) + v
        if per_batch is not None:
            per_batch.append({k: host[k] for k in EVAL_BATCH_KEYS if k in host})
    return s.task.eval_metrics(totals)


def earlier_evals(workdir: str, upto: int) -> list[dict]:
    """Eval records of previous launches in `metrics.jsonl`, up to the resumed step."""
    path = workdir_path(workdir) / "metrics.jsonl"
    if upto == 0 or not path.exists():
        return []
    by_step: dict[int, dict] = {}
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", upto + 1) <= upto and any(k.startswith("eval/") for k in rec):
                by_step[rec["step"]] = {"step": rec["step"], **{k: v for k, v in rec.items()
                                                               if k.startswith("eval/") and isinstance(v, float)}}
    return [by_step[k] for k in sorted(by_step)]


def best_of(curve: list[dict]) -> dict[str, float]:
    """Best value of each eval metric over the curve, in the direction trainer/metrics.py gives it."""
    best: dict[str, float] = {}
    for point in curve:
        for k, v in point.items():
            if k != "step":
                pick = max if higher_is_better(k) else min
                best[k] = pick(best.get(k, v), v)
    return best


def init_params_from(spec: str, s: Setup) -> dict:
    """Parameters of another run's checkpoint (`<workdir>[:step]`), laid out with this run's shardings.

    The source is rebuilt from the config stored with its checkpoint (on
    this run's mesh); every parameter must have this model's path and shape,
    or a one-line InputError names the first that does not.
    """
    src, sep, tail = spec.rpartition(":")
    src, step = (src, int(tail)) if sep and tail.isdigit() else (spec, None)
    where = f"train.init_from={spec!r}"
    if not (workdir_path(src) / "checkpoints").is_dir():
        raise InputError(f"{where}: {src!r} holds no checkpoints/ folder")
    ckpt = Checkpointer(src, keep=1, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None or step not in ckpt.all_steps():
            raise InputError(f"{where}: no checkpoint at step {step} (available: {ckpt.all_steps()})")
        other = ml_collections.ConfigDict(ckpt.read_meta(step)["config"])
        other.mesh = s.config.mesh
        other.train.init_from = ""
        o = setup(other, list(s.mesh.devices.flat))
        convert = layout_converter(o.config.model, s.config.model, o.abstract_params)  # scanned <-> unscanned
        want = dict(jax.tree_util.tree_flatten_with_path(s.abstract_params)[0])
        have = dict(jax.tree_util.tree_flatten_with_path(jax.eval_shape(convert, o.abstract_params))[0])
        for path in sorted(set(want) | set(have), key=jax.tree_util.keystr):
            a, b = want.get(path), have.get(path)
            if a is None or b is None or a.shape != b.shape:
                raise InputError(f"{where}: parameter {jax.tree_util.keystr(path)} has shape "
                                 f"{None if b is None else b.shape} in the source run but "
                                 f"{None if a is None else a.shape} in this model")
        with jax.set_mesh(s.mesh):
            params = convert(ckpt.restore(step, abstract_state(o))["params"])
    finally:
        ckpt.close()
    return jax.device_put(params, s.param_shardings)


def layout_converter(src_model_cfg, dst_model_cfg, src_params):
    """params -> params in the destination's layer layout (models/stack.py); identity when the layouts agree."""
    src_scan, dst_scan = bool(src_model_cfg.get("scan_layers", False)), bool(dst_model_cfg.get("scan_layers", False))
    if src_scan == dst_scan or not isinstance(src_params, dict) or not ({"blocks", "layers"} & set(src_params)):
        return lambda params: params
    return ((lambda params: stack_params(params, dst_model_cfg)) if dst_scan else
            (lambda params: unstack_params(params, src_model_cfg)))


def finished_summary(workdir: str, stop_at: int, latest_step: int | None) -> dict | None:
    """The stored summary when `workdir` already holds a run finished at `stop_at` or later, else None."""
    path = workdir_path(workdir) / "summary.json"
    if latest_step is None or latest_step < stop_at or not path.exists():
        return None
    try:
        summary = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None  # a damaged summary: finish the run again, which rewrites it
    return summary if int(summary.get("steps", -1)) >= stop_at else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict[str, Any]:
    """Trains (resuming from `workdir` if it holds a checkpoint) and returns a run summary.

    A workdir whose run already finished (its summary.json covers the
    requested steps) is left untouched: the stored summary comes back with
    `already_finished: True`.
    """
    s = setup(config, devices)
    cfg = s.config
    is_main = jax.process_index() == 0
    cfg_dict = config_to_dict(cfg)
    # `train.stop_at` ends this launch early without changing the run (its schedule
    # still spans num_steps): for time-sliced jobs and the exact-resume test.
    stop_at = min(int(cfg.train.get("stop_at") or cfg.train.num_steps), int(cfg.train.num_steps))
    ckpt = Checkpointer(workdir, keep=int(cfg.train.keep_checkpoints), async_save=bool(cfg.train.async_checkpointing))

    def check_meta(meta: dict) -> None:
        check_compatible(meta["config"], cfg_dict, workdir)

    try:
        done = finished_summary(workdir, stop_at, ckpt.latest_step())
        if done is not None:
            check_meta(ckpt.read_meta(ckpt.latest_step()))
            log.info("%s already holds a run finished at step %d (summary.json); nothing to do",
                     workdir, done["steps"])
            ckpt.close()
            return {**done, "already_finished": True}
        with jax.set_mesh(s.mesh):
            start, state, saved_meta = ckpt.restore_newest(abstract_state(s), check_meta)
            if start is None:
                state, start = init_state(s), 0
                if cfg.train.get("init_from"):
                    state["params"] = init_params_from(str(cfg.train.init_from), s)
                    log.info("parameters from %s", cfg.train.init_from)
            else:
                log.info("resumed from %s at step %d", ckpt.directory, start)
    except BaseException:
        ckpt.close()
        raise

    summary: dict[str, Any] = {
        "params": s.task.param_count(),  # Task hooks; default: models/flops.py on config.model
        "flops_per_token": s.task.train_flops_per_token(),
        "tokens_per_step": s.task.tokens_per_step,
    }
    if is_main:
        # Written once the run is known to be valid and its state restored, never by a launch that fails earlier.
        write_json_atomic(workdir_path(workdir) / "config.json", cfg_dict, indent=2, sort_keys=True)
        log.info("model: %s parameters, %.3g training FLOPs/token; mesh %s, rules %s",
                 f"{summary['params']:,}", summary["flops_per_token"], dict(s.mesh.shape), cfg.mesh.rules)
        peak_flops, peak_name = mfu.total_peak(list(s.mesh.devices.flat), str(cfg.model.get("dtype", "float32")))
        log.info("train/mfu is over a peak of %.4g FLOP/s: %s", peak_flops, peak_name)

    with jax.set_mesh(s.mesh):
        step_fn = jit_train_step(s, s.task.train_batch(start))
        eval_fn = jit_eval_step(s)
        writer = MetricWriter(workdir, enabled=is_main, tensorboard=bool(cfg.train.tensorboard),
                              resume_step=start if start > 0 else None,
                              wandb_project=str(cfg.train.get("wandb_project", "") or ""), run_config=cfg_dict)
        progress = Progress(stop_at, start, enabled=is_main)
        profiler = StepProfiler(profile_window(cfg.train), str(workdir_path(workdir) / "profile"), enabled=is_main)
        # Evaluations of earlier launches, so a resumed run's curve is whole.
        curve: list[dict] = earlier_evals(workdir, start) if is_main else []
        last_eval: dict[str, float] = {}
        last_eval_batches: list[dict] = []
        t_start = time.perf_counter()
        t_mark, step_mark = t_start, start
        progress_at = start

        def run_eval(step: int) -> None:
            nonlocal last_eval, last_eval_batches
            per_batch: list[dict] = []
            metrics = {f"eval/{k}": v for k, v in evaluate(s, eval_fn, state["params"], per_batch).items()}
            last_eval_batches = per_batch
            params = host_params_for_extras(state["params"])
            extras = s.task.eval_extras(nnx.merge(s.graphdef, params), step) if is_main else {}
            writer.write(step, {**metrics, **{f"eval/{k}": v for k, v in extras.items()}})
            curve.append({"step": step, **metrics})
            last_eval = metrics
            if is_main:
                log.info("step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if "sample" in extras:
                    log.info("sample: %r", extras["sample"])

        def meta(step: int) -> dict:
            return {"config": cfg_dict, "step": step, "param_layout": params_layout(s.abstract_params), "data": {"seed": int(cfg.seed), "next_step": step},
                    "nan_guard": {"skipped_steps": monitor.skipped}}

        monitor = NanMonitor(s.nan_policy, nan_guard.leaf_names(s.abstract_params),
                             skipped=int(saved_meta.get("nan_guard", {}).get("skipped_steps", 0)))
        watcher = PreemptionWatcher()
        preempted_at = None
        try:
            extra_evals = {int(v) for v in cfg.train.get("eval_steps", ())}
            if start == 0 and 0 in extra_evals and stop_at > 0:
                run_eval(0)  # the initialisation, before any update (dynamics: router collapse, drift)
            for step in range(start, stop_at):
                batch = to_global(s.task.train_batch(step), s.batch_shardings)
                profiler.before(step)
                state, metrics = step_fn(state, batch)
                profiler.after(step, state)
                done = step + 1
                monitor.push(done, metrics)  # checks the previous step while this one runs
                preempt = watcher.reached(done)
                if done % cfg.train.log_every == 0 or done == stop_at or preempt:
                    monitor.flush()
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    tps = (done - step_mark) * s.task.tokens_per_step / max(now - t_mark, 1e-9)
                    t_mark, step_mark = now, done
                    if s.nan_policy == "skip":
                        metrics["train/skipped_steps"] = monitor.skipped
                    if is_main:
                        metrics["train/mfu"] = mfu.mfu(summary["flops_per_token"], tps, peak_flops)
                    writer.write(done, {**metrics, "train/tokens_per_s": tps})
                    progress.update(done - progress_at, loss=f"{float(metrics['train/loss']):.3f}",
                                    tok_s=f"{tps:,.0f}")
                    progress_at = done
                if (done % cfg.train.eval_every == 0 or done == stop_at or done in extra_evals) and not preempt:
                    monitor.flush()
                    run_eval(done)
                if done % cfg.train.checkpoint_every == 0 or done == stop_at or preempt:
                    monitor.flush()  # never save the result of a non-finite step under "raise"
                    ckpt.save(done, state, meta(done))
                if preempt:
                    preempted_at = done
                    break
            monitor.flush()
            if start >= stop_at and not last_eval:
                run_eval(start)
        except NonFiniteError as e:
            ckpt.wait()
            raise NonFiniteError(f"{e}; stopped with the last good checkpoint at step {ckpt.latest_step()} "
                                 f"in {ckpt.directory} (train.nan_policy='skip' drops such updates)") from None
        finally:
            profiler.close()
            watcher.close()
            progress.close()
            ckpt.wait()
            ckpt.close()
            writer.close()
    if preempted_at is not None:
        raise Preempted(preempted_at, ckpt.directory)

    summary.update({
        "steps": max(start, stop_at),
        "tokens": max(start, stop_at) * s.task.tokens_per_step,
        "train_flops": summary["flops_per_token"] * max(start, stop_at) * s.task.tokens_per_step,
        "wall_time_s": time.perf_counter() - t_start,
        "final": last_eval,
        "final_eval_batches": last_eval_batches,  # per-batch sums of the last eval (studies bootstrap them)
        "best": best_of(curve),
        "curve": curve,
    })
    if is_main:
        # Written last: its presence marks a finished launch (studies collect it).
        write_json_atomic(workdir_path(workdir) / "summary.json", summary, indent=1)
    return summary
