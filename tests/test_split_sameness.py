"""Sameness pin: what ``results.results_table``, ``results.display_table``, ``protocol.decide``,
``report.figure2`` and ``report.figure3`` return for a set of synthetic studies, compared with a stored
snapshot (``tests/data/split_sameness.json.gz``) taken with the code before its long functions were split
into helpers. A refactoring that changes any table cell, attribute, decision field or drawn artist fails
here, naming the case and the path of the first differences.

The studies are those of ``tests/study_fixtures.py`` (paper mode, validation mode, stages missing, the
diverged and failed trials every fixture has) with a few decisions edited to reach the other branches (a
racing stage's eliminated candidate, alphas tied with the chosen one, a confirmation stage, one seed, the
best r outside ``figure2_r``, no ``figure2_r``, Figure 3's alphas off the grid); the decisions are those of
plain trial tables like the ones of ``tests/test_protocol.py`` and ``tests/test_racing.py``.

Floats are compared to a relative 1e-12 (NaN equals NaN): the same code on another NumPy/pandas build may
differ in the last bit, a changed computation does not stay that close.

Regenerate the snapshot (only for a change meant to alter these outputs, and say so in its commit):

    PYTHONPATH=. python tests/test_split_sameness.py --write
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from study_fixtures import B_A, B_B, BASIC_ALPHA, FIGURE2_R, LRS, SAM_R, SEEDS  # noqa: E402
from study_fixtures import make_study, make_validation_study  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "split_sameness.json.gz"
REL_TOL = 1e-12


# ---------------------------------------------------------------------------------------------- plain data


def plain(v: Any) -> Any:
    """``v`` as JSON-ready data: NumPy/pandas scalars and arrays to Python numbers and lists, tuples to
    lists, mapping keys to strings, ``pd.NA`` / ``NaT`` to None."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return plain(v.tolist())
    if isinstance(v, (pd.Series, pd.Index)):
        return plain(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, str):
        return v
    if hasattr(v, "to_dict"):  # dataclasses of the project (Paired)
        return plain(v.to_dict())
    raise TypeError(f"no plain form for {type(v).__name__}: {v!r:.100}")


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Paths (``a/b/3``) where ``got`` differs from ``want``; floats within :data:`REL_TOL`, NaN == NaN."""
    if isinstance(want, (bool, int, float)) and type(want) is not type(got):
        return [f"{path}: {want!r} ({type(want).__name__}) != {got!r} ({type(got).__name__})"]
    if isinstance(want, float):
        w, g = float(want), float(got)
        if (math.isnan(w) and math.isnan(g)) or w == g or math.isclose(w, g, rel_tol=REL_TOL, abs_tol=1e-300):
            return []
        return [f"{path}: {want!r} != {got!r}"]
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}/{k}: missing" for k in want if k not in got]
        out += [f"{path}/{k}: unexpected" for k in got if k not in want]
        for k in want:
            if k in got:
                out += differences(want[k], got[k], f"{path}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: length {len(want)} != {len(got)} ({want!r:.200} vs {got!r:.200})"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out += differences(w, g, f"{path}/{i}")
        return out
    return [] if want == got else [f"{path}: {want!r} != {got!r}"]


# ---------------------------------------------------------------------------------------------- the studies


def _edit_decisions(path: Path, edit) -> None:
    dec = json.loads((path / "decisions.json").read_text())
    edit(dec)
    (path / "decisions.json").write_text(json.dumps(dec))


def _edit_spec(path: Path, edit) -> None:
    spec = yaml.safe_load((path / "study.yaml").read_text())
    edit(spec)
    (path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def _gnp_key(trials: pd.DataFrame, alpha: float, r: float = 0.05) -> str:
    at = (trials["stage"] == "gnp") & np.isclose(trials["r"], r) & np.isclose(trials["alpha"], alpha)
    return trials[at]["config_key"].iloc[0]


def _raced(path: Path) -> None:
    """The gnp stage raced: alpha 0.3 at r 0.05 eliminated after seeds 0 and 1 (seed 2 never ran), alphas
    0.7 and 0.9 tied with the chosen 0.8."""
    t = pd.read_parquet(path / "trials.parquet")
    at = (t["stage"] == "gnp") & np.isclose(t["r"], 0.05) & np.isclose(t["alpha"], 0.3)
    key = t[at]["config_key"].iloc[0]
    t[~(at & (t["seed"] == 2))].to_parquet(path / "trials.parquet", index=False)
    tied = [_gnp_key(t, 0.7), _gnp_key(t, 0.9)]

    def edit(dec):
        dec["gnp"]["indistinguishable"] = tied
        dec["gnp"]["race"] = {
            "trials_run": 50, "fixed_trials": 51, "test": "one-sided paired t-test, holm",
            "races": [{"name": "gnp r=0.05", "end_reason": "all seeds", "n_seeds": 3, "candidates": {
                key: {"alpha": 0.3, "r": 0.05, "selectable": True, "seeds_run": 2, "status": "eliminated",
                      "block": 1, "n_seeds": 2, "reason": "test", "reference": "x", "n_pairs": 2, "diff": 0.5,
                      "p": 0.001, "threshold": 0.005}}}]}

    _edit_decisions(path, edit)


def _confirmed(path: Path) -> None:
    """A confirmation stage: the three chosen configurations on fresh seeds 10-12, each a little off its
    selection value (one GNP seed diverged)."""
    t = pd.read_parquet(path / "trials.parquet")
    dec = json.loads((path / "decisions.json").read_text())
    rows = []
    for i, stage in enumerate(("standard", "sam", "gnp")):
        key = dec[stage]["config_key"]
        src = t[(t["stage"] == stage) & (t["config_key"] == key)].iloc[0]
        for j, seed in enumerate((10, 11, 12)):
            row = src.copy()
            row["stage"], row["seed"], row["trial_id"] = "confirm", seed, f"confirm_{i}{j}"
            row["status"] = "diverged" if (stage == "gnp" and seed == 12) else "completed"
            row["best_test_error"] = math.nan if row["status"] == "diverged" else 5.0 - 0.2 * i + 0.05 * j * j
            rows.append(row)
    pd.concat([t, pd.DataFrame(rows)], ignore_index=True).to_parquet(path / "trials.parquet", index=False)
    dec["confirm"] = {"seeds": [10, 11, 12], "schemes": {s: dec[s]["config_key"] for s in ("standard", "sam", "gnp")}}
    (path / "decisions.json").write_text(json.dumps(dec))


def _one_seed(path: Path) -> None:
    t = pd.read_parquet(path / "trials.parquet")
    t[t["seed"] == 0].to_parquet(path / "trials.parquet", index=False)


def _nothing_decided(path: Path) -> None:
    """Standard's trials ran but nothing is decided yet: Figure 2 has no point at any r."""
    (path / "decisions.json").write_text("{}")


