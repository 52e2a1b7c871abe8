"""One trial without Ray: per-epoch metrics, bit-for-bit resume from a checkpoint, divergence."""

from __future__ import annotations

import math

import pytest
import torch

from gnp_study.spec import parse_spec
from helpers import digits_trial_spec, gnp_trial, run_trial

KEYS = {"epoch", "train_loss", "train_error", "test_loss", "test_error", "best_test_error", "grad_norm", "lr",
        "epoch_time_s", "status", "diverged_epoch", "node"}


def spec(**training):
    """The one-seed digits trial study of ``helpers.digits_trial_spec`` with ``training`` overrides."""
    return digits_trial_spec(training=training)


def test_reports_every_epoch_with_best_so_far():
    res, reports = run_trial(spec(), gnp_trial())
    metrics = [m for m, _ in reports]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(KEYS <= set(m) for m in metrics)
    errs = [m["test_error"] for m in metrics]
    assert [m["best_test_error"] for m in metrics] == [min(errs[: i + 1]) for i in range(3)]
    assert res.status == "completed" and res.best_test_error == min(errs) and res.epochs_run == 3
    assert [m["status"] for m in metrics] == ["running", "running", "completed"]
    # cosine schedule: the learning rate decreases to 0 at the end of training
    assert metrics[0]["lr"] > metrics[1]["lr"] > metrics[2]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert all(m["grad_norm"] > 0 for m in metrics)
    assert all(st is not None for _, st in reports)  # checkpoint_every = 1


def test_resume_from_checkpoint_is_bit_for_bit():
    s = spec()
    _, full = run_trial(s, gnp_trial())
    state_after_1 = full[0][1]
    # the checkpoint must survive torch.save / torch.load(weights_only=True)
    import io

    buf = io.BytesIO()
    torch.save(state_after_1, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    _, resumed = run_trial(s, gnp_trial(), resume=loaded)
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, _), (b, _) in zip(full[1:], resumed):
        for k in ("train_loss", "test_error", "test_loss", "grad_norm", "lr", "best_test_error"):
            assert a[k] == b[k], k  # exact, not approximate


def test_resume_after_last_epoch_trains_nothing_and_repeats_the_final_report():
    s = spec()
    _, full = run_trial(s, gnp_trial())
    res, again = run_trial(s, gnp_trial(), resume=full[-1][1])
    assert len(again) == 1 and again[0][0]["epoch"] == 3 and again[0][0]["test_error"] == full[-1][0]["test_error"]
    assert res.status == "completed"
    # with its checkpoint: resumed in a new Tune trial folder, the trial holds its history there too
    assert again[0][1] is full[-1][1] and [h["epoch"] for h in again[0][1]["history"]] == [1, 2, 3]


def test_non_finite_loss_ends_the_trial_as_diverged():
    res, reports = run_trial(spec(lr=1e12, momentum=0.0, weight_decay=0.0, lr_schedule="constant"), gnp_trial(alpha=-0.5))
    assert res.status == "diverged" and res.diverged_epoch == 1
    m = reports[-1][0]
    assert m["status"] == "diverged" and m["diverged_epoch"] == 1
    # its end is checkpointed: a trial resumed from it (after a driver restart) reports the same end again
    # and trains nothing
    state = reports[-1][1]
    assert state is not None and state["metrics"]["status"] == "diverged"
    res2, again = run_trial(spec(lr=1e12, momentum=0.0, weight_decay=0.0, lr_schedule="constant"), gnp_trial(alpha=-0.5),
                      resume=state)
    assert res2.status == "diverged" and res2.diverged_epoch == 1
    assert [m for m, _ in again] == [m]


def test_gradient_norm_past_the_study_bound_is_diverged():
    s = spec()
    s.divergence.max_grad_norm = 1e-6  # every epoch's mean norm(g1) is above this bound
    res, reports = run_trial(s, gnp_trial())
    assert res.status == "diverged" and res.epochs_run == 1 and len(reports) == 1
    assert math.isnan(reports[0][0]["test_error"])


def test_alpha_zero_is_plain_training():
    """alpha = 0 through the trainer equals the same trainer with r = 0 (one pass, base optimizer)."""
    _, a = run_trial(spec(), gnp_trial(alpha=0.0, r=0.05))
    _, b = run_trial(spec(), gnp_trial(alpha=0.0, r=0.0))
    assert [m["train_loss"] for m, _ in a] == [m["train_loss"] for m, _ in b]


