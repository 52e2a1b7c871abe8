"""Study throughput benchmark: how much of the machine a study spends on training.

Two measurements on one machine, repeated and interleaved so one noisy run cannot decide the result:

(a) the in-process limit: the study's own trials (read from the study's ``trials.parquet``) run with
    :func:`gnp_study.train.train_trial` directly, no Ray, in as many plain processes as cores; each
    process takes the next trial as soon as it is free (a claim counter under a file lock);
(b) the study: ``python -m gnp_study.cli run greedy STUDY --output DIR``, from one or more source trees
    or settings (``--variant label=path[,ENV=value...][,STUDY=file]``: A/B comparison of versions of the
    code, environment settings or study files on the same machine, alternated).

CPU time ("core-seconds") of a study is sampled (psutil, every 0.2 s) for every process the command
started, by process kind (driver, trial workers, raylet, GCS, agents, ...): the last sample of each
process counts, so at most its last 0.2 s is missed. (``getrusage(RUSAGE_CHILDREN)`` cannot count Ray's
workers: the raylet is a child subreaper of its own and kills them at the end, so they are never reaped
by anything that this process waits for.) The limit's CPU time is exact: its processes are plain
children, reaped here.

Figures printed per run and as median [min, max] over repetitions:
- ``limit core-s``: CPU time of the trials inside the limit's processes (``time.process_time`` around
  each ``train_trial``), summed;
- ``efficiency`` = limit core-s / (study wall x cores): the fraction of the machine the study spends on
  the work the trials themselves need;
- ``overhead/trial`` = (study core-s - limit core-s) / trials: orchestration CPU per trial;
- the study's wall time, and the limit's wall time (the best a study could do with this scheduling).

The limit also checks the study's numbers: every epoch's metrics of every trial must equal, bit for
bit, those of the same trial run in-process (training is deterministic on CPU).

Usage::

    python benchmarks/bench_study.py                                   # 26-trial cut, 3 repetitions
    python benchmarks/bench_study.py --study search_spaces/digits.yaml --reps 1
    python benchmarks/bench_study.py --variant base=/tmp/base --variant new=. --reps 3   # A/B two code trees
    python benchmarks/bench_study.py --variant a=. --variant b=.,RAY_worker_niceness=0   # A/B a setting
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import fcntl
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH_METRICS = ["train_loss", "train_error", "test_loss", "test_error", "best_test_error", "grad_norm", "lr"]


# ------------------------------------------------------------------------------------ process accounting
def become_subreaper() -> None:
    """Make orphaned descendants (Ray's daemons and workers) children of this process (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_all(deadline_s: float = 120.0) -> int:
    """Wait for every remaining child (reparented orphans included); returns how many were still alive at
    the deadline (their CPU time is then missing from ``RUSAGE_CHILDREN``)."""
    import psutil

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            time.sleep(0.1)
    return len(psutil.Process().children())


def children_cpu() -> float:
    """User + system CPU seconds of every terminated and reaped descendant so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _kind(proc, driver_pid: int) -> str:
    """A short name for what a process of a study is."""
    if proc.pid == driver_pid:
        return "driver"
    try:
        name, cmd = proc.name(), " ".join(proc.cmdline()[:4])
    except Exception:
        return "?"
    if "DashboardAgent" in name:
        return "dashboard agent"
    if "RuntimeEnvAgent" in name:
        return "runtime-env agent"
    if name.startswith("ray::") or cmd.startswith("ray::"):
        return "trial workers" if "IDLE" not in name + cmd else "idle workers"
    for key, kind in (("default_worker", "idle workers"), ("raylet", "raylet"), ("gcs_server", "gcs"),
                      ("dashboard/agent", "dashboard agent"), ("dashboard.py", "dashboard"),
                      ("runtime_env/agent", "runtime-env agent"), ("log_monitor", "log monitor"),
                      ("autoscaler", "autoscaler monitor"), ("monitor.py", "autoscaler monitor")):
        if key in name or key in cmd:
            return kind
    return name


class Sampler:
    """Samples the CPU time of every descendant every ``period`` seconds, by process kind."""

    def __init__(self, driver_pid: int, period: float = 0.2):
        self.driver_pid, self.period = driver_pid, period
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            for p in me.children(recursive=True):
                try:
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    kind, before = _kind(p, self.driver_pid), self.last.get(p.pid, ("?",))[0]
                    if kind == "?" or (kind == "idle workers" and before == "trial workers"):
                        kind = before  # a zombie (name unreadable), or an actor's worker between two tasks
                    self.last[p.pid] = (kind, cpu)
                except Exception:
                    pass
            self._stop.wait(self.period)

    def stop(self) -> dict[str, float]:
        """Stop sampling; CPU seconds by kind (last sample of each process)."""
        self._stop.set()
        self._thread.join()
        out: dict[str, float] = {}
        for kind, cpu in self.last.values():
            out[kind] = out.get(kind, 0.0) + cpu
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @property
    def n_processes(self) -> int:
        return len(self.last)


# ------------------------------------------------------------------------------------------ the study
def run_study(study: Path, out: Path, tree: Path, log: Path, extra_env: dict | None = None) -> dict:
    """Run the whole study from ``tree`` into the fresh folder ``out``; wall time, CPU time, breakdown."""
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PYTHONPATH=str(tree), **(extra_env or {}))
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "gnp_study.cli", "run", "greedy", str(study), "--output",
                                 str(out)], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=str(tree))
        sampler = Sampler(proc.pid)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    reap_all(30)
    kinds = sampler.stop()
    if rc != 0:
        raise SystemExit(f"study run failed (exit {rc}); see {log}")
    info = json.loads((out / "run_info.json").read_text())
    return {"wall_s": wall, "cpu_s": sum(kinds.values()), "processes": sampler.n_processes, "by_kind": kinds,
            "stages_wall_s": {k: v["wall_time_s"] for k, v in info["stages"].items()}}


# ------------------------------------------------------------------------------------------ the limit
def _claim(counter: Path) -> int:
    with open(counter, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        i = int(f.read() or 0)
        f.seek(0)
        f.write(str(i + 1))
        f.truncate()
        return i


def limit_worker(job: Path, counter: Path, out: Path) -> None:
    """One process of the limit: claim trials from ``job`` until none is left, train each in-process."""
    import torch  # noqa: F401  (imported before the first trial's clock starts, like a warm Ray worker)

    from gnp_study import train
    from gnp_study.spec import parse_spec
    from gnp_study.train import train_trial

    train.CACHE_DATA = True  # as in the study's Ray workers: the data built once per process

    spec_dict, trials = json.loads(job.read_text())
    spec = parse_spec(spec_dict, check_names=False)
    with open(out, "w") as f:
        while (i := _claim(counter)) < len(trials):
            epochs: list[dict] = []
            c0, w0 = time.process_time(), time.perf_counter()
            train_trial(spec, trials[i], lambda m, st: epochs.append({k: m[k] for k in EPOCH_METRICS + ["epoch",
                                                                                                  "epoch_time_s"]}))
            f.write(json.dumps({"trial_id": trials[i]["trial_id"], "cpu_s": time.process_time() - c0,
                                "wall_s": time.perf_counter() - w0, "epochs": epochs}) + "\n")
            f.flush()


def run_limit(study_dir: Path, cores: int, work: Path, tree: Path) -> dict:
    """Run the trials of the finished study in ``study_dir`` in-process, ``cores`` processes at once."""
    import pandas as pd

    from gnp_study.protocol import TrialConfig

    trials = pd.read_parquet(study_dir / "trials.parquet")
    plan = []
    for row in trials.itertuples():
        tc = TrialConfig(row.stage, json.loads(row.config), int(row.seed)).to_dict()
        assert tc["trial_id"] == row.trial_id, (tc["trial_id"], row.trial_id)
        plan.append(tc)
    import yaml

    spec = yaml.safe_load((study_dir / "study.yaml").read_text())
    work.mkdir(parents=True, exist_ok=True)
    job, counter = work / "job.json", work / "counter"
    job.write_text(json.dumps([spec, plan]))
    counter.write_text("0")
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(max(1, int(spec["resources"]["cpus_per_trial"]))))
    cpu0, t0 = children_cpu(), time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "_limit-worker", str(job), str(counter),
                               str(work / f"out{k}.jsonl")], env=env) for k in range(cores)]
    rcs = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    reap_all(10)
    if any(rcs):
        raise SystemExit(f"a limit worker failed: exit codes {rcs}")
    rows = [json.loads(line) for k in range(cores) for line in (work / f"out{k}.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "cpu_s": children_cpu() - cpu0, "trial_cpu_s": sum(r["cpu_s"] for r in rows),
            "trial_wall_s": sum(r["wall_s"] for r in rows), "n": len(rows), "rows": rows}


def compare(study_dir: Path, rows: list[dict]) -> tuple[int, int]:
    """(trials compared, trials whose per-epoch metrics differ in any bit) between the study's epochs
    table and the in-process runs."""
    import numpy as np
    import pandas as pd

    ep = pd.read_parquet(study_dir / "epochs.parquet")
    bad = 0
    for r in rows:
        mine = pd.DataFrame(r["epochs"]).sort_values("epoch")
        theirs = ep[ep["trial_id"] == r["trial_id"]].sort_values("epoch")
        same = len(mine) == len(theirs) and all(
            np.array_equal(mine[c].to_numpy(float), theirs[c].to_numpy(float), equal_nan=True) for c in EPOCH_METRICS)
        bad += not same
    return len(rows), bad


# ------------------------------------------------------------------------------------------- summary
def _fmt(values: list[float], spec: str = ".1f") -> str:
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.median(values), spec)} [{format(min(values), spec)}, {format(max(values), spec)}]"


def machine() -> str:
    """One line about the machine: CPU model, cores, load average at the time of the call."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}, {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=str(ROOT / "benchmarks" / "digits_cut.yaml"),
                    help="study YAML (default: the 26-trial digits cut)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (each: every tree's study and the limit)")
    ap.add_argument("--variant", action="append", default=[],
                    help="label=path[,ENV=value...][,STUDY=file]: a source tree, extra environment variables and "
                         "optionally another study file to run the study with (repeatable; default: this tree)")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="cores of the machine (limit processes)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--json", default=None, help="write every measurement to this JSON file")
    args = ap.parse_args(argv)

    become_subreaper()
    trees, variants = [], {}
    for v in args.variant:
        label, rest = v.split("=", 1)
        path, *pairs = rest.split(",")
        env = dict(p.split("=", 1) for p in pairs)
        variants[label] = (Path(path).resolve(), env, Path(env.pop("STUDY")).resolve() if "STUDY" in env else None)
        trees.append((label, Path(path).resolve()))
    trees = trees or [("this", ROOT)]
    work = Path(args.workdir or f"/tmp/bench-study-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    study = Path(args.study).resolve()
    print(f"[bench] {study.name}, {args.reps} repetition(s), variants {[t[0] for t in trees]}, {args.cores} cores")
    print(f"[bench] machine at start: {machine()}")
    runs = []
    for rep in range(args.reps):
        # Rotate the order (limit first on odd repetitions; trees rotated) so no variant always runs first.
        # (The first repetition runs the studies first: the limit needs a study's trial list.)
        order = [("study", t) for t in trees[rep % len(trees):] + trees[:rep % len(trees)]]
        order = order + [("limit", None)] if rep % 2 == 0 else [("limit", None)] + order
        limit = None
        rep_studies = {}
        for what, tree in order:
            if what == "study":
                label, path = tree
                out = work / f"rep{rep}-{label}"
                _, env, other = variants.get(label, (None, {}, None))
                res = run_study(other or study, out, path, work / f"rep{rep}-{label}.log", env)
                rep_studies[label] = (out, res)
                print(f"[bench] rep {rep} study[{label}]: wall {res['wall_s']:.1f} s, core-s {res['cpu_s']:.1f}, "
                      f"stages {json.dumps({k: round(v, 1) for k, v in res['stages_wall_s'].items()})}", flush=True)
            else:
                ref = rep_studies.get(trees[0][0], (None,))[0] or runs[-1]["study_dir"][trees[0][0]]
                limit = run_limit(Path(ref), args.cores, work / f"rep{rep}-limit", ROOT)
                print(f"[bench] rep {rep} limit: wall {limit['wall_s']:.1f} s, trial core-s {limit['trial_cpu_s']:.1f} "
                      f"({limit['n']} trials), process core-s {limit['cpu_s']:.1f}", flush=True)
        for label, (out, res) in rep_studies.items():
            n, bad = compare(out, limit["rows"])
            eff = limit["trial_cpu_s"] / (res["wall_s"] * args.cores)
            over = (res["cpu_s"] - limit["trial_cpu_s"]) / n
            res.update(efficiency=eff, overhead_per_trial=over, compared=n, differing=bad)
            print(f"[bench] rep {rep} [{label}]: efficiency {100 * eff:.0f}%, overhead/trial {over:.2f} core-s, "
                  f"{bad} of {n} trials differ from in-process; CPU by process kind (sampled): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in res["by_kind"].items() if v >= 0.5), flush=True)
        runs.append({"rep": rep, "limit": {k: v for k, v in limit.items() if k != "rows"},
                     "studies": {k: v[1] for k, v in rep_studies.items()},
                     "study_dir": {k: str(v[0]) for k, v in rep_studies.items()}})

    print(f"\n[bench] machine at end: {machine()}")
    print(f"study {study.name}; median [min, max] over {args.reps} repetition(s)\n")
    lim = [r["limit"] for r in runs]
    print("| run | trials | wall s | core-s | efficiency | overhead core-s/trial | trials differing |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| in-process limit ({args.cores} processes) | {lim[0]['n']} | {_fmt([x['wall_s'] for x in lim])} | "
          f"{_fmt([x['trial_cpu_s'] for x in lim])} | - | - | - |")
    for label, _ in trees:
        s = [r["studies"][label] for r in runs]
        print(f"| study [{label}] | {s[0]['compared']} | {_fmt([x['wall_s'] for x in s])} | {_fmt([x['cpu_s'] for x in s])} | "
              f"{_fmt([100 * x['efficiency'] for x in s], '.0f')}% | {_fmt([x['overhead_per_trial'] for x in s], '.2f')} | "
              f"{max(x['differing'] for x in s)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "study": str(study), "cores": args.cores,
                                               "date": _dt.datetime.now().isoformat(timespec="seconds"),
                                               "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_limit-worker":
        limit_worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
