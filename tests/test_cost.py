"""The cost stage (stages.cost): validation, planning, its record, the table and verdicts against an
independent computation, Fieller's interval of the share kept, and the outputs it adds (figure_cost.png,
the results.md section, the report section, the console lines). Pure pandas/numpy/scipy: no Ray, no torch
training."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from gnp_study import cost
from gnp_study.protocol import COST, config_key, cost_record, count_trials, plan, study_stages
from gnp_study.results import load_study
from gnp_study.spec import SpecError
from gnp_study.stats import ratio
from helpers import protocol_spec
from study_fixtures import SEEDS, make_study


def _spec(confirm=None, every=(1, 2, 5), training_every=None):
    """``helpers.protocol_spec`` with 2-value grids and a cost stage at ``every``; ``confirm`` (seeds)
    adds a confirmation stage, ``training_every`` sets ``training.every``."""
    stages = {"standard": {"space": {"lr": [0.05, 0.1]}}, "sam": {"r": [0.05, 0.1]},
              "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [], "figure2_r": [0.1]},
              "cost": {"every": list(every)}}
    if confirm:
        stages["confirm"] = {"seeds": confirm}
    if training_every is None:
        return protocol_spec(stages)
    return protocol_spec(stages, training={"epochs": 2, "batch_size": 32, "lr": 0.1, "every": training_every})


def _decisions(r=0.1, alpha=0.8):
    cfg = {"standard": {"lr": 0.1, "alpha": 0.0, "r": 0.0}, "sam": {"lr": 0.1, "alpha": 1.0, "r": r},
           "gnp": {"lr": 0.1, "alpha": alpha, "r": r}}
    return {s: {"config": c, "config_key": config_key(c), "r": r, "alpha": alpha} for s, c in cfg.items()}


@pytest.mark.parametrize("every,needle", [([0, 2], ">= 1"), ([True, 2], "boolean"), ([2.5], "valid integer"),
                                          (["2"], "valid integer"), ([1], "at least one k > 1"),
                                          ([2, 2], "duplicate")])
def test_bad_k_is_refused_in_a_study(every, needle):
    with pytest.raises(SpecError, match=needle):
        _spec(every=every)


@pytest.mark.parametrize("k,needle", [(0, "greater than or equal to 1"), (True, "boolean"), (2.5, "valid integer")])
def test_bad_training_every_is_refused(k, needle):
    with pytest.raises(SpecError, match=needle):
        _spec(training_every=k)


def test_a_cost_stage_needs_full_gnp_in_the_study():
    with pytest.raises(SpecError, match="already amortised"):
        _spec(training_every=5)


def test_plan_runs_the_chosen_gnp_at_each_k_on_the_scoring_seeds():
    d = _decisions()
    spec = _spec(confirm=[7, 8, 9])
    assert study_stages(spec)[-2:] == ("confirm", "cost")
    trials = plan(COST, spec, d)
    # k = 1 is full GNP: its (confirmation) trials are reused, not run again
    assert sorted((t.config["every"], t.seed) for t in trials) == [(k, s) for k in (2, 5) for s in (7, 8, 9)]
    assert all({k: v for k, v in t.config.items() if k != "every"} == d["gnp"]["config"] for t in trials)
    assert len({t.trial_id for t in trials}) == 6
    assert count_trials(spec)["cost"] == 6 and count_trials(spec, 10)["cost"] == 6
    no_confirm = _spec()
    assert [t.seed for t in plan(COST, no_confirm, d)] == [0, 1, 2, 0, 1, 2]
    assert count_trials(no_confirm, 5)["cost"] == 10
    assert count_trials(no_confirm)["total"] == sum(v for k, v in count_trials(no_confirm).items() if k != "total")
    assert "cost" not in _spec().model_copy(update={"stages": _spec().stages.model_copy(update={"cost": None})}
                                            ).resolved()["stages"]
    assert "every" not in _spec().resolved()["training"]


def _trials_table(spec, d, values):
    """A trials table: values[(stage, key)] = {seed: error}."""
    rows = []
    for (stage, key), per in values.items():
        for seed, v in per.items():
            rows.append({"trial_id": f"{stage}-{key[-12:]}-{seed}", "stage": stage, "config_key": key,
                         "seed": seed, "status": "completed" if math.isfinite(v) else "diverged",
                         "best_test_error": v, "wall_time_s": 10.0})
    return pd.DataFrame(rows)


def test_record_names_the_trials_of_each_k():
    spec, d = _spec(confirm=[7, 8]), _decisions()
    k2 = config_key(dict(d["gnp"]["config"], every=2))
    k5 = config_key(dict(d["gnp"]["config"], every=5))
    trials = _trials_table(spec, d, {("confirm", d["gnp"]["config_key"]): {7: 10.0, 8: 11.0},
                                     ("confirm", d["standard"]["config_key"]): {7: 12.0, 8: 13.0},
                                     ("cost", k2): {7: 10.5, 8: math.nan}, ("cost", k5): {7: 11.0, 8: 12.0}})
    rec = cost_record(trials, spec, d)
    assert rec["seeds"] == [7, 8] and rec["reference"]["standard"] == {"stage": "confirm",
                                                                         "config_key": d["standard"]["config_key"]}
    assert [(r["every"], r["stage"], r["n"]) for r in rec["every"]] == [(1, "confirm", 2), (2, "cost", 1),
                                                                        (5, "cost", 2)]
    json.dumps(rec)  # JSON-ready


def test_table_and_verdicts_agree_with_an_independent_computation():
    spec, d = _spec(confirm=[7, 8, 9, 10]), _decisions()
    rng = np.random.default_rng(0)
    seed_fx = rng.normal(0, 2, 4)
    std = 15 + seed_fx + rng.normal(0, 0.3, 4)
    full = 12 + seed_fx + rng.normal(0, 0.3, 4)
    k5 = 13 + seed_fx + rng.normal(0, 0.3, 4)
    seeds = [7, 8, 9, 10]
    key5 = config_key(dict(d["gnp"]["config"], every=5))
    trials = _trials_table(spec, d, {("confirm", d["standard"]["config_key"]): dict(zip(seeds, std)),
                                     ("confirm", d["gnp"]["config_key"]): dict(zip(seeds, full)),
                                     ("cost", key5): dict(zip(seeds, k5))})
    trials.loc[trials["stage"] == "cost", "wall_time_s"] = 6.0
    trials.loc[(trials["stage"] == "confirm") & (trials["config_key"] == d["gnp"]["config_key"]), "wall_time_s"] = 20.0
    epochs = pd.DataFrame({"trial_id": trials["trial_id"],
                           "passes_per_step": np.where(trials["stage"] == "cost", 1.2,
                                                       np.where(trials["config_key"] == d["gnp"]["config_key"], 2.0, 1.0))})
    spec = spec.model_copy(update={"stages": spec.stages.model_copy(update={"cost": type(spec.stages.cost)(every=[1, 5])})})
    d["cost"] = cost_record(trials, spec, d)
    table = cost.cost_table(trials, epochs, d)
    assert list(table["scheme"]) == ["Standard", "GNP", "GNP"] and list(table["every"].fillna(0)) == [0, 1, 5]
    r5 = table.iloc[2]
    assert r5["mean"] == pytest.approx(k5.mean()) and r5["std"] == pytest.approx(k5.std(ddof=1))
    half = st.t.ppf(0.975, 3) * k5.std(ddof=1) / 2
    assert (r5["ci_low"], r5["ci_high"]) == pytest.approx((k5.mean() - half, k5.mean() + half))
    assert r5["passes_per_step"] == pytest.approx(1.2) and r5["time_vs_standard"] == pytest.approx(0.6)
    assert table.iloc[1]["time_vs_standard"] == pytest.approx(2.0)
    dd = k5 - std
    h = st.t.ppf(0.975, 3) * dd.std(ddof=1) / 2
    assert (r5["vs_standard"], r5["vs_standard_low"], r5["vs_standard_high"]) == pytest.approx((dd.mean(), dd.mean() - h, dd.mean() + h))
    assert r5["vs_full"] == pytest.approx((k5 - full).mean())
    assert r5["kept"] == pytest.approx((std - k5).mean() / (std - full).mean())
    assert r5["kept_bounded"] and r5["kept_low"] < r5["kept"] < r5["kept_high"]
    lines = cost.cost_lines(table, cost.cost_comparisons(trials, d))
    assert len(lines) == 2 and "full GNP" in lines[0]
    assert "GNP every 5 steps (1.20 passes per step, 0.60x Standard's trial time)" in lines[1]
    assert f"keeps {100 * r5['kept']:.0f}% of full GNP's improvement" in lines[1] and "95% CI" in lines[1]


def test_fieller_bounds_are_where_the_t_test_of_a_minus_rho_b_just_rejects():
    """Independent check: at each bound rho, the one-sample t-test of a - rho b has p = 0.05 exactly;
    inside the interval p > 0.05."""
    rng = np.random.default_rng(3)
    b = rng.normal(3.0, 1.0, 6)
    a = 0.7 * b + rng.normal(0, 0.4, 6)
    q = ratio(pd.Series(a), pd.Series(b))
    assert q.bounded and q.estimate == pytest.approx(a.mean() / b.mean())
    for rho in (q.ci_low, q.ci_high):
        assert st.ttest_1samp(a - rho * b, 0.0).pvalue == pytest.approx(0.05, abs=1e-9)
    assert st.ttest_1samp(a - q.estimate * b, 0.0).pvalue > 0.05


def test_fieller_interval_is_unbounded_when_the_denominator_is_not_resolved():
    rng = np.random.default_rng(4)
    b = rng.normal(0.0, 1.0, 4)
    a = rng.normal(0.5, 1.0, 4)
    q = ratio(pd.Series(a), pd.Series(b))
    if st.ttest_1samp(b, 0.0).pvalue > 0.05:
        assert not q.bounded and math.isnan(q.ci_low)


def test_fieller_interval_covers_the_true_ratio_at_the_nominal_rate():
    rng = np.random.default_rng(5)
    hits = n = 0
    for _ in range(2000):
        common = rng.normal(0, 1, 6)
        b = 2.0 + common + rng.normal(0, 0.5, 6)
        a = 1.2 + 0.6 * common + rng.normal(0, 0.5, 6)  # true ratio of the means: 0.6
        q = ratio(pd.Series(a), pd.Series(b))
        if q.bounded:
            n += 1
            hits += q.ci_low <= 0.6 <= q.ci_high
    assert n > 1500 and abs(hits / n - 0.95) < 0.02, (hits, n)


def _with_cost(tmp_path):
    s = make_study(tmp_path / "study")
    d = json.loads((s.path / "decisions.json").read_text())
    trials = pd.read_parquet(s.path / "trials.parquet")
    epochs = pd.read_parquet(s.path / "epochs.parquet")
    gnp_cfg = json.loads(d["gnp"]["config_key"])
    rows, erows = [], []
    for k, shift in ((2, 0.1), (5, 0.3)):
        key = config_key(dict(gnp_cfg, every=k))
        for seed in SEEDS:
            ref = trials[(trials["stage"] == "gnp") & (trials["config_key"] == d["gnp"]["config_key"])
                         & (trials["seed"] == seed)].iloc[0]
            tid = f"cost_{k}_{seed}"
            rows.append(dict(ref, trial_id=tid, stage="cost", config_key=key, config=json.dumps(dict(gnp_cfg, every=k)),
                             best_test_error=ref["best_test_error"] + shift, wall_time_s=ref["wall_time_s"] * 0.6))
            erows.append({"trial_id": tid, "stage": "cost", "config_key": key, "alpha": ref["alpha"], "r": ref["r"],
                          "seed": seed, "epoch": 1, "passes_per_step": 1 + 1 / k, "epoch_time_s": 1.0})
    trials = pd.concat([trials, pd.DataFrame(rows)], ignore_index=True)
    epochs["passes_per_step"] = np.where(epochs["alpha"] == 0, 1.0, 2.0)
    epochs = pd.concat([epochs, pd.DataFrame(erows)], ignore_index=True)
    trials.to_parquet(s.path / "trials.parquet", index=False)
    epochs.to_parquet(s.path / "epochs.parquet", index=False)
    d["cost"] = {"seeds": list(SEEDS), "metric": "best_test_error",
                 "reference": {"standard": {"stage": "standard", "config_key": d["standard"]["config_key"]},
                               "gnp": {"stage": "gnp", "config_key": d["gnp"]["config_key"]}},
                 "every": [{"every": 1, "stage": "gnp", "config_key": d["gnp"]["config_key"], "n": 3}] +
                          [{"every": k, "stage": "cost", "config_key": config_key(dict(gnp_cfg, every=k)), "n": 3}
                           for k in (2, 5)]}
    (s.path / "decisions.json").write_text(json.dumps(d))
    return s


def test_outputs_show_the_cost_stage(tmp_path):
    from gnp_study.cli import summary_lines
    from gnp_study.report import build_outputs

    s = _with_cost(tmp_path)
    paths = build_outputs(s.path)
    png = paths["figure_cost.png"]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (s.path / "results.md").read_text()
    assert "## Cost of the second pass" in md and "GNP every 5" in md and "selection seeds (biased" in md
    html = (s.path / "report.html").read_text()
    assert 'id="cost"' in html and 'id="figure-cost"' in html
    lines = summary_lines(s.path)
    assert any("GNP every 5 steps (1.20 passes per step" in x for x in lines)
    table = cost.study_cost(load_study(s.path))[0]
    assert table.iloc[3]["vs_full"] == pytest.approx(0.3) and table.iloc[2]["vs_full"] == pytest.approx(0.1)


def test_a_study_without_a_cost_stage_has_no_cost_outputs(tmp_path):
    from gnp_study.report import build_outputs

    s = make_study(tmp_path / "plain")
    paths = build_outputs(s.path)
    assert "figure_cost.png" not in paths and not (s.path / "figure_cost.png").exists()
    assert "Cost of the second pass" not in (s.path / "results.md").read_text()


def test_plan_prices_the_cost_stage(tmp_path, capsys):
    import yaml

    from gnp_study.cli import main

    raw = yaml.safe_load((__import__("gnp_study.spec", fromlist=["SEARCH_SPACES"]).SEARCH_SPACES
                          / "digits.yaml").read_text())
    raw["stages"]["cost"] = {"every": [1, 2, 5]}
    study = tmp_path / "cost.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(study), "--epoch-time", "2"]) == 0
    out = capsys.readouterr().out
    # digits: 4 seeds, no confirmation stage: k = 2 and 5 on the 4 study seeds; 236 + 8 = 244 trials
    assert "8 trials (the chosen GNP with the second pass every k in [2, 5] steps, on 4 seeds" in out
    assert "244 trials" in out
    # 3.8 trial-hours without it (test_cli) + 4 x 15 epochs x 2 s x (1.5 + 1.2) passes = 324 s
    assert "3.9 trial-hours" in out
