"""Statistics of a parameter study over seeds: one configuration, paired comparisons, the stage winner's
certainty, and the seeds a comparison would need. Pure data code (numpy, pandas, scipy.stats): no Ray, no
torch.

Every configuration of a study runs once per seed, and the same seed gives the same initial weights and
the same data order in every configuration. Two configurations are therefore compared seed by seed (a
paired design): the per-seed differences cancel the part of the error that belongs to the seed.

Public API:
    describe(values) -> Describe                  n, mean, std (ddof=1), standard error, 95% CI (Student t)
    paired(a, b) -> Paired                        a - b seed by seed: mean, 95% CI, paired t, Wilcoxon
    seeds_needed(diff, sd) -> int | None          seeds for 80% power of a two-sided paired t-test
    paired_t_power(diff, sd, n) -> float          that power at n seeds (noncentral t)
    prob_best(values, bad) -> Series              posterior probability of being best (gnp_study.shrinkage)
    bootstrap_share(values, bad) -> Series        share of bootstrap resamples each candidate wins (not a
                                                  probability of being best: kept for comparison)
    CONFIDENCE, BOOTSTRAP_B, BOOTSTRAP_SEED, POWER, WILCOXON_MIN_N

Sources: Student t confidence interval and paired t-test (``scipy.stats.t``, ``scipy.stats.ttest_rel``);
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``); power of the t-test from the noncentral t
distribution (``scipy.stats.nct``; e.g. Cohen 1988, ch. 2); the percentile bootstrap over independent
units, here seeds (Efron & Tibshirani 1993, ch. 6).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as _st

#: Confidence level of every interval (two-sided).
CONFIDENCE = 0.95
#: Power the "seeds needed" estimate aims at.
POWER = 0.80
#: Bootstrap resamples for :func:`prob_best`.
BOOTSTRAP_B = 2000
#: Seed of the bootstrap's generator (``numpy.random.default_rng``): same tables, same numbers.
BOOTSTRAP_SEED = 0
#: The Wilcoxon signed-rank p-value is given from this many pairs on (below it the smallest attainable
#: two-sided p-value, 2 / 2**n, is 0.0625 at n = 5: the test cannot reject at 5%).
WILCOXON_MIN_N = 6
#: Largest seed count :func:`seeds_needed` searches; beyond it the answer is "more than this".
SEEDS_NEEDED_MAX = 10_000


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def _none_if_nan(v):
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


@dataclass(frozen=True)
class Describe:
    """Statistics of one configuration over its completed seeds.

    Attributes:
        n: number of values (completed seeds).
        mean: mean (NaN when n = 0).
        std: sample standard deviation, ddof = 1 (NaN when n < 2: unknown, not zero).
        sem: standard error of the mean, std / sqrt(n) (NaN when n < 2).
        ci_low, ci_high: the two-sided 95% confidence interval of the mean, Student t with n - 1 degrees
            of freedom: mean -+ t_{0.975, n-1} * sem (NaN when n < 2; equal to the mean when std = 0).
    """

    n: int
    mean: float
    std: float
    sem: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN as None)."""
        return {k: _none_if_nan(v) for k, v in asdict(self).items()}


