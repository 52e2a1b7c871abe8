"""Kill soak: a small study interrupted at randomised moments must end exactly as an uninterrupted run.

Run by hand (it prints its seed and every interruption, so a failure can be replayed)::

    PYTHONPATH=. .venv/bin/python tests/kill_soak.py --points 30 --seed 7

What it does:

1. runs a small digits study once without interruption (the reference);
2. runs the same study in a new folder and interrupts it at ``--points`` moments drawn from ``--seed``:
   SIGKILL of the driver, SIGINT of the driver, a terminal's Ctrl-C (SIGINT to the driver's process group),
   SIGKILL of a trial worker; in stages 1-3; after k of a stage's trials ended, at the instant its last
   trial reported (its "N/N trials done" line), once the stage is decided, or at its first epoch report.
   After each interruption it reruns the same command, until a run ends by itself; then a new folder
   takes the remaining points;
3. checks every folder against the reference: trials.parquet, epochs.parquet and decisions.json equal
   (bit for bit; timing and node columns left out), no finished trial trained again (the trials'
   start/end log, ``GNP_STUDY_START_LOG``), and after every interrupted run each decided stage equals
   the reference's (so no stage was decided while one of its trials was unfinished); a Ctrl-C run exits
   with status 130.

``--checkpoint-every N`` / ``--report-every N`` run the interrupted study with that cadence (the reference
keeps the defaults, a checkpoint and a report every epoch): its tables must still equal the reference's.

Every wait is on a condition (a progress line, a file, a process) with a deadline; none assumes a speed.
Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("standard", "sam", "gnp")
KINDS = ("sigkill", "sigint", "ctrl-c", "kill-worker")
WHEN = ("done", "last", "decided", "first-epoch")
RUN_DEADLINE_S = 900  # one run of the command, interrupted or not
TRIGGER_DEADLINE_S = 600

#: A small digits study: 3 epochs, 2 seeds, 4-6 trials per stage, one configuration that diverges.
SOAK_STUDY = {
    "name": "soak",
    "description": "kill soak",
    "data": {"dataset": "digits", "augmentation": "none", "train_subset": 400},
    "model": {"name": "small_cnn"},
    "training": {"epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "stages": {
        "standard": {"space": {"lr": [0.05, 0.1, 1.0e4]}},
        "sam": {"r": [0.05, 0.1]},
        "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [], "figure2_r": [0.05]},
    },
    "seeds": [0, 1],
    "resources": {"cpus_per_trial": 1},
    "max_failures": 3,
}
TRIAL_IGNORE = ["wall_time_s", "node"]
EPOCH_IGNORE = ["epoch_time_s"]


@dataclass
class Point:
    """One interruption: what, in which stage, and when."""

    kind: str
    stage: str
    when: str
    k: int = 0  # for when == "done": after k trials of the stage ended

    def __str__(self) -> str:
        at = f"after {self.k} trials done" if self.when == "done" else self.when
        return f"{self.kind} in stage {self.stage} ({at})"


@dataclass
class Run:
    """One run of the command and its output lines (read by a thread, queued for the soak)."""

    proc: subprocess.Popen
    lines: "queue.Queue[str | None]" = field(default_factory=queue.Queue)
    text: list = field(default_factory=list)

    def pump(self) -> None:
        for line in self.proc.stdout:
            self.text.append(line)
            self.lines.put(line)
        self.lines.put(None)


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start(study: Path, out: Path, env: dict) -> Run:
    proc = subprocess.Popen([sys.executable, "-m", "gnp_study", "run", "greedy", str(study), "--output", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    run = Run(proc)
    threading.Thread(target=run.pump, daemon=True).start()
    return run


def wait_exit(run: Run, deadline_s: float = RUN_DEADLINE_S) -> int:
    try:
        return run.proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
        raise AssertionError(f"the run did not end within {deadline_s}s:\n{''.join(run.text[-40:])}")


def _decisions(out: Path) -> dict:
    try:
        return json.loads((out / "decisions.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _progress(line: str, stage: str) -> tuple[int, int] | None:
    """(done, total) of a progress line of ``stage``."""
    head = f"[gnp-study] stage {stage}: "
    if not line.startswith(head):
        return None
    done, _, rest = line[len(head):].partition("/")
    return int(done), int(rest.split()[0])


def _trial_workers(pid: int) -> list:
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def wait_trigger(run: Run, out: Path, point: Point) -> bool:
    """Wait until the moment of ``point`` (True) or the run's end (False)."""
    deadline = time.time() + TRIGGER_DEADLINE_S
    while time.time() < deadline:
        if point.when == "decided" and point.stage in _decisions(out):
            return True
        if point.when == "first-epoch" and (out / "ray" / point.stage).is_dir():
            if any(f.stat().st_size > 0 for f in (out / "ray" / point.stage).glob("*/result.json")):
                return True
        try:
            line = run.lines.get(timeout=0.05)
        except queue.Empty:
            continue
        if line is None:
            return False
        prog = _progress(line, point.stage)
        if prog and point.when == "done" and prog[0] >= point.k:
            return True
        if prog and point.when == "last" and prog[0] == prog[1]:
            return True
    raise AssertionError(f"no trigger for {point} within {TRIGGER_DEADLINE_S}s")


