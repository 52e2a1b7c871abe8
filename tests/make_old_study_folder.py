"""Make ``tests/data/old_study_folder.tar.gz``: a study folder written by the code before the module moves,
interrupted inside a racing stage, for ``tests/test_resume_old_folder.py``.

Ray Tune pickles class and function paths into a study folder (``tuner.pkl``, the experiment and searcher
state: the runner's stage callback and progress classes, the RaceSearcher and its races, the TensorBoard
logger, the trainable named ``_trainable``). The modules moved in 0467609, 043eb60, 198f995 and cead039;
this fixture is the folder such an older version left, so that a test can show it resumes with today's code.

What it does:

1. runs :data:`STUDY` (digits, 3 epochs, 3 seeds; stages 2 and 3 race with ``lookahead: 0``, so the trials a
   race runs do not depend on timing) with the code of commit :data:`OLD_COMMIT` (the commit before the
   moves), through its CLI (``python -m gnp_study run greedy STUDY --output FOLDER``, a local Ray started by
   the driver);
2. SIGKILLs the driver's process group (the driver and its local Ray) inside stage 3 (``gnp``), once Tune's
   newest experiment state on storage holds at least one ended trial of the stage and at least one that has
   not ended, and one of those unfinished trials has a checkpoint (so the resume restores an old-format
   checkpoint mid-trial). Every wait polls a condition with a deadline; a stage that ends before the moment
   came is tried again (``--attempts``);
3. checks the folder (stages 1 and 2 decided, stage 3 not; its state readable) and stores it as a tarball
   whose one top-level folder is ``oldfolder/`` (paths inside are relative: extract it anywhere; Tune's state
   holds the absolute paths of the folder it was written to, and the runner restores with
   ``Tuner.restore(<folder>/ray/<stage>)``, which takes the experiment from where it lies now). Nothing is
   stripped: Tune's own files, the checkpoints, the TensorBoard event files and the killed driver's
   ``.lock`` (a lock no process holds) stay as the old code left them.

Rerun it (a few minutes on 2 cores; it needs the old code checked out, and overwrites the tarball)::

    git worktree add /tmp/oldcode 993d56f
    PYTHONPATH=. .venv/bin/python tests/make_old_study_folder.py --oldcode /tmp/oldcode

The driver runs with ``PYTHONPATH=<oldcode>`` and ``cwd=<oldcode>``, so the old package is imported, not
this checkout's. Exit status 0 when the tarball was written.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

import numerics
from oldcode import old_env as oldcode_env

numerics.pin()  # the old driver and its Ray workers inherit the kernels the tests compute with (tests/numerics.py)

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "993d56f"
TARBALL = ROOT / "tests" / "data" / "old_study_folder.tar.gz"
#: Name of the study folder inside the tarball.
FOLDER = "oldfolder"
#: The stage the driver is killed in.
KILL_STAGE = "gnp"
RUN_DEADLINE_S = 600

#: The study of the fixture; the test resumes it with this same file. 3 + 4 + 6 trials (stage 2's race
#: eliminates r=0.1 after its first block of 2 seeds; stage 3 races alpha 0.5 and 0.8 at the chosen r).
STUDY = {
    "name": "oldfolder",
    "description": "a tiny racing study written by the code before the module moves (993d56f)",
    "data": {"dataset": "digits", "augmentation": "none", "train_subset": 600},
    "model": {"name": "small_cnn"},
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "stages": {
        "standard": {"space": {"lr": [0.05]}},
        "sam": {"r": [0.05, 0.1], "race": {"first_block": 2, "lookahead": 0}},
        "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [], "figure2_r": [0.05],
                "race": {"first_block": 2, "lookahead": 0}},
    },
    "seeds": [0, 1, 2],
    "resources": {"cpus_per_trial": 1},
    "max_failures": 1,
}


def log(msg: str) -> None:
    print(f"[make-old-folder {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tune_trials(exp: Path) -> dict:
    """{study trial id: Tune status} from the newest readable experiment state of a stage's folder."""
    for path in sorted(glob.glob(str(exp / "experiment_state-*.json")), reverse=True):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue  # being written
        out = {}
        for trial_json, _ in data.get("trial_data", []):
            t = json.loads(trial_json)
            out[t["config"]["trial"]["trial_id"]] = t["status"]
        return out
    return {}


