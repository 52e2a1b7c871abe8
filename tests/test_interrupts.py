"""Interruptions without Ray: the driver's Ctrl-C handler, and a stage's unfinished trials are never
recorded, so a resumed study trains them again (docs/recovery.md)."""

from __future__ import annotations

import json
import math
import os
import signal
from types import SimpleNamespace

import pandas as pd
import pytest

from gnp_study import runner, tune_state
from gnp_study.protocol import TrialConfig
from gnp_study.spec import parse_spec

SPEC = parse_spec({"name": "t", "data": {"dataset": "digits"}, "model": {"name": "small_cnn"},
                   "training": {"epochs": 2, "batch_size": 64, "lr": 0.1}, "seeds": [0]})


def _metrics(trial: dict, statuses: list[str]) -> pd.DataFrame:
    rows = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "train_error": 10.0, "test_loss": 1.0,
             "test_error": 20.0 - i, "best_test_error": 20.0 - i, "grad_norm": 0.5, "lr": 0.1,
             "epoch_time_s": 0.1, "status": s, "diverged_epoch": math.nan, "node": "n",
             "gnp_trial_id": trial["trial_id"]} for i, s in enumerate(statuses)]
    return pd.DataFrame(rows)


def _result(trial: dict, statuses: list[str] | None, error=None):
    df = None if statuses is None else _metrics(trial, statuses)
    return SimpleNamespace(config={"trial": trial}, metrics_dataframe=df, error=error, checkpoint=None)


def test_pending_and_running_trials_are_not_recorded_as_failed():
    trials = [TrialConfig("sam", {"alpha": 1.0, "r": r}, 0).to_dict() for r in (0.01, 0.02, 0.05, 0.1)]
    results = [
        _result(trials[0], ["running", "completed"]),  # ended
        _result(trials[1], ["running"]),  # running when the stage stopped
        _result(trials[2], None),  # pending: Tune knows its config, no result yet
        _result(trials[3], ["running"], error=RuntimeError("boom")),  # Tune gave up after its retries
    ]
    got, epochs, unfinished, lost = runner.collect_trials(results, "sam", SPEC)
    assert unfinished == 2
    assert list(got["trial_id"]) == [trials[0]["trial_id"], trials[3]["trial_id"]]
    assert list(got["status"]) == ["completed", "failed"]
    assert got["error"].iloc[1] == "RuntimeError: boom"
    assert set(epochs["trial_id"]) == {trials[0]["trial_id"], trials[3]["trial_id"]}


def test_epochs_lost_by_tune_are_filled_from_the_checkpoint_history(tmp_path):
    """A driver killed after a checkpoint reached storage but before Tune's result file did: the trial's
    epochs come from the checkpoint's history.json, Tune's later reports win for the same epoch."""
    import pyarrow.fs as pafs

    trial = TrialConfig("sam", {"alpha": 1.0, "r": 0.05}, 0).to_dict()
    hist = _metrics(trial, ["running", "running", "completed"]).drop(columns=["gnp_trial_id"])
    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    (ckpt / runner.HISTORY_FILE).write_text(json.dumps(hist.to_dict("records")))
    res = _result(trial, ["running"])  # Tune's result file holds epoch 1 only
    res.checkpoint = SimpleNamespace(filesystem=pafs.LocalFileSystem(), path=str(ckpt))
    got, epochs, unfinished, lost = runner.collect_trials([res], "sam", SPEC)
    assert unfinished == 0
    assert list(epochs["epoch"]) == [1, 2, 3]
    assert got["status"].iloc[0] == "completed" and got["epochs_run"].iloc[0] == 3
    assert got["best_test_error"].iloc[0] == 18.0  # min of 20, 19, 18


@pytest.fixture
def interrupt():
    it = runner._Interrupt()
    it.install()
    try:
        yield it
    finally:
        it.uninstall()


def test_first_ctrl_c_sets_the_flag_and_asks_tune_to_stop_the_second_stops_at_once(interrupt):
    asked = []
    old_usr1 = signal.signal(signal.SIGUSR1, lambda s, f: asked.append(s))  # stands in for Tune's handler
    try:
        interrupt.check("before anything")  # no Ctrl-C yet: nothing raised
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.flag and not asked
        interrupt.forward_to_tune()  # what the stage's Tune callback does at its next step
        assert len(asked) == 1
        assert signal.getsignal(signal.SIGINT) == interrupt._handle  # still ours
        with pytest.raises(runner.StudyInterrupted, match="run the same command again"):
            interrupt.check("before stage 'sam' started")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
    assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"


