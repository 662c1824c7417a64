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


def test_attention_exponent_fit_recovers_a_known_exponent():
    from benchmarks.attention import fit_exponent, knob_verdict

    x = np.array([64, 128, 256, 512, 1024])
    exact = fit_exponent(x, np.stack([3.0 * x**1.5, 5.0 * x**1.5]))  # two repeats, exponent 1.5 exactly
    assert exact["per_repeat"] == pytest.approx([1.5, 1.5]) and exact["median_slope"]["mean"] == pytest.approx(1.5)
    assert exact["slope"]["ci_low"] == pytest.approx(1.5) and exact["slope"]["ci_high"] == pytest.approx(1.5)
    noisy_y = 2e-3 * x**0.9 * np.exp(np.random.default_rng(0).normal(0, 0.05, (7, x.size)))
    noisy = fit_exponent(x, noisy_y)
    assert noisy["slope"]["ci_low"] < 0.9 < noisy["slope"]["ci_high"] and noisy["slope"]["ci_high"] - noisy["slope"]["ci_low"] < 0.1
    assert noisy["median_slope"]["ci_low"] < 0.9 < noisy["median_slope"]["ci_high"]
    # A constant term flattens the whole-range fit; the top-3 fit sees the linear part.
    offset = fit_exponent(x, np.stack([100.0 + x, 101.0 + x]))  # whole range 0.70, top three 0.83
    assert 0.65 < offset["slope"]["mean"] < 0.75 and 0.8 < offset["top3"]["mean"] < 0.86
    assert knob_verdict(noisy, flops_exp=1.0) == "supported"
    assert knob_verdict(exact, flops_exp=1.0).startswith("not supported")
    assert knob_verdict(exact, flops_exp=1.5).startswith("not testable at this scale")
    top = {"slope": {"ci_low": 0.3, "ci_high": 0.5}, "top3": {"ci_low": 0.85, "ci_high": 1.1}}
    assert knob_verdict(top, flops_exp=1.0).startswith("supported at the top of the range")
    edge = {"slope": {"ci_low": 0.7, "ci_high": 0.9}, "top3": {"ci_low": 0.7, "ci_high": 0.9}}
    assert knob_verdict(edge, flops_exp=1.0).startswith("inconclusive")
    with pytest.raises(ValueError, match="need repeats"):
        fit_exponent(x[:2], np.ones((3, 2)))


@pytest.mark.slow
def test_attention_benchmark_writes_report(tmp_path, capsys):
    import json

    from benchmarks import attention as attention_complexity

    attention_complexity.main(["--lengths", "64", "--repeats", "1", "--out", str(tmp_path)])
    attention_complexity.main(["--sweep", "knobs", "--knobs", "M", "--knob-n", "64", "--knob-values", "16,32,64",
                               "--repeats", "2", "--inner", "1", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "| 64 | longformer |" in report and "Exponents of n" in report  # the n sweep, re-rendered from its JSON
    smoke = json.loads((tmp_path / "attention_complexity.json").read_text())["summary"]["checks"]["pallas_kernel_smoke"]
    assert smoke["n"] == 64 and smoke["max_abs_err_out"] < 1e-4 and smoke["max_abs_err_grads"] < 1e-3
    assert "Pallas flash kernel, interpret mode (correctness only) at n=64" in report
    assert "## Cost against d, M and W" in report and "| M | performer | O(n M d) | 16-64 | 1 |" in report
    res = json.loads((tmp_path / "attention_knobs.json").read_text())
    (fit,) = res["fits"]
    assert fit["values"] == [16, 32, 64] and len(fit["per_repeat"]) == 2
    assert [len(r["times"]) for r in res["rows"]] == [2, 2, 2] and all(r["flops"] > 0 for r in res["rows"])
    assert fit["flops_exponent"] > 0.5  # XLA counts more work for more features
    for png in ("attention_complexity.png", "attention_knobs.png"):
        assert (tmp_path / png).stat().st_size > 0


@pytest.mark.slow
def test_checkpoint_benchmark_runs_on_smoke_sizes(capsys):
    from benchmarks import checkpoint

    checkpoint.main(["--config", "smoke", "--repeats", "1", "--no-multiprocess"])
    out = capsys.readouterr().out
    assert "async save, blocking part" in out and "restore" in out