def _standard_diverged(path: Path) -> None:
    """Every seed of the chosen Standard configuration diverged: a point with no completed seed."""
    t = pd.read_parquet(path / "trials.parquet")
    key = json.loads((path / "decisions.json").read_text())["standard"]["config_key"]
    rows = t["config_key"] == key
    t.loc[rows, "status"] = "diverged"
    t.loc[rows, "best_test_error"] = math.nan
    t.to_parquet(path / "trials.parquet", index=False)


def _diverged_at_epoch_1(path: Path) -> None:
    """The all-diverged alpha of the fixture diverged at its first epoch: Figure 3 has no epoch of it."""
    t = pd.read_parquet(path / "trials.parquet")
    t.loc[(t["stage"] == "gnp") & (t["status"] == "diverged") & np.isclose(t["alpha"], 2.0), "diverged_epoch"] = 1.0
    t.to_parquet(path / "trials.parquet", index=False)


def _wide_grad_norms(path: Path) -> None:
    """Norms of alpha 1.1 a hundred times the others (a log axis on Figure 3's left) and no seeds list in
    study.yaml (the legend counts the seeds from the trials)."""
    e = pd.read_parquet(path / "epochs.parquet")
    e.loc[np.isclose(e["alpha"], 1.1), "grad_norm"] *= 100.0
    e.to_parquet(path / "epochs.parquet", index=False)
    _edit_spec(path, lambda s: s.pop("seeds"))


