"""The one-experiment prototype (benchmarks/bench_one_experiment.py, benchmarks/README.md) runs the study's
protocol, not something easier: its searcher suggests each stage's planned trials, waits for the stage's
last trial, decides with the study's own rule, and plans the next stage from that decision."""

from __future__ import annotations

import json

import pytest
from ray.tune.search import Searcher

from gnp_study import protocol
from gnp_study.spec import parse_spec
from helpers import load_benchmark



@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_one_experiment")


def _spec():
    return parse_spec({"name": "t", "data": {"dataset": "digits", "validation": {"size": 100}},
                       "model": {"name": "small_cnn"},
                       "training": {"epochs": 2, "batch_size": 32, "lr": 0.05},
                       "stages": {"standard": {"space": {"lr": [0.02, 0.1]}}, "sam": {"r": [0.05, 0.2]},
                                  "gnp": {"alpha": [0.3, 0.6]}},
                       "seeds": [0, 1]})


def _end(searcher, tune_id, trial, val):
    searcher.on_trial_complete(tune_id, {"status": "completed", "best_test_error": val + 1.0,
                                         "best_val_error": val, "test_error_at_best_val": val + 0.5, "pid": 7})


def test_the_searcher_runs_the_stages_in_order_on_the_decisions(bench):
    s = _spec()
    searcher = bench._searcher_class()(s)
    # the score a configuration gets: lr 0.1 wins stage 1, r 0.2 stage 2, alpha 0.6 stage 3
    score = {"lr": {0.02: 5.0, 0.1: 3.0}, "r": {0.05: 4.0, 0.2: 2.0}, "alpha": {0.3: 6.0, 0.6: 1.0}}
    seen, n = [], 0
    for stage, key in (("standard", "lr"), ("sam", "r"), ("gnp", "alpha")):
        got = []
        while True:
            cfg = searcher.suggest(f"t{n}")
            if cfg is None or cfg is Searcher.FINISHED:
                break
            got.append((f"t{n}", cfg["trial"]))
            n += 1
        # the stage's first suggestion decided the stage before it: every trial the study plans from
        # those decisions, in plan order, and nothing of the next stage yet
        planned = protocol.plan(stage, s, dict(searcher.decisions))
        assert [t["trial_id"] for _, t in got] == [tc.trial_id for tc in planned]
        assert cfg is None  # waiting: the stage's trials have not ended
        for tune_id, t in got[:-1]:
            _end(searcher, tune_id, t, score[key][t["config"][key]] + 0.1 * t["seed"])
        assert searcher.suggest(f"t{n}") is None  # one trial still running: no decision yet
        assert stage not in searcher.decisions
        tune_id, t = got[-1]
        _end(searcher, tune_id, t, score[key][t["config"][key]] + 0.1 * t["seed"])
        seen += [t for _, t in got]
    # the last suggest after stage 3 decides it and ends the experiment
    assert searcher.suggest(f"t{n}") is Searcher.FINISHED
    assert searcher.decisions["standard"]["config"]["lr"] == 0.1
    assert searcher.decisions["sam"]["r"] == 0.2
    assert searcher.decisions["gnp"]["alpha"] == 0.6 and searcher.decisions["gnp"]["r"] == 0.2
    # stage 2 and 3 trials were planned from the decisions: lr 0.1 everywhere, stage 3 at r 0.2
    assert {t["config"]["lr"] for t in seen if t["stage"] != "standard"} == {0.1}
    assert {t["config"]["r"] for t in seen if t["stage"] == "gnp"} == {0.2}
    # the decisions are those of the study's own rule on the same rows
    import pandas as pd

    rows = pd.DataFrame(searcher.rows)
    ref = protocol.decide("standard", rows, s, {})
    assert json.dumps(ref["config"]) == json.dumps(searcher.decisions["standard"]["config"])


def test_a_failed_trial_counts_as_ended_and_never_wins(bench):
    s = _spec()
    searcher = bench._searcher_class()(s)
    got = [(f"t{i}", searcher.suggest(f"t{i}")["trial"]) for i in range(4)]
    for tune_id, t in got:
        if t["config"]["lr"] == 0.1:
            searcher.on_trial_complete(tune_id, None, error=True)  # lr 0.1 fails on both seeds
        else:
            _end(searcher, tune_id, t, 9.0)
    nxt = searcher.suggest("t9")
    assert nxt["trial"]["stage"] == "sam" and nxt["trial"]["config"]["lr"] == 0.02
