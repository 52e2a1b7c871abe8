"""A study's own metric and direction (``metric: {name, mode}``): the spec's checks, the selection it
gives, the best value a trial keeps, the choice rule, the races and the calibrated probability in both
directions, and the user's loop reporting it. No Ray; the example's run through the CLI is in
tests/test_examples_e2e.py."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from gnp_study import own_loop, racing, stats
from gnp_study.results import METRIC_MODE, PAPER_MODE, selection
from gnp_study.spec import SpecError, load_spec, parse_spec
from gnp_study.trainable import RunningBest
from gnp_study.user_code import UserCodeError
from helpers import digits_trial_spec

ROOT = Path(__file__).resolve().parent.parent
OWN_LOOP = ROOT / "examples" / "own_loop" / "study.yaml"


def _own_loop_spec(tmp_path: Path, metric=None, **training):
    """The own-loop example's study with ``metric`` (None: no metric key) and ``training`` overrides."""
    raw = yaml.safe_load(OWN_LOOP.read_text())
    raw["training"].update(training)
    raw.pop("metric", None)
    if metric is not None:
        raw["metric"] = metric
    raw["code_dir"] = str(OWN_LOOP.parent)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


# ------------------------------------------------------------------------------------------ the spec
def test_paper_studies_carry_no_metric_key():
    spec = digits_trial_spec()
    assert spec.metric is None and "metric" not in spec.resolved()
    assert selection(spec).mode == PAPER_MODE and selection(spec).direction == "min"


def test_a_package_loop_metric_is_kept_and_selects_on_its_best():
    spec = digits_trial_spec(metric={"name": "test_loss", "mode": "min"})
    assert spec.resolved()["metric"] == {"name": "test_loss", "mode": "min"}
    sel = selection(spec)
    assert (sel.mode, sel.decide_column, sel.report_column, sel.direction) == (
        METRIC_MODE, "best_test_loss", "best_test_loss", "min")
    assert sel.sign == 1.0 and sel.race_metric == "best_test_loss" and sel.unit == ""
    assert selection(spec.resolved()) == sel  # the study folder's resolved spec gives the same selection


@pytest.mark.parametrize("metric, words", [
    ({"name": "loss", "mode": "median"}, "metric.mode"),
    ({"name": "bleu", "mode": "max"}, "not reported by the package's training loop"),
    ({"name": "epoch", "mode": "max"}, "bookkeeping"),
    ({"name": "best_test_error", "mode": "min"}, "bookkeeping"),
    ({"name": "val loss", "mode": "min"}, "identifier"),
    ({"name": "val_loss", "mode": "min"}, "needs a validation set"),
    ({"mode": "min"}, "metric.name"),
])
def test_a_bad_metric_is_refused_naming_the_key(metric, words):
    with pytest.raises(SpecError) as err:
        digits_trial_spec(metric=metric)
    assert words in str(err.value)


def test_the_cost_stage_refuses_a_study_metric():
    with pytest.raises(SpecError, match="stages.cost"):
        digits_trial_spec(metric={"name": "test_loss", "mode": "min"},
                          stages={"cost": {"seeds": [5, 6], "every": [1, 2]}})


def test_a_max_metric_of_the_users_loop(tmp_path):
    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"})
    sel = selection(spec)
    assert (sel.decide_column, sel.direction, sel.sign, sel.race_metric) == (
        "best_accuracy", "max", -1.0, "-best_accuracy")
    assert "higher is better" in sel.label and sel.quantity == "best accuracy"


# --------------------------------------------------------------------------- the best value of a trial
def test_running_best_follows_the_direction_and_skips_diverged_epochs(tmp_path):
    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"})
    best = RunningBest(spec, [{"accuracy": 70.0, "status": "running"}, {"accuracy": 80.0, "status": "running"}])
    assert best.add({"accuracy": 75.0})["best_accuracy"] == 80.0
    assert best.add({"accuracy": 90.0})["best_accuracy"] == 90.0
    assert best.add({"accuracy": 99.0, "status": "diverged"})["best_accuracy"] == 90.0
    assert best.add({"accuracy": float("nan")})["best_accuracy"] == 90.0
    low = RunningBest(digits_trial_spec(metric={"name": "test_loss", "mode": "min"}), [])
    assert math.isnan(low.add({"epoch": 1})["best_test_loss"])  # before any value
    assert [low.add({"test_loss": v})["best_test_loss"] for v in (0.5, 0.7, 0.3)] == [0.5, 0.5, 0.3]
    # a loop that reports the key itself, and a study without a metric, are left alone
    assert RunningBest(digits_trial_spec(), []).add({"test_error": 3.0}) == {"test_error": 3.0}