def _t_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t interval of a mean: t_{(1+c)/2, n-1} * std / sqrt(n); NaN for n < 2."""
    if n < 2 or not math.isfinite(std):
        return float("nan")
    return float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)


def describe(values, confidence: float = CONFIDENCE) -> Describe:
    """n, mean, std (ddof = 1), standard error and Student-t confidence interval of some values.

    Args:
        values: numbers (percent test errors of the completed seeds of one configuration); NaN entries are
            dropped (a diverged or failed seed has no value).
        confidence: level of the two-sided interval (0.95).

    Returns:
        :class:`Describe`. n = 0: everything NaN; n = 1: the mean is the value, std / sem / CI NaN (one seed
        says nothing about the spread).
    """
    x = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=float)), dtype=float)
    x = x[np.isfinite(x)]
    n = int(len(x))
    if n == 0:
        nan = float("nan")
        return Describe(0, nan, nan, nan, nan, nan)
    mean = float(np.mean(x))
    if n == 1:
        nan = float("nan")
        return Describe(1, mean, nan, nan, nan, nan)
    std = float(np.std(x, ddof=1))
    sem = std / math.sqrt(n)
    h = _t_half_width(std, n, confidence)
    return Describe(n, mean, std, sem, mean - h, mean + h)


# ----------------------------------------------------------------------------------------------------------
# Power and seeds needed
# ----------------------------------------------------------------------------------------------------------


def paired_t_power(diff: float, sd: float, n: int, level: float = 1 - CONFIDENCE) -> float:
    """Power of the two-sided paired t-test at ``n`` pairs when the true mean difference is ``diff`` and
    the standard deviation of the paired differences is ``sd``.

    Under the alternative, t = mean / (s / sqrt(n)) follows a noncentral t distribution with n - 1 degrees
    of freedom and noncentrality diff / sd * sqrt(n); the power is P(|t| > t_{1 - level/2, n-1}).

    Args:
        diff: mean paired difference (any unit); sd: its standard deviation (same unit, > 0).
        n: number of pairs (>= 2).
        level: significance level of the test (0.05).

    Returns:
        The power in [0, 1].

    Raises:
        ValueError: n < 2 or sd <= 0.
    """
    if n < 2:
        raise ValueError(f"power needs n >= 2 pairs, got {n}")
    if not sd > 0:
        raise ValueError(f"power needs a positive sd, got {sd}")
    df = n - 1
    crit = float(_st.t.ppf(1 - level / 2, df))
    nc = abs(float(diff)) / float(sd) * math.sqrt(n)  # the power is symmetric in the sign of diff
    near = float(_st.nct.sf(crit, df, nc))
    with np.errstate(all="ignore"):
        far = float(_st.nct.cdf(-crit, df, nc))
    # The far tail is below 1 - near; scipy can return NaN for it when it underflows (large nc).
    if not math.isfinite(far):
        far = 0.0
    return min(1.0, near + far)


def seeds_needed(diff: float, sd: float, power: float = POWER, level: float = 1 - CONFIDENCE,
                 n_max: int = SEEDS_NEEDED_MAX) -> int | None:
    """About how many seeds (pairs) a two-sided paired t-test needs to resolve a difference.

    Takes the observed mean paired difference and the observed std of the paired differences as if they
    were the true values, and returns the smallest n >= 2 whose power (:func:`paired_t_power`) reaches
    ``power``. It is a planning figure, not a promise: both inputs are themselves uncertain, most of all
    when they come from few seeds.

    Args:
        diff: observed mean paired difference; sd: observed std of the paired differences (ddof = 1).
        power: the power to reach (0.8). level: significance level (0.05, i.e. a 95% CI excluding 0).
        n_max: the largest n searched.

    Returns:
        The seed count; ``2`` when sd is 0 and diff is not (every pair agrees); ``None`` when it cannot be
        estimated (diff is 0 or not finite, sd not finite: e.g. fewer than 2 pairs) or exceeds ``n_max``.
    """
    if not (_finite(diff) and _finite(sd)) or float(diff) == 0.0 or float(sd) < 0:
        return None
    if float(sd) == 0.0:
        return 2
    # power grows with n: bisection on [2, n_max]
    lo, hi = 2, int(n_max)
    if paired_t_power(diff, sd, hi, level) < power:
        return None
    if paired_t_power(diff, sd, lo, level) >= power:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_t_power(diff, sd, mid, level) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------------------------------------
# Paired comparison
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """``a - b`` compared seed by seed over the seeds where both completed.

    Attributes:
        n: number of pairs (seeds completed in both).
        seeds: those seeds, sorted.
        n_a, n_b: completed seeds of a and of b (so ``n`` out of what each had).
        mean_a, mean_b: the means of a and b over the paired seeds only.
        diff: mean of the paired differences a - b (NaN when n = 0).
        std: std of the paired differences, ddof = 1 (NaN when n < 2).
        ci_low, ci_high: 95% Student-t interval of the mean difference (NaN when n < 2).
        p_t: two-sided paired t-test p-value (``scipy.stats.ttest_rel``; NaN when n < 2 or every difference
            is 0; 0 when the differences are equal and non-zero).
        p_wilcoxon: two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``), only when
            n >= :data:`WILCOXON_MIN_N` and some difference is non-zero; else NaN.
        resolved: the 95% CI excludes 0 (False when it cannot be computed).
        seeds_needed: for an unresolved comparison, about how many seeds would resolve the observed
            difference with 80% power (:func:`seeds_needed`); None when resolved or not estimable.
        power_note: "" or why seeds_needed is None for an unresolved comparison.
    """

    n: int
    seeds: list = field(default_factory=list)
    n_a: int = 0
    n_b: int = 0
    mean_a: float = float("nan")
    mean_b: float = float("nan")
    diff: float = float("nan")
    std: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    p_t: float = float("nan")
    p_wilcoxon: float = float("nan")
    resolved: bool = False
    seeds_needed: int | None = None
    power_note: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN as None, seeds as plain ints)."""
        d = {k: _none_if_nan(v) for k, v in asdict(self).items()}
        d["seeds"] = [int(s) if isinstance(s, (int, np.integer)) else s for s in self.seeds]
        return d


