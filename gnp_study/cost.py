"""The cost stage's answer: what an amortised second pass keeps of GNP's improvement, against its cost.

The cost stage (``stages.cost``, :func:`gnp_study.protocol.plan`) runs the chosen GNP configuration with
the second pass every k optimizer steps (``every = k``, :class:`gnp_study.optim.GNP`; between full steps
the stored penalty direction is reused, after LookSAM, Liu et al. 2022, "Towards Efficient and Scalable
Sharpness-Aware Minimization", CVPR). Its record in ``decisions.json`` (:func:`gnp_study.protocol.cost_record`)
names the trials of each k and of Standard on the same seeds: the confirmation seeds when the study has
them, so that neither side carries the bias of having been chosen on these seeds.

For each k this module pairs, seed by seed (:func:`gnp_study.stats.paired`): GNP(k) - Standard and
GNP(k) - GNP(1); the share of full GNP's improvement that k keeps, (Standard - GNP(k)) / (Standard -
GNP(1)), with Fieller's 95% interval (:func:`gnp_study.stats.ratio`); and the cost, both measured:
forward-backward passes per optimizer step (the trials' ``passes_per_step``) and trial time. Plain pandas:
no Ray, no torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from gnp_study.results import Study, per_seed, selection
from gnp_study.stats import Paired, Ratio, describe, fmt_signed, paired, paired_text, ratio

#: Columns of :func:`cost_table`.
COLUMNS = ["scheme", "every", "n", "n_seeds", "mean", "std", "ci_low", "ci_high", "passes_per_step", "time_s",
           "time_vs_standard", "vs_standard", "vs_standard_low", "vs_standard_high", "vs_standard_resolved",
           "vs_full", "vs_full_low", "vs_full_high", "vs_full_resolved", "kept", "kept_low", "kept_high",
           "kept_bounded"]


def _seeds(series: pd.Series, seeds: list[int]) -> pd.Series:
    return series[series.index.isin(seeds)]


def _trials_of(trials: pd.DataFrame, stage: str, key: str, seeds: list[int]) -> pd.DataFrame:
    return trials[(trials["stage"] == stage) & (trials["config_key"] == key) & trials["seed"].isin(seeds)]


def _passes(epochs: pd.DataFrame, ids: pd.Series) -> float:
    """Mean passes per step over the epochs of the trials ``ids`` (NaN for folders without the column)."""
    if "passes_per_step" not in epochs.columns:
        return math.nan
    v = epochs.loc[epochs["trial_id"].isin(ids), "passes_per_step"].astype(float).to_numpy()
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _values(trials: pd.DataFrame, where: dict, seeds: list[int], metric: str) -> pd.Series:
    return _seeds(per_seed(trials, where["stage"], where["config_key"], metric), seeds)


def _full(rec: dict[str, Any]) -> dict[str, Any]:
    """Where full GNP's trials are: the k = 1 entry, else the reference GNP."""
    return next((r for r in rec["every"] if int(r["every"]) == 1), rec["reference"]["gnp"])


def cost_comparisons(trials: pd.DataFrame, decisions: dict[str, Any], metric: str = "best_test_error"
                     ) -> dict[int, tuple[Paired, Paired, Ratio]]:
    """For each k of the cost stage: (GNP(k) − Standard, GNP(k) − full GNP, share of full GNP's improvement
    kept), paired seed by seed on the cost stage's seeds.

    Args:
        trials: the trials table; decisions: ``decisions.json`` with its ``cost`` record; metric: the
            study's report column.

    Returns:
        ``{k: (Paired, Paired, Ratio)}`` (:func:`gnp_study.stats.paired`, :func:`gnp_study.stats.ratio` of
        the per-seed improvements Standard − GNP(k) over Standard − GNP(1)).

    Raises:
        KeyError: ``decisions`` has no ``cost`` record.
    """
    rec = decisions["cost"]
    seeds = [int(s) for s in rec["seeds"]]
    std = _values(trials, rec["reference"]["standard"], seeds, metric)
    full = _values(trials, _full(rec), seeds, metric)
    out = {}
    for r in rec["every"]:
        vals = _values(trials, r, seeds, metric)
        out[int(r["every"])] = (paired(vals, std), paired(vals, full),
                                ratio(std.sub(vals).dropna(), std.sub(full).dropna()))
    return out


