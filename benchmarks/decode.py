"""Decode speed and capacity: the paged KV cache against a contiguous one, measured in one process.

    python -m benchmarks.decode                       # ~2 minutes on 2 CPU cores
    python -m benchmarks.decode --smoke               # seconds (the tests run this)

1. Decode tokens/s at equal batch and equal context: `--steps` one-token
   steps of the lm_tiny-shaped model (d=128, 4 layers, 4 heads) run inside
   one jitted scan, with the contiguous `KVCache` (the model's dense core)
   and with the paged cache (block tables shuffled over the pool, so every
   row's blocks are scattered), medians of `--repeats`; paged attention
   both as the default blocked online softmax and as the gather reference.
   Goal: paged >= 0.8x contiguous.
2. Sequences served in a fixed KV budget, end to end: the continuous-
   batching engine serves the same requests twice in a pool of
   `--budget_seqs` x context tokens: with 16-token blocks, and with one
   block of the whole context per sequence, which is exactly a contiguous
   buffer reserved at the maximum length. Lengths follow the study's
   distribution (50..4000, mean 800, std 600) scaled by 1/`--scale` to fit
   CPU. Reports mean sequences decoding per step and generated tokens/s
   (prefills included; the faster of two alternating runs per layout).
   Goal: >= 2x the contiguous-max-length concurrency.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.kv_cache import KVCache
from experiments.configs.defaults import base_config
from models.decode import decode_step
from inference.memory_sim import sample_workload
from inference.paged_cache import init_pools, paged_caches, pools_of
from inference.scheduler import Engine, Request
from models.lm import DecoderLM


def model_config(smoke: bool):
    cfg = base_config().model
    if smoke:
        cfg.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64)
    else:
        cfg.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512)
    return cfg


def time_interleaved(variants: dict, repeats: int) -> dict:
    """tokens/s of each variant {name: (fn, tokens per call)}: all compiled first, then timed in
    interleaved rounds (medians), so load that comes and goes on a shared machine hits all alike."""
    for fn, _ in variants.values():
        jax.block_until_ready(fn())  # compile + warm
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (fn, _) in variants.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    return {name: variants[name][1] / float(np.median(ts)) for name, ts in times.items()}


def decode_variants(model, batch: int, context: int, steps: int, *, block_sizes=(), impls=("blocked",),
                    contiguous: bool = True, num_blocks: int | None = None, lengths=None, seed: int = 0,
                    prefix: str = "") -> dict:
    """Runnable `steps`-step greedy decodes at one batch: {name: (fn, tokens)}; see `decode_rates`.

    `num_blocks` sets a paged pool smaller than batch x context (a fixed budget): rows then share
    blocks, which changes what they read but not how much, so not the time.
    """
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(seed)
    # Rows are filled to mixed lengths (`lengths`, or uniform in [context/4, context)).
    if lengths is None:
        lengths = rng.integers(context // 4, context - steps, batch)
    lengths_B = jnp.asarray(np.minimum(lengths, context - steps), jnp.int32)
    tok_B = jnp.asarray(rng.integers(0, 256, batch), jnp.int32)

    def scan_steps(caches, tok_B):
        m = nnx.merge(graphdef, params)

        def body(carry, _):
            caches, tok_B = carry
            logits_BV, caches = decode_step(m, tok_B, caches)
            return (caches, jnp.argmax(logits_BV, -1).astype(jnp.int32)), None

        return jax.lax.scan(body, (caches, tok_B), None, length=steps)[0]

    @jax.jit
    def run_contiguous(caches, tok_B):
        return scan_steps(caches, tok_B)

    @functools.partial(jax.jit, static_argnums=3)
    def run_paged(pools, tables_BL, tok_B, impl):
        caches, tok_B = scan_steps(paged_caches(pools, tables_BL, lengths_B, impl), tok_B)
        return pools_of(caches), tok_B

    out = {}
    if contiguous:
        flat = [KVCache.init(batch, context, b.attn.num_kv_heads, b.attn.head_dim).with_lengths(lengths_B)
                for b in model.blocks]
        out[prefix + "contiguous"] = (lambda: run_contiguous(flat, tok_B), batch * steps)
    for bs in block_sizes:
        L = -(-context // bs)
        nb = num_blocks or batch * L
        pools = init_pools(model, nb, bs)
        ids = rng.permutation(nb) if nb >= batch * L else rng.integers(0, nb, batch * L)
        tables_BL = jnp.asarray(ids[: batch * L].reshape(batch, L), jnp.int32)
        for impl in impls:
            out[f"{prefix}paged{bs}_{impl}"] = (functools.partial(run_paged, pools, tables_BL, tok_B, impl),
                                                batch * steps)
    return out


def decode_rates(model, batch: int, context: int, block_sizes, steps: int, repeats: int, seed: int = 0,
                 impls=("blocked",)) -> dict:
    """tokens/s of `steps` greedy decode steps at equal batch: contiguous cache vs paged caches.

    The contiguous cache's attention reads the whole context every step; the paged cache's default
    (blocked) attention stops after the longest row's last chunk. The paged pool holds batch x context
    tokens, the block tables shuffled over it.
    """
    rates = time_interleaved(decode_variants(model, batch, context, steps, block_sizes=block_sizes, impls=impls,
                                             seed=seed), repeats)
    out = {"batch": batch, "context": context, "steps": steps, "contiguous_tok_s": rates["contiguous"]}
    for name, r in rates.items():
        if name != "contiguous":
            out[f"{name}_tok_s"], out[f"{name}_ratio"] = r, r / rates["contiguous"]
    return out


def serve(model, work, *, context: int, budget_tokens: int, block_size: int, max_batch: int, seed: int = 0,
          warm: bool = True) -> dict:
    """Serves the workload with the engine (after a compile-only run if `warm`); concurrency and tokens/s."""
    rng = np.random.default_rng(seed)
    prompts = [[int(t) for t in rng.integers(0, 256, p)] for p in work.prompt]

    def make():
        return Engine(model, num_blocks=budget_tokens // block_size, block_size=block_size,
                      max_batch=max_batch, context=context)

    def requests():
        return [Request(i, p, int(t - len(p) + 1)) for i, (p, t) in enumerate(zip(prompts, work.total))]

    if warm:
        make().run(requests())  # compiles the decode step and every prefill bucket
    engine = make()
    t = time.perf_counter()
    got = engine.run(requests())
    wall = time.perf_counter() - t
    st = engine.stats
    generated = sum(len(v) for v in got.values())
    return {"block_size": block_size, "concurrent": st["decode_tokens"] / max(st["decode_steps"], 1),
            "max_running": st["max_running"], "preemptions": st["preemptions"], "decode_steps": st["decode_steps"],
            "generated": generated, "tok_s": generated / wall, "wall_s": wall}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--block_sizes", default="16,64")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--scale", type=int, default=16, help="divide the study's lengths by this (CPU)")
    p.add_argument("--budget_seqs", type=int, default=4, help="KV budget in max-length sequences")
    p.add_argument("--json", default="", help="also write the figures here")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.context, a.steps, a.repeats, a.requests, a.block_sizes, a.scale = 4, 128, 4, 1, 12, "16", 32
    model = DecoderLM(model_config(a.smoke), rngs=nnx.Rngs(0))
    block_sizes = [int(b) for b in a.block_sizes.split(",")]

    impls = ("blocked", "gather")
    rates = decode_rates(model, a.batch, a.context, block_sizes, a.steps, a.repeats, impls=impls)
    print(f"== decode tokens/s at equal batch {a.batch}, context {a.context} ({a.steps} steps, median of {a.repeats} "
          f"interleaved rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"contiguous KVCache: {rates['contiguous_tok_s']:,.0f} tok/s")
    for bs in block_sizes:
        for impl in impls:
            print(f"paged, block {bs:>3}, {impl:>7} attention: {rates[f'paged{bs}_{impl}_tok_s']:,.0f} tok/s = "
                  f"{rates[f'paged{bs}_{impl}_ratio']:.2f}x contiguous (goal >= 0.8x)")

    ctx = 4096 // a.scale
    work = sample_workload(np.random.default_rng(0), a.requests, lo=max(2, 50 // a.scale), hi=ctx,
                           mean=800 / a.scale, std=600 / a.scale)
    budget = a.budget_seqs * ctx
    layouts = {"paged": dict(block_size=16, max_batch=8 * a.budget_seqs),
               "contiguous": dict(block_size=ctx, max_batch=a.budget_seqs)}
    # Alternating runs, the faster of two per layout: load on a shared machine comes and goes.
    runs = {k: [] for k in layouts}
    for i in range(2):
        for k, kw in layouts.items():
            runs[k].append(serve(model, work, context=ctx, budget_tokens=budget, warm=i == 0, **kw))
    paged, contiguous = (max(runs[k], key=lambda r: r["tok_s"]) for k in ("paged", "contiguous"))
    print(f"== serving {a.requests} requests (lengths {work.total.min()}..{work.total.max()}, mean "
          f"{work.total.mean():.0f}, context {ctx}) in a KV budget of {budget} tokens = {a.budget_seqs} max-length sequences")
    for name, r in (("contiguous at max length", contiguous), ("paged, block 16", paged)):
        print(f"{name:>25}: {r['concurrent']:.1f} sequences per decode step (max {r['max_running']}), "
              f"{r['preemptions']} preemptions, {r['tok_s']:,.0f} generated tok/s")
    ratio_seq, ratio_tok = paged["concurrent"] / contiguous["concurrent"], paged["tok_s"] / contiguous["tok_s"]
    print(f"paged / contiguous-max: {ratio_seq:.2f}x concurrent sequences (goal >= 2x), {ratio_tok:.2f}x tokens/s")
    result = {"decode": rates, "serve": {"paged16": paged, "contiguous_max": contiguous,
                                         "concurrency_ratio": ratio_seq, "tok_s_ratio": ratio_tok,
                                         "budget_tokens": budget, "context": ctx, "requests": a.requests}}
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