def make_studies(root: Path) -> dict[str, Path]:
    """The study folders of the snapshot, by case name, written under ``root``."""
    out = {
        "paper": make_study(root / "paper").path,
        "validation": make_validation_study(root / "validation").path,
        "standard_only": make_study(root / "standard_only", stages=("standard",), paper=False, run_info=False).path,
        "standard_sam": make_study(root / "standard_sam", stages=("standard", "sam"), paper=False).path,
    }
    for name in ("raced", "confirmed", "one_seed", "best_r_not_figure2_r", "no_figure2_r", "figure3_off_grid",
                 "figure3_alpha_default", "diverged_at_epoch_1", "wide_grad_norms"):
        out[name] = make_study(root / name).path
    for name in ("standard_only_no_figure2_r", "nothing_decided", "standard_diverged"):
        out[name] = make_study(root / name, stages=("standard",), paper=False).path
    _edit_spec(out["standard_only_no_figure2_r"], lambda s: s["stages"]["gnp"].pop("figure2_r"))
    _nothing_decided(out["nothing_decided"])
    _standard_diverged(out["standard_diverged"])
    _diverged_at_epoch_1(out["diverged_at_epoch_1"])
    _wide_grad_norms(out["wide_grad_norms"])
    _raced(out["raced"])
    _confirmed(out["confirmed"])
    _one_seed(out["one_seed"])
    _edit_spec(out["best_r_not_figure2_r"], lambda s: s["stages"]["gnp"].update(figure2_r=[0.1]))
    _edit_spec(out["no_figure2_r"], lambda s: s["stages"]["gnp"].pop("figure2_r"))
    _edit_spec(out["figure3_off_grid"], lambda s: s["stages"]["gnp"].update(figure3_alpha=[3.0, 4.0]))
    _edit_spec(out["figure3_alpha_default"], lambda s: s["stages"]["gnp"].update(figure3_alpha=None))
    return out


# ---------------------------------------------------------------------------------------------- snapshots


def table_snapshot(df: pd.DataFrame) -> dict:
    """Columns, dtypes, index, every cell and the attrs of a DataFrame."""
    return {"columns": plain(list(df.columns)), "dtypes": [str(t) for t in df.dtypes], "index": plain(list(df.index)),
            "rows": plain(df.to_dict("records")), "attrs": plain(dict(df.attrs))}


def _rgba(c: Any) -> list:
    from matplotlib.colors import to_rgba

    return plain(to_rgba(c))


def _transform_kind(artist, ax) -> str:
    return _coords_kind(artist.get_transform(), ax)


def _coords_kind(tr: Any, ax) -> str:
    """Name of a transform or coordinate system: "data", "xaxis" (x data, y axes fraction), "axes", the
    string matplotlib was given, or the transform's class name."""
    if isinstance(tr, str):
        return tr
    for name, ref in (("data", ax.transData), ("xaxis", ax.get_xaxis_transform()), ("axes", ax.transAxes)):
        if tr == ref:
            return name
    return type(tr).__name__


def _line(ln, ax) -> dict:
    return {
        "label": ln.get_label(), "xdata": plain(np.asarray(ln.get_xdata(), dtype=float)),
        "ydata": plain(np.asarray(ln.get_ydata(), dtype=float)), "color": _rgba(ln.get_color()),
        "marker": str(ln.get_marker()), "markersize": float(ln.get_markersize()), "linestyle": ln.get_linestyle(),
        "linewidth": float(ln.get_linewidth()), "mfc": _rgba(ln.get_markerfacecolor()),
        "mec": _rgba(ln.get_markeredgecolor()), "mew": float(ln.get_markeredgewidth()), "zorder": ln.get_zorder(),
        "visible": ln.get_visible(), "clip_on": ln.get_clip_on(), "transform": _transform_kind(ln, ax),
        "alpha": ln.get_alpha(),
    }


