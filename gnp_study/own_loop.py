"""Your own training loop in a study: the contract between the protocol and a user's training function.

A study names the function with ``training.function: package.module:train``. Every trial calls it once,
in the trial's worker, with a :class:`TrialContext`::

    def train(ctx):
        model = ctx.build_model()                     # the study's model, seeded with the trial's seed
        data = ctx.datasets()                         # the study's data: .train, .test, .val
        opt = ctx.make_optimizer(model)               # GNP with the trial's alpha and r, as configured
        if ctx.state is not None:                     # a resumed trial: the state it saved last
            model.load_state_dict(ctx.state["model"]); opt.load_state_dict(ctx.state["optimizer"])
        for epoch in range(ctx.start_epoch + 1, ctx.epochs + 1):
            ...                                       # train one epoch with opt.step(closure)
            ctx.report({"test_error": err, "train_loss": loss},
                       state={"model": model.state_dict(), "optimizer": opt.state_dict()})

What the protocol does with it, as for a trial of the package's own loop (:mod:`gnp_study.train`): torch
is seeded with the trial's seed before the call (same seed, same initial weights for every
configuration: the paired design); each :meth:`TrialContext.report` is one epoch of the epochs table and
TensorBoard; a report whose metric (``test_error``, percent, lower is better) or ``train_loss`` is not
finite or ``train_loss`` / ``grad_norm`` is past ``divergence`` ends the trial as ``diverged`` (the
function is stopped; the reason is the trial's ``error``); the ``state`` of a checkpoint epoch
(``checkpoint_every``) and of the last epoch is saved, and a trial restarted after a crash or an
interrupted study gets it back as :attr:`TrialContext.state`. A function that raises is retried from its
last saved state (``max_failures``), then recorded as ``failed`` with its exception; one that returns
without reporting, or reports without the metric, fails with a message naming it.

Bit-for-bit resumes need the function's random state in what it saves (``torch.get_rng_state()``, its
loader's generator): the package cannot know where the function draws.
"""

from __future__ import annotations

import math
import socket
import time
from typing import Any, Callable

import torch

from gnp_study import faults, train, user_code
from gnp_study.spec import StudySpec

#: The metric a training function must report when the study names none (``StudySpec.metric``): what
#: the protocol then decides on (test error, percent, lower is better).
METRIC = "test_error"
#: Numeric metrics a report may carry besides :data:`METRIC`, as in the package's own loop (the epochs
#: table's columns); any other numeric key reaches Tune and TensorBoard only.
KNOWN = ("train_loss", "train_error", "test_loss", "val_loss", "val_error", "grad_norm", "lr",
         "passes_per_step")


class _TrialEnded(BaseException):
    """Raised inside :meth:`TrialContext.report` to stop a function whose trial diverged (a
    ``BaseException``, so an ``except Exception`` in the user's loop does not swallow it)."""


