"""Interruptions without Ray: the driver's Ctrl-C handler, and a stage's unfinished trials are never
recorded (issue 11, item 1)."""

from __future__ import annotations

import json
import math
import os
import signal
from types import SimpleNamespace

import pandas as pd
import pytest

from gnp_study import runner
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
    got, epochs, unfinished, lost = runner._collect(results, "sam", SPEC)
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
    got, epochs, unfinished, lost = runner._collect([res], "sam", SPEC)
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


# ------------------------------------------------------------------ restore points (issue 11, item 6)
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
    note = runner._repair_restore_point(trial)
    assert note and "sam-x-s0" in note and "epoch-2 checkpoint" in note
    latest = trial.run_metadata.checkpoint_manager._latest_checkpoint_result
    assert latest.checkpoint.path == str(tmp_path / "checkpoint_000001")
    assert trial.run_metadata.checkpoint_manager._checkpoint_results == [latest]
    # the next checkpoint is written past every folder on storage, never into one of them
    assert trial.storage.current_checkpoint_index == 2


def test_restore_without_any_complete_checkpoint_trains_from_scratch(tmp_path):
    _checkpoint(tmp_path / "checkpoint_000003", 3, complete=False)
    trial = _restored_trial(tmp_path, "checkpoint_000002", index=2)
    assert "from its first epoch" in runner._repair_restore_point(trial)
    manager = trial.run_metadata.checkpoint_manager
    assert manager._latest_checkpoint_result is None and manager._checkpoint_results == []
    assert trial.storage.current_checkpoint_index == 3


def test_a_valid_newest_restore_point_is_kept(tmp_path):
    _checkpoint(tmp_path / "checkpoint_000000", 1)
    _checkpoint(tmp_path / "checkpoint_000001", 2)
    trial = _restored_trial(tmp_path, "checkpoint_000001", index=1)
    assert runner._repair_restore_point(trial) is None
    assert trial.run_metadata.checkpoint_manager._latest_checkpoint_result == "snapshot's"
    trial.status = "TERMINATED"  # finished trials are never restored: left alone
    trial.checkpoint.path = str(tmp_path / "gone")
    assert runner._repair_restore_point(trial) is None


def test_trial_lost_before_its_first_report_is_run_again_before_it_is_recorded(tmp_path):
    """Tune fails a trial without a retry when its (reused) worker dies while the trial is handed over;
    such a result has an error and no config. It is counted as lost (the runner runs it again); only
    when asked is it recorded, as failed, with its config read from its params.json."""
    import pyarrow.fs as pafs

    trial = TrialConfig("standard", {"alpha": 0.0, "r": 0.0, "lr": 0.1}, 1).to_dict()
    (tmp_path / "params.json").write_text(json.dumps({"trial": trial}))
    res = SimpleNamespace(config=None, metrics_dataframe=None, error=RuntimeError("actor died"), checkpoint=None,
                          filesystem=pafs.LocalFileSystem(), path=str(tmp_path))
    got, _, unfinished, lost = runner._collect([res], "standard", SPEC, record_lost=False)
    assert (len(got), unfinished, lost) == (0, 1, 1)
    got, epochs, unfinished, lost = runner._collect([res], "standard", SPEC, record_lost=True)
    assert (unfinished, lost) == (0, 1) and len(epochs) == 0
    assert got["trial_id"].tolist() == [trial["trial_id"]] and got["status"].tolist() == ["failed"]
    assert got["error"].iloc[0] == "RuntimeError: actor died" and got["epochs_run"].iloc[0] == 0