def _collection(c, ax) -> dict:
    return {
        "type": type(c).__name__, "label": c.get_label(),
        "paths": [plain(p.vertices) for p in c.get_paths()], "facecolor": plain(c.get_facecolor()),
        "edgecolor": plain(c.get_edgecolor()), "linestyle": plain(c.get_linestyle()),
        "linewidth": plain(np.atleast_1d(c.get_linewidth())), "alpha": c.get_alpha(), "zorder": c.get_zorder(),
        "transform": _transform_kind(c, ax),
    }


def _text(t, ax) -> dict:
    out = {"text": t.get_text(), "position": plain(t.get_position()), "ha": t.get_ha(), "va": t.get_va(),
           "fontsize": float(t.get_fontsize()), "color": _rgba(t.get_color()), "transform": _transform_kind(t, ax)}
    if hasattr(t, "xy"):  # an annotation: the annotated point and where its text sits
        out.update(xy=plain(t.xy), xyann=plain(t.xyann), xycoords=_coords_kind(t.xycoords, ax),
                   textcoords=_coords_kind(t.anncoords, ax))
    return out


def _legend(lg) -> dict | None:
    if lg is None:
        return None
    return {"texts": [t.get_text() for t in lg.get_texts()], "title": lg.get_title().get_text(),
            "handles": [type(h).__name__ for h in lg.legend_handles], "ncols": lg._ncols}


def _axes(ax) -> dict:
    return {
        "title": ax.get_title(), "title_fontsize": float(ax.title.get_fontsize()), "xlabel": ax.get_xlabel(),
        "ylabel": ax.get_ylabel(), "xlim": plain(ax.get_xlim()), "ylim": plain(ax.get_ylim()),
        "xscale": ax.get_xscale(), "yscale": ax.get_yscale(), "xticks": plain(ax.get_xticks()),
        "yticks": plain(ax.get_yticks()), "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
        "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
        "grid": bool(ax.xaxis._major_tick_kw.get("gridOn", False)),
        "lines": [_line(ln, ax) for ln in ax.get_lines()],
        "collections": [_collection(c, ax) for c in ax.collections],
        "containers": [type(c).__name__ for c in ax.containers],
        "texts": [_text(t, ax) for t in ax.texts], "legend": _legend(ax.get_legend()),
    }


def figure_snapshot(fig) -> dict:
    """Size, suptitle, figure legends and, per axes, its title, labels, limits, ticks and tick labels,
    lines, collections, texts and legend (drawn first, so that tick labels are set)."""
    fig.canvas.draw()
    return {"size": plain(fig.get_size_inches()), "suptitle": fig.get_suptitle(),
            "legends": [_legend(lg) for lg in fig.legends], "axes": [_axes(ax) for ax in fig.axes]}


def _decide_or_error(stage, trials, spec, decisions=None) -> dict:
    from gnp_study.protocol import ProtocolError, decide

    try:
        return plain(decide(stage, trials, spec, decisions))
    except ProtocolError as e:
        return {"ProtocolError": str(e)}


def _study_spec(validation: bool = False, **gnp):
    """The protocol's spec of the synthetic studies (their grids and seeds)."""
    from helpers import protocol_spec

    stages = {"standard": {"space": {"lr": list(LRS)}}, "sam": {"r": list(SAM_R)},
              "gnp": {"alpha": list(BASIC_ALPHA), "alpha_extra": list(B_A + B_B), "figure2_r": list(FIGURE2_R),
                      **gnp}}
    data = {"dataset": "digits", **({"validation": {"size": 200, "seed": 3}} if validation else {})}
    return protocol_spec(stages, seeds=SEEDS, data=data)