class TrialContext:
    """What a training function gets for one trial.

    Attributes:
        config: the trial's effective training recipe (the study's ``training`` section with stage 1's
            choice and the trial's overrides applied) plus ``alpha`` and ``r``: a plain dict.
        alpha, r: the balance coefficient and the perturbation radius of this trial (Algorithm 1).
        seed: the trial's seed (torch is seeded with it before the call).
        stage, trial_id: the protocol stage (``standard``, ``sam``, ``gnp``, ...) and the trial's id.
        epochs: how many epochs to train (``config["epochs"]``); the function reports once per epoch.
        start_epoch: the epochs already done (0, or the epoch of :attr:`state` on a resume).
        state: the ``state`` passed with the last saved report, or ``None`` on a fresh start.
        device: the trial's torch device (CUDA when the trial was given a GPU).
        metric: the name of the metric every report must carry: the study's ``metric.name``, else
            :data:`METRIC` (``test_error``).
    """

    def __init__(self, spec: StudySpec, trial: dict, report: Callable[[dict, dict | None], None],
                 resume_state: dict | None, device: torch.device):
        cfg = trial["config"]
        self._spec, self._report, self._trial = spec, report, trial
        self.config: dict[str, Any] = dict(train.effective_recipe(spec, cfg), alpha=cfg["alpha"], r=cfg["r"])
        self.alpha, self.r = float(cfg["alpha"]), float(cfg["r"])
        self.seed, self.stage, self.trial_id = int(trial["seed"]), trial["stage"], trial["trial_id"]
        self.epochs = int(self.config["epochs"])
        self.device = device
        self.metric = spec.metric.name if spec.metric is not None else METRIC
        saved = resume_state or {}
        self.state = saved.get("user")
        self.start_epoch = int(saved.get("epoch", 0))
        self.history: list[dict] = list(saved.get("history", []))
        self._best = min((h["test_error"] for h in self.history if math.isfinite(h["test_error"])),
                         default=math.inf)
        self._best_val, self._test_at_best_val = saved.get("best_val_error", math.inf), saved.get(
            "test_error_at_best_val", math.nan)
        self._epoch = self.start_epoch
        self._t0 = time.perf_counter()
        self._last_state: Any = self.state
        self.ended: str | None = None  # "completed" / "diverged" once the last report went out

    # ---------------------------------------------------------------------------------- building blocks
    def datasets(self):
        """The study's data (``data`` section): a :class:`gnp_study.data.DataBundle` with ``train``,
        ``test``, ``val`` (or None) ``torch.utils.data.Dataset``s, ``num_classes``, ``in_channels``,
        ``image_size`` and ``in_features``. Built once per worker process."""
        return train.study_datasets(self._spec)

    def build_model(self) -> torch.nn.Module:
        """The study's model (``model`` section) for its data, on :attr:`device`. Torch was seeded with
        the trial's seed before the function was called: build the model first to get the same initial
        weights in every configuration of a seed."""
        from gnp_study.models import build_model

        data = self.datasets()
        shape = {"in_features": data.in_features} if data.in_features is not None else {}
        return build_model(self._spec.model.name, data.num_classes, in_channels=data.in_channels,
                           image_size=data.image_size, **shape, **self._spec.model.kwargs).to(self.device)

    def make_optimizer(self, model: torch.nn.Module, params=None):
        """The GNP optimizer of this trial as the study configures it: base optimizer, learning rate,
        weight decay, momentum, alpha, r and the GNP variants (:func:`gnp_study.train.make_optimizer`).

        Args:
            model: the model trained (GNP reads its batch-norm layers).
            params: parameters or ``param_groups`` (default ``model.parameters()``).
        Returns:
            :class:`gnp_study.optim.GNP`; call ``opt.step(closure)`` with a closure that zeroes nothing,
            computes the loss, calls ``backward()`` and returns the loss (it is called twice per step).
        """
        return train.make_optimizer(model, self.config, self.alpha, self.r, params)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """The study's learning-rate schedule (``lr_schedule``, ``warmup_epochs``, ...) as a
        ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimizer step."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, train.lr_multiplier(self.config, steps_per_epoch))

    # ----------------------------------------------------------------------------------------- report
    def report(self, metrics: dict | None = None, *, state: Any = None, **more: float) -> None:
        """Report one epoch: the next epoch after the last reported (``start_epoch + 1`` first).

        Args:
            metrics: the epoch's metrics: :attr:`metric` is required (``test_error``, percent, unless the
                study names its own ``metric``); ``test_error`` is optional beside a study's own metric; the names
                in :data:`KNOWN` (``train_loss``, ``grad_norm``, ``val_error`` %, ...) fill the epochs
                table; other numbers reach Tune and TensorBoard. Keyword arguments are added to it.
            state: what to save for a resume (anything ``torch.save`` writes: state dicts, tensors,
                plain data); kept on checkpoint epochs and at the trial's end, handed back as
                :attr:`state` when the trial restarts.

        Raises:
            UserCodeError: the metric (or, with ``data.validation``, ``val_error``) is missing or not a
                number, or more epochs were reported than :attr:`epochs` (the trial fails with that message).
        """
        m = dict(metrics or {}, **more)
        key = "training.function"
        if self.ended is not None:
            raise user_code.UserCodeError(f"{key}: reported epoch {self._epoch + 1} after the trial ended "
                                          f"(training.epochs = {self.epochs})")
        if self.metric not in m:
            why = "the study's metric.name" if self._spec.metric is not None else "the metric the study decides on"
            raise user_code.UserCodeError(f"{key}: the report of epoch {self._epoch + 1} has no {self.metric!r} "
                                          f"({why}); it has {sorted(m)}")
        if self._spec.data.validation is not None and "val_error" not in m:
            raise user_code.UserCodeError(f"{key}: the report of epoch {self._epoch + 1} has no 'val_error': the "
                                          f"study sets data.validation, so its stages decide on it")
        values = {}
        for k, v in m.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                raise user_code.UserCodeError(f"{key}: metric {k!r} of epoch {self._epoch + 1} is "
                                              f"{type(v).__name__}, not a number") from None
        self._epoch += 1
        self._last_state = state if state is not None else self._last_state
        reason = self._divergence(values)
        out = self._row(values, reason)
        self.history.append(dict(out))
        done = reason is not None or self._epoch == self.epochs
        checkpoint = done or self._epoch % self._spec.checkpoint_every == 0
        if done:
            self.ended = out["status"]
        self._report(out, self._snapshot(out) if checkpoint else None)
        if reason is not None:
            raise _TrialEnded(reason)

    def finish(self) -> None:
        """End a trial whose function returned before :attr:`epochs` reports: its last epoch is reported
        again as ``completed``, with a checkpoint (a resumed study does not train it again).

        Raises:
            UserCodeError: the function returned without reporting any epoch.
        """
        if self.ended is not None:
            return
        if not self.history:
            raise user_code.UserCodeError("training.function: returned without reporting any epoch "
                                          f"(call ctx.report({{{self.metric!r}: ...}}) once per epoch)")
        out = dict(self.history[-1], status="completed")
        self.history[-1] = dict(out)
        self.ended = "completed"
        self._report(out, self._snapshot(out))

    def _divergence(self, v: dict) -> str | None:
        """Why the epoch's metrics say the trial diverged (None when they do not): a non-finite metric
        or training loss, a training loss or gradient norm past the study's ``divergence`` bounds."""
        div = self._spec.divergence
        for k in dict.fromkeys((self.metric, METRIC, "train_loss", "grad_norm")):
            if k in v and not math.isfinite(v[k]):
                return f"diverged: {k} = {v[k]} at epoch {self._epoch}"
        if v.get("train_loss", 0.0) > div.max_loss:
            return f"diverged: train_loss = {v['train_loss']:.4g} > divergence.max_loss at epoch {self._epoch}"
        if v.get("grad_norm", 0.0) > div.max_grad_norm:
            return (f"diverged: grad_norm = {v['grad_norm']:.4g} > divergence.max_grad_norm at epoch "
                    f"{self._epoch}")
        return None

    def _row(self, v: dict, reason: str | None) -> dict:
        """The epoch's report in the package loop's format (:func:`gnp_study.train.train_trial`)."""
        test = v.get(METRIC, math.nan)
        if reason is None:
            self._best = min(self._best, test)
            if math.isfinite(v.get("val_error", math.nan)) and v["val_error"] < self._best_val:
                self._best_val, self._test_at_best_val = v["val_error"], test
        now = time.perf_counter()
        row = {k: math.nan for k in KNOWN}
        row.update(v)
        row.update({
            "epoch": self._epoch, "test_error": test if reason is None else math.nan,
            self.metric: v[self.metric] if reason is None else math.nan,
            "best_test_error": self._best if math.isfinite(self._best) else math.nan,
            "best_val_error": self._best_val if math.isfinite(self._best_val) else math.nan,
            "test_error_at_best_val": self._test_at_best_val, "epoch_time_s": now - self._t0,
            "status": "diverged" if reason else ("completed" if self._epoch == self.epochs else "running"),
            "diverged_epoch": self._epoch if reason else math.nan, "node": socket.gethostname(),
        })
        if reason:
            row["diverged_reason"] = reason
        self._t0 = now
        return row

    def _snapshot(self, metrics: dict) -> dict:
        return {"user": self._last_state, "epoch": self._epoch, "metrics": metrics, "history": self.history,
                "best_test_error": self._best, "best_val_error": self._best_val,
                "test_error_at_best_val": self._test_at_best_val}


