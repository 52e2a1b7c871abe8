"""Tests of gnp_study.results: the results table, the derived "GNP vs SAM" figure, results.md/csv and the
study-folder reader, on synthetic study folders (tests/study_fixtures.py); no Ray, no torch."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from study_fixtures import PAPER_ROWS, make_study, make_validation_study  # noqa: E402

from gnp_study.results import (  # noqa: E402
    StudyFolderError,
    aggregate_seeds,
    format_mean_std,
    gnp_vs_sam_percent,
    load_study,
    results_table,
    write_tables,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("study") / "synthetic")


def _expected(trials: pd.DataFrame, stage: str, key: str) -> tuple[float, float, int, int]:
    """Mean, std (ddof=1), completed count and seed count of one configuration, with numpy."""
    rows = trials[(trials["stage"] == stage) & (trials["config_key"] == key)]
    ok = rows.loc[rows["status"] == "completed", "best_test_error"].to_numpy(float)
    return float(np.mean(ok)), float(np.std(ok, ddof=1)), len(ok), len(rows)


# ---------------------------------------------------------------- the derived figure (paper Section 4.1)


def test_gnp_vs_sam_percent_reproduces_the_papers_71_percent():
    # Table 1, WideResNet-28-10, Cifar10 cutout: 2.81 / 2.43 / 2.16 -> 0.65 = (1 + 71%) x 0.38.
    pct = gnp_vs_sam_percent(2.81, 2.43, 2.16)
    assert pct == pytest.approx(100 * (0.65 / 0.38 - 1), abs=1e-9)
    assert round(pct) == 71


def test_gnp_vs_sam_percent_undefined_cases():
    # VGG16 cutout on Cifar10: SAM (6.17) is worse than Standard (5.31): no ratio.
    assert math.isnan(gnp_vs_sam_percent(5.31, 6.17, 5.19))
    assert math.isnan(gnp_vs_sam_percent(5.0, 5.0, 4.0))  # SAM improvement 0
    assert math.isnan(gnp_vs_sam_percent(5.0, float("nan"), 4.0))
    # GNP improving less than SAM gives a negative percentage: 0.2 vs 0.4 -> -50%.
    assert gnp_vs_sam_percent(5.0, 4.6, 4.8) == pytest.approx(-50.0)


def test_format_mean_std():
    assert format_mean_std(5.2, 0.10817, 3, 3) == "5.20 ± 0.11"
    assert format_mean_std(4.785, 0.1485, 2, 3, n_diverged=1) == "4.79 ± 0.15 (2/3)"
    # one seed: the spread is unknown, never shown as 0.00
    assert format_mean_std(4.0, float("nan"), 1, 1) == "4.00 ± n/a"
    assert format_mean_std(4.0, 0.0, 1, 1) == "4.00 ± n/a"
    assert format_mean_std(float("nan"), float("nan"), 0, 3, n_diverged=3) == "diverged (0/3)"
    assert format_mean_std(float("nan"), float("nan"), 0, 2, n_failed=2) == "failed (0/2)"
    assert format_mean_std(float("nan"), float("nan"), 0, 2, n_diverged=1, n_failed=1) == "no completed seed (0/2)"
    assert format_mean_std(float("nan"), float("nan"), 0, 0) == "not run"


# ---------------------------------------------------------------- aggregate_seeds (kept behaviour)


def test_aggregate_seeds_counts_and_single_seed_std():
    trials = pd.DataFrame(
        {
            "stage": ["gnp"] * 4, "config_key": ["a", "a", "b", "b"], "alpha": [0.5, 0.5, 2.0, 2.0],
            "r": [0.05] * 4, "seed": [0, 1, 0, 1], "status": ["completed", "diverged", "diverged", "diverged"],
            "best_test_error": [4.0, 3.0, 1.0, 1.0],
        }
    )
    agg = aggregate_seeds(trials).set_index("config_key")
    assert agg.loc["a", "mean"] == 4.0  # diverged 3.0 not averaged in
    assert math.isnan(agg.loc["a", "std"]) and math.isnan(agg.loc["a", "ci_low"])  # one seed: unknown spread
    assert (agg.loc["a", "n"], agg.loc["a", "n_seeds"], agg.loc["a", "n_diverged"]) == (1, 2, 1)
    assert math.isnan(agg.loc["b", "mean"]) and agg.loc["b", "n"] == 0 and agg.loc["b", "n_diverged"] == 2


# ---------------------------------------------------------------- results_table


def test_results_table_means_equal_per_trial_best_errors(study):
    table = results_table(study.trials, study.decisions)
    assert table["scheme"].tolist() == ["Standard", "SAM", "GNP"]
    for _, row in table.iterrows():
        mean, std, n, n_seeds = _expected(study.trials, row["stage"], study.decisions[row["stage"]]["config_key"])
        assert row["mean"] == pytest.approx(mean, abs=1e-12)
        assert row["std"] == pytest.approx(std, abs=1e-12)
        assert (row["n"], row["n_seeds"]) == (n, n_seeds)
    # Hand numbers of the fixture: Standard lr=0.1 -> 5.2 +- sqrt(0.0117); SAM r=0.05 lost seed 1.
    std_row, sam_row, gnp_row = (table.iloc[i] for i in range(3))
    assert std_row["mean"] == pytest.approx(5.2) and std_row["std"] == pytest.approx(math.sqrt(0.0117))
    assert std_row["test_error"] == "5.20 ± 0.11"
    assert sam_row["mean"] == pytest.approx(4.8 + (-0.12 + 0.09) / 2)
    assert (sam_row["n"], sam_row["n_seeds"], sam_row["n_diverged"]) == (2, 3, 1)
    assert sam_row["test_error"] == "4.79 ± 0.15 (2/3)"
    assert gnp_row["mean"] == pytest.approx(4.5) and gnp_row["configuration"] == "r=0.05, alpha=0.8"
    assert std_row["configuration"] == "lr=0.1, weight_decay=0.0005"
    assert sam_row["configuration"] == "r=0.05"


def test_results_table_improvements_and_derived_figure(study):
    table = results_table(study.trials, study.decisions)
    std_m, sam_m, gnp_m = table["mean"].tolist()
    assert math.isnan(table.loc[0, "improvement"])
    assert table.loc[1, "improvement"] == pytest.approx(std_m - sam_m)
    assert table.loc[2, "improvement"] == pytest.approx(5.2 - 4.5)
    expected = 100 * ((5.2 - 4.5) / (5.2 - 4.785) - 1)  # 0.70 vs 0.415 -> 68.7%
    assert table.loc[2, "gnp_vs_sam_pct"] == pytest.approx(expected)
    assert table.attrs["gnp_vs_sam_pct"] == pytest.approx(expected)
    assert table["gnp_vs_sam_pct"].iloc[:2].isna().all()


def test_results_table_paper_reference_columns(study):
    paper = pd.DataFrame(PAPER_ROWS, columns=["scheme", "mean", "std"]).replace({"GNP": "Ours"})
    table = results_table(study.trials, study.decisions, paper)
    assert table["paper_mean"].tolist() == [2.81, 2.43, 2.16]
    assert table["paper_test_error"].tolist() == ["2.81 ± 0.07", "2.43 ± 0.13", "2.16 ± 0.11"]
    assert table.loc[2, "paper_improvement"] == pytest.approx(0.65)
    assert round(table.loc[2, "paper_gnp_vs_sam_pct"]) == 71
    # the measured columns are unchanged by the reference
    assert table["mean"].tolist() == results_table(study.trials, study.decisions)["mean"].tolist()
    with pytest.raises(ValueError, match="Adam"):
        results_table(study.trials, study.decisions, pd.DataFrame({"scheme": ["Adam"], "mean": [1.0], "std": [0.1]}))


def test_results_table_of_a_partial_study(tmp_path):
    s = make_study(tmp_path / "partial", stages=("standard",), paper=False)
    table = results_table(s.trials, s.decisions)
    assert table["test_error"].tolist()[1:] == ["not run", "not run"]
    assert table["configuration"].tolist()[1:] == ["not decided", "not decided"]
    assert table["n_seeds"].tolist() == [3, 0, 0]
    assert math.isnan(table.attrs["gnp_vs_sam_pct"])


def test_results_table_falls_back_to_the_decision_numbers(study):
    # A decided stage whose trials are not in the table: the decision's own numbers are shown.
    trials = study.trials[study.trials["stage"] != "gnp"]
    table = results_table(trials, study.decisions)
    dec = study.decisions["gnp"]
    assert table.loc[2, "mean"] == pytest.approx(dec["mean"]) and table.loc[2, "n"] == dec["n"]


# ---------------------------------------------------------------- results.md / results.csv


def test_write_tables(tmp_path):
    s = make_study(tmp_path / "s")
    paths = write_tables(s.path)
    assert set(paths) == {"results.md", "results.csv"} and all(p.exists() for p in paths.values())
    csv = pd.read_csv(paths["results.csv"])
    for _, row in csv.iterrows():
        mean, std, n, n_seeds = _expected(s.trials, row["stage"], s.decisions[row["stage"]]["config_key"])
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
        assert row["n"] == n and row["n_seeds"] == n_seeds
    md = paths["results.md"].read_text(encoding="utf-8")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 3  # header, separator, Standard / SAM / GNP
    assert lines[2].startswith("| Standard") and lines[3].startswith("| SAM") and lines[4].startswith("| GNP")
    assert "4.79 ± 0.15 (2/3)" in lines[3] and "2.43 ± 0.13" in lines[3]
    assert "69%" in lines[4] and "71%" in lines[4]
    assert f"is 69% larger than SAM's ({5.2 - 4.785:.2f} points)" in md
    assert "0.65 = (1 + 71%) x 0.38" in md


def test_write_tables_partial_study_says_what_is_missing(tmp_path):
    s = make_study(tmp_path / "s", stages=("standard", "sam"), paper=False)
    md = write_tables(s.path)["results.md"].read_text(encoding="utf-8")
    assert "Not decided yet: gnp" in md
    assert "GNP − Standard is not available yet" in md and "X% larger" in md  # the figure is not stated
    assert "- Paper:" not in md and "Paper test error" not in md  # no reference rows


# ---------------------------------------------------------------- load_study


def test_load_study_reads_everything(study):
    st = load_study(study.path)
    assert st.spec["stages"]["gnp"]["figure2_r"] == [0.05, 0.1]
    assert st.decisions == json.loads((study.path / "decisions.json").read_text())
    assert len(st.trials) == len(study.trials) and len(st.epochs) == len(study.epochs)
    assert st.run_info["versions"]["torch"] == "2.14.1"
    assert st.paper is not None and st.paper["scheme"].tolist() == ["Standard", "SAM", "GNP"]
    assert st.missing == [] and st.name == "synthetic"


def test_load_study_optional_files_absent(tmp_path):
    s = make_study(tmp_path / "s", paper=False, run_info=False)
    (s.path / "epochs.parquet").unlink()
    st = load_study(s.path)
    assert st.missing == ["epochs.parquet", "run_info.json"]
    assert st.run_info == {} and st.epochs.empty and st.paper is None


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: p.joinpath("trials.parquet").write_bytes(b"PAR1 this is not parquet"), "trials.parquet"),
        (lambda p: p.joinpath("trials.parquet").unlink(), "trials.parquet: missing"),
        (lambda p: p.joinpath("study.yaml").unlink(), "study.yaml: missing"),
        (lambda p: p.joinpath("study.yaml").write_text("name: [unclosed"), "study.yaml: cannot read YAML"),
        (lambda p: p.joinpath("study.yaml").write_text("- a list\n"), "study.yaml: expected a YAML mapping"),
        (lambda p: p.joinpath("decisions.json").write_text("{not json"), "decisions.json: cannot read JSON"),
        (lambda p: p.joinpath("run_info.json").write_text("[1, 2]"), "run_info.json: expected a JSON object"),
        (lambda p: p.joinpath("epochs.parquet").write_bytes(b"\x00" * 64), "epochs.parquet: cannot read"),
        (lambda p: pd.read_parquet(p / "trials.parquet").drop(columns=["status"]).to_parquet(p / "trials.parquet"),
         r"trials.parquet: lacks column\(s\) \['status'\]"),
        (lambda p: p.joinpath("paper_reference.csv").write_text("scheme,mean\nSAM,1.0\n"), "paper_reference.csv"),
    ],
)
def test_load_study_names_the_bad_file(tmp_path, damage, match):
    s = make_study(tmp_path / "s")
    damage(s.path)
    with pytest.raises(StudyFolderError, match=match):
        load_study(s.path)


def test_load_study_not_a_study(tmp_path):
    with pytest.raises(StudyFolderError, match="no such study folder"):
        load_study(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyFolderError, match="holds no study"):
        load_study(tmp_path / "empty")
    assert issubclass(StudyFolderError, ValueError)


# ---------------------------------------------------------------- verdicts in words (docs/statistics.md)

from scipy import stats as sps  # noqa: E402

from gnp_study.results import comparisons, display_table, selection, study_results_table, verdict_lines  # noqa: E402


def _set_errors(path, stage, key, errors):
    """Overwrite the best test errors of one configuration's seeds (a dict seed -> value)."""
    t = pd.read_parquet(path / "trials.parquet")
    for seed, v in errors.items():
        t.loc[(t["stage"] == stage) & (t["config_key"] == key) & (t["seed"] == seed), "best_test_error"] = v
    t.to_parquet(path / "trials.parquet", index=False)


