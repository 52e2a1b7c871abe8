"""Tests of gnp_study.stats against independent computations: hand-worked small cases, direct scipy calls
with other functions than the module uses (ttest_1samp, t.interval), a power integral written from the
definition, a Monte-Carlo check, and exact bootstrap probabilities by enumeration. No Ray, no torch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from gnp_study.stats import (
    BOOTSTRAP_B,
    describe,
    fmt_signed,
    paired,
    paired_t_power,
    paired_text,
    bootstrap_share,
    prob_best,
    seeds_needed,
)

T975_1 = 12.706204736174705  # Student t quantile 0.975, 1 degree of freedom (printed tables: 12.706)
T975_3 = 3.182446305284263  # 3 degrees of freedom (tables: 3.182)

# ---------------------------------------------------------------- describe


def test_describe_hand_worked_two_values():
    d = describe([3.0, 5.0])
    assert d.n == 2 and d.mean == 4.0
    assert d.std == pytest.approx(math.sqrt(2))  # ((3-4)^2 + (5-4)^2) / (2-1) = 2
    assert d.sem == pytest.approx(1.0)  # sqrt(2) / sqrt(2)
    assert (d.ci_low, d.ci_high) == pytest.approx((4 - T975_1, 4 + T975_1), rel=1e-9)


def test_describe_four_values_against_scipy_interval():
    x = [1.0, 2.0, 3.0, 4.0]
    d = describe(x)
    assert d.std == pytest.approx(math.sqrt(5 / 3))  # squared deviations 2.25+0.25+0.25+2.25 over 3
    lo, hi = stats.t.interval(0.95, 3, loc=2.5, scale=stats.sem(x))
    assert (d.ci_low, d.ci_high) == pytest.approx((lo, hi), rel=1e-12)
    assert d.ci_high - 2.5 == pytest.approx(T975_3 * math.sqrt(5 / 3) / 2)


def test_describe_one_value_has_unknown_spread():
    d = describe([4.2])
    assert d.n == 1 and d.mean == 4.2
    assert math.isnan(d.std) and math.isnan(d.sem) and math.isnan(d.ci_low) and math.isnan(d.ci_high)
    assert d.to_dict()["std"] is None


def test_describe_no_value_and_nan_dropped():
    d = describe([float("nan"), float("nan")])  # every seed diverged
    assert d.n == 0 and math.isnan(d.mean)
    d = describe([1.0, float("nan"), 3.0])
    assert d.n == 2 and d.mean == 2.0


def test_describe_ties_give_a_zero_width_interval():
    d = describe([2.5, 2.5, 2.5])
    assert d.std == 0.0 and d.ci_low == 2.5 and d.ci_high == 2.5


# ---------------------------------------------------------------- paired


def test_paired_uses_the_seeds_both_completed():
    a = {0: 5.0, 1: 6.0, 2: 7.0, 3: 9.0}
    b = {0: 4.0, 1: 4.0, 2: 6.0, 3: 7.0, 4: 1.0}  # seed 4 only in b
    p = paired(a, b)
    assert p.n == 4 and p.seeds == [0, 1, 2, 3] and (p.n_a, p.n_b) == (4, 5)
    diffs = np.array([1.0, 2.0, 1.0, 2.0])
    assert p.diff == 1.5 and p.std == pytest.approx(math.sqrt(1 / 3))
    half = T975_3 * math.sqrt(1 / 3) / 2
    assert (p.ci_low, p.ci_high) == pytest.approx((1.5 - half, 1.5 + half), rel=1e-9)
    assert p.p_t == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue, rel=1e-12)
    assert math.isnan(p.p_wilcoxon)  # fewer than 6 pairs
    assert p.resolved and p.seeds_needed is None
    assert p.mean_a == 6.75 and p.mean_b == 5.25


def test_paired_with_a_missing_seed_as_nan():
    a = pd.Series([5.0, float("nan"), 7.0], index=[0, 1, 2])  # seed 1 diverged in a
    b = pd.Series([4.0, 4.0, 5.5], index=[0, 1, 2])
    p = paired(a, b)
    assert p.n == 2 and p.seeds == [0, 2] and (p.n_a, p.n_b) == (2, 3)
    assert p.diff == pytest.approx(1.25)
    assert "paired over 2 seeds (of 2 and 3 completed)" in paired_text("A", "B", p)


def test_paired_n2_hand_worked_and_unresolved():
    p = paired({0: 2.0, 1: 5.0}, {0: 1.0, 1: 2.0})  # differences 1, 3
    assert p.diff == 2.0 and p.std == pytest.approx(math.sqrt(2))
    assert (p.ci_low, p.ci_high) == pytest.approx((2 - T975_1, 2 + T975_1), rel=1e-9)
    assert not p.resolved and p.seeds_needed is not None and p.seeds_needed > 2


def test_paired_wilcoxon_from_six_pairs():
    a = {s: 10.0 + (s + 1) * 1.01 for s in range(6)}
    b = {s: 10.0 for s in range(6)}  # all six differences positive, distinct
    p = paired(a, b)
    # exact signed-rank null: P(W+ = 21) = 1/64, two-sided 2/64
    assert p.p_wilcoxon == pytest.approx(2 / 64)


def test_paired_one_pair_and_no_pair():
    p1 = paired({0: 3.0, 1: 4.0}, {1: 3.5})
    assert p1.n == 1 and p1.diff == 0.5 and math.isnan(p1.ci_low) and not p1.resolved
    assert p1.seeds_needed is None and "cannot be estimated" in paired_text("A", "B", p1)
    p0 = paired({0: float("nan"), 1: float("nan")}, {0: 1.0, 1: 2.0})  # every seed of a diverged
    assert p0.n == 0 and math.isnan(p0.diff) and not p0.resolved
    assert "no seed completed in both" in paired_text("A", "B", p0)


def test_paired_ties_are_not_resolved_and_need_no_estimate():
    p = paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert p.diff == 0.0 and p.ci_low == 0.0 and p.ci_high == 0.0 and not p.resolved
    assert p.seeds_needed is None and "difference is 0" in p.power_note
    assert "cannot be estimated" in paired_text("A", "B", p)


def test_paired_rejects_duplicate_seeds():
    with pytest.raises(ValueError, match="seed appears twice"):
        paired(pd.Series([1.0, 2.0], index=[0, 0]), {0: 1.0})


def test_paired_text_resolved_and_not():
    res = paired({s: 1.0 + 0.01 * s for s in range(4)}, {s: 2.0 + 0.02 * s for s in range(4)})
    t = paired_text("GNP", "SAM", res)
    assert t.startswith("GNP − SAM = −1.0") and ": resolved (GNP has the lower error; paired t-test p " in t
    noisy = paired({0: 1.0, 1: 3.0, 2: 2.0, 3: 2.5}, {0: 2.0, 1: 2.0, 2: 2.2, 3: 2.4})
    t = paired_text("GNP", "SAM", noisy)
    d = np.array([-1.0, 1.0, -0.2, 0.1])
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert f"= {fmt_signed(d.mean())} points, 95% CI {fmt_signed(lo)} to {fmt_signed(hi)}, paired over 4 seeds" in t
    assert f": not resolved (paired t-test p = {stats.ttest_1samp(d, 0).pvalue:.2f}); about " in t
    assert "(80% power)" in t
    # six distinct positive differences: exact two-sided signed-rank p = 2/64 = 0.03125
    six = paired({s: 2.0 + 0.1 * (s + 1) for s in range(6)}, {s: 2.0 for s in range(6)})
    assert "Wilcoxon p = 0.03)" in paired_text("A", "B", six)


# ---------------------------------------------------------------- power and seeds needed


def _power_by_integral(delta: float, sd: float, n: int) -> float:
    """P(|T| > c) with T = (Z + delta sqrt(n)/sd) / sqrt(V/df), Z standard normal, V chi-square(df),
    integrated over V: the definition of the noncentral t test's power, without scipy.stats.nct."""
    df = n - 1
    c = stats.t.ppf(0.975, df)
    lam = delta * math.sqrt(n) / sd

    def integrand(v):
        s = c * math.sqrt(v / df)
        return (stats.norm.sf(s - lam) + stats.norm.cdf(-s - lam)) * stats.chi2.pdf(v, df)

    val, _ = integrate.quad(integrand, 0, np.inf, limit=200)
    return val