def _as_seed_series(x) -> pd.Series:
    if isinstance(x, pd.Series):
        s = x.astype(float)
    else:
        s = pd.Series(dict(x), dtype=float)
    s = s[np.isfinite(s.to_numpy(dtype=float))]
    if s.index.has_duplicates:
        raise ValueError(f"a seed appears twice: {sorted(s.index[s.index.duplicated()].tolist())}")
    return s


def paired(a, b, confidence: float = CONFIDENCE, power: float = POWER) -> Paired:
    """Compare two configurations seed by seed: the differences a - b over the seeds both completed.

    Args:
        a, b: per-seed values (percent test error), a pandas Series indexed by seed or a ``{seed: value}``
            mapping; NaN values (diverged or failed seeds) are dropped before pairing.
        confidence: level of the interval (0.95); power: the power of the seeds-needed estimate (0.8).

    Returns:
        :class:`Paired`. The difference is a - b: negative means a has the lower error.

    Raises:
        ValueError: a seed appears twice in a or in b.
    """
    sa, sb = _as_seed_series(a), _as_seed_series(b)
    common = sorted(set(sa.index) & set(sb.index))
    n = len(common)
    base = dict(n=n, seeds=common, n_a=int(len(sa)), n_b=int(len(sb)))
    if n == 0:
        return Paired(**base, power_note="no seed completed in both")
    xa = sa.loc[common].to_numpy(float)
    xb = sb.loc[common].to_numpy(float)
    d = xa - xb
    base.update(mean_a=float(xa.mean()), mean_b=float(xb.mean()), diff=float(d.mean()))
    if n == 1:
        return Paired(**base, power_note="one paired seed: no spread to estimate from")
    desc = describe(d, confidence)
    all_zero = bool(np.all(d == 0))
    if all_zero:
        p_t = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p_t = float(_st.ttest_rel(xa, xb).pvalue)
    p_w = float("nan")
    if n >= WILCOXON_MIN_N and not all_zero:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_w = float(_st.wilcoxon(xa, xb).pvalue)
    resolved = bool(desc.ci_low > 0 or desc.ci_high < 0)
    needed, note = None, ""
    if not resolved:
        needed = seeds_needed(desc.mean, desc.std, power, 1 - confidence)
        if needed is None:
            note = ("the observed difference is 0" if desc.mean == 0 else
                    f"more than {SEEDS_NEEDED_MAX} seeds")
    return Paired(**base, std=desc.std, ci_low=desc.ci_low, ci_high=desc.ci_high, p_t=p_t, p_wilcoxon=p_w,
                  resolved=resolved, seeds_needed=needed, power_note=note)


@dataclass
class Ratio:
    """The ratio of two paired means, mean(a) / mean(b), with Fieller's confidence set.

    Attributes:
        n: seeds with both a and b; estimate: mean(a) / mean(b) (NaN when mean(b) is 0 or n == 0);
        ci_low, ci_high: the bounds of the 95% set, finite only when it is an interval (``bounded``);
        bounded: True when the denominator's mean is resolved from 0 at the level (Fieller's interval is
            then finite); otherwise the confidence set is unbounded and no interval is stated.
    """

    n: int
    estimate: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    bounded: bool = False


