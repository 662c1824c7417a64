"""The GPU checks of issue 19 as one run: kernel tests compiled, then timings, most important first.

    python -m benchmarks.gpu_suite --out DIR            # on the GPU machine (benchmarks/gpu_kernels.sh calls it)
    python -m benchmarks.gpu_suite --smoke --out DIR    # here, on CPU: tiny sizes, interpret-mode kernels, ~2 min

Stages, in this order, each in its own process under its own time cap (so a
hang, a crash or an out-of-memory in one leaves the others and frees the
GPU), each writing its figures to DIR/stage_<name>.json as it goes (a stage
cut short keeps what it measured):
1. tests:  every project package imported with DeprecationWarning as an
   error, then the kernel tests (flash attention fwd+bwd, grouped matmul,
   paged attention, the attention dispatch) run by pytest on the GPU, i.e.
   compiled (Triton), not interpreted, against their oracles;
2. flash:  flash attention fwd and fwd+bwd, bf16, 16 heads of 128, at
   n = 8K, 16K, 2K, 32K (B = clamp(32K / n, 2, 8)), full, causal and a causal
   1K sliding window: ours (Pallas) against jax.nn.dot_product_attention
   with cuDNN and XLA, TFLOP/s and the share of the bf16 matmul peak
   measured in the same process (an 8192^3 product);
3. train:  the LM train step (trainer/loop.py, AdamW, bf16 compute) at the
   GPT-2-small shape (12 layers, width 768, 12 heads, seq 1024, byte
   vocabulary) with attention_impl pallas, cudnn and xla: tokens/s and MFU
   against the measured peak;
4. moe:    our grouped matmul (kernels/gmm) against jax.lax.ragged_dot at E =
   8, 64 experts, k = 2, D = 1024, F = 4096, 32K tokens (fwd+bwd), with a plain
   matmul of the same FLOPs as the ceiling; the dropless MoE layer
   (gmm_impl pallas and ragged_dot) against a dense FFN of equal active FLOPs;
5. decode: paged decode (the Pallas kernel, and the blocked jnp path)
   against the contiguous KV cache at 64 rows, context 4K, 16-token blocks.
At the end it prints one table and writes DIR/gpu_suite.json (everything)
and DIR/gpu_suite.md (the table). DIR defaults to $OUT when set, else
./gpu_suite_out. The caps sum to under 8 minutes (`--budget`, `--caps`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("tests", "flash", "train", "moe", "decode")
CAPS = {"tests": 110, "flash": 110, "train": 125, "moe": 55, "decode": 60}  # seconds, on the H200
PACKAGES = ("nn", "data", "sharding", "kernels", "attention", "models", "moe", "clip", "tasks", "trainer",
            "inference", "experiments", "train")
KERNEL_TESTS = ("tests/test_flash_attention.py", "tests/test_gmm.py", "tests/test_paged_attention_kernel.py",
                "tests/test_attention_dispatch.py")


def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(
            peak_n=256, peak_repeats=2,
            flash=dict(lengths=(128,), heads=2, head_dim=16, window=32, batch=1, repeats=1),
            train=dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32, batch=4, steps=2, repeats=1),
            moe=dict(tokens=256, d_model=32, d_ff=64, experts=(4, 8), k=2, repeats=1),
            decode=dict(batch=4, context=128, block=16, steps=2, repeats=1, d_model=32, n_layers=2, n_heads=2,
                        d_ff=64),
            tests_k="bad_inputs or length_0 or triton_lowering_forward_and_backward",
        )
    return dict(
        peak_n=8192, peak_repeats=10,
        flash=dict(lengths=(8192, 16384, 2048, 32768), heads=16, head_dim=128, window=1024, batch=0, repeats=5),
        train=dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, seq_len=1024, batch=64, steps=5, repeats=3),
        moe=dict(tokens=32768, d_model=1024, d_ff=4096, experts=(8, 64), k=2, repeats=5),
        decode=dict(batch=64, context=4096, block=16, steps=16, repeats=3, d_model=1024, n_layers=4, n_heads=8,
                    d_ff=4096),
        tests_k="",
    )


# ----------------------------------------------------------------------------------------------------------
# In a stage's own process
# ----------------------------------------------------------------------------------------------------------
class Recorder:
    """The stage's figures, rewritten to its JSON file after every row, so a killed stage keeps them."""

    def __init__(self, path: str, stage: str):
        self.path, self.data, self.t0 = path, {"stage": stage, "status": "running", "rows": []}, time.time()
        self.save()

    def env(self):
        import jax

        d = jax.devices()[0]
        self.data["env"] = {"jax": jax.__version__, "backend": jax.default_backend(), "device": d.device_kind,
                            "python": sys.version.split()[0]}
        self.save()

    def row(self, r: dict):
        r = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
        self.data["rows"].append(r)
        print(json.dumps(r), flush=True)
        self.save()

    def save(self, **kw):
        self.data.update(kw, wall_s=round(time.time() - self.t0, 1))
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