def test_collected_trials_keep_the_best_of_the_metric(tmp_path):
    from gnp_study.protocol import TrialConfig
    from gnp_study.runner import collect_trials

    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"})

    def result(seed, acc, status):
        t = TrialConfig("sam", {"alpha": 1.0, "r": 0.1}, seed).to_dict()
        n = len(acc)
        df = pd.DataFrame({"epoch": range(1, n + 1), "train_loss": 1.0, "test_error": 100.0 - np.array(acc),
                           "best_test_error": np.nan, "grad_norm": 1.0, "lr": 0.1, "epoch_time_s": 1.0,
                           "accuracy": acc, "status": ["running"] * (n - 1) + [status], "node": "n"})
        return SimpleNamespace(config={"trial": t}, metrics_dataframe=df, error=None, checkpoint=None)

    trials, epochs, _, _ = collect_trials([result(0, [60.0, 80.0, 70.0], "completed"),
                                          result(1, [50.0, 65.0, 99.0], "diverged")], "sam", spec)
    row = trials.set_index("seed")
    assert row.loc[0, "best_accuracy"] == 80.0  # the highest, not the last
    assert row.loc[1, "best_accuracy"] == 65.0  # the diverged epoch does not count
    assert list(trials.columns)[-1] == "best_accuracy" and "accuracy" in epochs.columns
    assert epochs[epochs.seed == 0]["accuracy"].tolist() == [60.0, 80.0, 70.0]


# ------------------------------------------------------------- choice, races, probability: both directions
def test_choice_rule_takes_the_highest_mean_for_max():
    assert stats.choice_order([0, 0, 0], [3.0, 1.0, 2.0]).tolist() == [1, 2, 0]
    assert stats.choice_order([0, 0, 0], [3.0, 1.0, 2.0], sign=-1.0).tolist() == [0, 2, 1]
    # fewest diverged first in both directions; NaN (no completed seed) last
    assert stats.choice_order([1, 0, 0], [9.0, 1.0, math.nan], sign=-1.0).tolist() == [1, 2, 0]


def test_prob_best_for_max_is_prob_best_of_the_negated_values():
    rng = np.random.default_rng(3)
    values = pd.DataFrame(rng.normal(size=(5, 4)) + [0.0, 0.0, 2.5, 0.0], columns=list("abcd"))
    high = stats.prob_best(values, sign=-1.0)
    assert np.allclose(high.to_numpy(), stats.prob_best(-values).to_numpy())
    assert high.idxmax() == "c" and stats.prob_best(values).idxmax() != "c"


def test_races_read_a_max_metric_negated():
    trials = pd.DataFrame({"config_key": ["a", "b"], "seed": [0, 0], "status": ["completed"] * 2,
                           "best_accuracy": [80.0, 90.0]})
    assert racing.results_frame(trials, "-best_accuracy")["value"].tolist() == [-80.0, -90.0]
    assert racing.results_frame(trials, "best_accuracy")["value"].tolist() == [80.0, 90.0]


def test_verdict_words_follow_the_direction():
    p = stats.paired({0: 90.0, 1: 91.0, 2: 92.0}, {0: 80.0, 1: 80.5, 2: 81.5})
    assert "resolved (GNP has the lower error" in stats.paired_text("GNP", "SAM", stats.paired(
        {0: 1.0, 1: 1.1, 2: 1.3}, {0: 2.0, 1: 2.2, 2: 2.1}))
    assert "resolved (GNP has the higher accuracy" in stats.paired_text("GNP", "SAM", p, better="higher accuracy")
    assert "resolved (SAM has the lower loss" in stats.paired_text("GNP", "SAM", p, better="lower loss")


# ------------------------------------------------------------------------------------ the user's loop
def reports_accuracy(ctx):
    for e in range(ctx.start_epoch + 1, ctx.epochs + 1):
        ctx.report({"accuracy": 50.0 + e})  # no test_error: the study's metric is enough


def reports_test_error_only(ctx):
    ctx.report({"test_error": 5.0})


def nan_accuracy(ctx):
    ctx.report({"accuracy": float("nan")})


