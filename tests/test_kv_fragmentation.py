"""KV fragmentation study (smoke) and its simulator: accounting adds up, layouts behave as designed."""
import numpy as np
import pytest

from inference.memory_sim import HEAVY_SIGMA, Workload, _FirstFit, heavy_mu, sample_workload, simulate


def test_workload_matches_the_scenario():
    w = sample_workload(np.random.default_rng(0), 20000)
    assert w.total.min() >= 50 and w.total.max() <= 4000
    assert 700 < w.total.mean() < 850 and 450 < w.total.std() < 650
    assert (w.prompt >= 1).all() and (w.prompt < w.total).all()
    heavy = sample_workload(np.random.default_rng(0), 20000, dist="lognormal-heavy")
    assert 770 < heavy.total.mean() < 830 and heavy.total.std() > 1.4 * w.total.std()  # same mean, heavier tail
    assert heavy.total.min() >= 50 and heavy.total.max() <= 4000 and np.percentile(heavy.total, 99) > 3000
    uni = sample_workload(np.random.default_rng(0), 20000, dist="uniform")
    assert uni.total.min() >= 50 and uni.total.max() <= 4000 and abs(uni.total.mean() - 2025) < 30
    assert abs(uni.total.std() - 3950 / 12**0.5) < 30
    # The heavy tail's mu comes from the closed-form clipped mean: check it against a large sample.
    mu = heavy_mu(800.0, HEAVY_SIGMA, 50, 4000)
    x = np.clip(np.exp(np.random.default_rng(1).normal(mu, HEAVY_SIGMA, 400000)), 50, 4000)
    assert abs(x.mean() - 800.0) < 5.0


def test_first_fit_reuses_holes_and_reports_no_room():
    s = _FirstFit(100)
    a, b, c = s.place(30), s.place(30), s.place(30)
    assert (a, b, c) == (0, 30, 60) and s.place(20) is None  # 10 free at the end
    s.release(b)
    assert s.place(20) == 30 and s.place(15) is None  # a 10-slot hole at 50 and 10 at 90: external fragmentation
    assert s.place(10) == 50


@pytest.mark.parametrize("scheme", ["contiguous-max", "contiguous-exact", "paged-16", "paged-256"])
def test_simulated_memory_adds_up_to_the_budget(scheme):
    w = sample_workload(np.random.default_rng(1), 300)
    r = simulate(w, scheme, budget=8 * 4096, max_len=4096, warmup=100, watermark=0.01)
    parts = r["stored_pct"] + r["reserved_pct"] + r["internal_pct"] + r["external_pct"]
    assert parts == pytest.approx(100.0, abs=1e-6) and r["waste_pct"] == pytest.approx(100 - r["stored_pct"])
    if scheme == "contiguous-max":
        assert r["concurrent"] == pytest.approx(8.0) and r["preemptions"] == 0
    if scheme.startswith("paged"):
        # At most one partly filled block per running sequence.
        block = int(scheme.split("-")[1])
        assert r["reserved_pct"] == 0.0 and 0 < r["internal_pct"] <= 100 * r["concurrent"] * block / (8 * 4096)


def test_paged_serves_more_sequences_than_contiguous_in_the_same_budget():
    w = sample_workload(np.random.default_rng(2), 400)
    conc = {s: simulate(w, s, 8 * 4096, 4096, warmup=200)["concurrent"] for s in ("contiguous-max", "paged-16")}
    assert conc["paged-16"] > 2 * conc["contiguous-max"]


def _work(prompts, totals):
    return Workload(prompt=np.array(prompts), total=np.array(totals))


def test_goodput_and_latency_without_preemption_by_hand():
    # One max-length buffer in the budget, so the two requests run one after the other.
    # Iterations (1 + prefilled / 4 time units each): admit r0, prefill 2 -> 1.5 (first token of r0), 2.5,
    # 3.5 (r0 done: 3 tokens); admit r1, prefill 3 -> 5.25 (first token of r1), 6.25 (r1 done: 2 tokens).
    r = simulate(_work([2, 3], [5, 5]), "contiguous-max", budget=8, max_len=8, warmup=0, prefill_rate=4.0, trace=True)
    np.testing.assert_allclose(r["first_token"], [1.5, 5.25])
    np.testing.assert_allclose(r["finish"], [3.5, 6.25])
    assert (r["generated"], r["prefill_forwards"], r["recompute_forwards"], r["forwards"]) == (5, 5, 0, 10)
    assert r["time"] == pytest.approx(6.25) and r["goodput_time_run"] == pytest.approx(0.8)
    assert r["goodput_compute_run"] == pytest.approx(0.5)
    # The window is the first three iterations (r1 waits): 3 tokens in 3.5 time units, 5 token-forwards.
    assert r["measured_steps"] == 3 and r["window_time"] == pytest.approx(3.5)
    assert r["goodput_time"] == pytest.approx(3 / 3.5) and r["goodput_compute"] == pytest.approx(3 / 5)
    assert r["ttft"] == {"mean": pytest.approx(3.375), "p50": pytest.approx(3.375), "p95": pytest.approx(5.0625)}
    assert r["tpot"]["mean"] == pytest.approx(1.0) and r["tpot"]["p95"] == pytest.approx(1.0)
    assert r["preemptions"] == 0 and r["recompute_share_pct"] == 0.0