def test_uninstall_puts_back_the_previous_handler():
    before = signal.getsignal(signal.SIGINT)
    it = runner._Interrupt()
    it.install()
    assert signal.getsignal(signal.SIGINT) != before
    it.uninstall()
    assert signal.getsignal(signal.SIGINT) == before


# ------------------------------------------------------------------ restore points (docs/recovery.md)
def _checkpoint(folder, epoch: int, complete: bool = True):
    import torch

    folder.mkdir(parents=True)
    torch.save({"epoch": epoch, "w": torch.arange(100.0)}, folder / "state.pt")
    if not complete:  # a copy cut short: the zip archive lost its end
        data = (folder / "state.pt").read_bytes()
        (folder / "state.pt").write_bytes(data[: len(data) // 2])
    (folder / runner.HISTORY_FILE).write_text(json.dumps([{"epoch": e} for e in range(1, epoch + 1)]))
    return folder


def _restored_trial(trial_dir, pointer, index: int):
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    manager = SimpleNamespace(_latest_checkpoint_result="snapshot's", _checkpoint_results=["snapshot's"])
    return SimpleNamespace(
        status="PENDING", config={"trial": {"trial_id": "sam-x-s0"}},
        storage=SimpleNamespace(storage_filesystem=fs, trial_fs_path=str(trial_dir), current_checkpoint_index=index),
        checkpoint=None if pointer is None else SimpleNamespace(filesystem=fs, path=str(trial_dir / pointer)),
        run_metadata=SimpleNamespace(checkpoint_manager=manager))


def test_restore_from_a_deleted_checkpoint_moves_to_the_newest_complete_one(tmp_path):
    _checkpoint(tmp_path / "checkpoint_000001", 2)
    _checkpoint(tmp_path / "checkpoint_000002", 3, complete=False)  # partial: never restored from
    trial = _restored_trial(tmp_path, "checkpoint_000000", index=0)  # the snapshot's, deleted since
    note = tune_state.repair_restore_point(trial)
    assert note and "sam-x-s0" in note and "epoch-2 checkpoint" in note
    latest = trial.run_metadata.checkpoint_manager._latest_checkpoint_result
    assert latest.checkpoint.path == str(tmp_path / "checkpoint_000001")
    assert trial.run_metadata.checkpoint_manager._checkpoint_results == [latest]
    # the next checkpoint is written past every folder on storage, never into one of them
    assert trial.storage.current_checkpoint_index == 2


def test_restore_without_any_complete_checkpoint_trains_from_scratch(tmp_path):
    _checkpoint(tmp_path / "checkpoint_000003", 3, complete=False)
    trial = _restored_trial(tmp_path, "checkpoint_000002", index=2)
    assert "from its first epoch" in tune_state.repair_restore_point(trial)
    manager = trial.run_metadata.checkpoint_manager
    assert manager._latest_checkpoint_result is None and manager._checkpoint_results == []
    assert trial.storage.current_checkpoint_index == 3


def test_a_valid_newest_restore_point_is_kept(tmp_path):
    _checkpoint(tmp_path / "checkpoint_000000", 1)
    _checkpoint(tmp_path / "checkpoint_000001", 2)
    trial = _restored_trial(tmp_path, "checkpoint_000001", index=1)
    assert tune_state.repair_restore_point(trial) is None
    assert trial.run_metadata.checkpoint_manager._latest_checkpoint_result == "snapshot's"
    trial.status = "TERMINATED"  # finished trials are never restored: left alone
    trial.checkpoint.path = str(tmp_path / "gone")
    assert tune_state.repair_restore_point(trial) is None


def _stage_trial_folder(exp, name: str, trial_id: str, epochs=(), cut=()):
    folder = exp / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"trial": {"trial_id": trial_id}}))
    for i, e in enumerate(epochs):
        _checkpoint(folder / f"checkpoint_{i:06d}", e, complete=e not in cut)
    return folder


def _context(exp, own: str, tune_id: str):
    import pyarrow.fs as pafs

    storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), experiment_fs_path=str(exp),
                              trial_fs_path=str(exp / own))
    return SimpleNamespace(get_storage=lambda: storage, get_trial_id=lambda: tune_id)


