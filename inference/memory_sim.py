"""KV memory allocation under mixed-length traffic: a step-level simulator.

Compares how many sequences a fixed KV budget (in token slots) serves at
once, where the rest of the memory goes, and what that buys in goodput and
latency, for three ways to hand out KV memory (Kwon et al. 2023, section 3
and figure 3):

- `contiguous-max`: every sequence reserves a buffer of the model's maximum
  length at admission (static batching's layout).
- `contiguous-exact`: every sequence reserves exactly its final length (an
  oracle that knows it), placed first-fit in one address space; holes left
  by finished sequences cause external fragmentation.
- `paged-<b>`: blocks of b tokens from a shared pool, taken one at a time as
  a sequence grows (`inference.paged_cache.BlockAllocator` does the
  bookkeeping); when the pool runs out the newest sequence is preempted and
  recomputed later, as the engine in `inference.scheduler` does.

The queue is saturated (all requests wait from time 0, served first come
first served; preempted ones go back to the front, the last preempted
first). Memory figures are averaged over the iterations while requests are
still waiting, after a warm-up, so the memory is always under pressure.
Each iteration the budget splits into: tokens stored, reserved-for-future
tokens (contiguous buffers not filled yet), internal fragmentation (slots
that will never hold a token: past the final length, or the unused tail of
a sequence's last block), and free memory the next request cannot use
(external fragmentation: holes between buffers, or a remainder too small).

Compute and time model (what goodput and latency are measured in):
- Compute unit: one token-forward pass (one token through the model). A
  request of prompt p and final length L costs p prefill token-forwards and
  L - p decode token-forwards; a preempted request re-admitted at length c
  costs c more (the recomputation of its prompt and the tokens it had
  generated, which are kept). Goodput per compute = generated tokens /
  token-forwards (prefill + recompute + decode).
- Time unit: one decode step of the whole running batch, whatever its size
  (the memory-bound regime, where reading the weights dominates a decode
  step). Each iteration admits requests (their prefills) and then runs one
  decode step; it lasts 1 + (tokens prefilled in it) / `prefill_rate`, i.e.
  `prefill_rate` prompt tokens cost as much time as one decode step, and
  prefills are not overlapped with decoding. Goodput per time = generated
  tokens / time.
- A request's first output token is written by the decode step of the
  iteration that admitted it; time to first token (TTFT) = the end of that
  iteration (every request arrives at time 0, so under the saturated queue
  TTFT is mostly queueing). Time per output token (TPOT) = (finish time -
  TTFT) / (generated tokens - 1): it grows with the prefills that stall
  the batch and with the time a preempted request waits and recomputes.
"""
from __future__ import annotations

import bisect
import dataclasses
import math

import numpy as np

from inference.paged_cache import BlockAllocator

DISTRIBUTIONS = ("lognormal", "lognormal-heavy", "uniform")
HEAVY_SIGMA = 1.2  # log-space sigma of the heavy-tailed lengths (the seed's mean 800, std 600 has 0.67)


@dataclasses.dataclass(frozen=True)
class Workload:
    prompt: np.ndarray  # int tokens per request
    total: np.ndarray  # final length (prompt + generated) per request