@pytest.mark.parametrize("delta, sd", [(1.0, 1.0), (0.14, 0.5), (-0.3, 0.25), (0.05, 0.02)])
def test_power_matches_the_integral_definition(delta, sd):
    for n in (2, 3, 5, 12):
        assert paired_t_power(delta, sd, n) == pytest.approx(_power_by_integral(delta, sd, n), abs=1e-6)


@pytest.mark.parametrize("delta, sd", [(1.0, 1.0), (0.14, 0.5), (-0.3, 0.25), (0.05, 0.02)])
def test_seeds_needed_is_the_first_n_reaching_80_percent(delta, sd):
    n = seeds_needed(delta, sd)
    brute = next(k for k in range(2, 2000) if _power_by_integral(delta, sd, k) >= 0.8)
    assert n == brute


def test_seeds_needed_textbook_value_and_simulation():
    # Cohen's d = 1, two-sided 5%, power 0.8: a paired t-test needs 10 pairs (power 0.803 at 10,
    # 0.75 at 9; the usual power tables).
    assert seeds_needed(0.5, 0.5) == 10
    rng = np.random.default_rng(7)
    sims = rng.normal(0.5, 0.5, size=(40000, 10))
    t = sims.mean(axis=1) / (sims.std(axis=1, ddof=1) / math.sqrt(10))
    rate = float((np.abs(t) > stats.t.ppf(0.975, 9)).mean())
    assert rate == pytest.approx(0.80, abs=0.01)


def test_seeds_needed_not_estimable():
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(float("nan"), 1.0) is None
    assert seeds_needed(1.0, float("nan")) is None  # n < 2: no spread
    assert seeds_needed(1.0, 0.0) == 2
    assert seeds_needed(1e-6, 10.0) is None  # beyond the search range


# ---------------------------------------------------------------- probability of being best


