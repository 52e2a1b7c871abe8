"""Command-line glue that needs no Ray: help texts, validation, relative data roots, plan."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from gnp_study.api import load_study
from gnp_study.cli import build_parser, main

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_imagefolder(root):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "0000.png")


def test_relative_data_root_is_made_absolute_where_the_command_runs(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "data" / "c10")
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({
        "name": "s", "data": {"dataset": "cifar10", "root": "data/c10", "format": "imagefolder"},
        "model": {"name": "resnet8"}, "training": {"epochs": 1, "batch_size": 8, "lr": 0.1}, "seeds": [0]}))
    monkeypatch.chdir(tmp_path)
    spec = load_study(str(study))
    assert spec.data.root == str(tmp_path / "data" / "c10")
    assert spec.resolved()["data"]["root"] == str(tmp_path / "data" / "c10")


@pytest.mark.parametrize("argv", [["run", "greedy", "--help"], ["plan", "--help"], ["report", "--help"], ["init", "--help"],
                                  ["validate", "--help"], ["submit", "--help"], ["status", "--help"],
                                  ["logs", "--help"], ["stop", "--help"]])
def test_every_verb_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: gnp-study" in out and len(out.splitlines()) > 3


def test_run_greedy_help_says_what_it_writes(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "greedy", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ("trials.parquet", "epochs.parquet", "decisions.json", "figure2.png", "figure3.png",
                 "report.html", "resumes"):
        assert name in out


def test_plan_of_the_default_study_counts_every_stage(capsys):
    assert main(["plan", "--epoch-time", "2"]) == 0
    out = capsys.readouterr().out
    # digits: lr grid of 3 x 4 seeds; 5 r x 4 seeds; 17 alphas x 4 seeds x (best r + 2 Figure-2 r) at most
    assert "12 trials" in out and "20 trials" in out and "204 trials" in out and "236 trials" in out
    # estimate: (12 x 15 x 2 s) + (224 x 15 x 2 x 2 s) = 13800 s = 3.8 trial-hours
    assert "3.8 trial-hours" in out


def test_validate_default_study(capsys):
    assert main(["validate"]) == 0
    assert "valid study 'digits'" in capsys.readouterr().out


def test_plan_with_other_seed_counts(capsys):
    assert main(["plan", "--seeds", "8", "--epoch-time", "2"]) == 0
    out = capsys.readouterr().out
    # digits with 8 seeds: 3 lr x 8; 5 r x 8; 17 alphas x 8 x 3 r at most; total 24 + 40 + 408 = 472
    assert "8 seeds (--seeds; the study file has 4)" in out
    assert "24 trials" in out and "40 trials" in out and "408 trials" in out and "472 trials" in out
    # (24 x 15 x 2 s) + (448 x 15 x 2 x 2 s) = 27600 s = 7.7 trial-hours
    assert "7.7 trial-hours" in out


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_plan_rejects_a_bad_seed_count(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--seeds", bad])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["plan", "--epoch-time", "-1"], "more than 0 seconds"),
    (["plan", "--epoch-time", "0"], "more than 0 seconds"),
    (["plan", "--epoch-time", "nan"], "more than 0 seconds"),
    (["plan", "--epoch-time", "fast"], "expected a number of seconds"),
    (["plan", "--epoch-time", "2", "--measure"], "not allowed with argument"),  # one source of the epoch time
])
def test_plan_rejects_an_impossible_epoch_time(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--epoch-time" in err and says in err


def test_summary_lines_of_a_study_folder(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from study_fixtures import make_study

    from gnp_study.cli import summary_lines

    s = make_study(tmp_path / "s")
    lines = summary_lines(s.path)
    text = "\n".join(lines)
    assert "paper mode" in lines[0] and "optimistic by construction" in lines[0]
    assert "Standard" in lines[1] and "5.20 ± 0.11, 95% CI 4.93 to 5.47 (3/3 seeds)" in lines[1]
    for name in ("GNP − Standard = ", "SAM − Standard = ", "GNP − SAM = "):
        assert name in text


def test_report_error_bars_option(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from study_fixtures import make_study

    s = make_study(tmp_path / "s")
    assert main(["report", str(s.path), "--error-bars", "std"]) == 0
    assert "± 1 std over seeds" in (s.path / "report.html").read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["report", str(s.path), "--error-bars", "sem"])
    assert e.value.code == 2


def test_plan_gives_the_race_bounds(tmp_path, capsys):
    import yaml

    from gnp_study.spec import find_study

    raw = yaml.safe_load(find_study("digits").read_text())
    raw["stages"]["sam"]["race"] = {"first_block": 2}
    raw["stages"]["gnp"]["race"] = {"first_block": 3, "max_trials": 60, "extra_seeds": [4, 5]}
    (tmp_path / "race.yaml").write_text(yaml.safe_dump(raw))
    assert main(["plan", str(tmp_path / "race.yaml")]) == 0
    out = capsys.readouterr().out
    # digits: 5 r x 4 seeds = 20 fixed; fewest 5 x 2 = 10. Stage 3: 17 alphas at up to 3 r (best r not a
    # Figure-2 r): fixed 17 x 4 x 3 = 204; fewest 17 x 3 x 3 = 153; most min(60, 17 x 6) x 3 = 180.
    assert "race sam        : 10..20 trials instead of 20" in out
    assert "race gnp        : 153..180 trials instead of 204" in out
    assert "stages 2-3     : 163..200 trials racing, 224 with the fixed protocol" in out


@pytest.mark.parametrize("kind, how", [("symmetric", "one of the other classes"), ("pairflip", "c + 1")])
def test_label_noise_is_stated_in_console_results_and_report(tmp_path, kind, how):
    """A study with noisy training labels says so (fraction, kind, seed, clean test labels) in the console
    summary, results.md and report.html; a clean study says nothing of it (docs/studies.md, "The two data
    options that change what a study measures")."""
    import sys
    from pathlib import Path

    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    from study_fixtures import make_study

    from gnp_study.cli import summary_lines
    from gnp_study.report import build_outputs

    s = make_study(tmp_path / "s")
    clean = build_outputs(s.path)
    assert "Training labels" not in clean["results.md"].read_text(encoding="utf-8")
    assert "Training labels" not in "\n".join(summary_lines(s.path))
    spec_path = s.path / "study.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["data"]["label_noise"] = {"fraction": 0.25, "kind": kind, "seed": 7}
    spec_path.write_text(yaml.safe_dump(spec))
    out = build_outputs(s.path)
    for text in (out["results.md"].read_text(encoding="utf-8"), out["report.html"].read_text(encoding="utf-8"),
                 "\n".join(summary_lines(s.path))):
        assert f"Training labels: 25% wrong ({kind} noise" in text and how in text
        assert "noise seed 7" in text and "test labels are clean" in text


def test_entry_exits_with_mains_status_after_freezing_the_collector(monkeypatch):
    """The console script (``gnp-study``) and ``python -m gnp_study`` run ``entry``: main's status becomes
    the exit status, and the objects alive at the end are frozen (``gc.freeze``) so Python's exit skips
    collecting them."""
    import gc
    import tomllib
    from pathlib import Path

    from gnp_study import cli

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["gnp-study"] == "gnp_study.cli:entry"
    monkeypatch.setattr(cli, "main", lambda: 2)
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as e:
            cli.entry()
        assert e.value.code == 2 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------------------- gnp-study init
def one_error_line(capsys) -> str:
    """The one line ``gnp-study`` printed on stderr after ``gnp-study: error: ``."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gnp-study: error: "), err
    return err.strip()


@pytest.mark.parametrize("model, data", [("small_cnn", "digits"), ("torchvision:resnet18", "cifar10")])
def test_init_writes_a_commented_study_that_validates(model, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = []
    if data == "cifar10":
        write_imagefolder(tmp_path / "c10")
        root = ["--root", "c10"]
    out = tmp_path / "studies" / "first.yaml"
    assert main(["init", str(out), "--model", model, "--data", data, *root]) == 0
    assert "valid starting study" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    assert raw["name"] == "first" and raw["model"]["name"] == model and raw["data"]["dataset"] == data
    assert raw["data"].get("root") == ("c10" if root else None)
    for words in ("stage 1", "alpha = 1 (SAM)", "the best r", "figure2_r"):  # the greedy stages explained
        assert words in text
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) > 20
    assert main(["validate", str(out)]) == 0
    assert "valid study 'first'" in capsys.readouterr().out
    # the commented metric and own-loop lines have the shape the spec takes, once uncommented
    metric = "# metric: {name: test_loss, mode: min}"
    assert metric in text and "  # function: my_project.train:train_one_trial" in text
    out.write_text(text.replace(metric, metric[2:]), encoding="utf-8")
    assert main(["validate", str(out)]) == 0
    capsys.readouterr()
    out.write_text(text.replace("  # function: my_project.train:train_one_trial", "  function: nosuchpkg_gnp.train:f"),
                   encoding="utf-8")
    assert main(["validate", str(out)]) == 2
    assert "nosuchpkg_gnp" in capsys.readouterr().err
    # the commented subset and validation split fit digits (1437 training images; 5000 for other data)
    for line in ("  # train_subset: ", "  # validation: {size: "):
        assert line in text
    if data != "digits":
        return
    uncommented = text.replace("  # train_subset: ", "  train_subset: ").replace("  # validation: {size: ",
                                                                                  "  validation: {size: ")
    out.write_text(uncommented, encoding="utf-8")
    assert main(["validate", str(out)]) == 0, capsys.readouterr().err


def test_init_with_an_import_path_and_code_dir(tmp_path, monkeypatch, capsys):
    """The user's package in --code-dir (relative to where the command runs) is written relative to the
    study file's folder, and the file validates from another folder in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    pkg = tmp_path / "project" / "code" / "initpkg_gnp_test"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes, in_channels, image_size, width=16):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, width), nn.ReLU(),\n"
        "                                  nn.Linear(width, num_classes))\n\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n")
    monkeypatch.chdir(tmp_path / "project")
    out = Path("studies") / "mine.yaml"
    assert main(["init", str(out), "--model", "initpkg_gnp_test.nets:Net", "--data", "digits",
                 "--code-dir", "code", "--name", "my-net"]) == 0
    raw = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert raw["code_dir"] == "../code" and raw["name"] == "my-net"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "gnp_study", "validate", str(out.resolve())], cwd=elsewhere,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "valid study 'my-net'" in proc.stdout


