"""The Ray Tune trainable of a study: the code each trial worker runs (the Tune side of ``runner``).

Kept apart from :mod:`gnp_study.runner` so that a trial worker, which imports the trainable's module to
unpickle it, loads only what a trial needs (``spec``, ``train`` and torch) and not the driver's protocol,
statistics (scipy) and results code: each stage of a study starts new workers, and every import they
make is paid again per stage, with the trials waiting.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from gnp_study.spec import StudySpec, parse_spec

#: File in every trial checkpoint: the JSON list of the metrics of every epoch up to the checkpoint.
HISTORY_FILE = "history.json"


def trial_of(config: dict, spec: StudySpec) -> dict:
    """The trial of a Tune config, as ``TrialConfig.to_dict()`` (keys stage, config, seed, trial_id,
    config_key).

    Args:
        config: the Tune config of one trial: ``{"trial": <trial dict>}`` for a planned trial, or the flat
            keys of ``spec.stages.standard.space`` for an Optuna search sample of stage 1.
        spec: the study.

    Returns:
        The planned trial's dict as given; for a search sample, a ``standard_search`` trial with the sampled
        fields (``batch_size`` rounded to an int), ``alpha = r = 0`` and the study's first seed.

    Raises:
        KeyError: a search sample lacks a field of the searched space.
    """
    if "trial" in config:
        return config["trial"]
    from gnp_study.protocol import TrialConfig  # search samples only: the planned trials need no protocol

    overrides = {k: config[k] for k in spec.stages.standard.space}
    if "batch_size" in overrides:
        overrides["batch_size"] = int(round(overrides["batch_size"]))
    return TrialConfig("standard_search", dict(overrides, alpha=0.0, r=0.0), spec.seeds[0]).to_dict()


def trial_spec(spec_dict: dict, shipped: bool) -> StudySpec:
    """The study of a trial worker, with the user's package (the study's import paths) importable.

    On a cluster the driver ships the package through the runtime environment (``py_modules``: the job's
    of ``gnp-study submit``, or ``connect(address, py_modules=...)`` of ``run --address``), and Ray puts
    the unpacked copy on the worker's path. The study's ``code_dir``, an absolute folder of the driver's
    machine, then stays off the path: where that folder exists on the worker's node too (the head node
    of a driver that runs there, a shared home), it would come first on ``sys.path`` and the worker would
    import the driver's live folder (or another checkout at the same path) instead of the copy every
    other node imports.

    Args:
        spec_dict: the study, as ``StudySpec.resolved()``.
        shipped: whether the worker's runtime environment has ``py_modules``.
    Returns:
        The study. ``code_dir`` goes first on ``sys.path`` (as on the driver, ``gnp_study.spec._place_code``)
        unless ``shipped`` and every import path's top-level package is importable without it.
    """
    if shipped:
        import importlib.util

        spec = StudySpec.model_validate(spec_dict)
        tops = {t.split(":", 1)[0].split(".")[0] for t in spec.import_paths()}
        if all(importlib.util.find_spec(top) is not None for top in tops):
            return spec
    return parse_spec(spec_dict, check_names=False)


def trainable(config: dict, spec_dict: dict, digits: tuple | None = None) -> None:
    """Tune function trainable: one trial (``config["trial"]``) or one Optuna search sample.

    Args:
        config: the trial's Tune config (see :func:`trial_of`).
        spec_dict: the study, as ``StudySpec.resolved()`` (bound with ``tune.with_parameters``).
        digits: for a digits study, the split as :func:`gnp_study.data.digits_arrays` returns it (bound with
            ``tune.with_parameters``: Ray's object store brings it to the worker), so that the worker does
            not import scikit-learn; ``None``: the worker loads the data itself.

    Returns:
        None; the trial's results reach Tune through ``tune.report``: every ``spec.report_every`` epochs,
        with every checkpoint (``spec.checkpoint_every`` epochs, and the trial's last epoch) and when the
        trial ends (diverged or completed). A planned trial that Tune starts without a checkpoint resumes
        from the newest one it left in another folder of its stage (:func:`earlier_checkpoint`), if any.
        Each report carries ``train_trial``'s metrics plus
        ``gnp_trial_id`` and ``node``; each checkpoint holds ``state.pt`` (``train_trial``'s state, with
        which a restarted trial resumes) and :data:`HISTORY_FILE` (the metrics of every epoch so far).

    Raises:
        Whatever ``train_trial`` raises (Tune records the trial as errored and retries it up to
        ``max_failures`` times); a diverging trial does not raise, it reports ``status: "diverged"``.
    """
    import ray
    import torch
    from ray import tune

    from gnp_study import train
    from gnp_study.train import train_trial

    train.CACHE_DATA = True  # this worker trains many trials of one data spec (reuse_actors)
    if digits is not None:
        import numpy as np

        from gnp_study import data

        # Ray hands over read-only views of its object store; torch wants writable arrays to share.
        data.DIGITS_ARRAYS = tuple(np.array(a, copy=True) for a in digits)
    # The user's package (an import path in the study): shipped by Ray's runtime environment (py_modules)
    # on a cluster, else from the driver's code_dir on this machine (see trial_spec).
    spec = trial_spec(spec_dict, shipped=bool((ray.get_runtime_context().runtime_env or {}).get("py_modules")))
    trial = trial_of(config, spec)
    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is None and "trial" in config:
        # Tune starts this trial afresh, but it may have run in another Tune trial of the stage that Tune's
        # snapshot does not hold (it was made, and possibly ended, after the snapshot a killed driver left)
        ckpt = earlier_checkpoint(trial["trial_id"], tune.get_context())
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=True)
    node = ray.get_runtime_context().get_node_id()
    best = RunningBest(spec, (state or {}).get("history", []))

    def report(metrics: dict, st: dict | None) -> None:
        metrics = best.add(metrics)
        if st is None and metrics.get("status") == "running" and metrics["epoch"] % spec.report_every:
            # Not a report epoch (report_every > 1): this epoch reaches Tune with the next checkpoint's
            # history (HISTORY_FILE), from which the runner's collect_trials and EpochTensorBoardLogger take
            # every epoch.
            return
        metrics = dict(metrics, gnp_trial_id=trial["trial_id"], node=node)
        if st is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(st, Path(tmp) / "state.pt")
            # Every epoch's metrics so far, small and readable without torch: the driver fills the epochs
            # table from it when Tune's result files lag behind the checkpoint (see runner.collect_trials).
            (Path(tmp) / HISTORY_FILE).write_text(json.dumps(st.get("history", [])))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    if spec.training.function is not None:  # the user's own training loop
        from gnp_study import own_loop

        own_loop.train_trial(spec, trial, report, state)
    else:
        train_trial(spec, trial, report, state)


class RunningBest:
    """The best value so far of a study's own metric (``StudySpec.metric``), added to every report as
    ``best_<name>`` when the loop does not report it itself (the package's loop reports
    ``best_test_error`` and ``best_val_error``): the race's searcher reads it from a trial's last result.

    Args:
        spec: the study; without ``metric`` (or with one the loop already reports) :meth:`add` changes
            nothing.
        history: the epochs reported before a resume (the checkpoint's history), whose values count.
    """

    def __init__(self, spec: StudySpec, history: list[dict]):
        m = spec.metric
        self.name = m.name if m is not None else None
        self.key = f"best_{self.name}" if m is not None else None
        self.sign = 1.0 if m is None or m.mode == "min" else -1.0
        self.best = math.nan
        for row in history:
            self._see(row)

    def _see(self, row: dict) -> None:
        v = row.get(self.name, math.nan) if self.name else math.nan
        try:
            v = float(v)
        except (TypeError, ValueError):
            return
        if row.get("status") != "diverged" and math.isfinite(v) and not (self.sign * v >= self.sign * self.best):
            self.best = v

    def add(self, metrics: dict) -> dict:
        """``metrics`` with ``best_<name>`` (the best finite value of a non-diverged epoch so far, NaN
        before the first) unless the loop reports that key itself."""
        if self.key is None or self.key in metrics:
            return metrics
        self._see(metrics)
        return dict(metrics, **{self.key: self.best})


# Ray Tune stores a function trainable's ``__name__`` in every experiment's state and refuses to restore an
# experiment with a trainable of another name. This function was ``runner._trainable`` until 1 Dec 2026:
# keeping that name lets a stage interrupted under an older version resume. Pickling (how Ray ships the
# function to workers) looks it up by ``__qualname__``, which stays ``trainable``.
trainable.__name__ = "_trainable"


def checkpoint_epoch(fs, path: str) -> int | None:
    """The epoch of the trial checkpoint directory ``path`` on the pyarrow filesystem ``fs``, or ``None``
    when it is missing or incomplete (no readable :data:`HISTORY_FILE`, or a ``state.pt`` that is not a
    complete zip archive as ``torch.save`` writes it). Raises nothing."""
    import zipfile

    try:
        with fs.open_input_stream(f"{path}/{HISTORY_FILE}") as f:
            history = json.loads(f.readall().decode("utf-8"))
        with fs.open_input_file(f"{path}/state.pt") as f:
            zipfile.ZipFile(f).namelist()
        return int(history[-1]["epoch"])
    except Exception:  # missing, truncated, or unreadable: not a checkpoint to restore from
        return None


def trial_checkpoints(fs, trial_dir: str) -> list[tuple[int, int | None, str]]:
    """The checkpoint folders (``checkpoint_<index>``, as Tune names them) of the trial folder
    ``trial_dir`` on the pyarrow filesystem ``fs``: ``(index, epoch, path)`` each, ``epoch`` from
    :func:`checkpoint_epoch` (``None``: incomplete), in index order; ``[]`` when the folder is missing.

    Raises:
        OSError: the folder cannot be listed (pyarrow's errors are ``OSError``s).
    """
    import pyarrow.fs as pafs

    out = []
    for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                index = int(info.base_name.split("_")[-1])
            except ValueError:
                continue
            out.append((index, checkpoint_epoch(fs, info.path), info.path))
    return sorted(out)


def earlier_checkpoint(trial_id: str, context):
    """The newest complete checkpoint that study trial ``trial_id`` left in another Tune trial folder of
    its stage, for a trial Tune starts without one.

    Tune saves its experiment snapshot at most every 10 s (``TUNE_GLOBAL_CHECKPOINT_S``) and its grid
    generator makes trials as resources free up: a driver killed between two snapshots leaves trials
    that were made, and may have ended, after the last one. On resume Tune makes them again as new Tune
    trials, in new folders, without their checkpoints. Training is deterministic given a checkpoint (bit
    for bit on CPU), so resuming from the newest complete one gives the same result as training again, and
    a trial that had ended trains nothing.

    Args:
        trial_id: the study trial id (``config["trial"]["trial_id"]``).
        context: ``ray.tune.get_context()`` of the trial: its ``get_storage()`` (Ray's ``StorageContext``)
            names the stage's experiment folder and this trial's folder on any storage filesystem.

    Returns:
        A ``ray.tune.Checkpoint`` in another folder of the stage whose ``params.json`` names ``trial_id``,
        the one of the highest epoch (:func:`checkpoint_epoch`); ``None`` when there is none or the
        folders cannot be listed. Raises nothing.

    Folders are those Tune names with ``gnp_study.race_search.trial_dirname``: ``<fields>_<tune id>``;
    only those with this trial's ``<fields>`` are read.
    """
    import pyarrow.fs as pafs
    from ray import tune

    try:
        storage = context.get_storage()
        fs, exp_dir, own = storage.storage_filesystem, storage.experiment_fs_path, storage.trial_fs_path
        name, tune_id = Path(own).name, context.get_trial_id()
        fields = name[:-len(tune_id) - 1] if name.endswith(f"_{tune_id}") else None
        infos = fs.get_file_info(pafs.FileSelector(exp_dir, allow_not_found=True))
    except Exception:  # no storage context (outside Tune), or storage that does not list
        return None
    best = None
    for info in infos:
        if (info.type != pafs.FileType.Directory or info.path.rstrip("/") == own.rstrip("/")
                or (fields is not None and not info.base_name.startswith(f"{fields}_"))):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/params.json") as f:
                params = json.loads(f.readall().decode("utf-8"))
            if (params.get("trial") or {}).get("trial_id") != trial_id:
                continue
            found = trial_checkpoints(fs, info.path)
        except Exception:  # not a trial folder, or one a kill left unreadable
            continue
        for _, epoch, path in found:
            if epoch is not None and (best is None or epoch > best[0]):
                best = (epoch, path)
    return tune.Checkpoint(best[1], filesystem=fs) if best is not None else None


def history_rows(checkpoint) -> list[dict]:
    """The per-epoch metrics stored in a trial checkpoint (:data:`HISTORY_FILE`): one dict per epoch so far,
    the metrics ``train_trial`` passed to ``report`` (epoch order); ``[]`` when ``checkpoint`` is None or
    the file is unreadable (an older checkpoint without it, or one deleted since). Raises nothing."""
    if checkpoint is None:
        return []
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{HISTORY_FILE}") as f:
            rows = json.loads(f.readall().decode("utf-8"))
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    except Exception:
        return []
