"""Compute-optimal scaling analyses (Hoffmann et al. 2022): IsoFLOP profiles and the parametric law.

Pure functions over numpy arrays, one observation per training run:
C (the run's compute budget, FLOPs), N (parameters), D (training tokens), L (loss),
and the run's seed. Every interval is a percentile bootstrap with a fixed seed.

- ``isoflop``     approach 2: per budget a parabola of L against log10 N; its vertex gives
                  N_opt and L_opt (intervals from a two-stage bootstrap: sizes with
                  replacement, then seeds within each size); then log N_opt = a log C + k
                  and log L_opt = -g log C + k' across budgets, with bootstrap CIs on a, g.
                  A budget whose lowest mean or vertex lies at the edge of its size grid is flagged.
- ``fit_parametric``  approach 3: L(N, D) = E + A/N^alpha + B/D^beta, Huber loss (delta 1e-3)
                  on log L, log-parametrised (log L = LSE(a - alpha log N, b - beta log D, e),
                  A = e^a, B = e^b, E = e^e), L-BFGS-B from the best of a grid of starting points
                  with tight tolerances (Besiroglu et al. 2024 trace the original's too-narrow
                  intervals to an optimiser stopped early), bootstrap over runs for every
                  parameter; a parameter that ends on its bound is reported as such, not with an interval.
- ``holdout``     fit on every budget but the largest, predict each held-out (N, D) and
                  compare with the measured seed mean: pass when the interval of the
                  difference (bootstrap prediction interval and t interval of the mean,
                  combined in quadrature) contains 0 at every held-out size.
- ``sensitivity`` refits with one budget left out, and with the smallest / largest size
                  of every budget left out: how much the exponents move with the points included.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize
from scipy import stats as sstats
from threadpoolctl import threadpool_limits

__all__ = ["parabola_vertex", "isoflop", "fit_parametric", "predict_parametric", "holdout", "sensitivity",
           "PARAM_BOUNDS", "HUBER_DELTA"]

HUBER_DELTA = 1e-3
# (a = log A, b = log B, e = log E, alpha, beta)
PARAM_BOUNDS = ((-10.0, 40.0), (-10.0, 40.0), (-5.0, 3.0), (0.0, 3.0), (0.0, 3.0))
_NAMES = ("a", "b", "e", "alpha", "beta")


def _pct(draws, confidence):
    d = np.asarray([v for v in draws if np.isfinite(v)], dtype=float)
    if d.size < 2:
        return float("nan"), float("nan")
    q = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(d, [q, 100 - q])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- approach 2

def parabola_vertex(x, y) -> tuple[float, float, float]:
    """Least-squares y = c2 x^2 + c1 x + c0; returns (x at the vertex, y there, c2).

    The vertex is a minimum only when c2 > 0; otherwise (x, y) are NaN.
    Needs at least 3 distinct x.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if np.unique(x).size < 3:
        raise ValueError(f"a parabola needs at least 3 distinct sizes, got {np.unique(x).size}")
    c2, c1, c0 = np.polyfit(x, y, 2)
    if not c2 > 0:
        return float("nan"), float("nan"), float(c2)
    xv = -c1 / (2 * c2)
    return float(xv), float(c0 - c1 * c1 / (4 * c2)), float(c2)


def _budget_groups(C, N, L, seed):
    """{budget: [(N, values by seed dict)]} with sizes sorted; budgets sorted."""
    out: dict[float, dict[float, dict[int, float]]] = {}
    for c, n, v, s in zip(C, N, L, seed):
        out.setdefault(float(c), {}).setdefault(float(n), {})[int(s)] = float(v)
    return {c: sorted(out[c].items()) for c in sorted(out)}


