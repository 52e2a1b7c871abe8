"""Ray Tune adapter: run the greedy protocol's stages as Tune experiments in one study folder.

The only module (with ``jobs``) that imports Ray. Each stage is one Tune experiment under
``<study>/ray/<stage>``; the trials of a stage are one ``tune.grid_search`` axis over
:class:`~gnp_study.protocol.TrialConfig` dicts (the seed is part of each), so every (configuration, seed)
pair is exactly one Tune trial. Trials report every epoch with ``tune.report`` and checkpoint with
``tune.Checkpoint``; a crashed trial is retried from its last checkpoint (``FailureConfig``); an
interrupted stage is resumed with ``Tuner.restore``; finished stages are kept in the study folder's
tables and decisions and never run again.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import os
import platform
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gnp_study import protocol, racing
from gnp_study.protocol import CONFIRM, COST, POST_STAGES, STAGES, TrialConfig, study_stages
from gnp_study.results import selection
from gnp_study.spec import StudySpec
from gnp_study.study_folder import (DECISIONS_JSON, EPOCHS_PARQUET, LOCK_FILE, PAPER_REFERENCE_CSV, RAY_DIR,
                                    RUN_INFO_JSON, SEARCH_TRIALS_PARQUET, STUDY_YAML, TRIAL_COLUMNS, TRIALS_PARQUET,
                                    metric_columns, read_json, read_table, write_json, write_parquet)
from gnp_study.tune_state import (DAMAGED_STATE_DIR, ENDED, KEPT_TRIALS_FILE, epoch_rows,  # noqa: F401
                                  keep_ended_trials, kept_results, kept_trial_ids, repair_restore_point,
                                  search_generator_class, set_aside_damaged_state)
from gnp_study.trainable import HISTORY_FILE, history_rows, trainable, trial_of  # noqa: F401  (trial workers import only that module)


class StudyError(RuntimeError):
    """A study cannot start or continue; the message says why and what to do (CLI exit status 2)."""


class StudyInterrupted(StudyError):
    """The study was stopped (Ctrl-C) or a stage ended with unfinished trials; nothing unfinished was
    decided, and rerunning the command resumes it (CLI exit status 130)."""


class _Interrupt:
    """The driver's Ctrl-C (SIGINT): recorded, then handed to Ray Tune's graceful stop.

    Tune's own SIGINT handler is installed per ``fit()`` and put back after one signal, so a Ctrl-C that
    comes between stages, while Tune restores an experiment, or while a stage's last trial reports was
    swallowed and the study went on. Here the driver keeps one handler for the whole study
    (``TUNE_DISABLE_SIGINT_HANDLER=1``): it only sets :attr:`flag`. While a stage runs, the stage's Tune
    callback sees the flag at its next step and calls Tune's interrupt handler (Tune registers it for
    SIGUSR1 in every ``fit()``), which ends the stage after Tune saved a consistent experiment state; the
    runner checks the flag before each stage and after each ``fit()``. A second Ctrl-C raises
    ``KeyboardInterrupt`` at once.
    """

    def __init__(self) -> None:
        self.flag = False
        self._previous = None

    def install(self) -> None:
        """Install the handler (main thread only; elsewhere Ctrl-C is not ours to handle)."""
        self.flag = False
        if threading.current_thread() is not threading.main_thread():
            return
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        """Put back the handler that was there before :meth:`install`."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        # os.write: print() from a signal handler can hit a reentrant call into sys.stderr's buffer
        os.write(2, b"\n[gnp-study] Ctrl-C: stopping; no new stage starts and no unfinished stage is decided "
                    b"(Ctrl-C again to stop at once)\n")

    def forward_to_tune(self) -> None:
        """Ask a running Tune loop to stop gracefully (its SIGUSR1 handler); no-op outside ``fit()``."""
        handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(handler) and threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            handler(signal.SIGINT, None)
            signal.signal(signal.SIGINT, previous)  # Tune's handler resets SIGINT; keep ours

    def check(self, where: str) -> None:
        """Raise :class:`StudyInterrupted` if Ctrl-C came; ``where`` completes "interrupted ...".

        Raises:
            StudyInterrupted: the flag is set.
        """
        if self.flag:
            raise StudyInterrupted(f"interrupted {where}; run the same command again to resume")


_INTERRUPT = _Interrupt()


# ------------------------------------------------------------------------------------------- progress
def _stage_callback_class():
    """The Tune callback class of a stage (built once, on first use, so that importing this module does not
    import Ray): it checks restore points at the stage's first step (:func:`gnp_study.tune_state.repair_restore_point`), asks
    Tune to stop when Ctrl-C came (:class:`_Interrupt`), and feeds the progress line.

    Tune pickles a stage's callbacks with the experiment (``tuner.pkl``); the class lives at module level so
    that the pickle refers to it by name and a restored stage runs this code with this process's state
    (a class pickled by value would carry a copy of the Ctrl-C flag from the run that created the stage).
    """
    cls = globals().get("_StageCallback")
    if cls is None:
        from ray.tune import Callback

        class _StageCallback(Callback):
            def __init__(self, progress: "_Progress"):
                self.progress = progress
                self.first_step = True

            def on_step_begin(self, iteration, trials, **info):
                if self.first_step:  # restored trials are known, none has started: check restore points
                    self.first_step = False
                    searcher = getattr(self.progress, "searcher", None)
                    if searcher is not None:  # a racing stage: its table from the restored trials
                        searcher.rebuild(trials)
                    for t in trials:
                        note = repair_restore_point(t)
                        if note:
                            print(f"[gnp-study] {note}", file=self.progress.stream, flush=True)
                if _INTERRUPT.flag:  # Ctrl-C: let Tune stop this stage as after its own SIGINT handler
                    _INTERRUPT.forward_to_tune()

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.progress.finished(trial.last_result or {}, failed=False)

            def on_trial_error(self, iteration, trials, trial, **info):
                self.progress.finished(trial.last_result or {}, failed=True)

        _StageCallback.__module__ = __name__
        _StageCallback.__qualname__ = "_StageCallback"
        globals()["_StageCallback"] = cls = _StageCallback
    return cls