TRIAL = {"stage": "gnp", "config": {"alpha": 0.5, "r": 0.05, "lr": 0.1}, "seed": 1, "trial_id": "t1",
         "config_key": "k"}


def _run(spec):
    reports = []
    status = own_loop.train_trial(spec, TRIAL, lambda m, st: reports.append(dict(m)), None)
    return reports, status


def test_the_loop_reports_the_study_metric(tmp_path):
    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"},
                          function="test_metric:reports_accuracy", epochs=3)
    reports, status = _run(spec)
    assert status == "completed" and [r["accuracy"] for r in reports] == [51.0, 52.0, 53.0]
    assert all(math.isnan(r["test_error"]) for r in reports)


def test_a_report_without_the_study_metric_fails_naming_it(tmp_path):
    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"}, function="test_metric:reports_test_error_only")
    with pytest.raises(UserCodeError, match=r"no 'accuracy' \(the study's metric.name\)"):
        _run(spec)


def test_a_non_finite_study_metric_diverges(tmp_path):
    spec = _own_loop_spec(tmp_path, {"name": "accuracy", "mode": "max"}, function="test_metric:nan_accuracy")
    reports, status = _run(spec)
    assert status == "diverged" and "accuracy = nan" in reports[-1]["diverged_reason"]


# ----------------------------------------------------------------- decisions, tables and verdicts for max
def _max_spec():
    from helpers import protocol_spec

    return protocol_spec({"sam": {"r": [0.05, 0.1]}, "gnp": {"alpha": [0.5, 0.8]}}, seeds=(0, 1, 2),
                         training={"epochs": 2, "batch_size": 32, "lr": 0.1,
                                   "function": "test_metric:reports_accuracy"},
                         metric={"name": "accuracy", "mode": "max"})


def _trials(rows):
    """Trials of the three stages from ``(stage, alpha, r, [accuracy per seed])``."""
    from gnp_study.protocol import TrialConfig

    out = []
    for stage, alpha, r, values in rows:
        for seed, v in enumerate(values):
            t = TrialConfig(stage, {"alpha": alpha, "r": r, "lr": 0.1}, seed)
            out.append({"trial_id": t.trial_id, "stage": stage, "config_key": t.config_key, "alpha": alpha,
                        "r": r, "seed": seed, "status": "completed", "best_accuracy": v,
                        "best_test_error": 100.0 - v})
    return pd.DataFrame(out)


def test_decisions_tables_and_verdicts_take_the_highest_accuracy():
    from gnp_study import protocol
    from gnp_study.results import comparisons, results_table, verdict_lines

    spec = _max_spec()
    trials = _trials([("standard", 0.0, 0.0, [80.0, 81.0, 82.0]),
                      ("sam", 1.0, 0.05, [83.0, 84.0, 84.5]), ("sam", 1.0, 0.1, [81.0, 81.5, 82.5]),
                      ("gnp", 0.5, 0.05, [85.0, 86.0, 86.5]), ("gnp", 0.8, 0.05, [82.0, 83.0, 83.5])])
    decisions = {"standard": protocol.decide("standard", trials, spec, {})}
    decisions["sam"] = protocol.decide("sam", trials, spec, decisions)
    decisions["gnp"] = protocol.decide("gnp", trials, spec, decisions)
    assert decisions["sam"]["r"] == 0.05 and decisions["gnp"]["alpha"] == 0.5  # the highest, not the lowest
    assert decisions["gnp"]["metric"] == "best_accuracy" and decisions["gnp"]["direction"] == "max"
    probs = {c["alpha"]: c["prob_best"] for c in decisions["gnp"]["candidates"]}
    assert probs[0.5] > probs[0.8]

    table = results_table(trials, decisions, metric="best_accuracy", sign=-1.0)
    gnp = table.set_index("scheme").loc["GNP"]
    # improvement = GNP - Standard = (85.83 - 81.0) points, resolved: its paired CI lies above 0
    assert gnp["improvement"] == pytest.approx(np.mean([85.0, 86.0, 86.5]) - 81.0)
    assert gnp["improvement_resolved"] and 0 < gnp["improvement_ci_low"] < gnp["improvement_ci_high"]
    comps = comparisons(trials, decisions, "best_accuracy")
    p = comps[("GNP", "Standard")]
    assert (gnp["improvement_ci_low"], gnp["improvement_ci_high"]) == (p.ci_low, p.ci_high)

    study = SimpleNamespace(spec=spec.resolved(), trials=trials, decisions=decisions, paper=None, name="t")
    text = "\n".join(verdict_lines(study))
    assert "GNP has the higher accuracy" in text and "lower error" not in text
    assert "on accuracy" in text  # the stage lines name the metric decided on
    # the runner-up's shortfall and its CI have one sign: chosen minus runner-up (positive: it is worse)
    line = next(v for v in verdict_lines(study) if v.startswith("GNP stage:"))
    ru = np.array([82.0, 83.0, 83.5]) - np.array([85.0, 86.0, 86.5])  # runner-up alpha 0.8 minus chosen
    from scipy import stats as st  # the paired Student-t interval, computed independently
    half = st.t.ppf(0.975, 2) * np.std(-ru, ddof=1) / np.sqrt(3)
    lo, hi = -ru.mean() - half, -ru.mean() + half
    assert (f"is {stats.fmt_signed(-ru.mean(), 4)} lower on accuracy, paired 95% CI {stats.fmt_signed(lo, 4)} to "
            f"{stats.fmt_signed(hi, 4)} over 3 seeds") in line, line
    assert lo > 0


