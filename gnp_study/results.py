"""Tidy result tables: seeds aggregated to mean +- std, the paper's results table, the study folder reader.

Works on plain pandas data (the ``trials.parquet`` / ``epochs.parquet`` schemas of the study folder, see
``docs/study-folder.md``); it imports neither Ray nor torch, so everything here is testable without starting
either.

Public API:
    selection(spec) -> Selection                          paper mode or validation mode: which column decides,
                                                          which one is reported
    aggregate_seeds(trials, metric) -> DataFrame         one row per (stage, configuration): n, mean, std, CI
    per_seed(trials, stage, config_key, metric) -> Series  one configuration's completed seeds
    comparisons(trials, decisions, metric) -> dict       GNP - Standard, SAM - Standard, GNP - SAM, paired by seed
    verdict_lines(study) -> list[str]                     the verdicts in words (results.md, console, report)
    results_table(trials, decisions, paper=None)          the Standard / SAM / GNP table (paper Table 1)
    gnp_vs_sam_percent(standard, sam, gnp) -> float       the paper's "70% more than SAM's improvement"
    format_mean_std(mean, std, n, n_seeds, ...) -> str    "5.20 ± 0.10 (2/3)", "4.00 ± n/a" for one seed
    load_study(study_dir) -> Study                        read a study folder (raises StudyFolderError)
    write_tables(study_dir) -> {"results.md": Path, "results.csv": Path}
    write_study_tables(study, table=None) -> same, for a loaded Study
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from gnp_study.study_folder import (  # noqa: F401  (file names: re-exported for the outputs' callers)
    DECISIONS_JSON, EPOCHS_PARQUET, PAPER_REFERENCE_CSV, RESULTS_CSV, RESULTS_MD, RUN_INFO_JSON, STUDY_YAML,
    TRIALS_PARQUET, StudyFolderError, read_json, read_table)
from gnp_study.stats import Paired, describe, fmt_signed, paired, paired_text

#: Trial statuses as written to ``trials.parquet``.
STATUSES = ("completed", "diverged", "failed")

#: Columns that identify one configuration of one stage (all seeds of it share them).
CONFIG_COLUMNS = ["stage", "config_key", "alpha", "r"]

#: The three schemes of the paper's Table 1, in order: (stage name in the study folder, display name).
SCHEMES = (("standard", "Standard"), ("sam", "SAM"), ("gnp", "GNP"))

#: Columns of ``trials.parquet`` that the outputs need (a subset of the contract's columns).
TRIALS_REQUIRED = ["trial_id", "stage", "config_key", "alpha", "r", "seed", "status", "best_test_error"]

#: Columns of ``epochs.parquet`` that the outputs need.
EPOCHS_REQUIRED = ["trial_id", "stage", "alpha", "r", "seed", "epoch", "test_error", "grad_norm"]

#: Keys of a configuration that are not "common training hyper-parameters" (they name the scheme).
_SCHEME_KEYS = ("alpha", "r", "seed")


#: The selection modes of a study (``data.validation`` absent or null and no ``metric``: paper mode).
PAPER_MODE, VALIDATION_MODE, METRIC_MODE = "paper", "validation", "metric"


@dataclass(frozen=True)
class Selection:
    """How a study chooses and how it scores (paper mode: the best test error during training, paper Section 4.1;
    validation mode: the test set never chooses).

    Attributes:
        mode: ``"paper"`` (no validation split: every stage decides on ``best_test_error``, the best test
            error during training, and the same number is reported; the paper's protocol, optimistic by
            construction) or ``"validation"`` (``data.validation`` set: stages decide on
            ``best_val_error``, and the test error of the epoch chosen on validation,
            ``test_error_at_best_val``, is reported).
            ``"metric"`` (the study's ``metric``: stages decide on ``best_<name>``, the best value of the
            metric over a trial's epochs in its direction, and the same number is reported).
        decide_column: the ``trials.parquet`` column the stages decide on.
        report_column: the column the results table and the comparisons report.
        label: a short phrase for pages and the console.
        direction: ``"min"`` (lower is better: errors, losses) or ``"max"`` (higher is better).
        quantity: what the reported number is, for table headers and figure axes, with its unit
            (``"best test error (%)"``, ``"best accuracy"``).
        unit: ``"%"`` for the errors, else ``""``: differences of the errors are in percentage points
            (:attr:`diff_unit`), a study's own metric's in its own units.
    """

    mode: str
    decide_column: str
    report_column: str
    label: str
    direction: str = "min"
    quantity: str = "best test error (%)"
    unit: str = "%"

    @property
    def sign(self) -> float:
        """+1 for ``min``, -1 for ``max``: ``sign * value`` is lower-is-better (the choice rule, the races
        and the improvements use it, so one code path serves both directions)."""
        return 1.0 if self.direction == "min" else -1.0

    @property
    def race_metric(self) -> str:
        """The decision column as the races take it: with a leading ``-`` when higher is better
        (:func:`gnp_study.racing.oriented`)."""
        return ("-" if self.direction == "max" else "") + self.decide_column

    @property
    def decimals(self) -> int:
        """Digits of the verdicts' differences: 2 for the errors in percent, 4 for a study's own metric
        (a loss or an accuracy in [0, 1] differs in its third decimal); :func:`number_style`."""
        return number_style(self.report_column)[0]

    @property
    def diff_unit(self) -> str:
        """Written after a difference: ``" points"`` (percentage points) for the errors in percent, ``""``
        for a metric in its own units (a loss, an accuracy in [0, 1]); :func:`number_style`."""
        return number_style(self.report_column)[1]

    @property
    def better(self) -> str:
        """What the better of two configurations has, in words (:func:`gnp_study.stats.paired_text`):
        ``"lower error"`` for the paper's metric, ``"higher accuracy"`` / ``"lower val_loss"`` for a
        study's own."""
        if self.mode != METRIC_MODE:
            return "lower error"
        return f"{'lower' if self.direction == 'min' else 'higher'} {self.name}"

    @property
    def name(self) -> str:
        """The metric's name without ``best``/unit, for sentences (``"test error"``, ``"accuracy"``)."""
        q = self.quantity.removeprefix("best ")
        return q.removesuffix(" (%)")


def selection(spec: Any) -> Selection:
    """The :class:`Selection` of a study.

    Args:
        spec: a :class:`gnp_study.spec.StudySpec`, or the resolved ``study.yaml`` as a dict; validation
            mode when ``data.validation`` is present and not null (an object with ``size`` and ``seed``).

    Returns:
        The :class:`Selection` (paper mode when the spec has no ``data.validation`` at all).
    """
    if isinstance(spec, dict):
        val = (spec.get("data") or {}).get("validation")
        metric = spec.get("metric")
    else:
        val = getattr(getattr(spec, "data", None), "validation", None)
        metric = getattr(spec, "metric", None)
    if metric is not None:
        name = metric["name"] if isinstance(metric, dict) else metric.name
        mode = metric["mode"] if isinstance(metric, dict) else metric.mode
        col = f"best_{name}"
        pct = name in ("test_error", "val_error", "train_error")
        better = "lower" if mode == "min" else "higher"
        return Selection(METRIC_MODE, col, col, f"the study's metric: the best {name} of each trial over its "
                         f"epochs ({mode}: {better} is better); chooses and scores on the same number",
                         mode, f"best {name}" + (" (%)" if pct else ""), "%" if pct else "")
    if val is None:
        return Selection(PAPER_MODE, "best_test_error", "best_test_error",
                         "paper mode: best test error during training; chooses and scores on the same data "
                         "(test set), optimistic by construction")
    size = val.get("size") if isinstance(val, dict) else getattr(val, "size", None)
    vseed = val.get("seed") if isinstance(val, dict) else getattr(val, "seed", None)
    split = (f"split of {size} training images, seed {vseed}" if size is not None
             else "the validation set of the study's data function")
    return Selection(VALIDATION_MODE, "best_val_error", "test_error_at_best_val",
                     f"validation mode: stages decide on the best validation error ({split}); reported: the "
                     f"test error at the epoch chosen on validation", "min", "test error at the best validation epoch (%)")


#: The decision and report columns in percent (the package loop's errors): their differences are percentage
#: points, shown with 2 decimals; any other column (a study's own metric) is in its own units, 4 decimals.
PERCENT_COLUMNS = ("best_test_error", "best_val_error", "best_train_error", "test_error_at_best_val")


def number_style(column: str | None) -> tuple[int, str]:
    """``(decimals, unit after a difference)`` for the numbers of a decision on ``column`` (a
    ``decisions.json`` entry's ``metric``; None in older folders: the test error): ``(2, " points")``
    for the errors in percent (:data:`PERCENT_COLUMNS`), ``(4, "")`` for a study's own metric, as
    :attr:`Selection.decimals` and :attr:`Selection.diff_unit` say for the whole study."""
    return (2, " points") if column is None or column in PERCENT_COLUMNS else (4, "")


def table_style(table: pd.DataFrame) -> tuple[int, str]:
    """``(decimals, unit after a difference)`` of a :func:`results_table` result: its ``attrs``
    ``"decimals"`` and ``"unit"``, set by :func:`study_results_table` for a study's own metric (else 2
    and ``"%"``: the paper's errors)."""
    return int(table.attrs.get("decimals", 2)), (" points" if table.attrs.get("unit", "%") == "%" else "")


def _check_metric(trials: pd.DataFrame, metric: str) -> None:
    if metric not in trials.columns:
        raise KeyError(f"trials table lacks column {metric!r} (the study's selection metric); it has "
                       f"{list(trials.columns)}")


def aggregate_seeds(trials: pd.DataFrame, metric: str = "best_test_error") -> pd.DataFrame:
    """Aggregate per-trial errors over seeds, one row per (stage, configuration).

    Args:
        trials: one row per trial with at least the columns ``stage``, ``config_key``, ``alpha``, ``r``,
            ``seed``, ``status`` and ``metric`` (percent).
        metric: the column to aggregate: ``best_test_error`` (paper mode), ``best_val_error`` or
            ``test_error_at_best_val`` (validation mode), see :func:`selection`.

    Returns:
        DataFrame with the columns of :data:`CONFIG_COLUMNS` plus ``mean``, ``std``, ``sem``, ``ci_low``,
        ``ci_high`` (percent; over the trials whose status is ``"completed"``; std with ddof=1, sem =
        std/sqrt(n), 95% Student-t interval of the mean, :func:`gnp_study.stats.describe`; std, sem and
        the interval are NaN for a single completed seed, everything NaN when no seed completed), ``n``
        (completed seeds), ``n_seeds`` (all trials), ``n_diverged`` and ``n_failed``. Diverged and failed
        trials are counted, never averaged in silently: the paper's metric (best test error during
        training, Section 4.1) is only defined for a run that trained to the end.

    Raises:
        KeyError: a required column is missing.
    """
    required = CONFIG_COLUMNS + ["seed", "status", metric]
    missing = [c for c in required if c not in trials.columns]
    if missing:
        raise KeyError(f"trials table lacks column(s) {missing}; it has {list(trials.columns)}")
    cols = CONFIG_COLUMNS + ["mean", "std", "sem", "ci_low", "ci_high", "n", "n_seeds", "n_diverged", "n_failed"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    df = trials.copy()
    ok = df["status"] == "completed"
    df["_ok_error"] = df[metric].astype(float).where(ok)
    grouped = df.groupby(CONFIG_COLUMNS, sort=False, dropna=False)
    rows = []
    for keys, g in grouped:
        d = describe(g["_ok_error"])
        rows.append(dict(zip(CONFIG_COLUMNS, keys), mean=d.mean, std=d.std, sem=d.sem, ci_low=d.ci_low,
                         ci_high=d.ci_high, n=d.n, n_seeds=int(len(g)),
                         n_diverged=int((g["status"] == "diverged").sum()),
                         n_failed=int((g["status"] == "failed").sum())))
    return pd.DataFrame(rows, columns=cols)


def per_seed(trials: pd.DataFrame, stage: str, config_key: str, metric: str = "best_test_error") -> pd.Series:
    """One configuration's value per completed seed.

    Args:
        trials: the trials table; stage, config_key: the configuration; metric: the column.

    Returns:
        Series indexed by seed (int), the metric of the completed trials (diverged and failed left out).

    Raises:
        KeyError: ``metric`` is not a column.
    """
    _check_metric(trials, metric)
    sel = trials[(trials["stage"] == stage) & (trials["config_key"] == config_key)
                 & (trials["status"] == "completed")]
    s = pd.Series(sel[metric].astype(float).to_numpy(), index=sel["seed"].astype(int).to_numpy(), dtype=float)
    return s[np.isfinite(s.to_numpy())]


#: The three comparisons of the study's answer: (a, b) means a - b, by scheme display name.
COMPARISONS = (("GNP", "Standard"), ("SAM", "Standard"), ("GNP", "SAM"))


#: Which seeds score the three schemes: the confirmation stage's (fresh seeds) or the selection stages'.
CONFIRMATION, SELECTION = "confirmation", "selection"


def scored_on(decisions: dict[str, Any], seeds: str = "auto") -> str:
    """:data:`CONFIRMATION` when ``seeds`` asks for it or is ``"auto"`` and the study has a confirmation
    record (``decisions["confirm"]``), else :data:`SELECTION`.

    Raises:
        ValueError: ``seeds`` is not "auto", "confirmation" or "selection", or asks for confirmation
            seeds the study does not have.
    """
    if seeds not in ("auto", CONFIRMATION, SELECTION):
        raise ValueError(f"seeds must be 'auto', 'confirmation' or 'selection', got {seeds!r}")
    has = isinstance(decisions.get("confirm"), dict) and isinstance(decisions["confirm"].get("schemes"), dict)
    if seeds == CONFIRMATION and not has:
        raise ValueError("the study has no confirmation stage's record (decisions['confirm'])")
    return CONFIRMATION if (seeds == CONFIRMATION or (seeds == "auto" and has)) else SELECTION


def _scheme_trials(decisions: dict[str, Any], stage: str, seeds: str) -> tuple[str, str | None]:
    """(stage of the trials that score ``stage``'s chosen configuration, its config_key)."""
    if seeds == CONFIRMATION:
        return "confirm", decisions["confirm"]["schemes"].get(stage)
    return stage, (decisions.get(stage) or {}).get("config_key")


def comparisons(trials: pd.DataFrame, decisions: dict[str, Any], metric: str = "best_test_error",
                seeds: str = "auto") -> dict[tuple[str, str], Paired | None]:
    """GNP - Standard, SAM - Standard and GNP - SAM, each between the chosen configurations and paired seed
    by seed (:func:`gnp_study.stats.paired`).

    Args:
        trials: the trials table; decisions: ``decisions.json``; metric: the column compared (the study's
            report column, :func:`selection`).
        seeds: ``"auto"`` (the confirmation seeds when the study has them, else the selection seeds),
            ``"confirmation"`` or ``"selection"`` (:func:`scored_on`).

    Returns:
        ``{("GNP", "Standard"): Paired, ...}`` in :data:`COMPARISONS` order; None for a comparison whose
        stage is not decided yet.
    """
    source = scored_on(decisions, seeds)
    stage_of = {name: stage for stage, name in SCHEMES}
    out: dict[tuple[str, str], Paired | None] = {}
    for a, b in COMPARISONS:
        sa, ka = _scheme_trials(decisions, stage_of[a], source)
        sb, kb = _scheme_trials(decisions, stage_of[b], source)
        if ka is None or kb is None:
            out[(a, b)] = None
            continue
        out[(a, b)] = paired(per_seed(trials, sa, ka, metric), per_seed(trials, sb, kb, metric))
    return out


# ----------------------------------------------------------------------------------------------------------
# The results table (paper Table 1)
# ----------------------------------------------------------------------------------------------------------


def format_mean_std(
    mean: float,
    std: float,
    n: int,
    n_seeds: int,
    n_diverged: int = 0,
    n_failed: int = 0,
    decimals: int = 2,
) -> str:
    """Format one aggregated cell as the paper prints it, e.g. ``"5.20 ± 0.10"``.

    Args:
        mean, std: percent test error over the completed seeds (std NaN, as for a single seed, is shown
            as "n/a": unknown, never 0).
        n: completed seeds; n_seeds: all seeds of the configuration.
        n_diverged, n_failed: how many of the n_seeds diverged / failed (used when none completed).
        decimals: digits after the point (the paper uses 2).

    Returns:
        ``"m ± s"`` (``"m ± n/a"`` with one completed seed); with ``" (n/n_seeds)"`` appended when some seeds did not complete; ``"diverged
        (0/3)"``, ``"failed (0/3)"`` or ``"no completed seed (0/3)"`` when none did; ``"not run"`` when the
        configuration has no trials (n_seeds == 0).
    """
    n, n_seeds = int(n), int(n_seeds)
    if n_seeds == 0:
        return "not run"
    if n == 0 or mean is None or not math.isfinite(float(mean)):
        if n_diverged == n_seeds:
            word = "diverged"
        elif n_failed == n_seeds:
            word = "failed"
        else:
            word = "no completed seed"
        return f"{word} ({n}/{n_seeds})"
    s = "n/a" if n < 2 or std is None or not math.isfinite(float(std)) else f"{float(std):.{decimals}f}"
    text = f"{float(mean):.{decimals}f} ± {s}"
    if n < n_seeds:
        text += f" ({n}/{n_seeds})"
    return text


def gnp_vs_sam_percent(standard: float, sam: float, gnp: float) -> float:
    """How much larger GNP's improvement over Standard is than SAM's, in percent (paper Section 4.1).

    The paper (Section 4.1, WideResNet-28-10 on Cifar10 with cutout, Table 1): Standard 2.81, SAM 2.43,
    GNP 2.16, i.e. improvements 0.65 and 0.38, "0.65 = (1 + 71%) x 0.38". So this returns
    ``100 * ((standard - gnp) / (standard - sam) - 1)``; 71.05 for those numbers.

    Args:
        standard, sam, gnp: mean test errors (percent) of the three schemes.

    Returns:
        The percentage (float; negative when GNP improves less than SAM). NaN when any input is NaN or
        when SAM does not improve on Standard (standard - sam <= 0): the ratio then has no meaning (the
        paper's VGG16 cutout case, where SAM is worse than Standard).
    """
    values = [standard, sam, gnp]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return float("nan")
    imp_sam = float(standard) - float(sam)
    imp_gnp = float(standard) - float(gnp)
    if imp_sam <= 0:
        return float("nan")
    return 100.0 * (imp_gnp / imp_sam - 1.0)


def _configuration_text(stage: str, decision: dict[str, Any]) -> str:
    """Human-readable configuration of a stage's decision: "lr=0.1, weight_decay=0.0005" / "r=0.05" /
    "r=0.05, alpha=0.8"."""
    if not decision:
        return "not decided"
    if stage == "standard":
        cfg = decision.get("config")
        if not isinstance(cfg, dict):
            try:
                cfg = json.loads(decision.get("config_key", "{}"))
            except (TypeError, ValueError):
                cfg = {}
        parts = [f"{k}={_fmt_value(v)}" for k, v in cfg.items() if k not in _SCHEME_KEYS]
        return ", ".join(parts) if parts else "defaults"
    if stage == "sam":
        return f"r={_fmt_value(decision.get('r'))}"
    return f"r={_fmt_value(decision.get('r'))}, alpha={_fmt_value(decision.get('alpha'))}"


def _float(v: Any) -> float:
    """float(v), NaN for None."""
    return float("nan") if v is None else float(v)


def _ci_text(lo: float, hi: float, n: int, decimals: int = 2) -> str:
    """``"4.71 to 5.69"``; ``"n/a"`` for fewer than two completed seeds, ``""`` when no seed completed."""
    if int(n) == 0:
        return ""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"{lo:.{decimals}f} to {hi:.{decimals}f}"


def _fmt_value(v: Any) -> str:
    """Short text for a hyper-parameter value (floats without trailing noise)."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _paper_rows(paper: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Map paper reference rows (scheme, mean, std) onto stage names. Accepted schemes (any case):
    Standard / SGD, SAM, GNP / Ours / "GNP (ours)". Raises KeyError (missing column), ValueError (other
    scheme)."""
    missing = [c for c in ("scheme", "mean", "std") if c not in paper.columns]
    if missing:
        raise KeyError(f"paper reference lacks column(s) {missing}; it has {list(paper.columns)}")
    aliases = {"standard": "standard", "sgd": "standard", "sam": "sam", "gnp": "gnp", "ours": "gnp",
               "gnp (ours)": "gnp", "ours (gnp)": "gnp"}
    out: dict[str, tuple[float, float]] = {}
    for _, row in paper.iterrows():
        key = aliases.get(str(row["scheme"]).strip().lower())
        if key is None:
            raise ValueError(
                f"paper reference scheme {row['scheme']!r} is not one of Standard, SAM, GNP (or Ours)"
            )
        out[key] = (float(row["mean"]), float(row["std"]))
    return out


def results_table(
    trials: pd.DataFrame,
    decisions: dict[str, Any],
    paper: pd.DataFrame | None = None,
    decimals: int = 2,
    metric: str = "best_test_error",
    seeds: str = "auto",
    sign: float = 1.0,
) -> pd.DataFrame:
    """The paper's results table (Table 1): one row each for Standard, SAM and GNP.

    Each row aggregates, over seeds, the trials of the configuration that the stage's decision chose
    (``decisions[stage]["config_key"]``), with :func:`aggregate_seeds` (mean, ddof=1 std and 95% CI of
    the per-trial ``metric`` over completed seeds). When the decision's trials are absent from
    ``trials`` the decision's own mean/std/n/n_seeds are used instead (no CI then).

    Args:
        trials: ``trials.parquet`` rows (contract columns; at least those of :func:`aggregate_seeds`).
        decisions: ``decisions.json`` content; stages not decided yet give a "not run" row.
        paper: optional reference rows with columns ``scheme`` (Standard / SAM / GNP or Ours), ``mean``,
            ``std`` (percent); adds the ``paper_*`` columns.
        decimals: digits for the text column.
        metric: the trials column reported (``best_test_error`` in paper mode, ``test_error_at_best_val``
            in validation mode; :func:`selection`).
        seeds: which trials score each scheme's chosen configuration: ``"auto"`` (the confirmation stage's
            fresh seeds when the study has them, else the selection stages' own), ``"confirmation"`` or
            ``"selection"`` (:func:`scored_on`); ``df.attrs["seeds"]`` says which.
        sign: +1 when lower is better (the paper's errors), -1 when higher is better (a study's ``metric``
            with ``mode: max``, :attr:`Selection.sign`): improvements are then this row's mean minus
            Standard's, resolved when the paired CI lies above 0; ``df.attrs["sign"]`` keeps a -1.

    Returns:
        DataFrame with exactly 3 rows (Standard, SAM, GNP) and the columns ``scheme``, ``stage``,
        ``configuration``, ``config_key``, ``mean``, ``std``, ``ci_low``, ``ci_high`` (percent), ``n``,
        ``n_seeds``,
        ``n_diverged``, ``n_failed``, ``test_error`` (text: "mean ± std", with "(n/n_seeds)" when some
        seeds diverged or failed), ``improvement`` (Standard's mean minus this row's mean, percentage
        points; NaN on the Standard row), ``improvement_resolved`` (the paired 95% CI of this row minus
        Standard lies below 0; False on the Standard row), ``gnp_vs_sam_pct`` (on the GNP row only: how
        much larger GNP's improvement is than SAM's, in percent, :func:`gnp_vs_sam_percent`; NaN
        elsewhere; ``df.attrs["gnp_vs_sam_stated"]`` says whether both improvements are resolved, the
        condition for stating it). With ``paper``:
        also ``paper_mean``, ``paper_std``, ``paper_test_error``, ``paper_improvement``,
        ``paper_gnp_vs_sam_pct``. ``df.attrs["gnp_vs_sam_pct"]`` (and ``"paper_gnp_vs_sam_pct"``) hold
        the derived figure too.

    Raises:
        KeyError: ``trials`` or ``paper`` lacks a required column.
        ValueError: ``paper`` names an unknown scheme.
    """
    agg = aggregate_seeds(trials, metric)
    source = scored_on(decisions, seeds)
    df = _scheme_rows(agg, decisions, source, decimals)
    comps = comparisons(trials, decisions, metric, source)
    if sign != 1.0:  # higher is better (the paper's tables carry no sign: lower is better)
        df.attrs["sign"] = float(sign)
    pct = _add_improvements(df, comps)
    _set_comparison_attrs(df, comps, pct, source)
    if paper is not None:
        _add_paper_columns(df, paper, decimals)
    return df


def _no_stats() -> dict[str, Any]:
    """The statistics of a scheme with nothing to aggregate: NaN mean, std and CI, zero counts."""
    return {"mean": float("nan"), "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
            "n": 0, "n_seeds": 0, "n_diverged": 0, "n_failed": 0}


def _scheme_stats(agg: pd.DataFrame, decision: dict[str, Any], t_stage: str, key: str | None,
                  source: str) -> dict[str, Any]:
    """The statistics of one scheme's row of :func:`results_table`.

    Takes the :func:`aggregate_seeds` table, the stage's decision ({} when not decided), the stage and
    config_key of the trials that score it (:func:`_scheme_trials`) and the seeds they come from
    (:func:`scored_on`). Returns a dict with ``mean``, ``std``, ``ci_low``, ``ci_high`` (floats) and
    ``n``, ``n_seeds``, ``n_diverged``, ``n_failed`` (ints): from ``agg`` when it holds the configuration;
    else, on the selection seeds, the decision's own numbers (no CI; diverged and failed counts from its
    candidate entry); else :func:`_no_stats`.
    """
    sel = agg[(agg["stage"] == t_stage) & (agg["config_key"] == key)] if key is not None else agg.iloc[0:0]
    if len(sel) > 0:
        a = sel.iloc[0]
        return {
            "mean": float(a["mean"]),
            "std": float(a["std"]),
            "ci_low": float(a["ci_low"]),
            "ci_high": float(a["ci_high"]),
            "n": int(a["n"]),
            "n_seeds": int(a["n_seeds"]),
            "n_diverged": int(a["n_diverged"]),
            "n_failed": int(a["n_failed"]),
        }
    if decision and source == SELECTION:
        cands = [c for c in decision.get("candidates", []) if c.get("config_key") == key]
        cand = cands[0] if cands else {}
        return {
            "mean": _float(decision.get("mean")),
            "std": _float(decision.get("std")),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "n": int(decision.get("n", 0)),
            "n_seeds": int(decision.get("n_seeds", 0)),
            "n_diverged": int(cand.get("n_diverged", 0)),
            "n_failed": int(cand.get("n_failed", 0)),
        }
    return _no_stats()


def _scheme_rows(agg: pd.DataFrame, decisions: dict[str, Any], source: str, decimals: int) -> pd.DataFrame:
    """The per-scheme part of :func:`results_table`.

    Takes the :func:`aggregate_seeds` table, ``decisions.json``, the seeds that score the schemes
    (:func:`scored_on`) and the digits of the text columns. Returns a DataFrame of 3 rows (Standard, SAM,
    GNP) with the columns ``scheme``, ``stage``, ``configuration``, ``config_key``, the statistics of
    :func:`_scheme_stats`, ``test_error`` and ``ci95`` (text).
    """
    rows = []
    for stage, name in SCHEMES:
        decision = decisions.get(stage) or {}
        t_stage, key = _scheme_trials(decisions, stage, source)
        stats = _scheme_stats(agg, decision, t_stage, key, source)
        text = format_mean_std(stats["mean"], stats["std"], stats["n"], stats["n_seeds"], stats["n_diverged"],
                               stats["n_failed"], decimals)
        ran = agg[agg["stage"] == stage]
        if not decision and stats["n_seeds"] == 0 and len(ran):  # trials ended, no choice (all diverged, ...)
            stats.update(n_diverged=int(ran["n_diverged"].sum()), n_failed=int(ran["n_failed"].sum()))
            text = (f"not decided: {int(ran['n_seeds'].sum())} trials ended, {stats['n_diverged']} diverged, "
                    f"{stats['n_failed']} failed")
        rows.append(
            {
                "scheme": name,
                "stage": stage,
                "configuration": _configuration_text(stage, decision),
                "config_key": key if key is not None else "",
                **stats,
                "test_error": text,
                "ci95": _ci_text(stats["ci_low"], stats["ci_high"], stats["n"], decimals),
            }
        )
    return pd.DataFrame(rows)


def _add_improvements(df: pd.DataFrame, comps: dict[tuple[str, str], Paired | None]) -> float:
    """Add the improvement columns of :func:`results_table` to its per-scheme rows, in place.

    Takes the rows of :func:`_scheme_rows` and the paired comparisons of :func:`comparisons`. Adds
    ``improvement_resolved``, ``improvement`` (Standard's mean minus the row's; NaN on the Standard row),
    ``improvement_ci_low`` / ``improvement_ci_high`` / ``improvement_n_pairs`` (the paired 95% CI of
    Standard minus the scheme, and its pairs) and ``gnp_vs_sam_pct`` (on the GNP row only). Returns that
    percentage (:func:`gnp_vs_sam_percent`, NaN when undefined).
    """
    sign = df.attrs.get("sign", 1.0)  # +1: lower is better; -1: higher is better (results_table)
    # improvement resolved: the paired 95% CI of (scheme - Standard) lies below 0 (above 0 for sign -1)
    df["improvement_resolved"] = [False] + [
        bool(p is not None and p.resolved and sign * p.diff < 0)
        for p in (comps[("SAM", "Standard")], comps[("GNP", "Standard")])]
    std_mean = df.loc[0, "mean"]
    df["improvement"] = sign * (std_mean - df["mean"])
    df.loc[0, "improvement"] = float("nan")
    # The improvement's uncertainty: the paired 95% CI of sign * (Standard - scheme) (for sign +1 the negated
    # CI of scheme - Standard, for sign -1 that CI itself).
    paired_rows = [None, comps[("SAM", "Standard")], comps[("GNP", "Standard")]]
    df["improvement_ci_low"] = [float("nan") if p is None else (-p.ci_high if sign > 0 else p.ci_low)
                                for p in paired_rows]
    df["improvement_ci_high"] = [float("nan") if p is None else (-p.ci_low if sign > 0 else p.ci_high)
                                 for p in paired_rows]
    df["improvement_n_pairs"] = [0 if p is None else int(p.n) for p in paired_rows]
    pct = gnp_vs_sam_percent(*(sign * df["mean"]).tolist())
    df["gnp_vs_sam_pct"] = [float("nan"), float("nan"), pct]
    return pct


def _set_comparison_attrs(df: pd.DataFrame, comps: dict[tuple[str, str], Paired | None], pct: float,
                          source: str) -> None:
    """Set the attrs of :func:`results_table` on ``df`` (the rows with their improvement columns), in place:
    ``gnp_vs_sam_stated`` (both improvements resolved), ``gnp_minus_sam_resolved`` (from ``comps``, the
    :func:`comparisons`), ``gnp_vs_sam_pct`` (``pct``) and ``seeds`` (``source``, :func:`scored_on`).
    Returns None."""
    df.attrs["gnp_vs_sam_stated"] = bool(df["improvement_resolved"].iloc[1:].all())
    gs = comps[("GNP", "SAM")]
    df.attrs["gnp_minus_sam_resolved"] = bool(gs is not None and gs.resolved)
    df.attrs["gnp_vs_sam_pct"] = pct
    df.attrs["seeds"] = source


def _add_paper_columns(df: pd.DataFrame, paper: pd.DataFrame, decimals: int) -> None:
    """Add the paper reference columns of :func:`results_table` to ``df``, in place.

    Takes the table's rows, the reference rows (``scheme``, ``mean``, ``std``; :func:`_paper_rows`) and the
    digits of the text column. Adds ``paper_mean``, ``paper_std``, ``paper_test_error``,
    ``paper_improvement`` and ``paper_gnp_vs_sam_pct`` and the attr ``paper_gnp_vs_sam_pct``. Returns None;
    raises what :func:`_paper_rows` raises.
    """
    ref = _paper_rows(paper)
    df["paper_mean"] = [ref.get(s, (float("nan"),) * 2)[0] for s, _ in SCHEMES]
    df["paper_std"] = [ref.get(s, (float("nan"),) * 2)[1] for s, _ in SCHEMES]
    df["paper_test_error"] = [
        f"{m:.{decimals}f} ± {s:.{decimals}f}" if math.isfinite(m) else "" for m, s in
        zip(df["paper_mean"], df["paper_std"])
    ]
    df["paper_improvement"] = df.loc[0, "paper_mean"] - df["paper_mean"]  # the paper's errors: lower is better
    df.loc[0, "paper_improvement"] = float("nan")
    ppct = gnp_vs_sam_percent(*df["paper_mean"].tolist())
    df["paper_gnp_vs_sam_pct"] = [float("nan"), float("nan"), ppct]
    df.attrs["paper_gnp_vs_sam_pct"] = ppct


def derived_figure_text(table: pd.DataFrame, prefix: str = "") -> str:
    """One sentence stating the paper's derived figure for a :func:`results_table` result.

    Args:
        table: the output of :func:`results_table`.
        prefix: ``""`` for the measured numbers, ``"paper_"`` for the paper's reference numbers.

    Returns:
        e.g. "GNP's improvement over Standard (0.65 points) is 71% larger than SAM's (0.38 points)."; or why
        the figure is undefined (a scheme missing, or SAM not better than Standard).
    """
    mean_col = f"{prefix}mean"
    sign = 1.0 if prefix else table.attrs.get("sign", 1.0)  # the paper's numbers are errors
    d, unit = (2, " points") if prefix else table_style(table)
    means = (sign * table[mean_col].astype(float)).tolist()  # lower is better
    names = table["scheme"].tolist()
    missing = [n for n, m in zip(names, means) if not math.isfinite(float(m))]
    if missing:
        return f"Derived figure undefined: no mean for {', '.join(missing)}."
    imp_sam = means[0] - means[1]
    imp_gnp = means[0] - means[2]
    pct = gnp_vs_sam_percent(*means)
    if not math.isfinite(pct):
        return (
            f"Derived figure undefined: SAM does not improve on Standard ({imp_sam:+.{d}f}{unit}), "
            f"GNP's improvement is {imp_gnp:+.{d}f}{unit}."
        )
    word = "larger" if pct >= 0 else "smaller"
    return (
        f"GNP's improvement over Standard ({imp_gnp:.{d}f}{unit}) is {abs(pct):.0f}% {word} than SAM's "
        f"({imp_sam:.{d}f}{unit}): {imp_gnp:.{d}f} = (1 {'+' if pct >= 0 else '-'} {abs(pct):.0f}%) x {imp_sam:.{d}f}."
    )


def improvement_text(table: pd.DataFrame, comps: dict[tuple[str, str], Paired | None]) -> str:
    """The paper's derived figure ("GNP's improvement over Standard is X% larger than SAM's"), stated only
    when both improvements are resolved at 95% in the improving direction; otherwise which one is not.

    Args:
        table: :func:`results_table` output (its means give the percentage, as the paper computes it).
        comps: :func:`comparisons` output.

    Returns:
        One sentence.
    """
    problems = []
    d = table_style(table)[0]
    for a in ("GNP", "SAM"):
        p = comps.get((a, "Standard"))
        if p is None:
            problems.append(f"{a} − Standard is not available yet (stage not decided)")
        elif not p.resolved:
            problems.append(f"{a} − Standard is not resolved (95% CI {fmt_signed(p.ci_low, d)} to "
                            f"{fmt_signed(p.ci_high, d)} includes 0)" if p.n >= 2 else
                            f"{a} − Standard is not resolved (fewer than 2 paired seeds)")
        elif table.attrs.get("sign", 1.0) * p.diff >= 0:
            worse = "higher error" if table.attrs.get("sign", 1.0) > 0 else "lower value"
            problems.append(f"{a} − Standard is resolved but {a} has the {worse}")
    if problems:
        return ("The paper's figure \"GNP's improvement over Standard is X% larger than SAM's\" is not "
                "stated: " + "; ".join(problems) + ".")
    text = derived_figure_text(table)
    # Both improvements are real, but whether they differ is the GNP − SAM comparison: say when it is not
    # resolved, so the percentage is not read as GNP being better (or worse) than SAM.
    p = comps.get(("GNP", "SAM"))
    if p is None or not p.resolved:
        text += (" The two improvements themselves are not told apart: GNP − SAM is not resolved at 95%, so "
                 "this percentage is within the noise.")
    return text


def prob_best_text(decision: dict[str, Any], value: Any) -> str:
    """The chosen candidate's probability of being best in words, e.g. "posterior probability of being best
    0.31". Study folders written before the calibrated model (their decisions have ``bootstrap``) stored
    the share of bootstrap resamples won, which is not a probability of being best: said so.

    Args:
        decision: one stage's ``decisions.json`` entry; value: the candidate's ``prob_best`` (None: n/a).

    Returns:
        The phrase (no punctuation around it).
    """
    if "bootstrap" in decision and "prob_best_method" not in decision:
        v = "n/a" if value is None else f"{float(value):.2f}"
        return f"share of bootstrap resamples won {v} (an older study folder: not a calibrated probability)"
    if value is None or not math.isfinite(float(value)):
        return "probability of being best n/a (fewer than 2 paired seeds)"
    return f"posterior probability of being best {float(value):.2f}"


def stage_certainty_lines(decisions: dict[str, Any]) -> list[str]:
    """How sure each stage's choice is, from ``decisions.json`` (fields written by
    :func:`gnp_study.protocol.decide`): the chosen configuration's probability of being best, the margin
    to the runner-up with its paired CI, and how many candidates are not distinguishable from it.

    Returns:
        One line per decided stage that has those fields (older study folders have none: no line).
    """
    lines = []
    for stage, name in SCHEMES:
        dec = decisions.get(stage) or {}
        if "indistinguishable" not in dec:
            continue
        cands = dec.get("candidates") or []
        eligible = [c for c in cands if (c.get("n") or 0) > 0]
        chosen = _configuration_text(stage, dec)
        # A stage compares the error it decides on: the validation error in validation mode.
        on = " on validation error" if dec.get("metric") == "best_val_error" else ""
        if dec.get("metric") not in ("best_val_error", "best_test_error", None):  # a study's own metric
            on = f" on {str(dec['metric']).removeprefix('best_')}"
        chosen_c = next((c for c in cands if c.get("config_key") == dec.get("config_key")), None)
        d, unit = number_style(dec.get("metric"))
        text = f"{name} stage: chose {chosen}"
        if chosen_c is not None and "prob_best" in chosen_c:
            text += f" ({prob_best_text(dec, chosen_c.get('prob_best'))})"
        margin = dec.get("margin")
        if margin and margin.get("paired"):
            mp = margin["paired"]
            ru = next((c for c in cands if c.get("config_key") == margin.get("runner_up")), {})
            ru_text = _candidate_text(stage, ru) if ru else "the runner-up"
            if (mp.get("n") or 0) >= 2:
                # stored: runner-up minus chosen; shown as how much worse the runner-up is (its CI too),
                # so with "direction": "max" (higher is better) chosen minus runner-up: "lower"
                lo, hi, diff = worse_by(mp, dec.get("direction") == "max")
                text += (f"; runner-up {ru_text} is {fmt_signed(diff, d)}{unit} "
                         f"{'lower' if dec.get('direction') == 'max' else 'worse'}{on}, "
                         f"paired 95% CI {fmt_signed(lo, d)} to {fmt_signed(hi, d)} over {mp.get('n')} seeds")
            else:
                text += f"; runner-up {ru_text}: fewer than 2 paired seeds, no CI"
        n_ind = len(dec.get("indistinguishable") or [])
        text += (f"; not distinguishable from it at 95%{on}: {n_ind} of the other {max(len(eligible) - 1, 0)} "
                 f"candidates" if eligible else "")
        lines.append(text)
    return lines


def worse_by(paired: dict[str, Any], high: bool) -> tuple[Any, Any, Any]:
    """``(ci_low, ci_high, diff)`` of how much worse a runner-up is than the chosen configuration, from a
    decision's ``margin["paired"]`` (runner-up minus chosen): as stored for a metric where lower is
    better, negated (chosen minus runner-up, the CI's ends swapped) where higher is (``high``)."""
    lo, hi, diff = paired.get("ci_low"), paired.get("ci_high"), paired.get("diff")
    if not high:
        return lo, hi, diff
    neg = lambda v: -float(v) if v is not None else None  # noqa: E731
    return neg(hi), neg(lo), neg(diff)


def _candidate_text(stage: str, cand: dict[str, Any]) -> str:
    if stage == "sam":
        return f"r={_fmt_value(cand.get('r'))}"
    if stage == "gnp":
        return f"alpha={_fmt_value(cand.get('alpha'))}"
    try:
        cfg = json.loads(cand.get("config_key", "{}"))
    except (TypeError, ValueError):
        return str(cand.get("config_key"))
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in cfg.items() if k not in _SCHEME_KEYS) or "defaults"


def label_noise_text(spec: Any) -> str:
    """The study's training-label noise in one sentence, or "" when its labels are clean.

    Args:
        spec: the resolved study (``study.yaml`` dict); ``data.label_noise`` with ``fraction``, ``kind``,
            ``seed`` (:func:`gnp_study.data.noisy_labels` defines them).

    Returns:
        e.g. "Training labels: 40% wrong (symmetric noise: each chosen image gets one of the other classes,
        uniformly; noise seed 0), the same for every configuration and seed; validation and test labels are
        clean."
    """
    noise = ((spec or {}).get("data") or {}).get("label_noise") if isinstance(spec, dict) else None
    if not isinstance(noise, dict) or not noise.get("fraction"):
        return ""
    kind = noise.get("kind", "symmetric")
    how = ("each chosen image gets one of the other classes, uniformly" if kind == "symmetric" else
           "class c becomes c + 1 (mod the number of classes)" if kind == "pairflip" else str(kind))
    return (f"Training labels: {100 * float(noise['fraction']):g}% wrong ({kind} noise: {how}; noise seed "
            f"{noise.get('seed', 0)}), the same for every configuration and seed; validation and test labels "
            f"are clean.")


def verdict_lines(study: "Study", table: pd.DataFrame | None = None, stages: bool = True) -> list[str]:
    """The study's answer in words, as results.md, report.html and the console summary state it.

    Lines: the selection mode; GNP − Standard, SAM − Standard and GNP − SAM (paired over seeds, 95% CI,
    resolved or not, seeds that would resolve an unresolved one; :func:`gnp_study.stats.paired_text`);
    the paper's derived figure or why it is not stated (:func:`improvement_text`); each stage's certainty
    (:func:`stage_certainty_lines`).

    Args:
        study: a loaded :class:`Study`; table: its :func:`study_results_table` (computed when None).
        stages: add the stage certainty lines (report.html shows them with each decision instead).

    Returns:
        A list of sentences (no Markdown).

    Raises:
        KeyError: the trials table lacks the study's report column (validation mode).
    """
    sel = selection(study.spec)
    table = study_results_table(study) if table is None else table
    source = table.attrs.get("seeds", scored_on(study.decisions))
    comps = comparisons(study.trials, study.decisions, sel.report_column, source)
    lines = [f"Selection: {sel.label}."]
    if source == CONFIRMATION:
        conf = study.decisions["confirm"]
        seeds = conf.get("seeds") or []
        lines.append(f"Scored on {len(seeds)} confirmation seeds ({', '.join(str(s) for s in seeds)}) that no "
                     f"decision used: the table, these verdicts and the improvement figure are unbiased by the "
                     f"choice of each scheme's configuration.")
    for (a, b), p in comps.items():
        lines.append(f"{a} − {b}: not available yet (stage not decided)." if p is None else
                     paired_text(a, b, p, better=sel.better, decimals=sel.decimals, unit=sel.diff_unit) + ".")
    lines.append(improvement_text(table, comps))
    if source == CONFIRMATION:
        lines.extend(selection_seed_lines(study))
    if stages:
        lines.extend(s + "." for s in stage_certainty_lines(study.decisions))
    return lines


def selection_seed_lines(study: "Study") -> list[str]:
    """The three comparisons on the selection seeds, labelled as such: the seeds that chose each scheme's
    configuration also score it there, which favours the scheme chosen from the larger grid (the GNP
    row is the best of its alphas on exactly these seeds).

    Returns:
        One line per comparison, each starting "Selection seeds (biased by the choice): ".
    """
    sel = selection(study.spec)
    comps = comparisons(study.trials, study.decisions, sel.report_column, SELECTION)
    return ["Selection seeds (biased by the choice): " + (f"{a} − {b}: not available." if p is None else
                                                           paired_text(a, b, p, better=sel.better, decimals=sel.decimals,
                                                                       unit=sel.diff_unit) + ".")
            for (a, b), p in comps.items()]


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The human-facing columns of a :func:`results_table` result, with readable headers (for Markdown and
    HTML). Improvements are shown with the table's decimals (2 for the errors in percent, in points; 4
    for a study's own metric, :func:`table_style`), percentages rounded; blanks where undefined."""
    d, unit = table_style(table)

    def pts(v: float) -> str:
        return "" if not math.isfinite(float(v)) else f"{float(v):+.{d}f}"

    def pct(v: float) -> str:
        return "" if not math.isfinite(float(v)) else f"{float(v):.0f}%"

    stated = table.attrs.get("gnp_vs_sam_stated", True)
    noise = "" if table.attrs.get("gnp_minus_sam_resolved", True) else " (within the noise: GNP − SAM not resolved)"
    measured_pct = [(pct(v) + (noise if math.isfinite(float(v)) else "")) if stated or not math.isfinite(float(v))
                    else "not stated (not resolved)" for v in table["gnp_vs_sam_pct"]]

    out = pd.DataFrame(
        {
            "Scheme": table["scheme"],
            "Configuration": table["configuration"],
            (f"{table.attrs['quantity'][0].upper()}{table.attrs['quantity'][1:]} (mean ± std)"
             if "quantity" in table.attrs else "Test error % (mean ± std)"): table["test_error"],
            "95% CI of the mean": table["ci95"] if "ci95" in table.columns else "",
            "Seeds done": [f"{int(a)}/{int(b)}" for a, b in zip(table["n"], table["n_seeds"])],
            "Diverged": table["n_diverged"].astype(int),
            "Failed": table["n_failed"].astype(int),
            f"Improvement vs Standard{' (points)' if unit else ''}": _improvement_cells(table, pts),
            "GNP vs SAM improvement": measured_pct,
        }
    )
    if "paper_mean" in table.columns:
        out["Paper test error %"] = table["paper_test_error"]
        out["Paper improvement (points)"] = [pts(v) for v in table["paper_improvement"]]
        out["Paper GNP vs SAM"] = [pct(v) for v in table["paper_gnp_vs_sam_pct"]]
    return out


def _improvement_cells(table: pd.DataFrame, pts) -> list[str]:
    """Each row's improvement over Standard with its paired 95% CI and whether that resolves it, e.g.
    "+0.46 (paired 95% CI +0.06 to +0.86, 3 seeds: resolved)"; blank on the Standard row. Tables built
    without the CI columns show the bare number."""
    if "improvement_ci_low" not in table.columns:
        return [pts(v) for v in table["improvement"]]
    cells = []
    for v, lo, hi, n, ok in zip(table["improvement"], table["improvement_ci_low"], table["improvement_ci_high"],
                                table["improvement_n_pairs"], table["improvement_resolved"]):
        if not math.isfinite(float(v)):
            cells.append("")
        elif not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            cells.append(f"{pts(v)} (no paired CI: {int(n)} paired seed{'s' if int(n) != 1 else ''})")
        else:
            verdict = "resolved" if (lo > 0 or hi < 0) else "not resolved"
            cells.append(f"{pts(v)} (paired 95% CI {pts(lo)} to {pts(hi)}, {int(n)} seeds: {verdict})")
    return cells


# ----------------------------------------------------------------------------------------------------------
# The study folder
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Study:
    """Everything a study folder holds that the outputs are built from (``docs/study-folder.md``).

    Attributes:
        path: the study folder.
        spec: the resolved study spec (``study.yaml``, parsed with ``yaml.safe_load``).
        decisions: ``decisions.json`` (``{}`` when absent: no stage decided yet).
        trials: ``trials.parquet``, one row per trial.
        epochs: ``epochs.parquet``, one row per (trial, epoch) (empty with the contract's columns when
            absent).
        run_info: ``run_info.json`` (``{}`` when absent).
        paper: ``paper_reference.csv`` (columns scheme, mean, std) or None.
        missing: names of the optional files that were absent.
    """

    path: Path
    spec: dict[str, Any]
    decisions: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    run_info: dict[str, Any] = field(default_factory=dict)
    paper: pd.DataFrame | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The study's name (spec ``name``, else the folder name)."""
        return str(self.spec.get("name") or self.path.name)

    def stage_spec(self, stage: str) -> dict[str, Any]:
        """``spec["stages"][stage]`` or ``{}``."""
        stages = self.spec.get("stages") or {}
        return stages.get(stage) or {}


# What the outputs read from each file, checked before anything is written (a file that parses but
# holds the wrong shapes must be refused with its name, not end in a traceback half-way through).

#: Keys of ``decisions.json``: the stages (the runner refuses any other key too).
DECISION_STAGES = tuple(stage for stage, _ in SCHEMES)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and float(v).is_integer() and v >= 0


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _need(ok: bool, path: Path, what: str, value: Any) -> None:
    if not ok:
        raise StudyFolderError(f"{path}: {what}, found {_kind(value)} ({json.dumps(value, default=str)[:60]})")


def _check_spec(path: Path, spec: dict[str, Any]) -> None:
    """study.yaml: the sections the outputs read are mappings; the grids and seeds are lists of numbers."""
    for key in ("name", "description"):
        if spec.get(key) is not None:
            _need(isinstance(spec[key], str), path, f"'{key}' must be a string", spec[key])
    for key in ("data", "model", "training", "stages", "resources"):
        if spec.get(key) is not None:
            _need(isinstance(spec[key], dict), path, f"'{key}' must be a mapping", spec[key])
    if spec.get("seeds") is not None:
        _need(isinstance(spec["seeds"], list) and all(_is_count(v) for v in spec["seeds"]), path,
              "'seeds' must be a list of non-negative integers", spec["seeds"])
    validation = (spec.get("data") or {}).get("validation")
    if validation is not None:
        _need(isinstance(validation, dict), path, "'data.validation' must be a mapping (size, seed) or null",
              validation)
    stages = spec.get("stages") or {}
    for stage in DECISION_STAGES:
        if stages.get(stage) is not None:
            _need(isinstance(stages[stage], dict), path, f"'stages.{stage}' must be a mapping", stages[stage])
    grids = [("sam", "r"), ("gnp", "alpha"), ("gnp", "alpha_extra"), ("gnp", "figure2_r"),
             ("gnp", "figure3_alpha")]
    for stage, key in grids:
        value = (stages.get(stage) or {}).get(key)
        if value is not None:
            _need(isinstance(value, list) and all(_is_number(v) for v in value), path,
                  f"'stages.{stage}.{key}' must be a list of numbers", value)


def _check_decisions(path: Path, decisions: dict[str, Any]) -> None:
    """decisions.json: one mapping per decided stage with the fields :func:`gnp_study.protocol.decide`
    writes (config_key, mean, std, n, n_seeds, candidates; r for sam, alpha and r for gnp)."""
    for stage, dec in decisions.items():
        if stage == "confirm":
            _need(isinstance(dec, dict) and isinstance(dec.get("schemes"), dict)
                  and all(isinstance(dec["schemes"].get(s), str) for s in DECISION_STAGES), path,
                  "'confirm' must be a mapping whose 'schemes' names the config_key of standard, sam and gnp",
                  dec)
            _need(isinstance(dec.get("seeds"), list) and all(_is_count(v) for v in dec["seeds"]), path,
                  "'confirm.seeds' must be a list of non-negative integers", dec.get("seeds"))
            continue
        if stage == "cost":
            where = lambda w: (isinstance(w, dict) and isinstance(w.get("stage"), str)  # noqa: E731
                               and isinstance(w.get("config_key"), str))
            _need(isinstance(dec, dict) and isinstance(dec.get("reference"), dict)
                  and all(where(dec["reference"].get(s)) for s in ("standard", "gnp")), path,
                  "'cost.reference' must name the stage and config_key of standard and gnp", dec)
            _need(isinstance(dec.get("every"), list) and dec["every"]
                  and all(where(r) and _is_count(r.get("every")) for r in dec["every"]), path,
                  "'cost.every' must be a list of {every, stage, config_key}", dec.get("every"))
            _need(isinstance(dec.get("seeds"), list) and all(_is_count(v) for v in dec["seeds"]), path,
                  "'cost.seeds' must be a list of non-negative integers", dec.get("seeds"))
            continue
        if stage not in DECISION_STAGES:
            raise StudyFolderError(f"{path}: unknown key {stage!r}; expected only the stages "
                                   f"{', '.join(DECISION_STAGES)}, confirm and cost")
        _need(isinstance(dec, dict), path, f"'{stage}' must be a mapping (the stage's decision)", dec)
        if "config_key" in dec:
            _need(isinstance(dec["config_key"], str), path, f"'{stage}.config_key' must be a string",
                  dec["config_key"])
        if "config" in dec:
            _need(isinstance(dec["config"], dict), path, f"'{stage}.config' must be a mapping", dec["config"])
        required = {"sam": ("r",), "gnp": ("alpha", "r")}.get(stage, ())
        for key in ("mean", "std", "alpha", "r"):
            if key in required or dec.get(key) is not None:
                _need(_is_number(dec.get(key)), path, f"'{stage}.{key}' must be a number", dec.get(key))
        for key in ("n", "n_seeds"):
            if key in dec:
                _need(_is_count(dec[key]), path, f"'{stage}.{key}' must be a non-negative integer", dec[key])
        cands = dec.get("candidates", [])
        _need(isinstance(cands, list), path, f"'{stage}.candidates' must be a list", cands)
        for i, cand in enumerate(cands):
            where = f"'{stage}.candidates[{i}]"
            _need(isinstance(cand, dict), path, f"{where}' must be a mapping", cand)
            for key in ("config_key", "mean", "n", "n_seeds"):
                if key not in cand:
                    raise StudyFolderError(f"{path}: {where}' lacks {key!r}")
            _need(isinstance(cand["config_key"], str), path, f"{where}.config_key' must be a string",
                  cand["config_key"])
            for key in ("mean", "std"):
                if cand.get(key) is not None:
                    _need(_is_number(cand[key]), path, f"{where}.{key}' must be a number or null", cand[key])
            for key in ("n", "n_seeds", "n_diverged", "n_failed"):
                if key in cand:
                    _need(_is_count(cand[key]), path, f"{where}.{key}' must be a non-negative integer",
                          cand[key])


def _check_run_info(path: Path, info: dict[str, Any]) -> None:
    """run_info.json: 'stages' maps stage names to mappings of numbers; the rest as the runner writes it."""
    for key in ("stages", "hardware", "versions"):
        if info.get(key) is not None:
            _need(isinstance(info[key], dict), path, f"'{key}' must be a mapping", info[key])
    for key in ("started", "finished", "ray_address"):
        if info.get(key) is not None:
            _need(isinstance(info[key], str), path, f"'{key}' must be a string or null", info[key])
    if info.get("wall_time_s") is not None:
        _need(_is_number(info["wall_time_s"]), path, "'wall_time_s' must be a number", info["wall_time_s"])
    for stage, facts in (info.get("stages") or {}).items():
        _need(isinstance(facts, dict), path, f"'stages.{stage}' must be a mapping", facts)
        for key in ("wall_time_s", "cpu_hours", "gpu_hours"):
            if facts.get(key) is not None:
                _need(_is_number(facts[key]), path, f"'stages.{stage}.{key}' must be a number", facts[key])
        if facts.get("n_trials") is not None:
            _need(_is_count(facts["n_trials"]), path, f"'stages.{stage}.n_trials' must be a non-negative "
                  f"integer", facts["n_trials"])


def _check_columns(path: Path, df: pd.DataFrame, numeric: list[str], text: list[str]) -> None:
    """Numeric columns hold numbers (not booleans, not text); text columns hold strings (or nulls)."""
    if df.empty:
        return
    for col in numeric:
        if col in df.columns and (pd.api.types.is_bool_dtype(df[col])
                                  or not pd.api.types.is_numeric_dtype(df[col])):
            raise StudyFolderError(f"{path}: column {col!r} must hold numbers, found dtype {df[col].dtype}")
    for col in text:
        if col in df.columns:
            bad = df[col][df[col].notna() & ~df[col].map(lambda v: isinstance(v, str))]
            if len(bad):
                raise StudyFolderError(f"{path}: column {col!r} must hold text, found {bad.iloc[0]} "
                                       f"({type(bad.iloc[0]).__name__}) in row {bad.index[0]}")


def load_study(study_dir: str | Path) -> Study:
    """Read a study folder into a :class:`Study`.

    Required: the folder, ``study.yaml`` (a YAML mapping) and ``trials.parquet`` (with the columns of
    :data:`TRIALS_REQUIRED`, and ``best_val_error`` and ``test_error_at_best_val`` for a study in
    validation mode, :func:`selection`). Optional (empty when absent, listed in ``Study.missing``):
    ``decisions.json``, ``epochs.parquet`` (columns :data:`EPOCHS_REQUIRED`), ``run_info.json``,
    ``paper_reference.csv`` (columns scheme, mean, std).

    Args:
        study_dir: the study folder (``reports/<study name>/`` by default).

    Returns:
        The :class:`Study`.

    Raises:
        StudyFolderError: the folder does not exist or holds no study; a required file is missing; any
            present file is corrupt (unparsable), lacks required columns, or parses but holds what the
            outputs cannot read (a column of the wrong type, a decision or a stage's facts that is not a
            mapping, a grid that is not a list of numbers). The message names the file and what is wrong.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise StudyFolderError(f"{root}: no such study folder")
    spec_path, trials_path = root / STUDY_YAML, root / TRIALS_PARQUET
    if not spec_path.exists() and not trials_path.exists():
        raise StudyFolderError(
            f"{root} holds no study: neither {STUDY_YAML} nor {TRIALS_PARQUET} is there "
            f"(run `gnp-study run greedy` with --output {root} first)"
        )
    if not spec_path.exists():
        raise StudyFolderError(f"{spec_path}: missing; the study folder has no resolved spec")
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise StudyFolderError(f"{spec_path}: cannot read YAML ({type(exc).__name__}: {exc})") from exc
    if not isinstance(spec, dict):
        raise StudyFolderError(f"{spec_path}: expected a YAML mapping, found {type(spec).__name__}")
    if not trials_path.exists():
        raise StudyFolderError(f"{trials_path}: missing; no stage of this study has recorded trials yet")
    _check_spec(spec_path, spec)  # before anything reads the spec's sections (selection mode, grids)
    sel = selection(spec)
    trials = read_table(trials_path, required=TRIALS_REQUIRED + (
        [sel.decide_column, sel.report_column] if sel.mode == VALIDATION_MODE else []))

    missing: list[str] = []
    decisions_path = root / DECISIONS_JSON
    if decisions_path.exists():
        decisions = read_json(decisions_path)
    else:
        decisions = {}
        missing.append(DECISIONS_JSON)
    epochs_path = root / EPOCHS_PARQUET
    if epochs_path.exists():
        epochs = read_table(epochs_path, required=EPOCHS_REQUIRED)
    else:
        epochs = pd.DataFrame(columns=EPOCHS_REQUIRED)
        missing.append(EPOCHS_PARQUET)
    info_path = root / RUN_INFO_JSON
    if info_path.exists():
        run_info = read_json(info_path)
    else:
        run_info = {}
        missing.append(RUN_INFO_JSON)
    paper = None
    paper_path = root / PAPER_REFERENCE_CSV
    if paper_path.exists():
        try:
            paper = pd.read_csv(paper_path)
            _paper_rows(paper)
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            raise StudyFolderError(f"{paper_path}: unusable paper reference ({exc})") from exc
    _check_columns(trials_path, trials, numeric=["alpha", "r", "seed", "best_test_error", "diverged_epoch"]
                   + ([sel.decide_column, sel.report_column] if sel.mode == VALIDATION_MODE else []),
                   text=["stage", "config_key", "status", "error"])
    _check_columns(epochs_path, epochs, numeric=["alpha", "r", "seed", "epoch", "test_error", "grad_norm"],
                   text=["stage"])
    _check_decisions(decisions_path, decisions)
    _check_run_info(info_path, run_info)
    return Study(root, spec, decisions, trials, epochs, run_info, paper, missing)


def study_results_table(study: Study, seeds: str = "auto") -> pd.DataFrame:
    """:func:`results_table` of a loaded :class:`Study` (with its paper reference when present), on the
    study's report column (:func:`selection`), scored on the confirmation seeds when the study has them
    (``seeds``: see :func:`scored_on`)."""
    sel = selection(study.spec)
    table = results_table(study.trials, study.decisions, study.paper, metric=sel.report_column, sign=sel.sign,
                          seeds=seeds, decimals=sel.decimals)
    if sel.mode == METRIC_MODE:  # the study's own metric names the table's columns (display_table)
        table.attrs.update(quantity=sel.quantity, unit=sel.unit, decimals=sel.decimals)
    return table


def _verdicts_intro(sel: Selection) -> str:
    """The paragraph above results.md's verdicts: the unit of the differences (percentage points of an
    error, or a study's own metric in its own units), their sign, what "resolved" means."""
    points = ("percentage points of test error" if sel.mode != METRIC_MODE else
              f"percentage points of {sel.name}" if sel.unit == "%" else f"{sel.name}, in its own units")
    first = ("negative means the first has the lower error" if sel.mode != METRIC_MODE else
             f"negative means the first has the lower {sel.name}")
    return (f"Differences are in {points}, paired seed by seed (the same seed gives the same initial weights "
            f"and data order in every configuration); {first}. Resolved: the 95% CI of the paired difference "
            "excludes 0. The stage lines compare the metric each stage decides on"
            + (" (the validation error, as they say)." if sel.mode == VALIDATION_MODE else "."))


def results_markdown(study: Study, table: pd.DataFrame | None = None, sections: list[str] | None = None) -> str:
    """The Markdown text of ``results.md``: heading, the results table, the derived figure, notes.

    Args:
        study: the loaded study.
        table: its :func:`results_table` (computed when None).
        sections: further Markdown lines placed before the notes (the cost stage's section,
            :func:`gnp_study.cost.cost_markdown`).

    Returns:
        Markdown text (GitHub pipe tables, via ``DataFrame.to_markdown``, which needs ``tabulate``).
    """
    table = study_results_table(study) if table is None else table
    data = study.spec.get("data") or {}
    model = (study.spec.get("model") or {}).get("name", "?")
    sel = selection(study.spec)
    verdicts = verdict_lines(study, table)
    metric = ("best test error during training (percent)" if sel.mode == PAPER_MODE else
              "test error at the epoch of the best validation error (percent)" if sel.mode == VALIDATION_MODE else
              f"{sel.quantity} over a trial's epochs ({sel.direction}: {sel.better.split()[0]} is better)")
    lines = [
        f"# Results: {study.name}",
        "",
        f"**{sel.label[0].upper() + sel.label[1:]}.**",
        "",
        f"Data set: {data.get('dataset', '?')} · model: {model} · metric: {metric}, mean ± std over "
        f"seeds (ddof=1; n/a with one seed) and the 95% Student-t CI of the mean, completed seeds only.",
        "",
        *([f"**{label_noise_text(study.spec)}**", ""] if label_noise_text(study.spec) else []),
        *([f"Scored on the {len(study.decisions['confirm'].get('seeds') or [])} confirmation seeds "
           f"({', '.join(str(x) for x in study.decisions['confirm'].get('seeds') or [])}), fresh seeds that no "
           f"decision used; the selection seeds' numbers follow under \"Selection seeds\".", ""]
          if table.attrs.get("seeds") == CONFIRMATION else []),
        display_table(table).to_markdown(index=False, disable_numparse=True),
        "",
        "## Verdicts",
        "",
        _verdicts_intro(sel),
        "",
    ]
    lines += [f"- {v}" for v in verdicts[1:]]
    if any("not resolved" in v and "seeds would resolve" in v for v in verdicts):
        lines.append("- `gnp-study plan STUDY --seeds N` prices a run with N seeds.")
    if table.attrs.get("seeds") == CONFIRMATION:
        lines += ["", "## Selection seeds", "",
                  "The same configurations on the seeds that chose them (each row the best of its stage's grid on "
                  "these seeds: biased towards the scheme chosen from the larger grid; see docs/statistics.md, "
                  "\"Selection and its bias\").", "",
                  display_table(study_results_table(study, SELECTION)).to_markdown(index=False,
                                                                                    disable_numparse=True)]
    races = race_table(study.decisions)
    if len(races):
        lines += ["", "## Race", "",
                  "Racing stages give each candidate a first block of seeds and drop it as soon as a paired test "
                  "says it is worse than the best; eliminated candidates have fewer seeds (gnp_study.racing).",
                  ""]
        lines += [f"- {v}" for v in race_lines(study.decisions)]
        lines += ["", races.to_markdown(index=False, disable_numparse=True)]
    if sections:
        lines += ["", *sections]
    lines += ["", "## Notes", ""]
    if "paper_mean" in table.columns:
        lines.append(f"- Paper: {derived_figure_text(table, 'paper_')}")
    if (table["n"] < table["n_seeds"]).any():
        lines.append("- (n/N): only n of the N seeds completed; the others diverged or failed and are not "
                     "averaged in.")
    if (table["n"] == 1).any():
        lines.append("- n/a: one completed seed gives no standard deviation or confidence interval.")
    undecided = [s for s, _ in SCHEMES if s not in study.decisions]
    if undecided:
        lines.append(f"- Not decided yet: {', '.join(undecided)} (stage not run or not finished).")
    lines.append("- Per-seed values: trials.parquet (one row per trial) holds every number behind this page.")
    return "\n".join(lines) + "\n"


def race_table(decisions: dict[str, Any]) -> pd.DataFrame:
    """One row per candidate of every racing stage (``decisions[stage]["race"]``, written by
    :func:`gnp_study.racing.summary`): stage, race, alpha, r, whether it could be chosen, seeds run, and for
    an eliminated candidate the block and seeds at which it left, why (test or diverged), the mean paired
    difference to the reference (points), the one-sided p-value and the corrected threshold it was held to.

    Returns:
        The table (empty, with its columns, when no stage raced).
    """
    cols = ["stage", "race", "alpha", "r", "choosable", "seeds run", "status", "out at block", "seeds then",
            "reason", "vs reference", "p (one-sided)", "threshold"]
    rows = []
    for stage in ("sam", "gnp"):
        race = (decisions.get(stage) or {}).get("race")
        if not isinstance(race, dict):
            continue
        for r in race.get("races") or []:
            for c in (r.get("candidates") or {}).values():
                out = c.get("status") == "eliminated"
                rows.append({
                    "stage": stage, "race": r.get("name", ""), "alpha": f"{c['alpha']:g}", "r": f"{c['r']:g}",
                    "choosable": "yes" if c.get("selectable") else "no (figure only)",
                    "seeds run": c.get("seeds_run", ""), "status": c.get("status", ""),
                    "out at block": c.get("block", "") if out else "",
                    "seeds then": c.get("n_seeds", "") if out else "",
                    "reason": c.get("reason", "") if out else "",
                    "vs reference": _fmt_value(c.get("diff")) if out and c.get("diff") is not None else "",
                    "p (one-sided)": f"{c['p']:.3g}" if out and c.get("p") is not None else "",
                    "threshold": f"{c['threshold']:.3g}" if out and c.get("threshold") is not None else "",
                })
    return pd.DataFrame(rows, columns=cols)


def race_lines(decisions: dict[str, Any]) -> list[str]:
    """One sentence per racing stage: trials run against the fixed protocol's count, how each race ended,
    and the test (from ``decisions[stage]["race"]``); [] when no stage raced."""
    lines = []
    for stage in ("sam", "gnp"):
        race = (decisions.get(stage) or {}).get("race")
        if not isinstance(race, dict):
            continue
        run, fixed = int(race.get("trials_run", 0)), int(race.get("fixed_trials", 0))
        saved = f"{100 * (1 - run / fixed):.0f}% fewer" if fixed and run <= fixed else "more"
        ends = "; ".join(f"{r.get('name')}: ended ({r.get('end_reason')}) after {r.get('n_seeds')} seeds, "
                         f"{sum(1 for c in (r.get('candidates') or {}).values() if c.get('status') == 'eliminated')}"
                         f" of {len(r.get('candidates') or {})} eliminated"
                         for r in race.get("races") or [])
        lines.append(f"Stage {stage} raced: {run} trials where the fixed protocol runs {fixed} ({saved}); {ends}. "
                     f"Test: {race.get('test', '')}.")
    return lines


def write_tables(study_dir: str | Path) -> dict[str, Path]:
    """Write ``results.md`` and ``results.csv`` into a study folder from its stored tables.

    Args:
        study_dir: the study folder.

    Returns:
        ``{"results.md": path, "results.csv": path}``. The CSV holds every column of
        :func:`results_table` (numbers unrounded); the Markdown holds :func:`display_table` and the
        derived figure in words.

    Raises:
        StudyFolderError: see :func:`load_study`.
    """
    study = load_study(study_dir)
    return write_study_tables(study)


def write_study_tables(study: Study, table: pd.DataFrame | None = None, sections: list[str] | None = None
                       ) -> dict[str, Path]:
    """:func:`write_tables` for an already loaded :class:`Study` (and optionally its computed
    :func:`results_table` and further sections of ``results.md``, see :func:`results_markdown`); same
    return value."""
    table = study_results_table(study) if table is None else table
    md_path, csv_path = study.path / RESULTS_MD, study.path / RESULTS_CSV
    md_path.write_text(results_markdown(study, table, sections), encoding="utf-8")
    sel = selection(study.spec)
    # the "mean ± std" text column is named after what it holds: test_error, or a study's own metric
    csv = table.rename(columns={"test_error": sel.name}) if sel.mode == METRIC_MODE else table
    csv.to_csv(csv_path, index=False)
    return {RESULTS_MD: md_path, RESULTS_CSV: csv_path}
