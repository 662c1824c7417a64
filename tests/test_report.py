"""experiments.study.results I/O, experiments.study.report (API + CLI) and the analysis notebook."""

import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from experiments.study import report, stats
from experiments.study.results import append_result, load_results

REPO = Path(__file__).resolve().parents[1]
SEED_EFFECT = [0.02, -0.01, 0.015, -0.02, 0.0, 0.01]  # shared across points: same data order per seed


def _record(point, d_model, seed, value, *, mode="tokens", budget=2_048_000, data_order="seed",
            best_offset=-0.01, tokens=2_048_000):
    params = 12 * 2 * d_model ** 2
    fpt = 6.0 * params
    if mode == "flops":
        tokens = int(budget // fpt)
    return {"study": "lm_scaling", "point": point, "overrides": {"model.d_model": d_model},
            "seed": seed, "budget": {"mode": mode, "value": budget}, "steps": 500, "tokens": tokens,
            "params": params, "flops_per_token": fpt, "train_flops": fpt * tokens, "wall_time_s": 1.0,
            "final": {"eval/loss": value / 1.44, "eval/bpb": value},
            "best": {"eval/loss": (value + best_offset) / 1.44, "eval/bpb": value + best_offset},
            "curve": [{"step": s, "eval/bpb": value + 1.0 / s * 50, "eval/loss": (value + 50.0 / s) / 1.44}
                      for s in (100, 200, 300, 400, 500)],
            "data_order": data_order}


def _value(d_model, seed, rng):
    # Scaling-law means (bigger model = more FLOPs at matched tokens = lower bpb),
    # a per-seed effect shared by all points, and small run noise.
    c = 6.0 * 24 * d_model ** 2 * 2_048_000
    return 1.5 + 2e3 * c ** -0.3 + SEED_EFFECT[seed] + rng.normal(0, 0.002)


POINTS = [("d_model=64", 64), ("d_model=128", 128), ("d_model=256", 256)]
OLD_FITS = ("compute", "frontier", "params")  # the fits these tests exercise; a report has none unless asked


def _write_study(path: Path, points=POINTS, seeds=range(5), **kw) -> list[dict]:
    rng = np.random.default_rng(0)
    recs = []
    for name, d in points:
        for s in seeds:
            r = _record(name, d, s, _value(d, s, rng), **kw)
            append_result(path / "results.jsonl", r)
            recs.append(r)
    return recs


def _vals(recs, point, key="final", metric="eval/bpb"):
    return np.array([r[key][metric] for r in sorted(recs, key=lambda r: r["seed"]) if r["point"] == point])


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _plain_numbers(line: str):
    m = re.search(r"by ([\d.]+) ± ([\d.]+) bpb .*\(p_(\w+) = ([\de.+-]+), (d_z|d) = (-?[\d.]+)", line)
    assert m, line
    return float(m[1]), float(m[2]), m[3], float(m[4]), m[5], float(m[6])


# ----------------------------------------------------------------- results.py

def test_append_and_load_roundtrip_numpy_types(tmp_path):
    p = tmp_path / "sub" / "results.jsonl"
    append_result(p, {"point": "a", "seed": 0, "final": {"eval/bpb": np.float32(1.5)}, "curve": np.arange(2)})
    append_result(p, {"point": "b", "seed": np.int64(1).item(), "final": {"eval/bpb": 2.0}})
    recs = load_results(p)
    assert [r["point"] for r in recs] == ["a", "b"]
    assert recs[0]["final"]["eval/bpb"] == 1.5 and recs[0]["curve"] == [0, 1]
    assert p.read_text().count("\n") == 2


def test_append_rejects_incomplete_record(tmp_path):
    with pytest.raises(ValueError, match="missing required keys \\['final'\\]"):
        append_result(tmp_path / "r.jsonl", {"point": "a", "seed": 0})


def test_malformed_lines_reported_with_line_numbers(tmp_path):
    p = tmp_path / "results.jsonl"
    good = {"point": "a", "seed": 0, "final": {"eval/bpb": 1.0}}
    lines = [json.dumps(good),                                  # 1 ok
             "{not json",                                       # 2
             "[1, 2]",                                          # 3 not an object
             json.dumps({"point": "a", "final": {}}),           # 4 no seed
             "",                                                # 5 blank: ignored
             json.dumps({"point": "a", "seed": "0", "final": {}}),  # 6 seed not int
             json.dumps(dict(good, seed=1)),                    # 7 ok
             '{"point": "a", "seed": 2, "fin']                  # 8 truncated write
    p.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 5 malformed line\(s\): line 2: invalid JSON") as w:
        recs, errors = load_results(p, return_errors=True)
    msg = str(w[0].message)
    for n in (2, 3, 4, 6, 8):
        assert f"line {n}:" in msg
    assert [r["seed"] for r in recs] == [0, 1]
    assert [n for n, _ in errors] == [2, 3, 4, 6, 8]
    reasons = dict(errors)
    assert "not a JSON object" in reasons[3]
    assert "missing required keys ['seed']" in reasons[4]
    assert "'seed' is not an integer" in reasons[6]
    with pytest.warns(UserWarning):
        assert len(load_results(p)) == 2  # default return: records only


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"results file not found: .*nope\.jsonl"):
        load_results(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------- report.py

POINTS4 = POINTS + [("d_model=512", 512)]


@pytest.mark.slow
def test_write_report_table_lines_and_plots(tmp_path):
    recs = _write_study(tmp_path, points=POINTS4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation or runtime warnings on clean input
        out = report.write_report(tmp_path, fits=OLD_FITS)
    assert out == tmp_path / "report.md"
    md = out.read_text()

    assert md.startswith("# Report: lm_scaling\n")
    assert "Budget mode: **tokens**" in md
    assert ("| point | params | train FLOPs | n | mean ± CI | diff vs baseline ± CI | p (raw) | p (corrected) "
            "| Cohen's d |") in md
    rows = {name: next(l for l in md.splitlines() if l.startswith(f"| `{name}`")) for name, _ in POINTS4}
    assert "(baseline)" in rows["d_model=64"] and "| baseline |" in rows["d_model=64"]
    for name, d in POINTS4:
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == report._si(24 * d ** 2)
        assert cells[3] == "5"
        s = stats.summarize(_vals(recs, name))
        mean_s, half_s = cells[4].split(" ± ")
        assert float(mean_s) == pytest.approx(s["mean"], abs=1e-3)
        assert float(half_s) == pytest.approx((s["ci_high"] - s["ci_low"]) / 2, rel=0.05)

    base = _vals(recs, "d_model=64")
    others = ("d_model=128", "d_model=256", "d_model=512")
    raw = [stats.compare(_vals(recs, n), base, paired=True) for n in others]
    holm = stats.correct_pvalues([r["p"] for r in raw], "holm")
    # the data must tell Holm from BH (and from no correction) for the p checks below to mean anything
    assert not np.allclose(holm, stats.correct_pvalues([r["p"] for r in raw], "bh"), rtol=0.1, atol=0)
    assert not np.allclose(holm, [r["p"] for r in raw], rtol=0.1, atol=0)
    comp = _section(md, "Comparisons").strip().splitlines()
    assert len(comp) == 3
    for line, r, q, name in zip(comp, raw, holm, others):
        assert line.startswith(f"- {name} beats d_model=64 by ")
        assert "at matched tokens" in line and "paired t on 5 common seeds" in line
        diff, half, corr, p, dkind, d = _plain_numbers(line)
        assert corr == "holm" and dkind == "d_z"
        assert diff == pytest.approx(-r["diff"], rel=0.02)
        assert half == pytest.approx((r["ci_high"] - r["ci_low"]) / 2, rel=0.05)
        assert p == pytest.approx(q, rel=0.05)
        assert d == pytest.approx(abs(r["d"]), abs=0.01)  # sentence gives magnitudes
        # table agrees with the line
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert float(cells[5].split(" ± ")[0]) == pytest.approx(r["diff"], rel=0.02)
        assert float(cells[6]) == pytest.approx(r["p"], rel=0.05)
        assert float(cells[7]) == pytest.approx(q, rel=0.05)

    # 4 compute values at matched tokens -> a fit is reported with b and its CI
    fit = _section(md, "Scaling fit")
    m = re.search(r"b = ([\d.]+) \(95% bootstrap CI \[([\d.]+), ([\d.]+)\]", fit)
    assert m, fit
    assert float(m[2]) <= 0.3 <= float(m[3])  # the generating exponent
    lim = _section(md, "Limitations")
    assert "Fewer than 5 seeds" not in lim
    assert "span only 3 compute values" not in lim
    for png in ("metric_vs_compute.png", "curves.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_is_deterministic(tmp_path):
    _write_study(tmp_path)
    a = report.write_report(tmp_path, n_boot=100).read_text()
    png_a = (tmp_path / "metric_vs_compute.png").read_bytes()
    b = report.write_report(tmp_path, n_boot=100).read_text()
    assert a == b
    assert png_a == (tmp_path / "metric_vs_compute.png").read_bytes()


def test_few_seeds_overlap_and_single_seed(tmp_path):
    rng = np.random.default_rng(1)
    for s in range(3):
        append_result(tmp_path / "results.jsonl", _record("base", 64, s, 2.0 + SEED_EFFECT[s]))
        append_result(tmp_path / "results.jsonl",
                      _record("same", 64, s, 2.0 + SEED_EFFECT[s] + rng.normal(0, 0.003)))
        append_result(tmp_path / "results.jsonl", _record("big", 256, s, 1.7 + SEED_EFFECT[s]))
    append_result(tmp_path / "results.jsonl", _record("lonely", 128, 0, 1.9))
    md = report.write_report(tmp_path, n_boot=100).read_text()
    lim = _section(md, "Limitations")
    assert "Fewer than 5 seeds: `base` (n=3), `same` (n=3), `big` (n=3), `lonely` (n=1)" in lim
    assert "The 95% CIs of `same`" in lim and "`base`" in lim
    assert "CIs of `big`" not in lim  # big vs base: separated by 0.3 with sd 0.02
    assert "`lonely` has 1 usable seed(s)" in lim
    row = next(l for l in md.splitlines() if l.startswith("| `lonely`"))
    assert "1.9000 (no CI)" in row and "not enough seeds" in row
    comp = _section(md, "Comparisons")
    assert "- same does not differ significantly from base:" in comp
    assert "- big beats base by 0.3" in comp
    assert "`lonely` vs `base`: not enough seeds" in comp


def test_welch_when_data_order_independent(tmp_path):
    recs = _write_study(tmp_path, data_order="independent")
    md = report.write_report(tmp_path, n_boot=100, correction="bh").read_text()
    r = stats.compare(_vals(recs, "d_model=256"), _vals(recs, "d_model=64"), paired=False)
    line = next(l for l in md.splitlines() if l.startswith("- d_model=256"))
    assert "Welch t on 5+5 seeds" in line
    diff, half, corr, p, dkind, d = _plain_numbers(line)
    assert corr == "bh" and dkind == "d"
    assert d == pytest.approx(abs(r["d"]), abs=0.01)
    assert half == pytest.approx((r["ci_high"] - r["ci_low"]) / 2, rel=0.05)


def test_pairs_on_common_seeds(tmp_path):
    _write_study(tmp_path, points=POINTS[:1], seeds=range(5))
    _write_study(tmp_path, points=POINTS[1:2], seeds=[0, 1, 2, 3, 5])
    md = report.write_report(tmp_path, n_boot=100).read_text()
    assert "paired t on 4 common seeds" in md
    assert "paired on common seeds [0, 1, 2, 3]; unmatched seeds dropped (`d_model=128`: [5], `d_model=64`: [4])" in md


def test_use_best_and_metric(tmp_path):
    recs = _write_study(tmp_path)
    md = report.write_report(tmp_path, n_boot=100, use="best", metric="eval/loss").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| `d_model=128`"))
    mean = float(row.split("|")[5].split(" ± ")[0])
    assert mean == pytest.approx(_vals(recs, "d_model=128", "best", "eval/loss").mean(), abs=1e-3)
    assert "best (minimum) value over evals" in md
    assert " loss at matched tokens" in md


def test_matched_flops_skips_fit(tmp_path):
    _write_study(tmp_path, mode="flops", budget=1e13)
    md = report.write_report(tmp_path, n_boot=100, fits=OLD_FITS).read_text()
    assert "at matched FLOPs" in md
    assert "Power-law fit skipped: 1 distinct compute value(s)" in md
    assert (tmp_path / "metric_vs_compute.png").stat().st_size > 0


def test_fit_failure_is_reported_not_raised(tmp_path, monkeypatch):
    _write_study(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("Optimal parameters not found: maxfev reached")
    monkeypatch.setattr(report.stats, "fit_power_law", boom)
    md = report.write_report(tmp_path, n_boot=100, fits=OLD_FITS).read_text()
    assert "Power-law fit failed: Optimal parameters not found" in md
    assert (tmp_path / "metric_vs_compute.png").stat().st_size > 0


def test_malformed_lines_listed_in_report(tmp_path):
    _write_study(tmp_path)
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"point": "d_model=64", "se\n')
    with pytest.warns(UserWarning, match=r"line\(s\) \[16\]"):
        md = report.write_report(tmp_path, n_boot=100).read_text()
    assert "1 malformed line(s) in results.jsonl were skipped: line 16 (invalid JSON" in md


def test_nonfinite_metric_excluded(tmp_path):
    _write_study(tmp_path)
    append_result(tmp_path / "results.jsonl", _record("d_model=256", 256, 5, float("nan")))
    md = report.write_report(tmp_path, n_boot=100).read_text()
    assert "`d_model=256`: eval/bpb is non-finite for seed(s) [5]" in md
    row = next(l for l in md.splitlines() if l.startswith("| `d_model=256`"))
    assert row.split("|")[4].strip() == "5"


@pytest.mark.parametrize("kwargs, exc, pattern", [
    ({"baseline": "d_model=999"}, report.ReportError, "unknown baseline point 'd_model=999'"),
    ({"metric": "eval/acc"}, report.ReportError, "metric 'eval/acc' missing from 'final' in 15 of 15 records"),
])
def test_write_report_errors(tmp_path, kwargs, exc, pattern):
    _write_study(tmp_path)
    with pytest.raises(exc, match=pattern):
        report.write_report(tmp_path, n_boot=100, **kwargs)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.study.report", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_success(tmp_path):
    _write_study(tmp_path)
    res = _cli(tmp_path, "--correction", "bh", "--baseline", "d_model=128")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "report.md")
    md = (tmp_path / "report.md").read_text()
    assert "| `d_model=128` (baseline)" in md
    assert "- d_model=64 is worse than d_model=128 by" in md
    assert "p_bh = " in md
    assert (tmp_path / "curves.png").stat().st_size > 0


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.slow
def test_cli_missing_dir(tmp_path):
    res = _cli(tmp_path / "missing")
    assert res.returncode == 2
    assert f"results directory not found: {tmp_path / 'missing'}" in _one_line(res.stderr)


@pytest.mark.slow
def test_cli_unknown_baseline(tmp_path):
    _write_study(tmp_path)
    res = _cli(tmp_path, "--baseline", "nope")
    assert res.returncode == 2
    assert "unknown baseline point 'nope'" in _one_line(res.stderr)


def test_main_bad_option_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path), "--use", "worst"])
    assert e.value.code == 2
    assert "argument --use: invalid choice: 'worst'" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("setup, args, expect", [
    ("empty_dir", [], "results file not found"),
    ("study", ["--metric", "eval/ppl"], "metric 'eval/ppl' missing"),
    ("single_seed_baseline", [], "baseline point 'solo' has 1 usable seed(s); need at least 2 seeds"),
])
def test_main_errors_exit_2(tmp_path, capsys, setup, args, expect):
    if setup == "study":
        _write_study(tmp_path)
    elif setup == "single_seed_baseline":
        append_result(tmp_path / "results.jsonl", _record("solo", 64, 0, 2.0))
        _write_study(tmp_path, points=POINTS[1:2], seeds=range(3))
    assert report.main([str(tmp_path), *args]) == 2
    line = _one_line(capsys.readouterr().err)
    assert expect in line