def test_a_stage_that_ran_but_did_not_decide_counts_its_trials():
    """All of a stage's trials ended (here: diverged) and it chose nothing: its row says so, with counts,
    instead of "not run"."""
    from gnp_study.results import display_table, results_table

    trials = _trials([("standard", 0.0, 0.0, [80.0, 81.0, 82.0])])
    trials["status"] = "diverged"
    table = results_table(trials, {}, metric="best_accuracy", sign=-1.0)
    row = table.set_index("scheme").loc["Standard"]
    assert row["test_error"] == "not decided: 3 trials ended, 3 diverged, 0 failed"
    assert int(row["n_diverged"]) == 3
    assert table.set_index("scheme").loc["SAM", "test_error"] == "not run"  # no trial of stage 2
    assert display_table(table).set_index("Scheme").loc["Standard", "Diverged"] == 3


def test_paper_decisions_carry_no_direction():
    from gnp_study import protocol
    from helpers import protocol_spec

    spec = protocol_spec({}, seeds=(0, 1, 2))
    trials = _trials([("standard", 0.0, 0.0, [80.0, 81.0, 82.0])])
    assert "direction" not in protocol.decide("standard", trials, spec, {})


def test_a_stage_whose_trials_all_failed_names_the_first_error():
    from gnp_study import protocol
    from gnp_study.protocol import ProtocolError

    trials = _trials([("standard", 0.0, 0.0, [80.0, 81.0])]).assign(
        status="failed", error="UserCodeError: training.function: the report of epoch 1 has no 'acc'")
    with pytest.raises(ProtocolError, match="every trial of stage 'standard' failed .* has no 'acc'"):
        protocol.decide("standard", trials, _max_spec(), {})


def test_verdicts_of_a_small_metric_keep_four_decimals():
    from gnp_study.protocol import decide
    from gnp_study.results import verdict_lines

    spec = digits_trial_spec(metric={"name": "test_loss", "mode": "min"}, seeds=(0, 1, 2),
                             stages={"sam": {"r": [0.05]}, "gnp": {"alpha": [0.5], "figure2_r": [0.05]}})
    trials = pd.concat([_trials([(stage, alpha, r, vals)]).rename(columns={"best_accuracy": "best_test_loss"})
                        for stage, alpha, r, vals in (("standard", 0.0, 0.0, [0.331, 0.332, 0.334]),
                                                      ("sam", 1.0, 0.05, [0.330, 0.3312, 0.3335]),
                                                      ("gnp", 0.5, 0.05, [0.3301, 0.331, 0.333]))],
                       ignore_index=True)
    decisions = {"standard": decide("standard", trials, spec, {})}
    decisions["sam"] = decide("sam", trials, spec, decisions)
    decisions["gnp"] = decide("gnp", trials, spec, decisions)
    study = SimpleNamespace(spec=spec.resolved(), trials=trials, decisions=decisions, paper=None, name="t")
    line = next(v for v in verdict_lines(study) if v.startswith("GNP − Standard"))
    # the paired differences are -0.0009, -0.001, -0.001: two decimals would print -0.00
    # a loss is in its own units: no "points" (percentage points of an error)
    assert "GNP − Standard = −0.0010, 95% CI " in line and "points" not in line, line


