"""Figures 2-3 and the self-contained HTML report of a study folder, rebuilt from its stored tables.

Everything here works on a loaded :class:`gnp_study.results.Study` (plain pandas / dicts): no Ray, no torch,
no training. Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot
state, safe in headless processes).

Public API:
    figure2(study, error_bars) -> Figure   test error against alpha, one panel per Figure-2 r and the best r
                                    (paper Figure 2); bars and band: 95% CI (default) or ± 1 std
    save_figure2(study, path, error_bars) -> Path
    figure3(study) -> Figure        norm(g1) and test error against epoch for the Figure-3 alphas (Figure 3)
    save_figure3(study, path) -> Path
    render_report(study_dir, out=None, error_bars) -> Path    report.html, one file, figures embedded
    build_outputs(study_dir, error_bars) -> dict[str, Path]   results.md/csv, figure2.png, figure3.png,
                                                              report.html (figure_cost.png with a cost stage)
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display is ever needed (a no-op when already Agg)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from gnp_study.cost import cost_lines, cost_markdown, display_cost_table, study_cost  # noqa: E402
from gnp_study.cost_figure import figure_cost  # noqa: E402
from gnp_study.study_folder import FIGURE2_PNG, FIGURE3_PNG, FIGURE_COST_PNG, REPORT_HTML  # noqa: E402
from gnp_study.stats import fmt_signed  # noqa: E402
from gnp_study.results import (  # noqa: E402
    CONFIRMATION,
    METRIC_MODE,
    PAPER_MODE,
    SELECTION,
    SCHEMES,
    VALIDATION_MODE,
    Study,
    label_noise_text,
    prob_best_text,
    selection,
    verdict_lines,
    write_study_tables,
    aggregate_seeds,
    derived_figure_text,
    display_table,
    load_study,
    number_style,
    race_lines,
    worse_by,
    race_table,
    study_results_table,
)

#: Resolution of the saved PNGs (dots per inch); pixel size = figure size in inches x FIG_DPI.
FIG_DPI = 100
#: Size of one Figure-2 panel, inches (width, height); the figure is n_panels x this wide.
FIG2_PANEL_SIZE = (5.2, 4.4)
#: Extra height of Figure 2 for the shared legend, inches.
FIG2_LEGEND_HEIGHT = 0.7
#: Size of Figure 3, inches (two panels side by side).
FIG3_SIZE = (12.0, 4.8)
#: The paper's colours (Figure 2: standard green, SAM orange; Figure 3: B_b purple, alpha=0.8 red).
COLORS = {"gnp": "tab:blue", "standard": "tab:green", "sam": "tab:orange", "diverged": "tab:red",
          "failed": "dimgray", "chosen": "0.45", "tied": "goldenrod", "eliminated": "0.55"}
#: Legend text of a candidate a racing stage eliminated (drawn grey, hollow triangle, its seed count beside).
ELIMINATED_LABEL = "eliminated by the race (fewer seeds)"
#: Error bars and bands of Figure 2: 95% Student-t CI of the mean over seeds, or ± 1 std over seeds.
ERROR_BARS = ("ci", "std")
#: Legend text of each kind of error bar.
ERROR_BAR_LABELS = {"ci": "95% CI of the mean over seeds (Student t)", "std": "± 1 std over seeds"}
#: Legend text of the ring drawn around the chosen alpha and the alphas not distinguishable from it.
TIED_LABEL = ("chosen alpha and alphas tied with it\n(paired 95% CI of the difference in the error\nstage 3 decides on includes 0)")
#: The paper's extra alpha set B_b (Section 4.1, parameter study), used when the spec has no
#: figure3_alpha.
B_B_DEFAULT = (1.1, 1.2, 1.3, 1.5, 2.0)


def _tied_label(metric: str | None) -> str:
    """:data:`TIED_LABEL` for a gnp decision on ``metric`` (its ``decisions.json`` column): the paper's
    errors keep "the error"; a study's own metric is named ("the test_loss")."""
    if number_style(metric)[1]:  # an error in percent
        return TIED_LABEL
    return TIED_LABEL.replace("the error", f"the {str(metric).removeprefix('best_')}")
#: Height (axes fraction) where all-seeds-diverged alphas are marked in Figure 2.
DIVERGED_Y = 0.95

_TEMPLATES = Path(__file__).parent / "templates"
_FIG2_LEGEND_ORDER = ("Standard (alpha = 0)", "SAM (alpha = 1)", "GNP (basic alpha set)", "GNP (extra sets B_a, B_b)",
                      ERROR_BAR_LABELS["ci"], ERROR_BAR_LABELS["std"], "chosen alpha (GNP row)", TIED_LABEL,
                      "diverged (all seeds)", "no completed seed (failed)", ELIMINATED_LABEL)


def _eliminated(study: Study) -> dict[str, dict]:
    """config_key -> race entry (``decisions[stage]["race"]``) of every candidate a racing stage
    eliminated; {} when no stage raced."""
    out = {}
    for stage in ("sam", "gnp"):
        race = (study.decisions.get(stage) or {}).get("race")
        for r in (race or {}).get("races") or [] if isinstance(race, dict) else []:
            for key, c in (r.get("candidates") or {}).items():
                if isinstance(c, dict) and c.get("status") == "eliminated":
                    out[key] = c
    return out


def _as_study(study: Study | str | Path) -> Study:
    return study if isinstance(study, Study) else load_study(study)


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _select(df: pd.DataFrame, stage: str, r: float | None = None, alpha: float | None = None) -> pd.DataFrame:
    """Rows of one stage, optionally at one r and one alpha (float-tolerant)."""
    mask = df["stage"] == stage
    if r is not None:
        mask &= np.isclose(df["r"].astype(float), float(r), rtol=1e-9, atol=1e-12)
    if alpha is not None:
        mask &= np.isclose(df["alpha"].astype(float), float(alpha), rtol=1e-9, atol=1e-12)
    return df[mask]


def _metric(study: Study) -> str:
    """The trials column the figures show: the study's report column (``best_test_error`` in paper mode,
    ``test_error_at_best_val`` in validation mode)."""
    return selection(study.spec).report_column


def _chosen_standard(study: Study) -> pd.Series | None:
    """The aggregated row of the chosen standard configuration, or None when not decided/not in trials."""
    key = (study.decisions.get("standard") or {}).get("config_key")
    if key is None:
        return None
    agg = aggregate_seeds(study.trials[(study.trials["stage"] == "standard") & (study.trials["config_key"] == key)],
                          _metric(study))
    return agg.iloc[0] if len(agg) else None


def _sam_at(study: Study, r: float) -> pd.Series | None:
    """The aggregated SAM (alpha = 1) configuration at radius r from the sam stage, or None."""
    agg = aggregate_seeds(_select(study.trials, "sam", r=r), _metric(study))
    if agg.empty:
        return None
    key = (study.decisions.get("sam") or {}).get("config_key")
    if key in set(agg["config_key"]):
        return agg[agg["config_key"] == key].iloc[0]
    return agg.sort_values(["n", "mean"], ascending=[False, True]).iloc[0]


def best_r(study: Study) -> float | None:
    """The best r of stage 2 (the sam decision's r; the r of the chosen GNP row), or None before it."""
    r = (study.decisions.get("sam") or {}).get("r")
    return None if r is None else float(r)


