"""The input pipeline against the train step it feeds, measured in one run.

    python -m benchmarks.data                      # prepares stdlib (BPE 8192) in a temporary folder, then times
    python -m benchmarks.data --steps 100 --train_steps 20

1. Preparation: time to train the 8,192-id BPE on the stdlib and to prepare
   (tokenize + write) the stdlib shards with it, from scratch.
2. Pipeline alone: tokens/s of the grain pipeline (read the memmapped shards,
   unpack, pack rows with segment ids / positions / loss weights, batch) for
   lm_tiny's batch shape (32 x 128), through the same `StepIterator` the loop
   uses (prefetch threads), and called directly without read-ahead.
3. Train step: tokens/s the lm_tiny train step consumes (jitted, state donated,
   one fixed batch, after a warm-up), and the same for lm_stdlib's model.

The ratio pipeline / train step is the claim under test (goal: >= 10x).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np


def time_prepare(workdir: str) -> dict:
    from data.prepare import prepare
    from data.tokenizer import train_bpe

    t0 = time.perf_counter()
    train_bpe("stdlib", os.path.join(workdir, "tok"), 8192, quiet=True)
    t1 = time.perf_counter()
    m = prepare("stdlib", os.path.join(workdir, "tok"), os.path.join(workdir, "shards"), progress=False)
    t2 = time.perf_counter()
    return {"bpe_train_s": t1 - t0, "prepare_s": t2 - t1, "train_tokens": m["splits"]["train"]["tokens"],
            "train_documents": m["splits"]["train"]["documents"], "bytes": m["splits"]["train"]["bytes"]}


def time_pipeline(shards: str, steps: int, batch: int, seq_len: int) -> dict:
    from data import pipeline
    from data.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(os.path.dirname(shards), "tok"))
    ds = pipeline.train_dataset([(shards, 1.0)], seq_len=seq_len, batch=batch, seed=0, num_steps=steps + 10,
                                token_bytes=tok.token_bytes())
    ds[0]
    t0 = time.perf_counter()
    for s in range(steps):
        ds[s]
    direct = steps * batch * seq_len / (time.perf_counter() - t0)
    it = pipeline.StepIterator(ds, prefetch=2)
    it.batch(0)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        it.batch(s)
    iterated = steps * batch * seq_len / (time.perf_counter() - t0)
    it.close()
    return {"pipeline_direct_tok_s": direct, "pipeline_iterator_tok_s": iterated}


def time_train_step(config_path: str, steps: int, overrides: dict | None = None) -> float:
    """Tokens/s of the jitted train step alone (one fixed batch, after compilation and one warm-up step)."""
    import importlib.util

    from trainer import loop

    spec = importlib.util.spec_from_file_location("_cfg", config_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config(None)
    for k, v in (overrides or {}).items():
        cfg.data[k] = v
    s = loop.setup(cfg, jax.devices()[:1])
    with jax.set_mesh(s.mesh):
        state = loop.init_state(s)
        batch = loop.to_global(s.task.train_batch(0), s.batch_shardings)
        step_fn = loop.jit_train_step(s, s.task.train_batch(0))
        state, m = step_fn(state, batch)
        jax.block_until_ready(m["train/loss"])
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = step_fn(state, batch)
        jax.block_until_ready(m["train/loss"])
        return steps * s.task.tokens_per_step / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="pipeline batches timed")
    p.add_argument("--train_steps", type=int, default=20, help="train steps timed per model")
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as work:
        res = time_prepare(work)
        print(f"prepare stdlib: BPE 8192 trained in {res['bpe_train_s']:.1f} s, shards written in "
              f"{res['prepare_s']:.1f} s ({res['train_tokens']:,} train tokens, {res['train_documents']} documents)")
        res.update(time_pipeline(os.path.join(work, "shards"), args.steps, 32, 128))
        print(f"pipeline alone (32 x 128): {res['pipeline_iterator_tok_s']:,.0f} tokens/s through the iterator, "
              f"{res['pipeline_direct_tok_s']:,.0f} called directly")
        res["lm_tiny_step_tok_s"] = time_train_step(os.path.join(root, "experiments/configs/lm_tiny.py"),
                                                    args.train_steps)
        res["lm_stdlib_step_tok_s"] = time_train_step(
            os.path.join(root, "experiments/configs/lm_stdlib.py"), max(2, args.train_steps // 4),
            {"shards": os.path.join(work, "shards"), "tokenizer": os.path.join(work, "tok")})
    res["ratio_vs_lm_tiny"] = res["pipeline_iterator_tok_s"] / res["lm_tiny_step_tok_s"]
    res["ratio_vs_lm_stdlib"] = res["pipeline_iterator_tok_s"] / res["lm_stdlib_step_tok_s"]
    print(f"train step: lm_tiny {res['lm_tiny_step_tok_s']:,.0f} tokens/s, lm_stdlib "
          f"{res['lm_stdlib_step_tok_s']:,.0f} tokens/s")
    print(f"pipeline / train step: {res['ratio_vs_lm_tiny']:.1f}x (lm_tiny), {res['ratio_vs_lm_stdlib']:.1f}x (lm_stdlib)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