def test_prob_best_keeps_the_pairing():
    # A is lower than B on every seed, but the seeds differ a lot: resampled independently, B would
    # sometimes win; resampled jointly (paired) never.
    values = pd.DataFrame({"A": [1.0, 5.0, 9.0, 3.0], "B": [1.1, 5.1, 9.1, 3.1]})
    pb = prob_best(values)
    assert pb["A"] == 1.0 and pb["B"] == 0.0


def test_bootstrap_share_exact_two_seed_case():
    # Two seeds: resamples (s0,s0) 1/4, (s1,s1) 1/4, mixed 1/2. A = [0, 5], B = [1, 3]:
    # (s0,s0) A 0 < B 1; (s1,s1) B; mixed A 2.5 > B 2 -> B. So P(A) = 1/4.
    # C = [-10, diverged]: wins (s0,s0) (no bad seed, lowest mean), cannot win (s1,s1) (no completed
    # seed), loses mixed (one bad seed where A and B have none). So with C: P(C) = 1/4, P(A) = 0.
    values = pd.DataFrame({"A": [0.0, 5.0], "B": [1.0, 3.0]})
    pb = bootstrap_share(values)
    sd = math.sqrt(0.25 * 0.75 / BOOTSTRAP_B)
    assert pb["A"] == pytest.approx(0.25, abs=4 * sd) and pb["A"] + pb["B"] == pytest.approx(1.0)
    values["C"] = [-10.0, np.nan]
    bad = pd.DataFrame({"A": [False, False], "B": [False, False], "C": [False, True]})
    pb = bootstrap_share(values, bad)
    assert pb["C"] == pytest.approx(0.25, abs=4 * sd) and pb["A"] == 0.0
    assert pb["B"] == pytest.approx(0.75, abs=4 * sd)


def test_prob_best_ties_share_and_all_diverged_never_wins():
    values = pd.DataFrame({"A": [2.0, 3.0, 4.0], "B": [2.0, 3.0, 4.0], "D": [np.nan] * 3})
    bad = pd.DataFrame({"A": [False] * 3, "B": [False] * 3, "D": [True] * 3})
    pb = bootstrap_share(values, bad)
    assert pb["A"] == pytest.approx(0.5) and pb["B"] == pytest.approx(0.5) and pb["D"] == 0.0
    pb = prob_best(values, bad)  # the model: identical candidates share (Monte Carlo), all-diverged gets 0
    assert pb["A"] == pytest.approx(0.5, abs=0.03) and pb["A"] + pb["B"] == pytest.approx(1.0) and pb["D"] == 0.0


def test_prob_best_only_candidates_the_choice_rule_can_pick():
    # C is lowest but diverged on one seed: the choice rule never picks it, so it is not "best" here.
    values = pd.DataFrame({"A": [2.0, 3.0, 4.0], "B": [2.5, 3.4, 4.6], "C": [0.0, 1.0, np.nan]})
    bad = pd.DataFrame({"A": [False] * 3, "B": [False] * 3, "C": [False, False, True]})
    pb = prob_best(values, bad)
    assert pb["C"] == 0.0 and pb["A"] > pb["B"] and pb.sum() == pytest.approx(1.0)


def test_prob_best_is_reproducible():
    rng = np.random.default_rng(3)
    values = pd.DataFrame(rng.normal(5, 0.3, size=(4, 6)), columns=list("abcdef"))
    a, b = prob_best(values), prob_best(values)
    assert a.equals(b) and a.sum() == pytest.approx(1.0)
    a, b = bootstrap_share(values), bootstrap_share(values)
    assert a.equals(b) and a.sum() == pytest.approx(1.0)
    assert not bootstrap_share(values, seed=1).equals(a)  # the seed is what makes it fixed


def test_fmt_signed():
    assert fmt_signed(-0.14) == "−0.14" and fmt_signed(0.6) == "+0.60" and fmt_signed(float("nan")) == "n/a"
    assert fmt_signed(-0.001) == "+0.00"  # no "−0.00"


def test_choice_rule_matches_a_sort_by_bad_then_mean_then_grid_order():
    """stats.choice_order against Python's sort on (bad seeds, mean with none last, grid position), on
    random tables with ties and candidates without a completed seed; choice_eligible picks the candidates
    with a value and the fewest bad seeds among them."""
    import math

    import numpy as np

    from gnp_study.stats import choice_eligible, choice_order

    rng = np.random.default_rng(7)
    for _ in range(200):
        k = int(rng.integers(1, 8))
        bad = rng.integers(0, 3, size=k)
        means = rng.choice([1.0, 2.0, 2.5, math.nan], size=k)
        expect = sorted(range(k), key=lambda i: (bad[i], math.inf if math.isnan(means[i]) else means[i], i))
        assert list(choice_order(bad, means)) == expect
        has = ~np.isnan(means)
        elig = choice_eligible(bad, has)
        lo = min((bad[i] for i in range(k) if has[i]), default=None)
        assert list(elig) == [bool(has[i] and bad[i] == lo) for i in range(k)]
        first = next((i for i in expect if has[i]), None)
        assert first is None or elig[first]