def test_device_loader_trains_from_a_data_set_held_as_one_tensor():
    s = parse_spec({"name": "t", "data": {"dataset": "digits", "train_subset": 600, "loader": "device"},
                    "model": {"name": "small_cnn"}, "training": {"epochs": 4, "batch_size": 32, "lr": 0.1},
                    "seeds": [0]})
    res, reports = run_trial(s, gnp_trial())
    assert res.status == "completed" and [m["epoch"] for m, _ in reports] == [1, 2, 3, 4]
    assert reports[-1][0]["test_error"] < 15.0  # it learns (chance is 90 %; the torch loader gets ~3 %)
    # resume is exact with the device loader too (its shuffling generator is in the checkpoint)
    _, resumed = run_trial(s, gnp_trial(), resume=reports[0][1])
    assert resumed[0][0]["train_loss"] == reports[1][0]["train_loss"]


def test_device_loader_rejects_augmentations_it_cannot_run():
    from gnp_study.spec import SpecError

    with pytest.raises(SpecError, match="loader 'device'"):
        parse_spec({"name": "t", "data": {"dataset": "cifar10", "augmentation": "autoaugment_cutmix",
                                          "loader": "device"},
                    "model": {"name": "resnet8"}, "training": {"epochs": 2, "batch_size": 64, "lr": 0.05},
                    "seeds": [0]})


def test_bf16_autocast_and_channels_last_train_on_cpu():
    """The GPU options run on CPU too (bf16 autocast is supported there); the model still learns."""
    s = parse_spec({"name": "t", "data": {"dataset": "digits", "train_subset": 600},
                    "model": {"name": "small_cnn"},
                    "training": {"epochs": 4, "batch_size": 32, "lr": 0.1, "precision": "bf16",
                                 "channels_last": True},
                    "seeds": [0]})
    res, reports = run_trial(s, gnp_trial())
    assert res.status == "completed"
    assert all(math.isfinite(m["train_loss"]) for m, _ in reports)
    assert reports[-1][0]["test_error"] < 15.0
    # the bf16 run is a different computation from fp32 (autocast really took effect)
    s32 = s.model_copy(deep=True)
    s32.training.precision = "fp32"
    _, r32 = run_trial(s32, gnp_trial())
    assert r32[0][0]["train_loss"] != reports[0][0]["train_loss"]


def test_an_amortised_trial_builds_gnp_with_the_studys_every_and_reuse(monkeypatch):
    import gnp_study.optim as optim_mod

    built = []
    real = optim_mod.GNP

    def spy(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(optim_mod, "GNP", spy)  # train_trial imports it at call time
    s = spec(epochs=1, reuse="difference")
    amortised = dict(gnp_trial(), config={"alpha": 0.8, "r": 0.05, "every": 2})
    _, diff = run_trial(s, amortised)
    assert built[-1]["every"] == 2 and built[-1]["reuse"] == "difference"
    _, orth = run_trial(spec(epochs=1), amortised)
    assert built[-1]["every"] == 2 and built[-1]["reuse"] == "orthogonal"
    # one step of every two takes the second pass, whichever direction is reused
    assert diff[-1][0]["passes_per_step"] == pytest.approx(orth[-1][0]["passes_per_step"])
    assert orth[-1][0]["passes_per_step"] == pytest.approx(1 + 3 / 5)  # 300 images, batch 64: steps F R F R F
    assert diff[-1][0]["train_loss"] != orth[-1][0]["train_loss"]  # the reused direction differs
    # at every = 1 the reuse mode is not used: the optimizer is built as Algorithm 1's
    _, full = run_trial(s, gnp_trial())
    assert "every" not in built[-1] and "reuse" not in built[-1] and full[-1][0]["passes_per_step"] == 2.0


def test_a_bad_reuse_mode_is_refused_and_the_default_stays_out_of_the_resolved_spec():
    from gnp_study.spec import SpecError

    with pytest.raises(SpecError, match="reuse"):
        spec(reuse="momentum")
    assert "reuse" not in spec().resolved()["training"]
    assert spec(reuse="difference").resolved()["training"]["reuse"] == "difference"
