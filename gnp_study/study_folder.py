"""The study folder's format: its file names, the two tables' columns, atomic writers, readers and the one
error class for a folder that cannot be read. ``docs/study-folder.md`` describes each file.

The runner writes a study folder (:mod:`gnp_study.runner`); the outputs read it (:func:`gnp_study.results.
load_study`); both go through this module, so a file name or a column is spelled once. Imports neither Ray
nor torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

#: File names inside a study folder.
STUDY_YAML = "study.yaml"                      # the resolved spec (every default filled in)
DECISIONS_JSON = "decisions.json"              # per stage: the choice and its evidence
TRIALS_PARQUET = "trials.parquet"              # one row per trial (TRIAL_COLUMNS)
EPOCHS_PARQUET = "epochs.parquet"              # one row per (trial, epoch) (EPOCH_COLUMNS)
RUN_INFO_JSON = "run_info.json"                # versions, machine, per-stage wall times
SEARCH_TRIALS_PARQUET = "search_trials.parquet"  # stage 1's Optuna samples (stages.standard.search)
PAPER_REFERENCE_CSV = "paper_reference.csv"    # the paper's numbers for this experiment (``paper:``)
RESULTS_MD, RESULTS_CSV = "results.md", "results.csv"
FIGURE2_PNG, FIGURE3_PNG, FIGURE_COST_PNG = "figure2.png", "figure3.png", "figure_cost.png"
REPORT_HTML = "report.html"
RAY_DIR = "ray"                                # Ray Tune's experiments, one per stage (storage_path)
LOCK_FILE = ".lock"                            # held by the driver running the study (filelock)

#: Columns of ``trials.parquet``. ``best_val_error`` / ``test_error_at_best_val`` are NaN unless the study
#: sets ``data.validation`` (see :mod:`gnp_study.train`).
TRIAL_COLUMNS = ["trial_id", "stage", "config_key", "config", "alpha", "r", "seed", "status",
                 "best_test_error", "final_test_error", "epochs_run", "diverged_epoch", "error",
                 "wall_time_s", "node", "cpus", "gpus", "best_val_error", "test_error_at_best_val"]
#: Columns of ``epochs.parquet`` (``val_loss`` / ``val_error`` NaN without ``data.validation``).
EPOCH_COLUMNS = ["trial_id", "stage", "config_key", "alpha", "r", "seed", "epoch", "train_loss",
                 "train_error", "test_loss", "test_error", "best_test_error", "grad_norm", "lr",
                 "epoch_time_s", "val_loss", "val_error", "passes_per_step"]



def metric_columns(metric_name: str | None) -> tuple[list[str], list[str]]:
    """The columns of ``trials.parquet`` and ``epochs.parquet`` for a study that decides on its own metric
    (``StudySpec.metric``): :data:`TRIAL_COLUMNS` plus ``best_<name>`` and :data:`EPOCH_COLUMNS` plus
    ``<name>``, each added only where the fixed columns lack it (``test_error`` and ``val_error`` are there
    already; the paper's studies, ``metric_name`` None, get the fixed columns).

    Returns:
        ``(trial_columns, epoch_columns)``: new lists.
    """
    trial, epoch = list(TRIAL_COLUMNS), list(EPOCH_COLUMNS)
    if metric_name is not None:
        if f"best_{metric_name}" not in trial:
            trial.append(f"best_{metric_name}")
        if metric_name not in epoch:
            epoch.append(metric_name)
    return trial, epoch


_ABSENT = object()


class StudyFolderError(ValueError):
    """A study folder is missing, incomplete or holds a file that cannot be read; the message names the
    folder and the file (the command line exits with status 2)."""


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` through ``write(temporary path)`` then rename it into place (``os.replace``), so a
    reader (or a driver killed mid-write) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (indent 2; numpy scalars as floats)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=float)))


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    """Write a Parquet table atomically (no index)."""
    atomic_write(path, lambda p: df.to_parquet(p, index=False))


def read_json(path: Path, default: Any = _ABSENT) -> dict[str, Any]:
    """Read a JSON object of the study folder.

    Args:
        path: the file; default: returned when the file is absent (without it an absent file raises).

    Raises:
        StudyFolderError: the file is absent (no ``default``), unreadable, not JSON, or not an object.
    """
    if not path.exists():
        if default is _ABSENT:
            raise StudyFolderError(f"{path}: missing")
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyFolderError(f"{path}: cannot read JSON ({type(exc).__name__}: {exc}); restore it or start "
                               f"a new study folder (--new)") from None
    if not isinstance(data, dict):
        raise StudyFolderError(f"{path}: expected a JSON object, found {type(data).__name__}; restore it or "
                               f"start a new study folder (--new)")
    return data


def read_table(path: Path, columns: list[str] | None = None, required: list[str] = ()) -> pd.DataFrame:
    """Read a Parquet table of the study folder.

    Args:
        path: the file.
        columns: when given, an absent file is an empty table with these columns (else it raises).
        required: columns the table must have.

    Raises:
        StudyFolderError: the file is absent (no ``columns``), not a readable Parquet table (pyarrow raises
            several unrelated types for a damaged file), or lacks a required column.
    """
    if not path.exists():
        if columns is None:
            raise StudyFolderError(f"{path}: missing")
        return pd.DataFrame(columns=columns)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise StudyFolderError(f"{path}: cannot read Parquet ({type(exc).__name__}: {exc}); restore it from a "
                               f"backup or start a new study folder") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StudyFolderError(f"{path}: lacks column(s) {missing}; it has {list(df.columns)}")
    return df
