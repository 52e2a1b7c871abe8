"""A study folder written by the code before the module moves (993d56f) and SIGKILLed inside its racing
stage 3 resumes with today's code, through the CLI users run, and ends with the same trials, bit for bit,
as an uninterrupted run of the same study with today's code.

Ray Tune pickled that code's class and function paths into the folder (``tuner.pkl``, the experiment and
searcher state: the runner's stage callback and progress classes, the RaceSearcher and its races, the
TensorBoard logger, the trainable ``_trainable``); the folder was written at another path than the one it
is resumed from. The fixture, ``tests/data/old_study_folder.tar.gz``, is made by
``tests/make_old_study_folder.py`` (its docstring says how to remake it).

"Bit for bit" needs this machine to train as the one that made the fixture did, which a CPU of another
make need not (``tests/oldcode.py`` says why). So the test first has the old code (commit 993d56f,
``tests/oldcode.py``), not today's, train the fixture's stage-1 trials here: when every epoch's train loss
equals the fixture's, the stored folder is used; when not, the old code makes the folder anew on this
machine with the fixture's own procedure (``make_old_study_folder.attempt``), and that folder must pass the
same check. Either way today's code resumes a folder the old code wrote, at another path, and is compared
with today's uninterrupted run on the same machine."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

import make_old_study_folder
import oldcode
from make_old_study_folder import FOLDER, KILL_STAGE, RUN_DEADLINE_S, STUDY, TARBALL
from helpers import cli, finish

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

RUN_TIMEOUT_S = 400
#: Columns that hold timing or the node a trial ran on: the only ones allowed to differ.
TRIAL_IGNORE = ["wall_time_s", "node"]
EPOCH_IGNORE = ["epoch_time_s"]


def _result_rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _stage_trials(exp: Path) -> dict:
    """{study trial id: (trial folder, reported rows, epoch of its newest checkpoint or 0)} of a stage."""
    out = {}
    for params in exp.glob("*/params.json"):
        d = params.parent
        epochs = [max((r["epoch"] for r in json.loads((c / "history.json").read_text())), default=0)
                  for c in d.glob("checkpoint_*") if (c / "history.json").exists()]
        out[json.loads(params.read_text())["trial"]["trial_id"]] = (d, _result_rows(d), max(epochs, default=0))
    return out


def _table(folder: Path, name: str, ignore: list[str]) -> pd.DataFrame:
    return pd.read_parquet(folder / name).drop(columns=ignore).reset_index(drop=True)


def trains_as_here(folder: Path, code: Path, study: Path) -> bool:
    """Whether the old code ``code`` trains ``folder``'s stage-1 trials on this machine to the same train
    loss, every epoch, bit for bit, as ``folder`` holds."""
    trials = pd.read_parquet(folder / "trials.parquet")
    std = trials[trials["stage"] == "standard"]
    epochs = pd.read_parquet(folder / "epochs.parquet")
    got = oldcode.train_old(code, [(str(study), "standard", json.loads(c), int(s))
                                   for c, s in zip(std["config"], std["seed"])])
    for trial_id, trained in zip(std["trial_id"], got):
        stored = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")["train_loss"]
        if [float(x).hex() for x in stored] != trained["train_loss"]:
            return False
    return len(got) > 0


def old_folder_for_this_machine(tmp_path: Path, study: Path) -> Path:
    """The old code's interrupted folder, moved to ``tmp_path/moved``: the stored fixture when this machine
    trains as the one that made it, else one the old code makes here (up to 3 tries)."""
    code = oldcode.unpack(tmp_path / "oldcode")
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp_path / "stored", filter="data")
    if trains_as_here(tmp_path / "stored" / FOLDER, code, study):
        shutil.move(tmp_path / "stored" / FOLDER, tmp_path / "moved" / FOLDER)
        return tmp_path / "moved" / FOLDER
    for i in range(1, 4):
        out = tmp_path / "made" / f"try{i}" / FOLDER
        out.parent.mkdir(parents=True)
        if make_old_study_folder.attempt(code, study, out):
            make_old_study_folder.check(out)
            shutil.move(out, tmp_path / "moved" / FOLDER)
            break
    else:
        pytest.fail(f"the old code was not stopped inside stage {KILL_STAGE} in 3 tries: {tmp_path / 'made'}")
    assert trains_as_here(tmp_path / "moved" / FOLDER, code, study), "the folder just made fails its own check"
    return tmp_path / "moved" / FOLDER


@pytest.mark.timeout(3 * RUN_TIMEOUT_S + 3 * RUN_DEADLINE_S + 2 * oldcode.TRAIN_TIMEOUT_S)
def test_old_interrupted_folder_resumes_to_the_trials_of_an_uninterrupted_run(ray_head, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    # The old folder, at a path other than the one it was written at
    old = old_folder_for_this_machine(tmp_path, study)
    before_trials = pd.read_parquet(old / "trials.parquet")
    assert set(json.loads((old / "decisions.json").read_text())) == {"standard", "sam"}
    before = _stage_trials(old / "ray" / KILL_STAGE)
    ended = {t for t, (_, rows, _) in before.items() if rows and rows[-1].get("status") == "completed"}
    resumable = {t: e for t, (_, rows, e) in before.items() if t not in ended and e > 0}
    assert ended and resumable, "the fixture holds no ended or no checkpointed unfinished trial of the stage"

    # The uninterrupted run of the same study with today's code
    ref = tmp_path / "reference"
    proc = cli(["run", "greedy", str(study), "--output", str(ref), "--address", ray_head])
    text = finish(proc, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, text[-4000:]

    # The resume: the command a user runs again on the folder
    starts = tmp_path / "starts.log"
    proc = cli(["run", "greedy", str(study), "--output", str(old), "--address", ray_head],
               env={"GNP_STUDY_START_LOG": str(starts)})
    text = finish(proc, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, text[-4000:]
    assert "Traceback" not in text and "Failed to restore" not in text, text[-4000:]
    assert "stage standard" not in text and "stage sam" not in text, text[-4000:]  # decided: not run again
    assert f"stage {KILL_STAGE} (race)" in text, text[-4000:]

    # The study completed; no trial lost or repeated
    decisions = json.loads((old / "decisions.json").read_text())
    assert set(decisions) == {"standard", "sam", "gnp"}
    got = pd.read_parquet(old / "trials.parquet")
    assert not got["trial_id"].duplicated().any()
    assert set(got["trial_id"]) == set(pd.read_parquet(ref / "trials.parquet")["trial_id"])
    assert ended <= set(got["trial_id"])
    # the old stages' rows are the ones the old code wrote
    old_rows = got[got["stage"].isin(["standard", "sam"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(old_rows, before_trials.reset_index(drop=True))
    # a trial that had ended was not trained again: no new epoch in its result file, no start that trains
    after = _stage_trials(old / "ray" / KILL_STAGE)
    events = [json.loads(x) for x in starts.read_text().splitlines()] if starts.exists() else []
    for t in ended:
        rows = after[t][1]
        assert rows[: len(before[t][1])] == before[t][1], t
        assert all(r["epoch"] == before[t][1][-1]["epoch"] for r in rows[len(before[t][1]):]), f"{t} trained again"
        assert all(e["finished"] for e in events if e["trial_id"] == t and e["event"] == "start"), t
    # an unfinished trial resumed from the old code's checkpoint, not from its first epoch
    for t, epoch in resumable.items():
        first = [e for e in events if e["trial_id"] == t and e["event"] == "start"]
        assert first and first[0]["epoch"] == epoch, (t, epoch, first)

    # Bit for bit the uninterrupted run's trials, epochs and decisions (timing and node columns aside)
    pd.testing.assert_frame_equal(_table(old, "trials.parquet", TRIAL_IGNORE),
                                  _table(ref, "trials.parquet", TRIAL_IGNORE), check_exact=True)
    pd.testing.assert_frame_equal(_table(old, "epochs.parquet", EPOCH_IGNORE),
                                  _table(ref, "epochs.parquet", EPOCH_IGNORE), check_exact=True)
    assert decisions == json.loads((ref / "decisions.json").read_text())