def matmul_peak_tflops(n: int, repeats: int) -> float:
    """bf16 [n, n] @ [n, n] TFLOP/s: the median of `repeats` after a warm-up, random data."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32).astype(jnp.bfloat16) for i in (0, 1))
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / float(np.median(times)) / 1e12


def stage_tests(rec: Recorder, sz: dict, smoke: bool, cap: float) -> None:
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for p in PACKAGES:
            try:
                importlib.import_module(p)
                rec.row({"check": f"import {p}", "ok": True})
            except Exception as e:  # noqa: BLE001  recorded, and the tests still run
                rec.row({"check": f"import {p}", "ok": False, "error": error_text(e)})
    env = dict(os.environ)
    if not smoke:
        # Compiled on the GPU; float32 oracles at 1e-5 need full-precision XLA matmuls (not TF32).
        env.update(JAX_PLATFORMS="cuda", JAX_DEFAULT_MATMUL_PRECISION="highest")
    # -v: one line per test as it finishes, so a run cut at its timeout still says what passed.
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *KERNEL_TESTS]
    if sz["tests_k"]:
        cmd += ["-k", sz["tests_k"]]
    t = time.time()
    limit = max(cap - (t - START) - 10, 10)
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        out, rc = text(e.stdout) + text(e.stderr) + f"\n[cut at {limit:.0f} s]", "timeout"
    lines = out.splitlines()
    counts = {k: sum(1 for ln in lines if f" {k}" in ln and "::" in ln) for k in ("PASSED", "FAILED", "ERROR")}
    summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and (
        "passed" in ln or "failed" in ln or "error" in ln)), "")
    if not summary or rc == "timeout":
        summary = f"{counts['PASSED']} passed, {counts['FAILED']} failed, {counts['ERROR']} errors" + (
            f" before the cut at {limit:.0f} s" if rc == "timeout" else "")
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR")) or ("::" in ln and (" FAILED" in ln or " ERROR" in ln))]
    rec.row({"check": "kernel tests (pytest, compiled on the GPU)" if not smoke else "kernel tests (pytest, smoke)",
             "ok": rc == 0, "rc": rc, "summary": summary, "failed": failed[:20], "seconds": round(time.time() - t, 1)})
    rec.data["pytest_tail"] = out[-4000:]
    print(out[-3000:], flush=True)


def stage_flash(rec: Recorder, sz: dict, smoke: bool, cap: float) -> None:
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.flash_attention import measure

    c = sz["flash"]
    peak = matmul_peak_tflops(sz["peak_n"], sz["peak_repeats"])
    rec.save(peak_tflops=peak)
    masks = (("full", False, None), ("causal", True, None), (f"window{c['window']}", True, (c["window"], 0)))
    for n in c["lengths"]:
        B = c["batch"] or int(np.clip(32768 // n, 2, 8))
        for name, causal, window in masks:
            impls = ["pallas", "cudnn", "xla"]
            # XLA materializes the [B, N, n, n] float32 scores (and their gradient): skip it where that
            # alone would not fit, rather than spend the cap on compiling an out-of-memory.
            if not smoke and 3 * 4 * B * c["heads"] * n * n > 100e9:
                impls.remove("xla")
            base = {}

            def on_row(r, name=name):
                r["mask"] = name
                if "fwd_bwd_tflops" in r:
                    r["fwd_bwd_pct_peak"] = 100 * r["fwd_bwd_tflops"] / peak
                    r["fwd_pct_peak"] = 100 * r["fwd_tflops"] / peak
                    base[r["impl"]] = r
                    if r["impl"] != "pallas" and "pallas" in base:
                        r["pallas_speed_vs_this"] = r["fwd_bwd_s"] / base["pallas"]["fwd_bwd_s"]
                        r["pallas_fwd_speed_vs_this"] = r["fwd_s"] / base["pallas"]["fwd_s"]
                rec.row(r)

            rows = measure(n, B, c["heads"], c["head_dim"], causal, impls, c["repeats"], jnp.bfloat16,
                           window=window, on_row=on_row)
            # The pallas row went out before a baseline ran; its difference to the first baseline joins it now.
            diff = next((r["max_abs_diff_vs_baseline"] for r in rows if "max_abs_diff_vs_baseline" in r), None)
            if diff is not None:
                for r in rec.data["rows"]:
                    if (r.get("n"), r.get("mask"), r.get("impl")) == (n, name, "pallas"):
                        r["max_abs_diff_vs_baseline"] = diff
                rec.save()


def stage_train(rec: Recorder, sz: dict, smoke: bool, cap: float) -> None:
    import gc

    import numpy as np

    from benchmarks.train_step import Ours
    from experiments.configs.defaults import base_config
    from models.flops import param_count, train_flops_per_token

    c = sz["train"]
    peak = matmul_peak_tflops(sz["peak_n"], sz["peak_repeats"])
    rec.save(peak_tflops=peak)
    for impl in ("pallas", "cudnn", "xla"):
        cfg = base_config()
        cfg.model.update(d_model=c["d_model"], n_layers=c["n_layers"], n_heads=c["n_heads"],
                         n_kv_heads=c["n_heads"], d_ff=c["d_ff"], dtype="bfloat16", attention_impl=impl)
        cfg.data.update(seq_len=c["seq_len"], batch_size=c["batch"])
        tokens = c["seq_len"] * c["batch"]
        row = {"impl": impl, "params": param_count(cfg.model), "batch": c["batch"], "seq_len": c["seq_len"],
               "tokens_per_step": tokens}
        try:
            t = time.perf_counter()
            ours = Ours(cfg)
            ours.run(2)  # compile + warm
            row["compile_and_warm_s"] = time.perf_counter() - t
            times = []
            for _ in range(c["repeats"]):
                t = time.perf_counter()
                ours.run(c["steps"])
                times.append((time.perf_counter() - t) / c["steps"])
            step = float(np.median(times))
            fpt = train_flops_per_token(cfg.model, c["seq_len"])
            row.update(step_ms=1e3 * step, tokens_per_s=tokens / step, model_tflops=fpt * tokens / step / 1e12,
                       mfu=fpt * tokens / step / (peak * 1e12))
            del ours
        except Exception as e:  # noqa: BLE001  one implementation failing (cuDNN off GPU, memory) leaves the others
            row["error"] = error_text(e)
        gc.collect()
        rec.row(row)


def stage_moe(rec: Recorder, sz: dict, smoke: bool, cap: float) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.attention import median_time
    from benchmarks.moe import fwd_bwd, layer_cfg
    from kernels.gmm import gmm

    c = sz["moe"]
    D, F, k, X = c["d_model"], c["d_ff"], c["k"], c["tokens"]
    M = X * k
    rng = np.random.default_rng(0)
    for E in c["experts"]:
        gs = jnp.asarray(rng.multinomial(M, np.full(E, 1.0 / E)), jnp.int32)  # a router's uneven split
        lhs, dout = (jax.random.normal(jax.random.key(i), s, jnp.float32).astype(jnp.bfloat16)
                     for i, s in ((0, (M, D)), (2, (M, F))))
        rhs = (jax.random.normal(jax.random.key(1), (E, D, F), jnp.float32) * D**-0.5).astype(jnp.bfloat16)
        impls = {"pallas_gmm": lambda l, r, g: gmm(l, r, g),
                 "ragged_dot": lambda l, r, g: jax.lax.ragged_dot(l, r, g),
                 "dense_matmul": lambda l, r, g: l @ r[0]}  # the same FLOPs with no grouping: the ceiling
        outs = {}
        for name, fn in impls.items():
            row = {"part": "grouped_matmul", "E": E, "M": M, "D": D, "F": F, "impl": name}
            try:
                fwd = jax.jit(fn)
                fb = jax.jit(lambda l, r, g, d, fn=fn: jax.vjp(lambda l, r: fn(l, r, g), l, r)[1](d))
                outs[name] = jax.block_until_ready(fwd(lhs, rhs, gs))
                row["fwd_s"] = median_time(fwd, (lhs, rhs, gs), c["repeats"])
                row["fwd_bwd_s"] = median_time(fb, (lhs, rhs, gs, dout), c["repeats"])
                row["fwd_tflops"] = 2 * M * D * F / row["fwd_s"] / 1e12
                row["fwd_bwd_tflops"] = 6 * M * D * F / row["fwd_bwd_s"] / 1e12
            except Exception as e:  # noqa: BLE001
                row["error"] = error_text(e)
            rec.row(row)
        if "pallas_gmm" in outs and "ragged_dot" in outs:
            diff = jnp.max(jnp.abs(outs["pallas_gmm"].astype(jnp.float32) - outs["ragged_dot"].astype(jnp.float32)))
            rec.row({"part": "grouped_matmul", "E": E, "check": "max |pallas - ragged_dot| (fwd, bf16)",
                     "value": float(diff)})
    # The layer: dense FFN of width k F against E experts of width F each, top-k (equal active FLOPs).
    T = min(X, 1024)
    x = jax.random.normal(jax.random.key(3), (max(X // T, 1), T, D), jnp.float32).astype(jnp.bfloat16)
    dense = None
    for name, ffn, E, gmm_impl in [("dense FFN", "mlp", c["experts"][0], "pallas")] + [
            (f"MoE E={E} {g}", "moe", E, g) for E in c["experts"] for g in ("pallas", "ragged_dot")]:
        cfg = layer_cfg(ffn, D, k * F, E, k, gmm=gmm_impl)
        cfg.dtype = "bfloat16"
        row = {"part": "layer", "variant": name, "tokens": int(x.shape[0] * x.shape[1])}
        try:
            fn, args = fwd_bwd(cfg, x)
            t = median_time(fn, args, c["repeats"])  # each on its own: a stage cut at its cap keeps the finished
            dense = t if ffn == "mlp" else dense
            row.update(fwd_bwd_ms=1e3 * t, vs_dense=t / dense if dense else None)
        except Exception as e:  # noqa: BLE001
            row["error"] = error_text(e)
        rec.row(row)


def stage_decode(rec: Recorder, sz: dict, smoke: bool, cap: float) -> None:
    from flax import nnx

    from benchmarks.decode import decode_rates
    from experiments.configs.defaults import base_config
    from models.lm import DecoderLM

    c = sz["decode"]
    cfg = base_config().model
    cfg.update(d_model=c["d_model"], n_layers=c["n_layers"], n_heads=c["n_heads"], n_kv_heads=c["n_heads"],
               d_ff=c["d_ff"], dtype="bfloat16")
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    r = decode_rates(model, c["batch"], c["context"], [c["block"]], c["steps"], c["repeats"],
                     impls=("pallas", "blocked"))
    r.update(d_model=c["d_model"], n_layers=c["n_layers"], n_heads=c["n_heads"])
    rec.row(r)


STAGE_FNS = {"tests": stage_tests, "flash": stage_flash, "train": stage_train, "moe": stage_moe,
             "decode": stage_decode}


START = time.time()


def run_stage(name: str, work: str, smoke: bool, cap: float) -> None:
    # Set before JAX starts: the test stage's pytest child needs the GPU memory this process would otherwise
    # preallocate; the benchmarks may use more of the card than JAX's default 75%.
    if name == "tests":
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    rec = Recorder(os.path.join(work, f"stage_{name}.json"), name)
    try:
        rec.env()
        STAGE_FNS[name](rec, sizes(smoke), smoke, cap)
        rec.save(status="ok")
    except BaseException as e:  # noqa: BLE001  recorded for the table; the parent carries on
        rec.save(status="error", error=error_text(e))
        raise


# ----------------------------------------------------------------------------------------------------------
# The parent: no JAX here, so each stage's process has the whole GPU
# ----------------------------------------------------------------------------------------------------------
def _f(v, fmt=".3g"):
    return "" if v is None else format(v, fmt)


def table(results: dict) -> str:
    L = []
    env = next((s["env"] for s in results["stages"].values() if "env" in s), {})
    L.append(f"device: {env.get('device', '?')} ({env.get('backend', '?')}), jax {env.get('jax', '?')}, "
             f"python {env.get('python', '?')}, smoke={results['smoke']}, total {results['wall_s']:.0f} s")
    for name, s in results["stages"].items():
        try:
            L += _stage_table(name, s)
        except Exception as e:  # noqa: BLE001  a rendering slip must not lose the run's table; the JSON has it all
            L.append(f"\n## {name}: (table failed: {error_text(e)}; see gpu_suite.json)")
    return "\n".join(L)


def _stage_table(name: str, s: dict) -> list[str]:
    L = []
    head = f"\n## {name}: {s.get('status')} in {s.get('wall_s', 0):.0f} s"
    if s.get("peak_tflops"):
        head += f"; measured bf16 matmul peak {s['peak_tflops']:.0f} TFLOP/s"
    if s.get("error"):
        head += f"; {s['error']}"
    L.append(head)
    rows = s.get("rows", [])
    if name == "tests":
        for r in rows:
            if r.get("check", "").startswith("import") and r["ok"]:
                continue
            L.append(f"- {r['check']}: {'ok' if r['ok'] else 'FAILED'} {r.get('summary', r.get('error', ''))}"
                     + "".join(f"\n  - {f}" for f in r.get("failed", [])))
        n_imp = sum(1 for r in rows if r.get("check", "").startswith("import") and r["ok"])
        L.append(f"- imports without deprecation warnings: {n_imp}/{len(PACKAGES)}")
    elif name == "flash":
        L += ["| n | B | mask | impl | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd+bwd % peak | ours fwd+bwd speed / this "
              "| ours fwd speed / this | max abs diff |", "|" + "---|" * 10]
        for r in rows:
            if "error" in r:
                L.append(f"| {r['n']} | {r['B']} | {r.get('mask')} | {r['impl']} | failed: {r['error'][:80]} "
                         "| | | | | |")
                continue
            L.append(f"| {r['n']} | {r['B']} | {r.get('mask')} | {r['impl']} | {_f(r['fwd_tflops'])} | "
                     f"{_f(r['fwd_bwd_tflops'])} | {_f(r.get('fwd_bwd_pct_peak'), '.0f')} | "
                     f"{_f(r.get('pallas_speed_vs_this'), '.2f')} | {_f(r.get('pallas_fwd_speed_vs_this'), '.2f')}"
                     f" | {_f(r.get('max_abs_diff_vs_baseline'))} |")
    elif name == "train":
        L += ["| attention_impl | params | batch x seq | step ms | tokens/s | model TFLOP/s | MFU |",
              "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                L.append(f"| {r['impl']} | {r['params']:,} | {r['batch']} x {r['seq_len']} | failed: "
                         f"{r['error'][:100]} | | | |")
                continue
            L.append(f"| {r['impl']} | {r['params']:,} | {r['batch']} x {r['seq_len']} | {r['step_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['model_tflops']:.3g} | {100 * r['mfu']:.1f}% |")
    elif name == "moe":
        L += ["| E | grouped matmul [M, D] x [E, D, F] | impl | fwd TFLOP/s | fwd+bwd TFLOP/s |", "|---|---|---|---|---|"]
        for r in rows:
            if r.get("part") == "grouped_matmul" and "impl" in r:
                shape = f"M={r['M']}, D={r['D']}, F={r['F']}"
                if "error" in r:
                    L.append(f"| {r['E']} | {shape} | {r['impl']} | failed: {r['error'][:80]} | |")
                else:
                    L.append(f"| {r['E']} | {shape} | {r['impl']} | {_f(r['fwd_tflops'])} | "
                             f"{_f(r['fwd_bwd_tflops'])} |")
            elif r.get("part") == "grouped_matmul":
                L.append(f"| {r['E']} | {r['check']} | {_f(r['value'])} | | |")
        L += ["", "| layer (fwd+bwd, bf16) | tokens | ms | vs dense FFN |", "|---|---|---|---|"]
        for r in rows:
            if r.get("part") == "layer":
                if "error" in r:
                    L.append(f"| {r.get('variant', '')} | failed: {r['error'][:100]} | | |")
                else:
                    L.append(f"| {r['variant']} | {r['tokens']} | {r['fwd_bwd_ms']:.2f} | "
                             f"{_f(r.get('vs_dense'), '.2f')}x |")
    elif name == "decode":
        for r in rows:
            L.append(f"- batch {r['batch']}, context {r['context']}, {r['steps']} steps, model d={r['d_model']} "
                     f"x {r['n_layers']} layers: contiguous {r['contiguous_tok_s']:,.0f} tok/s")
            for k, v in r.items():
                if k.endswith("_ratio"):
                    L.append(f"  - {k[:-6]}: {r[k[:-6] + '_tok_s']:,.0f} tok/s = {v:.2f}x contiguous")
    return L


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (interpret-mode kernels)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu_suite_out"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--budget", type=float, default=460, help="seconds for all stages together")
    p.add_argument("--caps", default="", help="per-stage caps in seconds, e.g. tests=60,flash=200")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    p.add_argument("--work", help=argparse.SUPPRESS)   # internal: the stages' own JSON files
    p.add_argument("--cap", type=float, default=600, help=argparse.SUPPRESS)  # internal: the stage's cap
    a = p.parse_args(argv)
    if a.stage:
        run_stage(a.stage, a.work, a.smoke, a.cap)
        return {}
    os.makedirs(a.out, exist_ok=True)
    # The stages' files stay out of --out, which then holds only gpu_suite.json and gpu_suite.md (the device
    # tool brings back at most 8 files from $OUT).
    work = tempfile.mkdtemp(prefix="gpu_suite_stages_")
    caps, given = dict(CAPS), set()
    for item in filter(None, a.caps.split(",")):
        k, v = item.split("=")
        caps[k] = float(v)
        given.add(k)
    stages = [s for s in a.stages.split(",") if s]
    for s in stages:
        if s not in STAGE_FNS:
            raise SystemExit(f"error: --stages: unknown stage {s!r}; choose from {','.join(STAGES)}")
    t0 = time.time()
    results = {"smoke": a.smoke, "stages": {}, "caps_s": caps}
    for s in stages:
        left = a.budget - (time.time() - t0)
        # On the GPU each stage gets its cap within what is left of the budget; the CPU smoke is slower, and
        # its caps only guard against a hang.
        cap = max(caps[s], 600) if a.smoke and s not in given else min(caps[s], left)
        path = os.path.join(work, f"stage_{s}.json")
        print(f"\n=== stage {s} (cap {cap:.0f} s)", flush=True)
        if cap < 5:
            results["stages"][s] = {"stage": s, "status": "skipped: the time budget is spent"}
            continue
        cmd = [sys.executable, "-m", "benchmarks.gpu_suite", "--stage", s, "--work", work, "--cap", str(cap)] + (
            ["--smoke"] if a.smoke else [])
        status = None
        # Its own process group, so a stage cut at its cap takes its children (pytest) with it and the next
        # stage finds the GPU free.
        t_stage = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
            status = None if rc == 0 else f"error (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"cut at its cap of {cap:.0f} s (figures so far kept)"
        try:
            with open(path, encoding="utf-8") as f:
                got = json.load(f)
        except (OSError, ValueError):
            got = {"stage": s, "rows": []}
        if status:
            got["status"] = status if got.get("status") != "error" else f"error: {got.get('error', '')}"
        got["wall_s"] = round(time.time() - t_stage, 1)
        results["stages"][s] = got
        results["wall_s"] = time.time() - t0
        with open(os.path.join(a.out, "gpu_suite.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    results["wall_s"] = time.time() - t0
    text = table(results)
    with open(os.path.join(a.out, "gpu_suite.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(a.out, "gpu_suite.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print("\n" + text, flush=True)
    return results


if __name__ == "__main__":
    main()