def ratio(a, b, confidence: float = CONFIDENCE) -> Ratio:
    """mean(a) / mean(b) over the seeds both have, with Fieller's confidence interval (Fieller 1954,
    "Some problems in interval estimation", JRSS B 16): the set of rho for which the one-sample t-test of
    the per-seed values a - rho * b does not reject mean 0 at ``1 - confidence``, i.e. the rho with
    (mean(a) - rho mean(b))^2 <= t^2 var(a - rho b) / n, t the Student-t quantile with n - 1 degrees of
    freedom. Used for the share of full GNP's improvement an amortised second pass keeps.

    Args:
        a, b: per-seed values (Series indexed by seed or ``{seed: value}``; NaN dropped), e.g. the paired
            improvements Standard - GNP(every=k) and Standard - GNP.
        confidence: level of the interval.

    Returns:
        :class:`Ratio`; ``bounded`` is False (no interval) with fewer than 2 seeds or when mean(b) is not
        resolved from 0.

    Raises:
        ValueError: a seed appears twice in a or in b.
    """
    sa, sb = _as_seed_series(a), _as_seed_series(b)
    common = sorted(set(sa.index) & set(sb.index))
    n = len(common)
    if n == 0:
        return Ratio(n=0)
    xa, xb = sa.loc[common].to_numpy(float), sb.loc[common].to_numpy(float)
    ma, mb = float(xa.mean()), float(xb.mean())
    est = ma / mb if mb != 0 else float("nan")
    if n < 2:
        return Ratio(n=n, estimate=est)
    t2 = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) ** 2
    cov = np.cov(xa, xb, ddof=1)
    saa, sab, sbb = cov[0, 0] / n, cov[0, 1] / n, cov[1, 1] / n
    # (mb^2 - t2 sbb) rho^2 - 2 (ma mb - t2 sab) rho + (ma^2 - t2 saa) <= 0
    qa, qb, qc = mb * mb - t2 * sbb, ma * mb - t2 * sab, ma * ma - t2 * saa
    if qa <= 0:  # the denominator's mean is not resolved from 0: the confidence set is unbounded
        return Ratio(n=n, estimate=est)
    # With qa > 0 the estimate itself satisfies the inequality, so the discriminant is >= 0 up to rounding
    root = math.sqrt(max(0.0, qb * qb - qa * qc))
    return Ratio(n=n, estimate=est, ci_low=(qb - root) / qa, ci_high=(qb + root) / qa, bounded=True)


# ----------------------------------------------------------------------------------------------------------
# Probability of being best
# ----------------------------------------------------------------------------------------------------------


def _bad_mask(values: pd.DataFrame, bad: pd.DataFrame | None) -> np.ndarray:
    v = values.to_numpy(dtype=float)
    return np.zeros_like(v, dtype=bool) if bad is None else bad.reindex_like(values).fillna(False).to_numpy(bool)


def choice_order(n_bad, means, sign: float = 1.0) -> np.ndarray:
    """The choice rule of every stage, in one place: candidates ordered by fewest diverged or failed seeds,
    then lowest mean of the completed seeds (a candidate without one last), then the given (grid) order.
    The stage's choice is the first candidate with a completed seed; :func:`gnp_study.protocol.decide`,
    the races of :mod:`gnp_study.racing` and :func:`prob_best` all use this rule.

    Args:
        n_bad: per candidate, the count of diverged or failed seeds (length k).
        means: per candidate, the mean metric over its completed seeds, NaN when it has none (length k).
        sign: +1 when lower is better (errors, losses: the paper), -1 when higher is better (a study's
            ``metric`` with ``mode: max``); "lowest mean" is then the lowest ``sign * mean``.

    Returns:
        The candidates' positions (int array of length k), best first.
    """
    bad = np.asarray(n_bad, dtype=float)
    m = float(sign) * np.asarray(means, dtype=float)
    m = np.where(np.isnan(m), np.inf, m)
    return np.lexsort((np.arange(len(m)), m, bad))


