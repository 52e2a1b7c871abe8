"""The real CLI end to end on a tiny digits study through real Ray Tune: outputs checked against each
other, crashed trials retried from checkpoints, a SIGKILLed driver resumed, and the study-folder lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gnp_study.protocol import plan
from gnp_study.spec import load_spec
from helpers import ROOT, RUN_TIMEOUT_S, TINY, cli, completed_results, finish, write_study

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]


def run_study(study: Path, out, address: str, env=None) -> str:
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", address], env=env)
    text = finish(proc)
    assert proc.returncode == 0, text[-4000:]
    return text


def expected_trial_count(study: Path, out: Path) -> int:
    spec = load_spec(study)
    decisions = json.loads((out / "decisions.json").read_text())
    return sum(len(plan(s, spec, decisions)) for s in ("standard", "sam", "gnp"))


@pytest.fixture(scope="module")
def reference(ray_head, tmp_path_factory):
    """One uninterrupted run of the tiny study: (study file, study folder, CLI output)."""
    d = tmp_path_factory.mktemp("reference")
    study = write_study(d / "tiny.yaml")
    out = d / "study"
    t0 = time.time()
    text = run_study(study, out, ray_head)
    return study, out, text, time.time() - t0


def test_outputs_agree_with_each_other(reference):
    study, out, text, _ = reference
    for name in ("study.yaml", "trials.parquet", "epochs.parquet", "decisions.json", "run_info.json",
                 "results.md", "results.csv", "figure2.png", "figure3.png", "report.html"):
        assert (out / name).is_file(), name
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    decisions = json.loads((out / "decisions.json").read_text())
    # the number of trials is the plan's
    assert len(trials) == expected_trial_count(study, out) == trials["trial_id"].nunique()
    # every completed trial has one row per epoch and its best error is the minimum over its epochs
    for tid, grp in epochs.groupby("trial_id"):
        row = trials.set_index("trial_id").loc[tid]
        assert list(grp["epoch"]) == list(range(1, int(row["epochs_run"]) + 1))
        if row["status"] == "completed":
            assert row["best_test_error"] == pytest.approx(grp["test_error"].min())
            assert row["epochs_run"] == TINY["training"]["epochs"]
    # the results table's means equal the means of the per-trial best errors of the chosen configurations
    table = pd.read_csv(out / "results.csv")
    for stage, scheme in (("standard", "Standard"), ("sam", "SAM"), ("gnp", "GNP")):
        chosen = trials[(trials["stage"] == stage) & (trials["config_key"] == decisions[stage]["config_key"])]
        ok = chosen[chosen["status"] == "completed"]["best_test_error"]
        row = table[table.iloc[:, 0].astype(str).str.lower() == scheme.lower()]
        assert len(row) == 1, table
        assert float(row["mean"].iloc[0]) == pytest.approx(ok.mean(), abs=1e-9)
        assert decisions[stage]["mean"] == pytest.approx(ok.mean(), abs=1e-9)
    # figures: PNGs of a sensible size with plotted content
    for name in ("figure2.png", "figure3.png"):
        img = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert img.shape[0] >= 300 and img.shape[1] >= 600, img.shape
        assert img.std() > 10
    # the diverging configuration is recorded as diverged at epoch 1 for every seed, counted in the stage's
    # candidates, never chosen, and the study went on
    div = trials[trials["config"].str.contains('"lr": 10000.0')]
    assert len(div) == 2 and (div["status"] == "diverged").all() and (div["diverged_epoch"] == 1).all()
    assert div["best_test_error"].isna().all() and (div["epochs_run"] == 1).all()
    cand = [c for c in decisions["standard"]["candidates"] if c["config_key"] == div["config_key"].iloc[0]][0]
    assert cand["n"] == 0 and cand["n_diverged"] == 2
    assert decisions["standard"]["config"]["lr"] != 1.0e4
    assert set(decisions) == {"standard", "sam", "gnp"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "<table" in html
    assert "trials done" in text


def test_report_rebuilds_without_ray(reference, tmp_path):
    _, out, _, _ = reference
    before = (out / "results.csv").read_text()
    (out / "report.html").unlink()
    proc = subprocess.run([sys.executable, "-m", "gnp_study", "report", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, RAY_ADDRESS="127.0.0.1:1"))  # any use of Ray would fail
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.html").is_file()
    assert (out / "results.csv").read_text() == before


def test_running_a_finished_study_again_trains_nothing(reference):
    study, out, _, _ = reference
    before = (out / "trials.parquet").read_bytes()
    # an unreachable Ray address: the run must not need Ray at all
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", "127.0.0.1:1"])
    text = finish(proc, timeout=300)
    assert proc.returncode == 0, text[-3000:]
    assert "already decided" in text
    assert (out / "trials.parquet").read_bytes() == before


def _compare_to_reference(ref_out: Path, out: Path):
    ref = pd.read_parquet(ref_out / "trials.parquet").set_index("trial_id").sort_index()
    got = pd.read_parquet(out / "trials.parquet").set_index("trial_id").sort_index()
    assert list(got.index) == list(ref.index)  # nothing lost, nothing added
    cols = ["status", "best_test_error", "final_test_error", "epochs_run"]
    # bit for bit on CPU: exact equality, not approx
    assert got[cols].equals(ref[cols]), pd.concat([ref[cols], got[cols]], axis=1, keys=["ref", "got"])
    ref_d = json.loads((ref_out / "decisions.json").read_text())
    got_d = json.loads((out / "decisions.json").read_text())
    assert got_d == ref_d
    ref_e = pd.read_parquet(ref_out / "epochs.parquet").sort_values(["trial_id", "epoch"]).reset_index(drop=True)
    got_e = pd.read_parquet(out / "epochs.parquet").sort_values(["trial_id", "epoch"]).reset_index(drop=True)
    ecols = ["trial_id", "epoch", "train_loss", "test_error", "grad_norm"]
    assert got_e[ecols].equals(ref_e[ecols])


def _result_epochs(out: Path, trial_id: str) -> list[int]:
    """The epochs a trial reported to Tune, in order, across all its attempts (Tune's result.json)."""
    seen = []
    for f in (out / "ray").rglob("result.json"):
        lines = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        if lines and lines[0].get("gnp_trial_id") == trial_id:
            seen.append([int(l["epoch"]) for l in lines])
    assert len(seen) == 1, seen
    return seen[0]


def test_crashed_trials_retry_from_checkpoint_and_failures_are_recorded(reference, tmp_path, ray_head):
    study, ref_out, _, _ = reference
    out = tmp_path / "faults"
    faults = "raise@2:alpha=0.5;kill@3:alpha=0.8;raise_always@2:alpha=1.5"
    run_study(study, out, ray_head, env={"GNP_STUDY_FAULT": faults})
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    ref = pd.read_parquet(ref_out / "trials.parquet").set_index("trial_id")
    failed = trials[trials["status"] == "failed"]
    # alpha = 1.5 fails on every attempt: recorded as failed with its error after the retry limit
    assert set(failed["alpha"]) == {1.5}
    assert failed["error"].str.contains("injected failure").all()
    assert (failed["epochs_run"] == 1).all()
    # retried trials continued from their checkpoint: epochs never restart, results equal the reference
    for alpha in (0.5, 0.8):
        ids = trials.index[(trials["alpha"] == alpha)]
        assert len(ids) > 0
        for tid in ids:
            epochs = _result_epochs(out, tid)
            assert epochs == [1, 2, 3]
            assert trials.loc[tid, "status"] == "completed"
            assert trials.loc[tid, "best_test_error"] == ref.loc[tid, "best_test_error"]
    # the study went on: every other trial is as in the reference run
    others = ref.index[ref["alpha"] != 1.5]
    assert trials.loc[others, "best_test_error"].equals(ref.loc[others, "best_test_error"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_interrupted_driver_resumes_without_losing_or_repeating_trials(reference, tmp_path, ray_head, sig):
    study, ref_out, _, _ = reference
    out = tmp_path / "resumed"
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", ray_head])
    # kill the driver in the middle of stage 'sam', after some of its trials have finished
    deadline = time.time() + RUN_TIMEOUT_S
    finished_before = {}
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("the study finished before it could be interrupted:\n" + proc.stdout.read()[-3000:])
        decided = out / "decisions.json"
        if decided.exists() and "standard" in json.loads(decided.read_text()):
            done = {}
            for f in (out / "ray" / "sam").rglob("result.json") if (out / "ray" / "sam").exists() else []:
                lines = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
                if lines and lines[-1].get("status") == "completed":
                    done[lines[0]["gnp_trial_id"]] = (f, f.read_bytes())
            if done:
                finished_before = done
                break
        time.sleep(0.2)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    else:  # Ctrl-C: the driver stops at once, says how to resume, and decides nothing
        os.kill(proc.pid, signal.SIGINT)
        text = finish(proc, timeout=120)
        assert proc.returncode == 130, text[-3000:]
        assert "run the same command again to resume" in text and "Traceback" not in text
    assert finished_before, "no trial of stage 'sam' finished in time"
    assert not json.loads((out / "decisions.json").read_text()).get("sam")
    text = run_study(study, out, ray_head)
    # Ray's multi-line warning about trials without result files (not started yet) stays off the console
    assert "Failed to fetch metrics" not in text and "FileNotFoundError" not in text, text[-3000:]
    # finished trials were not run again. Tune's experiment snapshot may predate their end, so Tune may
    # restore such a trial from its final checkpoint: it then trains no epoch and only repeats its final
    # report. What it reported before stays as it was.
    for tid, (f, content) in finished_before.items():
        before = [json.loads(l) for l in content.decode().splitlines() if l.strip()]
        after = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        assert after[: len(before)] == before, tid
        for extra in after[len(before):]:
            assert extra["epoch"] == before[-1]["epoch"], f"{tid} trained again"
            assert extra["test_error"] == before[-1]["test_error"]
    _compare_to_reference(ref_out, out)


def test_stage_without_a_readable_snapshot_keeps_its_ended_trials(reference, tmp_path, ray_head):
    """A driver SIGKILLed while Tune copied a stage's first snapshot left its experiment state empty (the
    kill soak saw it): no snapshot loads, so the stage starts again as a new Tune experiment. Simulated
    exactly: the driver is killed in stage 'sam' after some of its trials ended, then every experiment
    state of the stage is cut to 0 bytes. The rerun keeps the ended trials from their folders (they train
    no epoch again) and the study ends exactly as the uninterrupted one."""
    study, ref_out, _, _ = reference
    out = tmp_path / "cut"
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", ray_head])
    exp = out / "ray" / "sam"
    deadline = time.time() + RUN_TIMEOUT_S
    finished_before = {}
    while time.time() < deadline and proc.poll() is None and not finished_before:
        done = completed_results(exp)
        finished_before = {rows[0]["gnp_trial_id"]: (f, f.read_bytes()) for f, rows in done.items()}
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert finished_before, "no trial of stage 'sam' finished in time"
    states = list(exp.glob("experiment_state-*.json"))
    if not states:
        pytest.skip("the driver was killed before Tune's first snapshot of stage 'sam'")
    for f in states:
        f.write_bytes(b"")
    text = run_study(study, out, ray_head)
    assert "Traceback" not in text, text[-3000:]
    assert "no complete snapshot is left" in text and "kept from their folders" in text, text[-3000:]
    kept = json.loads((exp / "kept-trials.json").read_text())
    assert set(finished_before) <= set(kept)
    for tid, (f, content) in finished_before.items():
        assert f.read_bytes() == content, f"{tid} trained again"
        assert sum(1 for g in exp.rglob("result.json") if f'"gnp_trial_id": "{tid}"' in g.read_text()) == 1, tid
    _compare_to_reference(ref_out, out)


def _progress_lines(proc: subprocess.Popen, deadline: float):
    """The driver's output lines as they come (the driver prints progress lines, one per trial end)."""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            return
        yield line


@pytest.mark.parametrize("moment", ["last-report", "between-stages"])
def test_ctrl_c_at_a_stage_boundary_stops_the_study(reference, tmp_path, ray_head, moment):
    """Ctrl-C the instant stage 1's last trial reported ("6/6 trials done"), or once stage 1 is decided:
    Tune's own handler used to swallow it (the stage had already ended) and the study went on."""
    study, ref_out, _, _ = reference
    out = tmp_path / "stopped"
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", ray_head])
    seen = []
    deadline = time.time() + RUN_TIMEOUT_S
    for line in _progress_lines(proc, deadline):
        seen.append(line)
        if moment == "last-report" and line.startswith("[gnp-study] stage standard: 6/6 trials done"):
            break
        if moment == "between-stages" and line.startswith("[gnp-study] stage sam: 0/"):
            break  # stage 1 is decided and written; stage 2 is about to start
    else:
        pytest.fail("the moment never came:\n" + "".join(seen)[-3000:])
    os.kill(proc.pid, signal.SIGINT)
    text = "".join(seen) + finish(proc, timeout=180)
    assert proc.returncode == 130, text[-3000:]
    assert "run the same command again" in text and "Traceback" not in text, text[-3000:]
    decided = json.loads((out / "decisions.json").read_text()) if (out / "decisions.json").exists() else {}
    assert "sam" not in decided and "gnp" not in decided
    assert not (out / "ray" / "gnp").exists()
    if "standard" in decided:  # decided only from all its trials
        assert len(pd.read_parquet(out / "trials.parquet")) == 6
    assert not (out / "trials.parquet").exists() or "failed" not in set(pd.read_parquet(out / "trials.parquet")["status"])
    run_study(study, out, ray_head)
    _compare_to_reference(ref_out, out)


def _snapshot_running_trials(exp_dir: Path) -> dict[str, str]:
    """Trials that Tune's newest experiment snapshot holds as running with a checkpoint:
    {trial folder name: checkpoint folder name}."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}
    out = {}
    for trial_json, meta_json in data["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        meta = json.loads(meta_json) if isinstance(meta_json, str) else meta_json
        last = meta.get("last_result") or {}
        if trial.get("status") in ("RUNNING", "PENDING", "PAUSED") and last.get("checkpoint_dir_name") \
                and last.get("status") == "running":
            # trial folders are named by gnp_study.race_search.trial_dirname: "<stage>_alpha=..._seed=S_<tune id>"
            tdir = [d for d in exp_dir.iterdir() if d.is_dir() and d.name.endswith(f"_{trial['trial_id']}")]
            if tdir:
                out[tdir[0].name] = last["checkpoint_dir_name"]
    return out


def test_trial_whose_snapshot_checkpoint_is_gone_resumes_from_storage(reference, tmp_path, ray_head):
    """A restore point that names a deleted checkpoint (docs/recovery.md): a SIGKILLed driver can leave
    Tune's snapshot naming a checkpoint that Tune already deleted. Simulated exactly: the driver is killed while the snapshot holds running trials with a
    checkpoint, then that checkpoint is removed (one trial keeps a newer one under another name, one
    keeps none). The rerun trains those trials from what is on storage (or from scratch) and the study
    ends exactly as the uninterrupted one, with no trial recorded as failed."""
    study, ref_out, _, _ = reference
    out = tmp_path / "gone"
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", ray_head])
    exp = out / "ray" / "standard"
    deadline = time.time() + RUN_TIMEOUT_S
    running = {}
    while time.time() < deadline and proc.poll() is None:
        if exp.is_dir():
            running = _snapshot_running_trials(exp)
            if running:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the study ended before a snapshot held a running trial with a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert running, "no snapshot with a running trial and a checkpoint"
    for i, (tdir, ckpt) in enumerate(sorted(running.items())):
        folder = exp / tdir
        if i == 0 and (folder / ckpt).exists():
            # The named checkpoint gone, its content kept under the next folder index (a checkpoint that
            # reached storage after the last snapshot), and its epoch's line lost from Tune's result file:
            # the trial resumes from that folder, and its epochs come from its checkpoints' history (a
            # new checkpoint written into the same folder index would be deleted with the old one).
            epoch = json.loads((folder / ckpt / "history.json").read_text())[-1]["epoch"]
            nxt = folder / f"checkpoint_{int(ckpt.split('_')[-1]) + 1:06d}"
            if not nxt.exists():
                (folder / ckpt).rename(nxt)
            else:
                shutil.rmtree(folder / ckpt)
            lines = (folder / "result.json").read_text().splitlines()
            (folder / "result.json").write_text("".join(
                l + "\n" for l in lines if l.strip() and json.loads(l)["epoch"] < epoch))
        else:  # every checkpoint gone: trained again from scratch
            for c in folder.glob("checkpoint_*"):
                shutil.rmtree(c)
    text = run_study(study, out, ray_head)
    assert "Could not recover" not in text
    trials = pd.read_parquet(out / "trials.parquet")
    assert "failed" not in set(trials["status"])
    _compare_to_reference(ref_out, out)


def test_second_driver_on_the_same_folder_is_refused(tmp_path):
    study = write_study(tmp_path / "tiny.yaml")
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from filelock import FileLock; l=FileLock(sys.argv[1]); "
         "l.acquire(); print('held', flush=True); time.sleep(120)", str(out / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = cli(["run", "greedy", str(study), "--output", str(out)])
        text = finish(proc, timeout=120)
        assert proc.returncode == 2, text
        assert "another gnp-study driver" in text and "Traceback" not in text
        assert not (out / "ray").exists()
    finally:
        holder.kill()
        holder.wait()


def test_study_storage_given_as_uri(tmp_path, ray_head):
    """A study folder given as a storage URI (here file://; s3:// and gs:// take the same path through
    pyarrow and Ray's storage): Tune's trials and the study's tables both land under the URI."""
    study = write_study(tmp_path / "one.yaml", seeds=[0],
                        stages={"standard": {"space": {}}, "sam": {"r": [0.05]},
                                "gnp": {"alpha": [0.8], "figure2_r": [0.05]}})
    target = tmp_path / "bucket" / "one"
    run_study(study, f"file://{target}", ray_head)
    for name in ("trials.parquet", "epochs.parquet", "decisions.json", "results.md", "report.html"):
        assert (target / name).is_file(), name
    assert len(pd.read_parquet(target / "trials.parquet")) == 3
    assert list((target / "ray" / "gnp").glob("*/result.json"))