def trial_dirs(exp: Path) -> dict:
    """{study trial id: its trial folder} of a stage's folder (from each trial's params.json)."""
    out = {}
    for params in exp.glob("*/params.json"):
        try:
            out[json.loads(params.read_text())["trial"]["trial_id"]] = params.parent
        except (OSError, ValueError, KeyError):
            pass
    return out


def moment(out: Path) -> bool:
    """The kill moment: Tune's state of the stage holds an ended trial and an unfinished one with a
    checkpoint on storage."""
    exp = out / "ray" / KILL_STAGE
    state = tune_trials(exp)
    ended = [t for t, s in state.items() if s == "TERMINATED"]
    unfinished = [t for t, s in state.items() if s != "TERMINATED"]
    dirs = trial_dirs(exp)
    with_ckpt = [t for t in unfinished if t in dirs and list(dirs[t].glob("checkpoint_*/state.pt"))]
    return bool(ended and with_ckpt)


def wait_group_gone(pgid: int, deadline_s: float = 120) -> None:
    import psutil

    deadline = time.time() + deadline_s
    while time.time() < deadline:
        left = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == pgid:
                    left.append(p)
            except (ProcessLookupError, PermissionError):
                pass
        if not left:
            return
        time.sleep(0.2)
    raise RuntimeError(f"processes of group {pgid} still alive {deadline_s}s after the kill")


def attempt(oldcode: Path, study: Path, out: Path) -> bool:
    """One run of the old code, killed at :func:`moment`; True when it was."""
    env = dict(oldcode_env(oldcode), RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    logf = out.with_suffix(".log")
    with open(logf, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "gnp_study", "run", "greedy", str(study), "--output",
                                 str(out)], cwd=oldcode, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + RUN_DEADLINE_S
    killed = False
    while proc.poll() is None and time.time() < deadline:
        if moment(out):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    if proc.poll() is None and not killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_group_gone(proc.pid)
    if not killed:
        log(f"the run ended (or timed out) before the moment; its output: {logf}")
    return killed


def check(out: Path) -> dict:
    """What the fixture must hold; returns a summary of it."""
    decisions = json.loads((out / "decisions.json").read_text())
    assert set(decisions) == {"standard", "sam"}, sorted(decisions)
    state = tune_trials(out / "ray" / KILL_STAGE)
    assert any(s == "TERMINATED" for s in state.values()) and any(s != "TERMINATED" for s in state.values())
    assert (out / "ray" / KILL_STAGE / "tuner.pkl").exists()
    assert glob.glob(str(out / "ray" / KILL_STAGE / "searcher-state-*.pkl")), "no race searcher state saved"
    return {"decided": sorted(decisions), "stage_state": state}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oldcode", default="/tmp/oldcode", help=f"a checkout of commit {OLD_COMMIT}")
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--output", default=str(TARBALL))
    args = ap.parse_args(argv)
    oldcode = Path(args.oldcode).resolve()
    head = subprocess.run(["git", "-C", str(oldcode), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode or not head.stdout.startswith(OLD_COMMIT):
        print(f"{oldcode} is not a checkout of {OLD_COMMIT}: git worktree add {oldcode} {OLD_COMMIT}",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gnp-oldfolder-"))
    study = work / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    for i in range(1, args.attempts + 1):
        out = work / f"try{i}" / FOLDER
        out.parent.mkdir()
        log(f"attempt {i}: old code {oldcode} -> {out}")
        if attempt(oldcode, study, out):
            summary = check(out)
            log(f"killed inside stage {KILL_STAGE}: {summary}")
            dest = Path(args.output)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(dest, "w:gz") as tar:
                tar.add(out, arcname=FOLDER)
            log(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB)")
            return 0
    log(f"no attempt was killed at the moment; see the logs under {work}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
