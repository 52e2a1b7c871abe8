"""Job submission glue (gnp_study.jobs) without a cluster: entrypoint, runtime environment, what is
uploaded (zipped by Ray's own packaging code), argparse verbs and one-line errors with exit status 2.

The round trip against a real Ray head is in tests/test_cluster_e2e.py.
"""

from __future__ import annotations

import argparse
import io
import shlex
import zipfile
from pathlib import Path

import pytest

from gnp_study import jobs
from helpers import free_port

ROOT = Path(jobs.__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnp-study")
    sub = parser.add_subparsers(dest="verb", required=True)
    jobs.add_job_commands(sub)
    return parser


def test_entrypoint_runs_the_study_against_the_cluster():
    cmd = jobs.build_entrypoint("gnp_study_job/my study.yaml", output="s3://bucket/x y", python="/opt/py/bin/python",
                                extra_args=["--max-trials", "3"])
    assert shlex.split(cmd) == ["/opt/py/bin/python", "-m", "gnp_study", "run", "greedy",
                                "gnp_study_job/my study.yaml", "--output", "s3://bucket/x y",
                                "--address", "auto", "--max-trials", "3"]
    # defaults: `python` from the head's PATH, no --output
    assert shlex.split(jobs.build_entrypoint("a.yaml")) == ["python", "-m", "gnp_study", "run", "greedy", "a.yaml",
                                                           "--address", "auto"]


def test_runtime_env_passes_auth_mode_but_never_a_token(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-token-value")
    env = jobs.build_runtime_env(tmp_path, extra_pip=["pytorch_optimizer"])
    assert env["working_dir"] == str(tmp_path)
    assert env["env_vars"]["RAY_AUTH_MODE"] == "token"
    assert "secret-token-value" not in repr(env)
    assert env["pip"] == ["pytorch_optimizer"]
    assert ".git" in env["excludes"] and "reports/" in env["excludes"] and "*.parquet" in env["excludes"]
    monkeypatch.delenv("RAY_AUTH_MODE")
    env = jobs.build_runtime_env(tmp_path)
    assert "RAY_AUTH_MODE" not in env["env_vars"] and "pip" not in env


def _zip_names(stage: Path, tmp_path: Path) -> set[str]:
    """What Ray would upload: its own packaging code zips the folder (follows links, applies excludes)."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / "pkg.zip"
    create_package(str(stage), target, include_gitignore=True, excludes=jobs.EXCLUDES)
    with zipfile.ZipFile(target) as z:
        return {n.rstrip("/") for n in z.namelist()}


def test_working_dir_carries_project_and_outside_study(tmp_path):
    study = tmp_path / "elsewhere" / "tiny.yaml"
    study.parent.mkdir()
    study.write_text("name: tiny\n")
    with jobs.staged_working_dir(study) as (stage, arg):
        assert arg == "gnp_study_job/tiny.yaml"
        assert (stage / arg).read_text() == "name: tiny\n"
        names = _zip_names(stage, tmp_path)
        kept_stage = stage
    assert not kept_stage.exists(), "the staging folder is removed after submission"
    assert not (ROOT / jobs.STUDY_DIR).exists() and not (ROOT / "tiny.yaml").exists(), \
        "nothing is written into the project"
    assert "gnp_study_job/tiny.yaml" in names
    assert "gnp_study/jobs.py" in names and "gnp_study/__init__.py" in names
    assert "pyproject.toml" in names
    assert not any(n == ".git" or n.startswith(".git/") for n in names)
    assert not any(n.startswith("reports/") for n in names)
    assert not any(n.endswith(".parquet") or "__pycache__" in n for n in names)


def test_missing_study_is_a_job_error(tmp_path):
    with pytest.raises(jobs.JobError, match="not found"):
        with jobs.staged_working_dir(tmp_path / "nope.yaml"):
            pass


def test_unreachable_address_is_one_line_error_exit_2(capsys, tmp_path):
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(jobs.JobError, match="cannot reach"):
        jobs.job_status("raysubmit_x", address)
    study = tmp_path / "s.yaml"
    study.write_text("name: s\n")
    parser = _parser()
    for argv in (["status", "raysubmit_x", "--address", address],
                 ["logs", "raysubmit_x", "--address", address],
                 ["stop", "raysubmit_x", "--address", address],
                 ["submit", str(study), "--address", address, "--output", str(tmp_path / "out")]):
        args = parser.parse_args(argv)
        assert args.func(args) == jobs.EXIT_ERROR, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith(f"gnp-study {argv[0]}: error: "), err
        assert "Traceback" not in err


def test_submit_missing_study_exit_2(capsys, tmp_path):
    parser = _parser()
    args = parser.parse_args(["submit", str(tmp_path / "missing.yaml"), "--address", "http://127.0.0.1:1",
                              "--output", str(tmp_path)])
    assert args.func(args) == jobs.EXIT_ERROR
    assert "error:" in capsys.readouterr().err


def test_verbs_parse_and_have_help():
    parser = _parser()
    args = parser.parse_args(["submit", "s.yaml", "--address", "http://h:8265", "--output", "s3://b/p",
                              "--python", "/x/python", "--pip", "a", "--pip", "b", "--follow",
                              "--run-args", "--foo 1"])
    assert (args.study, args.address, args.output, args.python, args.pip, args.follow) == \
        ("s.yaml", "http://h:8265", "s3://b/p", "/x/python", ["a", "b"], True)
    assert shlex.split(args.run_args) == ["--foo", "1"]
    assert parser.parse_args(["logs", "j"]).follow is True
    assert parser.parse_args(["logs", "j", "--no-follow"]).follow is False
    for verb in ("submit", "status", "logs", "stop"):
        a = parser.parse_args([verb, "x"])
        assert callable(a.func)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert "job id" in helps["submit"] and "status" in helps["status"]
    assert "follow" in helps["logs"] and "stop" in helps["stop"]
    assert "report.html" in sub.choices["submit"].format_help()


class EarlyEndingClient:
    """A stand-in for ``JobSubmissionClient`` whose log stream ends early while the job still runs.

    The job's log grows by one line at each status request; every stream (like Ray's) starts at the log's
    first character, hands it out in chunks that cut lines in odd places, and ends after ``per_stream``
    chunks even though the job runs on. After ``running_polls`` status requests the job is ``final``.
    """

    def __init__(self, final: str, running_polls: int = 6, per_stream: int = 2, broken_streams: int = 0):
        self.lines = [f"line {i}: {'x' * (i % 7)}\n" for i in range(3)]
        self.final, self.running_polls, self.per_stream = final, running_polls, per_stream
        self.broken_streams = broken_streams  # this many streams raise (a dropped connection) mid-way
        self.polls = self.streams = 0

    def get_job_status(self, job_id: str):
        from ray.job_submission import JobStatus

        self.polls += 1
        if self.polls > self.running_polls:
            return JobStatus(self.final)
        self.lines.append(f"line {len(self.lines)}: epoch done\n")
        return JobStatus.RUNNING

    def get_job_logs(self, job_id: str) -> str:
        return "".join(self.lines)

    async def tail_job_logs(self, job_id: str):
        self.streams += 1
        text = "".join(self.lines)
        cuts = [0, 5, 13, 14, 30, 31, 47]  # chunk boundaries inside and between lines
        for k, (a, b) in enumerate(zip(cuts, cuts[1:] + [len(text)])):
            if k == self.per_stream or a >= len(text):
                return  # the stream ends early: the job still runs
            if self.streams <= self.broken_streams and k == 1:
                raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")
            yield text[a:min(b, len(text))]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("final", ["SUCCEEDED", "FAILED", "STOPPED"])
@pytest.mark.parametrize("broken", [0, 2])
def test_follow_logs_reattaches_until_the_job_ends(monkeypatch, final, broken):
    monkeypatch.setattr(jobs, "FOLLOW_POLL_S", 0.0, raising=False)
    monkeypatch.setattr(jobs, "FOLLOW_MAX_POLL_S", 0.0, raising=False)
    client = EarlyEndingClient(final, broken_streams=broken)
    out = io.StringIO()
    assert jobs.follow_logs("raysubmit_x", None, out=out, client=client) == final
    assert client.streams > 3, "the stream ended early several times and was re-attached each time"
    # every line exactly once, in order: the whole log as the job wrote it, nothing repeated or lost
    assert out.getvalue() == "".join(client.lines)
    assert len(client.lines) == 3 + client.running_polls


@pytest.mark.timeout(30)
@pytest.mark.parametrize("verb", ["logs", "submit"])
@pytest.mark.parametrize("final, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_follow_exit_status_comes_from_the_terminal_state(monkeypatch, capsys, tmp_path, verb, final, code):
    client = EarlyEndingClient(final, running_polls=4, per_stream=1)
    monkeypatch.setattr(jobs, "FOLLOW_POLL_S", 0.0, raising=False)
    monkeypatch.setattr(jobs, "FOLLOW_MAX_POLL_S", 0.0, raising=False)
    monkeypatch.setattr(jobs, "_client", lambda address: client)
    monkeypatch.setattr(jobs, "submit_study", lambda *a, **k: "raysubmit_x")
    study = tmp_path / "s.yaml"
    study.write_text("name: s\n")
    argv = ["logs", "raysubmit_x"] if verb == "logs" else ["submit", str(study), "--output", "/x", "--follow"]
    args = _parser().parse_args(argv)
    assert args.func(args) == code
    printed = capsys.readouterr().out
    assert printed.endswith("".join(client.lines))
    assert printed.count("line 4: epoch done\n") == 1


def test_study_packages_of_a_study_outside_the_project(tmp_path, monkeypatch):
    """The worked example copied anywhere: its package (beside the study file, the default code_dir) is
    what the job ships as py_modules."""
    import shutil
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    copy = tmp_path / "mine"
    shutil.copytree(ROOT / "examples" / "tabular", copy, ignore=shutil.ignore_patterns("__pycache__"))
    # the package imported from another copy earlier in this process (tests/test_cluster_e2e.py) would
    # be found in sys.modules; the copy's modules, imported here, go with the copy
    for mod in [m for m in sys.modules if m == "tabular_gnp" or m.startswith("tabular_gnp.")]:
        monkeypatch.delitem(sys.modules, mod)
    try:
        packages = jobs.study_packages(copy / "study.yaml")
    finally:
        for mod in [m for m in sys.modules if m == "tabular_gnp" or m.startswith("tabular_gnp.")]:
            del sys.modules[mod]
    assert packages == [str((copy / "tabular_gnp").resolve())]
    assert jobs.build_runtime_env(tmp_path, py_modules=packages)["py_modules"] == packages


def _probe_package(folder: Path, name: str) -> Path:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    return folder


@pytest.mark.parametrize("shipped, copy_on_path, from_driver", [
    (True, True, False),    # Ray shipped it: the driver's folder stays off the path
    (False, False, True),   # a local Ray: the workers import it from the driver's code_dir
    (True, False, True),    # py_modules of something else: the driver's folder is the fallback
])
def test_trial_worker_imports_the_shipped_package_not_the_drivers_folder(tmp_path, monkeypatch, shipped,
                                                                         copy_on_path, from_driver):
    """A trial worker on the node of a driver that ran `gnp-study run --address` imported the package from
    the driver's code_dir (put first on sys.path), not the copy Ray shipped to every node."""
    import importlib.util
    import sys

    from gnp_study.trainable import trial_spec

    name = f"gnp_probe_pkg_{int(shipped)}{int(copy_on_path)}"
    driver = _probe_package(tmp_path / "driver", name)
    copy = _probe_package(tmp_path / "runtime_resources", name)
    monkeypatch.setattr(sys, "path", [str(copy)] + list(sys.path) if copy_on_path else list(sys.path))
    spec_dict = {"name": "t", "data": {"dataset": f"{name}.data:load"}, "model": {"name": f"{name}.nets:Net"},
                 "training": {"epochs": 1, "batch_size": 8, "lr": 0.1}, "seeds": [0], "code_dir": str(driver)}
    spec = trial_spec(spec_dict, shipped=shipped)
    assert spec.model.name == f"{name}.nets:Net"
    assert (str(driver) in sys.path) == from_driver
    origin = Path(importlib.util.find_spec(name).origin)
    assert origin.is_relative_to(driver if from_driver else copy)