def test_a_trial_started_afresh_resumes_from_its_checkpoint_in_another_folder_of_the_stage(tmp_path):
    """Tune makes again a trial its snapshot did not hold (made after the last snapshot of a killed
    driver): the trial resumes from the newest complete checkpoint it left in its earlier folder."""
    from gnp_study.trainable import checkpoint_epoch, earlier_checkpoint

    exp = tmp_path / "gnp"
    fields = "gnp_alpha=0.5_r=0.05_seed=1"
    _stage_trial_folder(exp, f"{fields}_aaaaa_00001", "gnp-x-s1", epochs=(2, 3), cut=(3,))  # epoch 3 cut
    _stage_trial_folder(exp, f"{fields}_bbbbb_00004", "gnp-x-s1", epochs=(1,))
    # same fields, another trial (a stage-1 grid over lr gives several trials the same fields)
    _stage_trial_folder(exp, f"{fields}_aaaaa_00002", "gnp-y-s1", epochs=(3,))
    _stage_trial_folder(exp, "gnp_alpha=0.5_r=0.05_seed=10_aaaaa_00003", "gnp-x-s1", epochs=(3,))  # read only by name
    own = _stage_trial_folder(exp, f"{fields}_ccccc_00000", "gnp-x-s1")
    found = earlier_checkpoint("gnp-x-s1", _context(exp, own.name, "ccccc_00000"))
    assert found.path == str(exp / f"{fields}_aaaaa_00001" / "checkpoint_000000")
    assert checkpoint_epoch(found.filesystem, found.path) == 2
    assert earlier_checkpoint("gnp-z-s1", _context(exp, own.name, "ccccc_00000")) is None
    # its own folder is never a source (Tune restores from it itself)
    _checkpoint(own / "checkpoint_000000", 3)
    assert earlier_checkpoint("gnp-x-s1", _context(exp, own.name, "ccccc_00000")).path.startswith(
        str(exp / f"{fields}_aaaaa_00001"))
    # a folder name that does not end in the Tune id: every folder's params.json is read
    assert checkpoint_epoch(found.filesystem, earlier_checkpoint(
        "gnp-x-s1", _context(exp, own.name, "other")).path) == 3
    # no storage to list (outside Tune): nothing
    broken = SimpleNamespace(get_storage=lambda: (_ for _ in ()).throw(RuntimeError("no session")))
    assert earlier_checkpoint("gnp-x-s1", broken) is None


def test_trial_lost_before_its_first_report_is_run_again_before_it_is_recorded(tmp_path):
    """Tune fails a trial without a retry when its (reused) worker dies while the trial is handed over;
    such a result has an error and no config. It is counted as lost (the runner runs it again); only
    when asked is it recorded, as failed, with its config read from its params.json."""
    import pyarrow.fs as pafs

    trial = TrialConfig("standard", {"alpha": 0.0, "r": 0.0, "lr": 0.1}, 1).to_dict()
    (tmp_path / "params.json").write_text(json.dumps({"trial": trial}))
    res = SimpleNamespace(config=None, metrics_dataframe=None, error=RuntimeError("actor died"), checkpoint=None,
                          filesystem=pafs.LocalFileSystem(), path=str(tmp_path))
    got, _, unfinished, lost = runner.collect_trials([res], "standard", SPEC, record_lost=False)
    assert (len(got), unfinished, lost) == (0, 1, 1)
    got, epochs, unfinished, lost = runner.collect_trials([res], "standard", SPEC, record_lost=True)
    assert (unfinished, lost) == (0, 1) and len(epochs) == 0
    assert got["trial_id"].tolist() == [trial["trial_id"]] and got["status"].tolist() == ["failed"]
    assert got["error"].iloc[0] == "RuntimeError: actor died" and got["epochs_run"].iloc[0] == 0


