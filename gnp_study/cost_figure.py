"""The cost figure of a study with a cost stage: error against cost for Standard, full GNP and GNP with the
second pass every k steps (:mod:`gnp_study.cost`).

Two panels share the error axis: against the forward-backward passes per optimizer step and against the
trial time relative to Standard, both measured. Points are means over the cost stage's seeds with their 95%
Student-t CI; dashed lines mark Standard's and full GNP's means. Drawn on a
:class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless

import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Size of the cost figure, inches (two panels side by side).
FIG_COST_SIZE = (11.0, 4.4)
_COLORS = {"Standard": "tab:green", "GNP": "tab:blue"}


def figure_cost(table: pd.DataFrame, metric_label: str = "best test error") -> Figure:
    """Each scheme's error minus Standard's, paired seed by seed with its 95% CI (the comparison the verdicts
    state), against passes per step (left) and against trial time relative to Standard (right).

    Args:
        table: :func:`gnp_study.cost.cost_table` output (one Standard row, one row per k).
        metric_label: the compared error (the study's report column, in percent).

    Returns:
        The figure (not saved). Standard sits at 0 without a bar; a row without a measured cost (a study
        folder from before passes were recorded) is left out of that panel.
    """
    fig = Figure(figsize=FIG_COST_SIZE, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("passes_per_step", "forward-backward passes per optimizer step (measured)"),
              ("time_vs_standard", "trial time / Standard's trial time (measured)"))
    full = table[(table["scheme"] == "GNP") & (table["every"] == 1)]
    for ax, (col, xlabel) in zip(axes, panels):
        ax.axhline(0.0, color=_COLORS["Standard"], ls="--", lw=0.8, alpha=0.7)
        if len(full) and math.isfinite(float(full["vs_standard"].iloc[0])):
            ax.axhline(float(full["vs_standard"].iloc[0]), color=_COLORS["GNP"], ls="--", lw=0.8, alpha=0.7)
        for r in table.itertuples():
            x = getattr(r, col)
            y = 0.0 if r.scheme == "Standard" else r.vs_standard
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            bar = r.scheme == "GNP" and math.isfinite(r.vs_standard_low)
            yerr = [[y - r.vs_standard_low], [r.vs_standard_high - y]] if bar else None
            hollow = r.scheme == "GNP" and r.every != 1
            ax.errorbar([x], [y], yerr=yerr, fmt="o", color=_COLORS[r.scheme], capsize=4,
                        mfc="white" if hollow else _COLORS[r.scheme])
            label = "Standard" if r.scheme == "Standard" else ("full GNP" if r.every == 1 else f"k = {int(r.every)}")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(7, 4), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric_label}\nminus Standard's, points (paired 95% CI)")
    seeds = table.attrs.get("seeds") or []
    fig.suptitle(f"GNP with the second pass every k steps: the improvement over Standard against its cost "
                 f"(paired over {len(seeds)} seeds; dashed: Standard and full GNP)", fontsize=10)
    return fig