def wait_group_gone(pgid: int, deadline_s: float = 120) -> None:
    """Wait until no process of the run's process group (driver, Ray, workers) is left; then SIGKILL any."""
    import psutil

    deadline = time.time() + deadline_s
    while time.time() < deadline:
        left = [p for p in psutil.process_iter() if _pgid(p) == pgid]
        if not left:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pgid(p) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def deliver(run: Run, point: Point, rng: random.Random) -> bool:
    """Interrupt; False when there was nothing to interrupt (no trial worker alive)."""
    pid = run.proc.pid
    if point.kind == "sigkill":
        os.kill(pid, signal.SIGKILL)  # the driver alone; Ray's processes follow it (fate sharing)
    elif point.kind == "sigint":
        os.kill(pid, signal.SIGINT)
    elif point.kind == "ctrl-c":
        os.killpg(pid, signal.SIGINT)
    else:
        deadline = time.time() + 30
        while time.time() < deadline and run.proc.poll() is None:
            workers = _trial_workers(pid)
            if workers:
                rng.choice(sorted(workers, key=lambda p: p.pid)).kill()
                return True
            time.sleep(0.05)
        return False
    return True


def check_decided_stages(out: Path, ref: Path) -> None:
    """Each stage in decisions.json equals the reference's, and its rows are the reference's."""
    ref_d, got_d = _decisions(ref), _decisions(out)
    if not got_d:
        return
    for stage, dec in got_d.items():
        assert dec == ref_d[stage], f"stage {stage} decided differently from the reference"
    compare_tables(out, ref, stages=list(got_d))


def compare_tables(out: Path, ref: Path, stages: list[str] | None = None) -> None:
    for name, ignore in (("trials.parquet", TRIAL_IGNORE), ("epochs.parquet", EPOCH_IGNORE)):
        a = pd.read_parquet(ref / name)
        b = pd.read_parquet(out / name)
        if stages is not None:
            a, b = a[a["stage"].isin(stages)], b[b["stage"].isin(stages)]
        a = a.drop(columns=ignore).reset_index(drop=True)
        b = b.drop(columns=ignore).reset_index(drop=True)
        if not a.equals(b):
            diff = pd.concat([a, b], axis=1, keys=["reference", "soak"])
            raise AssertionError(f"{name} differs from the reference:\n{diff.to_string()[:4000]}")


def check_no_retraining(start_log: Path) -> None:
    """After a trial's "end", every later start of it resumes its last checkpoint (trains nothing)."""
    ended = set()
    for line in start_log.read_text().splitlines():
        ev = json.loads(line)
        if ev["event"] == "end":
            ended.add(ev["trial_id"])
        elif ev["trial_id"] in ended and not ev["finished"]:
            raise AssertionError(f"trial {ev['trial_id']} ended, then trained again from epoch {ev['epoch']}")


