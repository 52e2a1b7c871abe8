"""Calibration of the probability of being best (gnp_study.shrinkage) on simulated studies: pure numpy,
fixed generator seeds. The null shape follows the default digits study: a seed effect shared by every
candidate (sd 2 points) plus per-trial noise (sd 0.5 points)."""

import numpy as np
import pytest

from gnp_study import shrinkage
from gnp_study.shrinkage import prob_best

SEED_SD, NOISE_SD = 2.0, 0.5


def _study(rng, n, effects):
    """(n seeds, k candidates) errors: seed effect shared by all candidates + effects + per-trial noise."""
    k = len(effects)
    return rng.normal(0, SEED_SD, (n, 1)) + np.asarray(effects)[None, :] + rng.normal(0, NOISE_SD, (n, k))


@pytest.mark.parametrize("k", [3, 9, 17])
@pytest.mark.parametrize("n", [3, 4, 6])
def test_null_winner_probability_is_one_over_k(k, n):
    rng = np.random.default_rng(100 * k + n)
    won = []
    for _ in range(120):
        y = _study(rng, n, np.zeros(k))
        won.append(prob_best(y, draws=1000)[y.mean(axis=0).argmin()])
    assert abs(np.mean(won) - 1 / k) <= 0.05, (np.mean(won), 1 / k)


def test_null_bootstrap_share_is_far_from_one_over_k():
    """The reason for the model: the bootstrap share the study printed before is 4-5 times 1/k here."""
    from gnp_study.stats import bootstrap_share
    import pandas as pd

    rng = np.random.default_rng(7)
    won = []
    for _ in range(100):
        y = _study(rng, 4, np.zeros(9))
        won.append(bootstrap_share(pd.DataFrame(y))[int(y.mean(axis=0).argmin())])
    assert np.mean(won) > 0.4


@pytest.mark.parametrize("k,n", [(3, 6), (9, 6), (17, 6)])
def test_clearly_better_candidate_gets_at_least_0_9(k, n):
    rng = np.random.default_rng(k + 10 * n)
    effects = np.zeros(k)
    effects[1] = -3 * NOISE_SD
    got = [prob_best(_study(rng, n, effects), draws=1000)[1] for _ in range(40)]
    assert np.mean(got) >= 0.9, np.mean(got)


@pytest.mark.parametrize("n,floor", [(3, 0.6), (4, 0.7)])
def test_with_fewer_seeds_a_clearly_better_candidate_is_less_sure_but_still_favoured(n, floor):
    """At 3 and 4 seeds the calibrated posterior of a candidate 3 noise sds better is lower than at 6
    (measured 0.64-0.79 at 3 seeds, 0.74-0.90 at 4, for 3/9/17 candidates; docs/statistics.md quotes these): the
    skeptical prior is not yet overcome. It stays well above 1/k and grows with the seeds."""
    means = {}
    for k in (3, 9, 17):
        for m in (n, 6):
            rng = np.random.default_rng(k + 10 * m)
            effects = np.zeros(k)
            effects[1] = -3 * NOISE_SD
            means[k, m] = np.mean([prob_best(_study(rng, m, effects), draws=1000)[1] for _ in range(40)])
        assert floor <= means[k, n] < means[k, 6], (k, means)


def test_calibrated_over_mixed_scenarios():
    """Studies drawn from the model's prior (all equal with probability SPIKE, else horseshoe effects):
    the candidates given probability p are the true best in a share within 0.1 of p, bin by bin. Exact
    ties (all equal) credit each candidate 1/k."""
    rng = np.random.default_rng(2024)
    p_all, truth_all = [], []
    for i in range(500):
        k, n = (3, 9)[i % 2], (4, 6)[(i // 2) % 2]
        if rng.random() < shrinkage.SPIKE:
            effects, truth = np.zeros(k), np.full(k, 1 / k)
        else:
            tau = shrinkage.TAU_SCALE * NOISE_SD * abs(rng.standard_cauchy())
            effects = rng.normal(0, 1, k) * np.abs(rng.standard_cauchy(k)) * tau
            truth = (np.arange(k) == effects.argmin()).astype(float)
        p_all.append(prob_best(_study(rng, n, effects), draws=1000))
        truth_all.append(truth)
    p, truth = np.concatenate(p_all), np.concatenate(truth_all)
    edges = np.linspace(0, 1, 11)
    checked = 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if inside.sum() < 40:
            continue
        checked += 1
        assert abs(truth[inside].mean() - p[inside].mean()) <= 0.1, (lo, hi, truth[inside].mean(), p[inside].mean())
    assert checked >= 4


def test_edge_cases():
    assert prob_best(np.ones((3, 2))) == pytest.approx([0.5, 0.5], abs=0.03)       # identical: shared
    assert prob_best(np.array([[1.0, 2.0], [1.0, 2.0]])).tolist() == [1.0, 0.0]     # lower on every seed, no noise
    assert np.isnan(prob_best(np.array([[1.0, 2.0, 3.0]]))).all()                   # one seed: no noise estimate
    y = np.array([[1.0, np.nan, 3.0], [1.5, np.nan, 2.5], [1.2, np.nan, 2.0]])
    p = prob_best(y)
    assert p[1] == 0.0 and p.sum() == pytest.approx(1.0)                            # no completed seed
    assert prob_best(y, eligible=np.array([False, True, True])).tolist() == [0.0, 0.0, 1.0]
    assert prob_best(y).tolist() == prob_best(y).tolist()                           # fixed generator seed
