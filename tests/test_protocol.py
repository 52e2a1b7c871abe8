"""The greedy protocol on plain data: planning, counting and decisions (no Ray, no training)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from gnp_study.protocol import ProtocolError, TrialConfig, config_key, count_trials, decide, plan
from gnp_study.spec import B_A, B_B, BASIC_ALPHA
from helpers import protocol_spec


def make_spec(**over):
    """``helpers.protocol_spec`` with a 2x2 Standard grid, the paper's r grid, the basic alpha set plus
    B_a and B_b at two Figure-2 radii, seeds 0-2; top-level keys in ``over`` replace these."""
    stages = {
        "standard": {"space": {"lr": [0.05, 0.1], "weight_decay": [0.0, 5e-4]}},
        "sam": {"r": [0.01, 0.02, 0.05, 0.1, 0.2]},
        "gnp": {"alpha": list(BASIC_ALPHA), "alpha_extra": list(B_A + B_B), "figure2_r": [0.05, 0.1]},
    }
    return protocol_spec(**{"stages": stages, **over})


def rows(stage, entries):
    """entries: (config dict, seed, status, best error)."""
    out = []
    for cfg, seed, status, err in entries:
        tc = TrialConfig(stage, cfg, seed)
        out.append({"trial_id": tc.trial_id, "stage": stage, "config_key": tc.config_key,
                    "config": json.dumps(cfg), "alpha": cfg["alpha"], "r": cfg["r"], "seed": seed,
                    "status": status, "best_test_error": err})
    return pd.DataFrame(out)


def test_plan_standard_is_grid_times_seeds():
    spec = make_spec()
    trials = plan("standard", spec, {})
    assert len(trials) == 2 * 2 * 3
    assert {(t.config["lr"], t.config["weight_decay"], t.seed) for t in trials} == {
        (lr, wd, s) for lr in (0.05, 0.1) for wd in (0.0, 5e-4) for s in (0, 1, 2)}
    assert all(t.config["alpha"] == 0.0 for t in trials)
    assert len({t.trial_id for t in trials}) == len(trials)
    # all seeds of one configuration share the key, different configurations do not
    assert len({t.config_key for t in trials}) == 4


def test_plan_sam_uses_alpha_one_and_the_standard_decision():
    spec = make_spec()
    dec = {"standard": {"config": {"lr": 0.05, "weight_decay": 5e-4, "alpha": 0.0, "r": 0.0}}}
    trials = plan("sam", spec, dec)
    assert len(trials) == 5 * 3
    assert all(t.config["alpha"] == 1.0 and t.config["lr"] == 0.05 and t.config["weight_decay"] == 5e-4
               for t in trials)
    assert sorted({t.config["r"] for t in trials}) == [0.01, 0.02, 0.05, 0.1, 0.2]


@pytest.mark.parametrize("best_r, expected_r", [(0.02, [0.02, 0.05, 0.1]), (0.05, [0.05, 0.1])])
def test_plan_gnp_runs_alpha_grid_at_best_r_and_figure2_r(best_r, expected_r):
    spec = make_spec()
    dec = {"standard": {"config": {"lr": 0.1, "alpha": 0.0, "r": 0.0}}, "sam": {"r": best_r}}
    trials = plan("gnp", spec, dec)
    alphas = list(BASIC_ALPHA) + list(B_A) + list(B_B)
    assert len(trials) == len(expected_r) * len(alphas) * 3
    assert sorted({t.config["r"] for t in trials}) == sorted(expected_r)
    assert sorted({t.config["alpha"] for t in trials}) == sorted(alphas)


def test_plan_needs_earlier_decisions():
    spec = make_spec()
    with pytest.raises(ProtocolError, match="standard"):
        plan("sam", spec, {})
    with pytest.raises(ProtocolError, match="sam"):
        plan("gnp", spec, {"standard": {"config": {"lr": 0.1}}})


def test_count_trials_matches_plan_in_worst_case():
    spec = make_spec()
    counts = count_trials(spec)
    dec = {"standard": {"config": {"lr": 0.1, "alpha": 0.0, "r": 0.0}}, "sam": {"r": 0.02}}
    assert counts["standard"] == len(plan("standard", spec, {}))
    assert counts["sam"] == len(plan("sam", spec, dec))
    assert counts["gnp"] == len(plan("gnp", spec, dec))
    assert counts["total"] == counts["standard"] + counts["sam"] + counts["gnp"]


def test_decide_picks_lowest_mean_over_seeds():
    spec = make_spec()
    a, b = {"lr": 0.05, "alpha": 0.0, "r": 0.0}, {"lr": 0.1, "alpha": 0.0, "r": 0.0}
    # a: seeds 3.0, 5.0 -> mean 4.0 ; b: 1.0, 8.0 -> mean 4.5 (b has the single best seed, a the best mean)
    df = rows("standard", [(a, 0, "completed", 3.0), (a, 1, "completed", 5.0),
                           (b, 0, "completed", 1.0), (b, 1, "completed", 8.0)])
    d = decide("standard", df, spec)
    assert d["config"]["lr"] == 0.05
    assert d["mean"] == pytest.approx(4.0)
    assert d["std"] == pytest.approx(math.sqrt(2.0))  # sample std of (3, 5)
    assert d["n"] == 2 and d["n_seeds"] == 2
    assert [c["mean"] for c in d["candidates"]] == pytest.approx([4.0, 4.5])


def test_decide_never_chooses_an_all_diverged_configuration():
    spec = make_spec()
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.2}, {"lr": 0.05, "alpha": 1.0, "r": 0.05}
    df = rows("sam", [(a, 0, "diverged", 0.5), (a, 1, "diverged", 0.4),
                      (b, 0, "completed", 9.0), (b, 1, "completed", 11.0)])
    d = decide("sam", df, spec)
    assert d["r"] == 0.05
    diverged = [c for c in d["candidates"] if c["r"] == 0.2][0]
    assert diverged["n"] == 0 and diverged["n_diverged"] == 2 and diverged["mean"] is None


def test_decide_prefers_configurations_without_diverged_seeds():
    spec = make_spec()
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.2}, {"lr": 0.05, "alpha": 1.0, "r": 0.05}
    df = rows("sam", [(a, 0, "diverged", math.nan), (a, 1, "completed", 1.0),
                      (b, 0, "completed", 9.0), (b, 1, "completed", 11.0)])
    assert decide("sam", df, spec)["r"] == 0.05


def test_decide_all_diverged_raises():
    spec = make_spec()
    a = {"lr": 0.05, "alpha": 1.0, "r": 0.2}
    df = rows("sam", [(a, 0, "diverged", math.nan), (a, 1, "failed", math.nan)])
    with pytest.raises(ProtocolError, match="diverged or failed"):
        decide("sam", df, spec)


def test_decide_gnp_only_from_selectable_alphas_at_best_r():
    spec = make_spec()
    base = {"lr": 0.1}
    entries = []
    for alpha, err in [(0.8, 5.0), (0.5, 6.0), (1.1, 1.0)]:  # 1.1 is in B_b: never chosen
        for seed in (0, 1):
            entries.append((dict(base, alpha=alpha, r=0.05), seed, "completed", err))
    entries.append((dict(base, alpha=0.3, r=0.1), 0, "completed", 0.1))  # other r: not competing
    df = rows("gnp", entries)
    d = decide("gnp", df, spec, {"sam": {"r": 0.05}})
    assert d["alpha"] == 0.8 and d["r"] == 0.05 and d["mean"] == pytest.approx(5.0)
    assert {c["alpha"] for c in d["candidates"]} == {0.8, 0.5}


def test_config_key_ignores_order_and_excludes_seed():
    assert config_key({"b": 1, "a": 2}) == config_key({"a": 2, "b": 1})
    t0, t1 = TrialConfig("sam", {"r": 0.1, "alpha": 1.0}, 0), TrialConfig("sam", {"alpha": 1.0, "r": 0.1}, 1)
    assert t0.config_key == t1.config_key and t0.trial_id != t1.trial_id
    assert TrialConfig.from_dict(t0.to_dict()) == t0


# ---------------------------------------------------------------- how sure a decision is (docs/statistics.md)

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402


def _sam_table():
    """Three SAM radii over four seeds: r=0.05 lowest mean, r=0.1 close behind (paired differences
    0.1, -0.1, 0.3, 0.1: CI includes 0), r=0.2 worse on every seed by 1.0 (+ small noise), r=0.02 diverged
    everywhere."""
    base = {"lr": 0.05, "alpha": 1.0}
    win = [3.0, 4.0, 5.0, 4.5]
    close = [3.1, 3.9, 5.3, 4.6]
    far = [4.0, 5.02, 6.0, 5.51]
    entries = []
    for r, errs in ((0.05, win), (0.1, close), (0.2, far)):
        entries += [(dict(base, r=r), s, "completed", e) for s, e in enumerate(errs)]
    entries += [(dict(base, r=0.02), s, "diverged", math.nan) for s in range(4)]
    return rows("sam", entries), win, close, far


def test_decision_margin_runner_up_and_paired_ci():
    spec = make_spec(seeds=[0, 1, 2, 3])
    df, win, close, far = _sam_table()
    d = decide("sam", df, spec)
    assert d["r"] == 0.05 and d["selection"] == "paper" and d["metric"] == "best_test_error"
    by_r = {c["r"]: c for c in d["candidates"]}
    assert d["margin"]["runner_up"] == by_r[0.1]["config_key"]
    diffs = np.array(close) - np.array(win)
    assert d["margin"]["mean_difference"] == pytest.approx(np.mean(close) - np.mean(win))
    mp = d["margin"]["paired"]
    lo, hi = sps.t.interval(0.95, 3, loc=diffs.mean(), scale=sps.sem(diffs))
    assert (mp["diff"], mp["ci_low"], mp["ci_high"]) == pytest.approx((diffs.mean(), lo, hi))
    assert mp["n"] == 4 and mp["resolved"] is False
    assert mp["p_t"] == pytest.approx(sps.ttest_1samp(diffs, 0).pvalue)


def test_decision_indistinguishable_set_and_prob_best():
    spec = make_spec(seeds=[0, 1, 2, 3])
    df, win, close, far = _sam_table()
    d = decide("sam", df, spec)
    by_r = {c["r"]: c for c in d["candidates"]}
    # r=0.1: CI of the paired difference includes 0 -> indistinguishable; r=0.2: always worse by ~1 -> not;
    # r=0.02: no completed seed -> not a candidate for the set
    assert d["indistinguishable"] == [by_r[0.1]["config_key"]]
    assert by_r[0.2]["vs_winner"]["resolved"] is True and by_r[0.2]["vs_winner"]["diff"] > 0
    assert by_r[0.05]["vs_winner"] is None
    assert sum(c["prob_best"] for c in d["candidates"]) == pytest.approx(1.0)
    assert by_r[0.2]["prob_best"] == 0.0 and by_r[0.02]["prob_best"] == 0.0  # worse on every seed / diverged
    assert 0 < by_r[0.1]["prob_best"] < by_r[0.05]["prob_best"]
    # per-candidate 95% CI (Student t) of the mean
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(far), scale=sps.sem(far))
    assert (by_r[0.2]["ci_low"], by_r[0.2]["ci_high"]) == pytest.approx((lo, hi))
    assert d["prob_best_method"]["draws"] >= 1000 and d["prob_best_method"]["seed"] == 0
    assert decide("sam", df, spec) == d  # fixed generator seed: same tables, same numbers
    json.dumps(d, allow_nan=False)  # JSON-ready: no NaN


def test_decision_with_missing_seeds_pairs_what_both_have():
    spec = make_spec(seeds=[0, 1, 2])
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.05}, {"lr": 0.05, "alpha": 1.0, "r": 0.1}
    df = rows("sam", [(a, 0, "completed", 2.0), (a, 1, "completed", 2.2), (a, 2, "completed", 2.1),
                      (b, 0, "completed", 2.5), (b, 1, "diverged", math.nan), (b, 2, "completed", 2.4)])
    d = decide("sam", df, spec)
    assert d["r"] == 0.05  # fewer bad seeds first
    vs = [c for c in d["candidates"] if c["r"] == 0.1][0]["vs_winner"]
    assert vs["n"] == 2 and vs["seeds"] == [0, 2] and (vs["n_a"], vs["n_b"]) == (2, 3)
    assert vs["diff"] == pytest.approx(((2.5 - 2.0) + (2.4 - 2.1)) / 2)


def test_decision_single_seed_and_single_candidate():
    spec = make_spec(seeds=[0])
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.05}, {"lr": 0.05, "alpha": 1.0, "r": 0.1}
    d = decide("sam", rows("sam", [(a, 0, "completed", 2.0), (b, 0, "completed", 2.5)]), spec)
    assert d["std"] is None  # one seed: unknown, not 0
    # one paired seed: no CI, so the runner-up cannot be told apart
    assert d["indistinguishable"] == [d["margin"]["runner_up"]] and d["margin"]["paired"]["ci_low"] is None
    d1 = decide("sam", rows("sam", [(a, 0, "completed", 2.0)]), spec)
    assert d1["margin"] is None and d1["indistinguishable"] == [] and d1["candidates"][0]["prob_best"] == 1.0


def test_decision_ties_share_the_probability():
    spec = make_spec(seeds=[0, 1, 2])
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.05}, {"lr": 0.05, "alpha": 1.0, "r": 0.1}
    errs = [2.0, 2.3, 2.1]
    df = rows("sam", [(a, s, "completed", e) for s, e in enumerate(errs)] +
              [(b, s, "completed", e) for s, e in enumerate(errs)])
    d = decide("sam", df, spec)
    assert d["r"] == 0.05  # grid order breaks the tie, as before
    assert [c["prob_best"] for c in d["candidates"]] == pytest.approx([0.5, 0.5], abs=0.03)
    assert d["indistinguishable"] == [d["candidates"][1]["config_key"]]


def _validation_spec(spec):
    """The spec with data.validation set (a stand-in until the validation-split field is merged: decide
    only reads data.validation and stages)."""
    return SimpleNamespace(data=SimpleNamespace(validation=SimpleNamespace(size=100, seed=0)), stages=spec.stages,
                           seeds=spec.seeds)


def test_decide_in_validation_mode_uses_the_validation_error():
    spec = make_spec(seeds=[0, 1])
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.05}, {"lr": 0.05, "alpha": 1.0, "r": 0.1}
    df = rows("sam", [(a, 0, "completed", 1.0), (a, 1, "completed", 1.2),   # a: best test error
                      (b, 0, "completed", 2.0), (b, 1, "completed", 2.2)])
    df["best_val_error"] = [5.0, 5.2, 3.0, 3.1]  # b: best validation error
    df["test_error_at_best_val"] = [1.5, 1.6, 2.5, 2.6]
    assert decide("sam", df, spec)["r"] == 0.05  # paper mode: test error decides
    d = decide("sam", df, _validation_spec(spec))
    assert d["r"] == 0.1 and d["selection"] == "validation" and d["metric"] == "best_val_error"
    assert d["mean"] == pytest.approx(3.05)
    # the test labels cannot move the choice: scramble every test column, same decision
    df2 = df.assign(best_test_error=[9.0, 0.0, 0.0, 9.0], test_error_at_best_val=[0.0, 0.0, 9.0, 9.0])
    assert decide("sam", df2, _validation_spec(spec)) == d
    with pytest.raises(ProtocolError, match="best_val_error"):
        decide("sam", df.drop(columns=["best_val_error"]), _validation_spec(spec))


def test_count_trials_with_other_seed_counts():
    spec = make_spec()  # 3 seeds
    base = count_trials(spec)
    six = count_trials(spec, n_seeds=6)
    for k in ("standard", "sam", "gnp"):
        assert six[k] == 2 * base[k]
    assert six["total"] == 2 * base["total"]
    assert count_trials(spec, n_seeds=1)["sam"] == 5
    with pytest.raises(ProtocolError, match="seeds"):
        count_trials(spec, n_seeds=0)


def test_stage_lines_in_validation_mode_say_they_compare_validation_error():
    """A stage decided on validation error states its margin as a validation-error difference."""
    from gnp_study.results import stage_certainty_lines

    spec = make_spec(seeds=[0, 1, 2])
    a, b = {"lr": 0.05, "alpha": 1.0, "r": 0.05}, {"lr": 0.05, "alpha": 1.0, "r": 0.1}
    df = rows("sam", [(a, 0, "completed", 1.0), (a, 1, "completed", 1.2), (a, 2, "completed", 1.1),
                      (b, 0, "completed", 2.0), (b, 1, "completed", 2.2), (b, 2, "completed", 2.4)])
    df["best_val_error"] = [5.0, 5.2, 5.1, 3.0, 3.1, 3.3]
    df["test_error_at_best_val"] = [1.5, 1.6, 1.4, 2.5, 2.6, 2.4]
    (line,) = stage_certainty_lines({"sam": decide("sam", df, _validation_spec(spec))})
    # runner-up r=0.05 is worse by the mean paired validation-error difference (5.1 - 3.133...)
    assert "r=0.05 is +1.97 points worse on validation error" in line
    (paper_line,) = stage_certainty_lines({"sam": decide("sam", df, spec)})
    assert "on validation error" not in paper_line and "r=0.1 is +1.10 points worse," in paper_line