def choice_eligible(n_bad, has_value) -> np.ndarray:
    """The candidates :func:`choice_order` can choose: those with a completed seed and, among them, the
    fewest diverged or failed seeds (a boolean array of length k; all False when none has a value)."""
    bad = np.asarray(n_bad, dtype=float)
    has = np.asarray(has_value, dtype=bool)
    return has & (bad == (bad[has].min() if has.any() else 0))


def prob_best(values: pd.DataFrame, bad: pd.DataFrame | None = None, sign: float = 1.0) -> pd.Series:
    """Each candidate's posterior probability of having the lowest true mean error (the highest true mean
    with ``sign = -1``: the model is symmetric, so it is run on ``sign * values``).

    The model and its calibration are in :mod:`gnp_study.shrinkage` (a hierarchical model of the candidates
    with the seed as a shared effect, skeptical prior: all equal with probability 0.8, else horseshoe
    effects). Only candidates the choice rule can pick compete (:func:`choice_eligible`: those with a
    completed seed and the fewest diverged or failed seeds); the others get 0.

    Args:
        values: one row per seed, one column per candidate; the metric of completed trials (percent error),
            NaN where the seed did not complete (or has no trial).
        bad: same shape, True where the seed's trial diverged or failed (None: no such trial).
        sign: +1 (lower is better) or -1 (higher is better), as for :func:`choice_order`.

    Returns:
        Series indexed like ``values.columns``: summing to 1 over the competing candidates; all 0 when no
        candidate has a value; NaN when more than one competes and the noise cannot be estimated (fewer
        than 2 seeds shared by two candidates).
    """
    from gnp_study import shrinkage

    cols = list(values.columns)
    if values.empty or not cols:
        return pd.Series(0.0, index=cols, dtype=float)
    v = float(sign) * values.to_numpy(dtype=float)
    eligible = choice_eligible(_bad_mask(values, bad).sum(axis=0), np.isfinite(v).any(axis=0))
    return pd.Series(shrinkage.prob_best(v, eligible), index=cols, dtype=float)


def bootstrap_share(values: pd.DataFrame, bad: pd.DataFrame | None = None, b: int = BOOTSTRAP_B,
                    seed: int = BOOTSTRAP_SEED) -> pd.Series:
    """Each candidate's share of bootstrap resamples of the seeds in which the choice rule picks it.

    Not a probability of being best (the study printed it as one until it was measured): with 9 equally
    good candidates over 4 seeds the observed winner's share averages about 0.56, where each is best with
    chance 1/9 (:func:`prob_best` is the calibrated number). Kept to show that difference.

    Method: draw ``b`` resamples of the seeds (rows) with replacement, the same drawn seeds for every
    candidate (so a seed that is hard for all candidates stays hard for all). In each resample apply the
    choice rule of :func:`gnp_study.protocol.decide`: fewest diverged or failed seeds first, then the
    lowest mean over the completed ones; a candidate with no completed seed in the resample cannot win.
    A tie on both counts shares the resample equally. The probability is the share of resamples a
    candidate wins. Generator: ``numpy.random.default_rng(seed)``, so the same table gives the same
    numbers.

    Args:
        values: one row per seed, one column per candidate; the metric of completed trials, NaN where the
            seed did not complete (or has no trial).
        bad: same shape, True where the seed's trial diverged or failed (None: no such trial).
        b: number of resamples; seed: the generator's seed.

    Returns:
        Series indexed like ``values.columns``, summing to 1 (all 0 when no candidate has any value).
    """
    cols = list(values.columns)
    if values.empty or not cols:
        return pd.Series(0.0, index=cols, dtype=float)
    v = values.to_numpy(dtype=float)
    bd = _bad_mask(values, bad)
    rng = np.random.default_rng(seed)
    n_seeds = v.shape[0]
    idx = rng.integers(0, n_seeds, size=(b, n_seeds))
    rv, rb = v[idx], bd[idx]  # (b, n_seeds, k)
    ok = np.isfinite(rv)
    count = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, np.where(ok, rv, 0.0).sum(axis=1) / np.maximum(count, 1), np.inf)
    n_bad = rb.sum(axis=1).astype(float)
    n_bad = np.where(count > 0, n_bad, np.inf)
    # lexicographic minimum: fewest bad seeds, then lowest mean
    best_bad = n_bad.min(axis=1, keepdims=True)
    cand = n_bad == best_bad
    m = np.where(cand, means, np.inf)
    best_m = m.min(axis=1, keepdims=True)
    win = cand & (m == best_m) & np.isfinite(best_m)
    share = win / np.maximum(win.sum(axis=1, keepdims=True), 1)
    return pd.Series(share.sum(axis=0) / b, index=cols, dtype=float)


# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------


def fmt_signed(v: float, decimals: int = 2) -> str:
    """``+0.12`` / ``−0.14`` (a true minus sign), ``n/a`` for NaN/None."""
    if not _finite(v):
        return "n/a"
    v = float(v)
    if round(v, decimals) == 0:
        v = 0.0
    return ("−" if v < 0 else "+") + f"{abs(v):.{decimals}f}"


def _p_value(v: float) -> str:
    if not _finite(v):
        return "n/a"
    return "< 0.001" if v < 0.001 else f"= {v:.3f}" if v < 0.01 else f"= {v:.2f}"


def _p_text(p: Paired) -> str:
    """``"paired t-test p = 0.31"``, with the Wilcoxon signed-rank p-value from 6 pairs on."""
    text = f"paired t-test p {_p_value(p.p_t)}"
    if p.n >= WILCOXON_MIN_N:
        text += f", Wilcoxon p {_p_value(p.p_wilcoxon)}"
    return text


def paired_text(name_a: str, name_b: str, p: Paired, decimals: int = 2, better: str = "lower error",
                unit: str = " points") -> str:
    """One verdict in words, e.g. ``"GNP − SAM = −0.14 points, 95% CI −0.90 to +0.62, paired over 4 seeds:
    not resolved (paired t-test p = 0.55); about 37 seeds would resolve a difference this size (80%
    power)"``.

    Args:
        name_a, name_b: display names; p: the :func:`paired` result of a - b.
        decimals: digits of the numbers.
        better: what the better of the two has, in words: ``"lower error"`` (the paper's metric) or, for a
            study's own metric, e.g. ``"higher accuracy"``; a difference resolved below 0 makes ``name_a``
            the better one when it starts with "lower", ``name_b`` otherwise.
        unit: written after the difference: ``" points"`` (percentage points of an error in percent), or
            ``""`` for a metric in its own units (a loss, an accuracy in [0, 1]).

    Returns:
        The sentence (no final period). "Resolved" means the 95% CI of the paired difference excludes 0.
    """
    head = f"{name_a} − {name_b}"
    if p.n == 0:
        return f"{head}: no seed completed in both, cannot compare"
    pair_note = f"paired over {p.n} seed{'s' if p.n != 1 else ''}"
    if p.n < max(p.n_a, p.n_b):
        pair_note += f" (of {p.n_a} and {p.n_b} completed)"
    if p.n == 1:
        return (f"{head} = {fmt_signed(p.diff, decimals)}{unit}, {pair_note}: not resolved "
                f"(one seed gives no confidence interval; seeds needed cannot be estimated)")
    text = (f"{head} = {fmt_signed(p.diff, decimals)}{unit}, 95% CI {fmt_signed(p.ci_low, decimals)} to "
            f"{fmt_signed(p.ci_high, decimals)}, {pair_note}: ")
    tests = _p_text(p)
    if p.resolved:
        lower = name_a if p.diff < 0 else name_b
        higher = name_b if p.diff < 0 else name_a
        return text + f"resolved ({lower if better.startswith('lower') else higher} has the {better}; {tests})"
    text += f"not resolved ({tests})"
    if p.seeds_needed is not None:
        text += f"; about {p.seeds_needed} seeds would resolve a difference this size (80% power)"
    elif p.power_note:
        text += f"; seeds needed cannot be estimated ({p.power_note})"
    return text
