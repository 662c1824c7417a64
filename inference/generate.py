"""Sample text from a trained byte-level LM checkpoint.

    python -m inference.generate --workdir runs/lm_tiny --prompt "The "
    python -m inference.generate --workdir runs/lm_tiny --prompt "The " --prompt "def " \
        --temperature 0.8 --top_p 0.95 --stop $'\\n' --paged --block_size 16

Restores the latest checkpoint (or `--step`) with the config stored in its
metadata, so the model is rebuilt exactly as trained. The context is the
trained sequence length (`data.seq_len`): a longer prompt is an error, and
generation stops when prompt + output fill it. `--paged` serves the prompts
through the continuous-batching engine with a paged KV cache instead of one
fixed batch with contiguous caches; greedy decoding gives the same text.
Errors in the input print one line `error: ...` and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from inference.paged_cache import blocks_for
from inference.scheduler import Engine, Request
from models.decode import check_prompts, generate, pad_prompts
from models.sampling import SamplingParams
from nn.errors import InferenceError, InputError
from trainer import restore


def load_model(workdir: str, step: int | None = None):
    """(model, config) from `workdir`'s checkpoint; InferenceError when there is none."""
    try:
        model, config, _ = restore.restore_model(workdir, step)
    except InputError as e:
        raise InferenceError(str(e)) from None
    if config.task != "lm":
        raise InferenceError(f"the checkpoint in {workdir!r} is a task={config.task!r} run, not a language model")
    return model, config


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))  # the byte-level LM's tokens are the UTF-8 bytes


def decode(tokens) -> str:
    return bytes(int(t) for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")


def sample(model, prompts: list[list[int]], *, context: int, max_new_tokens: int, sampling: SamplingParams,
           stop_tokens: tuple = (), seed: int = 0) -> list[list[int]]:
    """One fixed batch with contiguous caches."""
    check_prompts([len(p) for p in prompts], context, max_new_tokens)
    prompt_BP, lengths_B = pad_prompts(prompts)
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, prompt_BP, lengths_B):
        return generate(nnx.merge(graphdef, params), prompt_BP, lengths_B, max_new_tokens=max_new_tokens,
                        rng=jax.random.key(seed), sampling=sampling, stop_tokens=stop_tokens, context=context)

    out = jax.device_get(run(params, jnp.asarray(prompt_BP), jnp.asarray(lengths_B)))
    return [list(out["tokens_BN"][b, : out["num_tokens_B"][b]]) for b in range(len(prompts))]


def sample_paged(model, prompts, *, context, max_new_tokens, sampling, stop_tokens=(), seed=0,
                 block_size=16, max_batch=8, pool_tokens=0) -> list[list[int]]:
    """The continuous-batching engine with a paged cache (pool default: every slot at full context)."""
    check_prompts([len(p) for p in prompts], context, max_new_tokens)
    num_blocks = pool_tokens // block_size if pool_tokens else max_batch * blocks_for(context, block_size)
    if pool_tokens:
        from inference.paged_cache import BlockAllocator

        BlockAllocator.for_pool(pool_tokens, block_size)  # checks the block size divides the pool
    engine = Engine(model, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
                    context=context, sampling=sampling, seed=seed)
    got = engine.run([Request(i, p, max_new_tokens, tuple(stop_tokens)) for i, p in enumerate(prompts)])
    return [got[i] for i in range(len(prompts))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m inference.generate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--stop", default="", help="characters that end a sample (each one byte)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--paged", action="store_true", help="continuous batching with a paged KV cache")
    p.add_argument("--block_size", type=int, default=16)
    p.add_argument("--max_batch", type=int, default=8)
    p.add_argument("--pool_tokens", type=int, default=0, help="paged KV pool size (default: max_batch x context)")
    args = p.parse_args(argv)
    try:
        for flag, low in (("block_size", 1), ("max_batch", 1), ("pool_tokens", 0), ("max_new_tokens", 1)):
            if getattr(args, flag) < low:
                raise InferenceError(f"--{flag}={getattr(args, flag)} must be >= {low}")
        sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
        stop = tuple(encode(args.stop))
        if any(len(encode(c)) != 1 for c in args.stop):
            raise InferenceError(f"--stop={args.stop!r}: stop characters must be single bytes")
        model, config = load_model(args.workdir, args.step)
        context = int(config.data.seq_len)
        prompts = [encode(t) for t in args.prompt]
        kw = dict(context=context, max_new_tokens=args.max_new_tokens, sampling=sampling, stop_tokens=stop, seed=args.seed)
        if args.paged:
            outs = sample_paged(model, prompts, block_size=args.block_size, max_batch=args.max_batch,
                                pool_tokens=args.pool_tokens, **kw)
        else:
            outs = sample(model, prompts, **kw)
    except InferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    room = context - max(len(x) for x in prompts)
    if args.max_new_tokens > room:
        print(f"note: --max_new_tokens={args.max_new_tokens} does not fit the model context of {context} tokens; "
              f"the longest prompt stops after {room} new tokens", file=sys.stderr)
    for text, toks in zip(args.prompt, outs):
        print(text + decode(toks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