def figure2_radii(study: Study) -> tuple[list[float], str]:
    """The r values of Figure 2's panels and a note on where they came from.

    Returns ``spec.stages.gnp.figure2_r`` when given, plus the best r of stage 2 when it is not one of them
    and the gnp stage has trials at it (stage 3 runs the alpha grid at the best r: the chosen GNP row
    lives there), in increasing r; else the chosen r of the gnp (or sam) decision; else every r of the gnp
    stage's trials. The note is "" in the first case.
    """
    radii = [float(r) for r in (study.stage_spec("gnp").get("figure2_r") or [])]
    if radii:
        b = best_r(study)
        if b is not None and not any(_close(b, r) for r in radii) and len(_select(study.trials, "gnp", r=b)):
            radii = sorted(radii + [b])
        return radii, ""
    for stage in ("gnp", "sam"):
        r = (study.decisions.get(stage) or {}).get("r")
        if r is not None:
            return [float(r)], f"no figure2_r in the spec: showing the chosen r of the {stage} stage"
    rs = sorted(set(_select(study.trials, "gnp")["r"].astype(float)))
    return rs, "no figure2_r in the spec: showing every r of the gnp stage"


def _check_error_bars(error_bars: str) -> str:
    if error_bars not in ERROR_BARS:
        raise ValueError(f"error_bars must be one of {', '.join(ERROR_BARS)}, got {error_bars!r}")
    return error_bars


def figure2(study: Study | str | Path, error_bars: str = "ci") -> Figure:
    """Paper Figure 2: best test error against alpha, one panel per r in ``stages.gnp.figure2_r`` and one
    for the best r of stage 2 when it is not among them (:func:`figure2_radii`).

    Each panel shows, at its r: the gnp stage's configurations (mean over completed seeds with error bars,
    a band along the curve; the basic alpha set filled, the extra sets B_a / B_b hollow), the
    chosen Standard configuration at alpha = 0 (green) and the sam stage's trials at that r at alpha = 1
    (orange). An alpha whose seeds all diverged is drawn as a red "x" at the top of the axes (legend
    "diverged (all seeds)"), one whose seeds all failed as a grey "x"; partly completed points are
    labelled "n/n_seeds". The chosen alpha is marked by a dotted vertical line on the chosen r's panel,
    and a ring (:data:`TIED_LABEL`) is drawn around it and around every alpha the gnp decision lists as
    not distinguishable from it (``decisions.json`` ``indistinguishable``), so the eye sees the tie.
    Error bars and band: the 95% Student-t CI of the mean (``"ci"``) or ± 1 std (``"std"``), both over
    the completed seeds; a point with one completed seed has no bar (its spread is unknown). The values
    are the study's report column (:func:`gnp_study.results.selection`). Missing parts (a stage not run,
    no trials at an r) are drawn as far as they exist and named in the panel title; a panel with nothing
    to draw says so in its middle.

    Args:
        study: a loaded :class:`Study` or its folder.
        error_bars: ``"ci"`` (default) or ``"std"``.

    Returns:
        The Figure; its axes ``fig.axes[:n_panels]`` correspond to the panels in r order, its pixel size
        at :data:`FIG_DPI` is ``(max(n_panels, 1.6) * 5.2 * 100, (4.4 + 0.7) * 100)``.

    Raises:
        StudyFolderError: when given a folder that holds no readable study.
        ValueError: ``error_bars`` is not one of :data:`ERROR_BARS`.
    """
    _check_error_bars(error_bars)
    study = _as_study(study)
    radii, radii_note = figure2_radii(study)
    fig, axes = _figure2_canvas(max(len(radii), 1))
    if not radii:
        _blank_axes(axes[0], "no gnp trials and no figure2_r:\nnothing to plot yet")
        axes[0].set_title("Figure 2: no data")
    handles = _draw_figure2_panels(axes, study, radii, error_bars)
    if handles:
        _figure2_legend(fig, handles, len(axes))
    fig.suptitle(_figure2_suptitle(fig, study, error_bars, radii_note), fontsize=11)
    return fig


def _figure2_canvas(n_panels: int) -> tuple[Figure, Any]:
    """A Figure-2 figure of ``n_panels`` panels side by side (:data:`FIG2_PANEL_SIZE` each, one panel alone
    widened so that the title and the legend below it are not clipped, plus :data:`FIG2_LEGEND_HEIGHT`) on
    an Agg canvas. Returns the figure and its row of axes."""
    width, height = FIG2_PANEL_SIZE
    fig = Figure(figsize=(width * max(n_panels, 1.6), height + FIG2_LEGEND_HEIGHT), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def _draw_figure2_panels(axes, study: Study, radii: list[float], error_bars: str) -> dict[str, Any]:
    """Draw and title the Figure-2 panel of each r of ``radii`` on ``axes`` (in order; :func:`_figure2_panel`).
    Returns the legend handles they collected (label -> artist, first drawn first)."""
    extra = {round(float(a), 9) for a in (study.stage_spec("gnp").get("alpha_extra") or [])}
    std_row = _chosen_standard(study)
    gnp_dec = study.decisions.get("gnp") or {}
    handles: dict[str, Any] = {}
    for ax, r in zip(axes, radii):
        notes = _figure2_panel(ax, study, r, std_row, extra, gnp_dec, handles, error_bars)
        ax.set_title(_figure2_panel_title(study, r, notes), fontsize=10)
    return handles


def _figure2_panel_title(study: Study, r: float, notes: list[str]) -> str:
    """The title of the Figure-2 panel at r: "r = 0.05", "(best r of stage 2)" on that panel (", not a
    figure2_r" when the spec's figure2_r lacks it), and the panel's ``notes`` on a second line."""
    b_r = best_r(study)
    in_f2 = [float(x) for x in (study.stage_spec("gnp").get("figure2_r") or [])]
    title = f"r = {r:g}"
    if b_r is not None and _close(r, b_r):
        title += " (best r of stage 2" + ("" if any(_close(r, x) for x in in_f2) or not in_f2
                                          else ", not a figure2_r") + ")"
    if notes:
        title += "\n(" + "; ".join(notes) + ")"
    return title


def _figure2_legend(fig: Figure, handles: dict[str, Any], n_panels: int) -> None:
    """Draw Figure 2's shared legend below the panels: ``handles`` (label -> artist) in
    :data:`_FIG2_LEGEND_ORDER`, in up to 3 columns (4 with more than two panels). Returns None."""
    order = {label: i for i, label in enumerate(_FIG2_LEGEND_ORDER)}
    tied_prefix = TIED_LABEL.split("\n")[0]  # the ring's label names the metric (_tied_label)
    handles = dict(sorted(handles.items(), key=lambda kv: order.get(
        TIED_LABEL if kv[0].startswith(tied_prefix) else kv[0], len(order))))
    ncols = min(len(handles), 4 if n_panels > 2 else 3)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=ncols, fontsize=9 if n_panels > 1 else 8, frameon=False)


def _figure2_suptitle(fig: Figure, study: Study, error_bars: str, radii_note: str) -> str:
    """Figure 2's title: the study, what is plotted (the report column), the data set and model and the
    kind of error bar, wrapped to the figure's width, and ``radii_note`` (:func:`figure2_radii`) on a last
    line when not empty."""
    data = study.spec.get("data") or {}
    model = (study.spec.get("model") or {}).get("name", "?")
    sel = selection(study.spec)
    what = ("best test error" if sel.mode == PAPER_MODE else sel.quantity.removesuffix(" (%)")
            if sel.mode == METRIC_MODE else "test error at best validation epoch")
    bars = "95% CI of the mean" if error_bars == "ci" else "± 1 std"
    sup = f"{study.name}: {what} vs alpha ({data.get('dataset', '?')}, {model}), mean and {bars} over seeds"
    # One panel is narrow: wrap the title to the figure's width instead of letting it run off both sides.
    sup = "\n".join(textwrap.wrap(sup, width=int(fig.get_figwidth() * 12)))
    if radii_note:
        sup += "\n" + radii_note
    return sup


