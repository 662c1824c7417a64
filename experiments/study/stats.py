"""Statistics for multi-seed architecture comparisons and scaling-law fits.

Pure functions over numpy arrays. The heavy lifting (t intervals, tests,
bootstrap, BH, nonlinear least squares) is delegated to scipy; only what scipy
lacks (Holm's step-down procedure, Cohen's d, the power-law parametrization and
its point bootstrap) is written here.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings

import numpy as np
from scipy import optimize, stats

__all__ = [
    "summarize",
    "compare",
    "correct_pvalues",
    "power_law",
    "fit_power_law",
    "refit_power_law",
    "steps_for_budget",
    "trend_test",
    "jonckheere_terpstra",
]


# scipy >= 1.15 takes `rng`; older releases (setup.py allows 1.14) only `random_state`.
_BOOT_RNG_KW = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; drop or impute non-finite values before computing statistics")
    return arr


def _need_two(n: int, what: str = "") -> None:
    if n < 2:
        suffix = f" ({what})" if what else ""
        raise ValueError(f"need at least 2 seeds for a confidence interval, got {n}{suffix}")


def summarize(values, confidence: float = 0.95, bootstrap: bool = False,
              n_boot: int = 10000, seed: int = 0) -> dict:
    """Mean, sample SD and a confidence interval for the mean of per-seed values.

    The default interval is Student's t: mean ± t_{1-α/2, n-1} · s/√n
    (s with ddof=1). With ``bootstrap=True`` it is the percentile bootstrap
    interval of the mean (Efron & Tibshirani 1993, ch. 13) from
    ``scipy.stats.bootstrap`` with a fixed ``seed``, so results are
    reproducible. Note that with few seeds the percentile bootstrap is too
    narrow; the t interval is the better default for n < ~20.

    Returns dict(n, mean, std, ci_low, ci_high, confidence, method).
    Raises ValueError for fewer than 2 values.
    """
    x = _as_1d(values, "values")
    n = x.size
    _need_two(n)
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1))
    if bootstrap:
        if std == 0.0:
            lo = hi = mean  # every resample has the same mean
        else:
            res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=confidence,
                                  method="percentile", **{_BOOT_RNG_KW: np.random.default_rng(seed)})
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        method = "percentile bootstrap"
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
        method = "student t"
    return {"n": int(n), "mean": mean, "std": std, "ci_low": lo, "ci_high": hi,
            "confidence": confidence, "method": method}


def _wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (Wilcoxon 1945), NaN when undefined.

    Zero differences are dropped (Wilcoxon's convention). With no or a single
    non-zero difference there is no test; scipy would return p = 1 with a
    warning, which reads like evidence of "no effect", so NaN is returned.
    The exact test's smallest attainable two-sided p is 2^(1-n), i.e. with
    fewer than 6 non-zero pairs it can never reach 0.05.
    """
    if np.count_nonzero(diffs) < 2:
        return float("nan")
    return float(stats.wilcoxon(diffs, zero_method="wilcox").pvalue)