def test_goodput_and_latency_with_a_preemption_by_hand():
    # A pool of 4 blocks of 2 tokens. Iteration 1: both admitted (2 blocks each for prompt + first token),
    # prefill 6 tokens at 3 per time unit -> ends at 3, first tokens of both. Iteration 2: r0 needs a third
    # block, none free: r1 (the newest, 4 tokens) is preempted; ends at 4. Iteration 3: r1 waits (3 blocks
    # needed, 1 free) -> ends at 5, r0 done. Iteration 4: r1 re-admitted, its 4 tokens recomputed ->
    # 1 + 4/3 time units, ends at 22/3 with its last token.
    r = simulate(_work([3, 3], [6, 5]), "paged-2", budget=8, max_len=8, warmup=0, prefill_rate=3.0, trace=True)
    assert r["preemptions"] == 1 and list(r["preempted"]) == [0, 1]
    np.testing.assert_allclose(r["first_token"], [3.0, 3.0])
    np.testing.assert_allclose(r["finish"], [5.0, 22 / 3])
    assert (r["generated"], r["prefill_forwards"], r["recompute_forwards"], r["forwards"]) == (5, 6, 4, 15)
    assert r["recomputed_pct"] == pytest.approx(80.0) and r["recompute_share_pct"] == pytest.approx(400 / 15)
    assert r["time"] == pytest.approx(22 / 3) and r["goodput_time_run"] == pytest.approx(15 / 22)
    assert r["goodput_compute_run"] == pytest.approx(1 / 3)
    # TPOT: r0 2 tokens after its first in 2 units; r1 one token after its first, 13/3 units later.
    assert r["tpot"]["mean"] == pytest.approx((1.0 + 13 / 3) / 2) and r["tpot"]["p50"] == pytest.approx((1.0 + 13 / 3) / 2)
    # The window is iteration 3 alone (r1 waiting): r0 holds 5 tokens in 3 blocks of the 4.
    assert r["measured_steps"] == 1 and r["concurrent"] == 1.0
    assert (r["stored_pct"], r["internal_pct"], r["external_pct"]) == (62.5, 12.5, 25.0)
    assert r["goodput_time"] == 1.0 and r["goodput_compute"] == 1.0


@pytest.mark.slow  # ~6 s of CPU (matplotlib, two figures); the old smoke test with the decode timing took 23 s
def test_study_smoke_writes_report_and_plots(tmp_path):
    from benchmarks import kv_fragmentation

    out = kv_fragmentation.main(["--smoke", "--no_throughput", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    for dist in ("lognormal", "lognormal-heavy", "uniform"):
        assert f"## Distribution `{dist}`" in report
        rows = {s["scheme"]: s for s in kv_fragmentation.main_rows(out["summary"], dist)}
        assert list(rows) == list(kv_fragmentation.SCHEMES)
        assert rows["contiguous-max"]["goodput_x_contiguous_max"]["mean"] == pytest.approx(1.0)
        assert [s["watermark"] for s in kv_fragmentation.sweep_rows(out["summary"], dist)] == [0.0, 0.02, 0.05]
    assert len(out["verdicts"]) == 12 and all(v["confidence"] == pytest.approx(1 - 0.05 / 12) for v in out["verdicts"])
    assert "Primary metric" in report and "| 5.0% |" in report
    for png in ("kv_fragmentation.png", "kv_watermark.png"):
        assert (tmp_path / png).stat().st_size > 0


@pytest.mark.slow
def test_decode_benchmark_smoke(capsys):
    from benchmarks import decode

    res = decode.main(["--smoke"])
    out = capsys.readouterr().out
    assert "paged, block  16, blocked attention" in out and "concurrent sequences" in out
    assert res["serve"]["paged16"]["generated"] == res["serve"]["contiguous_max"]["generated"]