def _bar(row, error_bars: str) -> float:
    """Half-length of a point's error bar: the CI half-width or the std; NaN when unknown (n < 2)."""
    if error_bars == "ci":
        return float(row["ci_high"]) - float(row["mean"])
    return float(row["std"])


def _figure2_panel(ax, study: Study, r: float, std_row, extra: set, gnp_dec: dict, handles: dict,
                   error_bars: str = "ci") -> list[str]:
    """Draw one Figure-2 panel at radius r; returns notes on what is missing.

    Takes the panel's axes, the study, r, the aggregated chosen Standard row (or None), the extra alphas
    (rounded to 9 digits), the gnp decision ({} before it) and the figure's legend handles (label ->
    artist, filled in place), and the kind of error bar. Draws the points of :func:`_figure2_points` (the
    curve, each point by what became of it, the chosen alpha) and formats the axes; a panel without any
    point says so in its middle.
    """
    gnp, points, notes = _figure2_points(study, r, std_row, extra)
    if not points:
        _blank_axes(ax, f"no trials at r = {r:g} yet")
        return notes
    _draw_alpha_curve(ax, r, points, handles, error_bars)
    xform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    eliminated = _eliminated(study)
    for a, row, kind in points:
        n = int(row["n"])
        measured = n > 0 and math.isfinite(float(row["mean"]))
        if measured and row.get("config_key") in eliminated:
            _draw_eliminated_point(ax, a, row, handles, error_bars)
        elif measured:
            _draw_measured_point(ax, a, row, kind, handles, error_bars)
        else:
            _draw_unmeasured_mark(ax, a, row, xform, handles)
    _draw_chosen_alpha(ax, r, gnp, gnp_dec, handles)
    _format_figure2_axes(ax, study, points)
    return notes


def _figure2_points(study: Study, r: float, std_row, extra: set) -> tuple[pd.DataFrame, list, list[str]]:
    """The data of one Figure-2 panel at radius r.

    Takes the study, r, the aggregated chosen Standard row (:func:`_chosen_standard`, or None) and the
    extra alphas (rounded to 9 digits). Returns the gnp stage's configurations at r
    (:func:`gnp_study.results.aggregate_seeds` rows, by alpha), the points along alpha as
    ``(alpha, aggregated row, kind)`` sorted by alpha (kind ``"standard"`` at 0, ``"sam"`` at 1, ``"gnp"``
    or ``"extra"``), and the panel's notes on what is missing.
    """
    notes: list[str] = []
    gnp = aggregate_seeds(_select(study.trials, "gnp", r=r), _metric(study))
    gnp = gnp.assign(alpha=gnp["alpha"].astype(float)).sort_values("alpha") if len(gnp) else gnp
    sam_row = _sam_at(study, r)
    if std_row is None:
        notes.append("standard not decided yet" if "standard" not in study.decisions else "no standard trials")
    if sam_row is None:
        notes.append("sam stage not run" if not len(_select(study.trials, "sam")) else f"no SAM trial at r={r:g}")
    if gnp.empty:
        notes.append("gnp stage not run" if not len(_select(study.trials, "gnp")) else f"no GNP trials at r={r:g}")

    points = []
    if std_row is not None:
        points.append((0.0, std_row, "standard"))
    for _, row in gnp.iterrows():
        points.append((float(row["alpha"]), row, "extra" if round(float(row["alpha"]), 9) in extra else "gnp"))
    if sam_row is not None:
        points.append((1.0, sam_row, "sam"))
    points.sort(key=lambda p: p[0])
    return gnp, points, notes


def _blank_axes(ax, text: str) -> None:
    """Write ``text`` in the middle of an axes that has nothing to draw and remove its ticks; returns None."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _finite_bar(row, error_bars: str) -> float:
    """:func:`_bar` of an aggregated row, 0.0 where it is unknown (NaN: fewer than two completed seeds)."""
    s = _bar(row, error_bars)
    return s if math.isfinite(s) else 0.0


def _draw_alpha_curve(ax, r: float, points: list, handles: dict, error_bars: str) -> None:
    """Draw the curve over alpha of a Figure-2 panel and set its y range.

    Takes the axes, the panel's r, its points (:func:`_figure2_points`), the legend handles (label ->
    artist, filled in place) and the kind of error bar. Draws the band and the line through the points
    with a completed seed when a GNP point is among them (not from the two baselines alone, which would
    suggest values never measured in between), and sets the y limits with head-room for the row of
    "diverged" marks; with no completed point, an empty y axis and a note. Returns None.
    """
    ok = [(a, float(row["mean"]), _finite_bar(row, error_bars))
          for a, row, _ in points if int(row["n"]) > 0 and math.isfinite(float(row["mean"]))]
    has_marks = any(int(row["n"]) == 0 for _, row, _ in points)
    if not ok:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, f"no seed completed at r = {r:g}", ha="center", va="center", transform=ax.transAxes)
        return
    xa = np.array([p[0] for p in ok])
    ya = np.array([p[1] for p in ok])
    sa = np.array([p[2] for p in ok])
    if any(kind in ("gnp", "extra") and int(row["n"]) > 0 for _, row, kind in points):
        # the curve over alpha (Standard and SAM are its alpha = 0 and 1 points)
        ax.fill_between(xa, ya - sa, ya + sa, color=COLORS["gnp"], alpha=0.15, linewidth=0)
        ax.plot(xa, ya, color=COLORS["gnp"], linewidth=1.2, zorder=2)
        handles.setdefault(ERROR_BAR_LABELS[error_bars],
                           ax.fill_between([], [], [], color=COLORS["gnp"], alpha=0.15))
    lo, hi = float(np.min(ya - sa)), float(np.max(ya + sa))
    span = max(hi - lo, 0.05 * max(abs(hi), 1.0))
    # head-room for the row of "diverged" markers at the top
    ax.set_ylim(lo - 0.1 * span, hi + (0.35 if has_marks else 0.1) * span)


#: Marker, colours and legend text of each kind of Figure-2 point with a completed seed.
_FIG2_STYLES = {
    "gnp": dict(marker="o", color=COLORS["gnp"], mfc=COLORS["gnp"], label="GNP (basic alpha set)"),
    "extra": dict(marker="o", color=COLORS["gnp"], mfc="white", label="GNP (extra sets B_a, B_b)"),
    "standard": dict(marker="s", color=COLORS["standard"], mfc=COLORS["standard"], label="Standard (alpha = 0)"),
    "sam": dict(marker="D", color=COLORS["sam"], mfc=COLORS["sam"], label="SAM (alpha = 1)"),
}


def _draw_eliminated_point(ax, a: float, row, handles: dict, error_bars: str) -> None:
    """Draw a candidate a racing stage eliminated at alpha ``a`` (its aggregated ``row``): a grey hollow
    triangle with a dashed error bar and its seed count below; adds :data:`ELIMINATED_LABEL` to ``handles``.
    Returns None."""
    s = _finite_bar(row, error_bars)
    cont = ax.errorbar([a], [float(row["mean"])], yerr=[s] if s > 0 else None, fmt="^",
                       color=COLORS["eliminated"], mfc="white", mec=COLORS["eliminated"], ms=7, capsize=3,
                       zorder=4, linestyle="none")
    if s > 0:
        cont[2][0].set_linestyle("--")
    handles.setdefault(ELIMINATED_LABEL, cont)
    ax.annotate(f"{int(row['n_seeds'])} seeds", (a, float(row["mean"]) - s), textcoords="offset points",
                xytext=(0, -4), ha="center", va="top", fontsize=7, color=COLORS["eliminated"])


def _draw_measured_point(ax, a: float, row, kind: str, handles: dict, error_bars: str) -> None:
    """Draw a point with a completed seed at alpha ``a`` (its aggregated ``row``) in the style of its
    ``kind`` (:data:`_FIG2_STYLES`) with its error bar, and "n/n_seeds" above it when some seeds did not
    complete; adds the kind's legend entry to ``handles``. Returns None."""
    n, n_seeds = int(row["n"]), int(row["n_seeds"])
    st = _FIG2_STYLES[kind]
    s = _finite_bar(row, error_bars)
    cont = ax.errorbar([a], [float(row["mean"])], yerr=[s] if s > 0 else None, fmt=st["marker"],
                       color=st["color"], mfc=st["mfc"], mec=st["color"], ms=6, capsize=3, zorder=4)
    handles.setdefault(st["label"], cont)
    if n < n_seeds:  # above the error bar's cap
        ax.annotate(f"{n}/{n_seeds}", (a, float(row["mean"]) + s), textcoords="offset points",
                    xytext=(0, 4), ha="center", va="bottom", fontsize=7, color=st["color"])


