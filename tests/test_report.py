"""Tests of gnp_study.report: Figures 2-3 (inspected as Figure objects and as decoded PNGs), report.html
(parsed, images decoded, and loaded in headless Chromium) and build_outputs, on synthetic study folders
(tests/study_fixtures.py); no Ray, no torch."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from study_fixtures import B_B, DIVERGED_ALPHA, FIGURE2_R, make_study, make_validation_study  # noqa: E402

from gnp_study.report import (  # noqa: E402
    COLORS,
    DIVERGED_Y,
    FIG2_LEGEND_HEIGHT,
    FIG2_PANEL_SIZE,
    FIG3_SIZE,
    FIG_DPI,
    build_outputs,
    figure2,
    figure3,
    render_report,
    save_figure2,
    save_figure3,
)
from gnp_study.results import load_study  # noqa: E402

FIG2_PX = (round(FIG2_PANEL_SIZE[0] * len(FIGURE2_R) * FIG_DPI),
           round((FIG2_PANEL_SIZE[1] + FIG2_LEGEND_HEIGHT) * FIG_DPI))
FIG3_PX = (round(FIG3_SIZE[0] * FIG_DPI), round(FIG3_SIZE[1] * FIG_DPI))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("report") / "synthetic")


@pytest.fixture(scope="module")
def study(study_dir):
    return load_study(study_dir.path)


def _points(ax):
    """(x, y, colour) of every errorbar point of an axes."""
    out = []
    for c in ax.containers:
        line = c.lines[0]
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            out.append((float(x), float(y), to_rgb(line.get_color())))
    return out


def _check_png(data: bytes, size: tuple[int, int]) -> None:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == size
    px = np.asarray(img.convert("L"), dtype=float)
    assert px.std() > 10  # not blank: lines, text and markers on white
    assert (px < 128).mean() > 0.005  # a visible share of dark pixels


# ---------------------------------------------------------------- Figure 2


def test_figure2_one_panel_per_r_with_the_right_points(study):
    fig = figure2(study)
    assert len(fig.axes) == len(FIGURE2_R)
    trials = study.trials
    std_key = study.decisions["standard"]["config_key"]
    std_ok = trials[(trials["config_key"] == std_key) & (trials["status"] == "completed")]
    std_mean = std_ok["best_test_error"].mean()
    for ax, r in zip(fig.axes, FIGURE2_R):
        assert ax.get_title().startswith(f"r = {r:g}")
        pts = _points(ax)
        by_x = {round(x, 6): (y, c) for x, y, c in pts}
        # standard at alpha = 0 in green, SAM at alpha = 1 (sam stage at this r) in orange
        assert by_x[0.0][0] == pytest.approx(std_mean) and by_x[0.0][1] == to_rgb(COLORS["standard"])
        sam = trials[(trials["stage"] == "sam") & np.isclose(trials["r"], r) & (trials["status"] == "completed")]
        assert by_x[1.0][0] == pytest.approx(sam["best_test_error"].mean())
        assert by_x[1.0][1] == to_rgb(COLORS["sam"])
        # every GNP alpha with a completed seed, B_a and B_b included, at its mean over completed seeds
        gnp = trials[(trials["stage"] == "gnp") & np.isclose(trials["r"], r) & (trials["status"] == "completed")]
        means = gnp.groupby("alpha")["best_test_error"].mean()
        assert len(means) == 9 + 3 + 4  # basic set, B_a, B_b without the diverged alpha
        for alpha, m in means.items():
            assert by_x[round(alpha, 6)][0] == pytest.approx(m)
            assert by_x[round(alpha, 6)][1] == to_rgb(COLORS["gnp"])
        assert round(DIVERGED_ALPHA, 6) not in by_x  # not drawn as a value ...


def test_figure2_marks_the_diverged_alpha(study):
    fig = figure2(study)
    for ax in fig.axes:
        marks = [ln for ln in ax.get_lines() if ln.get_label() == "diverged (all seeds)"]
        assert len(marks) == 1  # ... but as a marker labelled diverged, at the top of the axes
        (m,) = marks
        assert list(m.get_xdata()) == [DIVERGED_ALPHA] and list(m.get_ydata()) == [DIVERGED_Y]
        assert m.get_marker() == "x" and m.get_visible()
        assert m.get_transform() == ax.get_xaxis_transform()  # y in axes fraction: inside the panel
        xmin, xmax = ax.get_xlim()
        assert xmin < DIVERGED_ALPHA < xmax
        texts = [t.get_text() for t in ax.texts]
        assert any("diverged" in t and f"{DIVERGED_ALPHA:g}" in t for t in texts)
    # partly diverged configurations carry their n/n_seeds
    ax01 = fig.axes[FIGURE2_R.index(0.1)]
    assert "2/3" in [t.get_text() for t in ax01.texts]
    legend = fig.legends[0]
    assert "diverged (all seeds)" in [t.get_text() for t in legend.get_texts()]


def test_figure2_png_size_and_content(study, tmp_path):
    path = save_figure2(study, tmp_path / "f2.png")
    _check_png(path.read_bytes(), FIG2_PX)


def test_figure2_of_a_study_without_gnp_stage_says_so(tmp_path):
    s = make_study(tmp_path / "s", stages=("standard",))
    fig = figure2(load_study(s.path))
    assert len(fig.axes) == len(FIGURE2_R)
    for ax in fig.axes:
        assert "gnp stage not run" in ax.get_title() and "sam stage not run" in ax.get_title()
        assert len(_points(ax)) == 1  # only the standard point, which exists
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=FIG_DPI)
    _check_png(png.getvalue(), FIG2_PX)


# ---------------------------------------------------------------- Figure 3


def _curve(epochs, trials, r, alpha, col):
    """Independent per-epoch mean over seeds, diverged trials' epochs from their divergence on left out."""
    ep = epochs[(epochs["stage"] == "gnp") & np.isclose(epochs["r"], r) & np.isclose(epochs["alpha"], alpha)]
    de = trials.set_index("trial_id")["diverged_epoch"]
    ep = ep[~(ep["epoch"] >= ep["trial_id"].map(de))]
    return ep.groupby("epoch")[col].mean()


