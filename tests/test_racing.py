"""Racing stages on synthetic trial tables (no Ray, no training): the elimination test against hand-worked
cases (ties, a diverged seed, Holm vs Bonferroni), the race's blocks, budget and end, resume from a partial
table, and the decision of a racing stage."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from gnp_study import protocol, racing
from gnp_study.protocol import TrialConfig, count_trials, decide
from gnp_study.racing import Race, RaceConfig, corrected_rejections, replay
from gnp_study.spec import SpecError
from helpers import protocol_spec


def race(keys, seeds=(0, 1, 2, 3), selectable=None, max_trials=None, **cfg):
    c = RaceConfig(**cfg)
    n_study = len(seeds) - len(c.extra_seeds)
    return Race("t", tuple(keys), frozenset(keys if selectable is None else selectable), tuple(seeds), c,
                max_trials if max_trials is not None else len(keys) * n_study)


def table(entries):
    """entries: {(key, seed): value or 'diverged' / 'failed'}."""
    rows = []
    for (k, s), v in entries.items():
        if isinstance(v, str):
            rows.append({"config_key": k, "seed": s, "status": v, "value": math.nan})
        else:
            rows.append({"config_key": k, "seed": s, "status": "completed", "value": float(v)})
    return pd.DataFrame(rows, columns=["config_key", "seed", "status", "value"])


def cauchy_two_sided(t):
    """Two-sided p of a t statistic with 1 degree of freedom (the Cauchy distribution), by hand."""
    return 1 - 2 / math.pi * math.atan(abs(t))


# -------------------------------------------------------------------------------- the correction
def test_holm_steps_down_and_stops_at_the_first_kept():
    # m = 3; sorted: a 0.01 <= 0.05/3 rejected; c 0.03 > 0.05/2 kept, so b (0.04 <= 0.05) is kept too
    out = corrected_rejections({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05, "holm")
    assert out["a"] == (True, pytest.approx(0.05 / 3))
    assert out["c"] == (False, pytest.approx(0.025))
    assert out["b"] == (False, pytest.approx(0.05))


def test_holm_rejects_more_than_bonferroni_when_it_can():
    p = {"a": 0.01, "b": 0.02}  # Holm: 0.01 <= 0.025, then 0.02 <= 0.05; Bonferroni: both vs 0.025
    assert {k for k, (r, _) in corrected_rejections(p, 0.05, "holm").items() if r} == {"a", "b"}
    assert {k for k, (r, _) in corrected_rejections(p, 0.05, "bonferroni").items() if r} == {"a", "b"}
    p = {"a": 0.02, "b": 0.04}  # Holm: 0.02 <= 0.025, 0.04 <= 0.05; Bonferroni: only a
    assert {k for k, (r, _) in corrected_rejections(p, 0.05, "holm").items() if r} == {"a", "b"}
    assert {k for k, (r, _) in corrected_rejections(p, 0.05, "bonferroni").items() if r} == {"a"}


def test_nan_p_is_never_rejected_but_counts_in_the_family():
    out = corrected_rejections({"a": 0.02, "b": math.nan}, 0.05, "bonferroni")
    assert out == {"a": (True, 0.025), "b": (False, 0.025)}
    out = corrected_rejections({"a": 0.03, "b": math.nan}, 0.05, "holm")
    assert out["a"] == (False, 0.025) and out["b"][0] is False


# -------------------------------------------------------------------------------- one block
def test_first_block_hand_worked():
    # A: 1, 2 (mean 1.5, the reference); B = A + 0.5 on both seeds (constant difference: t infinite, p 0:
    # eliminated); C: 3, 1, differences +2, -1: mean 0.5, sd 2.1213, t = 0.5 / (2.1213 / sqrt 2) = 1/3 with
    # 1 df, one-sided p = (1 - 2/pi atan(1/3)) / 2 = 0.3976: kept.
    rc = race(["A", "B", "C"])
    res = table({("A", 0): 1, ("A", 1): 2, ("B", 0): 1.5, ("B", 1): 2.5, ("C", 0): 3, ("C", 1): 1})
    st = replay(rc, res)
    t = st.tests[0]
    assert t.reference == "A" and t.n_seeds == 2
    assert t.comparisons["C"]["p"] == pytest.approx(cauchy_two_sided(1 / 3) / 2, abs=1e-9)
    assert t.comparisons["B"]["p"] == 0.0 and t.comparisons["B"]["threshold"] == pytest.approx(0.025)
    assert t.comparisons["C"]["threshold"] == pytest.approx(0.05)
    assert st.alive == ["A", "C"] and set(st.eliminated) == {"B"}
    e = st.eliminated["B"]
    assert (e.block, e.n_seeds, e.reason, e.reference, e.n_pairs) == (1, 2, "test", "A", 2)
    assert e.diff == pytest.approx(0.5)
    # block 2: seed 2 for A and C only
    assert not st.finished
    assert st.missing(set(zip(res["config_key"], res["seed"]))) == [("A", 2), ("C", 2)]
    assert len(st.wanted) == 8


def test_tie_is_never_eliminated_and_grid_order_breaks_it():
    rc = race(["A", "B"])
    res = table({("A", 0): 2, ("A", 1): 3, ("B", 0): 2, ("B", 1): 3})
    st = replay(rc, res)
    assert st.tests[0].reference == "A"
    assert st.tests[0].comparisons["B"]["p"] is None  # every difference 0: no p-value
    assert st.alive == ["A", "B"] and not st.eliminated


def test_candidate_better_than_reference_is_never_eliminated():
    # B lower than A on both seeds but A is the reference? No: the reference is the lowest mean, so B.
    rc = race(["A", "B"])
    st = replay(rc, table({("A", 0): 3, ("A", 1): 4, ("B", 0): 1, ("B", 1): 2}))
    assert st.tests[0].reference == "B"
    assert st.eliminated["A"].reason == "test"  # A worse by exactly 2 on both seeds
    assert st.finished and st.end_reason == "one left" and st.alive == ["B"]


def test_diverged_seed_eliminates_without_a_test():
    rc = race(["A", "B", "C"])
    res = table({("A", 0): 1, ("A", 1): 2, ("B", 0): 0.5, ("B", 1): "diverged", ("C", 0): 1.2, ("C", 1): 2.9})
    st = replay(rc, res)
    # B has the lowest completed value, but a diverged seed: the choice rule ranks it after A and C
    assert st.tests[0].reference == "A"
    e = st.eliminated["B"]
    assert e.reason == "diverged" and e.block == 1 and math.isnan(e.p)
    assert st.tests[0].comparisons["B"]["seeds_lost"] == [1]
    # the Holm family is the tested comparisons only: C alone, threshold 0.05
    assert st.tests[0].comparisons["C"]["threshold"] == pytest.approx(0.05)


def test_seed_where_the_reference_also_diverged_is_not_a_loss():
    rc = race(["A", "B"])
    res = table({("A", 0): 1, ("A", 1): "diverged", ("B", 0): 1.1, ("B", 1): "failed"})
    st = replay(rc, res)
    assert st.tests[0].reference == "A"  # same number of bad seeds, lower mean
    assert "B" not in st.eliminated  # one pair only: no test; seed 1 lost by both


def test_extras_are_tested_but_never_the_reference():
    # X (an extra alpha, not selectable) is lowest; the reference is the best selectable, A; B is worse
    # than A by 1 on both seeds and eliminated even though X would not be compared with it.
    rc = race(["A", "B", "X"], selectable=["A", "B"])
    st = replay(rc, table({("A", 0): 2, ("A", 1): 3, ("B", 0): 3, ("B", 1): 4, ("X", 0): 0, ("X", 1): 1}))
    assert st.tests[0].reference == "A"
    assert set(st.eliminated) == {"B"}
    assert st.tests[0].comparisons["X"]["p"] == pytest.approx(1.0)  # better than the reference


# -------------------------------------------------------------------------------- the race
def full(values):
    """values: {key: [v_seed0, v_seed1, ...]}."""
    return table({(k, s): v for k, vs in values.items() for s, v in enumerate(vs)})


def test_race_runs_to_all_seeds_and_counts_trials():
    # noisy, nobody eliminated: every candidate gets every seed (the fixed protocol's count)
    vals = {"A": [1, 2, 1.5, 2], "B": [2, 1, 2, 1.4], "C": [1.5, 1.8, 1.1, 2.2]}
    rc = race(list(vals))
    st = replay(rc, full(vals))
    assert st.finished and st.end_reason == "all seeds" and st.alive == ["A", "B", "C"]
    assert len(st.wanted) == 12 and [t.n_seeds for t in st.tests] == [2, 3, 4]


def test_race_stops_on_budget():
    vals = {"A": [1, 2, 1.5, 2], "B": [2, 1, 2, 1.4], "C": [1.5, 1.8, 1.1, 2.2]}
    st = replay(race(list(vals), max_trials=8), full(vals))
    assert st.finished and st.end_reason == "budget"  # 6 + 3 > 8
    assert len(st.wanted) == 6


def test_extra_seeds_go_to_survivors_within_the_budget():
    # study seeds 0, 1; extra 2, 3. B eliminated at block 1 (worse by 1 on both seeds); A and C, tied in
    # noise, get extra seed 2 (2 trials: 6 + 2 = 8 <= 8), then seed 3 would pass the budget.
    vals = {"A": [1, 2, 1.5, 2], "B": [2, 3, 9, 9], "C": [1.5, 1.8, 1.1, 2.2]}
    rc = race(list(vals), seeds=(0, 1, 2, 3), extra_seeds=(2, 3), max_trials=8)
    assert rc.fixed_trials == 6 and rc.bounds() == (6, 8)
    st = replay(rc, full(vals))
    assert set(st.eliminated) == {"B"}
    assert ("A", 2) in st.wanted and ("C", 2) in st.wanted and ("A", 3) not in st.wanted
    assert st.finished and st.end_reason == "budget" and len(st.wanted) == 8


def test_resume_in_the_middle_of_a_race_continues_the_same_race():
    vals = {"A": [1, 2, 1.5, 1.2], "B": [1.5, 2.5, 3, 3], "C": [3, 1, 2.5, 2.6], "D": [1.4, 2.3, 1.3, 1.1]}
    rc = race(list(vals))
    done = replay(rc, full(vals))
    # what ran: the wanted trials only; a driver killed after some of the second block
    ran = full(vals)
    ran = ran[[(k, s) in set(done.wanted) for k, s in zip(ran["config_key"], ran["seed"])]]
    partial = ran[~((ran["seed"] == 2) & ran["config_key"].isin(["C", "D"]))]
    mid = replay(rc, partial)
    assert not mid.finished and mid.eliminated.keys() == {"B"}
    assert mid.missing(set(zip(partial["config_key"], partial["seed"]))) == [("C", 2), ("D", 2)]
    # the trials started ahead of the test: seed 3 of the survivors, leader first (lowest mean so far)
    assert [t[1] for t in mid.lookahead] == [3, 3, 3]
    assert mid.lookahead[0][0] == "A"  # ranked on what ended of seeds 0-2: A 1.5, D 1.85, C 2.0
    # after the rest ended, the same race as without the kill
    again = replay(rc, ran)
    assert again.wanted == done.wanted and again.eliminated.keys() == done.eliminated.keys()
    assert again.end_reason == done.end_reason


def test_lookahead_results_do_not_change_the_eliminations():
    vals = {"A": [1, 2, 1.5, 1.2], "B": [1.5, 2.5, 3, 3], "C": [3, 1, 2.5, 2.6]}
    rc = race(list(vals))
    base = replay(rc, full(vals))
    ran = full(vals)
    ran = ran[[(k, s) in set(base.wanted) for k, s in zip(ran["config_key"], ran["seed"])]]
    extra = table({("B", 2): 0.1})  # a lookahead trial of B (seed 2) that ran before B was eliminated
    st = replay(rc, pd.concat([ran, extra], ignore_index=True))
    assert st.eliminated.keys() == base.eliminated.keys() and st.wanted == base.wanted


# -------------------------------------------------------------------------------- the study
def make_spec(race_cfg=None, gnp_race=None, seeds=(0, 1, 2, 3)):
    """``helpers.protocol_spec`` with one Standard lr, three r and two alphas plus one extra; ``race_cfg``
    and ``gnp_race`` race the r and alpha stages."""
    stages = {"standard": {"space": {"lr": [0.1]}}, "sam": {"r": [0.01, 0.05, 0.1]},
              "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [1.5], "figure2_r": [0.05]}}
    if race_cfg is not None:
        stages["sam"]["race"] = race_cfg
    if gnp_race is not None:
        stages["gnp"]["race"] = gnp_race
    return protocol_spec(stages, seeds=seeds)


STD = {"standard": {"config": {"lr": 0.1, "alpha": 0.0, "r": 0.0}}}


def sam_rows(values):
    """values: {r: [best error per seed]} -> trials table rows of stage sam."""
    out = []
    for r, vs in values.items():
        for s, v in enumerate(vs):
            cfg = {"lr": 0.1, "alpha": 1.0, "r": r}
            tc = TrialConfig("sam", cfg, s)
            out.append({"trial_id": tc.trial_id, "stage": "sam", "config_key": tc.config_key,
                        "config": json.dumps(cfg), "alpha": 1.0, "r": r, "seed": s, "status": "completed",
                        "best_test_error": float(v)})
    return pd.DataFrame(out)


def test_decision_of_a_racing_stage_is_among_the_survivors():
    # r 0.05 is worse than r 0.01 by exactly 1 on seeds 0, 1 (eliminated at block 1), though its mean over
    # those two seeds (2.5) is below r 0.01's mean over four (5.75); r 0.1 is noisy and stays.
    spec = make_spec({"first_block": 2})
    t = sam_rows({0.01: [1, 2, 10, 10], 0.05: [2, 3], 0.1: [1.5, 1.9, 10, 10.5]})
    d = decide("sam", t, spec, STD)
    assert d["r"] == 0.01
    assert [c["r"] for c in d["candidates"]] == [0.01, 0.1]
    race = d["race"]["races"][0]
    cand = {v["r"]: v for v in race["candidates"].values()}
    assert cand[0.05]["status"] == "eliminated" and cand[0.05]["block"] == 1 and cand[0.05]["seeds_run"] == 2
    assert cand[0.01]["seeds_run"] == 4 and cand[0.01]["status"] == "survivor"
    assert d["race"]["trials_run"] == 10 and d["race"]["fixed_trials"] == 12
    # the same table without a race decides on every trial: r 0.05 would win with its two seeds
    assert decide("sam", t, make_spec(), STD)["r"] == 0.05


def test_stage3_races_per_r_and_decides_at_the_best_r():
    spec = make_spec(gnp_race={"first_block": 2})
    dec = dict(STD, sam={"r": 0.01})
    races = protocol.stage_races("gnp", spec, dec)
    assert [r.name for r in races] == ["gnp r=0.01", "gnp r=0.05"]
    assert all(len(r.candidates) == 3 and len(r.selectable) == 2 for r in races)


def test_plan_bounds():
    spec = make_spec({"first_block": 2}, {"first_block": 3, "max_trials": 10, "extra_seeds": [7, 8]})
    assert racing.plan_bounds("sam", spec) == (12, 6, 12)
    # gnp: 3 alphas at 2 r (worst case): fixed 3*4*2 = 24; fewest 3*3*2 = 18; most min(10, 3*6) per r = 20
    assert racing.plan_bounds("gnp", spec) == (24, 18, 20)
    assert count_trials(spec)["gnp"] == 24
    assert racing.plan_bounds("sam", make_spec()) is None


@pytest.mark.parametrize("race_cfg, field", [
    ({"first_block": 1}, "first_block"),
    ({"first_block": 9}, "first_block"),
    ({"correction": "sidak"}, "correction"),
    ({"level": 1.5}, "level"),
    ({"extra_seeds": [2]}, "extra_seeds"),
])
def test_bad_race_config_names_the_field(race_cfg, field):
    with pytest.raises(SpecError, match=field):
        make_spec(race_cfg)


def test_resolved_spec_without_race_has_no_race_key():
    assert "race" not in make_spec().resolved()["stages"]["sam"]
    assert make_spec({"first_block": 2}).resolved()["stages"]["sam"]["race"]["correction"] == "holm"