def _draw_unmeasured_mark(ax, a: float, row, xform, handles: dict) -> None:
    """Mark an alpha with no completed seed: an "x" at :data:`DIVERGED_Y` (axes fraction, ``xform`` the
    axes' x-axis transform), red when every seed diverged, grey when some failed, with a note below it;
    adds its legend entry to ``handles``. Returns None."""
    all_div = int(row["n_diverged"]) == int(row["n_seeds"])
    key = "diverged" if all_div else "failed"
    label = "diverged (all seeds)" if all_div else "no completed seed (failed)"
    (line,) = ax.plot([a], [DIVERGED_Y], linestyle="none", marker="x", ms=9, mew=2.2,
                      color=COLORS[key], transform=xform, clip_on=False, zorder=5, label=label)
    handles.setdefault(label, line)
    ax.annotate(f"{key}\nalpha={a:g}", (a, DIVERGED_Y), xycoords=xform, textcoords="offset points",
                xytext=(0, -9), ha="center", va="top", fontsize=7, color=COLORS[key])


def _draw_chosen_alpha(ax, r: float, gnp: pd.DataFrame, gnp_dec: dict, handles: dict) -> None:
    """On the panel of the gnp decision's r: a dotted vertical line at the chosen alpha and, when the
    decision lists ``indistinguishable`` candidates, a ring (:data:`TIED_LABEL`) around the chosen alpha and
    those tied with it among ``gnp`` (the panel's aggregated configurations); adds their legend entries to
    ``handles``. Nothing on the other panels. Returns None."""
    if gnp_dec.get("r") is None or not _close(gnp_dec["r"], r) or gnp_dec.get("alpha") is None:
        return
    chosen = float(gnp_dec["alpha"])
    line = ax.axvline(chosen, color=COLORS["chosen"], linestyle=":", linewidth=1.2, zorder=1)
    handles.setdefault("chosen alpha (GNP row)", line)
    if "indistinguishable" not in gnp_dec:
        return
    tied = set(gnp_dec.get("indistinguishable") or []) | {gnp_dec.get("config_key")}
    ring = [(float(row["alpha"]), float(row["mean"])) for _, row in gnp.iterrows()
            if row["config_key"] in tied and int(row["n"]) > 0 and math.isfinite(float(row["mean"]))]
    if ring:
        (halo,) = ax.plot([x for x, _ in ring], [y for _, y in ring], linestyle="none", marker="o", ms=14,
                          mfc="none", mec=COLORS["tied"], mew=2.2, zorder=3, label=_tied_label(gnp_dec.get("metric")))
        handles.setdefault(halo.get_label(), halo)


def _format_figure2_axes(ax, study: Study, points: list) -> None:
    """Set a Figure-2 panel's x range (the planned alpha grid, its extras and [0, 1], even when stages are
    missing, and the drawn ``points``), its axis labels (the study's report column) and grid. Returns
    None."""
    gspec = study.stage_spec("gnp")
    xs = [0.0, 1.0] + [float(a) for a in list(gspec.get("alpha") or []) + list(gspec.get("alpha_extra") or [])]
    xs += [p[0] for p in points]
    xspan = max(xs) - min(xs)
    ax.set_xlim(min(xs) - 0.06 * xspan, max(xs) + 0.06 * xspan)
    ax.set_xlabel("alpha (balance coefficient)")
    sel = selection(study.spec)
    ax.set_ylabel("best test error (%)" if sel.mode == PAPER_MODE else sel.quantity if sel.mode == METRIC_MODE
                  else "test error at best val. epoch (%)")
    ax.grid(True, alpha=0.3)


def save_figure2(study: Study | str | Path, path: str | Path, error_bars: str = "ci") -> Path:
    """Draw :func:`figure2` (``error_bars`` "ci" or "std") and save it as a PNG at :data:`FIG_DPI`; returns
    the path."""
    return _save(figure2(study, error_bars), path)


def figure3_setting(study: Study) -> tuple[float | None, list[float], str]:
    """The r and alphas of Figure 3 and a note on where r came from.

    r is the GNP decision's r (the chosen r); before the gnp stage has decided, the SAM decision's r (the r
    the gnp stage runs at), else the first Figure-2 r. Alphas are ``stages.gnp.figure3_alpha``; when that
    is empty or null, the paper's Figure 3 among the alphas stage 3 runs: those above 1 (B_b) and 0.8;
    when it runs none of them, the chosen alpha (before the gnp decision: every alpha it runs); with no
    grid in the spec, B_b + [0.8].
    """
    gnp = study.stage_spec("gnp")
    alphas = gnp.get("figure3_alpha")
    if not alphas:  # the spec's default: the B_b values in the grid (alpha > 1) and 0.8, when run
        grid = [float(a) for a in list(gnp.get("alpha") or []) + list(gnp.get("alpha_extra") or [])]
        alphas = [a for a in grid if a > 1] + [a for a in grid if math.isclose(a, 0.8)] if grid else \
            list(B_B_DEFAULT) + [0.8]
        chosen = (study.decisions.get("gnp") or {}).get("alpha")
        if not alphas:  # none of the paper's alphas is run: the chosen one, else the grid
            alphas = [chosen] if chosen is not None else grid
    alphas = [float(a) for a in alphas]
    r = (study.decisions.get("gnp") or {}).get("r")
    if r is not None:
        return float(r), alphas, ""
    r = (study.decisions.get("sam") or {}).get("r")
    if r is not None:
        return float(r), alphas, "gnp stage not decided: r of the SAM decision"
    radii = study.stage_spec("gnp").get("figure2_r") or []
    if radii:
        return float(radii[0]), alphas, "no decision yet: first Figure-2 r"
    return None, alphas, "no decision and no figure2_r"


def _alpha_colors(alphas: list[float]) -> dict[float, Any]:
    """Paper Figure 3 colours: alpha > 1 (B_b) in a purple family, 0 <= alpha <= 1 in red (a red family
    when several), alpha < 0 (B_a) in blues."""
    groups = {"p": sorted(a for a in alphas if a > 1), "r": sorted(a for a in alphas if 0 <= a <= 1),
              "b": sorted(a for a in alphas if a < 0)}
    cmaps = {"p": colormaps["Purples"], "r": colormaps["Reds"], "b": colormaps["Blues"]}
    out: dict[float, Any] = {}
    for g, vals in groups.items():
        if g == "r" and len(vals) == 1:
            out[vals[0]] = "tab:red"
            continue
        for i, a in enumerate(vals):
            out[a] = cmaps[g](0.45 + 0.5 * (i / max(len(vals) - 1, 1)))
    return out


