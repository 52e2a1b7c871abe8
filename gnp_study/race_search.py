"""Ray Tune side of racing stages and of live tracking (imports Ray; the race itself is
:mod:`gnp_study.racing`).

:class:`RaceSearcher` is a Tune ``Searcher``: Tune asks it for the next trial whenever a worker is free
(with a custom searcher Tune keeps one trial pending at a time), and it answers with the next
(configuration, seed) the race wants, a trial of the next block started ahead of the block test
(``race.lookahead``, leader first), ``None`` (wait for results) or ``Searcher.FINISHED``. Every ended trial
comes back through ``on_trial_complete``; the race state is never stored as such: the searcher keeps the
table of ended trials (config_key, seed, status, value) and the trials in flight, and recomputes the race
from that table with :func:`gnp_study.racing.replay`. Tune saves that table with every experiment snapshot
(``save``) and gives it back on ``Tuner.restore`` (``restore``); on restore the table is also rebuilt from
the trials Tune restored (``rebuild``, the truth if Tune's saved searcher state is older or damaged), so a
killed race resumes where its last snapshot was, and the stage's trials table rebuilds the same race for
the decision.

:func:`trial_name` / :func:`trial_dirname` give every Tune trial a readable name (stage, alpha, r, seed):
the TensorBoard logger (:class:`EpochTensorBoardLogger`) writes each trial's event file into its folder,
so ``tensorboard --logdir <study>/ray`` lists runs such as
``sam/sam_alpha=1_r=0.05_seed=0_3f2a1_00004``. :func:`tracking_callbacks`
adds Ray Tune's MLflow logger callback when ``GNP_STUDY_MLFLOW_URI`` is set (optional extra ``mlflow``).
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pandas as pd
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS, TRAINING_ITERATION
from ray.tune.search import Searcher

from gnp_study import racing
from gnp_study.protocol import TrialConfig
from gnp_study.trainable import history_rows
from gnp_study.tune_state import ENDED

#: Environment variable naming an MLflow tracking URI (``file:///path/mlruns``, ``http://host:5000``); unset:
#: no MLflow logging.
MLFLOW_ENV = "GNP_STUDY_MLFLOW_URI"


class RaceSearcher(Searcher):
    """Suggests the trials of one stage's races as results arrive (see the module docstring).

    Args:
        stage: ``"sam"`` or ``"gnp"``.
        races: the stage's races (:func:`gnp_study.protocol.stage_races`), deciding race first.
        configs: config_key -> configuration dict (every candidate of every race).
        metric: the decision column a trial reports (``best_test_error``, ``best_val_error``, a study's
            ``best_<name>``), with a leading ``-`` when higher is better (:func:`gnp_study.racing.oriented`).
    """

    def __init__(self, stage: str, races: list, configs: dict, metric: str, retries: int = 2):
        super().__init__(metric=None, mode=None)
        self.stage, self.races, self.configs, self.metric_column = stage, list(races), dict(configs), metric
        self.retries = int(retries)
        self.rows: list[dict] = []  # ended trials: config_key, seed, status, value
        self.live: dict[str, tuple] = {}  # Tune trial id -> (config_key, seed) in flight
        self.lost: dict[tuple, int] = {}  # (config_key, seed) -> Tune errors before any report
        self.kept: list[tuple[dict, dict]] = []  # ended trials that are not Tune's (see keep)

    # ---------------------------------------------------------------------------------- state
    def results(self) -> pd.DataFrame:
        """The ended trials as a :func:`gnp_study.racing.results_frame`-shaped table."""
        return pd.DataFrame(self.rows, columns=["config_key", "seed", "status", "value"])

    def states(self) -> list:
        """The :class:`gnp_study.racing.RaceState` of every race, from the ended trials."""
        res = self.results()
        return [racing.replay(r, res) for r in self.races]

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # ---------------------------------------------------------------------------------- Tune API
    def suggest(self, trial_id: str):
        states = self.states()
        ended = {(r["config_key"], r["seed"]) for r in self.rows}
        busy = set(self.live.values())
        for st in states:
            for t in st.wanted:
                if t not in ended and t not in busy:
                    return self._start(trial_id, t)
        for st in states:
            # race.lookahead counts the next block's trials started before this block's test, running or
            # ended: one that ends early does not free a place for another (at most `lookahead` trials
            # per test are wasted on candidates the test eliminates)
            ahead = sum(1 for t in st.lookahead if t in busy or t in ended)
            for t in st.lookahead:
                if ahead >= st.race.config.lookahead:
                    break
                if t not in ended and t not in busy:
                    return self._start(trial_id, t)
        if all(st.finished for st in states) or not self.live:
            # finished; or nothing runs and nothing can start (never expected: a race with no trial in
            # flight has all its block's results, so it has tested or finished)
            return Searcher.FINISHED
        return None

    def _start(self, trial_id: str, t: tuple) -> dict:
        self.live[trial_id] = t
        key, seed = t
        return {"trial": TrialConfig(self.stage, dict(self.configs[key]), int(seed)).to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        t = self.live.get(trial_id)
        if t is None:
            return
        status = (result or {}).get("status")
        if error and not (result or {}).get("epoch"):
            # Tune gave up before the trial's first report (its worker died while Tune handed it over):
            # not the configuration's fault; suggested again, recorded as failed only after `retries` more
            del self.live[trial_id]
            self.lost[t] = self.lost.get(t, 0) + 1
            if self.lost[t] <= self.retries:
                return
            status = "failed"
        elif error:
            status = "failed"
        elif status not in ENDED:
            # stopped before its end (Ctrl-C): Tune restores and resumes it; it stays in flight
            return
        self.live.pop(trial_id, None)
        value = ((result or {}).get(self.metric_column.lstrip("-"), math.nan) if status == "completed"
                 else math.nan)
        value = math.nan if value is None else racing.oriented(self.metric_column, float(value))
        self.rows = [r for r in self.rows if (r["config_key"], r["seed"]) != t]
        self.rows.append({"config_key": t[0], "seed": int(t[1]), "status": status, "value": value})

    def rebuild(self, trials: list) -> None:
        """Rebuild the table of ended trials and the trials in flight from the trials Tune restored.

        Called at a stage's first step, before Tune asks for a trial: Tune's saved searcher state can be
        older than its experiment state or missing (a driver killed while Tune copied them to storage,
        see :func:`gnp_study.tune_state.set_aside_damaged_state`), while the restored trials are what Tune will
        run. Each ended trial is replayed through :meth:`on_trial_complete` in Tune's order, so the table is
        the one an uninterrupted run builds; unfinished trials are in flight (Tune resumes them).

        Args:
            trials: Tune's ``Trial`` objects of the stage (``config["trial"]`` as :meth:`suggest` made it,
                ``status``, ``last_result``).
        """
        self.rows, self.live, self.lost = [], {}, {}
        for i, (tc, result) in enumerate(getattr(self, "kept", [])):
            tc = TrialConfig.from_dict(tc)
            self.live[f"kept-{i}"] = (tc.config_key, int(tc.seed))
            self.on_trial_complete(f"kept-{i}", result)
        for trial in trials:
            tc = (trial.config or {}).get("trial")
            if not tc:
                continue
            tc = TrialConfig.from_dict(tc)
            self.live[trial.trial_id] = (tc.config_key, int(tc.seed))
            if trial.status in ("TERMINATED", "ERROR"):
                self.on_trial_complete(trial.trial_id, trial.last_result or {}, error=trial.status == "ERROR")

    def keep(self, trials: list[tuple[dict, dict]]) -> None:
        """Ended trials of the stage that Tune does not hold: those kept from the folders of a stage that
        started again as a new experiment (:func:`gnp_study.tune_state.keep_ended_trials`). Each is
        ``(config["trial"], last report)``; :meth:`rebuild` replays them before Tune's trials, so the race
        counts them and never suggests them again."""
        self.kept = list(trials)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"rows": self.rows, "live": self.live, "lost": self.lost}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.rows, self.live = list(state["rows"]), dict(state["live"])
        self.lost = dict(state.get("lost", {}))


def race_searcher(stage: str, races: list, trial_configs: list[TrialConfig], metric: str,
                  retries: int = 2) -> RaceSearcher:
    """A :class:`RaceSearcher` for a stage whose fixed plan is ``trial_configs``; ``retries``: how often a
    trial Tune lost before its first report is suggested again (the study's ``max_failures``)."""
    return RaceSearcher(stage, races, {tc.config_key: tc.config for tc in trial_configs}, metric, retries)


def check_race(stage: str, races: list, trials: pd.DataFrame, metric: str) -> int:
    """How many trials the stage's races still want, from the stage's collected trials table (0: every race
    finished and every trial it asked for ended)."""
    res = racing.results_frame(trials, metric)
    ended = set(zip(res["config_key"], res["seed"]))
    missing = 0
    for race in races:
        st = racing.replay(race, res)
        missing += len(st.missing(ended)) + (0 if st.finished else 1)
    return missing


def order_trials(trials: pd.DataFrame, races: list) -> pd.DataFrame:
    """A race stage's trials in a fixed order (race, candidate in grid order, seed in race order), whatever
    order Tune ran or restored them in."""
    pos = {}
    for i, race in enumerate(races):
        for j, k in enumerate(race.candidates):
            for m, s in enumerate(race.seeds):
                pos[(k, int(s))] = (i, j, m)
    key = [pos.get((k, int(s)), (len(races), 0, 0)) for k, s in zip(trials["config_key"], trials["seed"])]
    order = sorted(range(len(trials)), key=lambda i: key[i])
    return trials.iloc[order].reset_index(drop=True)


# ------------------------------------------------------------------------------------------- tracking
def _fields(trial) -> tuple[str, str, str, str, str]:
    """(stage, alpha, r, seed, every) as text; every is "" for full GNP (a trial without ``every``)."""
    cfg = getattr(trial, "config", None) or {}
    t = cfg.get("trial")
    if t is not None:
        c = t["config"]
        every = str(int(c["every"])) if "every" in c else ""
        return t["stage"], f"{float(c['alpha']):g}", f"{float(c['r']):g}", str(t["seed"]), every
    return "standard_search", "0", "0", "search", ""


def trial_name(trial) -> str:
    """Tune trial name: ``"<stage> alpha=<a> r=<r> seed=<s>"``, ``"<stage> alpha=<a> r=<r> every=<k>
    seed=<s>"`` for amortised GNP (``tune.TuneConfig.trial_name_creator``)."""
    stage, a, r, s, k = _fields(trial)
    return f"{stage} alpha={a} r={r}{f' every={k}' if k else ''} seed={s}"


def trial_dirname(trial) -> str:
    """Tune trial folder name (and TensorBoard run name): ``"<stage>_alpha=<a>_r=<r>_seed=<s>_<tune id>"``
    (``..._r=<r>_every=<k>_seed=...`` for amortised GNP); Tune's trial id keeps two runs of the same trial
    (a stage restarted from scratch) apart (``tune.TuneConfig.trial_dirname_creator``)."""
    stage, a, r, s, k = _fields(trial)
    return f"{stage}_alpha={a}_r={r}{f'_every={k}' if k else ''}_seed={s}_{trial.trial_id}"


class EpochTensorBoardLogger(TBXLoggerCallback):
    """Ray Tune's TensorBoard logger, lighter and per epoch: the same event file per trial (in the trial's
    folder, tags ``ray/tune/<metric>``, hyper-parameters at the trial's end) holding only the metrics the
    trial reported, one point per epoch at step = the trial's ``epoch`` (Tune's ``training_iteration`` for a
    result without one), flushed by tensorboardX's writer every 30 s and when the trial ends instead of
    after every result.

    Tune's own ``TBXLoggerCallback`` also writes its bookkeeping (times, pid, iteration counters: about 25
    scalars per result where a trial reports 13) and flushes the file (``fsync``) after every result; in a
    study of short trials that is the driver's largest cost per result, and a trial waits for it at each
    ``tune.report`` (benchmarks/README.md, "bench_tune_reports.py"). Passing an instance in ``RunConfig.callbacks`` keeps
    Tune from adding its own (Tune adds a TensorBoard logger only when none is given).

    With ``report_every`` > 1 a trial reports some epochs to Tune only through a checkpoint's history
    (:data:`gnp_study.trainable.HISTORY_FILE`): on every checkpoint the epochs of that history that this
    driver has not yet written for the trial, and that come after the checkpoint the trial (re)started
    from, are added (same tags and filtering), so the trial's event files hold every epoch, each once.
    Steps are written in increasing order (TensorBoard's default loader discards points written after a
    larger step): a reported epoch waits until the checkpoint that carries the epochs before it has been
    written, or until the trial ends.

    Args:
        report_every: the study's ``report_every`` (1: nothing is read from checkpoints).

    Source: ``ray.tune.logger.TBXLoggerCallback`` (Ray 2.60), of which this overrides ``log_trial_result``
    and ``log_trial_end`` and adds ``on_checkpoint``.
    """

    #: Result keys Tune fills in itself, not logged (``ray.tune.result.AUTO_RESULT_KEYS`` and the config).
    SKIP = frozenset(AUTO_RESULT_KEYS) | {"config", "done", "should_checkpoint", "checkpoint_dir_name"}

    def __init__(self, report_every: int = 1):
        super().__init__()
        self.report_every = int(report_every)
        self._steps: dict = {}  # per trial: the epochs written by this driver
        self._floor: dict = {}  # per trial: the last epoch of the checkpoint it (re)started from
        self._pending: dict = {}  # per trial (report_every > 1): reported epochs not yet written, by epoch

    def log_trial_start(self, trial) -> None:
        """Tune's start of trial (a new writer); remember the epoch of the checkpoint it starts from."""
        super().log_trial_start(trial)
        if self.report_every > 1:
            rows = history_rows(getattr(trial, "checkpoint", None))
            self._floor[trial] = max((r["epoch"] for r in rows if isinstance(r.get("epoch"), int)), default=0)

    def _scalars(self, metrics: dict) -> dict:
        """``metrics``' numeric, non-NaN, non-bookkeeping values, by TensorBoard tag."""
        out = {}
        for key, value in metrics.items():
            if key in self.SKIP or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            if math.isnan(value):
                continue
            out[f"ray/tune/{key}"] = value
        return out

    def _add(self, trial, metrics: dict, step: int) -> dict:
        """Write ``metrics``' numeric, non-NaN, non-bookkeeping values at ``step``; return them by tag."""
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer = self._trial_writer[trial]
        logged = self._scalars(metrics)
        for tag, value in logged.items():
            writer.add_scalar(tag, value, global_step=step)
        self._steps.setdefault(trial, set()).add(step)
        return logged

    def _written_to(self, trial) -> int:
        """The last epoch in the trial's event files: written by this driver, or before its restart point."""
        return max(self._steps.get(trial, ()), default=self._floor.get(trial, 0))

    def _write_in_order(self, trial, rows: dict) -> None:
        """Write the epochs of ``rows`` (epoch -> metrics) after :meth:`_written_to`, in increasing order."""
        last = self._written_to(trial)
        for epoch in sorted(e for e in rows if e > last):
            self._add(trial, rows[epoch], epoch)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        """Add the trial's reported metrics of ``result`` at step ``result["epoch"]`` (else
        ``training_iteration``), unless that epoch is already in the file; no flush. With ``report_every`` > 1
        the epoch waits for the checkpoint holding the epochs before it (:meth:`on_checkpoint`) or the
        trial's end (:meth:`log_trial_end`)."""
        step = int(result["epoch"]) if isinstance(result.get("epoch"), (int, np.integer)) else result[TRAINING_ITERATION]
        if step in self._steps.get(trial, ()):
            return
        if self.report_every > 1:
            if step > self._written_to(trial):
                self._pending.setdefault(trial, {})[step] = result
            self._trial_result[trial] = self._scalars(result)  # the hyper-parameter table's metrics
            return
        # what Tune's logger keeps for the hyper-parameter table at the end
        self._trial_result[trial] = self._add(trial, result, step)

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        """Write the epochs of ``checkpoint``'s history (:func:`gnp_study.trainable.history_rows`) that are not
        yet in the trial's event file (the epochs a trial with ``report_every`` > 1 did not report), in
        order, with the reported epochs waiting up to the checkpoint's last epoch."""
        if self.report_every <= 1:
            return
        rows = {r["epoch"]: r for r in history_rows(checkpoint) if isinstance(r.get("epoch"), int)}
        if not rows:
            return
        pending = self._pending.get(trial, {})
        upto = max(rows)
        rows.update({e: m for e, m in pending.items() if e <= upto and e not in rows})
        self._write_in_order(trial, rows)
        for e in [e for e in pending if e <= upto]:
            del pending[e]

    def log_trial_end(self, trial, failed: bool = False) -> None:
        """Write the reported epochs still waiting (in order), then Tune's end of trial (hyper-parameters,
        close the file); forget the trial's epochs."""
        pending = self._pending.pop(trial, {})
        if pending:
            self._write_in_order(trial, pending)
        super().log_trial_end(trial, failed)
        self._steps.pop(trial, None)
        self._floor.pop(trial, None)


def tensorboard_callbacks(report_every: int = 1) -> list:
    """``[EpochTensorBoardLogger(report_every)]``, or ``[]`` when ``tensorboardX`` is not installed (then
    Tune writes no TensorBoard files either)."""
    try:
        return [EpochTensorBoardLogger(report_every)]
    except ImportError:
        return []


def tracking_callbacks(experiment_name: str) -> list:
    """Ray Tune's ``MLflowLoggerCallback`` (per-epoch metrics and the trial's config, one MLflow run per
    trial, experiment ``experiment_name``) when ``GNP_STUDY_MLFLOW_URI`` is set; else ``[]``.

    Raises:
        ImportError: the variable is set but ``mlflow`` is not installed (``pip install 'gnp-study[mlflow]'``).
    """
    uri = os.environ.get(MLFLOW_ENV)
    if not uri:
        return []
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ImportError(f"{MLFLOW_ENV} is set but mlflow is not installed; pip install 'gnp-study[mlflow]' "
                          f"or unset {MLFLOW_ENV}") from None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment_name, save_artifact=False)]