def _state_files(exp, session, kinds, damaged=(), trial_ids=()):
    """Tune's saved-state files of one driver session; the kinds in ``damaged`` are cut short (empty or
    half a file), as a driver killed while Tune copied them to storage leaves them. The experiment state
    holds trials of the study trial ids ``trial_ids`` (Tune's layout: one JSON string per trial with its
    config)."""
    import pickle

    names = {"experiment": f"experiment_state-{session}.json", "search_gen": f"search_gen_state-{session}.json",
             "searcher": f"searcher-state-{session}.pkl", "variant": f"basic-variant-state-{session}.json"}
    for kind in kinds:
        trial_data = [[json.dumps({"config": {"trial": {"trial_id": t}}, "status": "RUNNING"}), "{}"]
                      for t in trial_ids]
        data = (json.dumps({"trial_data": trial_data, "runner_data": {}}).encode() if kind == "experiment"
                else pickle.dumps({"counter": 3, "session": session}))
        if kind in damaged:
            data = data[: len(data) // 2] if kind == "experiment" else b""
        (exp / names[kind]).write_bytes(data)
    if not (exp / "tuner.pkl").exists():  # written once, when the stage's experiment is created
        (exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": "state"}))
    return [exp / names[k] for k in kinds]


def test_damaged_searcher_state_of_a_race_is_set_aside_and_the_snapshot_kept(tmp_path):
    """The failure CI saw: the driver killed while Tune copied its snapshot left an empty
    search_gen_state file (EOFError: Ran out of input on restore). A racing stage rebuilds its searcher
    from the trials, so only the unreadable files move; the experiment state stays."""
    exp, old, new = tmp_path, "2026-11-30_09-00-00", "2026-11-30_10-00-00"
    kept = _state_files(exp, old, ["experiment", "search_gen", "searcher"])
    e_new, g_new, s_new = _state_files(exp, new, ["experiment", "search_gen", "searcher"], damaged=("search_gen",))
    note = tune_state.set_aside_damaged_state(exp, searcher_rebuilt=True)
    assert note and g_new.name in note and f"session {new}" in note
    assert not g_new.exists() and (exp / runner.DAMAGED_STATE_DIR / g_new.name).read_bytes() == b""
    assert e_new.exists() and s_new.exists() and all(p.exists() for p in kept)


def test_damaged_newest_session_rolls_back_to_the_older_complete_one(tmp_path):
    """A grid stage needs its generator state from the same session as its experiment state: a newest
    session with a cut experiment state, or with a cut or missing generator state, is moved whole."""
    exp = tmp_path
    kept = _state_files(exp, "a1", ["experiment", "variant"])
    moved = _state_files(exp, "a2", ["experiment", "variant"], damaged=("variant",))
    moved += _state_files(exp, "a3", ["experiment"])  # its generator state never reached storage
    moved += _state_files(exp, "a4", ["experiment", "variant"], damaged=("experiment",))
    note = tune_state.set_aside_damaged_state(exp)
    assert "session a1" in note
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in moved)
    assert sorted(p.name for p in (exp / runner.DAMAGED_STATE_DIR).iterdir()) == sorted(p.name for p in moved)


def test_no_complete_session_moves_every_state_file_and_the_stage_starts_again(tmp_path):
    files = _state_files(tmp_path, "b1", ["experiment", "search_gen", "searcher"], damaged=("searcher",))
    note = tune_state.set_aside_damaged_state(tmp_path)  # an Optuna stage: its searcher state is needed
    # tuner.pkl goes too: Tune restores whenever it exists, and would fail without an experiment state
    assert "start again" in note and not any(p.exists() for p in files) and not (tmp_path / "tuner.pkl").exists()
    assert len(list((tmp_path / runner.DAMAGED_STATE_DIR).iterdir())) == 4


def test_a_cut_tuner_pickle_or_a_stage_killed_before_its_first_snapshot_starts_again(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    files = _state_files(a, "d1", ["experiment", "variant"])
    (a / "tuner.pkl").write_bytes(b"")
    assert "start again" in tune_state.set_aside_damaged_state(a)
    assert not any(p.exists() for p in files + [a / "tuner.pkl"])
    (b / "tuner.pkl").write_bytes(b"\x80\x04N.")  # no snapshot reached storage before the kill
    assert "start again" in tune_state.set_aside_damaged_state(b) and not (b / "tuner.pkl").exists()


def test_complete_snapshots_are_left_alone(tmp_path):
    files = _state_files(tmp_path, "c1", ["experiment", "variant"]) + _state_files(tmp_path, "c2", ["experiment", "variant"])
    assert tune_state.set_aside_damaged_state(tmp_path) is None
    assert all(p.exists() for p in files) and (tmp_path / "tuner.pkl").exists()
    assert not (tmp_path / runner.DAMAGED_STATE_DIR).exists()


def test_a_cut_generator_state_is_not_needed_when_the_snapshot_holds_every_planned_trial(tmp_path):
    """The failure the CI kill soak saw: SIGKILL while Tune copied the first snapshot of stage 3 cut only
    basic-variant-state to 0 bytes. The experiment state held all the stage's trials, so the generator had
    nothing left to make: the cut file (and any older generator file) is set aside and the snapshot kept,
    instead of starting the stage again (which trained a trial that had ended a second time)."""
    exp = tmp_path
    planned = {"gnp-a-s0", "gnp-a-s1", "gnp-b-s0", "gnp-b-s1"}
    older = _state_files(exp, "e1", ["variant"])
    state, variant = _state_files(exp, "e2", ["experiment", "variant"], damaged=("variant",),
                                  trial_ids=sorted(planned))
    note = tune_state.set_aside_damaged_state(exp, planned=planned)
    assert note and "session e2" in note and variant.name in note
    assert state.exists() and (exp / "tuner.pkl").exists()
    assert not variant.exists() and not any(p.exists() for p in older)  # no generator state left to restore


def test_a_cut_generator_state_still_starts_the_stage_again_when_trials_are_missing(tmp_path):
    """A snapshot that lacks some planned trials needs the generator (it makes the rest): without a
    readable one the stage starts again, as before."""
    exp = tmp_path
    _state_files(exp, "f1", ["experiment", "variant"], damaged=("variant",), trial_ids=["gnp-a-s0"])
    note = tune_state.set_aside_damaged_state(exp, planned={"gnp-a-s0", "gnp-a-s1"})
    assert "start again" in note and not (exp / "tuner.pkl").exists()
    assert tune_state.set_aside_damaged_state(exp, planned={"x"}) is None  # nothing left to set aside


def test_a_stage_whose_trials_failed_before_any_epoch_keeps_the_text_dtypes():
    """Every recorded trial failed without an epoch: the (empty) epochs table keeps pandas' text dtype for
    its id columns, as a table with rows has (parquet then stores strings, and a later concat stays text)."""
    trials = [TrialConfig("sam", {"alpha": 1.0, "r": r}, 0).to_dict() for r in (0.01, 0.02)]
    results = [_result(t, None, error=RuntimeError("boom")) for t in trials]
    got, epochs, unfinished, lost = runner.collect_trials(results, "sam", SPEC)
    assert list(got["status"]) == ["failed", "failed"] and len(epochs) == 0
    text = pd.Series(["x"]).dtype
    assert [epochs[c].dtype for c in ("trial_id", "stage", "config_key")] == [text] * 3


def _trial_folder(exp, name: str, trial: dict, statuses: list[str], error: bool = False):
    """A Tune trial folder as Tune writes it: ``params.json`` (the trial's config) and ``result.json`` (one
    JSON line per report, each with the config), optionally Tune's ``error.pkl``."""
    import pickle

    folder = exp / name
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"trial": trial}))
    rows = _metrics(trial, statuses).to_dict("records")
    (folder / "result.json").write_text("".join(json.dumps({**r, "config": {"trial": trial}}) + "\n" for r in rows))
    if error:
        (folder / "error.pkl").write_bytes(pickle.dumps(RuntimeError("worker died")))
    return folder