def _epoch_curves(study: Study, r: float, alpha: float) -> tuple[pd.DataFrame, int, int, list[tuple[int, float]]]:
    """Mean over seeds per epoch of grad_norm and of the right panel's metric at (r, alpha) in the gnp stage.

    Rows from the epoch a trial diverged at (and later), and non-finite values, are left out of the means.
    Returns (curves with columns epoch, grad_norm, test_error, n: ``test_error`` holds the mean of the
    epochs' :func:`_epoch_metric` column, the test error unless the study names its own metric), number of
    trials, number diverged, and the (epoch, index) points where diverged trials stopped (last finite epoch).
    """
    mcol = _epoch_metric(study)[0]
    ep = _select(study.epochs, "gnp", r=r, alpha=alpha).copy()
    tr = _select(study.trials, "gnp", r=r, alpha=alpha)
    n_trials = int(len(tr))
    div = tr[tr["status"] == "diverged"]
    stops = []
    if len(ep):
        if "diverged_epoch" in tr.columns and len(div):
            de = div.set_index("trial_id")["diverged_epoch"].astype(float)
            cut = ep["trial_id"].map(de)
            ep = ep[~(cut.notna() & (ep["epoch"].astype(float) >= cut))]
            for tid, e in de.items():
                last = ep[ep["trial_id"] == tid]["epoch"]
                stops.append((int(last.max()) if len(last) else 0, tid))
        if mcol not in ep.columns:
            ep[mcol] = np.nan
        for col in ("grad_norm", mcol):
            ep[col] = ep[col].astype(float).where(np.isfinite(ep[col].astype(float)))
        curves = ep.groupby("epoch").agg(grad_norm=("grad_norm", "mean"), test_error=(mcol, "mean"),
                                         n=("trial_id", "nunique")).reset_index()
    else:
        curves = pd.DataFrame(columns=["epoch", "grad_norm", "test_error", "n"])
    return curves, n_trials, int(len(div)), stops


def figure3(study: Study | str | Path) -> Figure:
    """Paper Figure 3: norm(g1) (left) and test error (right) against epoch, for every alpha in
    ``stages.gnp.figure3_alpha`` at the chosen r.

    Curves are means over seeds per epoch of ``epochs.parquet``'s ``grad_norm`` (mean norm of g1 over the
    epoch's steps, Algorithm 1 line 4) and ``test_error`` (percent), from the gnp stage at the chosen r
    (:func:`figure3_setting`). B_b alphas are purple, alpha in [0, 1] (the paper's 0.8) red. A diverged
    trial's epochs from its divergence on are left out, and where a trial diverged its curve carries a
    red "x" (legend "diverged (3/3)"). The left axis is logarithmic when the norms span more than a factor
    10. Alphas without epochs are named in the title; a panel with nothing to draw says why
    (:func:`_figure3_blank_text`: the gnp stage has not run at r yet, or none of the figure's alphas is in
    its grid, ...).

    Args:
        study: a loaded :class:`Study` or its folder.

    Returns:
        The Figure with two axes (left: norm(g1), right: test error); pixel size at :data:`FIG_DPI`
        ``(1200, 480)``.

    Raises:
        StudyFolderError: when given a folder that holds no readable study.
    """
    study = _as_study(study)
    r, alphas, r_note = figure3_setting(study)
    fig = Figure(figsize=FIG3_SIZE, layout="constrained")
    FigureCanvasAgg(fig)
    ax_g, ax_e = fig.subplots(1, 2)
    absent, drawn, all_g = _draw_figure3_curves(ax_g, ax_e, study, r, alphas)
    _format_figure3_axes(ax_g, ax_e, all_g, None if drawn else _figure3_blank_text(study, r, alphas),
                         _epoch_metric(study)[1:])
    if drawn:
        _figure3_legend(ax_e, study, r)
        _zoom_error_axis(ax_e)
    fig.suptitle(_figure3_suptitle(study, r, r_note, absent), fontsize=11)
    return fig


def _draw_figure3_curves(ax_g, ax_e, study: Study, r: float | None, alphas: list[float]
                         ) -> tuple[list[str], int, list[float]]:
    """Draw Figure 3's curves: for each of ``alphas`` at r (None: nothing to draw) the per-epoch means of
    :func:`_epoch_curves`, norm(g1) on ``ax_g`` and test error on ``ax_e`` (:func:`_draw_figure3_alpha`).

    Returns the alphas without epochs as text (with "(all N diverged at epoch 1)" where so), the number of
    alphas drawn, and every drawn mean norm (for the choice of a log axis).
    """
    colors = _alpha_colors(alphas)
    gnp_dec = study.decisions.get("gnp") or {}
    chosen = float(gnp_dec["alpha"]) if gnp_dec.get("alpha") is not None else None
    absent, drawn, all_g = [], 0, []
    for a in alphas:
        curves, n_trials, n_div, stops = (_epoch_curves(study, r, a) if r is not None
                                          else (pd.DataFrame(), 0, 0, []))
        if curves.empty or curves[["grad_norm", "test_error"]].isna().all().all():
            absent.append(f"{a:g}" + (f" (all {n_trials} diverged at epoch 1)" if n_trials and n_div == n_trials
                                      else ""))
            continue
        drawn += 1
        label = _figure3_label(a, chosen, n_div, n_trials)
        all_g.extend(_draw_figure3_alpha(ax_g, ax_e, a, curves, stops, colors[a], label))
    return absent, drawn, all_g


def _figure3_label(a: float, chosen: float | None, n_div: int, n_trials: int) -> str:
    """The legend text of alpha ``a``'s curves: "α = 0.8", " (chosen)" when it is the gnp decision's alpha
    ``chosen``, " — diverged n_div/n_trials" when some of its trials diverged."""
    label = f"α = {a:g}"
    if chosen is not None and _close(a, chosen):
        label += " (chosen)"
    if n_div:
        label += f" — diverged {n_div}/{n_trials}"
    return label


def _draw_figure3_alpha(ax_g, ax_e, a: float, curves: pd.DataFrame, stops: list, color: Any, label: str
                        ) -> list[float]:
    """Draw alpha ``a``'s per-epoch means (``curves`` of :func:`_epoch_curves`) in ``color`` with ``label``:
    norm(g1) on ``ax_g``, test error on ``ax_e`` (thicker for alpha in [0, 1], dots with fewer than 4
    epochs), and a red "x" on each curve at the epochs of ``stops`` (where a trial diverged). Returns the
    drawn mean norms."""
    lw = 2.2 if 0 <= a <= 1 else 1.4
    norms: list[float] = []
    for ax, col in ((ax_g, "grad_norm"), (ax_e, "test_error")):
        c = curves.dropna(subset=[col])
        ax.plot(c["epoch"], c[col], color=color, linewidth=lw, label=label, marker="." if len(c) < 4 else None)
        if col == "grad_norm":
            norms.extend(c[col].tolist())
        for stop_epoch, _ in stops:
            hit = c[c["epoch"] == stop_epoch]
            if len(hit):
                ax.plot(hit["epoch"], hit[col], linestyle="none", marker="x", ms=9, mew=2.2,
                        color=COLORS["diverged"], zorder=5)
    return norms


def _format_figure3_axes(ax_g, ax_e, all_g: list[float], blank: str | None,
                         metric: tuple[str, str] = ("test error (%)", "test error")) -> None:
    """Label, title and grid Figure 3's two axes (whole-number epochs; the right one's label and title are
    ``metric``, :func:`_epoch_metric`), use a log axis for norm(g1) when the positive norms ``all_g`` span
    more than a factor 10, and, when no alpha was drawn, write ``blank`` (:func:`_figure3_blank_text`) in
    each axes' middle. Returns None."""
    pos = [g for g in all_g if g > 0 and math.isfinite(g)]
    if pos and max(pos) / min(pos) > 10:
        _plain_log_axis(ax_g, min(pos), max(pos))
    ax_g.set_xlabel("epoch")
    ax_g.set_ylabel("norm(g1), mean over the epoch's steps")
    ax_g.set_title("gradient norm")
    ax_e.set_xlabel("epoch")
    ax_e.set_ylabel(metric[0])
    ax_e.set_title(metric[1])
    for ax in (ax_g, ax_e):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        if blank is not None:
            _blank_axes(ax, blank)


