"""The fault-injection seam (gnp_study.faults) on its own: which trial and epoch a fault hits."""

from __future__ import annotations

import json

import pytest

from gnp_study import faults

TRIAL = {"trial_id": "gnp-x-s1", "stage": "gnp", "seed": 1, "config": {"alpha": 0.5, "r": 0.1}}


def test_no_variable_no_hook(monkeypatch):
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    assert faults.for_trial(TRIAL, resumed=False) is None


def test_raise_at_the_named_epoch_for_the_matching_trial_only(monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "raise@2:alpha=0.5;raise_always@3:stage=sam")
    hook = faults.for_trial(TRIAL, resumed=False)
    hook(1)
    with pytest.raises(RuntimeError, match="epoch 2"):
        hook(2)
    hook(3)  # the second fault is for stage sam
    assert faults.for_trial(TRIAL, resumed=True) is None  # raise: once, not after a resume
    assert faults.for_trial(dict(TRIAL, config={"alpha": 0.4, "r": 0.1}), resumed=False) is None


def test_raise_always_survives_a_resume(monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "raise_always@1:seed=1")
    with pytest.raises(RuntimeError, match="every attempt"):
        faults.for_trial(TRIAL, resumed=True)(1)


def test_start_log_lines(monkeypatch, tmp_path):
    log = tmp_path / "starts.jsonl"
    monkeypatch.setenv(faults.START_LOG_ENV, str(log))
    faults.log_event("start", TRIAL, 0, False)
    faults.log_event("end", TRIAL, 3, True)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["event"], r["trial_id"], r["epoch"], r["finished"]) for r in rows] == [
        ("start", "gnp-x-s1", 0, False), ("end", "gnp-x-s1", 3, True)]
