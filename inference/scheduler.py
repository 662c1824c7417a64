"""Continuous batching over the paged KV cache (Yu et al. 2022, Orca: iteration-level scheduling).

The engine keeps up to `max_batch` sequences in fixed batch slots. Between
decode steps it retires sequences that finished (stop token, token budget,
context full) and returns their blocks, then admits waiting requests, in
arrival order, whenever a slot and the blocks for the prompt are free, so
the batch is never held back by its longest sequence. Each admitted prompt
is prefilled in one pass into its own blocks; then every step decodes one
token for all running sequences at once.

Blocks are allocated on demand: a sequence gets a new block when its next
position starts one. When the pool is exhausted mid-decode the most
recently admitted sequence is preempted by recomputation (Kwon et al. 2023,
section 4.5): its blocks are freed and it goes back to the head of the
queue with its generated tokens appended to its prompt.

Shapes come from a few buckets: the decode step runs the slots in use
rounded up to a power of two (at most `max_batch`; idle rows point at the
spare block) with block tables as wide as the longest running sequence
needs, also rounded up to a power of two, and prefills are padded to
power-of-two lengths; each shape compiles once.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nn.errors import InferenceError
from models.decode import decode_step, prefill
from inference.paged_attention import PAGED_IMPLS
from inference.paged_cache import BlockAllocator, PoolExhausted, blocks_for, init_pools, paged_caches, pools_of
from models.sampling import SamplingParams, sample_token


@dataclasses.dataclass
class Request:
    id: object
    prompt: Sequence[int]
    max_new_tokens: int
    stop_tokens: tuple = ()
    output: list = dataclasses.field(default_factory=list)
    index: int = -1  # arrival order; seeds this request's sampling


@dataclasses.dataclass
class _Running:
    req: Request
    slot: int
    cached: int  # KV positions written (prompt + all generated tokens but the last)


def _sample_rows(logits_BV, keys_B, sampling: SamplingParams):
    """Each row draws with its own key, so a token does not depend on which batch it was decoded in."""
    return jax.vmap(lambda l_V, k: sample_token(l_V[None], k, sampling)[0])(logits_BV, keys_B)


def _bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n, at most `cap`."""
    return min(cap, 1 << (n - 1).bit_length())


def _keys(key, index_B, position_B):
    """One key per (request, position): sampling does not depend on batch composition or preemption."""
    return jax.vmap(lambda i, p: jax.random.fold_in(jax.random.fold_in(key, i), p))(index_B, position_B)


@functools.lru_cache(maxsize=16)
def _jitted_steps(graphdef, sampling: SamplingParams, impl: str):
    """(prefill, decode) jitted once per model structure and sampling setting; pools are donated."""

    def prefill_fn(params, pools, key, prompt_1P, length_1, table_1L, index_1):
        model = nnx.merge(graphdef, params)
        caches = paged_caches(pools, table_1L, jnp.zeros((1,), jnp.int32), impl)
        last_1V, caches = prefill(model, prompt_1P, length_1, caches)
        return _sample_rows(last_1V, _keys(key, index_1, length_1), sampling), pools_of(caches)

    def decode_fn(params, pools, key, tokens_B, tables_BL, lengths_B, index_B):
        model = nnx.merge(graphdef, params)
        caches = paged_caches(pools, tables_BL, lengths_B, impl)
        logits_BV, caches = decode_step(model, tokens_B, caches)
        return _sample_rows(logits_BV, _keys(key, index_B, lengths_B + 1), sampling), pools_of(caches)

    return jax.jit(prefill_fn, donate_argnums=1), jax.jit(decode_fn, donate_argnums=1)


