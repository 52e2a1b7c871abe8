"""GPU packing: trials per hour with 1, 2, 4, 8 trials sharing one GPU.

The same N trials (one GNP configuration, N seeds) of a CIFAR study with the on-device loader
(``data.loader: device``: the data set lives on the GPU, crops and flips are drawn there) run as one Ray
Tune stage through the study's own code (:func:`gnp_study.runner.run_stage`: the trainable, checkpoints,
result collection), once per packing level k with ``resources.gpus_per_trial = 1/k``: Ray then runs up
to k trials at once on one GPU. Levels run one after the other in one process, on one local Ray.

Printed per level: the stage's wall time, trials per hour (N x 3600 / wall), the median epoch time of a
trial (how much each trial slows down when it shares the GPU), how many trial worker processes ran
(with ``reuse_actors``, one per trial running at the same time: the packing Ray actually did), and whether every trial ended.

Usage (a machine with one GPU; the CIFAR-10 ImageFolder copy unpacked somewhere)::

    python benchmarks/bench_gpu_packing.py --data-root /data/cifar10-jpeg --json out.json
    python benchmarks/bench_gpu_packing.py --data-root DIR --levels 1 2 4 8 --trials 16 --epochs 2 \\
        --train-subset 10000 --model resnet20

Without a GPU, ``--logical-gpus 1`` declares one GPU to the local Ray so that Ray packs trials as it
would on a GPU while each trial trains on the CPU (torch finds no CUDA device): a check of the packing
mechanics (how many trials run at once), not a measurement of a GPU; the output says so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def study(args, gpus_per_trial: float) -> dict:
    """The study dict of one packing level (a CIFAR ResNet study with the on-device loader)."""
    return {
        "name": "gpu_packing",
        "data": {"dataset": "cifar10", "root": args.data_root, "format": args.format, "augmentation": "basic",
                 "train_subset": args.train_subset, "test_subset": args.test_subset, "loader": "device",
                 "num_workers": 0},
        "model": {"name": args.model},
        "training": {"epochs": args.epochs, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                     "weight_decay": 5e-4, "lr_schedule": "cosine"},
        "seeds": list(range(args.trials)),
        "resources": {"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": gpus_per_trial},
        "checkpoint_every": args.epochs,
        "max_failures": 1,
    }


def worker_processes(exp_dir: Path) -> int:
    """How many trial worker processes a Tune experiment used (distinct ``pid`` in its trials' results):
    with ``reuse_actors`` Tune starts one per trial it runs at the same time, so this is the packing Ray
    actually did (at most the level, fewer only with fewer trials than the level)."""
    pids = set()
    for f in exp_dir.glob("*/result.json"):
        pids.update(json.loads(line)["pid"] for line in f.read_text().splitlines() if line.strip())
    return len(pids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-root", required=True,
                    help="CIFAR-10 folder: the ImageFolder copy (train/<class>/, test/<class>/) or torchvision's")
    ap.add_argument("--format", default="auto", choices=["auto", "python", "imagefolder"])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU (each >= 1)")
    ap.add_argument("--trials", type=int, default=16, help="trials per level")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--logical-gpus", type=int, default=0,
                    help="declare this many GPUs to a local Ray on a machine without one (checks the packing "
                         "only: trials train on the CPU)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    for name in ("trials", "epochs", "train_subset", "test_subset"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(k < 1 for k in a.levels):
        ap.error("--levels are trials per GPU: each must be at least 1")
    if a.cpus_per_trial <= 0 or a.logical_gpus < 0:
        ap.error("--cpus-per-trial must be > 0 and --logical-gpus >= 0")

    import torch

    from gnp_study.data import DataError, check_data
    from gnp_study.spec import SpecError, parse_spec

    if not torch.cuda.is_available() and not a.logical_gpus:
        ap.error("this machine has no CUDA GPU; run on a GPU machine, or add --logical-gpus 1 to check the "
                 "packing on the CPU")
    # Every level's study and the data folder are checked before Ray starts (no image is decoded here).
    a.data_root = str(Path(a.data_root).expanduser().resolve())
    try:
        specs = {k: parse_spec(study(a, 1.0 / k), check_names=True) for k in a.levels}
        d = specs[a.levels[0]].data
        check_data(d.dataset, d.root, d.format, train_subset=d.train_subset, test_subset=d.test_subset)
    except (SpecError, DataError, ValueError) as e:
        print(f"bench_gpu_packing.py: error: {e}", file=sys.stderr)
        return 2

    import ray

    from gnp_study import runner
    from gnp_study.protocol import TrialConfig

    if a.logical_gpus:
        runner._loopback_only()
        ray.init(address="local", _node_ip_address="127.0.0.1", num_gpus=a.logical_gpus, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    resources = runner.connect()
    real_gpu = torch.cuda.is_available() and not a.logical_gpus
    device = (torch.cuda.get_device_name(0) if real_gpu else
              f"none ({a.logical_gpus} logical GPU(s) declared: trials train on the CPU)")
    print(f"[bench] GPUs in Ray: {resources.get('GPU', 0):g}, device: {device}, CPUs: {resources.get('CPU', 0):g}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gnp-packing-") as tmp:
        for k in a.levels:
            spec = specs[k]
            runner.check_resources(spec, resources)
            plan = [TrialConfig("gnp", {"alpha": 0.8, "r": 0.05}, s) for s in spec.seeds]
            t0 = time.perf_counter()
            trials, epochs = runner.run_stage("gnp", plan, spec, str(Path(tmp) / "ray"), name=f"pack{k}")
            wall = time.perf_counter() - t0
            ended = int(trials["status"].isin(["completed", "diverged"]).sum())
            row = {"trials_per_gpu": k, "gpus_per_trial": 1.0 / k, "trials": len(plan), "ended": ended,
                   "wall_s": wall, "trials_per_hour": len(plan) * 3600.0 / wall,
                   "median_epoch_s": float(statistics.median(epochs["epoch_time_s"])) if len(epochs) else math.nan,
                   "worker_processes": worker_processes(Path(tmp) / "ray" / f"pack{k}")}
            rows.append(row)
            print(f"[bench] {k} per GPU: wall {wall:.1f} s, {row['trials_per_hour']:.0f} trials/h, median epoch "
                  f"{row['median_epoch_s']:.2f} s, {row['worker_processes']} worker processes, {ended}/{len(plan)} "
                  f"ended", flush=True)
    print("\n| trials per GPU | gpus_per_trial | wall s | trials / hour | median epoch s | worker processes |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['trials_per_gpu']} | {r['gpus_per_trial']:g} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
              f"{r['median_epoch_s']:.2f} | {r['worker_processes']} |")
    if not real_gpu:
        print("\nNo GPU: these figures check Ray's packing only; the trials trained on the CPU.")
    short = [r["trials_per_gpu"] for r in rows if r["ended"] < r["trials"]]
    if short:
        print(f"\nNot a throughput: at {short} trials per GPU some trials did not end (see the errors above).")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": platform.platform(), "device": device, "args": vars(a),
                                            "rows": rows}, indent=1))
    return 0 if all(r["ended"] == r["trials"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