def _vertex_boot(sizes, rng, n_boot):
    """Two-stage bootstrap of the vertex: sizes with replacement (>= 3 distinct), then seeds within each."""
    xs = [math.log10(n) for n, _ in sizes]
    vals = [np.array(list(v.values())) for _, v in sizes]
    k = len(sizes)
    out = np.full((n_boot, 2), np.nan)
    for i in range(n_boot):
        pick = rng.integers(0, k, k)
        if np.unique(pick).size < 3:
            continue
        x, y = [], []
        for j in pick:
            v = vals[j][rng.integers(0, vals[j].size, vals[j].size)]
            x += [xs[j]] * v.size
            y += v.tolist()
        xv, yv, _ = parabola_vertex(x, y)
        out[i] = (xv, yv)
    return out


def _ols(x, y):
    slope, icpt = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(slope), float(icpt)


def isoflop(C, N, L, seed, *, n_boot: int = 1000, confidence: float = 0.95, rng_seed: int = 0) -> dict:
    """Chinchilla approach 2 over runs (C, N, L, seed); C is the run's budget.

    Returns dict(budgets=[per budget: C, sizes [(N, mean, n)], n_opt, n_opt_ci, l_opt, l_opt_ci,
    curvature, rms_residual (of the runs about the parabola), best_size, edge (None | "smallest" | "largest" | "vertex outside grid" | "not convex"),
    boot_ok], a, a_ci, k, g, g_ci, l_k, n_budgets_fit, confidence, n_boot).
    ``a`` is the exponent of N_opt ∝ C^a, ``g`` that of L_opt ∝ C^(-g); NaN with fewer than
    2 budgets that have an interior, convex minimum. Edge budgets are left out of the
    across-budget fits (their vertex is an extrapolation).
    """
    groups = _budget_groups(C, N, L, seed)
    rng = np.random.default_rng(rng_seed)
    budgets, boots = [], []
    for c, sizes in groups.items():
        x = np.concatenate([[math.log10(n)] * len(v) for n, v in sizes])
        y = np.concatenate([list(v.values()) for _, v in sizes])
        means = [float(np.mean(list(v.values()))) for _, v in sizes]
        best = int(np.argmin(means))
        row = {"C": c, "sizes": [(n, m, len(v)) for (n, v), m in zip(sizes, means)], "best_size": sizes[best][0],
               "n_opt": float("nan"), "n_opt_ci": (float("nan"),) * 2, "l_opt": float("nan"),
               "l_opt_ci": (float("nan"),) * 2, "curvature": float("nan"), "edge": None, "boot_ok": 0,
               "rms_residual": float("nan")}
        if len(sizes) < 3:
            row["edge"] = "fewer than 3 sizes"
            budgets.append(row)
            boots.append(None)
            continue
        xv, yv, c2 = parabola_vertex(x, y)
        row["curvature"] = c2
        row["rms_residual"] = float(np.sqrt(np.mean((y - np.polyval(np.polyfit(x, y, 2), x)) ** 2)))
        if not c2 > 0:
            row["edge"] = "not convex"
        elif best == 0:
            row["edge"] = "smallest"
        elif best == len(sizes) - 1:
            row["edge"] = "largest"
        elif not (x.min() <= xv <= x.max()):
            row["edge"] = "vertex outside grid"
        vb = _vertex_boot(sizes, rng, n_boot)
        ok = np.isfinite(vb[:, 0])
        row.update(n_opt=10 ** xv if math.isfinite(xv) else float("nan"), l_opt=yv, boot_ok=int(ok.sum()))
        lo, hi = _pct(vb[ok, 0], confidence)
        row["n_opt_ci"] = (10 ** lo, 10 ** hi) if math.isfinite(lo) else (float("nan"),) * 2
        row["l_opt_ci"] = _pct(vb[ok, 1], confidence)
        budgets.append(row)
        boots.append(vb)
    out = {"budgets": budgets, "confidence": confidence, "n_boot": n_boot,
           "a": float("nan"), "a_ci": (float("nan"),) * 2, "k": float("nan"),
           "g": float("nan"), "g_ci": (float("nan"),) * 2, "l_k": float("nan"), "n_budgets_fit": 0}
    use = [i for i, b in enumerate(budgets) if b["edge"] is None]
    out["n_budgets_fit"] = len(use)
    if len(use) < 2:
        return out
    lc = np.log10([budgets[i]["C"] for i in use])
    ln = np.log10([budgets[i]["n_opt"] for i in use])
    ll = np.log10([budgets[i]["l_opt"] for i in use])
    out["a"], out["k"] = _ols(lc, ln)
    slope, out["l_k"] = _ols(lc, ll)
    out["g"] = -slope
    a_d, g_d = [], []
    for j in range(n_boot):
        xv = np.array([boots[i][j, 0] for i in use])
        yv = np.array([boots[i][j, 1] for i in use])
        if not (np.all(np.isfinite(xv)) and np.all(yv > 0)):
            continue
        a_d.append(_ols(lc, xv)[0])
        g_d.append(-_ols(lc, np.log10(yv))[0])
    out["a_ci"], out["g_ci"] = _pct(a_d, confidence), _pct(g_d, confidence)
    out["n_boot_ok"] = len(a_d)
    return out