def _loss_study(root: Path):
    """The synthetic study of ``study_fixtures.make_study`` turned into one that decides on its own
    ``test_loss`` (min): the errors / 1000, so that differences sit in the 4th decimal; decisions made
    again by ``protocol.decide``. Returns the loaded :class:`gnp_study.results.Study`."""
    import json

    import study_fixtures as sf
    from helpers import protocol_spec

    from gnp_study.protocol import decide
    from gnp_study.results import load_study

    sf.make_study(root, paper=False)
    spec = protocol_spec({"standard": {"space": {"lr": list(sf.LRS)}}, "sam": {"r": list(sf.SAM_R)},
                          "gnp": {"alpha": list(sf.BASIC_ALPHA), "alpha_extra": list(sf.B_A + sf.B_B),
                                  "figure2_r": list(sf.FIGURE2_R), "figure3_alpha": list(sf.B_B) + [0.8]}},
                         seeds=sf.SEEDS, metric={"name": "test_loss", "mode": "min"})
    (root / "study.yaml").write_text(yaml.safe_dump(spec.resolved(), sort_keys=False), encoding="utf-8")
    trials = pd.read_parquet(root / "trials.parquet")
    trials["best_test_loss"] = trials["best_test_error"] / 1000
    trials.to_parquet(root / "trials.parquet")
    epochs = pd.read_parquet(root / "epochs.parquet")
    epochs["test_loss"] = epochs["test_error"] / 1000
    epochs.to_parquet(root / "epochs.parquet")
    decisions: dict = {}
    for stage in ("standard", "sam", "gnp"):
        decisions[stage] = decide(stage, trials, spec, decisions)
    (root / "decisions.json").write_text(json.dumps(decisions), encoding="utf-8")
    return load_study(root)


def test_the_outputs_of_a_loss_give_it_in_its_own_units(tmp_path):
    """results.md, results.csv, report.html and Figure 2 of a study deciding on test_loss: 4 decimals,
    no percent sign, no "points" (percentage points), columns and legend named after the metric; the
    numbers are those of the tables (independent means of the trials)."""
    import re

    from gnp_study.report import build_outputs, figure2

    study = _loss_study(tmp_path / "s")
    out = build_outputs(study.path)
    md = out["results.md"].read_text(encoding="utf-8")
    assert "points" not in md and "%)" not in md.split("## Verdicts")[0].split("\n| Scheme")[1], md
    assert "| Improvement vs Standard " in md and "Improvement vs Standard (points)" not in md
    std = study.trials[(study.trials["stage"] == "standard") & (study.trials["config_key"] ==
                                                                study.decisions["standard"]["config_key"])]
    gnp = study.trials[(study.trials["stage"] == "gnp") & (study.trials["config_key"] ==
                                                           study.decisions["gnp"]["config_key"])]
    diff = (gnp.set_index("seed")["best_test_loss"] - std.set_index("seed")["best_test_loss"]).mean()
    assert f"GNP − Standard = {stats.fmt_signed(diff, 4)}, 95% CI" in md
    # every stage line and improvement cell carries 4 decimals, none the 2-decimal "+0.00"
    stage_lines = [x for x in md.splitlines() if " stage: chose " in x]
    assert len(stage_lines) == 3 and all(re.search(r"is [+−]\d\.\d{4} worse on test_loss", x) for x in stage_lines)
    assert not re.search(r"[+−-]0\.00\b(?!\d)", md), md
    assert "in its own units" in md and "validation error" not in md

    csv = pd.read_csv(out["results.csv"])
    assert "test_loss" in csv.columns and "test_error" not in csv.columns
    assert csv.loc[2, "test_loss"].startswith(f"{gnp['best_test_loss'].mean():.4f} ± ")

    page = out["report.html"].read_text(encoding="utf-8")
    chosen = re.findall(r"Chosen: <b>[^<]*</b>: ([^ ]+) ± ([^ ]+) over", page)
    assert len(chosen) == 3 and all(re.fullmatch(r"\d\.\d{4}", m) for m, _ in chosen), chosen
    assert "<th>mean</th>" in page and "mean %" not in page and " points" not in page
    assert f"{std['best_test_loss'].mean():.4f}" == chosen[0][0]

    fig = figure2(study)
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("difference in the test_loss" in x for x in labels) and not any("the error" in x for x in labels)