def test_verdicts_resolved_state_the_percentage(tmp_path):
    s = make_study(tmp_path / "s")
    st = load_study(s.path)
    lines = verdict_lines(st)
    assert lines[0].startswith("Selection: paper mode") and "optimistic by construction" in lines[0]
    gs = [ln for ln in lines if ln.startswith("GNP − Standard")][0]
    # the fixture's seed offsets cancel in the pairs: GNP - Standard = -0.70 on each of 3 seeds
    assert gs.startswith("GNP − Standard = −0.70 points") and "paired over 3 seeds" in gs and "resolved (GNP" in gs
    assert any("69% larger than SAM's" in ln for ln in lines)


def test_verdicts_unresolved_sam_suppresses_the_percentage(tmp_path):
    s = make_study(tmp_path / "s")
    sam_key, std_key = s.decisions["sam"]["config_key"], s.decisions["standard"]["config_key"]
    # SAM around Standard: seeds 0 and 2 (seed 1 diverged) at 5.08 - 0.6 and 5.29 + 0.5
    _set_errors(s.path, "sam", sam_key, {0: 4.48, 2: 5.79})
    st = load_study(s.path)
    lines = verdict_lines(st)
    text = "\n".join(lines)
    assert not re.search(r"\d% (larger|smaller)", text)  # no percentage stated
    assert "SAM − Standard is not resolved" in text
    ss = [ln for ln in lines if ln.startswith("SAM − Standard")][0]
    std = st.trials[(st.trials["config_key"] == std_key)].set_index("seed")["best_test_error"]
    d = np.array([4.48 - std[0], 5.79 - std[2]])
    lo, hi = sps.t.interval(0.95, 1, loc=d.mean(), scale=sps.sem(d))
    assert f"95% CI −{abs(lo):.2f} to +{hi:.2f}, paired over 2 seeds (of 2 and 3 completed): not resolved" in ss
    assert f"(paired t-test p = {sps.ttest_1samp(d, 0).pvalue:.2f})" in ss
    assert "seeds would resolve a difference this size (80% power)" in ss
    md = write_tables(s.path)["results.md"].read_text(encoding="utf-8")
    assert "SAM − Standard is not resolved" in md and "not stated (not resolved)" in md and "69%" not in md
    assert "`gnp-study plan STUDY --seeds N`" in md


