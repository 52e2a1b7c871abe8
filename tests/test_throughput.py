"""Throughput changes (issue 10) keep every result: the data set built once per worker process, and one
checkpoint per trial (``checkpoint_every`` = epochs, as the digits study ships)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gnp_study import train
from gnp_study.protocol import TrialConfig
from gnp_study.spec import parse_spec
from gnp_study.train import train_trial

COLS = ["train_loss", "train_error", "test_loss", "test_error", "best_test_error", "grad_norm", "lr"]


def spec(train_subset=300, **extra):
    return parse_spec({"name": "t", "data": {"dataset": "digits", "train_subset": train_subset},
                       "model": {"name": "small_cnn"},
                       "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9},
                       "seeds": [0, 1], **extra})


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


_STAGE_SCRIPT = """
import json, sys
import ray
from gnp_study import runner
from gnp_study.protocol import TrialConfig
from gnp_study.spec import parse_spec
spec_dict, plan, address, storage, out = json.loads(sys.argv[1])
s = parse_spec(spec_dict)
runner.connect(address)
trials, epochs = runner.run_stage("gnp", [TrialConfig.from_dict(t) for t in plan], s, storage)[:2]
ray.shutdown()
trials.to_parquet(out + "/trials.parquet")
epochs.to_parquet(out + "/epochs.parquet")
"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_checkpoint_per_trial_keeps_every_epoch(ray_head, tmp_path):
    """With one checkpoint per trial (checkpoint_every = epochs) every epoch still reaches Tune's result
    files and the epochs table, equal bit for bit to the trial run in-process."""
    import subprocess
    import sys

    s = spec(checkpoint_every=3, resources={"cpus_per_trial": 1, "gpus_per_trial": 0})
    plan = [TrialConfig("gnp", {"alpha": a, "r": 0.05}, seed) for a in (0.0, 0.5) for seed in (0, 1)]
    arg = json.dumps([s.resolved(), [tc.to_dict() for tc in plan], ray_head, str(tmp_path / "ray"), str(tmp_path)])
    proc = subprocess.run([sys.executable, "-c", _STAGE_SCRIPT, arg], capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    assert list(trials["trial_id"]) == [tc.trial_id for tc in plan]
    assert (trials["status"] == "completed").all()
    for tc in plan:
        mine = pd.DataFrame(metrics_of(s, tc.to_dict()))
        got = epochs[epochs["trial_id"] == tc.trial_id].sort_values("epoch")
        assert list(got["epoch"]) == [1, 2, 3]
        for c in COLS:  # bit for bit (NaN where both are NaN)
            assert np.array_equal(got[c].to_numpy(float), mine[c].to_numpy(float), equal_nan=True), c
    # Tune's own result files (what its JSON/CSV/TensorBoard loggers write) hold every epoch once, and each
    # trial kept its one checkpoint (the last epoch's)
    seen = {}
    for f in (tmp_path / "ray" / "gnp").rglob("result.json"):
        lines = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        seen[lines[0]["gnp_trial_id"]] = [int(l["epoch"]) for l in lines]
        assert [p.name for p in f.parent.glob("checkpoint_*")] == ["checkpoint_000000"]
    assert seen == {tc.trial_id: [1, 2, 3] for tc in plan}


def test_a_gpu_fraction_fits_one_gpu_and_still_needs_one():
    """Item 4's code path on CPU: gpus_per_trial = 0.25 asks Ray for a quarter GPU per trial (four trials
    share one GPU); the check before any trial accepts it on a one-GPU cluster and refuses it without GPUs."""
    from gnp_study import runner

    s = spec(resources={"cpus_per_trial": 1, "gpus_per_trial": 0.25})
    assert s.resources.gpus_per_trial == 0.25
    runner.check_resources(s, {"CPU": 16.0, "GPU": 1.0})
    with pytest.raises(runner.StudyError, match="gpus_per_trial is 0.25"):
        runner.check_resources(s, {"CPU": 16.0})
