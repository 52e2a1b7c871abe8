"""``gnp_study.run_study``: the Python entry point runs the command line's code path (``gnp-study run
greedy``). Bad input raises the CLI's message and writes nothing; a path, a dict and a StudySpec give the
run the same study; the package stays light to import; one tiny study end to end through Ray Tune."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import gnp_study
from gnp_study import api, protocol, runner
from gnp_study.cli import main
from gnp_study.spec import SpecError, find_study, parse_spec
from helpers import TINY

ROOT = Path(__file__).resolve().parent.parent


def cli_error(argv: list[str], capsys) -> str:
    """The message ``gnp-study ARGV`` prints after ``gnp-study: error: `` (its status must be 2)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gnp-study: error: "), err
    return err[len("gnp-study: error: "):]


def nothing_written(where: Path) -> bool:
    return not any(where.iterdir())


def bad_key_study() -> dict:
    raw = copy.deepcopy(TINY)
    raw["training"]["lrr"] = 0.1  # a typo of lr
    return raw


def unimportable_model_study() -> dict:
    raw = copy.deepcopy(TINY)
    raw["model"]["name"] = "no_such_package_gnp.nets:Net"  # the user's code: checked before any trial
    return raw


@pytest.mark.parametrize("make, says", [(bad_key_study, "training.lrr: unknown key (a typo?)"),
                                        (unimportable_model_study, "no_such_package_gnp")])
def test_bad_study_raises_the_cli_message_and_writes_nothing(make, says, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the default study folder reports/<name> would land here
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump(make()))
    out = work / "out"
    expected = cli_error(["run", "greedy", str(study), "--output", str(out)], capsys)
    assert says in expected and str(study) in expected
    with pytest.raises(SpecError) as from_path:
        api.run_study(study, out)
    assert str(from_path.value) == expected
    with pytest.raises(SpecError) as from_dict:  # the same message; the study is named <dict>, not a file
        gnp_study.run_study(make(), out)
    assert str(from_dict.value) == expected.replace(str(study), "<dict>")
    with pytest.raises(SpecError):
        gnp_study.run_study(make())  # the default folder reports/tiny is not made either
    assert nothing_written(work)


def test_missing_study_file_raises_the_cli_message_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope.yaml"
    expected = cli_error(["run", "greedy", str(missing)], capsys)
    assert "not found" in expected and str(missing) in expected
    with pytest.raises(SpecError) as e:
        gnp_study.run_study(missing)
    assert str(e.value) == expected
    assert nothing_written(tmp_path)


def test_a_study_of_another_type_is_refused(tmp_path):
    with pytest.raises(SpecError, match="not int"):
        api.run_study(3, tmp_path / "out")


@pytest.fixture
def handed_to_runner(monkeypatch):
    """``runner.run_greedy`` replaced by a recorder of ``(spec, study_dir, address, build_report)``; the CLI's
    console summary of the (unwritten) folder is skipped."""
    calls = []
    monkeypatch.setattr(runner, "run_greedy", lambda spec, out, address=None, build_report=True:
                        calls.append((spec, out, address, build_report)) or {})
    monkeypatch.setattr("gnp_study.cli.print_summary", lambda out: None)
    return calls


def test_a_path_a_dict_and_a_studyspec_give_the_run_the_same_study(tmp_path, handed_to_runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = find_study("digits")
    raw = yaml.safe_load(path.read_text())
    spec = parse_spec(copy.deepcopy(raw))
    before = spec.model_dump()
    assert main(["run", "greedy", str(path)]) == 0  # the command line, for comparison
    folders = [gnp_study.run_study(s, address="127.0.0.1:1", build_report=False) for s in (path, raw, spec)]
    assert spec.model_dump() == before  # the caller's StudySpec is not changed
    assert folders == [Path("reports/digits")] * 3
    cli_spec = handed_to_runner[0][0]
    for given, (s, out, address, build_report) in zip((path, raw, spec), handed_to_runner[1:]):
        assert (out, address, build_report) == (Path("reports/digits"), "127.0.0.1:1", False), given
        assert s.resolved() == cli_spec.resolved()
        assert protocol.plan("standard", s, {}) == protocol.plan("standard", cli_spec, {})
        assert protocol.count_trials(s, len(s.seeds)) == protocol.count_trials(cli_spec, len(cli_spec.seeds))
    assert len(protocol.plan("standard", cli_spec, {})) == 12  # digits: 3 lr x 4 seeds


def test_the_study_folder_is_chosen_as_on_the_command_line(tmp_path, handed_to_runner):
    assert gnp_study.run_study("digits", tmp_path / "here") == tmp_path / "here"
    fresh = gnp_study.run_study("digits", tmp_path / "here", new=True)
    assert fresh.parent == tmp_path and fresh.name.startswith("here-") and fresh.name != "here"
    uri = gnp_study.run_study("digits", "s3://bucket/gnp/digits/")  # a URI: the run gets it as given ...
    assert handed_to_runner[-1][1] == "s3://bucket/gnp/digits"
    assert uri == runner._mirror_dir("s3://bucket/gnp/digits")  # ... and the caller its local mirror


def test_the_package_imports_without_the_api_torch_or_ray():
    code = ("import sys, gnp_study; print(sorted(m for m in ('gnp_study.api', 'torch', 'ray') if m in sys.modules)); "
            "import gnp_study.api; print(sorted(m for m in ('torch', 'ray') if m in sys.modules)); "
            "print(gnp_study.run_study is gnp_study.api.run_study, 'run_study' in gnp_study.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=True).stdout.split("\n")
    assert out[:3] == ["[]", "[]", "True True"]


def test_the_stage_callback_pickles_under_a_captured_stderr(capsys):
    """Tune pickles a stage's callback with the experiment; under pytest's (or a notebook's) capture of
    stderr the progress line must neither hold that stream nor print to a capture that has ended."""
    from ray import cloudpickle

    progress = runner._Progress("standard", 2)
    cloudpickle.loads(cloudpickle.dumps(progress.callback))
    assert "stage standard: 0/2 trials done" in capsys.readouterr().err


# ------------------------------------------------------------------------------- end to end
#: The smallest study through the whole protocol: 2 seeds x (1 lr + 1 r + 1 alpha) = 6 trials of 1 epoch.
SMALLEST = dict(copy.deepcopy(TINY), name="api_tiny", seeds=[0, 1], checkpoint_every=1,
                data={"dataset": "digits", "augmentation": "none", "train_subset": 200},
                training=dict(TINY["training"], epochs=1),
                stages={"standard": {"space": {"lr": [0.05]}}, "sam": {"r": [0.05]},
                        "gnp": {"alpha": [0.5], "figure3_alpha": [0.5]}})


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_run_study_runs_a_tiny_study_end_to_end(ray_head, tmp_path):
    """In this process (as in a notebook, with pytest capturing stdout and stderr): the returned folder holds
    the tables and the results page."""
    import ray

    env = dict(os.environ)
    try:
        folder = gnp_study.run_study(SMALLEST, tmp_path / "study", address=ray_head)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(env)
    assert folder == tmp_path / "study"
    for name in ("trials.parquet", "results.md", "decisions.json", "report.html"):
        assert (folder / name).is_file(), name
    import pandas as pd

    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 6 and set(trials["stage"]) == {"standard", "sam", "gnp"}
    assert "GNP" in (folder / "results.md").read_text(encoding="utf-8")
