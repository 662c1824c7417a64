"""Hand-checked values for experiments.study.stats."""

import math

import numpy as np
import pytest

from experiments.study import stats

T_975_DF4 = 2.7764451051977987  # Student t 97.5% quantile, 4 df (table value 2.776)
T_975_DF3 = 3.182446305284263  # 3 df (table value 3.182)


# ----------------------------------------------------------------- summarize

def test_summarize_t_interval_by_hand():
    s = stats.summarize([1, 2, 3, 4, 5])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(2.5))  # sum of squares 10 / (n-1)
    half = T_975_DF4 * math.sqrt(2.5) / math.sqrt(5)
    assert s["ci_low"] == pytest.approx(3 - half)
    assert s["ci_high"] == pytest.approx(3 + half)
    assert s["ci_low"] == pytest.approx(1.0368, abs=1e-4)
    assert s["ci_high"] == pytest.approx(4.9632, abs=1e-4)


def test_summarize_confidence_level_changes_width():
    s90 = stats.summarize([1, 2, 3, 4, 5], confidence=0.90)
    half = 2.131846786326649 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.95, 4}
    assert s90["ci_high"] - 3 == pytest.approx(half)


def test_summarize_bootstrap_is_reproducible_and_sane():
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    a = stats.summarize(v, bootstrap=True, n_boot=2000, seed=1)
    b = stats.summarize(v, bootstrap=True, n_boot=2000, seed=1)
    assert a == b
    # The percentile interval of the mean of 5 values lies within [min, max] and around the mean.
    assert 1.0 <= a["ci_low"] < 3.0 < a["ci_high"] <= 5.0
    # ...and is narrower than the t interval with so few points.
    assert a["ci_high"] - a["ci_low"] < 2 * T_975_DF4 * math.sqrt(2.5) / math.sqrt(5)


def test_summarize_needs_two_values():
    with pytest.raises(ValueError, match="need at least 2 seeds for a confidence interval, got 1"):
        stats.summarize([1.0])


def test_summarize_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        stats.summarize([1.0, float("nan"), 2.0])


# ----------------------------------------------------------------- compare

def test_paired_t_by_hand():
    a = [2.0, 3.0, 5.0, 4.0]
    b = [1.0, 2.5, 3.5, 3.0]
    # d = [1, .5, 1.5, 1]: mean 1, sd sqrt(0.5/3), se = sd/2, t = 1/se = 4.89898
    sd = math.sqrt(0.5 / 3)
    se = sd / 2
    r = stats.compare(a, b, paired=True)
    assert r["test"] == "paired t" and r["paired"]
    assert r["diff"] == pytest.approx(1.0)
    assert r["t"] == pytest.approx(1 / se)
    assert r["t"] == pytest.approx(4.898979, abs=1e-6)
    assert r["df"] == 3
    assert r["ci_low"] == pytest.approx(1 - T_975_DF3 * se)
    assert r["ci_high"] == pytest.approx(1 + T_975_DF3 * se)
    assert r["p"] == pytest.approx(0.016277, abs=1e-6)  # 2 * P(T_3 > 4.899)
    assert r["d_kind"] == "d_z"
    assert r["d"] == pytest.approx(1 / sd)  # 2.449490
    # Exact Wilcoxon: all 4 differences positive -> W- = 0, two-sided p = 2/2^4.
    assert r["p_wilcoxon"] == pytest.approx(0.125)


def test_paired_is_not_welch():
    a = [2.0, 3.0, 5.0, 4.0]
    b = [1.0, 2.5, 3.5, 3.0]
    assert stats.compare(a, b, paired=False)["p"] > stats.compare(a, b, paired=True)["p"]


def test_welch_by_hand():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, var 2.5
    b = [2.0, 4.0, 6.0, 8.0]  # mean 5, var 20/3
    va, vb, na, nb = 2.5, 20 / 3, 5, 4
    se = math.sqrt(va / na + vb / nb)
    df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    r = stats.compare(a, b, paired=False)
    assert r["test"] == "welch t" and not r["paired"]
    assert r["diff"] == pytest.approx(-2.0)
    assert r["t"] == pytest.approx(-2.0 / se)
    assert r["t"] == pytest.approx(-1.358732, abs=1e-6)
    assert r["df"] == pytest.approx(df)
    assert r["df"] == pytest.approx(4.749415, abs=1e-6)
    from scipy.stats import t as tdist
    assert r["p"] == pytest.approx(2 * tdist.sf(2.0 / se, df))
    q = tdist.ppf(0.975, df)
    assert r["ci_low"] == pytest.approx(-2 - q * se)
    assert r["ci_high"] == pytest.approx(-2 + q * se)
    assert math.isnan(r["p_wilcoxon"])


def test_cohens_d_pooled_by_hand():
    r = stats.compare([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0], paired=False)
    s_pooled = math.sqrt((4 * 2.5 + 3 * 20 / 3) / 7)  # sqrt(30/7) = 2.070197
    assert r["d_kind"] == "d"
    assert r["d"] == pytest.approx(-2.0 / s_pooled)
    assert r["d"] == pytest.approx(-0.966092, abs=1e-6)


def test_paired_requires_equal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        stats.compare([1, 2, 3], [1, 2], paired=True)


def test_compare_needs_two_per_side():
    with pytest.raises(ValueError, match="need at least 2 seeds"):
        stats.compare([1.0], [1.0, 2.0], paired=False)


def test_wilcoxon_nan_when_all_differences_zero():
    r = stats.compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], paired=True)
    assert r["diff"] == 0.0
    assert math.isnan(r["p_wilcoxon"])
    assert math.isnan(r["p"])
    assert math.isnan(r["d"])