def draw(rng: random.Random, stage_sizes: dict, from_stage: int) -> Point:
    stage = STAGES[rng.randrange(from_stage, len(STAGES))]
    kind = rng.choice(KINDS)
    when = rng.choice(WHEN)
    if kind == "kill-worker" and when in ("last", "decided"):
        when = "done"  # a worker is killed while trials run
    k = rng.randrange(0, max(1, stage_sizes.get(stage, 4) - 1)) if when == "done" else 0
    return Point(kind, stage, when, k)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=30, help="interruptions to deliver in all")
    ap.add_argument("--seed", type=int, default=None, help="seed of the interruption moments (default: random)")
    ap.add_argument("--workdir", default=None, help="folder for the study folders (default: a temporary one)")
    ap.add_argument("--per-folder", type=int, default=6, help="at most this many interruptions per study folder")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="checkpoint_every of the interrupted runs (the reference keeps the default, 1)")
    ap.add_argument("--report-every", type=int, default=None,
                    help="report_every of the interrupted runs (the reference keeps the default, 1)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gnp-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"seed {seed}, {args.points} points, work folder {work}")
    ref_study = work / "reference.yaml"
    ref_study.write_text(yaml.safe_dump(SOAK_STUDY))
    # The interrupted runs may checkpoint and report less often than the reference: every table must
    # still equal the reference's bit for bit (the cadence changes no trial's numbers).
    cadence = {k: v for k, v in (("checkpoint_every", args.checkpoint_every),
                                 ("report_every", args.report_every)) if v is not None}
    study = work / "soak.yaml"
    study.write_text(yaml.safe_dump(dict(SOAK_STUDY, **cadence)))
    if cadence:
        log(f"interrupted runs with {cadence}")
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    base_env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    t0 = time.time()

    ref = work / "reference"
    ref_log = work / "reference-starts.log"
    run = start(ref_study, ref, dict(base_env, GNP_STUDY_START_LOG=str(ref_log)))
    rc = wait_exit(run)
    wait_group_gone(run.proc.pid)
    assert rc == 0, f"the reference run failed ({rc}):\n{''.join(run.text[-40:])}"
    ref_trials = pd.read_parquet(ref / "trials.parquet")
    sizes = ref_trials.groupby("stage").size().to_dict()
    log(f"reference done in {time.time() - t0:.0f}s: {dict(sizes)}")

    delivered, folders, failures = 0, 0, []
    while delivered < args.points:
        folders += 1
        out = work / f"soak-{folders}"
        starts = work / f"soak-{folders}-starts.log"
        env = dict(base_env, GNP_STUDY_START_LOG=str(starts))
        budget = min(args.per_folder, args.points - delivered)
        runs = 0
        try:
            while True:
                runs += 1
                run = start(study, out, env)
                interrupted = False
                while budget > 0 and run.proc.poll() is None:
                    decided = _decisions(out)
                    first = min([i for i, s in enumerate(STAGES) if s not in decided], default=len(STAGES))
                    if first == len(STAGES):
                        break
                    point = draw(rng, sizes, first)
                    if not wait_trigger(run, out, point):
                        log(f"  folder {folders} run {runs}: ended before {point}; not counted")
                        break
                    if not deliver(run, point, rng):
                        log(f"  folder {folders} run {runs}: no trial worker for {point}; not counted")
                        continue
                    delivered += 1
                    budget -= 1
                    mark = len(run.text)  # output before the interruption (a killed worker's errors) aside
                    log(f"  point {delivered}: folder {folders} run {runs}: {point}")
                    if point.kind != "kill-worker":
                        interrupted = True
                        rc = wait_exit(run)
                        wait_group_gone(run.proc.pid)
                        text = "".join(run.text[mark:])
                        if point.kind in ("sigint", "ctrl-c"):
                            ended = len(_decisions(out)) == len(STAGES) and (out / "report.html").exists()
                            # 0 only when the Ctrl-C came after the study had ended; -2 (killed by SIGINT,
                            # 130 in a shell) when it came while Python was still starting, before any of
                            # the study's code ran
                            early = rc == -signal.SIGINT and not text.strip()
                            assert rc == 130 or (rc == 0 and ended) or early, \
                                f"Ctrl-C run exited {rc}:\n{text[-3000:]}"
                            assert "Traceback" not in text, text[-3000:]
                        check_decided_stages(out, ref)
                        break
                if not interrupted:
                    rc = wait_exit(run)
                    wait_group_gone(run.proc.pid)
                    text = "".join(run.text)
                    assert rc == 0, f"run {runs} exited {rc}:\n{text[-3000:]}"
                    assert "Failed to fetch metrics" not in text, text[-3000:]
                    break
            compare_tables(out, ref)
            assert _decisions(out) == _decisions(ref), "decisions.json differs from the reference"
            check_no_retraining(starts)
            log(f"folder {folders}: PASS after {runs} runs")
        except AssertionError as e:
            failures.append((folders, str(e)))
            log(f"folder {folders}: FAIL: {e}")
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
    total = time.time() - t0
    log(f"seed {seed}: {delivered} points in {folders} study folders, {folders - len(failures)} passed, "
        f"{len(failures)} failed, {total:.0f}s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
