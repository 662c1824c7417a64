"""The kernel benchmarks run on CPU (interpret mode, tiny sizes); their figures are printed, never asserted."""
import re
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


def test_gpu_script_parses_and_reads_the_pinned_jax_version():
    subprocess.run(["bash", "-n", "benchmarks/gpu_kernels.sh"], check=True)
    pin = subprocess.run(["sed", "-n", r's/.*"jax>=\([0-9.]*\),.*/\1/p', "setup.py"], check=True,
                         capture_output=True, text=True).stdout.split()
    assert len(pin) == 1 and re.fullmatch(r"\d+\.\d+\.\d+", pin[0]), pin  # jax[cuda12]==<pin> must be exact