def test_comparisons_pair_the_chosen_configurations(study):
    comps = comparisons(study.trials, study.decisions)
    p = comps[("GNP", "SAM")]
    t = study.trials
    g = t[(t["config_key"] == study.decisions["gnp"]["config_key"]) & (t["status"] == "completed")]
    m = t[(t["config_key"] == study.decisions["sam"]["config_key"]) & (t["status"] == "completed")]
    both = sorted(set(g["seed"]) & set(m["seed"]))
    diff = g.set_index("seed")["best_test_error"][both] - m.set_index("seed")["best_test_error"][both]
    assert p.n == len(both) == 2 and p.diff == pytest.approx(diff.mean())


def test_one_seed_table_says_na(tmp_path):
    s = make_study(tmp_path / "s")
    t = pd.read_parquet(s.path / "trials.parquet")
    t[t["seed"] == 0].to_parquet(s.path / "trials.parquet", index=False)
    md = write_tables(s.path)["results.md"].read_text(encoding="utf-8")
    rows_ = [ln for ln in md.splitlines() if ln.startswith("| Standard")]
    assert "± n/a" in rows_[0] and "± 0.00" not in md
    assert "one seed gives no confidence interval" in md


def _validation_study(tmp_path):
    return make_validation_study(tmp_path / "v")


