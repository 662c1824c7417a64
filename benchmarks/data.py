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

2 and 3 alternate over `--rounds` rounds and the medians are reported, so a
change of load on a shared machine hits both sides of the ratio pipeline /
train step, the claim under test (goal: >= 10x).
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


def pipeline_timer(shards: str, tok_dir: str, steps: int, batch: int, seq_len: int):
    """() -> (direct tokens/s, iterator tokens/s) over `steps` fresh steps per call."""
    from data import pipeline
    from data.tokenizer import load_tokenizer

    ds = pipeline.train_dataset([(shards, 1.0)], seq_len=seq_len, batch=batch, seed=0, num_steps=1_000_000,
                                token_bytes=load_tokenizer(tok_dir).token_bytes())
    it = pipeline.StepIterator(ds, prefetch=2)
    state = {"next": 0}

    def run():
        s0 = state["next"]
        t0 = time.perf_counter()
        for s in range(s0, s0 + steps):
            ds[s]
        direct = steps * batch * seq_len / (time.perf_counter() - t0)
        it.batch(s0 + steps)  # (re)opens the iterator outside the timed part
        t0 = time.perf_counter()
        for s in range(s0 + steps + 1, s0 + 2 * steps + 1):
            it.batch(s)
        iterated = steps * batch * seq_len / (time.perf_counter() - t0)
        state["next"] = s0 + 2 * steps + 1
        return direct, iterated

    return run


def train_step_timer(config_path: str, steps: int, overrides: dict | None = None):
    """() -> tokens/s of the jitted train step alone over `steps` steps (one fixed batch; compiled on creation)."""
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
        box = {"state": loop.init_state(s)}
        batch = loop.to_global(s.task.train_batch(0), s.batch_shardings)
        step_fn = loop.jit_train_step(s, s.task.train_batch(0))
        box["state"], m = step_fn(box["state"], batch)
        jax.block_until_ready(m["train/loss"])

    def run():
        with jax.set_mesh(s.mesh):
            t0 = time.perf_counter()
            for _ in range(steps):
                box["state"], m = step_fn(box["state"], batch)
            jax.block_until_ready(m["train/loss"])
            return steps * s.task.tokens_per_step / (time.perf_counter() - t0)

    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="pipeline batches timed")
    p.add_argument("--train_steps", type=int, default=20, help="train steps timed per model")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as work:
        res = time_prepare(work)
        print(f"prepare stdlib: BPE 8192 trained in {res['bpe_train_s']:.1f} s, shards written in "
              f"{res['prepare_s']:.1f} s ({res['train_tokens']:,} train tokens, {res['train_documents']} documents)")
        shards, tok = os.path.join(work, "shards"), os.path.join(work, "tok")
        pipe = pipeline_timer(shards, tok, args.steps, 32, 128)
        tiny = train_step_timer(os.path.join(root, "experiments/configs/lm_tiny.py"), args.train_steps)
        stdlib = train_step_timer(os.path.join(root, "experiments/configs/lm_stdlib.py"),
                                  max(2, args.train_steps // 4), {"shards": shards, "tokenizer": tok})
        rounds = []
        for _ in range(args.rounds):  # contenders interleaved: a load change hits both sides of a ratio
            direct, iterated = pipe()
            rounds.append({"pipeline_direct_tok_s": direct, "pipeline_iterator_tok_s": iterated,
                           "lm_tiny_step_tok_s": tiny(), "lm_stdlib_step_tok_s": stdlib()})
            r = rounds[-1]
            r["ratio_vs_lm_tiny"] = r["pipeline_iterator_tok_s"] / r["lm_tiny_step_tok_s"]
            r["ratio_vs_lm_stdlib"] = r["pipeline_iterator_tok_s"] / r["lm_stdlib_step_tok_s"]
            print("round: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()))
        for k in rounds[0]:
            res[k] = float(np.median([r[k] for r in rounds]))
        res["rounds"] = rounds
    print(f"pipeline alone (32 x 128, median of {args.rounds} rounds): {res['pipeline_iterator_tok_s']:,.0f} "
          f"tokens/s through the iterator, {res['pipeline_direct_tok_s']:,.0f} called directly")
    print(f"train step: lm_tiny {res['lm_tiny_step_tok_s']:,.0f} tokens/s, lm_stdlib "
          f"{res['lm_stdlib_step_tok_s']:,.0f} tokens/s")
    print(f"pipeline / train step (median per-round ratio): {res['ratio_vs_lm_tiny']:.1f}x (lm_tiny), "
          f"{res['ratio_vs_lm_stdlib']:.1f}x (lm_stdlib)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