def test_a_stage_with_no_readable_snapshot_keeps_its_ended_trials(tmp_path):
    """The failure the kill soak saw: SIGKILL during Tune's first snapshot copy of a stage left its only
    experiment state empty, so the stage starts again as a new experiment. The trial that had ended is
    kept from its folder (neither lost nor planned again); one still running, one Tune recorded an error
    for and one of another stage are trained again; the next run keeps the same trial, and only the
    other trials are the planned grid."""
    storage, name = tmp_path / "ray", "gnp"
    exp = storage / name
    exp.mkdir(parents=True)
    trials = {s: TrialConfig("gnp", {"alpha": 0.5, "r": 0.05}, s).to_dict() for s in (0, 1, 2)}
    ended = _trial_folder(exp, "gnp_a_0", trials[0], ["running", "running", "completed"])
    _trial_folder(exp, "gnp_a_1", trials[1], ["running"])
    _trial_folder(exp, "gnp_a_2", trials[2], ["running", "completed"], error=True)
    _trial_folder(exp, "other", TrialConfig("sam", {"alpha": 1.0, "r": 0.05}, 0).to_dict(), ["completed"])
    state = _state_files(exp, "g1", ["experiment", "variant"], damaged=("experiment",))
    candidates = {t["trial_id"] for t in trials.values()}
    kept = runner._prepare_stage(name, str(storage), candidates=candidates)
    assert list(kept) == [trials[0]["trial_id"]]
    assert not any(p.exists() for p in state) and not (exp / "tuner.pkl").exists()  # a new experiment
    assert json.loads((exp / tune_state.KEPT_TRIALS_FILE).read_text()) == {trials[0]["trial_id"]: ended.name}
    got, epochs, unfinished, lost = runner.collect_trials(list(kept.values()), "gnp", SPEC)
    assert (unfinished, lost) == (0, 0) and list(got["trial_id"]) == [trials[0]["trial_id"]]
    assert got["status"].iloc[0] == "completed" and got["best_test_error"].iloc[0] == 18.0
    assert list(epochs["epoch"]) == [1, 2, 3]
    # the next run restores the new experiment (of the two other trials) and still holds the kept trial
    _state_files(exp, "g2", ["experiment", "variant"], trial_ids=sorted(candidates - set(kept)))
    again = runner._prepare_stage(name, str(storage), candidates=candidates)
    assert list(again) == list(kept) and (exp / "tuner.pkl").exists()
    assert tune_state.kept_trial_ids(exp) == [trials[0]["trial_id"]]