def cost_table(trials: pd.DataFrame, epochs: pd.DataFrame, decisions: dict[str, Any],
               metric: str = "best_test_error",
               comps: dict[int, tuple[Paired, Paired, Ratio]] | None = None) -> pd.DataFrame:
    """One row for Standard and one per k of the cost stage, on the cost stage's seeds.

    Args:
        trials, epochs: the study's tables; decisions: ``decisions.json`` with its ``cost`` record;
        metric: the study's report column (percent error, lower is better); comps: the
            :func:`cost_comparisons` of the same arguments when the caller has them (computed here if None).

    Returns:
        DataFrame with :data:`COLUMNS`: ``mean``/``std``/``ci_low``/``ci_high`` of the metric over the
        completed seeds (95% Student-t CI), ``passes_per_step`` (measured mean), ``time_s`` (mean trial wall
        time, seconds) and ``time_vs_standard`` (its ratio to Standard's); for the GNP rows the paired
        differences to Standard and to full GNP (k = 1) with their 95% CIs and whether they are resolved,
        and ``kept``, the share of full GNP's improvement over Standard that k keeps, with Fieller's 95%
        interval (``kept_bounded`` False: full GNP's improvement is not resolved from 0, no interval).
        ``attrs["seeds"]``: the seeds.

    Raises:
        KeyError: ``decisions`` has no ``cost`` record.
    """
    rec = decisions["cost"]
    seeds = [int(s) for s in rec["seeds"]]
    if comps is None:
        comps = cost_comparisons(trials, decisions, metric)
    std_where = rec["reference"]["standard"]
    std_trials = _trials_of(trials, std_where["stage"], std_where["config_key"], seeds)
    std_time = float(std_trials.loc[std_trials["status"] == "completed", "wall_time_s"].mean())

    def row(scheme, every, where):
        vals = _values(trials, where, seeds, metric)
        t = _trials_of(trials, where["stage"], where["config_key"], seeds)
        d = describe(vals.to_numpy()) if len(vals) else None
        time_s = float(t.loc[t["status"] == "completed", "wall_time_s"].mean()) if len(t) else math.nan
        out = {"scheme": scheme, "every": every, "n": len(vals), "n_seeds": len(seeds),
               "mean": d.mean if d else math.nan, "std": d.std if d else math.nan,
               "ci_low": d.ci_low if d else math.nan, "ci_high": d.ci_high if d else math.nan,
               "passes_per_step": _passes(epochs, t["trial_id"]), "time_s": time_s,
               "time_vs_standard": time_s / std_time if std_time > 0 else math.nan}
        if scheme == "GNP":
            p_std, p_full, q = comps[every]
            for name, p in (("vs_standard", p_std), ("vs_full", p_full)):
                out.update({name: p.diff, f"{name}_low": p.ci_low, f"{name}_high": p.ci_high,
                            f"{name}_resolved": bool(p.resolved)})
            out.update(kept=q.estimate, kept_low=q.ci_low, kept_high=q.ci_high, kept_bounded=q.bounded)
        return out

    rows = [row("Standard", math.nan, std_where)]
    rows += [row("GNP", int(r["every"]), r) for r in rec["every"]]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["seeds"] = seeds
    return table


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%" if math.isfinite(v) else "n/a"


def cost_lines(table: pd.DataFrame, comps: dict[int, tuple[Paired, Paired, Ratio]]) -> list[str]:
    """The cost stage's verdicts in words, one sentence per k.

    Args:
        table: :func:`cost_table` output; comps: :func:`cost_comparisons` output.

    Returns:
        Sentences (no Markdown), e.g. "GNP every 5 steps (1.20 passes per step, 0.62x Standard's trial
        time): GNP(5) − Standard = −1.10 points, 95% CI ...: resolved (...); GNP(5) − full GNP = +0.20
        points ...: not resolved (...); keeps 85% of full GNP's improvement over Standard (95% CI 60% to
        110%)."
    """
    lines = []
    for r in table[table["scheme"] == "GNP"].itertuples():
        k = int(r.every)
        p_std, p_full, q = comps[k]
        passes = f"{r.passes_per_step:.2f}" if math.isfinite(r.passes_per_step) else "n/a"
        time = f"{r.time_vs_standard:.2f}x" if math.isfinite(r.time_vs_standard) else "n/a"
        head = f"GNP every {k} step{'s' if k != 1 else ''} ({passes} passes per step, {time} Standard's trial time)"
        if k == 1:
            lines.append(f"{head}, full GNP: " + paired_text("GNP", "Standard", p_std) + ".")
            continue
        text = (f"{head}: " + paired_text(f"GNP({k})", "Standard", p_std) + "; "
                + paired_text(f"GNP({k})", "full GNP", p_full) + "; ")
        if q.bounded:
            text += (f"keeps {_pct(q.estimate)} of full GNP's improvement over Standard (95% CI "
                     f"{_pct(q.ci_low)} to {_pct(q.ci_high)}).")
        else:
            text += (f"keeps {_pct(q.estimate)} of full GNP's improvement over Standard as a point estimate, "
                     f"with no confidence interval: full GNP's improvement is not resolved from 0 on these seeds.")
        lines.append(text)
    return lines