def _figure3_blank_text(study: Study, r: float | None, alphas: list[float]) -> str:
    """Why Figure 3 has no curve, for the middle of its empty axes.

    Takes the study and Figure 3's r and alphas (:func:`figure3_setting`). Returns, in this order of
    checks: no r to plot at (no decision and no figure2_r); none of the alphas in the gnp stage's grid
    (``stages.gnp.alpha`` and ``alpha_extra``: the spec's ``figure3_alpha`` names alphas the stage never
    runs); the gnp stage has not run at r yet; it ran at r but none of the alphas yet; or it ran them
    but left no finite epoch (the title lists them).
    """
    if r is None:
        return "no epochs to plot yet\n(no decision and no figure2_r: no r to plot at)"
    listed = ", ".join(f"{a:g}" for a in alphas)
    gspec = study.stage_spec("gnp")
    grid = [float(a) for a in list(gspec.get("alpha") or []) + list(gspec.get("alpha_extra") or [])]
    if grid and not any(_close(a, g) for a in alphas for g in grid):
        return (f"no epochs to plot:\nnone of Figure 3's alphas ({listed})\nis in the gnp stage's alpha grid;\n"
                "set stages.gnp.figure3_alpha\nto alphas of its grid")
    ran = _select(study.trials, "gnp", r=r)
    if ran.empty:
        return f"no epochs to plot yet\n(the gnp stage has not run at r = {r:g} yet)"
    if not any(len(_select(ran, "gnp", alpha=a)) for a in alphas):
        return f"no epochs to plot yet\n(none of Figure 3's alphas ({listed})\nhas run at r = {r:g} yet)"
    return f"no epochs to plot:\nno finite epoch of Figure 3's alphas\nat r = {r:g} (see the title)"


def _figure3_legend(ax_e, study: Study, r: float) -> None:
    """Draw the legend of Figure 3's test-error axes: its curves, a red "x" entry when a seed diverged,
    and a title saying how many seeds the lines average (the spec's seeds, else the most trials of a gnp
    configuration at r). Returns None."""
    handles, labels = ax_e.get_legend_handles_labels()
    if any(s for s in labels if "diverged" in s):
        handles.append(Line2D([], [], linestyle="none", marker="x", ms=8, mew=2, color=COLORS["diverged"]))
        labels.append("where a seed diverged")
    n_seeds = len(study.spec.get("seeds") or []) or int(
        _select(study.trials, "gnp", r=r).groupby("config_key").size().max())
    title = f"lines: mean over {n_seeds} seeds"
    if any(s for s in labels if "diverged" in s):
        title += "\n(a diverged seed left out from its divergence on)"
    # a metric that rises (mode max) ends in the upper right: the legend goes below it
    loc = "lower right" if selection(study.spec).direction == "max" else "upper right"
    ax_e.legend(handles, labels, fontsize=8, loc=loc, title=title, title_fontsize=8)


def _figure3_suptitle(study: Study, r: float | None, r_note: str, absent: list[str]) -> str:
    """Figure 3's title: the study and r, then on a second line the note on where r came from
    (:func:`figure3_setting`) and the alphas without epochs (``absent``), when there are any."""
    sup = f"{study.name}: evolution over epochs" + (f" at r = {r:g}" if r is not None else "")
    sup += " (mean over seeds)"
    notes = [n for n in [r_note] if n]
    if absent:
        notes.append("no epochs for alpha = " + ", ".join(absent))
    if notes:
        sup += "\n" + "; ".join(notes)
    return sup


def _epoch_metric(study: Study) -> tuple[str, str, str]:
    """The per-epoch column Figure 3's right panel shows, its axis label and its title: ``test_error``
    (percent), or the study's own ``metric`` (:func:`gnp_study.results.selection`)."""
    sel = selection(study.spec)
    if sel.mode != METRIC_MODE:
        return "test_error", "test error (%)", "test error"
    return sel.name, sel.name + (" (%)" if sel.unit == "%" else ""), sel.name


def _zoom_error_axis(ax) -> None:
    """Use a log y axis on the right panel of Figure 3 when the first epochs dwarf the end of training, so
    the differences between alphas at the end stay visible; never when a value is 0 or below (a log axis
    would drop it)."""
    ys = np.concatenate([ln.get_ydata() for ln in ax.get_lines() if len(ln.get_ydata())]).astype(float)
    ys = ys[np.isfinite(ys)]
    if len(ys) and ys.min() > 0 and ys.max() / ys.min() > 4:
        _plain_log_axis(ax, float(ys.min()), float(ys.max()))


def _plain_log_axis(ax, lo: float, hi: float) -> None:
    """Log-scaled y axis with plain-number ticks (1, 2, 5, 10, 20, ...) instead of 10^k notation."""
    ax.set_yscale("log")
    nice = [m * 10.0**k for k in range(-4, 7) for m in (1, 1.5, 2, 3, 4, 5, 6, 8)]
    ticks = [t for t in nice if lo * 0.95 <= t <= hi * 1.05]
    if len(ticks) > 8:  # keep 1-2-5 steps per decade
        ticks = [t for t in ticks if round(t / 10.0 ** math.floor(math.log10(t) + 1e-9), 6) in (1.0, 2.0, 5.0)]
    if len(ticks) >= 2:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())


def save_figure3(study: Study | str | Path, path: str | Path) -> Path:
    """Draw :func:`figure3` and save it as a PNG at :data:`FIG_DPI`; returns the path."""
    return _save(figure3(study), path)


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return buf.getvalue()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(_png_bytes(fig))
    return path


# ----------------------------------------------------------------------------------------------------------
# HTML report
# ----------------------------------------------------------------------------------------------------------


def _config_text(config_key: str) -> str:
    try:
        cfg = json.loads(config_key)
    except (TypeError, ValueError):
        return str(config_key)
    if not isinstance(cfg, dict):
        return str(config_key)
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items())


def _split_configs(keys: list[str]) -> tuple[list[str], str]:
    """Split candidate configurations into the keys that vary between them (one text per candidate) and
    the settings they share (one text), e.g. (["alpha=0.7", "alpha=0.8"], "lr=0.1, r=0.05")."""
    cfgs = []
    for k in keys:
        try:
            c = json.loads(k)
        except (TypeError, ValueError):
            c = None
        if not isinstance(c, dict):
            return [_config_text(k) for k in keys], ""
        cfgs.append(c)
    names = list(dict.fromkeys(n for c in cfgs for n in c))
    shared = [n for n in names if all(n in c and c[n] == cfgs[0].get(n) for c in cfgs)] if len(cfgs) > 1 else []

    def text(c: dict, names_: list[str]) -> str:
        return ", ".join(f"{n}={c[n]:g}" if isinstance(c.get(n), float) else f"{n}={c.get(n)}" for n in names_)

    vary = [n for n in names if n not in shared]
    return [text(c, vary) or "(single configuration)" for c in cfgs], text(cfgs[0], shared)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.{digits}f}"
    return str(v)