def _plain_rows(stage: str, entries) -> pd.DataFrame:
    """entries: (config, seed, status, best error) -> trials rows as tests/test_protocol.py builds them."""
    from gnp_study.protocol import TrialConfig

    out = []
    for cfg, seed, status, err in entries:
        tc = TrialConfig(stage, cfg, seed)
        out.append({"trial_id": tc.trial_id, "stage": stage, "config_key": tc.config_key, "config": json.dumps(cfg),
                    "alpha": cfg["alpha"], "r": cfg["r"], "seed": seed, "status": status, "best_test_error": err})
    return pd.DataFrame(out)


def decide_snapshots(studies: dict[str, Path]) -> dict[str, Any]:
    """``protocol.decide`` of every stage of the synthetic studies, and of hand-made trial tables reaching
    the racing, tie, single-seed and error branches."""
    from helpers import protocol_spec

    from gnp_study.results import load_study

    out: dict[str, Any] = {}
    for case, validation in (("paper", False), ("validation", True), ("one_seed", False), ("raced", False)):
        st = load_study(studies[case])
        spec = _study_spec(validation)
        for stage in ("standard", "sam", "gnp"):
            out[f"decide/{case}/{stage}"] = _decide_or_error(stage, st.trials, spec, st.decisions)
    st = load_study(studies["standard_only"])
    out["decide/standard_only/sam"] = _decide_or_error("sam", st.trials, _study_spec(), st.decisions)
    out["decide/validation_without_column/sam"] = _decide_or_error(
        "sam", load_study(studies["paper"]).trials, _study_spec(validation=True), {})

    # hand-made tables (tests/test_protocol.py, tests/test_racing.py)
    base = {"lr": 0.05, "alpha": 1.0}
    entries = []
    for r, errs in ((0.05, [3.0, 4.0, 5.0, 4.5]), (0.1, [3.1, 3.9, 5.3, 4.6]), (0.2, [4.0, 5.02, 6.0, 5.51])):
        entries += [(dict(base, r=r), s, "completed", e) for s, e in enumerate(errs)]
    entries += [(dict(base, r=0.02), s, "diverged", math.nan) for s in range(4)]
    four = protocol_spec({"standard": {"space": {"lr": [0.05]}}, "sam": {"r": [0.02, 0.05, 0.1, 0.2]},
                          "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [], "figure2_r": [0.05]}}, seeds=(0, 1, 2, 3))
    out["decide/hand/sam_margin"] = _decide_or_error("sam", _plain_rows("sam", entries), four)
    a, b = dict(base, r=0.05), dict(base, r=0.1)
    out["decide/hand/single_seed"] = _decide_or_error(
        "sam", _plain_rows("sam", [(a, 0, "completed", 2.0), (b, 0, "completed", 2.5)]), four)
    out["decide/hand/single_candidate"] = _decide_or_error("sam", _plain_rows("sam", [(a, 0, "completed", 2.0)]), four)
    out["decide/hand/tie"] = _decide_or_error(
        "sam", _plain_rows("sam", [(c, s, "completed", e) for c in (a, b) for s, e in enumerate([2.0, 2.3, 2.1])]), four)
    out["decide/hand/all_diverged"] = _decide_or_error(
        "sam", _plain_rows("sam", [(c, s, "diverged", math.nan) for c in (a, b) for s in range(2)]), four)
    out["decide/hand/no_trials"] = _decide_or_error("gnp", _plain_rows("sam", [(a, 0, "completed", 2.0)]), four,
                                                    {"sam": {"r": 0.05}})

    # racing stages (tests/test_racing.py): r 0.05 eliminated after two seeds; gnp raced at the best r
    def race_spec(sam_race=None, gnp_race=None):
        stages = {"standard": {"space": {"lr": [0.1]}}, "sam": {"r": [0.01, 0.05, 0.1]},
                  "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [1.5], "figure2_r": [0.05]}}
        if sam_race:
            stages["sam"]["race"] = sam_race
        if gnp_race:
            stages["gnp"]["race"] = gnp_race
        return protocol_spec(stages, seeds=(0, 1, 2, 3))

    std = {"standard": {"config": {"lr": 0.1, "alpha": 0.0, "r": 0.0}}}
    sam_vals = {0.01: [1, 2, 10, 10], 0.05: [2, 3], 0.1: [1.5, 1.9, 10, 10.5]}
    sam_t = _plain_rows("sam", [({"lr": 0.1, "alpha": 1.0, "r": r}, s, "completed", float(v))
                                for r, vs in sam_vals.items() for s, v in enumerate(vs)])
    out["decide/race/sam"] = _decide_or_error("sam", sam_t, race_spec({"first_block": 2}), std)
    out["decide/race/sam_not_raced"] = _decide_or_error("sam", sam_t, race_spec(), std)
    gnp_vals = {(0.01, 0.5): [2.0, 2.1, 2.2, 2.3], (0.01, 0.8): [3.0, 3.2], (0.01, 1.5): [2.5, 2.4, 2.6, 2.7],
                (0.05, 0.5): [2.2, 2.0, 2.4, 2.1], (0.05, 0.8): [1.9, 2.5, 2.0, 2.2], (0.05, 1.5): [4.0, 4.1]}
    gnp_t = _plain_rows("gnp", [({"lr": 0.1, "alpha": al, "r": r}, s, "completed", float(v))
                                for (r, al), vs in gnp_vals.items() for s, v in enumerate(vs)])
    out["decide/race/gnp"] = _decide_or_error("gnp", gnp_t, race_spec(gnp_race={"first_block": 2}),
                                              dict(std, sam={"r": 0.01}))
    return out


def snapshot() -> dict[str, Any]:
    """Every pinned output, by ``kind/case[/detail]``."""
    from gnp_study.report import figure2, figure3
    from gnp_study.results import display_table, load_study, results_table, study_results_table

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        studies = make_studies(Path(tmp))
        for case, path in studies.items():
            st = load_study(path)
            table = study_results_table(st)
            out[f"results_table/{case}"] = table_snapshot(table)
            out[f"display_table/{case}"] = table_snapshot(display_table(table))
            out[f"figure2/{case}"] = figure_snapshot(figure2(st))
            out[f"figure3/{case}"] = figure_snapshot(figure3(st))
        st = load_study(studies["paper"])
        out["figure2/paper/std_bars"] = figure_snapshot(figure2(st, error_bars="std"))
        out["results_table/paper/no_reference_decimals_3"] = table_snapshot(
            results_table(st.trials, st.decisions, decimals=3))
        st = load_study(studies["confirmed"])
        out["results_table/confirmed/selection_seeds"] = table_snapshot(study_results_table(st, seeds="selection"))
        st = load_study(studies["paper"])
        no_gnp_trials = st.trials[st.trials["stage"] != "gnp"]
        out["results_table/paper/decision_numbers"] = table_snapshot(
            results_table(no_gnp_trials, st.decisions, st.paper))
        out.update(decide_snapshots(studies))
    return out


def write(path: Path = FIXTURE) -> None:
    data = json.dumps(snapshot(), sort_keys=True, indent=None).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(data)


def _load() -> dict[str, Any]:
    with gzip.open(FIXTURE, "rb") as f:
        return json.loads(f.read())


# ---------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def now() -> dict[str, Any]:
    return snapshot()


STORED = _load() if FIXTURE.exists() else {}


def test_the_same_cases_are_pinned(now):
    assert FIXTURE.exists(), f"{FIXTURE} is missing: PYTHONPATH=. python tests/test_split_sameness.py --write"
    assert sorted(now) == sorted(STORED)


@pytest.mark.parametrize("key", sorted(STORED))
def test_output_is_unchanged(now, key):
    diffs = differences(STORED[key], plain(json.loads(json.dumps(now[key]))), key)
    assert not diffs, f"{len(diffs)} difference(s), the first:\n" + "\n".join(diffs[:15])


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_split_sameness.py --write")
    write()
    print(f"wrote {FIXTURE} ({len(_load())} outputs)")