def test_validation_mode_reports_the_test_error_at_best_val(tmp_path):
    s = _validation_study(tmp_path)
    st = load_study(s.path)
    sel = selection(st.spec)
    assert (sel.mode, sel.decide_column, sel.report_column) == ("validation", "best_val_error",
                                                               "test_error_at_best_val")
    assert selection({"data": {"validation": None}}).mode == "paper" and selection({}).mode == "paper"
    md = write_tables(s.path)["results.md"].read_text(encoding="utf-8")
    assert "Validation mode" in md and "optimistic by construction" not in md
    assert "5.70 ± 0.11" in md  # Standard 5.20 + 0.5
    assert "test error at the epoch of the best validation error" in md


def test_validation_mode_without_its_columns_names_them(tmp_path):
    s = _validation_study(tmp_path)
    t = pd.read_parquet(s.path / "trials.parquet").drop(columns=["best_val_error"])
    t.to_parquet(s.path / "trials.parquet", index=False)
    with pytest.raises(StudyFolderError, match="best_val_error"):
        load_study(s.path)


def test_improvement_column_carries_the_paired_ci(tmp_path):
    """The table's improvement cells state the paired 95% CI of Standard - scheme and the verdict."""
    s = make_study(tmp_path / "s")
    sam_key, std_key = s.decisions["sam"]["config_key"], s.decisions["standard"]["config_key"]
    _set_errors(s.path, "sam", sam_key, {0: 4.48, 2: 5.79})
    st = load_study(s.path)
    std = st.trials[(st.trials["config_key"] == std_key)].set_index("seed")["best_test_error"]
    d = np.array([std[0] - 4.48, std[2] - 5.79])  # improvement per paired seed
    lo, hi = sps.t.interval(0.95, 1, loc=d.mean(), scale=sps.sem(d))
    md = write_tables(s.path)["results.md"].read_text(encoding="utf-8")
    sam_row = [ln for ln in md.splitlines() if ln.startswith("| SAM")][0]
    assert f"(paired 95% CI {lo:+.2f} to {hi:+.2f}, 2 seeds: not resolved)" in sam_row
    gnp_row = [ln for ln in md.splitlines() if ln.startswith("| GNP")][0]
    assert ": resolved)" in gnp_row  # the fixture's GNP beats Standard by 0.70 on every paired seed