def _decision_views(study: Study) -> list[dict[str, Any]]:
    views = []
    for stage, name in SCHEMES:
        dec = study.decisions.get(stage)
        if not dec:
            views.append({"stage": stage, "name": name, "decided": False})
            continue
        d, unit = number_style(dec.get("metric"))  # 2 decimals and % for the errors, else 4 and none
        if stage == "standard":
            chosen = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in (dec.get("config") or {}).items()) or _config_text(dec.get("config_key"))
        elif stage == "sam":
            chosen = f"r = {dec.get('r'):g}"
        else:
            chosen = f"alpha = {dec.get('alpha'):g} at r = {dec.get('r'):g}"
        cands = pd.DataFrame(dec.get("candidates") or [])
        cand_html, common = "", ""
        has_certainty = "indistinguishable" in dec
        tied = set(dec.get("indistinguishable") or [])
        if len(cands):
            cands = cands.sort_values("mean", ascending=dec.get("direction") != "max", na_position="last")
            varying, common = _split_configs(cands["config_key"].tolist())
            n_col = cands["n"].astype(int)
            cols = {
                "": ["✓" if k == dec.get("config_key") else "" for k in cands["config_key"]],
                "configuration": varying,
                f"mean{' %' if unit else ''}": [_fmt(v, d) for v in cands["mean"]],
                "std": [_fmt(v, d) if n > 1 else ("n/a" if n == 1 else "") for v, n in
                        zip(cands.get("std", pd.Series([np.nan] * len(cands))), n_col)],
            }
            if "ci_low" in cands.columns:
                cols["95% CI"] = [f"{_fmt(lo, d)} to {_fmt(hi, d)}" if n > 1 and lo is not None and
                                  math.isfinite(float(lo)) else ("n/a" if n == 1 else "")
                                  for lo, hi, n in zip(cands["ci_low"], cands["ci_high"], n_col)]
            if has_certainty and "prob_best" in cands.columns:
                cols["P(best)"] = [_fmt(v) for v in cands["prob_best"]]
                cols["minus chosen, paired (95% CI, seeds)"] = [_vs_text(v, d) for v in cands["vs_winner"]]
                cols["tied with chosen"] = ["" if k == dec.get("config_key") else ("yes" if k in tied else
                                            ("no" if n > 0 else "")) for k, n in zip(cands["config_key"], n_col)]
            cols["seeds completed"] = [f"{int(a)}/{int(b)}" for a, b in zip(cands["n"], cands["n_seeds"])]
            cols["diverged"] = cands.get("n_diverged", pd.Series([0] * len(cands))).astype(int).tolist()
            cols["failed"] = cands.get("n_failed", pd.Series([0] * len(cands))).astype(int).tolist()
            cand_html = pd.DataFrame(cols).to_html(index=False, border=0, classes="candidates", escape=True)
        n_eligible = int((cands["n"] > 0).sum()) if len(cands) else 0
        views.append({
            "stage": stage, "name": name, "decided": True, "chosen": chosen,
            "mean": _fmt(dec.get("mean"), d), "std": _fmt(dec.get("std"), d) if (dec.get("n") or 0) > 1 else "n/a",
            "unit": " %" if unit else "",
            "n": dec.get("n"), "n_seeds": dec.get("n_seeds"), "candidates_html": cand_html,
            "n_candidates": len(cands), "common": common,
            "certainty": _certainty_text(dec, n_eligible) if has_certainty else "",
        })
    return views


def _vs_text(vs: Any, decimals: int = 2) -> str:
    """A candidate's paired difference to the chosen one, with ``decimals`` digits (4 for a study's own
    metric, :func:`gnp_study.results.number_style`): "+0.12 (−0.30 to +0.54, 4 seeds)"."""
    if not isinstance(vs, dict):
        return ""
    n = vs.get("n") or 0
    if n == 0:
        return "no common seed"
    f = lambda v: fmt_signed(v, decimals)  # noqa: E731
    if n == 1:
        return f"{f(vs.get('diff'))} (1 seed, no CI)"
    return f"{f(vs.get('diff'))} ({f(vs.get('ci_low'))} to {f(vs.get('ci_high'))}, {n} seeds)"


def _certainty_text(dec: dict[str, Any], n_eligible: int) -> str:
    """How sure a stage's choice is, in words (from decisions.json)."""
    key = dec.get("config_key")
    cands = dec.get("candidates") or []
    chosen = next((c for c in cands if c.get("config_key") == key), None)
    parts = []
    if chosen is not None and "prob_best" in chosen:
        parts.append(prob_best_text(dec, chosen.get("prob_best")))
    margin = dec.get("margin")
    if margin and margin.get("paired"):
        mp = margin["paired"]
        if (mp.get("n") or 0) >= 2:
            verdict = "resolved" if mp.get("resolved") else "not resolved"
            d, unit = number_style(dec.get("metric"))
            lo, hi, diff = worse_by(mp, dec.get("direction") == "max")  # positive: the runner-up is worse
            parts.append(f"margin to the runner-up {fmt_signed(diff, d)}{unit}, paired 95% CI "
                         f"{fmt_signed(lo, d)} to {fmt_signed(hi, d)} over {mp.get('n')} "
                         f"seeds: {verdict}")
        else:
            parts.append("margin to the runner-up: fewer than 2 paired seeds, no CI")
    n_tied = len(dec.get("indistinguishable") or [])
    parts.append(f"not distinguishable from it at 95%: {n_tied} of the other {max(n_eligible - 1, 0)} candidates")
    return "; ".join(parts) + "."