# ----------------------------------------------------------------------------- approach 3

def _lse_terms(theta, logN, logD):
    a, b, e, alpha, beta = theta
    t = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)], axis=0)
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    return m + np.log(s), w / s


def _objective(theta, logN, logD, logL, delta):
    # _lse_terms written out with one array per term: the optimiser calls this ~1e5 times per report
    # on ~60 points, where numpy's per-call overhead, not arithmetic, is the cost (half the time of the
    # stacked form, same values to ~1e-13 relative).
    a, b, e, alpha, beta = theta
    t0 = a - alpha * logN
    t1 = b - beta * logD
    m = np.maximum(np.maximum(t0, t1), e)
    w0, w1, w2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    s = w0 + w1 + w2
    r = m + np.log(s) - logL
    ar = np.abs(r)
    quad = ar <= delta
    # Mean Huber loss scaled by 1/delta^2, so that values are O(1) and the optimiser's relative
    # tolerance means what it says (unscaled, the loss is ~1e-6 and L-BFGS-B stops early).
    n = r.size * delta * delta
    val = np.where(quad, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum() / n
    g = np.where(quad, r, delta * np.sign(r)) / (n * s)  # d val / d pred, times the softmax denominator
    u0, u1 = g * w0, g * w1
    grad = np.array([u0.sum(), u1.sum(), g @ w2, -(u0 @ logN), -(u1 @ logD)])
    return float(val), grad


def _init_grid():
    return np.array(list(itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), (-1.0, -0.5, 0.0, 0.5, 1.0),
                                           (0.0, 0.5, 1.0, 1.5, 2.0), (0.0, 0.5, 1.0, 1.5, 2.0))))


_GRID = None


def _minimize(starts, logN, logD, logL, delta):
    with threadpool_limits(1):  # 5 parameters: BLAS threads only contend (20x slower on a loaded 2-core machine)
        return _minimize_1(starts, logN, logD, logL, delta)


def _minimize_1(starts, logN, logD, logL, delta):
    best = None
    for th0 in starts:
        res = optimize.minimize(_objective, th0, args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                                bounds=PARAM_BOUNDS, options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 5000})
        if best is None or res.fun < best.fun:
            best = res
    return best


def _fit_theta(logN, logD, logL, delta, n_starts, extra=()):
    global _GRID
    if _GRID is None:
        _GRID = _init_grid()
    # Evaluate the whole starting grid at once, then run L-BFGS from the n_starts best.
    a, b, e, al, be = (_GRID[:, i:i + 1] for i in range(5))
    t = np.stack([a - al * logN[None], b - be * logD[None], np.broadcast_to(e, (len(_GRID), logN.size))])
    pred = np.logaddexp(np.logaddexp(t[0], t[1]), t[2])
    r = np.abs(pred - logL[None])
    val = np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).mean(axis=1)
    starts = list(extra) + [_GRID[i] for i in np.argsort(val)[:n_starts]]
    return _minimize(starts, logN, logD, logL, delta)


