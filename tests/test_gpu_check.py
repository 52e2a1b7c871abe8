"""benchmarks/gpu_check.sh on a machine without CUDA: it parses, and refuses with one clear line before it
creates or runs anything; its study file is a valid study on the on-device loader."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gnp_study.protocol import count_trials
from gnp_study.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    got = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "cifar10"), str(out)], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHON=sys.executable))
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "nothing run" in lines[0]
    assert got.stdout == "" and not out.exists()


def test_a_python_without_torch_is_named_in_one_line(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    got = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHON=str(fake)))
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and "cannot import torch" in got.stderr


def test_its_study_is_a_valid_gpu_study_with_a_cost_stage():
    spec = parse_spec(yaml.safe_load((ROOT / "benchmarks" / "cifar10_gpu_check.yaml").read_text()))
    assert spec.data.loader == "device" and spec.data.dataset == "cifar10" and spec.resources.gpus_per_trial > 0
    assert spec.stages.cost is not None and count_trials(spec)["total"] == 16
    # the script rewrites data.root; the line it edits must exist as it expects
    assert any(line.startswith("  root: ") for line in (ROOT / "benchmarks" / "cifar10_gpu_check.yaml")
               .read_text().splitlines())