def _trial_counts(study: Study) -> tuple[str, str]:
    """HTML tables: counts of trials by stage and status; the list of diverged and failed trials."""
    t = study.trials
    if t.empty:
        return "<p>No trials recorded.</p>", ""
    counts = pd.crosstab(t["stage"], t["status"]).reindex(columns=["completed", "diverged", "failed"], fill_value=0)
    order = [s for s, _ in SCHEMES if s in counts.index] + [s for s in counts.index if s not in dict(SCHEMES)]
    counts = counts.loc[order]
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    counts.loc["all"] = counts.sum(axis=0)
    counts_html = counts.reset_index().rename(columns={"stage": "stage"}).to_html(
        index=False, border=0, classes="counts")
    bad = t[t["status"] != "completed"]
    bad_html = ""
    if len(bad):
        cols = {"stage": bad["stage"], "alpha": bad["alpha"].map(lambda v: f"{v:g}"),
                "r": bad["r"].map(lambda v: f"{v:g}"), "seed": bad["seed"], "status": bad["status"]}
        if "diverged_epoch" in bad.columns:
            cols["diverged at epoch"] = bad["diverged_epoch"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
        if "error" in bad.columns:
            cols["error"] = bad["error"].fillna("").map(lambda s: s if len(s) <= 200 else s[:200] + "…")
        bad_html = pd.DataFrame(cols).to_html(index=False, border=0, classes="bad", escape=True)
    return counts_html, bad_html


def _run_views(study: Study) -> dict[str, Any]:
    info = study.run_info
    stages = info.get("stages") or {}
    rows = []
    for stage, facts in stages.items():
        rows.append({"stage": stage, "wall time (s)": _fmt(facts.get("wall_time_s"), 1),
                     "CPU hours": _fmt(facts.get("cpu_hours"), 3), "GPU hours": _fmt(facts.get("gpu_hours"), 3),
                     "trials": facts.get("n_trials", "")})
    if rows:
        tot = {"stage": "all",
               "wall time (s)": _fmt(sum(float(f.get("wall_time_s") or 0) for f in stages.values()), 1),
               "CPU hours": _fmt(sum(float(f.get("cpu_hours") or 0) for f in stages.values()), 3),
               "GPU hours": _fmt(sum(float(f.get("gpu_hours") or 0) for f in stages.values()), 3),
               "trials": sum(int(f.get("n_trials") or 0) for f in stages.values())}
        rows.append(tot)
    stage_html = pd.DataFrame(rows).to_html(index=False, border=0, classes="stages") if rows else ""
    hw = dict(info.get("hardware") or {})
    if isinstance(hw.get("gpus"), list):
        hw["gpus"] = ", ".join(map(str, hw["gpus"])) or "none"
    return {
        "started": info.get("started"), "finished": info.get("finished"),
        "wall_time_s": _fmt(info.get("wall_time_s"), 1), "ray_address": info.get("ray_address"),
        "stage_html": stage_html, "versions": info.get("versions") or {}, "hardware": hw,
    }


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cost_png(study: Study, got: tuple | None) -> bytes | None:
    """The cost figure as PNG bytes from the study's :func:`gnp_study.cost.study_cost` (``got``), or None
    when the study has no cost record."""
    if got is None:
        return None
    label = ("best test error" if selection(study.spec).mode == PAPER_MODE else
             "test error at the best validation epoch")
    return _png_bytes(figure_cost(got[0], label))


def _render_html(study: Study, table: pd.DataFrame, fig2_png: bytes, fig3_png: bytes,
                 error_bars: str = "ci", cost_png: bytes | None = None, cost: tuple | None = None) -> str:
    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=select_autoescape(["html"]))
    template = env.get_template("report.html")
    counts_html, bad_html = _trial_counts(study)
    r3, alphas3, _ = figure3_setting(study)
    sel = selection(study.spec)
    verdicts = verdict_lines(study, table, stages=False)  # each decision's certainty is shown with it
    b_r = best_r(study)
    f2 = [float(r) for r in (study.stage_spec("gnp").get("figure2_r") or [])]
    return template.render(
        cost_html=(display_cost_table(cost[0]).to_html(index=False, border=0, classes="results", escape=True)
                   if cost else ""),
        cost_lines=cost_lines(*cost) if cost else [],
        cost_seeds=cost[0].attrs["seeds"] if cost else [],
        cost_uri=_data_uri(cost_png) if cost and cost_png else None,
        selection=sel,
        paper_mode=sel.mode == PAPER_MODE,
        metric_mode=sel.mode == METRIC_MODE,
        validation_mode=sel.mode == VALIDATION_MODE,
        quantity_cap=sel.quantity[:1].upper() + sel.quantity[1:],
        metric_words="test error" if sel.mode != METRIC_MODE else sel.name,
        verdicts=verdicts[1:],
        any_unresolved=any("seeds would resolve" in v for v in verdicts),
        error_bars_label=ERROR_BAR_LABELS[error_bars],
        best_r_panel=(f"{b_r:g}" if b_r is not None and f2 and not any(_close(b_r, r) for r in f2) else None),
        study=study,
        name=study.name,
        description=study.spec.get("description") or "",
        data=study.spec.get("data") or {},
        label_noise=label_noise_text(study.spec),
        model=(study.spec.get("model") or {}).get("name", "?"),
        training=study.spec.get("training") or {},
        seeds=study.spec.get("seeds") or [],
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        results_html=display_table(table).to_html(index=False, border=0, classes="results", escape=True),
        confirm_seeds=(study.decisions["confirm"].get("seeds") or []) if table.attrs.get("seeds") == CONFIRMATION
        else None,
        selection_html=(display_table(study_results_table(study, SELECTION)).to_html(
            index=False, border=0, classes="results", escape=True) if table.attrs.get("seeds") == CONFIRMATION
            else ""),
        paper_derived=derived_figure_text(table, "paper_") if "paper_mean" in table.columns else None,
        has_partial=bool((table["n"] < table["n_seeds"]).any()),
        fig2_uri=_data_uri(fig2_png),
        fig3_uri=_data_uri(fig3_png),
        fig3_r=r3,
        fig3_alphas=", ".join(f"{a:g}" for a in alphas3),
        decisions=_decision_views(study),
        counts_html=counts_html,
        bad_html=bad_html,
        race_lines=race_lines(study.decisions),
        race_html=(race_table(study.decisions).to_html(index=False, border=0, classes="race", escape=True)
                   if len(race_table(study.decisions)) else ""),
        run=_run_views(study),
        spec_yaml=yaml.safe_dump(study.spec, sort_keys=False, allow_unicode=True),
        missing=study.missing,
    )


def render_report(study_dir: str | Path, out: str | Path | None = None, error_bars: str = "ci") -> Path:
    """Write ``report.html``: one self-contained file (no external resources; figures as base64 PNG data
    URIs) from the template ``gnp_study/templates/report.html``.

    It holds the selection mode (paper or validation), the results table (with the paper reference when
    the folder has ``paper_reference.csv``), the verdicts in words (:func:`gnp_study.results.verdict_lines`),
    Figures 2 and 3, each stage's decision (chosen value, mean, std, candidates with their CI, probability
    of being best and paired difference to the chosen one), trial counts by status with the diverged / failed trials listed, the resolved
    spec as YAML, software versions, hardware, and wall time and CPU/GPU hours per stage (``run_info.json``).

    Args:
        study_dir: the study folder.
        out: where to write; default ``<study_dir>/report.html``.
        error_bars: Figure 2's bars, ``"ci"`` (95% CI, default) or ``"std"``.

    Returns:
        The path written.

    Raises:
        StudyFolderError: the folder holds no readable study (see :func:`gnp_study.results.load_study`).
        ValueError: unknown ``error_bars``.
    """
    _check_error_bars(error_bars)
    study = load_study(study_dir)
    table = study_results_table(study)
    out = Path(out) if out is not None else study.path / REPORT_HTML
    cost = study_cost(study)
    out.write_text(_render_html(study, table, _png_bytes(figure2(study, error_bars)), _png_bytes(figure3(study)),
                                error_bars, _cost_png(study, cost), cost), encoding="utf-8")
    return out


def build_outputs(study_dir: str | Path, error_bars: str = "ci") -> dict[str, Path]:
    """(Re)build every output of a study folder from its stored tables: ``results.md``, ``results.csv``,
    ``figure2.png``, ``figure3.png``, ``report.html`` and, for a study with a cost stage,
    ``figure_cost.png`` (no Ray, no training).

    Args:
        study_dir: the study folder.
        error_bars: Figure 2's bars, ``"ci"`` (95% CI, default) or ``"std"``.

    Returns:
        ``{file name: path}`` for the five files, keys ``"results.md"``, ``"results.csv"``,
        ``"figure2.png"``, ``"figure3.png"``, ``"report.html"`` (and ``"figure_cost.png"``).

    Raises:
        StudyFolderError: the folder holds no readable study, or a file that parses but is malformed
            (see :func:`gnp_study.results.load_study`); nothing is written then.
        ValueError: unknown ``error_bars``.
    """
    _check_error_bars(error_bars)
    study = load_study(study_dir)
    table = study_results_table(study)
    # Everything is drawn and rendered before the first file is written, so a study folder that cannot be
    # reported keeps its previous outputs (write_study_tables renders results.md before writing it).
    cost = study_cost(study)
    fig2, fig3, fig_cost = _png_bytes(figure2(study, error_bars)), _png_bytes(figure3(study)), _cost_png(study, cost)
    html = _render_html(study, table, fig2, fig3, error_bars, fig_cost, cost)
    paths = write_study_tables(study, table, cost_markdown(study, cost))
    if fig_cost is not None:
        paths[FIGURE_COST_PNG] = study.path / FIGURE_COST_PNG
        paths[FIGURE_COST_PNG].write_bytes(fig_cost)
    paths[FIGURE2_PNG] = study.path / FIGURE2_PNG
    paths[FIGURE2_PNG].write_bytes(fig2)
    paths[FIGURE3_PNG] = study.path / FIGURE3_PNG
    paths[FIGURE3_PNG].write_bytes(fig3)
    report = study.path / REPORT_HTML
    report.write_text(html, encoding="utf-8")
    paths[REPORT_HTML] = report
    return paths