def display_cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """The human-facing columns of :func:`cost_table`, formatted for Markdown and HTML."""

    def ci(lo, hi):
        return f"{fmt_signed(lo)} to {fmt_signed(hi)}" if math.isfinite(lo) and math.isfinite(hi) else ""

    rows = []
    for r in table.itertuples():
        rows.append({
            "scheme": r.scheme if r.scheme == "Standard" else f"GNP every {int(r.every)}",
            "error (mean ± std)": f"{r.mean:.2f} ± {r.std:.2f}" if math.isfinite(r.std) else f"{r.mean:.2f}",
            "95% CI": f"{r.ci_low:.2f} to {r.ci_high:.2f}" if math.isfinite(r.ci_low) else "n/a",
            "n": f"{r.n}/{r.n_seeds}",
            "passes/step": f"{r.passes_per_step:.2f}" if math.isfinite(r.passes_per_step) else "n/a",
            "time vs Standard": f"{r.time_vs_standard:.2f}x" if math.isfinite(r.time_vs_standard) else "n/a",
            "− Standard (95% CI)": "" if r.scheme == "Standard" else ci(r.vs_standard_low, r.vs_standard_high),
            "− full GNP (95% CI)": "" if r.scheme == "Standard" or r.every == 1 else ci(r.vs_full_low, r.vs_full_high),
            "share kept (95% CI)": "" if r.scheme == "Standard" or r.every == 1 else (
                f"{_pct(r.kept)} ({_pct(r.kept_low)} to {_pct(r.kept_high)})" if r.kept_bounded else
                f"{_pct(r.kept)} (unbounded)"),
        })
    return pd.DataFrame(rows)


def study_cost(study: Study) -> tuple[pd.DataFrame, dict[int, tuple[Paired, Paired, Ratio]]] | None:
    """(:func:`cost_table`, :func:`cost_comparisons`) of a loaded study on its report column, or None when
    the study has no cost record (no cost stage, or not run yet)."""
    if not isinstance(study.decisions.get("cost"), dict):
        return None
    metric = selection(study.spec).report_column
    comps = cost_comparisons(study.trials, study.decisions, metric)
    return cost_table(study.trials, study.epochs, study.decisions, metric, comps), comps


def cost_markdown(study: Study, got: tuple[pd.DataFrame, dict[int, tuple[Paired, Paired, Ratio]]] | None
                  = None) -> list[str]:
    """The "Cost of the second pass" section of ``results.md`` (Markdown lines; empty without a cost
    record): the seeds, :func:`display_cost_table` and :func:`cost_lines`. ``got``: the study's
    :func:`study_cost` when the caller has it (computed here if None)."""
    if got is None:
        got = study_cost(study)
    if got is None:
        return []
    table, comps = got
    seeds = table.attrs["seeds"]
    source = ("the confirmation seeds" if study.decisions["cost"]["reference"]["gnp"]["stage"] == "confirm"
              else "the selection seeds (biased towards full GNP, which was chosen on them)")
    return ["## Cost of the second pass", "",
            f"The chosen GNP configuration with the second pass every k steps (the stored penalty direction "
            f"reused in between), paired with Standard and full GNP on {len(seeds)} seeds, {source}: "
            f"{', '.join(str(s) for s in seeds)}. Passes per step and trial time are measured. "
            f"Figure: figure_cost.png.", "",
            display_cost_table(table).to_markdown(index=False, disable_numparse=True), "",
            *[f"- {line}" for line in cost_lines(table, comps)]]
