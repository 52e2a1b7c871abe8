"""The kill soak (``tests/kill_soak.py``) at a size that fits the test suite: a small study interrupted at
three randomised moments ends exactly as its uninterrupted run (docs/recovery.md); and at two moments
with one checkpoint per trial and reports every second epoch (the digits study's cadence, docs/tracking.md)
against a reference run that checkpoints and reports every epoch. Run it by hand with ``--points 30`` or more."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
SOAK_TIMEOUT_S = 2400


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
@pytest.mark.parametrize("points, seed, cadence", [
    (3, 2611, []),
    # as the digits study ships: one checkpoint per trial (at its end), reports sparser than epochs
    (2, 3011, ["--checkpoint-every", "3", "--report-every", "2"]),
], ids=["every-epoch", "one-checkpoint-sparse-reports"])
def test_kill_soak_small(tmp_path, points, seed, cadence):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_soak.py"), "--points", str(points),
                           "--seed", str(seed), "--per-folder", "3", "--workdir", str(tmp_path), *cadence],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = re.search(r"(\d+) points in (\d+) study folders, (\d+) passed, (\d+) failed", out)
    assert summary, out[-3000:]
    got_points, folders, passed, failed = map(int, summary.groups())
    assert got_points == points and passed == folders and failed == 0, out[-3000:]
