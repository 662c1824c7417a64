"""Scaling analyses and trend tests against cases with known answers (numpy/scipy only, no training)."""
import itertools
import math

import numpy as np
import pytest

from experiments.study import scaling, stats

# Hoffmann et al. 2022's fitted law, used as ground truth for synthetic runs.
E, A, ALPHA, B, BETA = 1.69, 406.4, 0.34, 410.7, 0.28
A_OPT = BETA / (ALPHA + BETA)  # N_opt ∝ C^A_OPT
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))


def law(n, d):
    return E + A / n ** ALPHA + B / d ** BETA


def n_opt(c):
    return G * (c / 6) ** A_OPT


def synthetic(budgets=(1e18, 1e19, 1e20), per_budget=5, seeds=3, noise=0.003, rng_seed=1, shift=0.0):
    """Runs on an IsoFLOP grid centred on each budget's true optimum (shifted by `shift` decades)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for c in budgets:
        for f in np.logspace(-1, 1, per_budget) * 10 ** shift:
            n = n_opt(c) * f
            d = c / (6 * n)
            for s in range(seeds):
                rows.append((c, n, d, law(n, d) * math.exp(rng.normal(0, noise)), s))
    return [np.array(v) for v in zip(*rows)]


def test_parabola_vertex_of_a_known_parabola():
    x = np.linspace(7, 9, 5)
    xv, yv, c2 = scaling.parabola_vertex(x, 2.5 + 0.3 * (x - 7.8) ** 2)
    assert (xv, yv, c2) == pytest.approx((7.8, 2.5, 0.3), abs=1e-9)
    assert math.isnan(scaling.parabola_vertex(x, -(x - 8) ** 2)[0])  # concave: no minimum
    with pytest.raises(ValueError, match="at least 3 distinct sizes, got 2"):
        scaling.parabola_vertex([1, 1, 2], [1, 2, 3])


def test_isoflop_recovers_the_minimum_and_the_exponent():
    # Parabolas in log10 N with a known vertex per budget: x0 = 0.5 log10 C + 1, L0 = 10 C^-0.05.
    rng = np.random.default_rng(0)
    rows = []
    for c in (1e12, 1e13, 1e14, 1e15):
        x0 = 0.5 * math.log10(c) + 1
        for x in x0 + np.linspace(-1, 1, 5):
            for s in range(3):
                rows.append((c, 10 ** x, 10 * c ** -0.05 + 0.2 * (x - x0) ** 2 + rng.normal(0, 0.002), s))
    C, N, L, S = (np.array(v) for v in zip(*rows))
    iso = scaling.isoflop(C, N, L, S, n_boot=300)
    for b in iso["budgets"]:
        truth = 10 ** (0.5 * math.log10(b["C"]) + 1)
        assert b["edge"] is None and b["boot_ok"] > 250
        assert b["n_opt_ci"][0] <= truth <= b["n_opt_ci"][1]
        assert b["n_opt"] == pytest.approx(truth, rel=0.05)
        assert b["l_opt_ci"][0] <= 10 * b["C"] ** -0.05 <= b["l_opt_ci"][1]
        assert b["rms_residual"] == pytest.approx(0.002, rel=0.5)  # the noise put in
    assert iso["a_ci"][0] <= 0.5 <= iso["a_ci"][1] and iso["a"] == pytest.approx(0.5, abs=0.02)
    assert iso["g_ci"][0] <= 0.05 <= iso["g_ci"][1]
    assert iso["n_budgets_fit"] == 4


def test_isoflop_on_the_chinchilla_law_and_edge_flags():
    C, N, D, L, S = synthetic()
    iso = scaling.isoflop(C, N, L, S, n_boot=200)
    assert iso["a"] == pytest.approx(A_OPT, abs=0.02)
    assert iso["a_ci"][0] <= A_OPT <= iso["a_ci"][1]
    # A grid shifted 1.2 decades to the right: every minimum is at the smallest size, flagged and not fitted.
    C, N, D, L, S = synthetic(shift=1.2)
    iso = scaling.isoflop(C, N, L, S, n_boot=20)
    assert [b["edge"] for b in iso["budgets"]] == ["smallest"] * 3
    assert iso["n_budgets_fit"] == 0 and math.isnan(iso["a"])


def test_parametric_fit_recovers_the_law_within_its_intervals():
    C, N, D, L, S = synthetic()
    f = scaling.fit_parametric(N, D, L, n_boot=60)
    truth = {"E": E, "A": A, "B": B, "alpha": ALPHA, "beta": BETA, "a_opt": A_OPT}
    for k, v in truth.items():
        lo, hi = f["ci"][k]
        assert lo <= v <= hi, (k, v, lo, hi, f[k])
    assert f["alpha"] == pytest.approx(ALPHA, abs=0.03) and f["beta"] == pytest.approx(BETA, abs=0.03)
    assert not any(f["at_bound"].values()) and f["n_boot_ok"] == 60
    assert f["rmse_log"] == pytest.approx(0.003, rel=0.3)  # the noise put in
    np.testing.assert_allclose(np.log(scaling.predict_parametric(f, N, D)), np.log(L) - f["residuals"], atol=1e-9)


def test_parameter_on_its_bound_gets_no_interval():
    # No data-size term at all: beta is driven to its lower bound 0 (B/D^0 merges with E).
    rng = np.random.default_rng(0)
    N = np.repeat(np.logspace(6, 9, 6), 2)
    D = np.tile([1e9, 3e9], 6)
    L = 2.0 + 300 / N ** 0.4 + rng.normal(0, 1e-4, N.size)
    f = scaling.fit_parametric(N, D, L, n_boot=10)
    assert f["at_bound"]["beta"] and all(math.isnan(v) for v in f["ci"]["beta"])
    assert all(math.isnan(v) for v in f["ci"]["a_opt"])


@pytest.mark.slow
def test_holdout_passes_for_the_true_law_and_fails_for_a_broken_one():
    C, N, D, L, S = synthetic(budgets=(1e18, 1e19, 1e20))
    h = scaling.holdout(C, N, D, L, S, n_boot=20)
    assert h["C_held"] == 1e20 and h["passed"] and len(h["rows"]) == 5
    assert h["mean_abs_rel_error"] < 0.01
    # The largest budget's losses 5% higher than the law (a regime change): the check must fail.
    L2 = np.where(C == 1e20, L * 1.05, L)
    h2 = scaling.holdout(C, N, D, L2, S, n_boot=20)
    assert not h2["passed"] and h2["n_failed"] == 5
    with pytest.raises(ValueError, match="at least 3 budgets"):
        scaling.holdout(C[C < 1e20], N[C < 1e20], D[C < 1e20], L[C < 1e20], S[C < 1e20])


def test_sensitivity_lists_every_variant():
    C, N, D, L, S = synthetic()
    rows = scaling.sensitivity(C, N, D, L, S)
    assert [r["name"] for r in rows] == ["all points", "without budget 1e+18", "without budget 1e+19",
                                         "without budget 1e+20", "without the smallest size of each budget",
                                         "without the largest size of each budget"]
    assert [r["n_obs"] for r in rows] == [45, 30, 30, 30, 36, 36]
    for r in rows:
        assert r["a_opt"] == pytest.approx(A_OPT, abs=0.05) and r["a"] == pytest.approx(A_OPT, abs=0.06)


# ----------------------------------------------------------------- dose-response

def test_trend_test_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    lv = np.repeat([32, 64, 128, 256], 3)
    y = 1 + 0.1 * np.log2(lv) + rng.normal(0, 0.02, lv.size)
    t = stats.trend_test(lv, y)
    assert t["ci_low"] <= 0.1 <= t["ci_high"] and t["p"] < 1e-6 and t["df"] == 10
    # By hand: slope = cov(x, y) / var(x), se from the residual variance.
    x = np.log2(lv)
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    resid = y - y.mean() - slope * (x - x.mean())
    se = math.sqrt(np.sum(resid ** 2) / 10 / np.sum((x - x.mean()) ** 2))
    assert t["slope"] == pytest.approx(slope, rel=1e-12)
    assert t["ci_high"] - t["slope"] == pytest.approx(2.2281388519649385 * se, rel=1e-9)  # t_{0.975, 10}
    flat = stats.trend_test(lv, 1 + np.tile([0.02, -0.01, -0.01], 4))  # the same seeds at every level
    assert flat["slope"] == pytest.approx(0, abs=1e-12) and flat["ci_low"] < 0 < flat["ci_high"]
    assert flat["p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 distinct levels"):
        stats.trend_test([8, 8, 8], [1, 2, 3])


def test_jonckheere_terpstra_exact_by_enumeration():
    # Perfectly ordered 3 groups of 2: J = 12 is the largest of 6!/(2!)^3 = 90 labellings, reached once.
    r = stats.jonckheere_terpstra([[1, 2], [3, 4], [5, 6]], "increasing")
    assert r["exact"] and r["n_perm"] == 90 and r["J"] == 12 and r["expected"] == 6
    assert r["p"] == pytest.approx(1 / 90)
    assert stats.jonckheere_terpstra([[1, 2], [3, 4], [5, 6]])["p"] == pytest.approx(2 / 90)
    assert stats.jonckheere_terpstra([[1, 2], [3, 4], [5, 6]], "decreasing")["p"] == 1.0
    # Brute force for a small case with a tie.
    groups = [[1.0, 3.0], [2.0, 3.0], [4.0]]
    vals = [v for g in groups for v in g]
    def j(lab):
        return sum((vals[k] > vals[i]) + 0.5 * (vals[k] == vals[i])
                   for i, k in itertools.product(range(5), repeat=2) if lab[i] < lab[k])
    labs = set(itertools.permutations([0, 0, 1, 1, 2]))
    obs = j([0, 0, 1, 1, 2])
    r = stats.jonckheere_terpstra(groups, "increasing")
    assert r["J"] == obs and r["p"] == pytest.approx(np.mean([j(l) >= obs for l in labs]))


# ----------------------------------------------------------------- in the report

def _isoflop_records(noise_batches=0.0):
    C, N, D, L, S = synthetic()
    rng = np.random.default_rng(3)
    recs = []
    for c, n, d, v, s in zip(C, N, D, L, S):
        w = np.full(8, 4096.0)
        nll = v * w * (1 + rng.normal(0, noise_batches, 8))
        recs.append({"study": "iso", "point": f"N{n:.3g}@{c:.3g}", "seed": int(s), "overrides": {},
                     "budget": {"mode": "flops", "value": float(c)}, "params": float(n), "tokens": float(d),
                     "train_flops": float(c), "data_order": "seed", "final": {"eval/loss": float(nll.sum() / w.sum())},
                     "curve": [], "eval_batches": [{"nll": a, "weight": b, "bytes": b} for a, b in zip(nll, w)]})
    return recs


@pytest.mark.slow
def test_report_sections_for_isoflop_parametric_and_eval_uncertainty(tmp_path, monkeypatch):
    from experiments.study import report, scaling_report
    from experiments.study.results import append_result

    monkeypatch.setattr(scaling_report, "N_BOOT_ISOFLOP", 100)
    monkeypatch.setattr(scaling_report, "N_BOOT_PARAMETRIC", 10)
    recs = _isoflop_records(noise_batches=1e-4)
    for r in recs:
        append_result(tmp_path / "results.jsonl", r)
    md = report.write_report(tmp_path, metric="eval/loss", comparisons=[],
                             fits={"isoflop": "N_opt(C)?", "parametric": "L(N, D)?"}).read_text()
    assert "- `isoflop` (Chinchilla approach 2: per-budget parabolas, N_opt(C) and L_opt(C)): N_opt(C)?" in md
    C, N, D, L, S = (np.array(v) for v in zip(*[(r["budget"]["value"], r["params"], r["tokens"],
                                                 r["final"]["eval/loss"], r["seed"]) for r in recs]))
    iso = scaling.isoflop(C, N, L, S, n_boot=100)
    assert f"N_opt ∝ C^a with a = {iso['a']:.3f} (95% CI [{iso['a_ci'][0]:.3f}, {iso['a_ci'][1]:.3f}])" in md
    assert md.count("| interior |") == 3
    par = scaling.fit_parametric(N, D, L, n_boot=10)
    assert f"| alpha | {par['alpha']:.4g} | [{par['ci']['alpha'][0]:.4g}, {par['ci']['alpha'][1]:.4g}] |" in md
    assert "### Held-out budget: fit without C = 1e+20, predict it" in md and "The law passes" in md
    assert "| without budget 1e+18 | 30 |" in md
    assert (tmp_path / "isoflop.png").stat().st_size > 0 and "![IsoFLOP profiles](isoflop.png)" in md
    # Per-run batch noise of 1e-4 relative, spread ~0.3% over seeds: the eval set's error is small.
    ev = md.split("## Evaluation-set uncertainty\n\n", 1)[1].split("\n", 1)[0]
    assert ev.startswith("Evaluation-set sampling error: bootstrap over the 8 evaluation batches") and ev.endswith(
        "small.")


def test_eval_uncertainty_flags_a_noisy_eval_set_and_missing_batches():
    from experiments.study import report

    an = report.analyze(_isoflop_records(noise_batches=0.05), metric="eval/loss", comparisons=[])
    assert an["eval_check"]["status"] == "large"
    assert any("NOT small" in x for x in an["limitations"])
    recs = _isoflop_records()
    for r in recs[:4]:
        del r["eval_batches"]
    an = report.analyze(recs, metric="eval/loss", comparisons=[])
    assert an["eval_check"]["status"] == "missing"
    assert any(x.startswith("Evaluation-set sampling error not measured: 4 of 45 runs") for x in an["limitations"])
