"""The probability that each candidate of a stage is truly the best, from a model that shrinks candidates
towards each other when the seeds cannot tell them apart. Pure numpy/scipy: no Ray, no torch.

Why not the bootstrap: the share of bootstrap resamples a candidate wins is the probability that the
choice *would be repeated*, not that the candidate *is* best. With k equally good candidates each is
best with chance 1/k, but the bootstrap gives the observed winner far more (9 equal candidates over 4
seeds: about 0.56 on average instead of 0.11), because it takes the observed means as the truth. A number called a probability must be calibrated; this one is a posterior probability under an
explicit prior, and it is checked for calibration by simulation in the test suite.

The model (one stage; ``y[s, j]`` the error of candidate j on seed s, percent):

    y[s, j] = b[s] + mu[j] + e[s, j],      e ~ N(0, sigma^2)            (seeds pair the candidates)
    mu[j]   = m + u[j]
    with prior probability SPIKE:     u[j] = 0 for every j                   (the candidates are equal)
    otherwise (horseshoe):            u[j] ~ N(0, lambda[j]^2 tau^2),
                                      lambda[j] ~ half-Cauchy(0, 1),  tau / sigma ~ half-Cauchy(0, TAU_SCALE)
    p(m) flat, p(sigma^2) proportional to 1 / sigma^2, the seed effects b[s] removed by the two-way fit.

The spike says "the grid's candidates may all be equally good" (most stage-3 grids of a small study
are: nothing resolved); the horseshoe (Carvalho, Polson & Scott 2010, "The horseshoe estimator for
sparse signals", Biometrika 97(2)) shrinks small differences to 0 and leaves a clearly different
candidate almost unshrunk. The per-candidate means ``c[j]`` and the residual sum of squares come from the
additive two-way fit (seed + candidate, least squares on the completed cells); the noise variance's
posterior from the residuals is that of the two-way ANOVA (scaled inverse chi-square with (seeds - 1)
(candidates - 1) degrees of freedom for a complete table). The hyper-parameters (sigma^2, tau, m) are
integrated on a grid (equal-probability quantiles of their priors), each lambda[j] on a grid given them,
and each candidate's probability of having the lowest true mean is the share of posterior draws in which
it does (Monte Carlo, fixed generator seed: the same table gives the same numbers). Under the spike every
candidate is best alike, so it takes 1/k of such a draw: with equal candidates the winner's probability
tends to 1/k; with one candidate clearly lower it tends to 1.

Calibration (tests/test_shrinkage.py, simulated studies shaped like the paper's grids): the winner's mean
probability under the null is within 0.05 of 1/k for k in {3, 9, 17} candidates and 3, 4 or 6 seeds
(measured: +0.01 to +0.04); a candidate lower than the others by 3 per-trial noise sds gets >= 0.9 on
average from 6 seeds (0.93-0.99); with 4 seeds 0.80-0.93 and with 3 seeds 0.64-0.75, because the noise
is then estimated from few degrees of freedom and the skeptical prior holds back (a paired t-test over 3
seeds does not resolve such a difference either); over studies drawn
from the prior, candidates given probability p are best in a share within 0.1 of p.

Public API:
    prob_best(values, eligible) -> np.ndarray      each candidate's posterior probability of being best
    SPIKE, TAU_SCALE, DRAWS, SEED                  the prior and the Monte Carlo settings
    METHOD                                         one sentence naming the method (stored in decisions.json)
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

#: Prior probability that every candidate of a stage is equally good (the spike).
SPIKE = 0.8
#: Scale of the half-Cauchy prior of the global effect sd tau, in units of the per-trial noise sd sigma.
TAU_SCALE = 1.0
#: Posterior draws of the Monte Carlo estimate (its standard error is below 0.008 for any probability).
DRAWS = 4000
#: Seed of the draws' generator (``numpy.random.default_rng``).
SEED = 0
# Grid sizes: sigma^2, tau (besides the spike), m, lambda.
_NS, _NT, _NM, _NL = 10, 24, 20, 32

#: How the probability is computed (decisions.json keeps it beside the numbers).
METHOD = (f"posterior probability of the lowest true mean under a hierarchical model of the candidates "
          f"(seed effects removed by the two-way fit; prior: all candidates equal with probability {SPIKE}, "
          f"else horseshoe effects, Carvalho, Polson & Scott 2010, global scale half-Cauchy({TAU_SCALE}) "
          f"x noise sd), {DRAWS} posterior draws, numpy default_rng({SEED}); among the candidates the choice "
          f"rule can pick (fewest diverged or failed seeds)")


def _two_way(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Additive least-squares fit ``y[s, j] = b[s] + c[j]`` on the finite cells.

    Args:
        y: (seeds, candidates) array, NaN where a seed did not complete; only seeds with at least two
            completed candidates carry information about the differences and are used.

    Returns:
        ``(c, n, ssr, df)``: candidate effects (defined up to a common shift; NaN for a candidate with no
        usable cell), completed usable seeds per candidate, the residual sum of squares and its degrees of
        freedom (cells - seeds - candidates + 1; may be <= 0).
    """
    ok = np.isfinite(y)
    y = y[ok.sum(axis=1) >= 2]
    ok = np.isfinite(y)
    n = ok.sum(axis=0)
    used = n > 0
    yz = np.where(ok, y, 0.0)
    col = np.where(used, yz.sum(axis=0) / np.maximum(n, 1), np.nan)
    row = np.zeros(y.shape[0])
    for _ in range(200):  # alternating means: exact in one pass for a complete table
        row_new = np.where(ok, y - np.nan_to_num(col)[None, :], 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
        col_new = np.where(used, np.where(ok, y - row_new[:, None], 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
        done = np.allclose(row_new, row, atol=1e-12) and np.allclose(np.nan_to_num(col_new), np.nan_to_num(col),
                                                                     atol=1e-12)
        row, col = row_new, col_new
        if done:
            break
    resid = np.where(ok, y - row[:, None] - np.nan_to_num(col)[None, :], 0.0)
    df = int(ok.sum() - y.shape[0] - used.sum() + 1)
    return col, n, float((resid ** 2).sum()), df


def prob_best(values: np.ndarray, eligible: np.ndarray | None = None, draws: int = DRAWS, seed: int = SEED,
              spike: float = SPIKE, tau_scale: float = TAU_SCALE) -> np.ndarray:
    """Each candidate's posterior probability of having the lowest true mean (model: module docstring).

    Args:
        values: (seeds, candidates) array of the metric (percent error, lower is better), NaN where the
            seed did not complete; rows are seeds shared by all candidates (the paired design).
        eligible: boolean (candidates,) mask of the candidates that can be best (the choice rule's: fewest
            diverged or failed seeds); None: every candidate with a completed seed.
        draws, seed: Monte Carlo draws and generator seed; spike, tau_scale: the prior (tests vary them).

    Returns:
        (candidates,) array summing to 1 over the eligible candidates with a completed seed, 0 elsewhere;
        a single such candidate gets 1. All NaN when more than one is eligible and the noise cannot be
        estimated (no residual degree of freedom, e.g. one seed) or an eligible candidate shares no seed
        with another; all 0 when none is eligible.
    """
    y = np.asarray(values, dtype=float)
    k = y.shape[1]
    has = np.isfinite(y).any(axis=0)
    elig = has if eligible is None else (np.asarray(eligible, bool) & has)
    out = np.zeros(k)
    if elig.sum() <= 1:
        out[elig] = 1.0
        return out
    c, n, ssr, df = _two_way(y)
    use = np.isfinite(c)
    if df < 1 or not use[elig].all():  # no noise estimate, or a competitor shares no seed with the others
        return np.full(k, np.nan)
    cu, nu, eu = c[use], n[use].astype(float), elig[use]
    ssr = max(ssr, 1e-12 * max(1.0, float(np.nanvar(cu))) * df)  # identical residuals: a tiny noise, not 0
    q = lambda m: (np.arange(m) + 0.5) / m  # noqa: E731  equal-probability quantile levels
    s2 = ssr / _st.chi2.ppf(1 - q(_NS), df)                         # sigma^2 | residuals
    tau = np.concatenate([[0.0], tau_scale * np.tan(np.pi / 2 * q(_NT))])  # tau / sigma
    p_tau = np.concatenate([[spike], np.full(_NT, (1 - spike) / _NT)])
    lam = np.tan(np.pi / 2 * q(_NL))
    # m: the level most candidates sit at (all of them under the spike): around their mean and median
    half = 4 * max(float(np.sqrt(s2.max() / nu.min())), float(np.std(cu)) / np.sqrt(len(cu)))
    lo, hi = sorted((float(np.mean(cu)), float(np.median(cu))))
    m = np.linspace(lo - half, hi + half, _NM)
    S2, T, M = s2[:, None, None, None, None], tau[None, :, None, None, None], m[None, None, :, None, None]
    L, C, V = lam[None, None, None, None, :], cu[None, None, None, :, None], (s2[:, None] / nu[None, :])
    prior_var = (L * T) ** 2 * S2                                        # (NS, NT+1, 1, 1, NL)
    var = V[:, None, None, :, None] + prior_var                          # (NS, NT+1, 1, K, NL)
    dens = np.exp(-0.5 * (C - M) ** 2 / var) / np.sqrt(var)              # (NS, NT+1, NM, K, NL)
    log_w = np.log(dens.mean(axis=-1) + 1e-300).sum(axis=-1) + np.log(p_tau)[None, :, None]
    w = np.exp(log_w - log_w.max())
    rng = np.random.default_rng(seed)
    idx = rng.choice(w.size, size=draws, p=(w / w.sum()).ravel())
    i_s, i_t, i_m = np.unravel_index(idx, w.shape)
    d = dens[i_s, i_t, i_m]                                              # (draws, K, NL)
    cum = np.cumsum(d, axis=-1)
    pick = (cum < rng.random((draws, len(cu), 1)) * cum[..., -1:]).sum(axis=-1)
    t2 = (lam[np.minimum(pick, _NL - 1)] * tau[i_t][:, None]) ** 2 * s2[i_s][:, None]
    v = V[i_s]
    shrink = t2 / (t2 + v)
    md = m[i_m][:, None]
    mu = md + shrink * (cu[None, :] - md) + np.sqrt(shrink * v) * rng.standard_normal((draws, len(cu)))
    # Under the spike every candidate has the same mean: a random key shares such a draw equally.
    mu = np.where(eu[None, :], mu, np.inf)
    order = np.argsort(rng.random(mu.shape), axis=1)                    # random tie-breaking order
    mu_perm = np.take_along_axis(mu, order, axis=1)
    win = np.take_along_axis(order, mu_perm.argmin(axis=1)[:, None], axis=1)[:, 0]
    pu = np.bincount(win, minlength=len(cu)) / draws
    out[use] = pu
    return out
