"""The code before the module moves (commit :data:`OLD_COMMIT`), unpacked and run beside today's, so that
the bit-for-bit tests compare old and new code on the same machine with the same kernels.

Why not compare against numbers stored from another machine alone: even with the kernels pinned to AVX2
(``tests/numerics.py``), oneDNN's convolution kernels pick their blocking from the processor they run on
(cache sizes, among others), so two x86-64 machines can sum a convolution's gradient in a different order
and train one trial to floats that differ in the 6th digit (seen: a CPU with AMX against one without).
What the tests assert, "today's code trains the same trials as the code before the change", is checked
exactly by training both here.

``tests/data/code_993d56f.tar.gz`` is ``git archive 993d56f gnp_study search_spaces`` (gzip -n), the code
and the study files of that commit; commit 512b8f0, which made ``tests/data/reference_trials.json``, differs
from it only in a figure's axis label.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numerics

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "993d56f"
TARBALL = ROOT / "tests" / "data" / f"code_{OLD_COMMIT}.tar.gz"
TRAIN_TIMEOUT_S = 900

#: Run inside the old code's process: trains each (study file, stage, config, seed) and prints one JSON
#: list of the last epoch's metrics and the per-epoch train_loss (floats as float.hex strings).
_DRIVER = r"""
import json, sys
from pathlib import Path
import gnp_study
from gnp_study.protocol import TrialConfig
from gnp_study.spec import load_spec
from gnp_study.train import train_trial
if not Path(gnp_study.__file__).resolve().is_relative_to(Path.cwd().resolve()):
    sys.exit(f"imported {gnp_study.__file__}, not the old code under {Path.cwd()}")
out = []
for study, stage, config, seed in json.loads(sys.stdin.read()):
    rows = []
    train_trial(load_spec(study), TrialConfig(stage, config, seed).to_dict(), lambda m, st: rows.append(dict(m)))
    last = {k: float(v).hex() for k, v in rows[-1].items() if isinstance(v, (int, float))}
    out.append({"last": last, "train_loss": [float(r["train_loss"]).hex() for r in rows]})
print(json.dumps(out))
"""


def unpack(dest: Path) -> Path:
    """Unpack the old code into ``dest`` (created); returns ``dest``, which holds ``gnp_study/`` and
    ``search_spaces/`` of :data:`OLD_COMMIT`."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(TARBALL) as tar:
        tar.extractall(dest, filter="data")
    return dest


def old_env(oldcode: Path) -> dict:
    """The environment a process of the old code runs with: the pinned kernels (``tests/numerics.py``) and
    ``PYTHONPATH`` at the old code, so that its package is imported instead of this checkout's."""
    return dict(os.environ, **numerics.PINNED_ISA, PYTHONPATH=str(oldcode), PYTHONUNBUFFERED="1")


def train_old(oldcode: Path, trials: list[tuple[str, str, dict, int]]) -> list[dict]:
    """Train ``trials`` with the old code in one child process.

    Args:
        oldcode: a folder made by :func:`unpack`.
        trials: ``(study file path, stage, config, seed)`` each; the study file is read by the old code.

    Returns:
        One dict per trial: ``last`` (the last epoch's numeric metrics, ``float.hex`` strings) and
        ``train_loss`` (every epoch's, ``float.hex``).

    Raises:
        RuntimeError: the child failed or ran past :data:`TRAIN_TIMEOUT_S`; the message has its stderr.
    """
    try:
        proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(trials), cwd=oldcode,
                              env=old_env(oldcode), capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"the old code did not train {len(trials)} trials in {TRAIN_TIMEOUT_S} s") from e
    if proc.returncode:
        raise RuntimeError(f"the old code failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