def test_duplicate_seed_keeps_last_record(tmp_path):
    _write_study(tmp_path, points=POINTS[:2], seeds=range(3))
    append_result(tmp_path / "results.jsonl", _record("d_model=128", 128, 0, 9.0))
    md = report.write_report(tmp_path, n_boot=100).read_text()
    assert "`d_model=128` seed 0 appears 2 times in the file; the last record was used." in md
    row = next(l for l in md.splitlines() if l.startswith("| `d_model=128`"))
    assert row.split("|")[4].strip() == "3"
    assert "- d_model=128 does not differ significantly from d_model=64: +2." in md  # 9.0 pulls the mean up


def test_all_single_seed_still_reports(tmp_path):
    _write_study(tmp_path, seeds=[0])
    md = report.write_report(tmp_path, n_boot=100).read_text()
    assert "not enough seeds" in md
    assert "Fewer than 5 seeds" in md


# ----------------------------------------------------------------- frontier and L(N) at matched compute

FRONTIER_BUDGET = 1e8
# name: (params, steps, log10(C / budget) range on which this size's curve touches the law).
# Trainer-like eval schedules (every steps // 10 steps, plus the last step). With 119 steps, "large"
# evaluates at 0.0924 k of the budget (3.4% off the others) and once more 9 steps after its 10th eval.
FRONTIER_SIZES = {"small": (1e3, 2003, (-1.2, -0.6)), "medium": (4e3, 517, (-0.6, -0.26)),
                  "large": (1.6e4, 119, (-0.26, 0.1))}
