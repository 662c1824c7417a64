"""Depth and memory: compile time vs depth (scanned vs unscanned) and planned memory per remat policy.

    python -m benchmarks.scale                      # both parts, ~3-5 min on 2 CPU cores
    python -m benchmarks.scale --depths 4 8 --seq-len 1024   # a quicker look

Part 1, compile time against depth: the train step (forward, backward and
an AdamW update of a DecoderLM) is lowered and compiled for
`n_layers` in --depths, with `model.scan_layers` False (a Python loop: XLA
sees n_layers copies of the block) and True (one scan over stacked
parameters: one copy). Each figure is the CPU time (and the wall time) of
`lower()` plus `compile()` from abstract shapes (nothing is run), after a
warm-up compile and with the persistent compilation cache off, and its
ratio to the scanned model at the smallest depth measured in the same
process. CPU time is the primary figure: on a shared machine the wall time
follows the load.

Part 2, planned memory per remat policy: the same train step at a long
sequence (--seq-len) in the scanned layout, compiled once per
`model.remat` policy; `compiled.memory_analysis()` gives what XLA plans
to allocate: temporaries (activations kept for the backward pass and
workspace) plus arguments and outputs (parameters, optimizer state and the
batch, the same for every policy). Reported with the ratio of the
temporaries to those of remat="none".

Writes results.json and a markdown table to --out (default
experiments/results/scale/) and prints the table.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments.configs.defaults import base_config
from models import DecoderLM
from models.stack import REMAT_POLICIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "scale")


def model_config(n_layers: int, *, scan: bool, remat: str = "none", d_model: int = 64):
    c = copy.deepcopy(base_config().model)
    c.update(vocab_size=256, d_model=d_model, n_heads=4, n_kv_heads=4, d_ff=4 * d_model, n_layers=n_layers,
             scan_layers=scan, remat=remat)
    return c


def lowered_train_step(cfg, batch: int, seq_len: int):
    """`jit(step).lower(...)` of one AdamW train step from abstract parameters (nothing is initialised)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
    params = nnx.to_pure_dict(state)
    tx = optax.adamw(1e-3)
    opt_state = jax.eval_shape(tx.init, params)

    def step(params, opt_state, tokens):
        def loss_fn(p):
            logits, _, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    tokens = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32)
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens)


def compile_seconds(cfg, batch: int, seq_len: int) -> tuple[float, float]:
    """(wall, CPU) seconds of lower + compile; CPU time (this process, all threads) is the steadier on a shared machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    lowered_train_step(cfg, batch, seq_len).compile()
    return time.perf_counter() - t0, time.process_time() - c0


def planned_memory(cfg, batch: int, seq_len: int) -> dict[str, float]:
    mem = lowered_train_step(cfg, batch, seq_len).compile().memory_analysis()
    mib = 1 / 2**20
    temp = mem.temp_size_in_bytes * mib
    args = mem.argument_size_in_bytes * mib
    out = mem.output_size_in_bytes * mib
    alias = mem.alias_size_in_bytes * mib
    return {"temp_mib": temp, "argument_mib": args, "output_mib": out, "alias_mib": alias,
            "total_mib": temp + args + out - alias}


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor()} ({os.cpu_count()} cores), {jax.default_backend()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        return ""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--compile-seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=2048, help="sequence length of the memory part")
    p.add_argument("--memory-layers", type=int, default=8)
    p.add_argument("--memory-d-model", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--policies", nargs="+", default=list(REMAT_POLICIES))
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)  # every compile is a cold one

    compile_seconds(model_config(1, scan=False, d_model=args.d_model), args.batch, args.compile_seq_len)  # warm-up
    compile_rows = []
    for depth in args.depths:
        for scan in (True, False):
            wall, cpu = compile_seconds(model_config(depth, scan=scan, d_model=args.d_model), args.batch,
                                        args.compile_seq_len)
            compile_rows.append({"n_layers": depth, "scan_layers": scan, "compile_s": wall, "compile_cpu_s": cpu})
            print(f"compile n_layers={depth:3d} scan_layers={scan!s:5}: {wall:7.2f} s wall, {cpu:7.2f} s CPU",
                  flush=True)
    base = next(r["compile_cpu_s"] for r in compile_rows if r["scan_layers"] and r["n_layers"] == min(args.depths))
    for r in compile_rows:
        r["cpu_x_scanned_smallest"] = r["compile_cpu_s"] / base

    memory_rows = []
    for policy in args.policies:
        cfg = model_config(args.memory_layers, scan=True, remat=policy, d_model=args.memory_d_model)
        m = planned_memory(cfg, args.batch, args.seq_len)
        memory_rows.append({"remat": policy, **m})
        print(f"memory remat={policy:34s}: temp {m['temp_mib']:9.1f} MiB, total {m['total_mib']:9.1f} MiB", flush=True)
    none_temp = next((r["temp_mib"] for r in memory_rows if r["remat"] == "none"), None)
    for r in memory_rows:
        r["temp_x_none"] = r["temp_mib"] / none_temp if none_temp else None

    meta = {"commit": commit(), "machine": machine(), "date": datetime.date.today().isoformat(),
            "jax": jax.__version__, "command": "python -m benchmarks.scale " + " ".join(argv or []),
            "compile_model": f"d_model={args.d_model}, 4 heads, d_ff={4 * args.d_model}, batch {args.batch}, "
                             f"seq {args.compile_seq_len}, AdamW train step",
            "memory_model": f"{args.memory_layers} layers scanned, d_model={args.memory_d_model}, 4 heads, "
                            f"d_ff={4 * args.memory_d_model}, batch {args.batch}, seq {args.seq_len}, dense attention"}
    lines = [f"Compile time of one train step ({meta['compile_model']}):", "",
             "| n_layers | unscanned CPU s (wall) | scanned CPU s (wall) | unscanned / scanned (CPU) "
             "| scanned x smallest (CPU) |", "|---|---|---|---|---|"]
    for depth in args.depths:
        u = next(r for r in compile_rows if r["n_layers"] == depth and not r["scan_layers"])
        sc = next(r for r in compile_rows if r["n_layers"] == depth and r["scan_layers"])
        lines.append(f"| {depth} | {u['compile_cpu_s']:.2f} ({u['compile_s']:.2f}) | {sc['compile_cpu_s']:.2f} "
                     f"({sc['compile_s']:.2f}) | {u['compile_cpu_s'] / sc['compile_cpu_s']:.1f}x "
                     f"| {sc['cpu_x_scanned_smallest']:.2f} |")
    lines += ["", f"Memory XLA plans for one train step ({meta['memory_model']}):", "",
              "| model.remat | temporaries (MiB) | x none | arguments + outputs - aliased (MiB) | total (MiB) |",
              "|---|---|---|---|---|"]
    for r in memory_rows:
        rest = r["argument_mib"] + r["output_mib"] - r["alias_mib"]
        lines.append(f"| {r['remat']} | {r['temp_mib']:.1f} | {r['temp_x_none']:.2f} | {rest:.1f} | {r['total_mib']:.1f} |")
    table = "\n".join(lines)
    print()
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "compile": compile_rows, "memory": memory_rows}, f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(f"# Depth and memory (benchmarks/scale.py)\n\n- Command: `{meta['command'].strip()}`\n"
                f"- Commit: {meta['commit']}; machine: {meta['machine']}; date: {meta['date']}; jax {meta['jax']}\n\n"
                f"{table}\n")


if __name__ == "__main__":
    main()