def _clipped_lognormal_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[clip(X, lo, hi)] for log X ~ N(mu, sigma^2), in closed form."""
    cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
    a, b = (math.log(lo) - mu) / sigma, (math.log(hi) - mu) / sigma
    inside = math.exp(mu + sigma**2 / 2) * (cdf(b - sigma) - cdf(a - sigma))
    return lo * cdf(a) + hi * (1.0 - cdf(b)) + inside


def heavy_mu(mean: float, sigma: float, lo: float, hi: float) -> float:
    """The log-space mu whose clipped log-normal has the given mean (bisection; the mean grows with mu)."""
    a, b = math.log(lo) - 5 * sigma, math.log(hi) + 5 * sigma
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if _clipped_lognormal_mean(m, sigma, lo, hi) < mean else (a, m)
    return 0.5 * (a + b)


def sample_workload(rng: np.random.Generator, n: int, lo: int = 50, hi: int = 4000, mean: float = 800.0,
                    std: float = 600.0, dist: str = "lognormal") -> Workload:
    """Final lengths in [lo, hi]; prompts 25-75% of each length.

    lognormal: the given mean and std before clipping (the seed's scenario);
    lognormal-heavy: sigma HEAVY_SIGMA in log space (a heavier tail), mu set so the *clipped* mean is `mean`;
    uniform: uniform integers over [lo, hi] (mean (lo + hi) / 2; `mean` and `std` unused).
    """
    if dist == "lognormal":
        sigma2 = np.log1p((std / mean) ** 2)
        total = np.exp(rng.normal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), n))
    elif dist == "lognormal-heavy":
        total = np.exp(rng.normal(heavy_mu(mean, HEAVY_SIGMA, lo, hi), HEAVY_SIGMA, n))
    elif dist == "uniform":
        total = rng.uniform(lo, hi, n)
    else:
        raise ValueError(f"dist={dist!r} must be one of {DISTRIBUTIONS}")
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


def _quantiles(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95))}


def simulate(work: Workload, scheme: str, budget: int, max_len: int, warmup: int = 500,
             watermark: float = 0.0, prefill_rate: float = 512.0, trace: bool = False) -> dict:
    """Runs the saturated queue until it empties; returns time-averaged fractions of the budget, goodput, latency.

    `watermark` (paged only): admit a request only if that leaves this fraction of the pool free
    for the running sequences to grow into (vLLM keeps 1%); fewer preemptions, fewer sequences.
    `prefill_rate`: prompt tokens prefilled in the time of one decode step (see the module docstring).
    `trace=True` adds the per-request arrays (first-token and finish times, preemptions) to the result.
    """
    if scheme not in SCHEMES and not scheme.startswith("paged-"):
        raise ValueError(f"scheme={scheme!r} must be one of {SCHEMES} or paged-<block size>")
    if not prefill_rate > 0:
        raise ValueError(f"prefill_rate={prefill_rate!r} must be positive")
    n = len(work.total)
    total_l = [int(t) for t in work.total]
    prompt_l = [int(p) for p in work.prompt]
    block = int(scheme.split("-")[1]) if scheme.startswith("paged-") else 0
    alloc = BlockAllocator.for_pool(budget, block) if block else None
    space = _FirstFit(budget) if scheme == "contiguous-exact" else None
    reserved_max = 0  # contiguous-max: tokens reserved by running buffers
    head = 0  # next new request
    requeued: list[int] = []  # preempted requests, served before new ones (last preempted first)
    resume_len: dict[int, int] = {}  # a preempted request's length: recomputed as its prompt
    # id -> [current length, buffer start, slots held (paged)]; dicts keep insertion (= admission) order
    running: dict[int, list] = {}
    acc = dict(stored=0.0, reserved=0.0, internal=0.0, external=0.0, running=0.0)
    win = dict(time=0.0, generated=0, forwards=0)  # the measured window's goodput
    measured = preemptions = recomputed = generated = step = 0
    prefill_fw = recompute_fw = 0
    stored = finals = 0  # tokens held by running sequences, and their final lengths
    clock = 0.0
    first_token = np.full(n, -1.0)
    finish = np.full(n, -1.0)
    n_preempted = np.zeros(n, np.int64)
    while True:
        # --- admit in FIFO order while the head fits; the admitted requests' prefills run now ---
        prefilled = 0
        while requeued or head < n:
            rid = requeued[-1] if requeued else head
            cur = resume_len.get(rid, prompt_l[rid])
            start = held = None
            if block:
                # The prompt and the first decode write, leaving the watermark free.
                if alloc.blocks_needed(rid, cur + 1) > alloc.num_free - watermark * alloc.num_blocks:
                    break
                alloc.ensure(rid, cur + 1)
                held = -(-(cur + 1) // block) * block
            elif space is not None:
                start = space.place(total_l[rid])
                if start is None:
                    break
            else:
                if budget - reserved_max < max_len:
                    break
                reserved_max += max_len
            running[rid] = [cur, start, held]
            prefilled += cur
            stored += cur
            finals += total_l[rid]
            if requeued:
                requeued.pop()
                recompute_fw += cur
            else:
                head += 1
                prefill_fw += cur
        # --- account, only while requests wait (memory under pressure) and after warm-up ---
        in_window = bool(requeued or head < n) and step >= warmup
        if in_window:
            if block:
                held_slots = alloc.num_used * block
                acc["internal"] += held_slots - stored
            else:
                held_slots = len(running) * max_len if space is None else finals
                acc["reserved"] += finals - stored
                acc["internal"] += held_slots - finals
            acc["external"] += budget - held_slots
            acc["stored"] += stored
            acc["running"] += len(running)
            measured += 1
        if not running:
            break
        # --- one decode step: every running sequence writes its next token ---
        if block:
            # Oldest first; the newest (the last key) is preempted when the pool runs out.
            for rid in list(running):
                r = running.get(rid)
                if r is None or r[0] + 1 <= r[2]:
                    continue  # preempted earlier in this step, or its last block has room
                while rid in running and not alloc.can_hold(rid, r[0] + 1):
                    victim = next(reversed(running))  # the newest is preempted
                    alloc.free(victim)
                    resume_len[victim] = running[victim][0]
                    recomputed += running[victim][0]
                    stored -= running[victim][0]
                    finals -= total_l[victim]
                    n_preempted[victim] += 1
                    del running[victim]
                    requeued.append(victim)
                    preemptions += 1
                if rid in running:
                    alloc.ensure(rid, r[0] + 1)
                    r[2] = -(-(r[0] + 1) // block) * block
        duration = 1.0 + prefilled / prefill_rate
        clock += duration
        decoded = len(running)
        generated += decoded
        stored += decoded
        if in_window:
            win["time"] += duration
            win["generated"] += decoded
            win["forwards"] += decoded + prefilled
        for rid in list(running):
            r = running[rid]
            r[0] += 1
            if first_token[rid] < 0:
                first_token[rid] = clock
            if r[0] >= total_l[rid]:
                if block:
                    alloc.free(rid)
                elif space is not None:
                    space.release(r[1])
                else:
                    reserved_max -= max_len
                resume_len.pop(rid, None)
                finish[rid] = clock
                stored -= r[0]
                finals -= total_l[rid]
                del running[rid]
        step += 1
    if measured == 0:
        raise ValueError(f"scheme {scheme}: the queue emptied before the warm-up of {warmup} steps ended; "
                         f"use more requests or a shorter warm-up")
    mean = {k: v / measured for k, v in acc.items()}
    pct = {f"{k}_pct": 100.0 * mean[k] / budget for k in ("stored", "reserved", "internal", "external")}
    gen_req = work.total - work.prompt
    ttft = first_token
    multi = gen_req > 1
    tpot = (finish[multi] - first_token[multi]) / (gen_req[multi] - 1)
    forwards = prefill_fw + recompute_fw + generated
    out = {"scheme": scheme, "concurrent": mean["running"], "waste_pct": 100.0 - pct["stored_pct"], **pct,
           "preemptions": preemptions, "recomputed_pct": 100.0 * recomputed / max(generated, 1),
           "steps": step, "measured_steps": measured,
           # compute (token-forwards) and time, whole run
           "generated": generated, "prefill_forwards": prefill_fw, "recompute_forwards": recompute_fw,
           "forwards": forwards, "time": clock,
           "goodput_compute_run": generated / forwards, "goodput_time_run": generated / clock,
           # the same, over the measured window (memory under pressure)
           "window_time": win["time"], "window_generated": win["generated"], "window_forwards": win["forwards"],
           "goodput_compute": win["generated"] / max(win["forwards"], 1),
           "goodput_time": win["generated"] / win["time"] if win["time"] else 0.0,
           "recompute_share_pct": 100.0 * recompute_fw / forwards,
           "ttft": _quantiles(ttft), "tpot": _quantiles(tpot)}
    if trace:
        out.update(first_token=first_token, finish=finish, preempted=n_preempted)
    return out
