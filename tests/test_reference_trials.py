"""The shipped digits studies give the same trials, bit for bit, as the code that wrote
``tests/data/reference_trials.json`` (``tests/make_reference_trials.py``; the commit is in the file), and
the demo study's stages decide the same from the trials ``make demo`` recorded.

A change that alters a trial's numbers (the training loop, the optimizer, the data, the seeds) fails here;
when the change is meant to, regenerate the file and the README's demo result together. The trials are
trained with AVX2 kernels on any CPU (``tests/numerics.py``, pinned by ``conftest.py``): an AVX-512 kernel
sums in another order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gnp_study.protocol import TrialConfig, decide
from gnp_study.spec import load_spec
from gnp_study.train import train_trial
from numerics import pinned_capability_missing

ROOT = Path(__file__).resolve().parent.parent
REF = json.loads((ROOT / "tests" / "data" / "reference_trials.json").read_text())


@pytest.mark.parametrize("ref", REF["trials"], ids=lambda r: f"{r['study']}-{r['stage']}-s{r['seed']}-"
                         + ",".join(f"{k}={v}" for k, v in sorted(r["config"].items())))
def test_trial_equals_the_reference_bit_for_bit(ref):
    if (why := pinned_capability_missing()):
        pytest.skip(why)
    spec = load_spec(ROOT / "search_spaces" / f"{ref['study']}.yaml")
    last: dict = {}
    train_trial(spec, TrialConfig(ref["stage"], ref["config"], ref["seed"]).to_dict(), lambda m, st: last.update(m))
    got = {k: float(last[k]).hex() for k in ref["metrics"]}
    assert got == ref["metrics"], f"differs from the reference made at commit {REF['commit']}"


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