def train_trial(spec: StudySpec, trial: dict, report: Callable[[dict, dict | None], None],
                resume_state: dict | None = None, device: str | torch.device | None = None) -> str:
    """Run one trial with the study's ``training.function``.

    Args:
        spec: the validated study (``spec.training.function`` set).
        trial, report, resume_state, device: as for :func:`gnp_study.train.train_trial`; ``report``
            receives the same metrics (NaN where the function reported none) and checkpoints whose
            ``"user"`` entry is the function's saved state.

    Returns:
        The trial's status: ``"completed"`` or ``"diverged"``.

    Raises:
        UserCodeError: the function cannot be loaded, returned without reporting, or reported without the
            metric; whatever the function raises (the runner retries the trial from its last checkpoint).
    """
    fn = user_code.load_function(spec.training.function)
    if device is None:
        device = "cuda" if (torch.cuda.is_available() and spec.resources.gpus_per_trial > 0) else "cpu"
    device = torch.device(device)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    ctx = TrialContext(spec, trial, report, resume_state, device)
    saved = resume_state or {}
    finished = bool(saved) and (ctx.start_epoch >= ctx.epochs
                                or saved.get("metrics", {}).get("status") in ("completed", "diverged"))
    faults.log_event("start", trial, ctx.start_epoch, finished)
    if finished:  # it ended before the driver went down: report its end again, train nothing
        # with its checkpoint: a trial resumed in a new Tune trial folder (trainable.earlier_checkpoint)
        # then holds its history there too
        report(dict(saved["metrics"]), saved)
        return saved["metrics"]["status"]
    torch.manual_seed(ctx.seed)
    try:
        fn(ctx)
        ctx.finish()
    except _TrialEnded:
        pass
    faults.log_event("end", trial, ctx._epoch, True)
    return ctx.ended or "completed"