def test_figure3_curves_colours_and_values(study):
    fig = figure3(study)
    ax_g, ax_e = fig.axes
    r = study.decisions["gnp"]["r"]
    labels = [ln.get_label() for ln in ax_e.get_lines() if not ln.get_label().startswith("_")]
    assert len(labels) == len(B_B) + 1
    for alpha in list(B_B) + [0.8]:
        for ax, col in ((ax_g, "grad_norm"), (ax_e, "test_error")):
            (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"α = {alpha:g}")]
            want = _curve(study.epochs, study.trials, r, alpha, col)
            assert list(line.get_xdata()) == list(want.index)
            np.testing.assert_allclose(line.get_ydata(), want.to_numpy(), rtol=1e-12)
            red, green, blue = to_rgb(line.get_color())
            if alpha > 1:  # B_b: purple family
                assert blue > green and red > green
            else:  # the chosen 0.8: red
                assert to_rgb(line.get_color()) == to_rgb("tab:red")
    (div,) = [ln for ln in ax_e.get_lines() if ln.get_label().startswith(f"α = {DIVERGED_ALPHA:g}")]
    assert "diverged 3/3" in div.get_label()
    crosses = [ln for ln in ax_e.get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert crosses  # where the seeds diverged
    assert "0.8 (chosen)" in " ".join(labels)


def test_figure3_png_size_and_content(study, tmp_path):
    path = save_figure3(study, tmp_path / "f3.png")
    _check_png(path.read_bytes(), FIG3_PX)


def test_figure3_without_gnp_stage_says_so(tmp_path):
    s = make_study(tmp_path / "s", stages=("standard", "sam"))
    fig = figure3(load_study(s.path))
    assert "no epochs for alpha" in fig.get_suptitle()
    for ax in fig.axes:
        assert not ax.get_lines() and any("no epochs to plot yet" in t.get_text() for t in ax.texts)


def _blank_texts(fig):
    """The text in the middle of each of Figure 3's empty axes."""
    return [" ".join(t.get_text() for t in ax.texts) for ax in fig.axes]


def test_figure3_before_the_gnp_stage_says_it_has_not_run_at_r(tmp_path):
    s = make_study(tmp_path / "s", stages=("standard", "sam"))  # Figure 3 at the SAM decision's r
    r = s.decisions["sam"]["r"]
    texts = _blank_texts(figure3(load_study(s.path)))
    assert len(texts) == 2
    for text in texts:
        assert f"the gnp stage has not run at r = {r:g} yet" in text
        assert "figure3_alpha" not in text  # the alphas are fine: the stage has not run


def test_figure3_with_alphas_off_the_grid_names_them_and_the_setting(tmp_path):
    s = make_study(tmp_path / "s")  # the gnp stage ran at the chosen r
    spec = yaml.safe_load((s.path / "study.yaml").read_text())
    spec["stages"]["gnp"]["figure3_alpha"] = [3.0, 4.0]
    (s.path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    fig = figure3(load_study(s.path))
    for ax, text in zip(fig.axes, _blank_texts(fig)):
        assert not ax.get_lines()
        assert "none of Figure 3's alphas (3, 4)" in text and "alpha grid" in text
        assert "set stages.gnp.figure3_alpha" in text and "has not run" not in text


# ---------------------------------------------------------------- report.html and build_outputs


def _data_uris(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_render_report_is_self_contained_and_complete(study_dir, tmp_path):
    out = render_report(study_dir.path, tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    images = _data_uris(text)
    assert len(images) == 2
    _check_png(images[0], FIG2_PX)
    _check_png(images[1], FIG3_PX)
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # nothing outside the file
    assert text.count("<table") >= 6  # results, 3 candidate tables, counts, stages (+ bad trials)
    for needle in ["4.79 ± 0.15 (2/3)", "5.20 ± 0.11", "4.50 ± 0.11", "2.43 ± 0.13", "69%", "71%",
                   "alpha = 0.8 at r = 0.05", "Chosen:", "CPU hours", "GPU hours",
                   "2.14.1", "Synthetic CPU", "figure2_r:", "figure3_alpha:", "diverged at epoch",
                   "RuntimeError: out of memory"]:
        assert needle in text, needle


def test_build_outputs_writes_all_five_files(tmp_path):
    s = make_study(tmp_path / "s")
    paths = build_outputs(s.path)
    assert set(paths) == {"results.md", "results.csv", "figure2.png", "figure3.png", "report.html"}
    assert all(p.parent == s.path and p.stat().st_size > 0 for p in paths.values())
    _check_png(paths["figure2.png"].read_bytes(), FIG2_PX)
    _check_png(paths["figure3.png"].read_bytes(), FIG3_PX)
    # the report embeds exactly the PNGs written beside it
    assert _data_uris(paths["report.html"].read_text(encoding="utf-8")) == [
        paths["figure2.png"].read_bytes(), paths["figure3.png"].read_bytes()]


def test_build_outputs_for_a_study_in_progress(tmp_path):
    s = make_study(tmp_path / "s", stages=("standard",), paper=False, run_info=False)
    paths = build_outputs(s.path)
    text = paths["report.html"].read_text(encoding="utf-8")
    assert "Not decided yet: the sam stage" in text and "Not decided yet: the gnp stage" in text
    assert "run_info.json" in text  # named as absent
    assert len(_data_uris(text)) == 2


# ---------------------------------------------------------------- headless Chromium

_CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {id: i.id, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight};
  });
  var cells = Array.prototype.map.call(document.querySelectorAll('table.results tbody tr'), function (tr) {
    return tr.cells[0].textContent.trim();
  });
  var pre = document.createElement('pre');
  pre.id = 'gnp-check';
  pre.textContent = JSON.stringify({images: imgs, tables: document.querySelectorAll('table').length,
                                    schemes: cells});
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
def test_report_loads_in_headless_chromium(study_dir, tmp_path):
    report = render_report(study_dir.path, tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", _CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="gnp-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, "the check script did not run; DOM tail: " + proc.stdout[-500:]
    result = json.loads(html.unescape(m.group(1)))
    assert [i["id"] for i in result["images"]] == ["figure2", "figure3"]
    for img, (w, h) in zip(result["images"], (FIG2_PX, FIG3_PX)):
        assert img["complete"] and (img["w"], img["h"]) == (w, h), img  # decoded at the PNG's size
    assert result["schemes"] == ["Standard", "SAM", "GNP"]
    assert result["tables"] >= 6


# ------------------------------------------- uncertainty in the figures and the page (docs/statistics.md)

import yaml  # noqa: E402
from scipy import stats as sps  # noqa: E402

from gnp_study.report import TIED_LABEL  # noqa: E402


def _bar_halfwidths(ax):
    """{x: half-length of the vertical error bar} of every errorbar point with a bar."""
    out = {}
    for c in ax.containers:
        if not c.has_yerr:
            continue
        for seg in c.lines[2][0].get_segments():
            (x0, y0), (_, y1) = seg
            out[round(float(x0), 6)] = abs(float(y1) - float(y0)) / 2
    return out


def test_figure2_error_bars_ci_by_default_or_std(study):
    t = study.trials
    std_key = study.decisions["standard"]["config_key"]
    vals = t[(t["config_key"] == std_key) & (t["status"] == "completed")]["best_test_error"].to_numpy()
    half_ci = sps.t.ppf(0.975, len(vals) - 1) * sps.sem(vals)
    ax = figure2(study).axes[0]
    assert _bar_halfwidths(ax)[0.0] == pytest.approx(half_ci)
    assert "95% CI" in figure2(study).get_suptitle()
    ax_std = figure2(study, error_bars="std").axes[0]
    assert _bar_halfwidths(ax_std)[0.0] == pytest.approx(np.std(vals, ddof=1))
    labels = [tx.get_text() for tx in figure2(study, error_bars="std").legends[0].get_texts()]
    assert "± 1 std over seeds" in labels
    with pytest.raises(ValueError, match="error_bars"):
        figure2(study, error_bars="sem")


def test_figure2_gets_a_panel_for_the_best_r_when_it_is_not_a_figure2_r(tmp_path):
    s = make_study(tmp_path / "s")  # best r of stage 2 is 0.05; gnp trials exist at 0.05 and 0.1
    spec = yaml.safe_load((s.path / "study.yaml").read_text())
    spec["stages"]["gnp"]["figure2_r"] = [0.1]
    (s.path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    fig = figure2(load_study(s.path))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 2
    assert titles[0].startswith("r = 0.05 (best r of stage 2, not a figure2_r)") and titles[1].startswith("r = 0.1")
    # the best-r panel holds the GNP means at r = 0.05, among them the chosen alpha
    t = s.trials
    gnp = t[(t["stage"] == "gnp") & np.isclose(t["r"], 0.05) & (t["status"] == "completed")]
    by_x = {round(x, 6): y for x, y, _ in _points(fig.axes[0])}
    assert by_x[0.8] == pytest.approx(gnp[np.isclose(gnp["alpha"], 0.8)]["best_test_error"].mean())
    assert any(ln.get_label() == "_child0" or ln.get_linestyle() == ":" for ln in fig.axes[0].get_lines())
    # no gnp trials at the best r yet: no extra panel
    s2 = make_study(tmp_path / "s2", stages=("standard", "sam"))
    (s2.path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert len([ax for ax in figure2(load_study(s2.path)).axes if ax.get_title()]) == 1


def test_figure2_rings_the_alphas_tied_with_the_chosen_one(tmp_path):
    s = make_study(tmp_path / "s")
    dec = json.loads((s.path / "decisions.json").read_text())
    t = s.trials
    key_of = {a: t[(t["stage"] == "gnp") & np.isclose(t["r"], 0.05) & np.isclose(t["alpha"], a)]["config_key"].iloc[0]
              for a in (0.7, 0.9)}
    dec["gnp"]["indistinguishable"] = [key_of[0.7], key_of[0.9]]
    (s.path / "decisions.json").write_text(json.dumps(dec))
    fig = figure2(load_study(s.path))
    ax = fig.axes[FIGURE2_R.index(0.05)]
    (ring,) = [ln for ln in ax.get_lines() if ln.get_label() == TIED_LABEL]
    assert sorted(np.round(ring.get_xdata(), 6)) == [0.7, 0.8, 0.9]
    assert ring.get_markerfacecolor() == "none"
    ok = t[(t["stage"] == "gnp") & np.isclose(t["r"], 0.05) & (t["status"] == "completed")]
    for x, y in zip(ring.get_xdata(), ring.get_ydata()):
        assert y == pytest.approx(ok[np.isclose(ok["alpha"], x)]["best_test_error"].mean())
    assert TIED_LABEL in [tx.get_text() for tx in fig.legends[0].get_texts()]
    other = fig.axes[FIGURE2_R.index(0.1)]
    assert not [ln for ln in other.get_lines() if ln.get_label() == TIED_LABEL]  # only on the chosen r


def test_figure3_legend_says_what_the_lines_average(study):
    ax_e = figure3(study).axes[1]
    assert ax_e.get_legend().get_title().get_text().startswith("lines: mean over 3 seeds")


def test_report_states_the_mode_and_the_verdicts(study_dir, tmp_path):
    text = render_report(study_dir.path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="selection-mode"' in text and "optimistic by construction" in text
    assert 'id="verdicts"' in text
    for needle in ["GNP − Standard = −0.70 points", "SAM − Standard = ", "GNP − SAM = ", "paired over"]:
        assert needle in text, needle
    assert "95% CI of the mean over seeds (Student t)" in text  # the caption names the bars
    std_text = render_report(study_dir.path, tmp_path / "r2.html", error_bars="std").read_text(encoding="utf-8")
    assert "error bars and band: ± 1 std over seeds" in std_text


def test_report_shows_the_decisions_certainty(tmp_path):
    s = make_study(tmp_path / "s")
    dec = json.loads((s.path / "decisions.json").read_text())
    sam = dec["sam"]
    keys = [c["config_key"] for c in sam["candidates"]]
    runner = [k for k in keys if k != sam["config_key"]][0]
    for c in sam["candidates"]:
        c["prob_best"] = 0.7 if c["config_key"] == sam["config_key"] else 0.15
        c["vs_winner"] = None if c["config_key"] == sam["config_key"] else {
            "n": 2, "diff": 0.2, "ci_low": -0.5, "ci_high": 0.9, "resolved": False}
    sam.update(indistinguishable=[runner], prob_best_method={"draws": 4000, "seed": 0},
               margin={"runner_up": runner, "mean_difference": 0.2,
                       "paired": {"n": 2, "diff": 0.2, "ci_low": -0.5, "ci_high": 0.9, "resolved": False}})
    (s.path / "decisions.json").write_text(json.dumps(dec))
    text = render_report(s.path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "posterior probability of being best 0.70" in text
    # an older folder stored the bootstrap share: named for what it is, not called a probability
    sam.pop("prob_best_method")
    sam["bootstrap"] = {"resamples": 2000, "seed": 0}
    (s.path / "decisions.json").write_text(json.dumps(dec))
    text = render_report(s.path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "share of bootstrap resamples won 0.70" in text and "posterior probability" not in text
    assert "margin to the runner-up +0.20 points, paired 95% CI −0.50 to +0.90 over 2 seeds: not resolved" in text
    assert "+0.20 (−0.50 to +0.90, 2 seeds)" in text and "P(best)" in text


def test_figure2_in_validation_mode_shows_the_reported_column(tmp_path):
    s = make_validation_study(tmp_path / "v")
    t = pd.read_parquet(s.path / "trials.parquet")
    fig = figure2(load_study(s.path))
    ax = fig.axes[0]
    ok = t[(t["config_key"] == s.decisions["standard"]["config_key"]) & (t["status"] == "completed")]
    by_x = {round(x, 6): y for x, y, _ in _points(ax)}
    assert by_x[0.0] == pytest.approx(ok["test_error_at_best_val"].mean())
    assert "validation" in ax.get_ylabel() or "val" in ax.get_ylabel()
    assert "test error at best validation epoch" in fig.get_suptitle()
    text = render_report(s.path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="mode validation"' in text and "optimistic by construction" not in text


def test_figure2_and_tables_show_candidates_the_race_eliminated(tmp_path):
    from gnp_study.report import ELIMINATED_LABEL, build_outputs

    s = make_study(tmp_path / "s")
    t = s.trials
    at = (t["stage"] == "gnp") & np.isclose(t["r"], 0.05) & np.isclose(t["alpha"], 0.3)
    key = t[at]["config_key"].iloc[0]
    kept = t[~(at & (t["seed"] == 2))]  # the race ran seeds 0 and 1 only
    kept.to_parquet(s.path / "trials.parquet", index=False)
    dec = json.loads((s.path / "decisions.json").read_text())
    dec["gnp"]["race"] = {"trials_run": 50, "fixed_trials": 51, "test": "one-sided paired t-test, holm",
                          "races": [{"name": "gnp r=0.05", "end_reason": "all seeds", "n_seeds": 3, "candidates": {
                              key: {"alpha": 0.3, "r": 0.05, "selectable": True, "seeds_run": 2,
                                    "status": "eliminated", "block": 1, "n_seeds": 2, "reason": "test",
                                    "reference": "x", "n_pairs": 2, "diff": 0.5, "p": 0.001, "threshold": 0.005}}}]}
    (s.path / "decisions.json").write_text(json.dumps(dec))
    fig = figure2(load_study(s.path))
    ax = fig.axes[FIGURE2_R.index(0.05)]
    (tri,) = [ln for ln in ax.get_lines() if ln.get_marker() == "^"]
    assert [round(float(x), 6) for x in tri.get_xdata()] == [0.3]
    ok = kept[at.loc[kept.index] & (kept["status"] == "completed")]
    assert tri.get_ydata()[0] == pytest.approx(ok["best_test_error"].mean())
    assert tri.get_markerfacecolor() == "white"
    assert "2 seeds" in [tx.get_text() for tx in ax.texts]
    assert ELIMINATED_LABEL in [tx.get_text() for tx in fig.legends[0].get_texts()]
    # the other panel has no eliminated candidate
    assert not [ln for ln in fig.axes[FIGURE2_R.index(0.1)].get_lines() if ln.get_marker() == "^"]
    build_outputs(s.path)
    md = (s.path / "results.md").read_text()
    assert "## Race" in md and "2% fewer" in md  # 50 of 51
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| gnp ") and "eliminated" in ln]
    assert "| 0.3 " in row and "| 0.001 " in row
    assert 'id="race"' in (s.path / "report.html").read_text()