def test_wilcoxon_nan_with_single_nonzero_difference():
    r = stats.compare([1.0, 2.0, 3.5], [1.0, 2.0, 3.0], paired=True)
    assert math.isnan(r["p_wilcoxon"])
    assert math.isfinite(r["p"])


def test_constant_nonzero_paired_difference():
    r = stats.compare([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], paired=True)
    assert r["diff"] == pytest.approx(1.0)
    assert r["p"] == 0.0
    assert r["ci_low"] == r["ci_high"] == pytest.approx(1.0)
    assert r["d"] == math.inf


# ----------------------------------------------------------------- multiple comparisons

def test_holm_example():
    adj = stats.correct_pvalues([0.01, 0.04, 0.03, 0.005], method="holm")
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .06
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])


def test_holm_second_example_and_clip():
    np.testing.assert_allclose(stats.correct_pvalues([0.04, 0.001, 0.03, 0.2], "holm"),
                               [0.09, 0.004, 0.09, 0.2])
    np.testing.assert_allclose(stats.correct_pvalues([0.5, 0.6], "holm"), [1.0, 1.0])


def test_bh_by_hand():
    # sorted .001,.03,.04,.2 -> p*m/rank = .004,.06,.05333,.2 -> min from the top: .004,.05333,.05333,.2
    adj = stats.correct_pvalues([0.04, 0.001, 0.03, 0.2], method="bh")
    np.testing.assert_allclose(adj, [0.16 / 3, 0.004, 0.16 / 3, 0.2])
    np.testing.assert_allclose(stats.correct_pvalues([0.01, 0.04, 0.03, 0.005], "bh"),
                               [0.02, 0.04, 0.04, 0.02])


def test_nan_passes_through_and_is_not_counted():
    adj = stats.correct_pvalues([0.01, float("nan"), 0.04], "holm")
    assert math.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2]], [0.02, 0.04])  # m = 2
    adj = stats.correct_pvalues([0.01, float("nan"), 0.04], "bh")
    assert math.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2]], [0.02, 0.04])
    assert stats.correct_pvalues([], "holm").size == 0


def test_unknown_correction():
    with pytest.raises(ValueError, match="unknown correction method 'bonf'"):
        stats.correct_pvalues([0.1], "bonf")


# ----------------------------------------------------------------- power law

def _synthetic(noise=2e-5, seeds=3):
    rng = np.random.default_rng(0)
    x = np.repeat(np.logspace(10, 14, 9), seeds)
    y = 5 * x ** -0.3 + 1.5 + rng.normal(0, noise, x.size)
    return x, y


def test_power_law_recovers_exponent():
    x, y = _synthetic()
    f = stats.fit_power_law(x, y, n_boot=300, seed=0)
    assert abs(f["b"] - 0.3) < 0.02
    assert f["b_ci_low"] <= 0.3 <= f["b_ci_high"]
    assert f["c"] == pytest.approx(1.5, abs=1e-3)
    assert f["n_boot_ok"] > 250 and f["n_boot"] == 300
    np.testing.assert_allclose(f["residuals"], y - stats.power_law(x, f["a"], f["b"], f["c"]), atol=1e-9)
    assert np.std(f["residuals"]) < 5e-5


def test_power_law_noiseless_is_exact():
    x = np.logspace(10, 14, 6)
    f = stats.fit_power_law(x, 5 * x ** -0.3 + 1.5, n_boot=20)
    assert f["b"] == pytest.approx(0.3, abs=1e-4)
    assert f["a"] == pytest.approx(5, rel=1e-2)
    assert f["c"] == pytest.approx(1.5, abs=1e-6)


def test_power_law_bootstrap_deterministic():
    x, y = _synthetic()
    a = stats.fit_power_law(x, y, n_boot=50, seed=3)
    b = stats.fit_power_law(x, y, n_boot=50, seed=3)
    assert (a["b_ci_low"], a["b_ci_high"]) == (b["b_ci_low"], b["b_ci_high"])


def test_power_law_needs_three_distinct_x():
    with pytest.raises(ValueError, match="at least 3 distinct x values for a power-law fit, got 2"):
        stats.fit_power_law([1e10, 1e10, 1e11, 1e11], [2.0, 2.1, 1.9, 1.8])


# ----------------------------------------------------------------- budget

def test_steps_for_budget():
    assert stats.steps_for_budget("flops", 1e13, 5e6, 4096) == math.floor(1e13 / (5e6 * 4096))  # 488
    assert stats.steps_for_budget("flops", 1e13, 5e6, 4096) == 488
    assert stats.steps_for_budget("tokens", 2_048_000, 5e6, 4096) == 500
    assert stats.steps_for_budget("tokens", 2_048_001, 5e6, 4096) == 500
    assert stats.steps_for_budget("steps", 300, 5e6, 4096) == 300
    # Exact multiples must not lose a step to float rounding.
    assert stats.steps_for_budget("flops", 0.3 * 7, 0.3, 7) == 1


def test_steps_for_budget_errors():
    with pytest.raises(ValueError, match="unknown budget mode 'epochs'"):
        stats.steps_for_budget("epochs", 3, 1e6, 128)
    with pytest.raises(ValueError, match=r"'flops' with value 1e\+06"):
        stats.steps_for_budget("flops", 1e6, 5e6, 4096)
    with pytest.raises(ValueError, match="'steps'"):
        stats.steps_for_budget("steps", 0, 5e6, 4096)
