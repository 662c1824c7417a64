"""The kernel benchmarks run on CPU (interpret mode, tiny sizes); their figures are printed, never asserted."""
import subprocess

import pytest

from benchmarks import flash_attention as bench


@pytest.mark.slow
def test_flash_attention_benchmark_runs_in_interpret_mode(capsys):
    rows = bench.main(["--lengths", "40", "--batch", "1", "--heads", "2", "--head-dim", "16", "--repeats", "1",
                       "--impls", "pallas,xla", "--causal", "true"])
    out = capsys.readouterr().out
    assert "| 40 | 1 | True | pallas |" in out and "fwd+bwd TFLOP/s" in out
    ours = [r for r in rows if r["impl"] == "pallas"]
    assert len(ours) == 1 and all(r["max_abs_diff_vs_baseline"] < 3e-2 for r in ours)  # bf16 vs XLA


def test_gpu_script_parses_and_its_wheels_cover_what_the_image_lacks():
    """benchmarks/gpu_kernels.sh is valid bash; every setup.py requirement missing from the GPU image is carried
    (gpu_env downloads it), and jax itself never is (the image's CUDA build is the point)."""
    from packaging.requirements import Requirement

    from benchmarks import gpu_env

    subprocess.run(["bash", "-n", "benchmarks/gpu_kernels.sh"], check=True)
    names = {gpu_env.norm(Requirement(r).name) for r in gpu_env.requirements()}
    assert {"jax", "ml-collections", "tensorboardx"} <= names
    carried = {n for n in names if n not in gpu_env.IMAGE}
    assert "ml-collections" in carried and "jax" not in carried and not carried & gpu_env.NEVER


def test_gpu_suite_table_survives_failed_and_cut_stages():
    """The suite's final table renders every way a stage can end on the GPU (figures, errors, a cut, a skip)."""
    from benchmarks import gpu_suite

    results = {"smoke": False, "wall_s": 400.0, "stages": {
        "tests": {"status": "ok", "env": {"device": "NVIDIA H200", "backend": "gpu", "jax": "0.11.2", "python": "3.12"},
                  "rows": [{"check": "import nn", "ok": True},
                           {"check": "kernel tests", "ok": False, "summary": "1 failed, 9 passed", "failed": ["FAILED x"]}]},
        "flash": {"status": "cut at its cap of 120 s (figures so far kept)", "peak_tflops": 790.0, "rows": [
            {"n": 8192, "B": 4, "mask": "full", "impl": "pallas", "fwd_tflops": 300.0, "fwd_bwd_tflops": 250.0,
             "fwd_bwd_pct_peak": 31.6, "max_abs_diff_vs_baseline": 0.004},
            {"n": 8192, "B": 4, "mask": "full", "impl": "cudnn", "fwd_tflops": 500.0, "fwd_bwd_tflops": 400.0,
             "fwd_bwd_pct_peak": 50.6, "pallas_speed_vs_this": 0.625, "pallas_fwd_speed_vs_this": 0.6},
            {"n": 8192, "B": 4, "mask": "full", "impl": "xla", "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}]},
        "train": {"status": "ok", "rows": [
            {"impl": "pallas", "params": 85_000_000, "batch": 64, "seq_len": 1024, "step_ms": 120.0,
             "tokens_per_s": 546_000.0, "model_tflops": 330.0, "mfu": 0.42},
            {"impl": "cudnn", "params": 85_000_000, "batch": 64, "seq_len": 1024, "error": "ConfigError: x"}]},
        "moe": {"status": "error: RuntimeError: boom", "rows": [
            {"part": "grouped_matmul", "E": 8, "M": 65536, "D": 1024, "F": 4096, "impl": "pallas_gmm",
             "fwd_tflops": 400.0, "fwd_bwd_tflops": 350.0},
            {"part": "grouped_matmul", "E": 8, "check": "max |pallas - ragged_dot|", "value": 0.0},
            {"part": "layer", "variant": "dense FFN", "tokens": 32768, "fwd_bwd_ms": 10.0, "vs_dense": 1.0}]},
        "decode": {"stage": "decode", "status": "skipped: the time budget is spent"}}}
    text = gpu_suite.table(results)
    for want in ("NVIDIA H200 (gpu), jax 0.11.2", "FAILED x", "| 8192 | 4 | full | cudnn | 500 | 400 | 51 | 0.62 |",
                 "failed: XlaRuntimeError", "| pallas | 85,000,000 | 64 x 1024 | 120.0 | 546,000 | 330 | 42.0% |",
                 "cut at its cap", "## decode: skipped", "| dense FFN | 32768 | 10.00 | 1.00x |"):
        assert want in text, want
    assert "table failed" not in text


def test_causal_window_flops_count_the_attended_pairs():
    n, H = 50, 3
    for W in (0, 7, 49, 80):
        pairs = sum(min(i + 1, W + 1) for i in range(n))
        assert bench.flops_fwd(2, 4, n, H, True, (W, 0)) == 4.0 * 2 * 4 * H * pairs
    assert bench.flops_fwd(2, 4, n, H, True) == 4.0 * 2 * 4 * n * n * H / 2
