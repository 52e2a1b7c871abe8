"""Helpers shared by the test modules: a free loopback port, the ``ray`` executable, a benchmark script
loaded as a module, small study specs, one training trial, and the tiny study file the end-to-end tests
run through the CLI.

Import them with ``from helpers import ...``: pytest's default ``prepend`` import mode puts tests/ on
``sys.path``, as for ``study_fixtures``. Synthetic study *folders* (trials.parquet, decisions.json, ...) for
the results and report tests are in ``study_fixtures.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
#: How long one CLI run of the tiny study may take before :func:`finish` kills it.
RUN_TIMEOUT_S = 600


# ------------------------------------------------------------------------------- processes and ports
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released). Returns it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_bin() -> str:
    """The path of the ``ray`` executable beside the running Python interpreter."""
    return str(Path(sys.executable).with_name("ray"))


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package), loaded from its file.
    Raises FileNotFoundError when there is no such benchmark."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def unmarked_ray_items(items) -> list[str]:
    """The node ids of the collected test ``items`` that use the ``ray_head`` fixture (directly or through
    another fixture) but carry no ``ray`` marker. Returns [] when every such test is marked."""
    return [item.nodeid for item in items
            if "ray_head" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None]


# ------------------------------------------------------------------------------- study specs
#: The training section of :func:`digits_trial_spec` before its ``training`` overrides.
TRIAL_TRAINING = {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def digits_trial_spec(data: dict | None = None, training: dict | None = None, seeds=(0,), **top):
    """A parsed study for training single trials in-process: digits with ``train_subset`` 300 (updated
    with ``data``), ``small_cnn``, :data:`TRIAL_TRAINING` updated with ``training``, the given ``seeds``,
    and any other top-level keys in ``top`` (``checkpoint_every``, ``resources``, ...).

    Returns a :class:`gnp_study.spec.Spec`; raises :class:`gnp_study.spec.SpecError` where the result is
    not a valid study."""
    from gnp_study.spec import parse_spec

    return parse_spec({"name": "t", "data": {"dataset": "digits", "train_subset": 300, **(data or {})},
                       "model": {"name": "small_cnn"}, "training": {**TRIAL_TRAINING, **(training or {})},
                       "seeds": list(seeds), **top})


def protocol_spec(stages: dict, seeds=(0, 1, 2), **top):
    """A parsed study for the protocol's planning and decisions (nothing is trained): digits,
    ``small_cnn``, 2 epochs at batch size 32 and lr 0.1, the given ``stages`` and ``seeds``, and any
    other top-level keys in ``top``; dataset names are not checked (``check_names=False``).

    Returns a :class:`gnp_study.spec.Spec`; raises :class:`gnp_study.spec.SpecError` where the result is
    not a valid study."""
    from gnp_study.spec import parse_spec

    raw = {"name": "t", "data": {"dataset": "digits"}, "model": {"name": "small_cnn"},
           "training": {"epochs": 2, "batch_size": 32, "lr": 0.1}, "stages": stages, "seeds": list(seeds)}
    raw.update(top)
    return parse_spec(raw, check_names=False)


# ------------------------------------------------------------------------------- one trial
def gnp_trial(alpha=0.8, r=0.05, seed=0, **config) -> dict:
    """A GNP trial record as the runner hands it to ``train_trial``: config ``{**config, alpha, r}``."""
    return {"stage": "gnp", "config": dict(config, alpha=alpha, r=r), "seed": seed, "trial_id": "t",
            "config_key": "k"}


def run_trial(spec, trial: dict, resume=None):
    """Train ``trial`` of ``spec`` in-process. Returns (``train_trial``'s result, the list of its
    (metrics, state) reports in order)."""
    from gnp_study.train import train_trial

    reports = []
    res = train_trial(spec, trial, lambda m, st: reports.append((m, st)), resume_state=resume)
    return res, reports


_STAGE_SCRIPT = """
import json, sys
import ray
from gnp_study import runner
from gnp_study.protocol import TrialConfig
from gnp_study.spec import parse_spec
spec_dict, plan, address, storage, out = json.loads(sys.argv[1])
s = parse_spec(spec_dict)
runner.connect(address)
trials, epochs = runner.run_stage("gnp", [TrialConfig.from_dict(t) for t in plan], s, storage)[:2]
ray.shutdown()
trials.to_parquet(out + "/trials.parquet")
epochs.to_parquet(out + "/epochs.parquet")
"""


def run_stage_process(spec, plan, address: str, storage: Path, out: Path, timeout: float = 540):
    """Run the trials ``plan`` (``TrialConfig``s) of ``spec`` as stage "gnp" (``runner.run_stage``) in a
    driver process connected to the Ray head at ``address``, with Tune's ``storage_path`` ``storage``;
    the tables go to ``out/trials.parquet`` and ``out/epochs.parquet``. Returns the finished
    ``subprocess.CompletedProcess`` (text output)."""
    arg = json.dumps([spec.resolved(), [tc.to_dict() for tc in plan], address, str(storage), str(out)])
    return subprocess.run([sys.executable, "-c", _STAGE_SCRIPT, arg], capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------- the CLI end to end
TINY = {
    "name": "tiny",
    "description": "tiny digits study for the end-to-end tests",
    "data": {"dataset": "digits", "augmentation": "none"},
    "model": {"name": "small_cnn"},
    "training": {"epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "stages": {
        # lr = 1e4 diverges in its first epoch: the diverged path through the real CLI
        "standard": {"space": {"lr": [0.05, 0.1, 1.0e4]}},
        "sam": {"r": [0.05, 0.1]},
        "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [-0.5, 1.5], "figure2_r": [0.05, 0.1]},
    },
    "seeds": [0, 1],
    "resources": {"cpus_per_trial": 1},
    "max_failures": 1,
}


def write_study(path: Path, **over) -> Path:
    """Write :data:`TINY` with the top-level keys in ``over`` replaced to ``path`` as YAML. Returns
    ``path``."""
    raw = json.loads(json.dumps(TINY))
    raw.update(over)
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(args, env=None, **kw) -> subprocess.Popen:
    """Start ``python -m gnp_study ARGS`` in the repository root, in its own session (so that it and its
    children can be killed as a group), stdout and stderr merged into one text pipe. Returns the
    process."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "gnp_study", *args], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout=RUN_TIMEOUT_S) -> str:
    """Wait for a :func:`cli` process. Returns its output; fails the test (after killing its process
    group) when it runs longer than ``timeout`` seconds."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"gnp-study did not finish within {timeout}s:\n{out[-3000:]}")
    return out


def completed_results(experiment: Path) -> dict:
    """{result.json path: its reported rows} of the trials of a Tune experiment folder that completed
    (``{}`` while the folder does not exist)."""
    done = {}
    for path in experiment.rglob("result.json") if experiment.is_dir() else []:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if rows and rows[-1].get("status") == "completed":
            done[path] = rows
    return done
