"""The Tune Searcher of racing stages, driven by hand (no Ray cluster, no training): what it suggests as
results arrive, the trial started ahead of a block test, a failed trial, and its state saved and restored
as Tune does on a resume."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.tune")

from ray.tune.search import Searcher  # noqa: E402

from gnp_study.protocol import config_key  # noqa: E402
from gnp_study.race_search import RaceSearcher, trial_dirname, trial_name  # noqa: E402
from gnp_study.racing import Race, RaceConfig  # noqa: E402

CFG = {name: {"lr": 0.1, "alpha": 1.0, "r": r} for name, r in (("A", 0.01), ("B", 0.05), ("C", 0.1))}
KEY = {name: config_key(c) for name, c in CFG.items()}
NAME = {v: k for k, v in KEY.items()}


def searcher(lookahead=1):
    keys = tuple(KEY[n] for n in "ABC")
    race = Race("sam", keys, frozenset(keys), (0, 1, 2), RaceConfig(first_block=2, lookahead=lookahead), 9)
    return RaceSearcher("sam", [race], {KEY[n]: CFG[n] for n in "ABC"}, "best_test_error")


def suggested(s, tid):
    out = s.suggest(tid)
    if out in (None, Searcher.FINISHED):
        return out
    t = out["trial"]
    assert t["stage"] == "sam" and t["config"] == CFG[NAME[t["config_key"]]]
    return NAME[t["config_key"]], t["seed"]


def done(s, tid, value, status="completed"):
    s.on_trial_complete(tid, {"status": status, "best_test_error": value})


def test_suggests_the_first_block_then_one_ahead_then_waits():
    s = searcher()
    first = [suggested(s, f"t{i}") for i in range(6)]
    assert first == [("A", 0), ("A", 1), ("B", 0), ("B", 1), ("C", 0), ("C", 1)]
    # the block is running: one trial of the next block starts ahead, for the leader (no result yet: grid
    # order), then the searcher waits for results
    assert suggested(s, "t6") == ("A", 2)
    assert suggested(s, "t7") is None


def test_a_trial_started_ahead_that_ends_early_does_not_free_its_place():
    """race.lookahead counts the next block's trials started before the block test, not those running:
    the leader's seed-2 trial ending while the block still runs does not start another candidate's."""
    s = searcher(lookahead=1)
    for i in range(6):
        suggested(s, f"t{i}")
    assert suggested(s, "t6") == ("A", 2)
    done(s, "t6", 1.0)  # ended before any trial of the first block
    assert suggested(s, "t7") is None
    for tid, v in zip([f"t{i}" for i in range(6)], [1, 2, 2, 3, 3, 1]):  # the block test: B eliminated
        done(s, tid, v)
    assert suggested(s, "t8") == ("C", 2)  # the next block: A's seed 2 already ran


def test_eliminates_and_finishes_as_results_arrive():
    s = searcher(lookahead=0)
    for i in range(6):
        suggested(s, f"t{i}")
    assert suggested(s, "x") is None  # lookahead 0: wait for the block test
    # A 1, 2; B = A + 1 on both seeds (eliminated); C 3, 1 (kept)
    for tid, v in zip([f"t{i}" for i in range(6)], [1, 2, 2, 3, 3, 1]):
        done(s, tid, v)
    (st,) = s.states()
    assert NAME[st.tests[0].reference] == "A" and {NAME[k] for k in st.eliminated} == {"B"}
    assert [suggested(s, "t6"), suggested(s, "t7")] == [("A", 2), ("C", 2)]
    assert suggested(s, "t8") is None
    done(s, "t6", 1.5)
    # C's seed 2 failed after its first epoch (Tune's retries spent): a loss where A completed
    s.on_trial_complete("t7", {"epoch": 1, "status": "running"}, error=True)
    (st,) = s.states()
    assert st.finished and st.end_reason == "one left"
    assert st.eliminated[KEY["C"]].reason == "diverged"
    assert suggested(s, "t9") == Searcher.FINISHED


def test_a_trial_stopped_before_its_end_stays_in_flight():
    s = searcher()
    suggested(s, "t0")
    s.on_trial_complete("t0", {"status": "running", "best_test_error": 50.0})  # Ctrl-C: resumed later
    assert s.live == {"t0": (KEY["A"], 0)} and not s.rows
    assert suggested(s, "t1") == ("A", 1)  # (A, 0) is not suggested twice


def test_state_saved_and_restored_continues_the_same_race(tmp_path):
    s = searcher()
    for i in range(6):
        suggested(s, f"t{i}")
    for tid, v in zip(["t0", "t1", "t2"], [1, 2, 2]):
        done(s, tid, v)
    s.save(str(tmp_path / "state.pkl"))
    r = searcher()
    r.restore(str(tmp_path / "state.pkl"))
    assert r.rows == s.rows and r.live == s.live
    for tid, v in zip(["t3", "t4", "t5"], [3, 3, 1]):  # Tune reports the restored trials' ends
        done(r, tid, v)
    (st,) = r.states()
    assert {NAME[k] for k in st.eliminated} == {"B"}
    assert suggested(r, "t6") == ("A", 2)


def _tune_trials(s, statuses: dict) -> list:
    """Tune's restored trials for the trials ``s`` suggested: Tune status and last result per trial id."""
    from types import SimpleNamespace

    out = []
    for tid, (key, seed) in s.live.items():
        status, result = statuses.get(tid, ("PENDING", {}))
        config = {"trial": {"stage": "sam", "config": CFG[NAME[key]], "seed": seed}}
        out.append(SimpleNamespace(trial_id=tid, config=config, status=status, last_result=result))
    return out


