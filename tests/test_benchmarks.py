"""The benchmark scripts run (tiny sizes); their figures are read from their output, never asserted."""
import numpy as np
import pytest

from benchmarks.baselines import make_bare_jax_step


@pytest.mark.slow
def test_bare_jax_baseline_trains():
    step, params, opt = make_bare_jax_step(V=256, D=32, L=1, F=64, T=16, n_heads=2, lr=3e-3)
    x = np.random.default_rng(0).integers(0, 256, (4, 16)).astype(np.int32)
    losses = []
    for _ in range(5):
        params, opt, loss = step(params, opt, x, np.roll(x, -1, 1))
        losses.append(float(loss))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_train_step_benchmark_runs_on_smoke_sizes(capsys, monkeypatch):
    from benchmarks import train_step
    from experiments.configs.defaults import apply_smoke

    monkeypatch.setitem(train_step.CONFIGS, "smoke", lambda: apply_smoke(train_step.lm_tiny.get_config()))
    monkeypatch.setattr(train_step, "matmul_peak_flops", lambda: 1e10)
    train_step.main(["--configs", "smoke", "--steps", "1", "--repeats", "1", "--no-torch"])
    out = capsys.readouterr().out
    assert "== smoke" in out and "ours / bare JAX" in out


@pytest.mark.slow
def test_attention_benchmark_writes_report(tmp_path, capsys):
    from benchmarks import attention as attention_complexity

    attention_complexity.main(["--lengths", "128,256", "--repeats", "1", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "| 256 | longformer |" in report and "Exponents of n" in report
    assert (tmp_path / "attention_complexity.png").stat().st_size > 0


@pytest.mark.slow
def test_checkpoint_benchmark_runs_on_smoke_sizes(capsys):
    from benchmarks import checkpoint

    checkpoint.main(["--config", "smoke", "--repeats", "1", "--no-multiprocess"])
    out = capsys.readouterr().out
    assert "async save, blocking part" in out and "restore" in out
