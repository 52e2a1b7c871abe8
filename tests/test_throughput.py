"""Throughput changes (benchmarks/README.md, "Study throughput: the summary") keep every result: the data
set built once per worker process, and one checkpoint per trial (``checkpoint_every`` = epochs, as the
digits study ships)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gnp_study import train
from gnp_study.protocol import TrialConfig
from gnp_study.spec import parse_spec
from gnp_study.train import train_trial
from helpers import digits_trial_spec, run_stage_process

COLS = ["train_loss", "train_error", "test_loss", "test_error", "best_test_error", "grad_norm", "lr"]


def spec(train_subset=300, training=None, **extra):
    """``helpers.digits_trial_spec`` without weight decay (the spec's default 0.0), seeds 0 and 1,
    ``training`` overrides and other top-level keys in ``extra``."""
    return digits_trial_spec(data={"train_subset": train_subset},
                             training={"weight_decay": 0.0, **(training or {})}, seeds=(0, 1), **extra)


def metrics_of(s, trial: dict) -> list[dict]:
    out = []
    train_trial(s, trial, lambda m, st: out.append(m))
    return out


def test_trials_of_one_data_spec_share_one_build(monkeypatch):
    import gnp_study.data as data

    calls = []
    real = data.build_datasets
    monkeypatch.setattr(data, "build_datasets", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(train, "_DATA_CACHE", {})
    monkeypatch.setattr(train, "CACHE_DATA", True)
    s = spec()
    a = TrialConfig("gnp", {"alpha": 0.8, "r": 0.05}, 0).to_dict()
    b = TrialConfig("standard", {"alpha": 0.0, "r": 0.0}, 1).to_dict()
    metrics_of(s, a)
    metrics_of(s, b)
    assert len(calls) == 1  # the second trial reused the first one's data
    metrics_of(spec(train_subset=200), a)
    assert len(calls) == 2  # another data spec: built again
    monkeypatch.setattr(train, "CACHE_DATA", False)
    metrics_of(spec(train_subset=200), a)
    assert len(calls) == 3  # cache off (train_trial called directly, outside the runner): built per trial


def test_cached_data_trains_exactly_as_a_fresh_build(monkeypatch):
    s = spec()
    a = TrialConfig("gnp", {"alpha": 0.8, "r": 0.05}, 0).to_dict()
    b = TrialConfig("standard", {"alpha": 0.0, "r": 0.0}, 1).to_dict()
    monkeypatch.setattr(train, "CACHE_DATA", True)
    monkeypatch.setattr(train, "_DATA_CACHE", {})
    fresh = metrics_of(s, a)
    monkeypatch.setattr(train, "_DATA_CACHE", {})
    metrics_of(s, b)  # warms the cache with another trial first
    cached = metrics_of(s, a)
    assert [[m[c] for c in COLS] for m in cached] == [[m[c] for c in COLS] for m in fresh]  # bit for bit


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.parametrize("report_every,reported", [(1, [1, 2, 3]), (2, [2, 3])])
def test_one_checkpoint_per_trial_keeps_every_epoch(ray_head, tmp_path, report_every, reported):
    """With one checkpoint per trial (checkpoint_every = epochs) every epoch still reaches the epochs table,
    equal bit for bit to the trial run in-process, and the TensorBoard file; Tune's result files hold the
    epochs the trial reported: every epoch, or with report_every = 2 epoch 2 and the last (its checkpoint)."""
    s = spec(checkpoint_every=3, report_every=report_every, resources={"cpus_per_trial": 1, "gpus_per_trial": 0})
    plan = [TrialConfig("gnp", {"alpha": a, "r": 0.05}, seed) for a in (0.0, 0.5) for seed in (0, 1)]
    proc = run_stage_process(s, plan, ray_head, tmp_path / "ray", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    assert list(trials["trial_id"]) == [tc.trial_id for tc in plan]
    assert (trials["status"] == "completed").all()
    in_process = {tc.trial_id: pd.DataFrame(metrics_of(s, tc.to_dict())) for tc in plan}
    for tc in plan:
        mine = in_process[tc.trial_id]
        got = epochs[epochs["trial_id"] == tc.trial_id].sort_values("epoch")
        assert list(got["epoch"]) == [1, 2, 3]
        for c in COLS:  # bit for bit (NaN where both are NaN)
            assert np.array_equal(got[c].to_numpy(float), mine[c].to_numpy(float), equal_nan=True), c
    # Tune's own result files (what its JSON/CSV loggers write) hold each reported epoch once, each trial
    # kept its one checkpoint (the last epoch's), and the lighter TensorBoard logger (EpochTensorBoardLogger)
    # wrote one event file per trial with every epoch's test error of the in-process run (float32 in the
    # file), each epoch once (with report_every = 2, epoch 1 from the checkpoint's history)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = {}
    for f in (tmp_path / "ray" / "gnp").rglob("result.json"):
        lines = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        trial_id = lines[0]["gnp_trial_id"]
        seen[trial_id] = [int(l["epoch"]) for l in lines]
        assert [p.name for p in f.parent.glob("checkpoint_*")] == ["checkpoint_000000"]
        assert len(list(f.parent.glob("events.out.tfevents.*"))) == 1
        ea = EventAccumulator(str(f.parent))
        ea.Reload()
        points = sorted(ea.Scalars("ray/tune/test_error"), key=lambda e: e.step)
        assert [e.step for e in points] == [1, 2, 3]
        assert _file_steps(f.parent) == [1, 2, 3]  # written in step order (real Tune callback order)
        assert [e.value for e in points] == pytest.approx(in_process[trial_id]["test_error"].tolist(), rel=1e-6)
    assert seen == {tc.trial_id: reported for tc in plan}


def test_a_gpu_fraction_fits_one_gpu_and_still_needs_one():
    """GPU packing's code path on CPU (docs/cluster.md, "Several trials on one GPU"): gpus_per_trial = 0.25
    asks Ray for a quarter GPU per trial (four trials share one GPU); the check before any trial accepts it
    on a one-GPU cluster and refuses it without GPUs."""
    from gnp_study import runner

    s = spec(resources={"cpus_per_trial": 1, "gpus_per_trial": 0.25})
    assert s.resources.gpus_per_trial == 0.25
    runner.check_resources(s, {"CPU": 16.0, "GPU": 1.0})
    with pytest.raises(runner.StudyError, match="gpus_per_trial is 0.25"):
        runner.check_resources(s, {"CPU": 16.0})


# ------------------------------------------------------------------------- the lighter TensorBoard logger
class _Trial:
    """What Tune's TensorBoard logger uses of a Trial."""

    def __init__(self, path):
        self.local_path = str(path)
        self.evaluated_params = {"trial/config/alpha": 0.5}

    def init_local_path(self):
        import os

        os.makedirs(self.local_path, exist_ok=True)


def test_tensorboard_logger_writes_the_reported_metrics_once_per_epoch_without_a_flush_each(tmp_path):
    import math

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gnp_study.race_search import EpochTensorBoardLogger

    logger = EpochTensorBoardLogger()
    trial = _Trial(tmp_path / "t")
    flushes = []
    results = [{"epoch": e, "test_error": 50.0 / e, "val_error": math.nan if e == 2 else 40.0 / e,
                "status": "running", "node": "n1", "done": False, "training_iteration": e, "pid": 123,
                "time_this_iter_s": 0.1, "time_total_s": 0.1 * e, "timestamp": 1_700_000_000 + e,
                "iterations_since_restore": e, "config": {"trial": {"seed": 0}}} for e in (1, 2, 3)]
    for i, res in enumerate(results):
        logger.log_trial_result(i, trial, res)
        if i == 0:
            writer = logger._trial_writer[trial]
            real_flush = writer.flush
            writer.flush = lambda: flushes.append(1) or real_flush()
    assert flushes == []  # no flush per result (tensorboardX flushes every 30 s and at the end)
    logger.log_trial_end(trial)
    files = list((tmp_path / "t").glob("events.out.tfevents.*"))
    assert len(files) == 1
    ea = EventAccumulator(str(tmp_path / "t"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert tags == {"ray/tune/epoch", "ray/tune/test_error", "ray/tune/val_error"}  # Tune's bookkeeping left out
    assert {e.step: e.value for e in ea.Scalars("ray/tune/test_error")} == pytest.approx({1: 50.0, 2: 25.0, 3: 50 / 3})
    assert sorted(e.step for e in ea.Scalars("ray/tune/val_error")) == [1, 3]  # NaN skipped, as Tune's logger does


def _checkpoint_with_history(path, epochs: list[int]):
    """A Tune checkpoint folder holding the history file of ``epochs`` (test error 50 / epoch)."""
    from ray import tune

    from gnp_study.runner import HISTORY_FILE

    path.mkdir(parents=True)
    rows = [{"epoch": e, "test_error": 50.0 / e, "val_error": float("nan"), "status": "running", "node": "n1"}
            for e in epochs]
    (path / HISTORY_FILE).write_text(json.dumps(rows))
    return tune.Checkpoint.from_directory(str(path))


def _file_steps(folder, tag="ray/tune/test_error") -> list[int]:
    """The steps of ``tag`` in the order they were written (event files in name order, raw records)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _steps(folder, tag="ray/tune/test_error") -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder))
    ea.Reload()
    points = ea.Scalars(tag)
    assert len({e.step for e in points}) == len(points), "an epoch written twice"
    return {e.step: e.value for e in points}


def test_tensorboard_logger_adds_the_unreported_epochs_from_the_checkpoint_history(tmp_path):
    """report_every > 1: epochs that reached Tune only through a checkpoint's history are written from it,
    each epoch once whichever of result and checkpoint comes first; report_every = 1 reads no checkpoint."""
    from gnp_study.race_search import EpochTensorBoardLogger

    logger = EpochTensorBoardLogger(report_every=2)
    trial = _Trial(tmp_path / "t")
    trial.checkpoint = None
    logger.log_trial_start(trial)
    logger.log_trial_result(0, trial, {"epoch": 2, "test_error": 25.0, "training_iteration": 1})
    logger.on_checkpoint(iteration=0, trials=[trial], trial=trial,
                         checkpoint=_checkpoint_with_history(tmp_path / "c3", [1, 2, 3]))
    logger.log_trial_result(1, trial, {"epoch": 3, "test_error": 50.0 / 3, "training_iteration": 2})
    logger.on_checkpoint(iteration=1, trials=[trial], trial=trial,
                         checkpoint=_checkpoint_with_history(tmp_path / "c4", [1, 2, 3, 4]))
    logger.log_trial_end(trial)
    assert _steps(tmp_path / "t") == pytest.approx({1: 50.0, 2: 25.0, 3: 50 / 3, 4: 12.5})
    assert _file_steps(tmp_path / "t") == [1, 2, 3, 4]  # in order: TensorBoard's fast loader drops the rest

    # a trial restarted from its epoch-3 checkpoint (a new driver): only the epochs after it are added
    logger = EpochTensorBoardLogger(report_every=2)
    again = _Trial(tmp_path / "again")
    again.checkpoint = _checkpoint_with_history(tmp_path / "r3", [1, 2, 3])
    logger.log_trial_start(again)
    logger.on_checkpoint(iteration=0, trials=[again], trial=again,
                         checkpoint=_checkpoint_with_history(tmp_path / "r5", [1, 2, 3, 4, 5]))
    logger.log_trial_end(again)
    assert _steps(tmp_path / "again") == pytest.approx({4: 12.5, 5: 10.0})
    assert _file_steps(tmp_path / "again") == [4, 5]

    # report_every = 1: every epoch comes as a result; checkpoints are not read
    logger = EpochTensorBoardLogger()
    one = _Trial(tmp_path / "one")
    one.checkpoint = None
    logger.log_trial_result(0, one, {"epoch": 1, "test_error": 7.0, "training_iteration": 1})
    logger.on_checkpoint(iteration=0, trials=[one], trial=one,
                         checkpoint=_checkpoint_with_history(tmp_path / "o1", [1, 2]))
    logger.log_trial_end(one)
    assert _steps(tmp_path / "one") == {1: 7.0}


def test_tensorboard_steps_are_written_in_order_with_sparse_reports_and_checkpoints(tmp_path):
    """report_every 4, checkpoint_every 6, 15 epochs, in the order Tune calls the logger (result, then
    its checkpoint, then the trial's end): reports at 4, 6*, 8, 12*, 15* (* with a checkpoint). Every
    epoch lands once and in increasing step order, the reported values where an epoch was reported."""
    from gnp_study.race_search import EpochTensorBoardLogger

    logger = EpochTensorBoardLogger(report_every=4)
    trial = _Trial(tmp_path / "t")
    trial.checkpoint = None
    logger.log_trial_start(trial)
    for i, epoch in enumerate([4, 6, 8, 12, 15]):
        logger.log_trial_result(i, trial, {"epoch": epoch, "test_error": 50.0 / epoch, "training_iteration": i + 1})
        if epoch in (6, 12, 15):
            logger.on_checkpoint(iteration=i, trials=[trial], trial=trial,
                                 checkpoint=_checkpoint_with_history(tmp_path / f"c{epoch}",
                                                                     list(range(1, epoch + 1))))
        if epoch == 8:  # nothing after the last checkpoint is written before the epochs it needs
            assert _file_steps(tmp_path / "t") in ([], [1, 2, 3, 4, 5, 6])
    logger.log_trial_end(trial)
    assert _file_steps(tmp_path / "t") == list(range(1, 16))
    assert _steps(tmp_path / "t") == pytest.approx({e: 50.0 / e for e in range(1, 16)})

    # a trial that ends (diverged, failed) after a report with no checkpoint after it: the waiting
    # reported epochs are written at its end, still in order
    logger = EpochTensorBoardLogger(report_every=4)
    cut = _Trial(tmp_path / "cut")
    cut.checkpoint = None
    logger.log_trial_start(cut)
    logger.log_trial_result(0, cut, {"epoch": 4, "test_error": 12.5, "training_iteration": 1})
    logger.log_trial_result(1, cut, {"epoch": 6, "test_error": 50 / 6, "training_iteration": 2})
    logger.on_checkpoint(iteration=1, trials=[cut], trial=cut,
                         checkpoint=_checkpoint_with_history(tmp_path / "k6", [1, 2, 3, 4, 5, 6]))
    logger.log_trial_result(2, cut, {"epoch": 8, "test_error": 6.25, "training_iteration": 3})
    logger.log_trial_result(3, cut, {"epoch": 9, "test_error": 50 / 9, "training_iteration": 4})
    logger.log_trial_end(cut, failed=True)
    assert _file_steps(tmp_path / "cut") == [1, 2, 3, 4, 5, 6, 8, 9]


def test_tune_adds_no_second_tensorboard_logger():
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from gnp_study.race_search import EpochTensorBoardLogger, tensorboard_callbacks

    callbacks = _create_default_callbacks(tensorboard_callbacks())
    tbx = [c for c in callbacks if isinstance(c, TBXLoggerCallback)]
    assert len(tbx) == 1 and isinstance(tbx[0], EpochTensorBoardLogger)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return set(out.split())


def test_a_trial_worker_unpickles_the_trainable_without_the_driver_modules():
    """Ray ships the trainable by reference (cloudpickle of an importable function): a worker imports its
    module. That module must not pull in the protocol, statistics (scipy.stats), results or runner code,
    which a worker never uses and each stage's new workers would otherwise import again."""
    from ray import cloudpickle

    from gnp_study import runner

    blob = cloudpickle.dumps(runner.trainable)  # what the runner hands to Tune
    loaded = _modules_after(f"import pickle; f = pickle.loads({blob!r}); assert f.__qualname__ == 'trainable'")
    assert "gnp_study.trainable" in loaded
    assert not loaded & {"gnp_study.runner", "gnp_study.protocol", "gnp_study.stats", "gnp_study.results",
                         "gnp_study.racing", "gnp_study.report", "scipy.stats"}


def test_the_trainable_keeps_the_tune_name_older_study_folders_were_written_with():
    """Tune refuses to restore an experiment whose trainable has another name than the stored one: stages
    interrupted under older versions (``runner._trainable``) must still resume."""
    from ray import tune
    from ray.tune.experiment import Experiment

    from gnp_study import runner

    # (tune.with_parameters keeps the function's __name__; it is left out here because it needs a Ray)
    assert Experiment.get_trainable_name(tune.with_resources(runner.trainable, {"cpu": 1})) == "_trainable"


def test_a_search_sample_still_becomes_a_standard_search_trial():
    """The trainable's Optuna branch imports the protocol lazily: the sample becomes the same trial dict as
    ``TrialConfig('standard_search', ...)`` (batch size rounded, alpha = r = 0, the first seed)."""
    from gnp_study.trainable import trial_of

    s = parse_spec({"name": "t", "data": {"dataset": "digits"}, "model": {"name": "small_cnn"},
                    "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}, "seeds": [7, 8],
                    "stages": {"standard": {"search": "optuna", "num_samples": 2,
                                            "space": {"lr": {"low": 0.01, "high": 0.1, "log": True},
                                                      "batch_size": {"low": 32, "high": 128}}}}})
    got = trial_of({"lr": 0.02, "batch_size": 63.6}, s)
    assert got == TrialConfig("standard_search", {"lr": 0.02, "batch_size": 64, "alpha": 0.0, "r": 0.0},
                              7).to_dict()


@pytest.mark.parametrize("study", ["digits.yaml", "cifar10_quick.yaml", "table1_wrn28_10_cifar10_basic.yaml"])
def test_the_study_check_builds_the_model_without_importing_torch_dynamo(study):
    """The driver's check builds the model on the meta device; weight init there would import
    torch._dynamo (~1.8 s with one core idle at the start of every study), so it is skipped on meta."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "search_spaces" / study
    loaded = _modules_after(f"from gnp_study.spec import load_spec; load_spec({str(path)!r})")
    assert "torch" in loaded and "gnp_study.models" in loaded  # the model was built
    assert "torch._dynamo" not in loaded


def test_collect_merges_history_and_tune_rows_into_the_tables_by_hand(tmp_path):
    """collect_trials (built without per-trial DataFrames since 1 Dec 2026): every value of both tables against
    figures worked out by hand from one trial's checkpoint history and Tune rows."""
    import math
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from gnp_study import runner

    s = spec(training={"epochs": 4, "batch_size": 64, "lr": 0.1})
    trial = TrialConfig("gnp", {"alpha": 0.5, "r": 0.05}, 3).to_dict()
    base = {"train_loss": 1.0, "train_error": 30.0, "test_loss": 1.0, "grad_norm": 0.5, "lr": 0.1,
            "node": "a", "diverged_epoch": math.nan}
    # history: epochs 1-3, no validation metrics; epoch 3 also reached Tune with other numbers (Tune wins)
    hist = [dict(base, epoch=1, test_error=20.0, best_test_error=20.0, epoch_time_s=0.5, status="running"),
            dict(base, epoch=2, test_error=15.0, best_test_error=15.0, epoch_time_s=0.25, status="running"),
            dict(base, epoch=3, test_error=99.0, best_test_error=15.0, epoch_time_s=9.0, status="running")]
    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    (ckpt / runner.HISTORY_FILE).write_text(json.dumps(hist))
    tune_rows = pd.DataFrame([
        dict(base, epoch=3.0, test_error=12.0, best_test_error=12.0, epoch_time_s=0.125, status="running",
             val_error=8.0),
        dict(base, epoch=math.nan, test_error=1.0, best_test_error=1.0, epoch_time_s=50.0, status="running",
             val_error=1.0),  # a row without an epoch: dropped
        dict(base, epoch=4.0, test_error=13.0, best_test_error=12.0, epoch_time_s=math.nan, status="completed",
             val_error=8.0, node="b"),  # ties epoch 3 on validation error: the earlier epoch is chosen
    ])
    res = SimpleNamespace(config={"trial": trial}, metrics_dataframe=tune_rows, error=None,
                          checkpoint=SimpleNamespace(filesystem=pafs.LocalFileSystem(), path=str(ckpt)))
    trials, epochs, unfinished, lost = runner.collect_trials([res], "gnp", s)
    assert (unfinished, lost) == (0, 0)
    assert list(epochs["epoch"]) == [1, 2, 3, 4]
    assert epochs["test_error"].tolist() == [20.0, 15.0, 12.0, 13.0]
    assert epochs["val_error"].iloc[:2].isna().all() and epochs["val_error"].iloc[2:].tolist() == [8.0, 8.0]
    assert epochs["val_loss"].isna().all()  # reported by neither source
    assert set(epochs["trial_id"]) == {trial["trial_id"]} and set(epochs["seed"]) == {3}
    assert epochs["alpha"].tolist() == [0.5] * 4 and set(epochs["stage"]) == {"gnp"}
    assert epochs["epoch"].dtype == np.int64 and epochs["seed"].dtype == np.int64
    assert epochs["test_error"].dtype == np.float64 and epochs["alpha"].dtype == np.float64
    row = trials.iloc[0]
    assert row["status"] == "completed" and row["epochs_run"] == 4 and row["node"] == "b"
    assert row["best_test_error"] == 12.0 and row["final_test_error"] == 13.0
    assert row["wall_time_s"] == 0.5 + 0.25 + 0.125  # epoch 4's NaN time counts as nothing
    assert row["best_val_error"] == 8.0 and row["test_error_at_best_val"] == 12.0  # epoch 3, not 4
    assert math.isnan(row["diverged_epoch"]) and row["error"] == ""
    assert json.loads(row["config"]) == {"alpha": 0.5, "r": 0.05}


_WORKER_SCRIPT = """
import json, pickle, sys, types
import ray
from ray import tune
arrays_file, spec_json, trial_json, out = sys.argv[1:]
reports = []
tune.report = lambda metrics, checkpoint=None: reports.append(metrics)
tune.get_checkpoint = lambda: None
ray.get_runtime_context = lambda: types.SimpleNamespace(get_node_id=lambda: "node", runtime_env={})
from gnp_study.trainable import trainable
import warnings
warnings.filterwarnings("error", message=".*not writable")  # torch's warning for a read-only array
with open(arrays_file, "rb") as f:
    digits = pickle.load(f)
for a in digits:
    a.setflags(write=False)  # as ray.get gives them: views of the object store
trainable({"trial": json.loads(trial_json)}, json.loads(spec_json), digits=digits)
json.dump({"reports": reports, "modules": sorted(sys.modules)}, open(out, "w"))
"""


def test_a_digits_worker_trains_on_the_drivers_split_without_scikit_learn(tmp_path):
    """The runner sends a digits study's split to the trial workers (``trainable(..., digits=...)``): a
    worker given it imports neither scikit-learn nor scipy, and its trial is bit for bit the in-process
    trial that loaded the digits with scikit-learn."""
    import pickle
    import subprocess
    import sys

    from gnp_study.data import digits_arrays

    s = spec(checkpoint_every=3)
    trial = TrialConfig("gnp", {"alpha": 0.8, "r": 0.05}, 1).to_dict()
    (tmp_path / "digits.pkl").write_bytes(pickle.dumps(digits_arrays()))
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, "-c", _WORKER_SCRIPT, str(tmp_path / "digits.pkl"), json.dumps(s.resolved()),
                    json.dumps(trial), str(out)], check=True, timeout=300)
    got = json.loads(out.read_text())
    assert not {m for m in got["modules"] if m.split(".")[0] in ("sklearn", "scipy")}
    assert [r["epoch"] for r in got["reports"]] == [1, 2, 3]
    mine = metrics_of(s, trial)
    for c in COLS:
        assert [r[c] for r in got["reports"]] == [m[c] for m in mine], c  # bit for bit (JSON keeps floats exact)


def test_the_runner_hands_the_digits_split_to_the_workers_of_a_digits_study_only(monkeypatch, tmp_path):
    """What ``runner._tuner`` binds to the trainable: the study, plus the digits split for a digits study
    (equal to scikit-learn's), and no data for a study on files (CIFAR-10 here)."""
    from ray import tune
    from sklearn.datasets import load_digits

    from gnp_study import runner

    bound = []
    monkeypatch.setattr(tune, "with_parameters", lambda fn, **kw: bound.append(kw) or fn)
    runner._tuner("standard", {}, spec(), str(tmp_path / "ray"), [])
    xtr, ytr, xte, yte = bound[-1]["digits"]
    assert bound[-1]["spec_dict"] == spec().resolved()
    assert xtr.shape == (1437, 64) and xte.shape == (360, 64)
    x, y = load_digits(return_X_y=True)
    # the split is a stratified partition of all 1797 images (every image once, labels kept) ...
    both = np.concatenate([np.column_stack([xtr, ytr]), np.column_stack([xte, yte])])
    assert sorted(map(tuple, both)) == sorted(map(tuple, np.column_stack([x, y])))
    assert np.abs(np.bincount(yte) - 0.2 * np.bincount(y)).max() < 1  # stratified 80/20
    # ... and exactly the study's documented split (data.DATASETS["digits"]: stratified, random_state 0),
    # image for image in the same order: another seed or order would change every trial
    from sklearn.model_selection import train_test_split

    want = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    for got, ref in zip((xtr, xte, ytr, yte), want):
        assert np.array_equal(got, ref) and got.dtype == ref.dtype
    cifar = parse_spec({"name": "c", "data": {"dataset": "cifar10", "root": str(tmp_path)},
                        "model": {"name": "resnet20"},
                        "training": {"epochs": 1, "batch_size": 128, "lr": 0.1}, "seeds": [0]}, check_names=False)
    runner._tuner("standard", {}, cifar, str(tmp_path / "ray2"), [])
    assert "digits" not in bound[-1] and bound[-1]["spec_dict"] == cifar.resolved()


def test_the_driver_records_the_torchvision_version_without_importing_torchvision():
    """run_info.json's versions: torchvision's is its installed (pip) version, read without importing the
    package (torchvision.models imports torch._dynamo: ~2 s of every study's start); the release agrees with
    what the imported module reports."""
    import torchvision

    loaded = _modules_after("from gnp_study import runner; runner._versions()")
    assert "torchvision" not in loaded and "torch._dynamo" not in loaded
    from gnp_study import runner

    v = runner._versions()
    # the installed release (a wheel's metadata may or may not carry the build tag, e.g. +cpu)
    assert v["torchvision"].split("+")[0] == torchvision.__version__.split("+")[0]


@pytest.mark.parametrize("name,per_stage", [("digits_cut", (6, 2, 18)), ("digits_tiny", (2, 2, 2))])
def test_the_benchmark_studies_are_valid_cuts_of_the_default_study(name, per_stage):
    """benchmarks/digits_cut.yaml and digits_tiny.yaml validate, have the trial counts their headers and
    benchmarks/README.md state, and train exactly as the default study (same data, model, recipe)."""
    from pathlib import Path

    from gnp_study.protocol import count_trials
    from gnp_study.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    s = load_spec(root / "benchmarks" / f"{name}.yaml")
    n = count_trials(s)
    assert (n["standard"], n["sam"], n["gnp"]) == per_stage
    default = load_spec(root / "search_spaces" / "digits.yaml")
    assert s.data == default.data and s.model == default.model
    assert s.training.model_dump(exclude={"epochs"}) == default.training.model_dump(exclude={"epochs"})
