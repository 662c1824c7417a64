"""KV memory allocation under mixed-length traffic: a step-level simulator.

Compares how many sequences a fixed KV budget (in token slots) serves at
once, and where the rest of the memory goes, for three ways to hand out
KV memory (Kwon et al. 2023, section 3 and figure 3):

- `contiguous-max`: every sequence reserves a buffer of the model's maximum
  length at admission (static batching's layout).
- `contiguous-exact`: every sequence reserves exactly its final length (an
  oracle that knows it), placed first-fit in one address space; holes left
  by finished sequences cause external fragmentation.
- `paged-<b>`: blocks of b tokens from a shared pool, taken one at a time as
  a sequence grows (`inference.paged_cache.BlockAllocator` does the
  bookkeeping); when the pool runs out the newest sequence is preempted and
  recomputed later, as the engine in `inference.scheduler` does.

The queue is saturated (all requests wait from step 0, served first come
first served), and every running sequence decodes one token per step.
Figures are averaged over the steps while requests are still waiting,
after a warm-up, so the memory is always under pressure. Each step the
budget splits into: tokens stored, reserved-for-future tokens (contiguous
buffers not filled yet), internal fragmentation (slots that will never hold
a token: past the final length, or the unused tail of a sequence's last
block), and free memory the next request cannot use (external
fragmentation: holes between buffers, or a remainder too small for it).
"""
from __future__ import annotations

import bisect
import dataclasses

import numpy as np

from inference.paged_cache import BlockAllocator


@dataclasses.dataclass(frozen=True)
class Workload:
    prompt: np.ndarray  # int tokens per request
    total: np.ndarray  # final length (prompt + generated) per request


def sample_workload(rng: np.random.Generator, n: int, lo: int = 50, hi: int = 4000, mean: float = 800.0,
                    std: float = 600.0) -> Workload:
    """Final lengths: log-normal with the given mean and std, clipped to [lo, hi]; prompts 25-75% of that."""
    sigma2 = np.log1p((std / mean) ** 2)
    total = np.exp(rng.normal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), n))
    total = np.clip(np.round(total), lo, hi).astype(np.int64)
    prompt = np.maximum(1, np.round(total * rng.uniform(0.25, 0.75, n))).astype(np.int64)
    return Workload(prompt=np.minimum(prompt, total - 1), total=total)


class _FirstFit:
    """Contiguous buffers in one address space [0, capacity), placed at the first hole that fits."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.starts: list[int] = []  # sorted buffer starts
        self.sizes: dict[int, int] = {}

    def place(self, size: int) -> int | None:
        prev_end = 0
        for s in self.starts:
            if s - prev_end >= size:
                break
            prev_end = s + self.sizes[s]
        else:
            if self.capacity - prev_end < size:
                return None
        bisect.insort(self.starts, prev_end)
        self.sizes[prev_end] = size
        return prev_end

    def release(self, start: int) -> None:
        self.starts.remove(start)
        del self.sizes[start]


SCHEMES = ("contiguous-max", "contiguous-exact")


def simulate(work: Workload, scheme: str, budget: int, max_len: int, warmup: int = 500,
             watermark: float = 0.0) -> dict:
    """Runs the saturated queue until it empties; returns time-averaged fractions of the budget.

    `watermark` (paged only): admit a request only if that leaves this fraction of the pool free
    for the running sequences to grow into (vLLM keeps 1%); fewer preemptions, fewer sequences.
    """
    if scheme not in SCHEMES and not scheme.startswith("paged-"):
        raise ValueError(f"scheme={scheme!r} must be one of {SCHEMES} or paged-<block size>")
    n = len(work.total)
    block = int(scheme.split("-")[1]) if scheme.startswith("paged-") else 0
    alloc = BlockAllocator.for_pool(budget, block) if block else None
    space = _FirstFit(budget) if scheme == "contiguous-exact" else None
    reserved_max = 0  # contiguous-max: tokens reserved by running buffers
    head = 0  # next new request
    requeued: list[int] = []  # preempted requests, served before new ones (last preempted first)
    resume_len: dict[int, int] = {}  # a preempted request's length: recomputed as its prompt
    running: dict[int, list] = {}  # id -> [current length, buffer start, admission order]
    order = 0
    acc = dict(stored=0.0, reserved=0.0, internal=0.0, external=0.0, running=0.0)
    measured = preemptions = recomputed = generated = step = 0
    while True:
        # --- admit in FIFO order while the head fits ---
        while requeued or head < n:
            rid = requeued[-1] if requeued else head
            cur = resume_len.get(rid, int(work.prompt[rid]))
            start = None
            if block:
                # The prompt and the first decode write, leaving the watermark free.
                if alloc.blocks_needed(rid, cur + 1) > alloc.num_free - watermark * alloc.num_blocks:
                    break
                alloc.ensure(rid, cur + 1)
            elif space is not None:
                start = space.place(int(work.total[rid]))
                if start is None:
                    break
            else:
                if budget - reserved_max < max_len:
                    break
                reserved_max += max_len
            running[rid] = [cur, start, order]
            order += 1
            if requeued:
                requeued.pop()
            else:
                head += 1
        # --- account, only while requests wait (memory under pressure) and after warm-up ---
        if (requeued or head < n) and step >= warmup:
            stored = sum(r[0] for r in running.values())
            if block:
                held = alloc.num_used * block
                acc["internal"] += held - stored
            else:
                finals = sum(int(work.total[i]) for i in running)
                held = len(running) * max_len if space is None else finals
                acc["reserved"] += finals - stored
                acc["internal"] += held - finals
            acc["external"] += budget - held
            acc["stored"] += stored
            acc["running"] += len(running)
            measured += 1
        if not running:
            break
        # --- one decode step: every running sequence writes its next token ---
        if block:
            for rid in sorted(running, key=lambda i: running[i][2]):
                while rid in running and not alloc.can_hold(rid, running[rid][0] + 1):
                    victim = max(running, key=lambda i: running[i][2])  # the newest is preempted
                    alloc.free(victim)
                    resume_len[victim] = running[victim][0]
                    recomputed += running[victim][0]
                    del running[victim]
                    requeued.append(victim)
                    preemptions += 1
                if rid in running:
                    alloc.ensure(rid, running[rid][0] + 1)
        for rid in list(running):
            running[rid][0] += 1
            generated += 1
            if running[rid][0] >= work.total[rid]:
                if block:
                    alloc.free(rid)
                elif space is not None:
                    space.release(running[rid][1])
                else:
                    reserved_max -= max_len
                resume_len.pop(rid, None)
                del running[rid]
        step += 1
    if measured == 0:
        raise ValueError(f"scheme {scheme}: the queue emptied before the warm-up of {warmup} steps ended; "
                         f"use more requests or a shorter warm-up")
    mean = {k: v / measured for k, v in acc.items()}
    pct = {f"{k}_pct": 100.0 * mean[k] / budget for k in ("stored", "reserved", "internal", "external")}
    return {"scheme": scheme, "concurrent": mean["running"], "waste_pct": 100.0 - pct["stored_pct"], **pct,
            "preemptions": preemptions, "recomputed_pct": 100.0 * recomputed / max(generated, 1),
            "steps": step, "measured_steps": measured}