class Engine:
    """Continuous-batching generation with a paged KV cache for a DecoderLM."""

    def __init__(self, model, *, num_blocks: int, block_size: int, max_batch: int, context: int,
                 sampling: SamplingParams = SamplingParams(), seed: int = 0, impl: str = "blocked",
                 watermark: float = 0.0):
        self.allocator = BlockAllocator(num_blocks, block_size)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InferenceError(f"max_batch={max_batch!r} must be a positive integer")
        if not isinstance(context, int) or context < 2:
            raise InferenceError(f"context={context!r} must be an integer >= 2")
        if impl not in PAGED_IMPLS:
            raise InferenceError(f"impl={impl!r} must be one of {sorted(PAGED_IMPLS)}")
        if not 0.0 <= watermark < 1.0:
            raise InferenceError(f"watermark={watermark!r} must be in [0, 1)")
        self.block_size, self.max_batch, self.context = int(block_size), max_batch, context
        self.width = blocks_for(context, block_size)  # block-table columns
        # Admission leaves this many blocks free for running sequences to grow into (vLLM: 1%).
        self.watermark_blocks = watermark * num_blocks
        self.key = jax.random.key(seed)
        graphdef, self.params = nnx.split(model)
        self.pools = init_pools(model, num_blocks, block_size)
        self._prefill, self._decode = _jitted_steps(graphdef, sampling, impl)
        self.waiting: collections.deque[Request] = collections.deque()
        self.slots: list[_Running | None] = [None] * max_batch
        self.finished: dict[object, Request] = {}
        self.stats = collections.Counter()
        self._arrivals = 0

    # --- requests ------------------------------------------------------------
    def submit(self, req: Request) -> None:
        n = len(req.prompt)
        if n < 1:
            raise InferenceError(f"request {req.id!r}: the prompt is empty")
        if n >= self.context:
            raise InferenceError(
                f"request {req.id!r}: prompt of {n} tokens does not fit the model context of {self.context} tokens"
            )
        if req.max_new_tokens < 1:
            raise InferenceError(f"request {req.id!r}: max_new_tokens={req.max_new_tokens} must be >= 1")
        # The most KV positions it will hold: all but its last token, within the context.
        self.allocator.check_fits(min(n + req.max_new_tokens - 1, self.context), f"request {req.id!r}")
        req.index, self._arrivals = self._arrivals, self._arrivals + 1
        self.waiting.append(req)

    @property
    def running(self) -> list[_Running]:
        return [r for r in self.slots if r is not None]

    def idle(self) -> bool:
        return not self.waiting and not self.running

    # --- scheduling ----------------------------------------------------------
    def _done(self, run: _Running) -> bool:
        req = run.req
        return (req.output[-1] in req.stop_tokens or len(req.output) >= req.max_new_tokens
                or len(req.prompt) + len(req.output) >= self.context)

    def _retire(self, run: _Running) -> None:
        self.allocator.free(run.req.id)
        self.slots[run.slot] = None
        self.finished[run.req.id] = run.req
        self.stats["finished"] += 1

    def _admit(self) -> None:
        """Prefills waiting requests in arrival order while a slot and their prompt's blocks are free."""
        while self.waiting and None in self.slots:
            req = self.waiting[0]
            tokens = list(req.prompt) + req.output  # a preempted request recomputes its output too
            need = self.allocator.blocks_needed(req.id, len(tokens))
            # The watermark applies only while others run: alone, a request may use the whole pool.
            if need > self.allocator.num_free - (self.watermark_blocks if self.running else 0):
                return
            self.waiting.popleft()
            self.allocator.ensure(req.id, len(tokens))
            slot = self.slots.index(None)
            P = min(max(16, 1 << (len(tokens) - 1).bit_length()), self.width * self.block_size)
            prompt_1P = np.zeros((1, P), np.int32)
            prompt_1P[0, : len(tokens)] = tokens
            tok_1, self.pools = self._prefill(
                self.params, self.pools, self.key, prompt_1P, np.array([len(tokens)], np.int32),
                self.allocator.table_array([req.id], self.width), np.array([req.index], np.int32),
            )
            req.output.append(int(tok_1[0]))
            run = _Running(req, slot, len(tokens))
            self.slots[slot] = run
            self.stats["prefills"] += 1
            if self._done(run):
                self._retire(run)

    def _preempt_latest(self) -> None:
        victim = max(self.running, key=lambda r: r.req.index)
        self.allocator.free(victim.req.id)
        self.slots[victim.slot] = None
        self.waiting.appendleft(victim.req)
        self.stats["preemptions"] += 1

    def _reserve_next_positions(self) -> None:
        """Gives every running sequence the block its next write needs, preempting when the pool runs out."""
        for run in sorted(self.running, key=lambda r: r.req.index):
            while self.slots[run.slot] is run:
                try:
                    self.allocator.ensure(run.req.id, run.cached + 1)
                    break
                except PoolExhausted:
                    self._preempt_latest()  # may be `run` itself, which ends the loop

    def step(self) -> int:
        """Admit, then one decode step for every running sequence; returns the tokens it produced."""
        self._admit()
        self._reserve_next_positions()
        running = self.running
        if not running:
            return 0
        # Decode only the slots in use, rounded up to a power of two (slots fill lowest first), with
        # tables as wide as the longest row needs, also a power of two: a few shapes, each compiled once.
        B = _bucket(max(r.slot for r in running) + 1, self.max_batch)
        width = _bucket(max(len(self.allocator.table(r.req.id)) for r in running), self.width)
        ids = [None] * B
        tokens_B, lengths_B, index_B = np.zeros(B, np.int32), np.zeros(B, np.int32), np.zeros(B, np.int32)
        for r in running:
            ids[r.slot] = r.req.id
            tokens_B[r.slot], lengths_B[r.slot], index_B[r.slot] = r.req.output[-1], r.cached, r.req.index
        new_B, self.pools = self._decode(
            self.params, self.pools, self.key, tokens_B, self.allocator.table_array(ids, width), lengths_B, index_B,
        )
        new_B = np.asarray(new_B)
        for r in running:
            r.req.output.append(int(new_B[r.slot]))
            r.cached += 1
            if self._done(r):
                self._retire(r)
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += len(running)
        self.stats["max_running"] = max(self.stats["max_running"], len(running))
        return len(running)

    def run(self, requests: Sequence[Request] = (), arrivals: dict[int, Sequence[Request]] | None = None,
            max_steps: int = 1_000_000) -> dict[object, list[int]]:
        """Serves `requests` (and `arrivals[step]` as they come) until all finish; returns id -> tokens."""
        for r in requests:
            self.submit(r)
        arrivals = dict(arrivals or {})
        step = 0
        while not self.idle() or arrivals:
            for r in arrivals.pop(step, ()):
                self.submit(r)
            self.step()
            step += 1
            if step > max_steps:
                raise RuntimeError(f"not finished after {max_steps} steps")
        return {rid: list(r.output) for rid, r in self.finished.items()}
