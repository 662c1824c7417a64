"""KV fragmentation study (smoke) and its simulator: accounting adds up, layouts behave as designed."""
import numpy as np
import pytest

from inference.memory_sim import _FirstFit, sample_workload, simulate


def test_workload_matches_the_scenario():
    w = sample_workload(np.random.default_rng(0), 20000)
    assert w.total.min() >= 50 and w.total.max() <= 4000
    assert 700 < w.total.mean() < 850 and 450 < w.total.std() < 650
    assert (w.prompt >= 1).all() and (w.prompt < w.total).all()


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


@pytest.mark.slow
def test_study_smoke_writes_report_and_plot(tmp_path):
    from benchmarks import kv_fragmentation

    out = kv_fragmentation.main(["--smoke", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    for scheme in ("contiguous-max", "contiguous-exact", "paged-8", "paged-16", "paged-64", "paged-256"):
        assert f"| {scheme} |" in report
    assert "Decode throughput" in report and (tmp_path / "kv_fragmentation.png").stat().st_size > 0
    rows = {s["scheme"]: s for s in kv_fragmentation.main_rows(out["summary"])}
    assert rows["paged-16"]["waste_pct"]["mean"] < rows["contiguous-max"]["waste_pct"]["mean"]
    assert [r["scheme"] for r in out["throughput"]["rows"]] == ["contiguous-max", "paged-16", "paged-64"]


@pytest.mark.slow
def test_decode_benchmark_smoke(capsys):
    from benchmarks import decode

    res = decode.main(["--smoke"])
    out = capsys.readouterr().out
    assert "paged, block  16, blocked attention" in out and "concurrent sequences" in out
    assert res["serve"]["paged16"]["generated"] == res["serve"]["contiguous_max"]["generated"]