def test_a_kept_trial_whose_folder_is_gone_is_a_clear_error(tmp_path):
    storage = tmp_path / "ray"
    exp = storage / "sam"
    exp.mkdir(parents=True)
    trial = TrialConfig("sam", {"alpha": 1.0, "r": 0.05}, 0).to_dict()
    folder = _trial_folder(exp, "sam_0", trial, ["completed"])
    _state_files(exp, "h1", ["experiment"], damaged=("experiment",))
    assert list(runner._prepare_stage("sam", str(storage), candidates={trial["trial_id"]}))
    (folder / "result.json").unlink()
    with pytest.raises(runner.StudyError, match=f"{trial['trial_id']}.*no longer reads"):
        runner._prepare_stage("sam", str(storage), candidates={trial["trial_id"]})


def test_a_run_killed_before_it_kept_the_ended_trials_keeps_them_next_time(tmp_path):
    """The state set aside (tuner.pkl moved) but the driver killed before kept-trials.json was written:
    the next run finds no experiment to restore and still keeps the trial that had ended."""
    storage = tmp_path / "ray"
    exp = storage / "sam"
    exp.mkdir(parents=True)
    trial = TrialConfig("sam", {"alpha": 1.0, "r": 0.05}, 0).to_dict()
    _trial_folder(exp, "sam_0", trial, ["running", "completed"])
    _state_files(exp, "k1", ["experiment"], damaged=("experiment",))
    assert list(runner._prepare_stage("sam", str(storage), candidates={trial["trial_id"]}))
    (exp / tune_state.KEPT_TRIALS_FILE).unlink()
    assert list(runner._prepare_stage("sam", str(storage), candidates={trial["trial_id"]})) == [trial["trial_id"]]


def test_a_cut_list_of_kept_trials_is_a_clear_error(tmp_path):
    storage = tmp_path / "ray"
    exp = storage / "sam"
    exp.mkdir(parents=True)
    (exp / tune_state.KEPT_TRIALS_FILE).write_text('{"sam-')
    with pytest.raises(runner.StudyError, match="kept-trials.json .*does not read.*aside"):
        runner._prepare_stage("sam", str(storage), candidates={"sam-x-s0"})


