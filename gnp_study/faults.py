"""Fault injection for the end-to-end tests: the one documented seam through which a test makes a trial
fail, kill its worker or log its starts, inside Ray workers it cannot reach otherwise. Both hooks are read
from the environment once per trial (:func:`for_trial`); without the variables the training loop gets
``None`` and does nothing more.

- ``GNP_STUDY_FAULT="<kind>@<epoch>[:<key>=<value>][;...]"``: ``raise`` raises once (not after a resume
  from a checkpoint), ``raise_always`` on every attempt, ``kill`` kills the worker process once
  (SIGKILL). The optional filter matches ``stage``, ``seed`` or a configuration key such as ``alpha``.
  Several faults are separated by ``;``.
- ``GNP_STUDY_START_LOG=<file>``: every start, resume and end of a trial appends one JSON line
  ``{"event", "trial_id", "epoch", "finished", "pid"}`` (one ``O_APPEND`` write).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

#: Environment variable with the faults to inject (module docstring).
FAULT_ENV = "GNP_STUDY_FAULT"
#: Environment variable naming the file that records trial starts and ends (module docstring).
START_LOG_ENV = "GNP_STUDY_START_LOG"


def for_trial(trial: dict, resumed: bool) -> Callable[[int], None] | None:
    """The fault hook of one trial: ``hook(epoch)`` raises or kills at the epochs ``GNP_STUDY_FAULT`` names
    for this trial; None when the variable is unset or names none for it.

    Args:
        trial: ``TrialConfig.to_dict()`` (``stage``, ``seed``, ``config``, ...); resumed: the trial resumes
            from a checkpoint (``raise`` and ``kill`` then do nothing).

    Raises:
        ValueError: a fault that does not parse (``kind@epoch``).
    """
    faults = {}
    for fault in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        head, _, filt = fault.partition(":")
        kind, _, at = head.partition("@")
        if filt:
            key, _, value = filt.partition("=")
            have = trial.get(key, trial["config"].get(key))
            try:
                if float(have) != float(value):
                    continue
            except (TypeError, ValueError):
                if str(have) != value:
                    continue
        if kind == "raise_always" or (kind in ("raise", "kill") and not resumed):
            faults.setdefault(int(at), kind)
    if not faults:
        return None

    def hook(epoch: int) -> None:
        kind = faults.get(epoch)
        if kind == "raise":
            raise RuntimeError(f"injected failure at epoch {epoch}")
        if kind == "raise_always":
            raise RuntimeError(f"injected failure at epoch {epoch} (every attempt)")
        if kind == "kill":
            os.kill(os.getpid(), 9)

    return hook


def log_event(event: str, trial: dict, epoch: int, finished: bool) -> None:
    """Append one line to ``GNP_STUDY_START_LOG`` (nothing when unset): ``event`` is ``"start"`` whenever a
    trial starts or resumes (``epoch``: the epoch of the checkpoint it resumes from, 0 from scratch;
    ``finished``: that checkpoint is the trial's last, nothing is trained) or ``"end"`` after its last
    report."""
    path = os.environ.get(START_LOG_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "trial_id": trial["trial_id"], "epoch": epoch, "finished": finished,
                       "pid": os.getpid()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