def compare(a, b, paired: bool, confidence: float = 0.95) -> dict:
    """Compare per-seed values of two configurations: difference of means a - b.

    Paired (same seeds -> same data order, ``a[i]`` and ``b[i]`` share seed i):
      - CI and p from the paired t-test on d = a - b (``scipy.stats.ttest_rel``),
      - ``p_wilcoxon`` from the Wilcoxon signed-rank test on d (NaN if undefined,
        see ``_wilcoxon_p``),
      - effect size d_z = mean(d) / sd(d) (Cohen 1988, eq. 2.3.5; Lakens 2013).
        d_z is *not* on the same scale as the unpaired d: it grows as seeds are
        more correlated.
    Unpaired:
      - Welch's t-test and Welch-Satterthwaite CI (``ttest_ind(equal_var=False)``,
        Welch 1947),
      - Cohen's d = (mean_a - mean_b) / s_pooled with
        s_pooled = sqrt(((n_a-1)s_a² + (n_b-1)s_b²) / (n_a+n_b-2)) (Cohen 1988).

    When the relevant SD is zero (up to float rounding) the t statistic is ±inf
    (p = 0, CI collapsed onto the difference) for a non-zero difference and
    undefined (p = NaN) for a zero one; d follows (±inf or NaN).

    Returns dict(diff, ci_low, ci_high, p, p_wilcoxon, t, df, d, d_kind, test,
    n_a, n_b, paired, confidence).
    """
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    _need_two(x.size, "a")
    _need_two(y.size, "b")
    out = {"n_a": int(x.size), "n_b": int(y.size), "paired": bool(paired), "confidence": confidence}
    if paired:
        if x.size != y.size:
            raise ValueError(f"paired comparison needs equal lengths, got {x.size} and {y.size}")
        d = x - y
        diff = float(np.mean(d))
        sd = float(np.std(d, ddof=1))
        df = x.size - 1
        if _constant(d):
            t, p, lo, hi = _degenerate(diff)
            sd = 0.0
        else:
            with _quiet_precision():
                res = stats.ttest_rel(x, y)
            ci = res.confidence_interval(confidence_level=confidence)
            t, p, lo, hi = float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)
        out.update(diff=diff, ci_low=lo, ci_high=hi, p=p, p_wilcoxon=_wilcoxon_p(d), t=t, df=float(df),
                   d=_ratio(diff, sd), d_kind="d_z", test="paired t")
    else:
        diff = float(np.mean(x) - np.mean(y))
        va, vb = np.var(x, ddof=1), np.var(y, ddof=1)
        na, nb = x.size, y.size
        s_pooled = float(np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)))
        if _constant(x) and _constant(y):
            t, p, lo, hi = _degenerate(diff)
            df = float(na + nb - 2)
            s_pooled = 0.0
        else:
            with _quiet_precision():
                res = stats.ttest_ind(x, y, equal_var=False)
            ci = res.confidence_interval(confidence_level=confidence)
            t, p, lo, hi = float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)
            df = float(res.df)
        out.update(diff=diff, ci_low=lo, ci_high=hi, p=p, p_wilcoxon=float("nan"), t=t, df=df,
                   d=_ratio(diff, s_pooled), d_kind="d", test="welch t")
    return out


def _constant(v: np.ndarray) -> bool:
    """True when v is constant up to float rounding (scipy's own cancellation criterion)."""
    m = float(np.mean(v))
    return float(np.max(np.abs(v - m))) <= 4 * np.finfo(float).eps * abs(m)


@contextlib.contextmanager
def _quiet_precision():
    # scipy warns "Precision loss ... catastrophic cancellation" when one sample is
    # (nearly) constant; a run-to-run SD of ~0 is legitimate data here, not an error.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        yield


def _degenerate(diff: float):
    if diff == 0.0:
        return float("nan"), float("nan"), diff, diff
    return math.copysign(math.inf, diff), 0.0, diff, diff


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return float("nan") if num == 0.0 else math.copysign(math.inf, num)
    return num / den


