"""The worked examples under ``examples/`` (a user's own model and data through the package's loop; a
user's own training loop) run through ``gnp-study run greedy`` as a user runs them, write every output,
and resume after a SIGKILL of the driver with the same trials, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from gnp_study.study_folder import EPOCH_COLUMNS, TRIAL_COLUMNS
from helpers import cli, finish

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
#: example folder -> (trials of its study, epochs per trial, the metric its outputs name)
EXAMPLES = {"tabular": (27, 10, "test error"), "own_loop": (24, 6, "accuracy")}
RUN_TIMEOUT_S = 400


def _run(example: str, out: Path, address: str) -> str:
    proc = cli(["run", "greedy", str(ROOT / "examples" / example / "study.yaml"), "--output", str(out),
                "--address", address])
    text = finish(proc, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, text[-4000:]
    return text


def _finished_sam_trials(out: Path) -> set[str]:
    done = set()
    for f in (out / "ray" / "sam").rglob("result.json") if (out / "ray" / "sam").exists() else []:
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines and lines[-1].get("status") == "completed":
            done.add(lines[0]["gnp_trial_id"])
    return done


@pytest.mark.timeout(3 * RUN_TIMEOUT_S)
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_runs_and_resumes_after_sigkill(example, ray_head, tmp_path):
    n_trials, n_epochs, metric = EXAMPLES[example]
    ref = tmp_path / "reference"
    text = _run(example, ref, ray_head)
    assert "GNP − Standard" in text and "Traceback" not in text, text[-3000:]
    trials = pd.read_parquet(ref / "trials.parquet")
    assert len(trials) == n_trials and set(trials["status"]) == {"completed"}
    assert len(pd.read_parquet(ref / "epochs.parquet")) == n_trials * n_epochs
    for name in ("results.md", "figure2.png", "figure3.png", "report.html"):
        assert (ref / name).stat().st_size > 0, name
    for name in ("results.md", "report.html"):  # the example's metric is what its pages name
        assert metric in (ref / name).read_text().lower(), name

    # the same study, its driver SIGKILLed inside stage 2 once a trial of it has ended, run again
    out = tmp_path / "killed"
    proc = cli(["run", "greedy", str(ROOT / "examples" / example / "study.yaml"), "--output", str(out),
                "--address", ray_head])
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and proc.poll() is None and not _finished_sam_trials(out):
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    assert _finished_sam_trials(out), "no trial of stage 'sam' ended in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert "sam" not in json.loads((out / "decisions.json").read_text())
    _run(example, out, ray_head)

    key = ["trial_id"]
    got = pd.read_parquet(out / "trials.parquet").sort_values(key).reset_index(drop=True)
    want = trials.sort_values(key).reset_index(drop=True)
    cols = ["trial_id", "status", "best_test_error", "final_test_error", "epochs_run", "best_val_error",
            "test_error_at_best_val"] + [c for c in want.columns if c not in TRIAL_COLUMNS]  # best_<metric>
    pd.testing.assert_frame_equal(got[cols], want[cols], check_exact=True)
    ecols = ["trial_id", "epoch", "train_loss", "test_error", "grad_norm"] + [
        c for c in pd.read_parquet(ref / "epochs.parquet").columns if c not in EPOCH_COLUMNS]  # the metric
    by = ["trial_id", "epoch"]
    got_e = pd.read_parquet(out / "epochs.parquet").sort_values(by).reset_index(drop=True)[ecols]
    want_e = pd.read_parquet(ref / "epochs.parquet").sort_values(by).reset_index(drop=True)[ecols]
    pd.testing.assert_frame_equal(got_e, want_e, check_exact=True)
    assert json.loads((out / "decisions.json").read_text()) == json.loads((ref / "decisions.json").read_text())
