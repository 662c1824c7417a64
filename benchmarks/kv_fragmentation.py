"""KV-cache study: contiguous vs paged KV memory on mixed-length traffic, with goodput and latency.

    python -m benchmarks.kv_fragmentation                 # ~8 minutes on the loaded 2-core VM (2.5 min CPU simulating)
    python -m benchmarks.kv_fragmentation --smoke --no_throughput --out /tmp/kv_frag   # seconds (the tests)

The scenario: a saturated queue of requests whose final lengths lie in
50..4000 tokens, a fixed KV budget of `--budget_seqs` maximum-length
sequences, and three length distributions: the seed's (log-normal, mean
800, std 600, clipped), a heavier tail with the same clipped mean
(log-normal, sigma 1.2) and a uniform one over the same range. It compares
(a) contiguous buffers reserved at the maximum length, (b) contiguous
buffers reserved at each request's exact final length, placed first-fit,
and (c) paged blocks of 8/16/64/256 tokens (`inference.memory_sim`, whose
paged scheme uses the engine's `BlockAllocator`; its docstring states the
compute and time model). Over `--seeds` random workloads per distribution
it reports, with 95% Student-t intervals (experiments/study/stats.py):
memory wasted, sequences decoding concurrently, preemptions, goodput
(generated tokens per token-forward and per unit of time, recomputation
counted), time to first token and time per output token (mean, p50, p95);
and sweeps paged-16's admission watermark (the trade-off curve).

Primary metric: goodput per unit of time, paged-16 / contiguous-max,
paired by workload, per distribution. The seed's claims under test (about
40% waste for contiguous allocation, under 1-4% for paged, 2-2.4x more
concurrent sequences) get a verdict per distribution from intervals
widened by Bonferroni over all verdicts.

It then measures the decode throughput of our model (lm_tiny shape) at the
batch each layout fits in the budget on the seed's distribution (lengths
scaled down by `--scale` for CPU): the contiguous `KVCache` at its batch vs
the paged cache at its larger batch, in one process (`benchmarks/decode.py`
has the equal-batch comparison).
Writes results.json, report.md, kv_fragmentation.png and kv_watermark.png to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from experiments.study.stats import summarize
from inference.memory_sim import DISTRIBUTIONS, HEAVY_SIGMA, sample_workload, simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "kv_fragmentation")
SCHEMES = ("contiguous-max", "contiguous-exact", "paged-8", "paged-16", "paged-64", "paged-256")
METRICS = ("concurrent", "waste_pct", "reserved_pct", "internal_pct", "external_pct", "preempt_per_req",
           "recomputed_pct", "recompute_share_pct", "goodput_time", "goodput_compute",
           "ttft_mean", "ttft_p50", "ttft_p95", "tpot_mean", "tpot_p50", "tpot_p95")
PRIMARY = "goodput_time"
# The seed's claims: (what, layout, metric, low, high); supported when the (corrected) interval lies inside.
CLAIMS = (
    ("about 40% of KV memory wasted (contiguous, max length)", "contiguous-max", "waste_pct", 30.0, 50.0),
    ("about 40% of KV memory wasted (contiguous, exact length)", "contiguous-exact", "waste_pct", 30.0, 50.0),
    ("under 1-4% wasted (paged, 16-token blocks)", "paged-16", "waste_pct", 0.0, 4.0),
    ("2-2.4x concurrent sequences (paged-16 / contiguous-max)", "paged-16", "x_contiguous_max", 2.0, 2.4),
)


def run_simulations(seeds, n_requests: int, budget: int, max_len: int, warmup: int, watermark: float,
                    sweep_watermarks=(), dists=DISTRIBUTIONS, prefill_rate: float = 512.0) -> list[dict]:
    rows = []
    for dist in dists:
        for seed in seeds:
            work = sample_workload(np.random.default_rng(seed), n_requests, hi=min(4000, max_len), dist=dist)
            runs = [(s, watermark if s.startswith("paged") else 0.0) for s in SCHEMES]
            runs += [("paged-16", w) for w in sweep_watermarks if w != watermark]
            for scheme, wm in runs:
                r = simulate(work, scheme, budget, max_len, warmup=warmup, watermark=wm, prefill_rate=prefill_rate)
                for k in ("ttft", "tpot"):
                    r.update({f"{k}_{q}": v for q, v in r.pop(k).items()})
                r.update(dist=dist, seed=seed, watermark=wm, preempt_per_req=r["preemptions"] / n_requests,
                         mean_len=float(work.total.mean()), std_len=float(work.total.std()))
                rows.append(r)
    return rows


def summarize_rows(rows: list[dict], confidence: float = 0.95) -> list[dict]:
    """Per (distribution, scheme, watermark): mean and CI of every metric, and ratios to contiguous-max
    and contiguous-exact (concurrency and goodput per time), paired by workload."""
    base = {(r["dist"], r["seed"], r["scheme"]): r for r in rows if r["scheme"].startswith("contiguous")}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dist"], r["scheme"], r["watermark"]), []).append(r)
    out = []
    for (dist, scheme, wm), rs in groups.items():
        s = {"dist": dist, "scheme": scheme, "watermark": wm, "n": len(rs)}
        for m in METRICS:
            s[m] = summarize([r[m] for r in rs], confidence)
        for ref, tag in (("contiguous-max", "contiguous_max"), ("contiguous-exact", "contiguous_exact")):
            b = [base[(dist, r["seed"], ref)] for r in rs]
            s[f"x_{tag}"] = summarize([r["concurrent"] / q["concurrent"] for r, q in zip(rs, b)], confidence)
            s[f"goodput_x_{tag}"] = summarize([r[PRIMARY] / q[PRIMARY] for r, q in zip(rs, b)], confidence)
        out.append(s)
    return out


def main_rows(summary: list[dict], dist: str | None = None) -> list[dict]:
    """One row per layout (the paged ones at the main watermark), in SCHEMES order, for one distribution."""
    dist = dist or summary[0]["dist"]
    wm = next(s["watermark"] for s in summary if s["scheme"] == "paged-8" and s["dist"] == dist)
    rows = [s for s in summary if s["dist"] == dist and (not s["scheme"].startswith("paged") or s["watermark"] == wm)]
    return sorted(rows, key=lambda s: SCHEMES.index(s["scheme"]))


def sweep_rows(summary: list[dict], dist: str) -> list[dict]:
    return sorted((s for s in summary if s["scheme"] == "paged-16" and s["dist"] == dist), key=lambda s: s["watermark"])


def verdicts(rows: list[dict], dists) -> list[dict]:
    """Each claim per distribution from a Bonferroni-corrected interval (family: every claim x distribution)."""
    k = len(CLAIMS) * len(dists)
    wm = _main_wm(rows)
    keep = [r for r in rows if r["scheme"].startswith("contiguous") or (r["scheme"] == "paged-16" and r["watermark"] == wm)]
    corrected = summarize_rows(keep, 1 - 0.05 / k)
    out = []
    for dist in dists:
        by = {s["scheme"]: s for s in corrected if s["dist"] == dist}
        for what, scheme, metric, lo, hi in CLAIMS:
            s = by[scheme][metric]
            if lo <= s["ci_low"] and s["ci_high"] <= hi:
                v = "supported"
            elif s["ci_high"] < lo or s["ci_low"] > hi:
                v = "not supported (" + ("below" if s["ci_high"] < lo else "above") + f" {lo:g}-{hi:g})"
            else:
                v = f"inconclusive (interval overlaps the edge of {lo:g}-{hi:g})"
            out.append({"dist": dist, "claim": what, "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                        "confidence": 1 - 0.05 / k, "verdict": v})
    return out


def _main_wm(rows: list[dict]) -> float:
    return next(r["watermark"] for r in rows if r["scheme"] == "paged-8")


def best_watermark(rows: list[dict], summary: list[dict], dist: str) -> dict:
    """The swept watermark with the highest mean goodput per time, and the main one against it (paired by workload)."""
    best = max(sweep_rows(summary, dist), key=lambda s: s[PRIMARY]["mean"])["watermark"]
    wm = _main_wm(rows)
    at = lambda w: {r["seed"]: r[PRIMARY] for r in rows  # noqa: E731
                    if r["dist"] == dist and r["scheme"] == "paged-16" and r["watermark"] == w}
    b, m = at(best), at(wm)
    return {"dist": dist, "best": best, "default": wm,
            "best_minus_default": summarize([b[k] - m[k] for k in sorted(m)]) if best != wm else None}


def throughput(summary: list[dict], budget_seqs: int, scale: int, steps: int, repeats: int, smoke: bool) -> dict:
    """Our decoder's tokens/s at the batch each layout fits in the budget (contiguous KVCache vs paged)."""
    from flax import nnx

    from benchmarks.decode import decode_variants, model_config, time_interleaved
    from models.lm import DecoderLM

    model = DecoderLM(model_config(smoke), rngs=nnx.Rngs(0))
    context = 4096 // scale
    conc = {s["scheme"]: s["concurrent"]["mean"] for s in main_rows(summary, "lognormal")}
    out = {"context": context, "budget_tokens": budget_seqs * context, "rows": []}
    # Rows filled as in the simulation: a request's length so far, from the scaled workload.
    rng = np.random.default_rng(0)
    work = sample_workload(rng, 4096, lo=max(2, 50 // scale), hi=context, mean=800 / scale, std=600 / scale)
    variants, batches = {}, {}
    for scheme, bs in (("contiguous-max", None), ("paged-16", 16), ("paged-64", 64)):
        batch = max(1, int(round(conc[scheme] * budget_seqs / conc["contiguous-max"])))
        lengths = (work.total[:batch] * rng.uniform(0.25, 1.0, batch)).astype(int) + 1
        v = decode_variants(model, batch, context, steps, block_sizes=[bs] if bs else [], contiguous=bs is None,
                            num_blocks=budget_seqs * context // bs if bs else None, lengths=lengths)
        (fn_tokens,) = v.values()
        variants[scheme], batches[scheme] = fn_tokens, batch
    rates = time_interleaved(variants, repeats)
    out["rows"] = [{"scheme": s, "batch": batches[s], "tok_s": rates[s]} for s in variants]
    base = out["rows"][0]["tok_s"]
    for r in out["rows"]:
        r["x_contiguous_max"] = r["tok_s"] / base
    return out


def _wm_why(best: list[dict], wm: float) -> str:
    """How the default watermark compares with each distribution's best on the primary metric."""
    parts = []
    for b in best:
        if b["best_minus_default"] is None:
            parts.append(f"`{b['dist']}`: the best")
        else:
            parts.append(f"`{b['dist']}`: best at {b['best']:.1%}, "
                         f"{_ci(b['best_minus_default'], '.2f')} tokens per decode step above the default")
    return "; ".join(parts) + "."


def _ci(s: dict, fmt: str = ".1f") -> str:
    return f"{s['mean']:{fmt}} [{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]"


DIST_TEXT = {
    "lognormal": "the seed's: log-normal, mean 800, std 600 before clipping",
    "lognormal-heavy": f"heavier tail: log-normal with sigma {HEAVY_SIGMA} in log space (the seed's has 0.67), "
                       "mu set so the clipped mean is 800",
    "uniform": "uniform over the same range (mean 2025)",
}


def markdown(summary: list[dict], tput: dict | None, args, rows: list[dict], verdict: list[dict],
             best: list[dict], elapsed: float, cpu: float) -> str:
    wm = _main_wm(rows)
    dists = list(dict.fromkeys(r["dist"] for r in rows))
    lines = [
        "# KV cache: contiguous vs paged memory, goodput and latency",
        "",
        f"Command: `{args.command}` (the simulation took {elapsed / 60:.1f} minutes, {cpu / 60:.1f} minutes of CPU, "
        f"on {args.machine}).",
        "",
        "## Design",
        "",
        f"{len(args.seeds)} random workloads (seeds {', '.join(map(str, args.seeds))}) of {args.requests} requests per "
        f"length distribution; final lengths 50..{min(4000, args.max_len)}, prompts 25-75% of each length; a "
        f"saturated FIFO queue (every request waits from time 0; preempted requests go back to the front); KV budget "
        f"{args.budget_seqs * args.max_len:,} token slots = {args.budget_seqs} sequences of the {args.max_len}-token "
        f"context. Paged admission keeps a {wm:.0%} watermark of free blocks (the operating point below); when the "
        f"pool runs out the newest sequence is preempted and later recomputed. Figures: mean [95% Student-t CI over "
        f"the {len(args.seeds)} workloads].",
        "",
        "Length distributions (realised mean / std over the workloads):",
        "",
    ]
    for d in dists:
        lens = np.array([[r["mean_len"], r["std_len"]] for r in rows if r["dist"] == d and r["scheme"] == "contiguous-max"])
        lines.append(f"- `{d}`: {DIST_TEXT[d]}; realised mean {lens[:, 0].mean():.0f}, std {lens[:, 1].mean():.0f}.")
    lines += [
        "",
        "Compute and time model (inference/memory_sim.py):",
        "",
        "- **Compute unit: one token-forward pass.** A request of prompt p and final length L costs p prefill "
        "token-forwards and L - p decode token-forwards; a preempted request re-admitted at length c costs c more "
        "(its prompt and generated tokens are recomputed; the generated tokens are kept). **Goodput per compute** = "
        "generated tokens / token-forwards.",
        f"- **Time unit: one decode step of the whole running batch**, whatever its size (the memory-bound regime). "
        f"Each scheduler iteration admits requests, prefills them, then runs one decode step, and lasts "
        f"1 + (tokens prefilled) / {args.prefill_rate:g}: {args.prefill_rate:g} prompt tokens cost one decode step "
        f"(an assumption, `--prefill_rate`), prefills are not overlapped with decoding. **Goodput per time** = "
        f"generated tokens / time. Memory, concurrency and goodput are averaged over the iterations while requests "
        f"wait, after {args.warmup} warm-up iterations (memory under pressure).",
        "- **Latency** over every request of a workload: time to first token (TTFT) = end of the iteration whose "
        "decode step writes its first token; every request arrives at time 0, so under this saturated queue TTFT is "
        "queueing for the backlog and tracks throughput. Time per output token (TPOT) = (finish - TTFT) / "
        "(generated - 1): 1.0 is one decode step per token; above it come the prefills that stall the batch and, for "
        "a preempted request, its wait and recomputation. Per workload: mean, p50, p95 over requests; then "
        "mean [CI] over workloads.",
        "",
        "**Primary metric: goodput per time, paged-16 / contiguous-max** (paired by workload), per distribution.",
        "",
        f"**Operating point.** The admission watermark is swept for paged-16 below (recompute share, concurrency, "
        f"goodput and latency against it, in every distribution). The default is {wm:.0%}"
        + (", the swept value with the highest mean goodput per time on the seed's distribution"
           if any(b["dist"] == "lognormal" and b["best_minus_default"] is None for b in best) else "")
        + "; per distribution: " + _wm_why(best, wm) + " vLLM's 1% is a row of each sweep.",
        "",
        "## Verdicts on the seed's claims",
        "",
        f"Supported when the interval lies inside the claimed range; intervals here are Student-t at "
        f"{verdict[0]['confidence']:.2%} (Bonferroni over the {len(verdict)} claim x distribution verdicts).",
        "",
        "| distribution | claim | mean [corrected CI] | verdict |",
        "|---|---|---|---|",
    ]
    for v in verdict:
        lines.append(f"| {v['dist']} | {v['claim']} | {v['mean']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] | "
                     f"{v['verdict']} |")
    lines += ["", "Primary metric (95% CI):", ""]
    for d in dists:
        p = next(s for s in main_rows(summary, d) if s["scheme"] == "paged-16")
        lines.append(f"- `{d}`: goodput per time paged-16 / contiguous-max {_ci(p['goodput_x_contiguous_max'], '.2f')}; "
                     f"/ contiguous-exact {_ci(p['goodput_x_contiguous_exact'], '.2f')}.")
    for d in dists:
        lines += ["", f"## Distribution `{d}`", "",
                  "Memory (% of the budget; *reserved* = for tokens not generated yet; *internal* = slots that will "
                  "never hold a token; *external* = free memory the next request cannot use):", "",
                  "| layout | concurrent sequences | x contiguous-max | wasted % | reserved % | internal % | external % | "
                  "preemptions / request | recomputed tokens, % of generated |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in main_rows(summary, d):
            lines.append(
                f"| {s['scheme']} | {_ci(s['concurrent'])} | {_ci(s['x_contiguous_max'], '.2f')} | {_ci(s['waste_pct'])} | "
                f"{_ci(s['reserved_pct'])} | {_ci(s['internal_pct'])} | {_ci(s['external_pct'])} | "
                f"{_ci(s['preempt_per_req'], '.2f')} | {_ci(s['recomputed_pct'])} |")
        lines += ["", "Goodput and latency (time in decode steps):", "",
                  "| layout | goodput / time | x contiguous-max | goodput / compute | recompute, % of forwards | "
                  "TTFT mean | TTFT p50 | TTFT p95 | TPOT mean | TPOT p50 | TPOT p95 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in main_rows(summary, d):
            lines.append(
                f"| {s['scheme']} | {_ci(s['goodput_time'])} | {_ci(s['goodput_x_contiguous_max'], '.2f')} | "
                f"{_ci(s['goodput_compute'], '.3f')} | {_ci(s['recompute_share_pct'])} | {_ci(s['ttft_mean'], '.0f')} | "
                f"{_ci(s['ttft_p50'], '.0f')} | {_ci(s['ttft_p95'], '.0f')} | {_ci(s['tpot_mean'], '.3f')} | "
                f"{_ci(s['tpot_p50'], '.3f')} | {_ci(s['tpot_p95'], '.3f')} |")
        b = next(x for x in best if x["dist"] == d)
        if b["best_minus_default"] is None:
            cmp = f"the default {b['default']:.1%} has the highest mean goodput per time of the sweep"
        else:
            cmp = (f"highest mean goodput per time at {b['best']:.1%}; its goodput minus the default "
                   f"{b['default']:.1%}'s: {_ci(b['best_minus_default'], '.2f')} tokens per decode step")
        lines += ["", f"Admission watermark (paged-16), the operating point: free blocks kept back for growth trade "
                  f"concurrency for fewer preemptions; {cmp}.", "",
                  "| watermark | concurrent sequences | recompute, % of forwards | preemptions / request | "
                  "goodput / time | goodput / compute | TTFT p50 | TPOT mean | TPOT p95 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in sweep_rows(summary, d):
            lines.append(f"| {s['watermark']:.1%} | {_ci(s['concurrent'])} | {_ci(s['recompute_share_pct'])} | "
                         f"{_ci(s['preempt_per_req'], '.2f')} | {_ci(s['goodput_time'])} | "
                         f"{_ci(s['goodput_compute'], '.3f')} | {_ci(s['ttft_p50'], '.0f')} | "
                         f"{_ci(s['tpot_mean'], '.3f')} | {_ci(s['tpot_p95'], '.3f')} |")
    lines += ["", "![watermark trade-off](kv_watermark.png)", ""]
    if tput:
        lines += ["## Decode throughput of our decoder at the batch each layout fits", "",
                  f"{'smoke' if args.smoke else 'lm_tiny-shaped'} model (benchmarks/decode.py model_config), float32, "
                  f"CPU ({args.machine}); lengths of the seed's distribution scaled by 1/{args.scale}: "
                  f"context {tput['context']}, budget {tput['budget_tokens']} token slots; batch = "
                  f"{args.budget_seqs} x (concurrency / contiguous-max concurrency) from the `lognormal` table; "
                  f"{args.steps} decode steps in one jitted scan, median of {args.repeats} interleaved rounds, one "
                  f"process. Rows are filled to lengths drawn from the scaled workload. The contiguous cache attends "
                  f"over its whole context every step; the paged cache's blocked attention stops after the longest "
                  f"row's last 32-token chunk. This measures the real cost of a larger batch that the simulator's time "
                  f"unit (one decode step, whatever the batch) leaves out.", "",
                  "| layout | batch | decode tokens/s | x contiguous-max |", "|---|---|---|---|"]
        for r in tput["rows"]:
            lines.append(f"| {r['scheme']} | {r['batch']} | {r['tok_s']:,.0f} | {r['x_contiguous_max']:.2f} |")
        lines.append("")
    lines += ["![waste, concurrency and goodput per distribution](kv_fragmentation.png)", ""]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(stats: list[dict]):
    return [[s["mean"] - s["ci_low"] for s in stats], [s["ci_high"] - s["mean"] for s in stats]]


def plot(summary: list[dict], path: str) -> None:
    """Per distribution: the waste split per layout, and goodput per time with its CI."""
    plt = _plt()
    dists = list(dict.fromkeys(s["dist"] for s in summary))
    fig, axes = plt.subplots(2, len(dists), figsize=(4.2 * len(dists), 7), squeeze=False)
    for j, d in enumerate(dists):
        main = main_rows(summary, d)
        names = [s["scheme"] for s in main]
        bottom = np.zeros(len(main))
        for key, label in (("reserved_pct", "reserved (future tokens)"), ("internal_pct", "internal"),
                           ("external_pct", "external")):
            vals = np.array([s[key]["mean"] for s in main])
            axes[0, j].bar(names, vals, bottom=bottom, label=label)
            bottom += vals
        axes[0, j].set_title(d)
        axes[0, j].set_ylabel("% of KV budget wasted")
        g = [s["goodput_time"] for s in main]
        axes[1, j].bar(names, [x["mean"] for x in g], yerr=_err(g), capsize=3)
        axes[1, j].set_ylabel("goodput (tokens / decode step)")
        for a in axes[:, j]:
            a.tick_params(axis="x", rotation=35)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_watermark(summary: list[dict], path: str) -> None:
    """The watermark trade-off: recompute, concurrency, goodput and TPOT against the watermark, per distribution."""
    plt = _plt()
    dists = list(dict.fromkeys(s["dist"] for s in summary))
    panels = (("recompute_share_pct", "recompute, % of token-forwards"), ("concurrent", "concurrent sequences"),
              ("goodput_time", "goodput (tokens / decode step)"), ("tpot_p95", "TPOT p95 (decode steps)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    wm = next(s["watermark"] for s in summary if s["scheme"] == "paged-8")
    for a in axes:
        a.axvline(100 * wm, color="grey", linestyle="--", linewidth=1, label=f"default {wm:.0%}")
    for d in dists:
        sw = sweep_rows(summary, d)
        x = [100 * s["watermark"] for s in sw]
        for a, (key, label) in zip(axes, panels):
            st = [s[key] for s in sw]
            a.errorbar(x, [v["mean"] for v in st], yerr=_err(st), marker="o", capsize=2, label=d)
            a.set_xscale("symlog", linthresh=0.5)
            a.set_xlabel("admission watermark (% of blocks)")
            a.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _machine() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores, shared with a niced background job"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kv_fragmentation")
    p.add_argument("--smoke", action="store_true", help="tiny workloads, seconds")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--dists", default=",".join(DISTRIBUTIONS))
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--budget_seqs", type=int, default=16)
    p.add_argument("--max_len", type=int, default=4096,
                   help="model context: contiguous-max reserves this per sequence (lengths stop at 4000)")
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--watermark", type=float, default=0.02,
                   help="paged admission watermark (vLLM: 1%%); 2%% had the highest goodput on the seed's lengths")
    p.add_argument("--sweep", default="0,0.005,0.01,0.02,0.03,0.05,0.1", help="watermarks swept for paged-16")
    p.add_argument("--prefill_rate", type=float, default=512.0, help="prompt tokens prefilled per decode-step time")
    p.add_argument("--scale", type=int, default=8, help="throughput part: lengths / scale")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no_throughput", action="store_true")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    args.command = " ".join(["python -m benchmarks.kv_fragmentation", *(sys.argv[1:] if argv is None else argv)])
    if args.smoke:
        args.seeds, args.requests, args.budget_seqs, args.warmup, args.max_len = "0,1", 60, 4, 10, 512
        args.sweep, args.scale, args.steps, args.repeats = "0,0.05", 32, 2, 1
    args.seeds = [int(s) for s in args.seeds.split(",")]
    dists = [d for d in args.dists.split(",") if d]
    for d in dists:
        if d not in DISTRIBUTIONS:
            p.error(f"--dists: {d!r} is not one of {DISTRIBUTIONS}")
    sweep = [float(w) for w in args.sweep.split(",") if w]
    if args.watermark not in sweep:
        sweep.append(args.watermark)
    args.machine = _machine()

    t0, c0 = time.perf_counter(), time.process_time()
    rows = run_simulations(args.seeds, args.requests, args.budget_seqs * args.max_len, args.max_len,
                           args.warmup, args.watermark, sweep, dists, args.prefill_rate)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    summary = summarize_rows(rows)
    verdict = verdicts(rows, dists)
    best = [best_watermark(rows, summary, d) for d in dists]
    tput = None
    if not args.no_throughput and "lognormal" in dists:
        tput = throughput(summary, args.budget_seqs, args.scale, args.steps, args.repeats, args.smoke)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"command": args.command, "machine": args.machine, "simulation_seconds": elapsed,
                   "simulation_cpu_seconds": cpu,
                   "primary_metric": "goodput_time paged-16 / contiguous-max (goodput_x_contiguous_max)",
                   "verdicts": verdict, "best_watermark": best, "rows": rows, "summary": summary,
                   "throughput": tput}, f, indent=1)
    report = markdown(summary, tput, args, rows, verdict, best, elapsed, cpu)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report)
    plot(summary, os.path.join(args.out, "kv_fragmentation.png"))
    plot_watermark(summary, os.path.join(args.out, "kv_watermark.png"))
    print(report)
    return {"summary": summary, "throughput": tput, "verdicts": verdict, "rows": rows}


if __name__ == "__main__":
    main()