def predict_parametric(fit: dict, N, D):
    """L(N, D) = E + A/N^alpha + B/D^beta with a fit's parameters."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return fit["E"] + fit["A"] / N ** fit["alpha"] + fit["B"] / D ** fit["beta"]


def _at_bound(theta):
    return {n: bool(abs(v - lo) < 1e-4 or abs(v - hi) < 1e-4) for n, v, (lo, hi) in zip(_NAMES, theta, PARAM_BOUNDS)}


def _derived(theta) -> dict:
    a, b, e, alpha, beta = (float(v) for v in theta)
    s = alpha + beta
    return {"A": math.exp(a), "B": math.exp(b), "E": math.exp(e), "alpha": alpha, "beta": beta,
            "a_opt": beta / s if s > 0 else float("nan"), "b_opt": alpha / s if s > 0 else float("nan")}


def fit_parametric(N, D, L, *, n_boot: int = 200, confidence: float = 0.95, rng_seed: int = 0,
                   delta: float = HUBER_DELTA, n_starts: int = 10, return_draws: bool = False,
                   start=None) -> dict:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3) to per-run points.

    Returns dict(E, A, B, alpha, beta, a_opt (= beta/(alpha+beta), N_opt ∝ C^a_opt), b_opt,
    ci {name: (lo, hi)} (NaN pair for a parameter on its bound), at_bound {name: bool},
    residuals (log L - log L_hat per run), rmse_log, n_obs, n_boot, n_boot_ok, huber_delta,
    converged, theta). ``ci`` comes from a percentile bootstrap over runs (resampled with
    replacement and refitted from the full fit's parameters).
    """
    N, D, L = (np.asarray(v, dtype=float).reshape(-1) for v in (N, D, L))
    if not (N.size == D.size == L.size):
        raise ValueError(f"N, D and L must have the same length, got {N.size}, {D.size}, {L.size}")
    if N.size < 5 or np.any(N <= 0) or np.any(D <= 0) or np.any(L <= 0) or not np.all(np.isfinite(L)):
        raise ValueError("the parametric fit needs at least 5 runs with positive N, D and finite positive loss")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    res = _fit_theta(logN, logD, logL, delta, n_starts, extra=() if start is None else (np.asarray(start, float),))
    theta = res.x
    pred, _ = _lse_terms(theta, logN, logD)
    out = _derived(theta)
    bound = _at_bound(theta)
    out["at_bound"] = {"E": bound["e"], "A": bound["a"], "B": bound["b"], "alpha": bound["alpha"],
                       "beta": bound["beta"]}
    rng = np.random.default_rng(rng_seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, N.size, N.size)
        if np.unique(N[idx]).size < 2 or np.unique(D[idx]).size < 2:
            continue
        r = _minimize([theta], logN[idx], logD[idx], logL[idx], delta)
        if np.all(np.isfinite(r.x)):
            draws.append(_derived(r.x))
    ci = {}
    for k in ("E", "A", "B", "alpha", "beta", "a_opt", "b_opt"):
        lo, hi = _pct([d[k] for d in draws], confidence)
        on = out["at_bound"].get(k, False) or (k in ("a_opt", "b_opt") and (bound["alpha"] or bound["beta"]))
        ci[k] = (float("nan"), float("nan")) if on else (lo, hi)
    out.update(ci=ci, residuals=logL - pred, rmse_log=float(np.sqrt(np.mean((logL - pred) ** 2))),
               n_obs=int(N.size), n_boot=int(n_boot), n_boot_ok=len(draws), huber_delta=delta,
               converged=bool(res.success), theta=[float(v) for v in theta], confidence=confidence)
    if return_draws:
        out["draws"] = draws
    return out


# ----------------------------------------------------------------------------- held-out check

