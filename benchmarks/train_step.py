"""Train-step throughput and MFU, against baselines measured in the same run.

    python -m benchmarks.train_step                 # lm_tiny and the ~20M config
    python -m benchmarks.train_step --configs 20m --repeats 7 --steps 10
    python -m benchmarks.train_step --configs lm_tiny --profile /tmp/trace   # jax.profiler trace

For each config it prints tokens/s and model FLOP/s of our full train step
(the loop's own data path, sharded jit, AdamW with clipping), MFU against a
float32 matmul peak measured in this process, and ratios to a bare plain-JAX
GPT of the same shape and, when torch is installed, a nanoGPT-style PyTorch
GPT (`pip install torch==2.13.0` gives the CPU wheel). Medians over repeats;
the runs are interleaved so machine noise hits all contenders alike.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from trainer import loop
from benchmarks.baselines import make_bare_jax_step, make_torch_step, matmul_peak_flops
from experiments.configs import lm_tiny
from models.flops import param_count, train_flops_per_token


def config_20m():
    c = lm_tiny.get_config()
    c.model.update(d_model=512, n_layers=6, n_heads=8, n_kv_heads=8, d_ff=2048)
    c.data.update(seq_len=256, batch_size=16)
    return c


CONFIGS = {"lm_tiny": lm_tiny.get_config, "20m": config_20m}


class Ours:
    name = "ours"

    def __init__(self, cfg):
        self.s = loop.setup(cfg, jax.devices()[:1])
        with jax.set_mesh(self.s.mesh):
            self.state = loop.init_state(self.s)
            self.fn = loop.jit_train_step(self.s, self.s.task.train_batch(0))
        self.i = 0

    def run(self, n):
        with jax.set_mesh(self.s.mesh):
            for _ in range(n):
                batch = loop.to_global(self.s.task.train_batch(self.i), self.s.batch_shardings)
                self.state, m = self.fn(self.state, batch)
                self.i += 1
            jax.block_until_ready(m["train/loss"])


class BareJax:
    name = "bare_jax"

    def __init__(self, cfg, batches):
        m = cfg.model
        self.step, self.params, self.opt = make_bare_jax_step(
            m.vocab_size, m.d_model, m.n_layers, m.d_ff, cfg.data.seq_len, m.n_heads)
        self.batches = batches

    def run(self, n):
        for i in range(n):
            x, y = self.batches[i % len(self.batches)]
            self.params, self.opt, loss = self.step(self.params, self.opt, x, y)
        jax.block_until_ready(loss)


class Torch:
    name = "torch"

    def __init__(self, cfg, batches):
        m = cfg.model
        self.step = make_torch_step(m.vocab_size, m.d_model, m.n_layers, m.d_ff, cfg.data.seq_len, m.n_heads)
        self.batches = batches

    def run(self, n):
        for i in range(n):
            self.step(*self.batches[i % len(self.batches)])


def bench(cfg_name: str, steps: int, repeats: int, peak: float, with_torch: bool) -> dict:
    cfg = CONFIGS[cfg_name]()
    ours = Ours(cfg)
    batches = []
    for i in range(4):
        b = ours.s.task.train_batch(10_000 + i)
        batches.append((b["inputs"], b["targets"]))
    contenders = [ours, BareJax(cfg, batches)]
    if with_torch:
        t = Torch(cfg, batches)
        if t.step is not None:
            contenders.append(t)
    for c in contenders:  # compile / warm up
        c.run(3)
    times = {c.name: [] for c in contenders}
    for _ in range(repeats):
        for c in contenders:
            t0 = time.perf_counter()
            c.run(steps)
            times[c.name].append((time.perf_counter() - t0) / steps)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    fpt = train_flops_per_token(cfg.model, cfg.data.seq_len)
    out = {"config": cfg_name, "params": param_count(cfg.model), "tokens_per_step": tokens}
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        out[f"{k}/step_ms"] = 1e3 * v
        out[f"{k}/tokens_per_s"] = tokens / v
        out[f"{k}/mfu"] = fpt * tokens / v / peak
    out["ours_speed_vs_bare_jax"] = med["bare_jax"] / med["ours"]
    if "torch" in med:
        out["ours_speed_vs_torch"] = med["torch"] / med["ours"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="lm_tiny,20m")
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace of 3 of our steps per config "
                   "(open in TensorBoard's profile plugin or Perfetto) and exit")
    a = p.parse_args(argv)
    if a.profile:
        for name in a.configs.split(","):
            ours = Ours(CONFIGS[name]())
            ours.run(2)  # compile outside the trace
            with jax.profiler.trace(os.path.join(a.profile, name)):
                ours.run(3)
            print(f"trace of 3 '{name}' steps in {os.path.join(a.profile, name)}")
        return
    peak = matmul_peak_flops()
    print(f"float32 matmul peak (2048^3, median of 7): {peak / 1e9:.1f} GFLOP/s on {jax.devices()[0].device_kind}")
    for name in a.configs.split(","):
        r = bench(name, a.steps, a.repeats, peak, not a.no_torch)
        print(f"\n== {name}: {r['params']:,} params, {r['tokens_per_step']} tokens/step")
        for who in ("ours", "bare_jax", "torch"):
            if f"{who}/step_ms" in r:
                print(f"  {who:9s} {r[f'{who}/step_ms']:8.1f} ms/step  {r[f'{who}/tokens_per_s']:9.0f} tokens/s"
                      f"  MFU {100 * r[f'{who}/mfu']:5.1f}%")
        print(f"  speed ours / bare JAX: {r['ours_speed_vs_bare_jax']:.2f}x", end="")
        if "ours_speed_vs_torch" in r:
            print(f"   ours / torch: {r['ours_speed_vs_torch']:.2f}x", end="")
        print()


if __name__ == "__main__":
    main()