def test_rebuilt_from_the_restored_trials_when_the_saved_state_is_older():
    """A killed driver can leave Tune's saved searcher state older than its experiment state (or none):
    the table is rebuilt from the trials Tune restored, and the race goes on as if uninterrupted."""
    live = searcher()
    for i in range(6):
        suggested(live, f"t{i}")
    trials = _tune_trials(live, {})  # every trial Tune knows, before any ended
    ends = {"t0": 1, "t1": 2, "t2": 2, "t3": 3}
    for tid, v in ends.items():
        done(live, tid, v)
    live.on_trial_complete("t5", {"epoch": 1, "status": "running"}, error=True)  # C seed 1 failed
    for t in trials:
        if t.trial_id in ends:
            t.status, t.last_result = "TERMINATED", {"status": "completed", "best_test_error": ends[t.trial_id]}
        elif t.trial_id == "t5":
            t.status, t.last_result = "ERROR", {"epoch": 1, "status": "running"}
    stale = searcher()  # what an old or missing state file gives: nothing ended, nothing in flight
    stale.rebuild(trials)
    assert sorted(map(str, stale.rows)) == sorted(map(str, live.rows)) and stale.live == live.live
    assert stale.live == {"t4": (KEY["C"], 0)}  # unfinished: Tune resumes it, it is not suggested again
    # the same next suggestions as the uninterrupted searcher's, never a trial that already ended
    assert [suggested(stale, f"u{i}") for i in range(3)] == [suggested(live, f"u{i}") for i in range(3)]
    ended = {(NAME[r["config_key"]], r["seed"]) for r in stale.rows}
    assert not ended & {suggested(stale, "v")} - {None}


def test_readable_trial_names():
    class T:
        trial_id = "ab12c_00003"
        config = {"trial": {"stage": "gnp", "config": {"alpha": 0.5, "r": 0.05, "lr": 0.1}, "seed": 2}}

    assert trial_name(T()) == "gnp alpha=0.5 r=0.05 seed=2"
    assert trial_dirname(T()) == "gnp_alpha=0.5_r=0.05_seed=2_ab12c_00003"
    json.dumps(T.config)  # plain data: Tune stores it


def test_mlflow_is_off_by_default_and_named_when_missing(monkeypatch):
    import importlib.util

    from gnp_study.race_search import MLFLOW_ENV, tracking_callbacks

    monkeypatch.delenv(MLFLOW_ENV, raising=False)
    assert tracking_callbacks("s") == []
    monkeypatch.setenv(MLFLOW_ENV, "file:///tmp/mlruns")
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(ImportError, match=r"gnp-study\[mlflow\]"):
            tracking_callbacks("s")
    else:
        (cb,) = tracking_callbacks("s")
        assert type(cb).__name__ == "MLflowLoggerCallback"


def test_a_trial_lost_before_its_first_report_is_suggested_again_then_failed():
    s = searcher()
    s.retries = 1
    assert suggested(s, "t0") == ("A", 0)
    s.on_trial_complete("t0", None, error=True)  # lost: no report at all
    assert not s.rows and suggested(s, "t1") == ("A", 0)  # run again
    s.on_trial_complete("t1", None, error=True)  # lost a second time: more than 1 retry, failed
    assert s.rows == [{"config_key": KEY["A"], "seed": 0, "status": "failed", "value": s.rows[0]["value"]}]
    # a trial that errors after reporting an epoch is failed at once
    assert suggested(s, "t2") == ("A", 1)
    s.on_trial_complete("t2", {"epoch": 3, "status": "running"}, error=True)
    assert [r["status"] for r in s.rows] == ["failed", "failed"]


def test_kept_trials_count_in_the_race_and_are_never_suggested_again():
    """Trials kept from the folders of a stage that started again as a new Tune experiment
    (gnp_study.tune_state.keep_ended_trials) are not Tune's: rebuild replays them with Tune's trials, so
    the race is the one it would be had they ended in this experiment."""
    from gnp_study.protocol import TrialConfig

    s = searcher(lookahead=0)
    kept = [(TrialConfig("sam", CFG[n], seed).to_dict(), {"status": "completed", "best_test_error": v})
            for (n, seed), v in zip([("A", 0), ("A", 1), ("B", 0)], [1.0, 2.0, 2.0])]
    s.keep(kept)
    s.rebuild([])
    assert sorted((NAME[r["config_key"]], r["seed"], r["value"]) for r in s.rows) == [
        ("A", 0, 1.0), ("A", 1, 2.0), ("B", 0, 2.0)]
    assert [suggested(s, f"t{i}") for i in range(3)] == [("B", 1), ("C", 0), ("C", 1)]
    assert suggested(s, "x") is None  # the rest of the first block runs
