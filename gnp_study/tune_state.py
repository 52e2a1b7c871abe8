"""Tune's saved state on a study's resume: the checks and repairs a driver makes before Ray Tune restores
a stage, so that a study interrupted at any moment (a killed driver, a full disk, a trial killed while it
wrote its checkpoint) resumes without losing or repeating finished trials.

- :func:`repair_restore_point`: a trial about to restart whose newest checkpoint is incomplete restarts
  from its newest complete one (or from its first epoch), said in one line.
- :func:`set_aside_damaged_state`: Tune's experiment snapshot (``experiment_state-*.json``,
  ``tuner.pkl``, searcher state) that does not load, or that lacks trials the stage planned, is moved into
  ``damaged-state/`` (never deleted) so that Tune restores from the newest complete one.
- :func:`keep_ended_trials` / :func:`kept_results`: when no snapshot is left and a stage starts again as
  a new Tune experiment, the trials that had ended are kept from their trial folders (``kept-trials.json``)
  instead of being trained again.

Ray Tune's experiment folder layout: https://docs.ray.io/en/latest/tune/tutorials/tune-storage.html
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from gnp_study.study_folder import atomic_write
from gnp_study.trainable import checkpoint_epoch, history_rows, trial_checkpoints


# ------------------------------------------------------------------------------- checkpoints on restore
def repair_restore_point(trial) -> str | None:
    """Point a trial that Tune is about to restore at its newest complete checkpoint on storage.

    Tune's experiment snapshot can name a checkpoint that is gone: Tune deletes a trial's older checkpoint
    when a newer one registers (``CheckpointConfig(num_to_keep=1)``), and a driver killed before the next
    snapshot leaves the old snapshot pointing at it ("Could not recover from checkpoint ... does not exist
    on storage anymore"). Training is deterministic given the checkpoint (bit for bit on CPU), so any
    complete checkpoint of the trial, or none (train from scratch), gives the same result; the newest one
    trains least, and a finished trial is then not trained again.

    Args:
        trial: a restored ``ray.tune.experiment.Trial`` (status PENDING or PAUSED).

    Returns:
        A one-line note when the restore point was changed, else ``None``.
    """
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    if trial.status not in ("PENDING", "PAUSED"):
        return None
    storage = trial.storage
    fs = storage.storage_filesystem
    on_storage = trial_checkpoints(fs, storage.trial_fs_path)
    found = [(epoch, path) for _, epoch, path in on_storage if epoch is not None]
    last_index = max((index for index, _, _ in on_storage), default=-1)
    # The trial's next checkpoint goes to a folder index past every folder on storage: written into a
    # folder of an earlier run (one the snapshot never saw), it would be deleted with that run's checkpoint.
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, last_index)
    current = trial.checkpoint
    current_epoch = checkpoint_epoch(current.filesystem, current.path) if current is not None else None
    newest = max(found) if found else None
    if current_epoch is not None and (newest is None or newest[0] <= current_epoch):
        return None
    if current is None and newest is None:
        return None
    manager = trial.run_metadata.checkpoint_manager
    if newest is None:
        manager._latest_checkpoint_result = None
        manager._checkpoint_results = []
        where = "from its first epoch"
    else:
        result = _TrainingResult(checkpoint=Checkpoint(newest[1], filesystem=fs), metrics={})
        manager._latest_checkpoint_result = result
        manager._checkpoint_results = [result]
        where = f"from its epoch-{newest[0]} checkpoint"
    if current is not None and current_epoch is None:
        return (f"trial {trial.config.get('trial', {}).get('trial_id', trial)}: its checkpoint in Tune's "
                f"experiment state is missing or incomplete; it resumes {where}")
    return None


# ------------------------------------------------------------------------- Tune's snapshot on restore
#: Tune's saved experiment state, one file per driver session (``<prefix><session>.<ext>``): Tune reads the
#: newest file of each kind on ``Tuner.restore``. ``experiment_state`` is JSON, the others are pickles.
_STATE_KINDS = {"experiment": ("experiment_state-", ".json"), "search_gen": ("search_gen_state-", ".json"),
                "searcher": ("searcher-state-", ".pkl"), "variant": ("basic-variant-state-", ".json"),
                "callbacks": ("callback-states-", ".pkl")}
#: Folder (inside a stage's experiment folder) where unreadable state files are moved, never deleted.
DAMAGED_STATE_DIR = "damaged-state"


def _state_file_loads(path: Path) -> bool:
    """Whether Tune can read the saved-state file ``path`` (a complete JSON document or pickle)."""
    import ray.cloudpickle as cloudpickle

    try:
        data = path.read_bytes()
        if path.name.startswith(_STATE_KINDS["experiment"][0]):
            json.loads(data)
        else:
            cloudpickle.loads(data)
        return True
    except Exception:  # empty, truncated, or otherwise unreadable
        return False


def _snapshot_trial_ids(path: Path) -> set[str]:
    """The study trial ids (``config["trial"]["trial_id"]``) of the trials in Tune's experiment state file
    ``path``; empty when it does not load."""
    try:
        data = json.loads(path.read_bytes())
        return {json.loads(t[0])["config"]["trial"]["trial_id"] for t in data["trial_data"]}
    except Exception:  # unreadable, or trials without a planned study trial (an Optuna search)
        return set()


def set_aside_damaged_state(exp_dir: Path, searcher_rebuilt: bool = False,
                             planned: set[str] | None = None) -> str | None:
    """Make the saved state Tune is about to restore from ``exp_dir`` a complete, consistent snapshot.

    Tune writes its experiment snapshot (experiment state, search algorithm state) into a local staging
    folder and copies it to storage in a background thread; a driver killed during that copy leaves a
    truncated or empty file on storage (``EOFError: Ran out of input`` or a JSON error when Tune restores,
    after which Tune restarts the stage with part of its state). Before Tune reads them, this function
    picks the newest driver session whose experiment state loads and whose search-algorithm files (of the
    kinds the stage has) are present and load, and moves every file that does not load, and every file of
    a newer session, into ``<exp_dir>/damaged-state/``: Tune then restores that session's snapshot. With
    ``searcher_rebuilt`` (a racing stage, whose :class:`gnp_study.race_search.RaceSearcher` is rebuilt from
    the trials Tune restores), the search-algorithm files need not belong to the chosen session. A grid
    stage's generator state is not needed either when the session's experiment state already holds every
    ``planned`` trial: the generator has nothing left to make, and Tune, finding no generator state,
    resumes the snapshot's trials and adds none (a kill that cut only the generator file then loses
    nothing; without this the stage started again and trials that had ended were trained again).
    When no session has a readable experiment state (or Tune's ``tuner.pkl`` does not load), all state
    files and ``tuner.pkl`` are moved and the stage starts again as a new experiment in the same folder;
    the trial folders stay, and :func:`keep_ended_trials` keeps the trials among them that had ended.

    Args:
        exp_dir: a stage's experiment folder on local storage (``<study>/ray/<stage>``).
        searcher_rebuilt: whether the stage's searcher state is rebuilt from Tune's trials.
        planned: a grid stage's study trial ids (every trial of its ``grid_search``), or ``None``.

    Returns:
        A one-line note saying what was moved and where the stage resumes from, or ``None`` when every
        file was kept.
    """
    files: dict[str, dict[str, Path]] = {}
    for kind, (prefix, ext) in _STATE_KINDS.items():
        for path in exp_dir.glob(f"{prefix}*{ext}"):
            files.setdefault(kind, {})[path.name[len(prefix):-len(ext)]] = path
    tuner_pkl = exp_dir / "tuner.pkl"
    if not tuner_pkl.exists():
        return None  # not a Tune experiment Tune would restore
    ok = {path: _state_file_loads(path) for by_session in files.values() for path in by_session.values()}
    required = [k for k in ("variant",) + (() if searcher_rebuilt else ("search_gen", "searcher")) if k in files]
    chosen = None
    for session in sorted(files.get("experiment", {}), reverse=True):
        exp_file = files["experiment"][session]
        need = required
        if planned and ok[exp_file] and planned <= _snapshot_trial_ids(exp_file):
            need = [k for k in required if k != "variant"]  # every trial is made: no generator state needed
        if ok[exp_file] and all(ok.get(files[k].get(session), False) for k in need):
            chosen = session
            break
    if chosen is not None and not _state_file_loads(tuner_pkl):
        chosen = None
    move = [p for p, good in ok.items() if not good]
    move += [p for by_session in files.values() for s, p in by_session.items()
             if (chosen is None or s > chosen) and p not in move]
    own = files.get("variant", {}).get(chosen) if chosen is not None else None
    if chosen is not None and "variant" in files and (own is None or not ok[own]):
        # chosen without its own generator state (cut or missing; every planned trial is in the snapshot):
        # no generator file may stay, or Tune would restore an older generator that makes trials again
        move += [p for s, p in files["variant"].items() if p not in move]
    if chosen is None:
        move.append(tuner_pkl)  # Tune restores whenever it exists (Tuner.can_restore): a new experiment
    if not move:
        return None
    dest = exp_dir / DAMAGED_STATE_DIR
    dest.mkdir(exist_ok=True)
    for path in move:
        target, n = dest / path.name, 1
        while target.exists():  # set aside before (a stage that started again twice): both are kept
            target, n = dest / f"{path.name}.{n}", n + 1
        os.replace(path, target)
    names = ", ".join(sorted(p.name for p in move))
    where = (f"it resumes from Tune's snapshot of session {chosen}" if chosen is not None else
             "no complete snapshot is left, so the stage's trials start again")
    return (f"Tune's saved state in {exp_dir} was incomplete (a driver stopped while Tune copied it to "
            f"storage): moved {names} to {dest}; {where}")


# ------------------------------------------------------------------- a moved folder's search algorithm
def _moved_storage(storage, storage_path: str, experiment_dir_name: str):
    """A copy of a restored ``StorageContext`` pointed at this run's experiment folder, as Ray Tune does for
    the trials it restores (``TuneController._restore_trials``): filesystem, path and experiment name."""
    import copy

    from ray.train._internal.storage import StorageContext

    here = StorageContext(storage_path=storage_path, experiment_dir_name=experiment_dir_name)
    moved = copy.copy(storage)
    moved.storage_filesystem = here.storage_filesystem
    moved.storage_fs_path = here.storage_fs_path
    moved.experiment_dir_name = here.experiment_dir_name
    return moved


def search_generator_class():
    """The ``ray.tune.search.SearchGenerator`` a restored stage with a searcher (a racing stage, the Optuna
    search) runs with: built once, on first use, so that importing this module does not import Ray.

    Tune's search-generator state (``search_gen_state-*.json``) holds the ``Experiment`` of the run that
    wrote it, storage path included, and Tune creates every *new* trial of a restored stage from it (Ray
    2.60, ``SearchGenerator.set_state``); Tune repoints only the trials it restores. A study folder that
    was moved, copied down from a cluster or renamed would start its new trials at the old path, where
    they fail ("Unable to set up cluster storage"). This generator points the restored experiment at the
    folder being resumed.

    The class is reachable as ``gnp_study.tune_state.ResumeSearchGenerator`` (module ``__getattr__``), so a
    pickle that names it loads in a fresh process.
    """
    cls = globals().get("_ResumeSearchGenerator")
    if cls is None:
        from ray.tune.search import SearchGenerator

        class ResumeSearchGenerator(SearchGenerator):
            """Args: searcher (a ``ray.tune.search.Searcher``); storage_path and experiment_dir_name: the
            ``RunConfig.storage_path`` and ``RunConfig.name`` of the stage being resumed."""

            def __init__(self, searcher, storage_path: str, experiment_dir_name: str):
                super().__init__(searcher)
                self.storage_path, self.experiment_dir_name = storage_path, experiment_dir_name

            def set_state(self, state: dict) -> None:
                super().set_state(state)
                exp = self._experiment
                if exp is not None and getattr(exp, "storage", None) is not None:
                    exp.storage = _moved_storage(exp.storage, self.storage_path, self.experiment_dir_name)
                    exp.spec["storage"] = exp.storage

        ResumeSearchGenerator.__module__ = __name__
        ResumeSearchGenerator.__qualname__ = "ResumeSearchGenerator"
        globals()["_ResumeSearchGenerator"] = cls = ResumeSearchGenerator
    return cls


def __getattr__(name: str):
    if name == "ResumeSearchGenerator":
        return search_generator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ a trial's epochs, ended trials kept
def epoch_rows(res) -> tuple[list[dict], set]:
    """Every epoch of one trial (a ``ray.tune.Result``), in epoch order: the checkpoint's history (epochs Tune's result files lost
    when a driver was killed before they reached storage), then Tune's results, the later one kept for an
    epoch seen twice (a trial resumed from an older checkpoint reported some epochs twice, with the same
    numbers: training is deterministic given the checkpoint). Rows without an epoch are dropped.

    Returns:
        ``(rows, keys)``: the rows (dicts of reported metrics) and every metric name seen in either source
        (a name some rows lack reads as NaN in those rows).
    """
    df = res.metrics_dataframe
    tune_rows = df is not None and "epoch" in df.columns  # else: no epoch reached Tune's result files
    records = df.to_dict("records") if tune_rows else []
    keys = {"epoch"} | (set(df.columns) if tune_rows else set())
    hist = history_rows(res.checkpoint)
    by_epoch: dict = {}
    for row in hist + records:
        keys.update(row)
        e = row.get("epoch")
        if e is None or (isinstance(e, float) and math.isnan(e)):
            continue
        by_epoch[e] = row  # the later source wins
    return sorted(by_epoch.values(), key=lambda row: row["epoch"]), keys


#: The statuses a trial reports at its own end (``gnp_study.trainable``): it ran every epoch, or diverged.
ENDED = ("completed", "diverged")
#: File (in a stage's experiment folder) naming the trials of the stage that had ended when the stage had
#: to start again as a new Tune experiment: ``{study trial id: trial folder name}``.
KEPT_TRIALS_FILE = "kept-trials.json"


def _folder_result(folder: Path):
    """The ``ray.tune.Result`` of the Tune trial folder ``folder`` (``Result.from_path``: ``result.json``,
    its checkpoints, ``error.pkl``) with the trial's config from ``params.json`` when its results hold none;
    ``None`` when the folder does not read (no ``params.json``, a cut ``result.json``)."""
    import dataclasses

    from ray.tune import Result

    try:
        params = json.loads((folder / "params.json").read_text())
        res = Result.from_path(str(folder))
    except Exception:  # not a trial folder, or one a kill left unreadable: its trial is trained again
        return None
    if res.config is None:
        res = dataclasses.replace(res, metrics={**(res.metrics or {}), "config": params})
    return res


def _ended(res) -> bool:
    """Whether the trial of ``res`` ended through its own last report (``completed`` or ``diverged``) with
    no error recorded by Tune."""
    rows, _ = epoch_rows(res)
    return res.error is None and bool(rows) and rows[-1].get("status") in ENDED


def keep_ended_trials(exp_dir: Path, candidates: set[str]) -> list[str]:
    """Keep the ended trials of a stage that starts again as a new Tune experiment in ``exp_dir``.

    :func:`set_aside_damaged_state` starts a stage again when no saved snapshot of it loads; its trials'
    folders are still in ``exp_dir``. Each folder whose trial (a study trial id in ``candidates``) ended
    through its own last report is written into :data:`KEPT_TRIALS_FILE`; the stage's runner then plans
    only the other trials and takes the kept ones' results from their folders (:func:`kept_results`), so a
    trial that had ended is neither lost nor trained again. A trial that had not ended, or whose folder a
    kill left unreadable (empty result files: Tune copies them to storage only with its snapshots), is run
    again and resumes from its newest complete checkpoint in its old folder
    (:func:`gnp_study.trainable.earlier_checkpoint`; from its first epoch when it has none). A trial that
    failed (Tune's ``error.pkl``) is run again too: the folder does not say whether Tune had retried it
    ``max_failures`` times.

    Args:
        exp_dir: the stage's experiment folder on local storage.
        candidates: the study trial ids the stage may run (a grid stage's plan; every candidate and seed of
            a racing stage).

    Returns:
        The study trial ids newly kept, sorted (trials kept by an earlier run are kept still).
    """
    kept = _read_kept(exp_dir)
    new = []
    for folder in sorted(p for p in exp_dir.iterdir() if p.is_dir() and (p / "params.json").exists()):
        res = _folder_result(folder)
        tid = ((res.config or {}).get("trial") or {}).get("trial_id") if res is not None else None
        if tid in candidates and tid not in kept and _ended(res):
            kept[tid] = folder.name
            new.append(tid)
    if new:
        def write(path: Path) -> None:  # on disk before it is renamed into place: whole or not at all
            with open(path, "w") as f:
                f.write(json.dumps(kept, indent=1, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())

        atomic_write(exp_dir / KEPT_TRIALS_FILE, write)
    return sorted(new)


def kept_trial_ids(exp_dir: Path) -> list[str]:
    """The study trial ids :func:`keep_ended_trials` kept in ``exp_dir``, sorted (``[]``: none)."""
    return sorted(_read_kept(exp_dir))


def _read_kept(exp_dir: Path) -> dict[str, str]:
    """:data:`KEPT_TRIALS_FILE` of ``exp_dir`` (``{}`` when absent). Raises RuntimeError when it does not
    read as a JSON object, naming the file."""
    path = exp_dir / KEPT_TRIALS_FILE
    try:
        kept = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise RuntimeError(f"{path} (the trials kept when the stage started again) does not read ({e}); "
                           f"move {exp_dir} aside to run the whole stage again") from None
    if not isinstance(kept, dict):
        raise RuntimeError(f"{path} (the trials kept when the stage started again) is not a JSON object; "
                           f"move {exp_dir} aside to run the whole stage again")
    return {str(k): str(v) for k, v in kept.items()}


def kept_results(exp_dir: Path) -> dict:
    """The results of the trials :func:`keep_ended_trials` kept in ``exp_dir``: study trial id ->
    ``ray.tune.Result`` read from the trial's folder; ``{}`` when none was kept.

    Raises:
        RuntimeError: a kept trial's folder no longer reads as an ended trial (deleted or edited since), or
            :data:`KEPT_TRIALS_FILE` does not read: the stage cannot be completed from what is on disk
            (Tune's restored grid lacks the kept trials); the message names the file.
    """
    out = {}
    for tid, name in sorted(_read_kept(exp_dir).items()):
        res = _folder_result(exp_dir / name)
        if res is None or not _ended(res):
            raise RuntimeError(f"trial {tid} was kept from {exp_dir / name} as ended, but that folder no longer "
                               f"reads as an ended Tune trial; restore the folder, or move {exp_dir} aside to "
                               f"run the whole stage again")
        out[tid] = res
    return out
