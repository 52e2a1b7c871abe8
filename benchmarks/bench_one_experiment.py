"""What one Tune experiment for the whole greedy protocol would save: a measurement.

A study runs its three stages as three Tune experiments (``runner.run_stage``), and each starts new trial
worker processes, which import Ray Tune, torch and ``torch._dynamo`` again before the stage's first trials
train. This benchmark runs the same study's grid stages as *one* Tune experiment, with a searcher
(:class:`ProtocolSearcher`) that suggests stage 1's trials, waits until they have ended, decides the stage
with the study's own ``protocol.decide``, then suggests the next stage's trials (``protocol.plan``), so
Tune's reused workers (``reuse_actors``) stay warm across stages. It alternates, over repetitions, with
the study as shipped (``python -m gnp_study.cli run greedy``) and prints both stage-phase wall times.

It is a prototype for measuring only: no resume after an interruption, no retries of trials lost before
their first report, no Optuna or racing stages, no tables or report. It checks its answer against the
shipped study: the same decision in every stage and every trial's best test error, best validation error
and test error at the best validation epoch equal bit for bit.

    python benchmarks/bench_one_experiment.py                                    # the 26-trial cut, 2 reps
    python benchmarks/bench_one_experiment.py --study search_spaces/digits.yaml --reps 2

Output: per repetition and as median [min, max]: the shipped study's three stage walls summed (from its
``run_info.json``) and the one experiment's ``Tuner.fit`` wall (the decisions included), and whole-process
walls of both (the shipped one also builds its report).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: what a trial's row for ``protocol.decide`` takes from its last report
ROW_METRICS = ("best_test_error", "best_val_error", "test_error_at_best_val")


def _searcher_class():
    from ray.tune.search import Searcher

    from gnp_study import protocol

    class ProtocolSearcher(Searcher):
        """Suggests the study's stages one after another inside one Tune experiment.

        Args:
            spec: the study (grid stages only).
            stages: the stages to run, in order (``protocol.STAGES``).

        ``decisions`` (stage -> ``protocol.decide`` output) and ``rows`` (one dict per ended trial, the
        columns ``protocol.decide`` reads) fill in as the stages end.
        """

        def __init__(self, spec, stages=protocol.STAGES):
            super().__init__(metric=None, mode=None)
            self.spec, self.stages = spec, list(stages)
            self.decisions: dict = {}
            self.rows: list[dict] = []
            self.stage_walls: dict = {}
            self._stage_i = -1
            self._queue: list = []
            self._live: dict[str, dict] = {}  # Tune trial id -> trial dict, suggested and not ended
            self._t0 = time.perf_counter()
            self._next_stage()

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def save(self, checkpoint_path: str) -> None:
            """Nothing: the prototype does not resume (Tune calls this with every experiment snapshot)."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing (see :meth:`save`)."""

        def _next_stage(self) -> None:
            self._stage_i += 1
            if self._stage_i < len(self.stages):
                stage = self.stages[self._stage_i]
                self._queue = list(protocol.plan(stage, self.spec, self.decisions))

        def _decide(self) -> None:
            import pandas as pd

            stage = self.stages[self._stage_i]
            trials = pd.DataFrame([r for r in self.rows if r["stage"] == stage])
            self.decisions[stage] = protocol.decide(stage, trials, self.spec, self.decisions)
            now = time.perf_counter()
            self.stage_walls[stage] = now - self._t0
            self._t0 = now
            self._next_stage()

        def suggest(self, trial_id: str):
            if self._stage_i >= len(self.stages):
                return Searcher.FINISHED
            if self._queue:
                trial = self._queue.pop(0).to_dict()
                self._live[trial_id] = trial
                return {"trial": trial}
            if self._live:
                return None  # the stage's last trials are running: the next stage needs its decision
            self._decide()
            return self.suggest(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            trial = self._live.pop(trial_id, None)
            if trial is None:
                return
            result = result or {}
            status = "failed" if error else result.get("status", "failed")
            row = {"trial_id": trial["trial_id"], "stage": trial["stage"], "config_key": trial["config_key"],
                   "alpha": float(trial["config"]["alpha"]), "r": float(trial["config"]["r"]),
                   "seed": int(trial["seed"]),
                   "status": status, "pid": result.get("pid")}
            row.update({m: float(result.get(m, math.nan)) if status == "completed" else math.nan
                        for m in ROW_METRICS})
            self.rows.append(row)

    return ProtocolSearcher


def _check_grid(spec) -> None:
    """Raise ValueError unless every stage of ``spec`` is a plain grid (what the prototype runs)."""
    from gnp_study import racing

    if spec.stages.standard.search != "grid" or any(racing.race_config(spec, s) for s in ("sam", "gnp")):
        raise ValueError("grid stages only (no Optuna search of stage 1, no racing stage)")


def child(study: str, out: Path) -> None:
    """Run the study's grid stages as one Tune experiment; write the decisions, rows and timings to
    ``out`` (JSON)."""
    t_start = time.perf_counter()
    from gnp_study import runner
    from gnp_study.spec import load_spec

    spec = load_spec(study)
    _check_grid(spec)
    runner.connect()
    searcher = _searcher_class()(spec)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tuner = runner._tuner("protocol", {}, spec, str(Path(tmp) / "ray"), [], search_alg=searcher,
                              num_samples=-1)
        tuner.fit()
        fit_wall = time.perf_counter() - t0
    import ray

    ray.shutdown()
    out.write_text(json.dumps({"fit_wall_s": fit_wall, "stage_walls_s": searcher.stage_walls,
                               "decisions": {k: v["config"] for k, v in searcher.decisions.items()},
                               "rows": searcher.rows, "process_wall_s": time.perf_counter() - t_start}))


def _shipped(study: str, work: Path, env: dict) -> dict:
    out = work / "study"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gnp_study.cli", "run", "greedy", study, "--output", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    import pandas as pd

    info = json.loads((out / "run_info.json").read_text())
    decisions = json.loads((out / "decisions.json").read_text())
    trials = pd.read_parquet(out / "trials.parquet")
    return {"process_wall_s": wall, "stages_wall_s": sum(s["wall_time_s"] for s in info["stages"].values()),
            "stage_walls_s": {k: s["wall_time_s"] for k, s in info["stages"].items()},
            "decisions": {k: v["config"] for k, v in decisions.items()}, "trials": trials}


def _one(study: str, work: Path, env: dict) -> dict:
    out = work / "one.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", study, "--out", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def _differing(shipped: dict, one: dict) -> tuple[int, int]:
    """(trials compared, trials whose ROW_METRICS differ in any bit; NaN equals NaN)."""
    by_id = {r["trial_id"]: r for r in one["rows"]}
    bad = 0
    for row in shipped["trials"].itertuples():
        mine = by_id.get(row.trial_id)
        if mine is None:
            bad += 1
            continue
        for m in ROW_METRICS:
            a, b = float(getattr(row, m)), float(mine[m])
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                bad += 1
                break
    return len(shipped["trials"]), bad + abs(len(one["rows"]) - len(shipped["trials"]))


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} [{min(xs):.1f}, {max(xs):.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--study", default=str(ROOT / "benchmarks" / "digits_cut.yaml"), help="study YAML")
    ap.add_argument("--reps", type=int, default=2, help="repetitions (each: the shipped study, then one "
                                                         "experiment, the order alternating)")
    ap.add_argument("--json", default=None, help="write every measurement to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, Path(args.out))
        return 0
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    from gnp_study.spec import load_spec

    try:
        _check_grid(load_spec(args.study))  # a bad study fails here, before anything runs
    except ValueError as e:
        ap.error(str(e))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            order = ["shipped", "one"] if rep % 2 == 0 else ["one", "shipped"]
            got = {}
            for kind in order:
                got[kind] = (_shipped if kind == "shipped" else _one)(args.study, Path(tmp), env)
            n, bad = _differing(got["shipped"], got["one"])
            same = got["shipped"]["decisions"] == got["one"]["decisions"]
            pids = {r["pid"] for r in got["one"]["rows"]}
            per_stage = {st: len({r["pid"] for r in got["one"]["rows"] if r["stage"] == st})
                         for st in got["one"]["stage_walls_s"]}
            row = {"rep": rep, "one_worker_processes": len(pids), "one_worker_processes_per_stage": per_stage, "shipped_stages_s": got["shipped"]["stages_wall_s"],
                   "one_fit_s": got["one"]["fit_wall_s"], "shipped_process_s": got["shipped"]["process_wall_s"],
                   "one_process_s": got["one"]["process_wall_s"], "trials": n, "differing": bad,
                   "same_decisions": same, "shipped_stage_walls_s": got["shipped"]["stage_walls_s"],
                   "one_stage_walls_s": got["one"]["stage_walls_s"]}
            rows.append(row)
            print(f"[bench] rep {rep}: stages shipped {row['shipped_stages_s']:.1f} s "
                  f"({', '.join(f'{k} {v:.1f}' for k, v in row['shipped_stage_walls_s'].items())}), one experiment "
                  f"{row['one_fit_s']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in row['one_stage_walls_s'].items())}); "
                  f"whole processes: shipped {row['shipped_process_s']:.1f} s, one {row['one_process_s']:.1f} s; same decisions: "
                  f"{same}; {bad} of {n} trials differ; one experiment used {len(pids)} worker processes (per stage: {per_stage})", flush=True)
    print(f"\nstudy {Path(args.study).name}; median [min, max] over {args.reps} repetition(s)\n")
    print("| run | trials | stages wall s | process wall s | same decisions | trials differing |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| three Tune experiments (as shipped) | {rows[0]['trials']} | "
          f"{_fmt([r['shipped_stages_s'] for r in rows])} | {_fmt([r['shipped_process_s'] for r in rows])} | - | - |")
    print(f"| one Tune experiment (prototype) | {rows[0]['trials']} | {_fmt([r['one_fit_s'] for r in rows])} | "
          f"{_fmt([r['one_process_s'] for r in rows])} | {sum(r['same_decisions'] for r in rows)} of {len(rows)} | "
          f"{max(r['differing'] for r in rows)} of {rows[0]['trials']} (most in one repetition) |")
    saved = [r["shipped_stages_s"] - r["one_fit_s"] for r in rows]
    print(f"\nstage-phase saving per repetition (shipped - one): {', '.join(f'{s:.1f}' for s in saved)} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"study": args.study, "runs": rows}, indent=1))
    return 0 if all(r["same_decisions"] and r["differing"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
