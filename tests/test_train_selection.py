"""Trials with a validation split and noisy labels, and the paired design of the study (docs/studies.md,
docs/statistics.md): the same seed gives the same initial weights, the same batches and the same random
stream in every configuration."""

from __future__ import annotations

import io
import math

import numpy as np
import torch

import gnp_study.data as data
import gnp_study.models as models
from helpers import digits_trial_spec, gnp_trial, run_trial

BUILD_MODEL, BUILD_DATASETS = models.build_model, data.build_datasets  # before any monkeypatching

VAL_KEYS = ("val_loss", "val_error", "best_val_error", "test_error_at_best_val")


def spec(epochs=3, **data):
    """The one-seed digits trial study of ``helpers.digits_trial_spec`` with ``epochs`` and ``data``
    overrides."""
    return digits_trial_spec(data=data, training={"epochs": epochs})


# ------------------------------------------------------------------------------------- validation mode


def test_validation_metrics_follow_the_epoch_of_lowest_validation_error():
    res, reports = run_trial(spec(epochs=4, validation={"size": 400}), gnp_trial())
    m = [r for r, _ in reports]
    val = [x["val_error"] for x in m]
    test = [x["test_error"] for x in m]
    assert all(0 <= v <= 100 and x["val_loss"] > 0 for v, x in zip(val, m))
    # 400 validation images: every error is a whole number of images
    assert all(abs(v * 4 - round(v * 4)) < 1e-9 for v in val)
    for i, x in enumerate(m):
        first_best = int(np.argmin(val[: i + 1]))  # numpy's argmin returns the first (earliest) minimum
        assert x["best_val_error"] == min(val[: i + 1])
        assert x["test_error_at_best_val"] == test[first_best]
    assert res.best_val_error == min(val) and res.test_error_at_best_val == test[int(np.argmin(val))]


def test_paper_mode_has_nan_validation_metrics_and_trains_the_same_run():
    _, paper = run_trial(spec(), gnp_trial())
    _, val = run_trial(spec(validation={"size": 400}), gnp_trial())
    for (a, _), (b, _) in zip(paper, val):
        assert all(math.isnan(a[k]) for k in VAL_KEYS)
        # the validation loader draws nothing from the global generator: the training run is identical
        for k in ("train_loss", "test_error", "test_loss", "grad_norm", "best_test_error"):
            assert a[k] == b[k], k


def test_resume_keeps_the_validation_selection_bit_for_bit():
    s = spec(validation={"size": 400})
    _, full = run_trial(s, gnp_trial())
    buf = io.BytesIO()
    torch.save(full[0][1], buf)
    buf.seek(0)
    _, resumed = run_trial(s, gnp_trial(), resume=torch.load(buf, weights_only=True))
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, _), (b, _) in zip(full[1:], resumed):
        for k in VAL_KEYS + ("test_error", "train_loss"):
            assert a[k] == b[k], k
    res, again = run_trial(s, gnp_trial(), resume=full[-1][1])  # finished: the last report again
    assert all(again[0][0][k] == full[-1][0][k] for k in VAL_KEYS)
    assert res.test_error_at_best_val == full[-1][0]["test_error_at_best_val"]


# ------------------------------------------------------------------------------------- paired design


class _Recording(torch.utils.data.Dataset):
    """Wraps the training set and records which images are read, in order, and their labels."""

    def __init__(self, ds, log):
        self.ds, self.log = ds, log

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        self.log.append((int(i), int(y)))
        return x, y


def _observe(monkeypatch, s, t):
    """Run one epoch of trial ``t`` and return (initial weights, images read with labels, torch RNG state
    after the epoch). The model gets a dropout layer so that the random stream is actually used."""
    seen: dict = {"order": []}

    def model_with_dropout(*a, **k):
        m = torch.nn.Sequential(BUILD_MODEL(*a, **k), torch.nn.Dropout(0.3))
        seen["init"] = {n: v.clone() for n, v in m.state_dict().items()}
        return m

    def recording_data(*a, **k):
        b = BUILD_DATASETS(*a, **k)
        b.train = _Recording(b.train, seen["order"])
        return b

    monkeypatch.setattr(models, "build_model", model_with_dropout)
    monkeypatch.setattr(data, "build_datasets", recording_data)
    _, reports = run_trial(s, t)
    return seen["init"], seen["order"], reports[0][1]["torch_rng"]