class _Progress:
    """Builds the Tune callback that prints: stage, trials done / total, diverged, best so far.

    Tune pickles the callback, and with it this object, into the stage's experiment state: it holds no
    stream. The line goes to whatever ``sys.stderr`` is when it is printed (:attr:`stream`), so a stream
    that cannot be pickled (pytest's capture, a notebook's) is never captured, and a run in a notebook
    prints where the notebook shows stderr. ``spec``: the study, whose decision metric the line names.
    """

    def __init__(self, stage: str, total: int, spec: StudySpec | None = None):
        self.callback = _stage_callback_class()(self)
        self.stage, self.total = stage, total
        self.sel = selection(spec if spec is not None else {})  # the metric of the best so far (paper: {})
        self.searcher = None  # a racing stage's RaceSearcher (rebuilt at the first step)
        self.done = self.diverged = self.failed = 0
        self.best = math.inf
        self.t0 = time.time()
        self._print()

    @property
    def stream(self):
        """``sys.stderr`` now (looked up at each print, never stored)."""
        return sys.stderr

    def finished(self, result: dict, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        self.diverged += int(result.get("status") == "diverged")
        sel = getattr(self, "sel", None) or selection({})  # a progress object pickled before it had one
        b = result.get(sel.decide_column, math.nan)
        if not failed and result.get("status") == "completed" and b == b:
            if not math.isfinite(self.best) or sel.sign * b < sel.sign * self.best:  # inf: none yet
                self.best = b
        self._print()

    def _print(self) -> None:
        sel = getattr(self, "sel", None) or selection({})
        best = ("-" if not math.isfinite(self.best) else f"{self.best:.2f}%" if sel.unit else f"{self.best:.4g}")
        line = (f"[gnp-study] stage {self.stage}: {self.done}/{self.total} trials done, "
                f"{self.diverged} diverged, {self.failed} failed, best {sel.name} {best}, "
                f"{time.time() - self.t0:.0f}s")
        stream = self.stream
        tty = getattr(stream, "isatty", None)
        end = "\r" if tty is not None and tty() and self.done < self.total else "\n"
        print(line, end=end, file=stream, flush=True)


# ------------------------------------------------------------------------------------------ Ray set-up
def _probe(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when the Ray cluster at ``address`` does not answer (Ray itself retries for minutes).

    Args:
        address: ``"auto"``, ``"ray://host:port"`` or ``"host:port"``.
        timeout_s: seconds to wait for a TCP connection.

    Raises:
        StudyError: no cluster found (``auto``) or nothing accepts connections at the address.
    """
    from ray._private import services

    target = address
    if address == "auto":
        try:
            target = services.get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise StudyError("--address auto found no running Ray cluster on this machine; start one "
                             "(ray start --head) or run without --address for a local Ray") from None
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise StudyError(f"the Ray cluster at {address}" + (f" ({target})" if target != address else "") +
                         f" does not answer ({why}); start it or check the address, or run without --address "
                         f"and RAY_ADDRESS for a local Ray") from None


def connect(address: str | None = None, num_cpus: int | None = None, py_modules: list[str] | None = None) -> dict:
    """Connect to a Ray cluster, or start a new local Ray bound to 127.0.0.1.

    Args:
        address: ``"auto"``, ``"ray://host:10001"``, ``"host:6379"``; default ``RAY_ADDRESS`` from the
            environment, else a new local Ray is started (``address="local"``: never a cluster that a
            ``ray start`` left on the machine, live or dead).
        num_cpus: CPUs of a local Ray (default: all).
        py_modules: folders of the user's packages (:func:`gnp_study.user_code.ship_dirs`) that Ray ships to
            the workers of a running cluster (``runtime_env["py_modules"]``); a local Ray's workers import
            them from where the driver found them (the study's ``code_dir``), and a driver that is itself a
            submitted job has them from the job's runtime environment already.

    Returns:
        ``ray.cluster_resources()`` (dict, e.g. ``{"CPU": 2.0, "GPU": 1.0, ...}``).

    Raises:
        StudyError: the given address does not answer within seconds.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        # Tune's own console tables would interleave with the study's progress line (verbose=0 alone
        # does not silence the new output engine).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Trials may checkpoint every epoch (checkpoint_every: 1, resume loses at most one epoch): no warning.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # No usage statistics sent to Ray's servers from a study (the study needs no network).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _quiet_ray_warnings()
        # The driver's GNP_STUDY_* settings reach the trial workers, also on an existing cluster.
        env = {k: v for k, v in os.environ.items() if k.startswith("GNP_STUDY_")}
        runtime_env = {"env_vars": env} if env else None
        if address and address != "local":
            _probe(address)
            if py_modules and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
                runtime_env = dict(runtime_env or {}, py_modules=list(py_modules))
            ray.init(address=address, log_to_driver=False, logging_level="WARNING", runtime_env=runtime_env)
        else:
            _loopback_only()
            os.environ.pop("RAY_ADDRESS", None)  # "local" must not be overridden by an empty RAY_ADDRESS
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, logging_level="WARNING", runtime_env=runtime_env)
    return ray.cluster_resources()


def _loopback_only() -> None:
    """Keep every listening socket of a local Ray on 127.0.0.1.

    Ray replaces ``127.0.0.1`` by the machine's network address (``services.resolve_ip_for_localhost``)
    unless its single-machine mode is on, the mode it uses on macOS and Windows
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). Ray reads the variable once, when ``ray`` is imported, into
    ``ray_constants.ENABLE_RAY_CLUSTER``: the driver's copy is set here too, and the processes Ray starts
    (GCS, raylet, agents, workers) inherit the variable. With the node address on loopback, Ray's gRPC
    servers, the dashboard agent and the runtime-env agent all bind to it.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


class _DropRayWarning:
    """``logging`` filter dropping Ray records that read as data loss but are not (see
    :func:`_quiet_ray_warnings`)."""

    PREFIXES = ("Failed to fetch metrics for", "Stop signal received", "Experiment has been interrupted")

    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith(self.PREFIXES)


def _quiet_ray_warnings() -> None:
    """Keep Ray Tune's "Failed to fetch metrics for N trial(s): FileNotFoundError(...)" off the console,
    and Tune's own Ctrl-C lines (they tell the user to call ``Tuner.restore``).

    After a driver was killed, Tune lists every trial without a result file yet: trials that had not
    started. The study itself counts unfinished trials and resumes them (:func:`collect_trials`), so the
    warning says nothing the user must act on; on Ctrl-C the study prints its own line and how to resume.
    """
    import logging

    for name in ("ray.tune.analysis.experiment_analysis", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRayWarning) for f in logger.filters):
            logger.addFilter(_DropRayWarning())


def check_resources(spec: StudySpec, resources: dict) -> None:
    """Fail before any trial when one trial asks for more than the cluster has.

    Raises:
        StudyError: ``resources.gpus_per_trial`` > 0 and the cluster has fewer GPUs (a trial would stay
            PENDING for ever), or more CPUs per trial than the cluster has.
    """
    r = spec.resources
    have_gpu, have_cpu = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if r.gpus_per_trial > 0 and have_gpu < r.gpus_per_trial:
        raise StudyError(f"resources.gpus_per_trial is {r.gpus_per_trial} but the Ray cluster has "
                         f"{have_gpu:g} GPU(s); set resources.gpus_per_trial: 0 to train on CPUs, or run "
                         f"on a cluster with GPUs (--address)")
    if r.cpus_per_trial > have_cpu:
        raise StudyError(f"resources.cpus_per_trial is {r.cpus_per_trial} but the Ray cluster has "
                         f"{have_cpu:g} CPU(s); lower resources.cpus_per_trial")


# ------------------------------------------------------------------------------------------ one stage
def _tuner(name: str, param_space: dict, spec: StudySpec, storage: str, callbacks: list, search_alg=None,
           num_samples: int | None = None, resume_errored: bool = False):
    from ray import tune
    from ray.tune.search import Searcher

    from gnp_study.race_search import (RaceSearcher, tensorboard_callbacks, tracking_callbacks, trial_dirname,
                                       trial_name)
    from gnp_study.data import digits_arrays

    optuna = search_alg is not None and num_samples is None
    # TensorBoard event files without Tune's per-result flush; MLflow when GNP_STUDY_MLFLOW_URI is set
    callbacks = callbacks + tensorboard_callbacks(spec.report_every) + tracking_callbacks(spec.name)

    # A digits study's data travels to the workers through the object store: no scikit-learn import in
    # each new worker (about 0.8 s per worker, two or more new workers per stage).
    data_kw = {"digits": digits_arrays()} if spec.data.dataset == "digits" else {}
    wrapped = tune.with_resources(
        tune.with_parameters(trainable, spec_dict=spec.resolved(), **data_kw),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    exp_path = f"{storage.rstrip('/')}/{name}"
    _stage_callback_class()  # defined before Tune unpickles the stage's callbacks
    race = isinstance(search_alg, RaceSearcher)
    if tune.Tuner.can_restore(str(exp_path)):
        tuner = tune.Tuner.restore(str(exp_path), wrapped, resume_unfinished=True,
                                   resume_errored=resume_errored, restart_errored=False, param_space=param_space)
        # This run's callbacks (its progress line), not the pickled ones of the run that created the stage.
        run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
        if run_config is not None:
            run_config.callbacks = callbacks
        tune_config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
        if tune_config is not None and isinstance(tune_config.search_alg, Searcher):
            # This run's RaceSearcher: the stage callback rebuilds its table from the trials Tune restores
            # (RaceSearcher.rebuild), whatever state file Tune found. The pickled Optuna searcher is kept.
            searcher = search_alg if race else tune_config.search_alg
            # New trials start in this folder even if it was moved since it was written
            tune_config.search_alg = search_generator_class()(searcher, storage, name)
        return tuner
    sel = selection(spec)  # stage 1's Optuna search decides on the study's decision column
    return tune.Tuner(
        wrapped,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=(spec.stages.standard.num_samples if optuna else
                         num_samples if num_samples is not None else 1),
            max_concurrent_trials=spec.resources.max_concurrent_trials,
            # A trial's worker process is kept for the next trial: torch and the data load once per
            # worker, not once per trial (seconds per trial for small models).
            reuse_actors=True,
            metric=sel.decide_column if optuna else None,
            mode=sel.direction if optuna else None,
            # readable TensorBoard runs: <stage>_alpha=<a>_r=<r>_seed=<s>_<tune id> (gnp_study.race_search)
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=callbacks,
        ),
    )


def _prepare_stage(name: str, storage: str, candidates: set[str] | None = None, race: bool = False) -> dict:
    """Check a stage's saved Tune state before it runs or resumes, and keep the trials that had ended.

    On local storage (object stores upload each file whole; a local copy can be cut short) Tune's snapshot
    is made complete and consistent (:func:`gnp_study.tune_state.set_aside_damaged_state`). When none is
    left and the stage starts again as a new experiment, its trials that had ended are kept from their
    folders (:func:`gnp_study.tune_state.keep_ended_trials`), said in one line.

    Args:
        name: the stage's experiment name (``RunConfig.name``); storage: Tune's ``storage_path``.
        candidates: the study trial ids the stage may run (a grid stage's plan, a racing stage's every
            candidate and seed); ``None`` (an Optuna search): nothing is kept.
        race: a racing stage (its searcher is rebuilt from Tune's trials); otherwise, with ``candidates``,
            a grid stage whose Tune grid holds the candidates not kept.

    Returns:
        study trial id -> ``ray.tune.Result`` of every kept trial (this run's and earlier runs'), to be
        recorded with the stage's Tune results and not planned again.

    Raises:
        StudyError: a kept trial's folder no longer reads as an ended trial.
    """
    from ray import tune

    exp_path = f"{storage.rstrip('/')}/{name}"
    local = exp_path[len("file://"):] if exp_path.startswith("file://") else exp_path
    if "://" in local:
        return {}
    exp_dir = Path(local)
    try:
        if tune.Tuner.can_restore(str(exp_path)):
            planned = None if race or not candidates else candidates - set(kept_trial_ids(exp_dir))
            note = set_aside_damaged_state(exp_dir, searcher_rebuilt=race, planned=planned or None)
            if note:
                print(f"[gnp-study] {note}", file=sys.stderr, flush=True)
        if not candidates or not exp_dir.is_dir():
            return {}
        if not tune.Tuner.can_restore(str(exp_path)):
            # a new experiment starts in a folder that holds trials (the state was set aside now, or by a
            # run killed before it kept them): those that had ended are kept
            new = keep_ended_trials(exp_dir, candidates)
            if new:
                print(f"[gnp-study] stage {name}: {len(new)} trial(s) that had ended are kept from their "
                      f"folders and not trained again ({', '.join(new)}); listed in "
                      f"{exp_dir / KEPT_TRIALS_FILE}", file=sys.stderr, flush=True)
        return kept_results(exp_dir)
    except RuntimeError as e:  # a kept trial's folder or the list of kept trials does not read
        raise StudyError(str(e)) from None


def _float(v) -> float:
    """A metric value as a float (None or a missing value: NaN)."""
    return math.nan if v is None else float(v)


def _params(res) -> dict | None:
    """The Tune config of a trial from its ``params.json`` (a Result without any report has no config)."""
    try:
        with res.filesystem.open_input_stream(f"{res.path}/params.json") as f:
            return json.loads(f.readall().decode("utf-8"))
    except Exception:
        return None


def collect_trials(results, stage: str, spec: StudySpec, record_lost: bool = True
             ) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Turn a Tune ResultGrid into the trials and epochs tables of the study folder schema.

    A trial is recorded when it ended: its last report says ``completed`` or ``diverged``, or Tune gave
    up on it after its retries (status ``failed`` with Tune's error). A trial still pending or running
    (the stage was interrupted) is left out and counted, never recorded as failed.

    A trial that Tune gave up on before its first report (its worker died while Tune was handing it
    over: Tune then fails it without a retry) is "lost": counted, and recorded as failed only with
    ``record_lost``.

    Returns:
        ``(trials, epochs, unfinished, lost)``: the tables of the trials that ended, how many trials of
        the ResultGrid had not ended (lost ones included unless recorded), and how many were lost.
    """
    # Plain Python per trial and one DataFrame per table at the end: per-trial pandas frames cost about
    # 12 ms a trial, which the driver spent at a stage's end with every trial worker idle.
    trial_columns, epoch_columns = metric_columns(name := spec.metric.name if spec.metric is not None else None)
    trial_rows, cols = [], {c: [] for c in epoch_columns}
    unfinished = lost = 0
    for res in results:
        cfg = res.config
        if cfg is None and res.error is not None:
            lost += 1
            cfg = _params(res) if record_lost else None
        if cfg is None:  # a trial Tune never started (the stage was interrupted), or a lost one
            unfinished += 1
            continue
        trial = trial_of(cfg, spec)
        rows, keys = epoch_rows(res)
        last = {k: rows[-1].get(k, math.nan) for k in keys} if rows else {}
        status = last.get("status")
        # a diverged trial of the user's own loop says why (gnp_study.own_loop)
        reason = last.get("diverged_reason")
        error = reason if status == "diverged" and isinstance(reason, str) else ""
        if res.error is not None:
            status, error = "failed", f"{type(res.error).__name__}: {res.error}"[-2000:]
        elif status not in ENDED:  # pending, or running when the stage stopped
            unfinished += 1
            continue
        n = len(rows)
        metric = {c: np.array([_float(r.get(c)) for r in rows], dtype=float) if c in keys else
                  np.full(n, math.nan) for c in epoch_columns[6:]}
        alpha, r, seed = float(trial["config"]["alpha"]), float(trial["config"]["r"]), int(trial["seed"])
        for c, v in (("trial_id", trial["trial_id"]), ("stage", stage), ("config_key", trial["config_key"]),
                     ("alpha", alpha), ("r", r), ("seed", seed)):
            cols[c].extend([v] * n)
        for c in epoch_columns[6:]:
            cols[c].extend(metric[c].tolist() if c != "epoch" else metric[c].astype(int).tolist())
        bte, te, ve = metric["best_test_error"], metric["test_error"], metric["val_error"]
        best = float(np.nanmin(bte)) if n and not np.isnan(bte).all() else math.nan
        final = te[~np.isnan(te)]
        seen = np.flatnonzero(~np.isnan(ve))  # empty without a validation split
        at = int(seen[np.argmin(ve[seen])]) if len(seen) else None  # argmin: the first (earliest) epoch on ties
        trial_rows.append({
            "trial_id": trial["trial_id"], "stage": stage, "config_key": trial["config_key"],
            "config": json.dumps(trial["config"], sort_keys=True), "alpha": alpha, "r": r, "seed": seed,
            "status": status, "best_test_error": best, "final_test_error": float(final[-1]) if len(final) else math.nan,
            "epochs_run": int(metric["epoch"].max()) if n else 0,
            "diverged_epoch": float(last["epoch"]) if status == "diverged" else math.nan,
            "error": error, "wall_time_s": float(np.nansum(metric["epoch_time_s"])) if n else 0.0,
            "node": str(last.get("node", "")), "cpus": spec.resources.cpus_per_trial,
            "gpus": spec.resources.gpus_per_trial,
            "best_val_error": float(ve[at]) if at is not None else math.nan,
            "test_error_at_best_val": float(te[at]) if at is not None else math.nan,
        })
        if name is not None and f"best_{name}" not in TRIAL_COLUMNS:
            trial_rows[-1][f"best_{name}"] = best_value(metric[name][:n - 1] if status == "diverged"
                                                        else metric[name], spec.metric.mode)
    trials = pd.DataFrame(trial_rows, columns=trial_columns)
    if trial_rows:
        text = ("trial_id", "stage", "config_key")
        epochs = pd.DataFrame({c: np.array(v, dtype=object if c in text else np.int64 if c in ("seed", "epoch")
                                           else float) for c, v in cols.items()})
        # pandas' text dtype also when every recorded trial has no epoch (inferred from values otherwise)
        epochs = epochs.astype({c: pd.Series(["x"]).dtype for c in text})
    else:
        epochs = pd.DataFrame(columns=epoch_columns)
    return trials, epochs, unfinished, lost


def best_value(values, mode: str) -> float:
    """The best of a trial's per-epoch values of the study's metric: the lowest (``mode`` ``"min"``) or the
    highest (``"max"``) finite one; NaN when none is finite."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return math.nan if not len(v) else float(v.min() if mode == "min" else v.max())


def run_stage(stage: str, trial_configs: list[TrialConfig], spec: StudySpec, storage: str,
              name: str | None = None, races: list | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or resume) the trials of one stage as one Tune experiment.

    Args:
        stage: stage name written into the tables.
        trial_configs: the trials (from :func:`gnp_study.protocol.plan`).
        spec: the study.
        storage: Tune's ``storage_path``: ``<study folder>/ray`` as an absolute path or a URI.
        name: experiment name (default: ``stage``).
        races: the stage's races (:func:`gnp_study.protocol.stage_races`) for a racing stage: the trials are
            suggested by a :class:`gnp_study.race_search.RaceSearcher` inside the one Tune experiment.

    Returns:
        ``(trials, epochs)`` tables (study-folder schema) for exactly these trials (a racing stage: the
        trials its races ran).

    Raises:
        StudyInterrupted: a racing stage ended (Ctrl-C) before its races did.
    """
    from ray import tune

    if races:
        return _run_race_stage(stage, trial_configs, spec, storage, name, races)
    ids = [tc.trial_id for tc in trial_configs]
    kept = _prepare_stage(name or stage, storage, candidates=set(ids))
    todo = [tc for tc in trial_configs if tc.trial_id not in kept]
    progress = _Progress(stage, len(trial_configs), spec=spec)
    for res in kept.values():  # ended before the stage started again (tune_state.keep_ended_trials)
        rows, _ = epoch_rows(res)
        progress.finished(rows[-1], failed=False)
    space = {"trial": tune.grid_search([tc.to_dict() for tc in todo])}
    _INTERRUPT.check(f"before stage {stage!r} started")

    def fit(**kw) -> list:
        return (list(_tuner(name or stage, space, spec, storage, [progress.callback], **kw).fit()) if todo
                else []) + list(kept.values())

    results = fit()
    trials, epochs, _, lost = collect_trials(results, stage, spec, record_lost=False)
    for _attempt in range(max(1, spec.max_failures)):
        if not lost or _INTERRUPT.flag:
            break
        # Trials Tune gave up on before their first report (also those of an earlier run): run them again.
        progress.done, progress.failed = progress.done - lost, max(0, progress.failed - lost)
        results = fit(resume_errored=True)
        trials, epochs, _, lost = collect_trials(results, stage, spec, record_lost=False)
    if lost and not _INTERRUPT.flag:  # still failing before any report: recorded as failed
        trials, epochs, _, lost = collect_trials(results, stage, spec, record_lost=True)
    unfinished = len(trial_configs) - int(trials["trial_id"].isin([tc.trial_id for tc in trial_configs]).sum())
    if unfinished or _INTERRUPT.flag:
        # Ctrl-C (or a trial Tune did not end): Tune stopped the stage after saving a consistent experiment
        # state; nothing of the stage is recorded or decided, the next run resumes it.
        raise StudyInterrupted(f"stage {stage!r} was interrupted with {unfinished} of {len(trial_configs)} "
                               f"trials unfinished; run the same command again to resume it")
    # Plan order, whatever order Tune finished or restored the trials in: the tables (and every sum
    # over seeds computed from them) are then the same for a resumed study as for an uninterrupted one.
    order = {tc.trial_id: i for i, tc in enumerate(trial_configs)}
    trials = trials.sort_values("trial_id", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    epochs = epochs.sort_values(["trial_id", "epoch"], key=lambda c: c.map(order) if c.name == "trial_id" else c,
                                kind="stable").reset_index(drop=True)
    return trials, epochs


def _race_results(kept: dict, stage: str, spec: StudySpec, metric: str) -> list[tuple[dict, dict]]:
    """What a racing stage's searcher needs of its kept trials (:meth:`RaceSearcher.keep`): for each,
    ``(config["trial"], {"status": ..., <metric>: ...})`` with the status and value of the trial's row in
    the trials table, as :func:`gnp_study.race_search.check_race` reads them. (A kept trial's last epoch
    can come from its checkpoint's history, which lacks the running ``best_<name>`` Tune's reports carry.)

    Args:
        kept: study trial id -> ``ray.tune.Result`` (:func:`_prepare_stage`); metric: the race's column
            (:func:`gnp_study.results.selection`'s ``race_metric``, a leading ``-`` when higher is better).
    """
    rows = collect_trials(list(kept.values()), stage, spec)[0].set_index("trial_id")
    column = metric.lstrip("-")
    return [(res.config["trial"], {"status": str(rows.at[tid, "status"]), column: float(rows.at[tid, column])})
            for tid, res in kept.items()]


def _run_race_stage(stage: str, trial_configs: list[TrialConfig], spec: StudySpec, storage: str,
                    name: str | None, races: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`run_stage` for a racing stage: one Tune experiment whose trials a RaceSearcher suggests."""
    from gnp_study import race_search

    metric = selection(spec).race_metric
    progress = _Progress(stage + " (race)", sum(r.bounds()[1] for r in races), spec=spec)
    searcher = race_search.race_searcher(stage, races, trial_configs, metric, spec.max_failures)
    progress.searcher = searcher  # rebuilt from Tune's restored trials at the stage's first step
    kept = _prepare_stage(name or stage, storage, candidates={tc.trial_id for tc in trial_configs}, race=True)
    searcher.keep(_race_results(kept, stage, spec, metric))
    for res in kept.values():  # ended before the stage started again (tune_state.keep_ended_trials)
        progress.finished(epoch_rows(res)[0][-1], failed=False)
    _INTERRUPT.check(f"before stage {stage!r} started")
    results = list(_tuner(name or stage, {}, spec, storage, [progress.callback], search_alg=searcher,
                          num_samples=-1).fit()) + list(kept.values())
    # A trial Tune lost before its first report is suggested again by the searcher (a new Tune trial of
    # the same trial_id); one lost every time (the searcher gave up) is recorded as failed.
    trials, epochs, _, _ = collect_trials(results, stage, spec, record_lost=False)
    t_all, e_all, _, _ = collect_trials(results, stage, spec, record_lost=True)
    gave_up = ~t_all["trial_id"].isin(trials["trial_id"])
    trials = pd.concat([trials, t_all[gave_up]], ignore_index=True) if gave_up.any() else trials
    epochs = pd.concat([epochs, e_all[e_all["trial_id"].isin(t_all[gave_up]["trial_id"])]], ignore_index=True)
    # a trial run twice (never expected) counts once: its last row
    trials = trials.drop_duplicates("trial_id", keep="last")
    missing = race_search.check_race(stage, races, trials, metric)
    if missing or _INTERRUPT.flag:
        raise StudyInterrupted(f"racing stage {stage!r} was interrupted before its races ended; run the same "
                               f"command again to resume it")
    trials = race_search.order_trials(trials, races)
    order = {t: i for i, t in enumerate(trials["trial_id"])}
    epochs = epochs[epochs["trial_id"].isin(order)].drop_duplicates(["trial_id", "epoch"], keep="last")
    epochs = epochs.sort_values(["trial_id", "epoch"], key=lambda c: c.map(order) if c.name == "trial_id" else c,
                                kind="stable").reset_index(drop=True)
    return trials, epochs


def run_optuna_search(spec: StudySpec, storage: str) -> tuple[list[dict], pd.DataFrame]:
    """Stage 1 as an Optuna TPE search on the first seed (Ray Tune's ``OptunaSearch``).

    Returns:
        ``(candidates, search_trials)``: the ``top_k`` configurations (dicts of searched fields) with the
        lowest best test error, and the search's trials table.

    Raises:
        StudyError: no search sample trained to the end.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    st = spec.stages.standard
    space = {}
    for key, rng in st.space.items():
        if isinstance(rng, list):
            space[key] = tune.choice(rng)
        elif rng.integer:
            space[key] = (tune.lograndint if rng.log else tune.randint)(int(rng.low), int(rng.high) + 1)
        else:
            space[key] = (tune.loguniform if rng.log else tune.uniform)(rng.low, rng.high)
    progress = _Progress("standard (Optuna search, seed %d)" % spec.seeds[0], st.num_samples, spec=spec)
    sel = selection(spec)  # the study's decision metric: never the test set in validation mode
    searcher = OptunaSearch(metric=sel.decide_column, mode=sel.direction, seed=spec.seeds[0])
    _INTERRUPT.check("before the Optuna search of stage 1 started")
    _prepare_stage("standard_search", storage)  # a search restarted from nothing makes its trials anew
    results = _tuner("standard_search", space, spec, storage, [progress.callback], search_alg=searcher).fit()
    trials, _, unfinished, _ = collect_trials(results, "standard_search", spec)
    if unfinished or _INTERRUPT.flag or len(trials) < st.num_samples:
        raise StudyInterrupted(f"the Optuna search of stage 1 was interrupted with "
                               f"{st.num_samples - len(trials)} of {st.num_samples} samples unfinished; run the "
                               f"same command again to resume it")
    ok = trials[trials["status"] == "completed"].sort_values(sel.decide_column, kind="stable",
                                                             ascending=sel.direction == "min")
    if ok.empty:
        raise StudyError("every sample of the Optuna search of stage 1 diverged or failed; narrow "
                         "stages.standard.space")
    cands = []
    for c in ok["config"]:
        d = {k: v for k, v in json.loads(c).items() if k not in ("alpha", "r")}
        if d not in cands:
            cands.append(d)
    return cands[: st.top_k], trials


# --------------------------------------------------------------------------------------------- study
def _versions() -> dict:
    """Software versions for ``run_info.json``: Python, torch and Ray as their modules report them
    (``torch.__version__`` keeps the build tag, e.g. ``2.14.1+cu130``), torchvision as installed
    (``importlib.metadata``: the version pip pinned), and gnp_study.

    torchvision's version is read from its package metadata, not from the module: importing torchvision
    imports ``torchvision.models`` and with it ``torch._dynamo``, about 2 s of the driver's start with
    the other cores idle, for a string (the driver uses nothing else of torchvision).
    """
    from importlib import metadata

    import ray
    import torch

    from gnp_study import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": metadata.version("torchvision"), "ray": ray.__version__, "gnp_study": __version__}


def _hardware(resources: dict) -> dict:
    import ray
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpus": gpus, "ray_nodes": len([n for n in ray.nodes() if n["Alive"]]),
            "cluster_cpus": resources.get("CPU", 0.0), "cluster_gpus": resources.get("GPU", 0.0)}


def _without(resolved: dict, stages: set[str]) -> dict:
    out = dict(resolved)
    if isinstance(out.get("stages"), dict):
        out["stages"] = {k: v for k, v in out["stages"].items() if k not in stages}
    return out


def check_study_folder(spec: StudySpec, study_dir: Path) -> None:
    """Refuse to resume a study folder whose stored spec differs from ``spec`` (``report_every`` aside:
    it changes what Tune receives, not any trial's result).

    Raises:
        StudyError: with a short unified diff of the stored and the new resolved spec.
    """
    stored = study_dir / STUDY_YAML
    if not stored.exists():
        return
    try:
        old = yaml.safe_load(stored.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise StudyError(f"{stored} is not readable YAML ({e}); use a new study folder (--output or --new)")
    new = spec.resolved()
    if isinstance(old, dict):
        # Where the user's package lies changes no trial either (a project moved, or run on a cluster).
        old.pop("code_dir", None)
        new.pop("code_dir", None)
        # How often a trial reports to Tune changes no trial's numbers (every epoch reaches the tables from
        # the checkpoint's history): a folder resumes with another report_every.
        old = {k: v for k, v in old.items() if k != "report_every"}
    new = {k: v for k, v in new.items() if k != "report_every"}
    decided = read_json(study_dir / DECISIONS_JSON, {}) if (study_dir / DECISIONS_JSON).exists() else {}
    unrun = {s for s in POST_STAGES if s not in decided}
    if isinstance(old, dict) and unrun:
        # A confirmation or cost stage that has not run yet (added, removed or changed) touches no stored
        # trial: the stages before it are compared without it, and a finished study can be confirmed or
        # costed afterwards.
        old, new = _without(old, unrun), _without(new, unrun)
    if old != new:
        diff = difflib.unified_diff(yaml.safe_dump(old, sort_keys=True).splitlines(),
                                    yaml.safe_dump(new, sort_keys=True).splitlines(),
                                    "stored study.yaml", "given study", lineterm="", n=1)
        lines = [l for l in diff][:40]
        raise StudyError(f"{study_dir} holds a study with a different spec; refusing to resume it with this "
                         f"one. What changed:\n" + "\n".join(lines) +
                         "\nRun with --new for a fresh study folder, or --output DIR.")


def lock_study(study_dir: Path):
    """Take the study folder's lock (a ``filelock.FileLock`` on ``.lock``), released at process exit.

    Raises:
        StudyError: another driver holds it.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(study_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = (study_dir / ".driver").read_text().strip() if (study_dir / ".driver").exists() else "?"
        raise StudyError(f"another gnp-study driver ({owner}) is running on {study_dir}; wait for it to "
                         f"finish, or stop it, before running this study again") from None
    (study_dir / ".driver").write_text(f"pid {os.getpid()} on {platform.node()}\n")
    return lock


def _check_tracking(spec: StudySpec) -> None:
    """Refuse an MLflow target (``GNP_STUDY_MLFLOW_URI``) without mlflow installed, before any trial.

    Raises:
        StudyError: the variable is set and ``mlflow`` cannot be imported.
    """
    from gnp_study.race_search import tracking_callbacks

    try:
        tracking_callbacks(spec.name)
    except ImportError as e:
        raise StudyError(str(e)) from None


def _run_pending_stages(spec: StudySpec, study_dir: Path, storage: str, uri: str | None,
                        address: str | None, trials: pd.DataFrame, epochs: pd.DataFrame, decisions: dict,
                        info: dict) -> None:
    """Run every stage not yet in ``decisions`` (updated in place), writing the tables, decisions.json
    and run_info.json after each; the body of :func:`run_greedy` once the folder is checked and locked."""
    trials_path, epochs_path = study_dir / TRIALS_PARQUET, study_dir / EPOCHS_PARQUET
    decisions_path, info_path = study_dir / DECISIONS_JSON, study_dir / RUN_INFO_JSON
    _check_tracking(spec)
    from gnp_study.user_code import ship_dirs

    resources = connect(address, py_modules=ship_dirs(spec.import_paths(), "model.name / data.dataset"))
    check_resources(spec, resources)
    (study_dir / STUDY_YAML).write_text(yaml.safe_dump(spec.resolved(), sort_keys=False))
    info.update(versions=_versions(), hardware=_hardware(resources), finished=None,
                ray_address=address or os.environ.get("RAY_ADDRESS"))
    write_json(info_path, info)
    for stage in study_stages(spec):
        if stage in decisions:
            continue
        _INTERRUPT.check(f"before stage {stage!r} started")
        t0 = time.time()
        # Rows of an interrupted stage (if any made it to disk) are rebuilt from Tune's experiment.
        trials = trials[trials["stage"] != stage]
        epochs = epochs[epochs["stage"] != stage]
        candidates = None
        if stage == "standard" and spec.stages.standard.search == "optuna":
            candidates, search = run_optuna_search(spec, storage)
            write_parquet(study_dir / SEARCH_TRIALS_PARQUET, search)
        plan = protocol.plan(stage, spec, decisions, candidates)
        races = protocol.stage_races(stage, spec, decisions) if racing.race_config(spec, stage) else None
        t_new, e_new = run_stage(stage, plan, spec, storage, races=races)  # raises StudyInterrupted if unfinished
        trials = pd.concat([trials, t_new], ignore_index=True) if len(trials) else t_new
        epochs = pd.concat([epochs, e_new], ignore_index=True) if len(epochs) else e_new
        write_parquet(trials_path, trials)
        write_parquet(epochs_path, epochs)
        try:
            if stage == CONFIRM:
                decisions[stage] = protocol.confirm_record(trials, spec, decisions)
            elif stage == COST:
                decisions[stage] = protocol.cost_record(trials, spec, decisions)
            else:
                decisions[stage] = protocol.decide(stage, trials, spec, decisions)
        except protocol.ProtocolError as e:
            raise StudyError(str(e)) from None
        write_json(decisions_path, decisions)
        wall = time.time() - t0
        cpu_h = float((t_new["wall_time_s"] * t_new["cpus"]).sum()) / 3600
        gpu_h = float((t_new["wall_time_s"] * t_new["gpus"]).sum()) / 3600
        info["stages"][stage] = {"wall_time_s": wall, "cpu_hours": cpu_h, "gpu_hours": gpu_h,
                                 "n_trials": len(t_new)}
        info["wall_time_s"] = float(info.get("wall_time_s", 0.0)) + wall
        write_json(info_path, info)
        if uri:
            _upload(study_dir, uri)
    info["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    write_json(info_path, info)
    if spec.paper is not None:
        _write_paper_reference(spec, study_dir)


def run_greedy(spec: StudySpec, study_dir: str | Path, *, address: str | None = None,
               build_report: bool = True) -> dict:
    """Run (or resume) the whole greedy protocol of a study in ``study_dir``.

    Args:
        spec: the validated study.
        study_dir: the study folder (created if absent). If it already holds this study, finished stages
            are kept and an interrupted stage is resumed from Tune's experiment state and checkpoints.
        address: Ray cluster address (see :func:`connect`).
        build_report: build tables, figures and ``report.html`` at the end.

    Returns:
        The decisions of the three stages (the content of ``decisions.json``).

    Raises:
        StudyError: the folder holds another study, another driver holds it, the cluster lacks the
            resources a trial needs, or every configuration of a stage diverged or failed.
        StudyInterrupted: Ctrl-C (SIGINT) at any moment: no stage starts after it and only stages whose
            every trial ended are decided (the CLI exits with status 130).
    """
    uri = str(study_dir).rstrip("/") if "://" in str(study_dir) else None
    if uri:
        # Tune writes trials straight to <uri>/ray; the tables live in a local mirror that is uploaded
        # after every stage, so the driver and the trials on other nodes meet in the same storage.
        study_dir = _mirror_dir(uri)
        _download(uri, study_dir)
        storage = f"{uri}/ray"
    else:
        study_dir = Path(study_dir)
        storage = str((study_dir / RAY_DIR).resolve())
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise StudyError(f"cannot write to the study folder {study_dir}: {e.strerror}; choose another "
                         f"with --output") from None
    lock = lock_study(study_dir)
    _INTERRUPT.install()
    try:
        check_study_folder(spec, study_dir)
        trial_columns, epoch_columns = metric_columns(spec.metric.name if spec.metric is not None else None)
        trials = read_table(study_dir / TRIALS_PARQUET, trial_columns)
        epochs = read_table(study_dir / EPOCHS_PARQUET, epoch_columns)
        decisions_path = study_dir / DECISIONS_JSON
        decisions = read_json(decisions_path, {})
        bad = [k for k, v in decisions.items() if k not in STAGES + POST_STAGES or not isinstance(v, dict)]
        if bad:
            raise StudyError(f"{decisions_path} holds unknown or malformed entries {bad}; restore it or start "
                             f"a new study folder (--new)")
        info_path = study_dir / RUN_INFO_JSON
        info = read_json(info_path, {
            "started": _dt.datetime.now().isoformat(timespec="seconds"), "stages": {}, "wall_time_s": 0.0})
        if not isinstance(info.get("stages", {}), dict):
            raise StudyError(f"{info_path} is malformed ('stages' is not a mapping); restore it or delete it")
        info.setdefault("stages", {})
        if any(stage not in decisions for stage in study_stages(spec)):
            _run_pending_stages(spec, study_dir, storage, uri, address, trials, epochs, decisions, info)
        else:  # nothing to train and no Ray: the outputs are rebuilt from the tables
            print(f"[gnp-study] every stage of {spec.name!r} is already decided in {study_dir}; rebuilding "
                  f"the outputs only", file=sys.stderr)
        _INTERRUPT.check("after every stage was decided, before the outputs were built")
        if build_report:
            from gnp_study.report import build_outputs

            build_outputs(study_dir)
        if uri:
            _upload(study_dir, uri)
        _INTERRUPT.check("while the outputs were built (every stage is decided)")
        return decisions
    finally:
        _INTERRUPT.uninstall()
        lock.release()


def _mirror_dir(uri: str) -> Path:
    import hashlib

    return Path(tempfile.gettempdir()) / "gnp-study-mirror" / hashlib.sha1(uri.encode()).hexdigest()[:16]


def _download(uri: str, local: Path) -> None:
    """Copy a study folder's files (not its ``ray/`` storage) from a URI into ``local``."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    local.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            pafs.copy_files(info.path, str(local / info.base_name), source_filesystem=fs)


def _upload(local: Path, uri: str) -> None:
    """Copy the study folder's files (not the lock) from ``local`` to the URI."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path, recursive=True)
    for f in local.iterdir():
        if f.is_file() and not f.name.startswith("."):
            pafs.copy_files(str(f), f"{path}/{f.name}", destination_filesystem=fs)


def _write_paper_reference(spec: StudySpec, study_dir: Path) -> None:
    from gnp_study.paper import paper_reference

    ref = paper_reference(spec.paper.model, spec.paper.dataset, spec.paper.augmentation)
    if ref is not None and len(ref):
        # The study measures top-1 error; ImageNet's top-5 rows have no measured counterpart.
        ref = ref[ref["metric"].isin(["error", "top1_error"])]
        ref.to_csv(study_dir / PAPER_REFERENCE_CSV, index=False)
