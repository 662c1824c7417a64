"""Checkpoint save/restore time (async vs sync) and the cost of running as 2 processes.

    python -m benchmarks.checkpoint                       # 20M config, 5 repeats; then 2 vs 1 process
    python -m benchmarks.checkpoint --repeats 3 --no-multiprocess

Part 1, on one device with the ~20M-parameter config of
`benchmarks/train_step.py` (parameters + two Adam moments, 0.25 GB):

- sync save: `save` returns when the checkpoint is on disk;
- async save: the *blocking* part (until `save` returns: device-to-host copy,
  then training can go on) and the *total* (until the checkpoint is
  finalized, `wait_until_finished`);
- restore onto the run's shardings.

Each figure is the median over repeats, printed with its ratio to the
median train step of the same config measured in this process, so the
numbers are comparable across machines.

Part 2: the same 30-step lm_tiny run (data=2 x fsdp=4 over 8 fake CPU
devices) as one process with 8 devices and as 2 processes x 4 devices
joined by `jax.distributed` (gloo), launched alternately (`--mp-repeats`
pairs); the steady-state tokens/s of each (logged intervals after the
first, which holds the compilation) and the slowdown ratio of each pair.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from trainer import loop
from benchmarks.train_step import config_20m
from models.flops import param_count
from trainer import launch
from trainer.checkpoint import Checkpointer


def _median(xs):
    return float(np.median(xs))


def checkpoint_times(cfg, repeats: int, root: str) -> dict[str, float]:
    s = loop.setup(cfg, jax.devices()[:1])
    with jax.set_mesh(s.mesh):
        state = loop.init_state(s)
        step_fn = loop.jit_train_step(s, s.task.train_batch(0))
        batch = loop.to_global(s.task.train_batch(0), s.batch_shardings)
        state, m = step_fn(state, batch)  # compile
        jax.block_until_ready(m["train/loss"])
        steps = []
        for i in range(3):
            t0 = time.perf_counter()
            state, m = step_fn(state, loop.to_global(s.task.train_batch(i + 1), s.batch_shardings))
            jax.block_until_ready(m["train/loss"])
            steps.append(time.perf_counter() - t0)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
        abstract = loop.abstract_state(s)
        times: dict[str, list[float]] = {k: [] for k in ("sync_save", "async_blocking", "async_total", "restore")}
        for r in range(repeats):
            # Interleave the contenders so machine noise hits all alike.
            for mode in ("sync", "async"):
                wd = os.path.join(root, f"{mode}_{r}")
                ck = Checkpointer(wd, keep=1, async_save=(mode == "async"))
                meta = {"config": {}, "step": r}
                t0 = time.perf_counter()
                ck.save(r + 1, state, meta)
                t1 = time.perf_counter()
                ck.wait()
                t2 = time.perf_counter()
                ck.close()
                if mode == "sync":
                    times["sync_save"].append(t2 - t0)
                else:
                    times["async_blocking"].append(t1 - t0)
                    times["async_total"].append(t2 - t0)
                    ck = Checkpointer(wd, keep=1)
                    t0 = time.perf_counter()
                    restored = ck.restore(r + 1, abstract)
                    jax.block_until_ready(restored)
                    times["restore"].append(time.perf_counter() - t0)
                    ck.close()
                    del restored
                shutil.rmtree(wd)
    out = {k: _median(v) for k, v in times.items()}
    out["train_step"] = _median(steps)
    out["state_bytes"] = nbytes
    return out


def _tokens_per_s(workdir: str) -> float:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        tps = [r["train/tokens_per_s"] for r in map(json.loads, f) if "train/tokens_per_s" in r]
    return _median(tps[1:])  # the first interval holds compilation


def _one_process(args, workdir) -> float:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu", "CI": "1"}
    out = subprocess.run([sys.executable, os.path.join(launch.ROOT, "train.py"), *args(workdir)], cwd=launch.ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return _tokens_per_s(workdir)


def _two_processes(args, workdir) -> float:
    r = launch.run(args(workdir), num_processes=2, devices_per_process=4, logdir=workdir + "_logs", timeout=1800)
    if r.returncodes != [0, 0]:
        raise RuntimeError(r.outputs[0][-2000:])
    return _tokens_per_s(workdir)


def multiprocess_slowdown(root: str, steps: int, repeats: int) -> dict[str, float]:
    """Alternates 1-process and 2-process launches; the slowdown of each pair, and their median."""
    args = lambda wd: ["--config", "experiments/configs/lm_tiny.py", "--workdir", wd,  # noqa: E731
                       "--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=4",
                       f"--config.train.num_steps={steps}", "--config.train.log_every=5",
                       "--config.train.eval_every=100000", "--config.train.checkpoint_every=100000",
                       "--config.train.tensorboard=False", "--config.sample.num_tokens=0",
                       "--config.data.eval_batches=1"]
    one, two = [], []
    for r in range(repeats):
        one.append(_one_process(args, os.path.join(root, f"one_{r}")))
        two.append(_two_processes(args, os.path.join(root, f"two_{r}")))
    ratios = [a / b for a, b in zip(one, two)]
    return {"tps_one": _median(one), "tps_two": _median(two), "ratios": ratios, "slowdown": _median(ratios)}


def report_checkpoint(cfg, repeats: int, root: str) -> None:
    t = checkpoint_times(cfg, repeats, root)
    step = t["train_step"]
    print(f"== checkpoint, {param_count(cfg.model):,} params, state {t['state_bytes'] / 2**20:.0f} MiB, "
          f"medians of {repeats}; train step {1e3 * step:.0f} ms")
    for k, label in (("sync_save", "sync save (total)"), ("async_blocking", "async save, blocking part"),
                     ("async_total", "async save, total"), ("restore", "restore")):
        print(f"  {label:27s} {1e3 * t[k]:8.0f} ms  = {t[k] / step:5.2f} train steps")
    print(f"  async blocking / sync save: {t['async_blocking'] / t['sync_save']:.3f}")
    print(f"  async total / sync save:    {t['async_total'] / t['sync_save']:.2f}")
    print(f"  restore / sync save:        {t['restore'] / t['sync_save']:.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="steps of the 1- vs 2-process lm_tiny runs")
    p.add_argument("--no-multiprocess", action="store_true")
    p.add_argument("--no-checkpoint", action="store_true", help="only the 1- vs 2-process comparison")
    p.add_argument("--mp-repeats", type=int, default=3, help="pairs of 1- and 2-process launches")
    p.add_argument("--config", choices=["20m", "smoke"], default="20m", help="smoke: a tiny model, for the tests")
    a = p.parse_args(argv)
    if a.config == "20m":
        cfg = config_20m()
    else:
        from experiments.configs.defaults import apply_smoke

        cfg = apply_smoke(config_20m())
    root = tempfile.mkdtemp(prefix="bench_ckpt_")
    try:
        if not a.no_checkpoint:
            report_checkpoint(cfg, a.repeats, root)
        if not a.no_multiprocess:
            m = multiprocess_slowdown(root, a.steps, a.mp_repeats)
            print(f"== lm_tiny, data=2 x fsdp=4, {a.steps} steps, medians of {a.mp_repeats} alternating launches: "
                  f"1 process x 8 devices {m['tps_one']:,.0f} tokens/s, 2 processes x 4 devices "
                  f"{m['tps_two']:,.0f} tokens/s (steady state)")
            print(f"  slowdown of 2 processes: {m['slowdown']:.2f}x (pairs: "
                  f"{', '.join(f'{x:.2f}x' for x in m['ratios'])})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