def test_state_set_aside_twice_keeps_both_copies(tmp_path):
    """A stage that started again twice: the second set of state files goes beside the first in
    damaged-state/, never over it."""
    _state_files(tmp_path, "m1", ["experiment"], damaged=("experiment",))
    tune_state.set_aside_damaged_state(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(b"second")
    _state_files(tmp_path, "m2", ["experiment"], damaged=("experiment",))
    tune_state.set_aside_damaged_state(tmp_path)
    moved = sorted(p.name for p in (tmp_path / runner.DAMAGED_STATE_DIR).iterdir())
    assert moved == ["experiment_state-m1.json", "experiment_state-m2.json", "tuner.pkl", "tuner.pkl.1"]
    assert (tmp_path / runner.DAMAGED_STATE_DIR / "tuner.pkl.1").read_bytes() == b"second"


def test_a_kept_race_trial_counts_with_its_trials_table_value(tmp_path):
    """A kept trial whose last epochs reached storage only in its checkpoint's history (no best_<name>:
    Tune's reports add it, the history does not): the race gets the trials table's best of the metric."""
    from test_metric import _own_loop_spec

    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"})
    storage = tmp_path / "ray"
    exp = storage / "sam"
    exp.mkdir(parents=True)
    trial = TrialConfig("sam", {"alpha": 1.0, "r": 0.05}, 0).to_dict()
    folder = _trial_folder(exp, "sam_0", trial, ["running"])  # result.json: epoch 1 only
    lines = [dict(json.loads(x), checkpoint_dir_name=None) for x in (folder / "result.json").read_text().splitlines()]
    (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))  # as Tune writes it
    history = _metrics(trial, ["running", "running", "completed"]).drop(columns=["gnp_trial_id"])
    history["accuracy"] = [60.0, 80.0, 70.0]
    (folder / "checkpoint_000000").mkdir()
    (folder / "checkpoint_000000" / runner.HISTORY_FILE).write_text(json.dumps(history.to_dict("records")))
    _state_files(exp, "n1", ["experiment"], damaged=("experiment",))
    kept = runner._prepare_stage("sam", str(storage), candidates={trial["trial_id"]}, race=True)
    assert runner._race_results(kept, "sam", spec, "-best_accuracy") == [
        (trial, {"status": "completed", "best_accuracy": 80.0})]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_trial_tune_makes_again_in_a_new_folder_trains_nothing_it_had_trained(ray_head, tmp_path):
    """Through Ray Tune: Tune writes a trial's result files in the driver's local staging folder and copies
    them to storage with its snapshot, while the worker writes checkpoints to storage itself; a driver
    killed between two copies leaves an ended trial with its last checkpoint but empty result files (the
    kill soak's failure). Simulated exactly after a stage ended: every experiment state cut to 0 bytes (no
    snapshot loads) and one trial's result files emptied, so it is not kept: Tune makes it again in a new
    folder, where it resumes from its last checkpoint in the old one and trains nothing; both tables equal
    the first run's bit for bit."""
    from helpers import digits_trial_spec, run_stage_process

    s = digits_trial_spec(resources={"cpus_per_trial": 1, "gpus_per_trial": 0})
    plan = [TrialConfig("gnp", {"alpha": a, "r": 0.05}, 0) for a in (0.0, 0.5)]
    storage, first, again = tmp_path / "ray", tmp_path / "first", tmp_path / "again"
    first.mkdir(), again.mkdir()
    proc = run_stage_process(s, plan, ray_head, storage, first)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = storage / "gnp"
    for f in exp.glob("experiment_state-*.json"):
        f.write_bytes(b"")
    folders = {json.loads((f / "params.json").read_text())["trial"]["trial_id"]: f
               for f in exp.iterdir() if (f / "params.json").exists()}
    made_again, kept = plan[0].trial_id, plan[1].trial_id
    for name in ("result.json", "progress.csv"):  # Result.from_path reads either
        (folders[made_again] / name).write_bytes(b"")
    proc = run_stage_process(s, plan, ray_head, storage, again)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((exp / tune_state.KEPT_TRIALS_FILE).read_text()) == {kept: folders[kept].name}
    new = [f for f in exp.iterdir() if (f / "params.json").exists() and f not in folders.values()]
    assert len(new) == 1 and json.loads((new[0] / "params.json").read_text())["trial"]["trial_id"] == made_again
    rows = [json.loads(line) for line in (new[0] / "result.json").read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in rows] == [3], "the trial made again trained epochs again"
    for name, ignore in (("trials.parquet", ["wall_time_s", "node"]), ("epochs.parquet", ["epoch_time_s"])):
        a = pd.read_parquet(first / name).drop(columns=ignore)
        b = pd.read_parquet(again / name).drop(columns=ignore)
        pd.testing.assert_frame_equal(a, b)