FRONTIER_WINNERS = ["small"] * 2 + ["medium"] * 3 + ["large"] * 5  # at 0.1, 0.2, ..., 1.0 of the budget


def _frontier_law(c):
    return 2.0 + 50.0 * c ** -0.25


def _frontier_records(rng, sizes=FRONTIER_SIZES, seeds=range(5), evals=10, budget=FRONTIER_BUDGET):
    """FLOPs-matched grid: every curve sits on 2 + 50 C^-0.25 within its size's compute range and above it
    (by its distance in decades from that range) elsewhere, so the true frontier is that law and the best
    size changes with compute. A per-seed effect shared by all sizes and small run noise on top."""
    seed_effect = rng.normal(0, 0.01, max(seeds) + 1)
    recs = []
    for name, (n, steps, (lo, hi)) in sizes.items():
        fpt = 6.0 * n
        tokens = int(budget // fpt)
        every = max(1, steps // evals)
        at = list(range(every, steps + 1, every))
        if at[-1] != steps:
            at.append(steps)
        for s in seeds:
            run = seed_effect[s] + rng.normal(0, 0.003)
            curve = []
            for step in at:
                c = fpt * tokens / steps * step
                lf = math.log10(c / budget)
                v = _frontier_law(c) + max(0.0, lo - lf, lf - hi) + run + rng.normal(0, 0.003)
                curve.append({"step": step, "eval/bpb": v, "eval/loss": v * math.log(2)})
            recs.append({"study": "frontier", "point": name, "seed": s, "budget": {"mode": "flops", "value": budget},
                         "steps": steps, "tokens": tokens, "params": n, "flops_per_token": fpt,
                         "train_flops": fpt * tokens, "final": {k: v for k, v in curve[-1].items() if k != "step"},
                         "best": {m: min(e[m] for e in curve) for m in ("eval/bpb", "eval/loss")},
                         "curve": curve, "data_order": "seed"})
    return recs


@pytest.mark.slow
def test_frontier_recovers_law_and_best_size_per_compute():
    recs = _frontier_records(np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        an = report.analyze(recs, n_boot=200, fits=OLD_FITS)
    assert an["fit"] is None  # one compute value: no per-run fit
    fr, fit = an["frontier"], an["frontier_fit"]
    assert fr["grouping"] == "eval index"
    levels = fr["levels"]
    assert [lv["winner"] for lv in levels] == FRONTIER_WINNERS
    assert all(lv["in_fit"] and lv["n"] == 5 and lv["n_points"] == 3 and lv["win_share"] >= 0.95 for lv in levels)
    for k, lv in enumerate(levels, start=1):
        assert lv["compute"] == pytest.approx(k / 10 * FRONTIER_BUDGET, rel=0.08)
        assert lv["mean"] == pytest.approx(_frontier_law(lv["compute"]), abs=0.02)  # on the law
        assert lv["ci_low"] < lv["mean"] < lv["ci_high"]
    assert levels[5]["runner_up"] == "medium" and levels[5]["margin"] > 0.01
    # the 119-step size's final eval (not its eval at step 110) is its value at the last level
    assert levels[-1]["mean"] == pytest.approx(np.mean([r["final"]["eval/bpb"] for r in recs if r["point"] == "large"]),
                                               rel=1e-12)
    assert fit["n_levels"] == 10 and fit["n_obs"] == 50 and fr["x"].size == 50
    assert fit["n_boot"] == 200 and fit["n_boot_ok"] == 200
    assert fit["b"] == pytest.approx(0.25, abs=0.05)
    assert fit["b_ci_low"] <= 0.25 <= fit["b_ci_high"]
    assert fit["b_ci_high"] - fit["b_ci_low"] < 0.15
    assert fit["span_decades"] == pytest.approx(1.0, abs=0.05)
    one, two = (report.analyze(recs, n_boot=20, fits=OLD_FITS)["frontier_fit"] for _ in range(2))  # fixed bootstrap seed
    assert (one["b_ci_low"], one["b_ci_high"]) == (two["b_ci_low"], two["b_ci_high"])


def test_frontier_drops_warmup_levels_with_dense_evals():
    sizes = dict(FRONTIER_SIZES, large=(1.6e4, 480, (-0.26, 0.1)))
    an = report.analyze(_frontier_records(np.random.default_rng(1), sizes=sizes, evals=20), n_boot=20, fits=OLD_FITS)
    levels = an["frontier"]["levels"]
    assert an["frontier"]["grouping"] == "eval index"
    assert len(levels) == 20  # 0.95 and 1.0 of the budget are 0.022 decades apart, still two levels
    assert [lv["in_fit"] for lv in levels] == [False] + [True] * 19  # 5% of the budget: warm-up
    assert levels[0]["excluded"] == "below min fraction" and levels[1]["excluded"] is None
    assert an["frontier_fit"]["n_levels"] == 19
    assert "1 level(s) below 10% of the largest compute left out" in an["frontier_note"]
    assert an["frontier_fit"]["b_ci_low"] <= 0.25 <= an["frontier_fit"]["b_ci_high"]


@pytest.mark.slow
def test_frontier_flags_unstable_winners():
    # "a" and "b" share one curve (and "c" joins them from 55% of the budget): who wins a level is seed noise
    sizes = {"a": (1e3, 500, (-1.2, 0.1)), "b": (2e3, 250, (-1.2, 0.1)), "c": (4e3, 125, (-0.26, 0.1))}
    an = report.analyze(_frontier_records(np.random.default_rng(0), sizes=sizes), n_boot=50, fits=OLD_FITS)
    levels = an["frontier"]["levels"]
    assert {lv["winner"] for lv in levels[:5]} <= {"a", "b"}
    assert sum(lv["win_share"] < 0.8 for lv in levels) >= 5
    assert any("the best point changes in more than 20% of the bootstrap resamples" in x for x in an["limitations"])


def test_frontier_report_sections_and_plots(tmp_path):
    for r in _frontier_records(np.random.default_rng(0)):
        append_result(tmp_path / "results.jsonl", r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = report.write_report(tmp_path, n_boot=100, fits=OLD_FITS).read_text()
    fit = _section(md, "Scaling fit")
    assert "Power-law fit skipped: 1 distinct compute value(s)" in fit
    front = fit.split("### Loss vs compute: compute-efficient frontier of the learning curves\n", 1)[1]
    front = front.split("### ", 1)[0]
    assert "Kaplan et al. 2020" in front and "by eval index" in front
    m = re.search(r"50 per-seed observations at 10 compute levels .*b = ([\d.]+) \(95% bootstrap CI "
                  r"\[([\d.]+), ([\d.]+)\], 100/100 refits resampling seeds within each point\)", front)
    assert m, front
    assert float(m[2]) <= 0.25 <= float(m[3])
    rows = [l for l in front.splitlines() if l.startswith("| ") and not l.startswith("| compute")]
    assert len(rows) == 10
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert [c[1] for c in cells] == [f"`{w}`" for w in FRONTIER_WINNERS]
    assert all(c[3] == "5" and c[6] == "yes" for c in cells)
    assert float(cells[-1][0]) == pytest.approx(FRONTIER_BUDGET, rel=0.01)
    par = fit.split("### Loss vs parameters at matched compute\n", 1)[1]
    assert "at matched compute C = 1e+08 FLOPs over 15 runs at 3 parameter counts (final values)" in par
    lim = _section(md, "Limitations")
    assert "intermediate evals of runs whose cosine learning-rate schedule" in lim
    assert "upper bound on the achievable loss" in lim
    assert "Power-law fit skipped" not in lim  # replaced by the frontier fit
    assert "The parameter fit has 3 parameters and only 3 parameter counts" in lim
    assert "![eval/bpb vs parameters](metric_vs_params.png)" in md
    for png in ("metric_vs_compute.png", "metric_vs_params.png", "curves.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_frontier_plot_shows_mean_curves_frontier_and_fit():
    from matplotlib.figure import Figure
    an = report.analyze(_frontier_records(np.random.default_rng(0)), n_boot=20, fits=OLD_FITS)
    ax = Figure().add_subplot(1, 1, 1)
    report.plot_metric_vs_compute(ax, an)
    lines = {l.get_label(): l for l in ax.get_lines()}
    for name in FRONTIER_SIZES:
        assert len(lines[name].get_xdata()) == 10  # the point's mean learning curve
    fit_label = next(k for k in lines if k.startswith("frontier fit"))
    b = an["frontier_fit"]
    assert f"b = {b['b']:.3f} [{b['b_ci_low']:.3f}, {b['b_ci_high']:.3f}]" in fit_label
    assert ax.get_xscale() == "log"
    marks = [c for c in ax.collections if len(c.get_offsets()) == 10]
    assert marks, "frontier points not drawn"


def _param_records(values: dict, seeds=range(5), budget=1e13, rng=None):
    """Matched-compute runs without curves: point N=<params>, final eval/bpb = values[params] + seed effects."""
    rng = rng or np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.01, max(seeds) + 1)
    recs = []
    for n, mean in values.items():
        fpt = 6.0 * n
        tokens = int(budget // fpt)
        for s in seeds:
            v = mean + seed_effect[s] + rng.normal(0, 0.003)
            recs.append({"study": "params", "point": f"N={n:.0e}", "seed": s,
                         "budget": {"mode": "flops", "value": budget}, "steps": 100, "tokens": tokens, "params": n,
                         "flops_per_token": fpt, "train_flops": fpt * tokens, "final": {"eval/bpb": v},
                         "best": {"eval/bpb": v}, "data_order": "seed"})
    return recs


def test_param_fit_at_matched_compute_recovers_exponent():
    ns = (1e4, 3e4, 1e5, 3e5, 1e6)
    an = report.analyze(_param_records({n: 1.5 + 30.0 * n ** -0.35 for n in ns}), n_boot=200, fits=OLD_FITS)
    fit = an["param_fit"]
    assert an["matched_compute"] == pytest.approx(1e13, rel=1e-3)
    assert fit["n_params"] == 5 and fit["n_obs"] == 25 and fit["n_boot_ok"] == 200
    assert fit["b"] == pytest.approx(0.35, abs=0.03)
    assert fit["b_ci_low"] <= 0.35 <= fit["b_ci_high"] and fit["b_ci_high"] - fit["b_ci_low"] < 0.1
    assert fit["c"] == pytest.approx(1.5, abs=0.05)
    assert "at matched compute C = 1e+13 FLOPs over 25 runs at 5 parameter counts" in an["param_fit_note"]
    assert an["frontier"] is None and an["frontier_fit"] is None
    assert "no run has a `eval/bpb` learning curve" in an["frontier_note"]
    assert not any("lowest mean" in x for x in an["limitations"])
    md = report.render_markdown(an)
    assert "### Loss vs parameters at matched compute" in md and "IsoFLOP" in md


def test_param_fit_flags_isoflop_minimum():
    an = report.analyze(_param_records({1e4: 2.3, 3e4: 2.05, 1e5: 1.9, 3e5: 1.95, 1e6: 2.1}), n_boot=50, fits=OLD_FITS)
    assert any("the lowest mean eval/bpb is at `N=1e+05` (N = 100K), not at the largest model" in x
               for x in an["limitations"])


def test_param_fit_needs_three_sizes_and_matched_compute(tmp_path):
    an = report.analyze(_param_records({1e4: 2.3, 1e5: 1.9}), n_boot=20, fits=OLD_FITS)
    assert an["param_fit"] is None
    assert an["param_fit_note"].startswith("Parameter fit skipped: 2 distinct parameter counts at matched compute")
    # tokens-matched grid over 4 compute values: the per-run compute fit as before, no frontier, no L(N)
    recs = _write_study(tmp_path, points=POINTS4)
    an = report.analyze(recs, n_boot=50, fits=OLD_FITS)
    assert an["fit"] is not None
    for k in ("frontier", "frontier_fit", "frontier_note", "param_fit", "param_fit_note", "matched_compute"):
        assert an[k] is None, k
    md = report.render_markdown(an)
    assert "### Loss vs" not in md and "metric_vs_params.png" not in md


# ----------------------------------------------------------------- notebook

@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True)
    monkeypatch.delenv("RESULTS_JSONL", raising=False)
    monkeypatch.delenv("REPO_URL", raising=False)
    nb = nbformat.read(REPO / "notebooks" / "study_analysis.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "SYNTHETIC DEMO DATA" in text
    assert "Holm" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    assert "SYNTHETIC IsoFLOP DEMO" in text and "N_opt ∝ C^a: a = 0.4" in text  # the true exponent is 0.452


def test_direction_of_a_metric_sets_the_verb(tmp_path):
    # Point "b" is higher than "a" on every seed: better for an accuracy, worse for a loss.
    recs = []
    for seed in range(4):
        for point, v in (("a", 0.5), ("b", 0.6)):
            r = _record(point, 64, seed, v + 0.01 * seed)
            r["final"]["eval/accuracy"] = r["final"]["eval/bpb"]
            recs.append(r)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    acc = report.write_report(tmp_path, baseline="a", metric="eval/accuracy", suffix="_acc").read_text()
    bpb = report.write_report(tmp_path, baseline="a", metric="eval/bpb").read_text()
    assert "b beats a" in acc and "higher is better" in acc and (tmp_path / "curves_acc.png").exists()
    assert "b is worse than a" in bpb and "lower is better" in bpb
    assert report.higher_is_better("eval/moe/load_entropy") and not report.higher_is_better("eval/moe/max_fraction")