def test_init_refuses_to_overwrite_a_file_and_force_overwrites_it(tmp_path, capsys):
    out = tmp_path / "s.yaml"
    out.write_text("keep me\n")
    assert main(["init", str(out), "--model", "small_cnn", "--data", "digits"]) == 2
    line = one_error_line(capsys)
    assert f"{out} exists" in line and "--force" in line
    assert out.read_text() == "keep me\n"
    assert main(["init", str(out), "--model", "small_cnn", "--data", "digits", "--force"]) == 0
    assert yaml.safe_load(out.read_text())["model"]["name"] == "small_cnn"
    assert main(["validate", str(out)]) == 0


@pytest.mark.parametrize("argv, says", [
    (["--model", "resnet9000", "--data", "digits"], "model.name: unknown model 'resnet9000'; accepted: a registry name"),
    (["--model", "small_cnn", "--data", "cifar11"], "data.dataset: unknown data set 'cifar11'"),
    (["--model", "small_cnn", "--data", "cifar10", "--root", "nowhere"], "data folder"),
    (["--model", "small_cnn", "--data", "digits", "--name", "no spaces"], "name must be letters"),
])
def test_init_refuses_an_invalid_study_in_one_line_and_writes_nothing(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "new" / "s.yaml"
    assert main(["init", str(out), *argv]) == 2
    line = one_error_line(capsys)
    assert says in line, line
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []


def test_the_study_template_is_shipped_as_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gnp_study"]
    template = root / "gnp_study" / "templates" / "study.yaml.j2"
    assert template.is_file()
    assert any(fnmatch.fnmatch("templates/study.yaml.j2", p) for p in patterns), patterns
