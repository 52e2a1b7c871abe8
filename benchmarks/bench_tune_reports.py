"""What one ``tune.report`` costs a study: trials that report E times and do (almost) no work.

Each mode runs N trials x E reports through a fresh local Ray and Tune, the way the study's runner does
(function trainable, ``reuse_actors=True``, ``num_to_keep=1``, 1 CPU per trial), in a child process:

- ``ck``: a checkpoint with every report (the study's default ``checkpoint_every: 1``);
- ``nock``: a checkpoint with the last report only;
- ``buf``: as ``nock``, with Ray Tune's result buffering (``TUNE_RESULT_BUFFER_LENGTH`` /
  ``TUNE_RESULT_BUFFER_MIN_TIME_S``, what ``gnp_study.runner`` sets).

Modes alternate over repetitions (rotating order). Printed per mode: the experiment's wall time
(``Tuner.fit``), the driver's CPU time during it, and per trial: slot-seconds (wall x 2 CPUs / N) and
driver CPU. The work per report is ~1 ms, so everything measured is Tune's and Ray's cost.

    python benchmarks/bench_tune_reports.py --trials 40 --reports 15 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def child(mode: str, n: int, e: int) -> None:
    """Run one mode in this process and print one JSON line."""
    import tempfile
    import time
    from pathlib import Path

    if mode == "buf":
        os.environ["TUNE_RESULT_BUFFER_LENGTH"] = "1000"
        os.environ["TUNE_RESULT_BUFFER_MIN_TIME_S"] = "5"
    os.environ.update(RAY_AIR_NEW_OUTPUT="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    import ray
    from ray import tune

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")

    def fn(config):
        import torch

        for epoch in range(1, e + 1):
            ck = None
            if mode == "ck" or epoch == e:
                tmp = tempfile.mkdtemp()
                torch.save({"w": torch.zeros(24_000)}, Path(tmp) / "state.pt")  # the digits model's size
                ck = tune.Checkpoint.from_directory(tmp)
            tune.report({"epoch": epoch, **{f"m{i}": float(i) for i in range(14)}}, checkpoint=ck)

    store = tempfile.mkdtemp()
    t0, c0 = time.perf_counter(), time.process_time()
    res = tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space={"i": tune.grid_search(list(range(n)))},
                     tune_config=tune.TuneConfig(reuse_actors=True),
                     run_config=tune.RunConfig(storage_path=store, name="x", verbose=0,
                                               checkpoint_config=tune.CheckpointConfig(num_to_keep=1))).fit()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = sum(len(r.metrics_dataframe) for r in res)
    print(json.dumps({"mode": mode, "wall_s": wall, "driver_cpu_s": cpu, "rows": rows}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--reports", type=int, default=15)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--modes", default="ck,nock,buf")
    args = ap.parse_args()
    modes = args.modes.split(",")
    got: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.reps):
        for m in modes[rep % len(modes):] + modes[:rep % len(modes)]:
            out = subprocess.run([sys.executable, __file__, "_child", m, str(args.trials), str(args.reports)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            assert r["rows"] == args.trials * args.reports, r  # every report reached the result files
            got[m].append(r)
            print(f"[bench] rep {rep} {m}: wall {r['wall_s']:.1f} s, driver CPU {r['driver_cpu_s']:.1f} s", flush=True)
    print(f"\n{args.trials} trials x {args.reports} reports, load average at end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; median [min, max] over {args.reps} repetition(s)\n")
    print("| mode | wall s | slot-s / trial | driver CPU s / trial |")
    print("| --- | ---: | ---: | ---: |")
    for m in modes:
        w = [r["wall_s"] for r in got[m]]
        d = [r["driver_cpu_s"] / args.trials for r in got[m]]
        s = [2 * x / args.trials for x in w]
        f = (lambda v, p=".2f": f"{statistics.median(v):{p}} [{min(v):{p}}, {max(v):{p}}]")
        print(f"| {m} | {f(w, '.1f')} | {f(s)} | {f(d)} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