def correct_pvalues(pvals, method: str = "holm") -> np.ndarray:
    """Adjust p-values for multiple comparisons; NaNs pass through untouched.

    - ``"holm"``: Holm-Bonferroni step-down (Holm 1979), controls the FWER.
      Sorting p ascending, p_adj(i) = max_{j<=i} min(1, (m - j + 1) p(j)).
    - ``"bh"``: Benjamini-Hochberg step-up (Benjamini & Hochberg 1995), controls
      the FDR; delegated to ``scipy.stats.false_discovery_control``.

    m counts only the non-NaN p-values (a comparison that could not be run is
    not a test). Returns an array in the input order.
    """
    p = np.asarray(pvals, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    if np.any((q < 0) | (q > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {q[(q < 0) | (q > 1)].tolist()}")
    if method == "holm":
        m = q.size
        order = np.argsort(q, kind="stable")
        scaled = (m - np.arange(m)) * q[order]
        adj = np.minimum(np.maximum.accumulate(scaled), 1.0)
        res = np.empty(m)
        res[order] = adj
    elif method == "bh":
        res = stats.false_discovery_control(q, method="bh") if q.size else q
    else:
        raise ValueError(f"unknown correction method {method!r}; use 'holm' or 'bh'")
    out[ok] = res
    return out


def power_law(x, a: float, b: float, c: float):
    """L(C) = a · C^(-b) + c (Kaplan et al. 2020; Hoffmann et al. 2022 add the floor c)."""
    return a * np.power(np.asarray(x, dtype=float), -b) + c


def _model(lx, log_amp, b, c):
    # lx is log(C) - log(C0); the amplitude at C0 keeps log_amp O(1) whatever the compute scale.
    return np.exp(log_amp - b * lx) + c


def _model_jac(lx, log_amp, b, c):
    # Analytic Jacobian: the bootstrap runs ~1000 refits, finite differences triple their cost.
    e = np.exp(log_amp - b * lx)
    return np.stack([e, -lx * e, np.ones_like(lx)], axis=1)


_B_MAX = 10.0


def _initial_guess(lx: np.ndarray, y: np.ndarray):
    """Profile over the floor c: for each candidate, log(y - c) is linear in lx."""
    ymin = float(np.min(y))
    cands = [0.0]
    if ymin > 0:
        cands += list(ymin * (1.0 - np.logspace(-4, 0, 40)))
    best, best_sse = None, np.inf
    for c in cands:
        r = y - c
        if np.any(r <= 0):
            continue
        slope, icpt = np.polyfit(lx, np.log(r), 1)
        b = float(np.clip(-slope, 1e-3, _B_MAX))
        sse = float(np.sum((_model(lx, icpt, b, c) - y) ** 2))
        if sse < best_sse:
            best, best_sse = (float(icpt), b, max(float(c), 0.0)), sse
    if best is None:  # non-positive data: no floor, flat-ish start
        best = (math.log(max(float(np.mean(np.abs(y))), 1e-12)), 0.5, 0.0)
    return best


def _fit(lx, y, p0):
    with warnings.catch_warnings():
        # Covariance is not used; with few points it is often undefined.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        with np.errstate(over="ignore", invalid="ignore"):
            popt, _ = optimize.curve_fit(_model, lx, y, p0=p0,
                                         bounds=([-np.inf, 0.0, 0.0], [np.inf, _B_MAX, np.inf]), jac=_model_jac,
                                         x_scale="jac", max_nfev=2000)
    if not np.all(np.isfinite(popt)):
        raise RuntimeError("power-law fit produced non-finite parameters")
    return popt


def _power_law_data(x, y) -> tuple[np.ndarray, np.ndarray]:
    """x, y as 1-D float arrays, checked for what a power-law fit needs."""
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite for a power-law fit")
    if np.any(x <= 0):
        raise ValueError(f"x must be positive for a power-law fit, got min {x.min():g}")
    n_distinct = np.unique(x).size
    if n_distinct < 3:
        raise ValueError(f"need at least 3 distinct x values for a power-law fit, got {n_distinct}")
    return x, y


def fit_power_law(x, y, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Fit L(C) = a · C^(-b) + c by nonlinear least squares, with a bootstrap CI on b.

    Fitting is done on lx = log C - mean(log C) with parameters (log A, b, c),
    A = a · C0^(-b), so that the Jacobian is well-conditioned whatever the
    magnitude of C (1e10..1e20 FLOPs). Bounds: b in [0, 10], c >= 0; a > 0 by
    construction. Initial guesses come from profiling the log-linear fit over c.

    Several y per x (seeds) are fine: every (x, y) pair is one point. The CI on b
    is the percentile bootstrap over points (resampling with replacement and
    refitting; Efron & Tibshirani 1993). Resamples with < 3 distinct x or whose
    refit fails are skipped; ``n_boot_ok`` says how many succeeded.

    Returns dict(a, b, c, log_a, yhat, residuals (y - yhat), b_ci_low, b_ci_high,
    confidence, n_boot, n_boot_ok, b_at_bound).
    Raises ValueError for < 3 distinct x, non-positive x or non-finite data;
    RuntimeError if the main fit does not converge.
    """
    x, y = _power_law_data(x, y)

    lx0 = float(np.mean(np.log(x)))
    lx = np.log(x) - lx0
    popt = _fit(lx, y, _initial_guess(lx, y))
    log_amp, b, c = (float(v) for v in popt)
    yhat = _model(lx, log_amp, b, c)

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        if np.unique(x[idx]).size < 3:
            continue
        try:
            boot.append(_fit(lx[idx], y[idx], popt)[1])
        except (RuntimeError, ValueError):
            continue
    if len(boot) >= 2:
        alpha = 100 * (1 - confidence) / 2
        lo, hi = (float(v) for v in np.percentile(boot, [alpha, 100 - alpha]))
    else:
        lo = hi = float("nan")
    return {
        "a": math.exp(log_amp + b * lx0), "b": b, "c": c, "log_a": log_amp + b * lx0,
        "yhat": yhat, "residuals": y - yhat,
        "b_ci_low": lo, "b_ci_high": hi, "confidence": confidence,
        "n_boot": int(n_boot), "n_boot_ok": len(boot),
        "b_at_bound": bool(b <= 1e-6 or b >= _B_MAX - 1e-6),
    }


def refit_power_law(x, y, start: dict) -> dict:
    """Refit L(C) = a · C^(-b) + c starting from an earlier fit's parameters.

    For bootstrap loops that resample the data ``start`` (a ``fit_power_law``
    result, or any dict with log_a, b, c) was fitted to: the same warm start
    ``fit_power_law`` uses for its own bootstrap, without the initial-guess
    search and without a CI. Same parametrization and bounds.

    Returns dict(a, b, c, log_a). Raises ValueError for < 3 distinct x,
    non-positive x or non-finite data; RuntimeError if the fit does not converge.
    """
    x, y = _power_law_data(x, y)
    lx0 = float(np.mean(np.log(x)))
    b0 = float(np.clip(start["b"], 0.0, _B_MAX))
    p0 = (float(start["log_a"]) - b0 * lx0, b0, max(float(start["c"]), 0.0))
    log_amp, b, c = (float(v) for v in _fit(np.log(x) - lx0, y, p0))
    return {"a": math.exp(log_amp + b * lx0), "b": b, "c": c, "log_a": log_amp + b * lx0}


def trend_test(levels, values, confidence: float = 0.95) -> dict:
    """Dose-response: ordinary least squares of the metric on log2(level), every (level, seed) a point.

    ``levels`` (positive: batch size, experts, width...) and ``values`` are per run. The slope is the
    change of the metric per doubling of the level; its CI is Student's t with n - 2 degrees of
    freedom (``scipy.stats.linregress``), p is the two-sided test of slope 0. Needs >= 2 distinct
    levels and >= 3 runs.

    Returns dict(slope, ci_low, ci_high, p, intercept, r2, n, n_levels, df, confidence, test).
    """
    x = _as_1d(levels, "levels")
    y = _as_1d(values, "values")
    if x.size != y.size:
        raise ValueError(f"levels and values must have the same length, got {x.size} and {y.size}")
    if np.any(x <= 0):
        raise ValueError(f"levels must be positive for a trend on log2(level), got min {x.min():g}")
    k = int(np.unique(x).size)
    if k < 2 or x.size < 3:
        raise ValueError(f"a trend test needs >= 2 distinct levels and >= 3 runs, got {k} and {x.size}")
    lx = np.log2(x)
    res = stats.linregress(lx, y)
    df = x.size - 2
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * float(res.stderr)
    return {"slope": float(res.slope), "ci_low": float(res.slope) - half, "ci_high": float(res.slope) + half,
            "p": float(res.pvalue), "intercept": float(res.intercept), "r2": float(res.rvalue) ** 2,
            "n": int(x.size), "n_levels": k, "df": df, "confidence": confidence,
            "test": "OLS slope on log2(level)"}


def jonckheere_terpstra(groups, alternative: str = "two-sided", n_perm: int = 10000, seed: int = 0) -> dict:
    """Jonckheere-Terpstra test for an ordered alternative across groups in level order.

    J = sum over pairs of groups i < j of #{(x in i, y in j): y > x} + 0.5 #{ties}. The p-value is
    the permutation distribution of J (exact over all relabellings when there are at most n_perm of
    them, else n_perm random permutations with a fixed seed; Monte Carlo p counts the observed
    arrangement). ``alternative``: "increasing", "decreasing" or "two-sided" (twice the smaller tail).

    Returns dict(J, expected, p, alternative, exact, n_perm).
    """
    gs = [_as_1d(g, "group") for g in groups]
    if len(gs) < 2 or any(g.size == 0 for g in gs):
        raise ValueError("the Jonckheere-Terpstra test needs >= 2 non-empty groups")
    if alternative not in ("increasing", "decreasing", "two-sided"):
        raise ValueError(f"unknown alternative {alternative!r}")
    sizes = [g.size for g in gs]
    allv = np.concatenate(gs)
    labels = np.repeat(np.arange(len(gs)), sizes)

    # cmp[i, k] = 1 if value k > value i, 0.5 on a tie: J sums it over pairs with label_i < label_k.
    cmp = (allv[None, :] > allv[:, None]) + 0.5 * (allv[None, :] == allv[:, None])

    def stat(labs):  # labs: (m, n) label rows -> (m,) statistics
        labs = np.atleast_2d(labs)
        out = np.empty(labs.shape[0])
        for i in range(0, labs.shape[0], 2048):
            lb = labs[i:i + 2048]
            out[i:i + 2048] = np.sum((lb[:, :, None] < lb[:, None, :]) * cmp[None], axis=(1, 2))
        return out

    obs = float(stat(labels)[0])
    n_total = math.factorial(allv.size)
    for s_ in sizes:
        n_total //= math.factorial(s_)
    exact = n_total <= n_perm
    if exact:
        import itertools as _it

        dist = stat(np.array(_multiset_labelings(sizes, _it)))
        ge, le = float(np.mean(dist >= obs - 1e-9)), float(np.mean(dist <= obs + 1e-9))
    else:
        rng = np.random.default_rng(seed)
        dist = stat(np.array([rng.permutation(labels) for _ in range(n_perm)]))
        ge = (1 + float(np.sum(dist >= obs - 1e-9))) / (n_perm + 1)
        le = (1 + float(np.sum(dist <= obs + 1e-9))) / (n_perm + 1)
    p = {"increasing": ge, "decreasing": le, "two-sided": min(1.0, 2 * min(ge, le))}[alternative]
    expected = (allv.size ** 2 - sum(s_ * s_ for s_ in sizes)) / 4
    return {"J": obs, "expected": float(expected), "p": float(p), "alternative": alternative, "exact": exact,
            "n_perm": int(n_total if exact else n_perm)}


def _multiset_labelings(sizes, it):
    """Every distinct assignment of group labels to positions, groups of the given sizes."""
    n = sum(sizes)
    out = []

    def rec(pos_left, g, lab):
        if g == len(sizes) - 1:
            lab = lab.copy()
            lab[list(pos_left)] = g
            out.append(lab)
            return
        for chosen in it.combinations(pos_left, sizes[g]):
            nl = lab.copy()
            nl[list(chosen)] = g
            rest = tuple(p for p in pos_left if p not in chosen)
            rec(rest, g + 1, nl)

    rec(tuple(range(n)), 0, np.zeros(n, dtype=int))
    return out


def steps_for_budget(mode: str, value: float, flops_per_token: float, tokens_per_step: int) -> int:
    """Number of optimizer steps that fits a budget.

    flops:  floor(value / (flops_per_token · tokens_per_step))
    tokens: floor(value / tokens_per_step)
    steps:  int(value)
    Raises ValueError for an unknown mode or when the budget buys < 1 step.
    """
    if mode == "flops":
        if flops_per_token <= 0 or tokens_per_step <= 0:
            raise ValueError(f"flops budget needs positive flops_per_token and tokens_per_step, "
                             f"got {flops_per_token} and {tokens_per_step}")
        steps = _floor_div(value, flops_per_token * tokens_per_step)
    elif mode == "tokens":
        if tokens_per_step <= 0:
            raise ValueError(f"tokens budget needs positive tokens_per_step, got {tokens_per_step}")
        steps = _floor_div(value, tokens_per_step)
    elif mode == "steps":
        steps = int(value)
    else:
        raise ValueError(f"unknown budget mode {mode!r} (value {value}); use 'flops', 'tokens' or 'steps'")
    if steps < 1:
        raise ValueError(f"budget mode {mode!r} with value {value:g} gives {steps} steps; need at least 1")
    return steps


def _floor_div(num: float, den: float) -> int:
    q = num / den
    r = round(q)
    # 6e12 / (3e6 * 2e6) can come out as 0.9999999999999999; a budget that is an
    # exact multiple of the step cost should buy that many steps.
    if abs(q - r) <= 1e-9 * max(1.0, abs(q)):
        return int(r)
    return int(math.floor(q))