def _set_completed(path, stage, key, errors):
    """Like :func:`_set_errors`, and mark those seeds completed."""
    t = pd.read_parquet(path / "trials.parquet")
    for seed, v in errors.items():
        rows = (t["stage"] == stage) & (t["config_key"] == key) & (t["seed"] == seed)
        t.loc[rows, "best_test_error"] = v
        t.loc[rows, "status"] = "completed"
    t.to_parquet(path / "trials.parquet", index=False)


@pytest.mark.parametrize("gnp_minus_sam, resolved", [([-0.3, 0.2, -0.1], False), ([-0.5, -0.52, -0.48], True)])
def test_percentage_says_when_gnp_minus_sam_is_within_the_noise(tmp_path, gnp_minus_sam, resolved):
    """Both improvements resolved: the percentage is stated, with a warning exactly when GNP − SAM is not
    resolved (hand-made numbers; the verdict checked with scipy)."""
    s = make_study(tmp_path / "s")
    dec = s.decisions
    standard, sam = [5.0, 5.2, 5.4], [4.0, 4.25, 4.35]  # SAM − Standard = −1.0, −0.95, −1.05: resolved
    gnp = [m + d for m, d in zip(sam, gnp_minus_sam)]
    for stage, values in (("standard", standard), ("sam", sam), ("gnp", gnp)):
        _set_completed(s.path, stage, dec[stage]["config_key"], dict(zip([0, 1, 2], values)))
    d = np.array(gnp_minus_sam)
    lo, hi = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    assert (lo > 0 or hi < 0) == resolved  # the hand-made case is what it claims to be
    st = load_study(s.path)
    comps = comparisons(st.trials, st.decisions)
    assert comps[("GNP", "Standard")].resolved and comps[("SAM", "Standard")].resolved
    assert comps[("GNP", "SAM")].resolved == resolved
    line = [ln for ln in verdict_lines(st) if "than SAM's (" in ln]
    assert len(line) == 1
    assert ("within the noise" in line[0]) == (not resolved)


def test_percentage_cell_warns_when_gnp_minus_sam_is_not_resolved(tmp_path):
    """The table's "GNP vs SAM improvement" cell carries the GNP − SAM verdict when it is stated."""
    paper = load_study(make_study(tmp_path / "p").path)
    table = study_results_table(paper)
    cells = display_table(table)["GNP vs SAM improvement"].tolist()
    resolved = comparisons(paper.trials, paper.decisions)[("GNP", "SAM")].resolved
    assert table.attrs["gnp_vs_sam_stated"]
    assert ("within the noise" in cells[2]) == (not resolved)
