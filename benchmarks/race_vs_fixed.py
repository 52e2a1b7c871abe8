"""Side by side: a study run with the fixed protocol and the same study with racing stages 2 and 3.

Runs ``gnp-study run greedy`` twice through the CLI (same seeds list, same everything except
``stages.sam.race`` and ``stages.gnp.race``), then prints one Markdown table: trials run and trial-hours
of stages 2-3, the chosen r and alpha, and whether the race's choice lies in the fixed run's set of
candidates not distinguishable from its winner (``decisions.json`` ``indistinguishable`` plus the winner).

Usage::

    python benchmarks/race_vs_fixed.py digits --out /tmp/rvf
    python benchmarks/race_vs_fixed.py digits_label_noise --out /tmp/rvf --epochs 8   # a reduced study

``--epochs`` / ``--seeds`` shrink the study (say so wherever the numbers are quoted); ``--race`` sets the
race block (YAML flow mapping, default ``{first_block: 2, block: 1, level: 0.05, correction: holm}``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gnp_study.spec import find_study  # noqa: E402

DEFAULT_RACE = {"first_block": 2, "block": 1, "level": 0.05, "correction": "holm"}


def _run(study: Path, out: Path) -> float:
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "gnp_study", "run", "greedy", str(study), "--output", str(out)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"run of {study} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return time.time() - t0


def _facts(out: Path) -> dict:
    trials = pd.read_parquet(out / "trials.parquet")
    dec = json.loads((out / "decisions.json").read_text())
    t23 = trials[trials["stage"].isin(["sam", "gnp"])]
    return {
        "trials_23": int(len(t23)),
        "trials_all": int(len(trials)),
        "trial_hours_23": float((t23["wall_time_s"] * t23["cpus"]).sum()) / 3600,
        "trial_hours_all": float((trials["wall_time_s"] * trials["cpus"]).sum()) / 3600,
        "r": dec["sam"]["r"], "gnp_r": dec["gnp"]["r"], "alpha": dec["gnp"]["alpha"],
        "sam_key": dec["sam"]["config_key"], "gnp_key": dec["gnp"]["config_key"],
        "sam_tied": set(dec["sam"].get("indistinguishable") or []) | {dec["sam"]["config_key"]},
        "gnp_tied": set(dec["gnp"].get("indistinguishable") or []) | {dec["gnp"]["config_key"]},
        "gnp_mean": dec["gnp"]["mean"], "gnp_n": dec["gnp"]["n"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="study name in search_spaces/ or a YAML file")
    ap.add_argument("--out", required=True, help="folder for the two study folders and the study files")
    ap.add_argument("--epochs", type=int, help="override training.epochs (a reduced study)")
    ap.add_argument("--seeds", type=int, nargs="+", help="override the seeds list")
    ap.add_argument("--race", default=None, help="race block as YAML (default: %s)" % DEFAULT_RACE)
    ap.add_argument("--skip-run", action="store_true",
                    help="only read the two study folders already in --out (e.g. runs made in parallel)")
    args = ap.parse_args(argv)
    raw = yaml.safe_load(find_study(args.study).read_text())
    changes = []
    if args.epochs:
        raw["training"]["epochs"] = args.epochs
        changes.append(f"epochs {args.epochs}")
    if args.seeds:
        raw["seeds"] = args.seeds
        changes.append(f"seeds {args.seeds}")
    race = yaml.safe_load(args.race) if args.race else DEFAULT_RACE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixed_raw = json.loads(json.dumps(raw))
    race_raw = json.loads(json.dumps(raw))
    race_raw["stages"]["sam"]["race"] = dict(race)
    race_raw["stages"]["gnp"]["race"] = dict(race)
    rows = {}
    for name, spec in (("fixed", fixed_raw), ("race", race_raw)):
        path = out / f"{raw['name']}_{name}.yaml"
        folder = out / f"{raw['name']}_{name}"
        if not args.skip_run:
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            _run(path, folder)
        # the study's own wall time (run_info.json), also for runs made elsewhere
        wall = float(json.loads((folder / "run_info.json").read_text()).get("wall_time_s") or 0.0)
        rows[name] = dict(_facts(folder), wall_s=wall)
    f, r = rows["fixed"], rows["race"]
    saved = 100 * (1 - r["trials_23"] / f["trials_23"])
    in_sam = r["sam_key"] in f["sam_tied"]
    in_gnp = r["gnp_key"] in f["gnp_tied"]
    what = raw["name"] + (f" (reduced: {', '.join(changes)})" if changes else "")
    print(f"\n{what}, seeds {raw['seeds']}, race {race}\n")
    print("| run | trials, stages 2-3 | trials, all | trial-hours, stages 2-3 | trial-hours, all | wall (s) | "
          "chosen r | chosen alpha | GNP mean (n seeds) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, x in rows.items():
        print(f"| {name} | {x['trials_23']} | {x['trials_all']} | {x['trial_hours_23']:.3f} | "
              f"{x['trial_hours_all']:.3f} | {x['wall_s']:.0f} | {x['r']:g} | {x['alpha']:g} | "
              f"{x['gnp_mean']:.2f} ({x['gnp_n']}) |")
    print(f"\nrace: {saved:.0f}% fewer trials in stages 2-3; race's r in the fixed run's set tied with its "
          f"winner: {'yes' if in_sam else 'no'} ({len(f['sam_tied'])} r values in the set); race's (r, alpha) in "
          f"the fixed run's GNP set: {'yes' if in_gnp else 'no'} ({len(f['gnp_tied'])} alphas in the set)")
    (out / "summary.json").write_text(json.dumps(
        {k: {kk: (sorted(vv) if isinstance(vv, set) else vv) for kk, vv in v.items()} for k, v in rows.items()},
        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