def test_same_seed_same_weights_batches_and_random_stream_in_every_configuration(monkeypatch):
    s = spec(epochs=1, label_noise={"fraction": 0.4, "kind": "symmetric", "seed": 0})
    configs = [gnp_trial(alpha=0.0, r=0.0), gnp_trial(alpha=0.8, r=0.1, lr=0.1), gnp_trial(alpha=1.0, r=0.05, lr=0.02)]
    runs = [_observe(monkeypatch, s, c) for c in configs]
    init0, order0, rng0 = runs[0]
    assert len(order0) == 300 and sorted(i for i, _ in order0) == list(range(300))  # one pass, shuffled
    assert [i for i, _ in order0] != list(range(300))
    for init, order, rng in runs[1:]:
        assert init.keys() == init0.keys() and all(torch.equal(init[k], init0[k]) for k in init0)
        assert order == order0  # same images, same order, same (noisy) labels
        # one forward pass per step (alpha = 0) or two: the global stream (dropout) ends in the same place
        assert torch.equal(rng, rng0)
    init1, order1, rng1 = _observe(monkeypatch, s, gnp_trial(alpha=0.0, r=0.0, seed=1))
    assert any(not torch.equal(init1[k], init0[k]) for k in init0)
    assert [i for i, _ in order1] != [i for i, _ in order0]
    # the noisy labels come from the noise seed, not the trial seed: image i has the same label
    assert dict(order1) == dict(order0)


# ------------------------------------------------------------------------------------- study tables


def test_tables_carry_the_validation_columns():
    """runner.collect_trials on hand-made Tune results: best_val_error is the lowest val_error and
    test_error_at_best_val the test error of its earliest epoch; NaN in paper mode."""
    from types import SimpleNamespace

    import pandas as pd

    from gnp_study.protocol import TrialConfig
    from gnp_study.runner import collect_trials
    from gnp_study.study_folder import EPOCH_COLUMNS, TRIAL_COLUMNS

    def result(seed, val, test):
        t = TrialConfig("sam", {"alpha": 1.0, "r": 0.1}, seed).to_dict()
        n = len(test)
        df = pd.DataFrame({"epoch": range(1, n + 1), "train_loss": 1.0, "train_error": 10.0, "test_loss": 0.5,
                           "test_error": test, "best_test_error": np.minimum.accumulate(test),
                           "grad_norm": 1.0, "lr": 0.1, "epoch_time_s": 1.0, "val_error": val,
                           "val_loss": [0.4 if v == v else math.nan for v in val],
                           "status": ["running"] * (n - 1) + ["completed"], "node": "n"})
        return SimpleNamespace(config={"trial": t}, metrics_dataframe=df, error=None, checkpoint=None)

    s = spec()
    # epochs 2 and 4 tie on validation (10.0): the earliest (2, test 7.0) is the one reported
    trials, epochs, unfinished, lost = collect_trials([result(0, [12.0, 10.0, 11.0, 10.0], [8.0, 7.0, 5.0, 6.0]),
                                                 result(1, [math.nan] * 3, [9.0, 8.0, 8.5])], "sam", s)
    assert unfinished == lost == 0
    assert list(trials.columns) == TRIAL_COLUMNS and list(epochs.columns) == EPOCH_COLUMNS
    row = trials.set_index("seed")
    assert row.loc[0, "best_val_error"] == 10.0 and row.loc[0, "test_error_at_best_val"] == 7.0
    assert row.loc[0, "best_test_error"] == 5.0  # the paper's score is still there, beside it
    assert math.isnan(row.loc[1, "best_val_error"]) and math.isnan(row.loc[1, "test_error_at_best_val"])
    assert epochs[epochs.seed == 0]["val_error"].tolist() == [12.0, 10.0, 11.0, 10.0]
    assert epochs[epochs.seed == 1]["val_error"].isna().all() and epochs["val_loss"].notna().sum() == 4
