"""The kill soak (``tests/kill_soak.py``) at a size that fits the test suite: a small study interrupted at
three randomised moments ends exactly as its uninterrupted run (issue 11). Run it by hand with
``--points 30`` or more."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SOAK_TIMEOUT_S = 2400


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
def test_kill_soak_small(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_soak.py"), "--points", "3", "--seed", "2611",
                           "--per-folder", "3", "--workdir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = re.search(r"(\d+) points in (\d+) study folders, (\d+) passed, (\d+) failed", out)
    assert summary, out[-3000:]
    points, folders, passed, failed = map(int, summary.groups())
    assert points == 3 and passed == folders and failed == 0, out[-3000:]