def holdout(C, N, D, L, seed, *, n_boot: int = 200, confidence: float = 0.95) -> dict:
    """Fit approach 3 on every budget but the largest; predict each size at the largest.

    Returns dict(C_held, fit (on the rest), rows [N, D, measured mean, its t CI, n, predicted,
    prediction CI (bootstrap over the fit), diff, diff half-width, ok], passed, n_failed,
    mean_abs_rel_error). A row is ok when |predicted - measured| <= sqrt(h_pred^2 + h_meas^2),
    h the two half-widths.
    """
    C, N, D, L = (np.asarray(v, dtype=float).reshape(-1) for v in (C, N, D, L))
    seed = np.asarray(seed).reshape(-1)
    budgets = np.unique(C)
    if budgets.size < 3:
        raise ValueError(f"the held-out check needs at least 3 budgets (fit on >= 2), got {budgets.size}")
    held = budgets.max()
    fit_mask = C < held
    fit = fit_parametric(N[fit_mask], D[fit_mask], L[fit_mask], n_boot=n_boot, confidence=confidence,
                         return_draws=True)
    rows = []
    for n in np.unique(N[~fit_mask]):
        m = (~fit_mask) & (N == n)
        v = L[m]
        d = float(np.mean(D[m]))
        mean = float(v.mean())
        if v.size >= 2:
            h = float(sstats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        else:
            h = float("nan")
        pred = float(predict_parametric(fit, n, d))
        pd = [float(predict_parametric(dr, n, d)) for dr in fit["draws"]]
        plo, phi = _pct(pd, confidence)
        hp = max(pred - plo, phi - pred) if math.isfinite(plo) else float("nan")
        half = math.sqrt(hp ** 2 + (h if math.isfinite(h) else 0.0) ** 2) if math.isfinite(hp) else float("nan")
        rows.append({"N": float(n), "D": d, "measured": mean, "measured_ci": (mean - h, mean + h), "n": int(v.size),
                     "predicted": pred, "predicted_ci": (plo, phi), "diff": pred - mean, "half": half,
                     "ok": bool(math.isfinite(half) and abs(pred - mean) <= half)})
    del fit["draws"]
    n_failed = sum(not r["ok"] for r in rows)
    return {"C_held": float(held), "fit": fit, "rows": rows, "passed": n_failed == 0, "n_failed": n_failed,
            "mean_abs_rel_error": float(np.mean([abs(r["diff"]) / r["measured"] for r in rows]))}


# ----------------------------------------------------------------------------- sensitivity

def sensitivity(C, N, D, L, seed, *, n_boot: int = 0) -> list[dict]:
    """Point estimates of the exponents under leave-one-budget-out and drop-edge-size variants.

    ``n_boot`` is passed to the IsoFLOP analysis (0: point estimates only).

    Returns one dict per variant: name, n_obs, a (approach 2, NaN when < 2 usable budgets),
    alpha, beta, a_opt (approach 3; NaN when the fit is not possible).
    """
    C, N, D, L = (np.asarray(v, dtype=float).reshape(-1) for v in (C, N, D, L))
    seed = np.asarray(seed).reshape(-1)
    variants = [("all points", np.ones(C.size, bool))]
    for c in np.unique(C):
        variants.append((f"without budget {c:.3g}", C != c))
    for which, pick in (("smallest", np.min), ("largest", np.max)):
        m = np.ones(C.size, bool)
        for c in np.unique(C):
            m &= ~((C == c) & (N == pick(N[C == c])))
        variants.append((f"without the {which} size of each budget", m))
    full = None
    out = []
    for name, m in variants:
        row = {"name": name, "n_obs": int(m.sum()), "a": float("nan"), "alpha": float("nan"),
               "beta": float("nan"), "a_opt": float("nan")}
        try:
            row["a"] = isoflop(C[m], N[m], L[m], seed[m], n_boot=n_boot)["a"]
        except ValueError:
            pass
        try:
            # Each variant starts from the full fit and the 3 best grid points.
            f = fit_parametric(N[m], D[m], L[m], n_boot=0, n_starts=10 if full is None else 3, start=full)
            full = f["theta"] if full is None else full
            row.update(alpha=f["alpha"], beta=f["beta"], a_opt=f["a_opt"])
        except ValueError:
            pass
        out.append(row)
    return out
