"""Writes ``tests/data/reference_trials.json``: a few trials of the shipped digits studies trained in this
process, with their metrics (AVX2 kernels: ``tests/numerics.py``), for ``tests/test_reference_trials.py``: it trains the same trials with today's and the old code on the
machine it runs on and compares those (``tests/oldcode.py``); the metrics written here are a record of
the machine that made them.

Run it with the code a later change must not alter (the file records the commit), from the repository root:

    python tests/make_reference_trials.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numerics  # noqa: E402

numerics.pin()  # the kernels the tests compute with (tests/numerics.py)


from gnp_study.protocol import TrialConfig  # noqa: E402
from gnp_study.spec import load_spec  # noqa: E402
from gnp_study.train import train_trial  # noqa: E402

METRICS = ("best_test_error", "final_test_error", "best_val_error", "test_error_at_best_val", "grad_norm",
           "train_loss", "passes_per_step")

#: (study file, stage, configuration, seed): one trial per stage kind, B_a and amortised GNP included.
TRIALS = [
    ("digits", "standard", {"alpha": 0.0, "lr": 0.1, "r": 0.0}, 0),
    ("digits", "sam", {"alpha": 1.0, "lr": 0.1, "r": 0.1}, 1),
    ("digits", "gnp", {"alpha": 0.1, "lr": 0.1, "r": 0.1}, 2),
    ("digits", "gnp", {"alpha": -0.5, "lr": 0.1, "r": 0.1}, 3),
    ("digits_label_noise", "standard", {"alpha": 0.0, "lr": 0.05, "r": 0.0}, 0),
    ("digits_label_noise", "gnp", {"alpha": 0.8, "lr": 0.05, "r": 0.1}, 1),
    ("digits_label_noise", "cost", {"alpha": 0.8, "every": 5, "lr": 0.05, "r": 0.1}, 6),
]


def train(study: str, stage: str, config: dict, seed: int) -> dict:
    """The last epoch's metrics of one trial (floats as ``float.hex`` strings: exact)."""
    spec = load_spec(ROOT / "search_spaces" / f"{study}.yaml")
    last: dict = {}
    train_trial(spec, TrialConfig(stage, config, seed).to_dict(), lambda m, st: last.update(m))
    return {k: float(last[k]).hex() for k in METRICS if k in last}


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rows = [dict(study=s, stage=st, config=c, seed=seed, metrics=train(s, st, c, seed)) for s, st, c, seed in TRIALS]
    out = ROOT / "tests" / "data" / "reference_trials.json"
    # the demo's recorded decisions and trials (digits_label_noise_*) are not made here: keep them
    kept = json.loads(out.read_text()) if out.is_file() else {}
    kept.update({"commit": commit, "trials": rows})
    out.write_text(json.dumps(kept, indent=1) + "\n")
    print(f"wrote {out} ({len(rows)} trials, commit {commit})")


if __name__ == "__main__":
    main()
