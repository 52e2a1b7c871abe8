"""The shipped digits studies give the same trials, bit for bit, as the code before the module moves, and
the demo study's stages decide the same from the trials ``make demo`` recorded.

The trials are those listed in ``tests/data/reference_trials.json`` (one per stage kind, B_a and amortised
GNP included). Each is trained twice on this machine: by today's code in this process and by the old code
(``tests/oldcode.py``: commit 993d56f, unpacked from ``tests/data/code_993d56f.tar.gz``, with its own study
files) in a child process, both with the kernels of ``tests/numerics.py``. Comparing on one machine is what
makes "bit for bit" hold on any CPU: the metrics the file stores were made on one machine and are kept as
a record of it, not compared (another CPU can sum a convolution in another order).

A change that alters a trial's numbers (the training loop, the optimizer, the data, the seeds) fails here;
when the change is meant to, say so and move :data:`oldcode.OLD_COMMIT` and the README's demo result
together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gnp_study.protocol import TrialConfig, decide
from gnp_study.spec import load_spec
from gnp_study.train import train_trial
import oldcode

ROOT = Path(__file__).resolve().parent.parent
REF = json.loads((ROOT / "tests" / "data" / "reference_trials.json").read_text())


def _trial_id(r: dict) -> str:
    return f"{r['study']}-{r['stage']}-s{r['seed']}-" + ",".join(f"{k}={v}" for k, v in sorted(r["config"].items()))


@pytest.fixture(scope="module")
def old_trials(tmp_path_factory) -> dict:
    """{trial id: the old code's metrics} for every trial of the file, trained here in one child process."""
    old = oldcode.unpack(tmp_path_factory.mktemp("oldcode"))
    trials = [(str(old / "search_spaces" / f"{r['study']}.yaml"), r["stage"], r["config"], r["seed"])
              for r in REF["trials"]]
    return {_trial_id(r): got["last"] for r, got in zip(REF["trials"], oldcode.train_old(old, trials))}


@pytest.mark.timeout(oldcode.TRAIN_TIMEOUT_S + 120)
@pytest.mark.parametrize("ref", REF["trials"], ids=_trial_id)
def test_trial_equals_the_old_codes_bit_for_bit(ref, old_trials):
    spec = load_spec(ROOT / "search_spaces" / f"{ref['study']}.yaml")
    last: dict = {}
    train_trial(spec, TrialConfig(ref["stage"], ref["config"], ref["seed"]).to_dict(), lambda m, st: last.update(m))
    got = {k: float(last[k]).hex() for k in ref["metrics"]}
    want = {k: old_trials[_trial_id(ref)][k] for k in ref["metrics"]}
    assert got == want, f"differs from the code of commit {oldcode.OLD_COMMIT} trained on this machine"


def test_demo_stages_decide_as_recorded():
    """protocol.decide on the demo's recorded trials: the same winner, mean and probability of being best
    for every candidate of stages 1-3 as the study's decisions.json said."""
    spec = load_spec(ROOT / "search_spaces" / "digits_label_noise.yaml")
    trials = pd.read_parquet(ROOT / "tests" / "data" / "digits_label_noise_trials.parquet")
    decisions: dict = {}
    for stage in ("standard", "sam", "gnp"):
        decisions[stage] = d = decide(stage, trials, spec, decisions)
        want = REF["digits_label_noise_decisions"][stage]
        assert d["config_key"] == want["config_key"]
        assert float(d["mean"]).hex() == want["mean"]
        assert [[c["config_key"], c["prob_best"]] for c in d["candidates"]] == want["prob_best"]
