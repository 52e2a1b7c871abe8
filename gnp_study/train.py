"""One trial: train a model with the GNP optimizer and report metrics after every epoch.

This is the only place that trains. It knows nothing of Ray: :func:`train_trial` takes a ``report``
callable (the runner passes one that calls ``ray.tune.report``) and an optional state to resume from.

Paired design (configurations compared seed by seed): two trials with the same seed start from the same initial weights and see the
same training batches in the same order, whatever their configuration (alpha, r, lr, ...). What is
shared, exactly:

- the initial weights: ``torch.manual_seed(seed)`` is the first draw of the trial; building the data
  (fixed subsets, validation split and label noise use their own numpy seeds) and the optimizer draw
  nothing from torch's generator, so the model's initialisation is the first thing drawn from it;
- the batch order: the training loader shuffles with its own ``torch.Generator`` seeded with the trial
  seed (and ``loader: device`` also draws its crops, flips and cutout centres from it), used by nothing
  else;
- the rest of torch's global stream (dropout, drop path, ShakeDrop, torchvision augmentations and
  CutMix on ``loader: torch``): the same random numbers, step by step, for every alpha, including
  alpha = 0 or r = 0 (one forward pass per step) against two passes. The closure saves the global
  generator's state before the first pass and restores it before the second, so the second pass
  replays the first pass's noise (Algorithm 1, line 6) and leaves the generator where one pass would.
  This assumes a forward pass draws the same count of random numbers at any weights, which holds for
  every model here. The evaluation loaders draw a fixed count per epoch (test loader: one base-seed
  draw; the validation loader has its own generator and draws nothing from the global one, so adding
  a validation split does not change the training run).

A configuration that changes ``batch_size`` changes the batches themselves (same permutation stream,
other cuts); ``tests/test_train.py`` checks the rest.

Selection (validation mode: the test set never chooses): with ``data.validation`` set, every epoch is also evaluated on the
validation split, and ``best_val_error`` / ``test_error_at_best_val`` follow the epoch of lowest
validation error (the earliest on ties); without it they are NaN and the paper's best test error
during training is the score.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from gnp_study import faults
from gnp_study.faults import FAULT_ENV, START_LOG_ENV  # noqa: F401  (the hooks' variables, named here too)
from gnp_study.spec import StudySpec


_BASE_OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


class TrialDiverged(Exception):
    """Raised inside a trial when the loss or norm(g1) is non-finite or past the study's bound."""


@dataclass
class TrialResult:
    """What a finished trial returns: ``status`` ("completed"/"diverged"), epochs run, best and final
    test error (%), the diverged epoch, and with a validation split the best validation error (%) and
    the test error (%) at its epoch (NaN without one)."""

    status: str
    epochs_run: int
    best_test_error: float
    final_test_error: float
    diverged_epoch: int | None
    best_val_error: float = math.nan
    test_error_at_best_val: float = math.nan


def effective_recipe(spec: StudySpec, config: dict) -> dict:
    """The training recipe with the trial's overrides applied (plain dict)."""
    t = spec.training.model_dump()
    for k, v in config.items():
        if k not in ("alpha", "r"):
            t[k] = v
    t["batch_size"] = int(t["batch_size"])
    t["warmup_epochs"] = int(t["warmup_epochs"])
    return t


def make_optimizer(model: torch.nn.Module, recipe: dict, alpha: float, r: float, params=None):
    """The GNP optimizer of a trial, as the study configures it.

    Args:
        model: the trial's model (GNP reads its batch-norm layers: ``model=``).
        recipe: the effective training recipe (``TrainingSpec`` fields with the trial's overrides):
            ``base_optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``normalize_g1``,
            ``perturb_weight_decay``, ``grad_clip``, ``every``, ``reuse``.
        alpha: the balance coefficient; r: the perturbation radius (Algorithm 1).
        params: the parameters or ``param_groups`` to optimise (default ``model.parameters()``).

    Returns:
        A :class:`gnp_study.optim.GNP` stepping the base optimizer (SGD, AdamW or Adam).
    """
    from gnp_study.optim import GNP

    t = recipe
    base_kwargs = {"lr": t["lr"], "weight_decay": t["weight_decay"]}
    if t["base_optimizer"] == "sgd":
        base_kwargs.update(momentum=t["momentum"], nesterov=t["nesterov"] and t["momentum"] > 0)
    amortised = {"every": t["every"], "reuse": t["reuse"]} if t["every"] != 1 else {}
    return GNP(model.parameters() if params is None else params, _BASE_OPTIMIZERS[t["base_optimizer"]],
               alpha=alpha, r=r, model=model, normalize_g1=t["normalize_g1"],
               perturb_weight_decay=t["perturb_weight_decay"], max_grad_norm=t["grad_clip"], **amortised,
               **base_kwargs)


def lr_multiplier(t: dict, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``s`` (linear warm-up, then schedule)."""
    total = max(1, t["epochs"] * steps_per_epoch)
    warm = t["warmup_epochs"] * steps_per_epoch

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        if t["lr_schedule"] == "constant":
            return 1.0
        frac = (s - warm) / max(1, total - warm)
        if t["lr_schedule"] == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
        return t["lr_gamma"] ** sum(frac >= m for m in t["lr_milestones"])

    return f


def _snapshot(obj):
    """A CPU copy of a (nested) state, detached from the live model and optimizer tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def _get_rng(device: torch.device):
    cpu = torch.get_rng_state()
    return (cpu, torch.cuda.get_rng_state(device)) if device.type == "cuda" else (cpu, None)


def _set_rng(device: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


#: Keep the last data set built in this process for the next trial with the same data spec (see
#: :func:`study_datasets`). Off by default; the runner turns it on in its Ray workers.
CACHE_DATA = False
_DATA_CACHE: dict = {}


def study_datasets(spec: StudySpec):
    """The study's data sets (:func:`gnp_study.data.build_datasets` with ``spec.data``); with
    :data:`CACHE_DATA` on, built once per process for one data spec.

    A Ray worker is reused for many trials of a stage (``reuse_actors``): they all train on the same data,
    so it is read, subset and wrapped once. The bundle holds no per-trial state (loaders, generators and
    on-device copies are made per trial), so every trial sees what a fresh build would give it. One entry
    is kept; another data spec replaces it.
    """
    from gnp_study import own_data
    from gnp_study.data import build_datasets

    d = spec.data
    key = d.model_dump_json()
    if not CACHE_DATA or key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        on_device = d.loader == "device"  # augmentation then runs on the device, per batch
        noise = d.label_noise
        if own_data.is_own(d.dataset):  # the user's image folder or data function
            _DATA_CACHE[key] = own_data.build_for(d)
            return _DATA_CACHE[key]
        _DATA_CACHE[key] = build_datasets(
            d.dataset, root=d.root, augmentation="none" if on_device else d.augmentation,
            train_subset=d.train_subset, test_subset=d.test_subset, subset_seed=d.subset_seed, format=d.format,
            validation_size=d.validation.size if d.validation else None,
            validation_seed=d.validation.seed if d.validation else 0,
            label_noise_fraction=noise.fraction if noise else 0.0,
            label_noise_kind=noise.kind if noise else "symmetric", label_noise_seed=noise.seed if noise else 0)
    return _DATA_CACHE[key]


def _loaders(spec: StudySpec, t: dict, data, generator: torch.Generator, device: torch.device):
    """(train, test, validation or None) loaders; only the training loader shuffles (with ``generator``).

    The validation loader gets a generator of its own, so iterating it draws nothing from torch's global
    generator and a study with a validation split trains exactly as the same study without one.
    """
    from torch.utils.data import DataLoader

    if spec.data.loader == "device":
        # The whole (normalised, un-augmented) data set on the trial's device; flips, crops and cutout
        # are drawn per batch there (gnp_study.gpu_data), so small trials are not starved by the CPU.
        from gnp_study.data import DATASETS
        from gnp_study.gpu_data import from_dataset

        facts = DATASETS[spec.data.dataset]
        train = from_dataset(data.train, t["batch_size"], raw=False, augment=spec.data.augmentation,
                             cutout_size=facts.cutout_size or 0, flip=facts.hflip, device=device,
                             generator=generator, shuffle=True)
        test = from_dataset(data.test, max(256, t["batch_size"]), raw=False, augment="none", shuffle=False,
                            device=device)
        val = None if data.val is None else from_dataset(
            data.val, max(256, t["batch_size"]), raw=False, augment="none", shuffle=False, device=device)
        return train, test, val
    train = DataLoader(data.train, batch_size=t["batch_size"], shuffle=True, generator=generator,
                       num_workers=spec.data.num_workers, drop_last=False)
    test = DataLoader(data.test, batch_size=max(256, t["batch_size"]), shuffle=False,
                      num_workers=spec.data.num_workers)
    val = None if data.val is None else DataLoader(
        data.val, batch_size=max(256, t["batch_size"]), shuffle=False, num_workers=spec.data.num_workers,
        generator=torch.Generator().manual_seed(0))
    return train, test, val


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and error (percent) of ``model`` on ``loader``; model left in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        wrong += (out.argmax(1) != y).sum()
        n += y.numel()
    return float(loss_sum) / max(1, n), 100.0 * float(wrong) / max(1, n)


@dataclass
class _Run:
    """What one trial trains with (built by :func:`_setup`): the effective recipe ``t``, the device, the
    data bundle, model, GNP optimizer, schedule, the training loader's generator, the loaders, the loss."""

    t: dict
    device: torch.device
    data: object
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    train_loader: object
    test_loader: object
    val_loader: object
    criterion: torch.nn.Module


@dataclass
class _Progress:
    """A trial's running record: the last epoch done, the best test error, validation selection (the
    lowest validation error and the test error at that epoch; inf/NaN without a split), every epoch's
    metrics, and the last epoch's test error."""

    epoch: int = 0
    best: float = math.inf
    best_val: float = math.inf
    test_at_best_val: float = math.nan
    history: list = field(default_factory=list)
    last_test: float = math.nan


def _setup(spec: StudySpec, trial: dict, device: str | torch.device | None) -> _Run:
    """Seed torch with the trial's seed (the model's initialisation is the first draw), build the data,
    model, GNP optimizer with its base optimizer, learning-rate schedule and loaders of one trial."""
    from gnp_study.models import build_model

    cfg = trial["config"]
    t = effective_recipe(spec, cfg)
    if device is None:
        device = "cuda" if (torch.cuda.is_available() and spec.resources.gpus_per_trial > 0) else "cpu"
    device = torch.device(device)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    torch.manual_seed(trial["seed"])

    data = study_datasets(spec)
    shape = {"in_features": data.in_features} if data.in_features is not None else {}
    model = build_model(spec.model.name, data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size, **shape, **spec.model.kwargs).to(device)
    if t["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, t, cfg["alpha"], cfg["r"])
    gen = torch.Generator().manual_seed(trial["seed"])
    train_loader, test_loader, val_loader = _loaders(spec, t, data, gen, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(t, len(train_loader)))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])
    return _Run(t, device, data, model, opt, sched, gen, train_loader, test_loader, val_loader, criterion)


def _restore(run: _Run, state: dict) -> _Progress:
    """Load a checkpoint's model, optimizer, schedule and random-number state into ``run``; its record."""
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    # checkpoints written before validation splits existed lack these (paper mode: no split)
    return _Progress(state["epoch"], state["best_test_error"], state.get("best_val_error", math.inf),
                     state.get("test_error_at_best_val", math.nan), list(state.get("history", [])))


def _train_epoch(run: _Run) -> dict:
    """One pass over the training loader, one GNP step per batch.

    Returns:
        ``train_loss`` (mean per sample), ``train_error`` (percent), ``grad_norm`` (mean norm of g1 over
        the steps), ``passes_per_step`` (forward-backward passes per step: 2 on a full GNP step, 1 on a
        one-pass step).
    """
    model, opt, device, t = run.model, run.opt, run.device, run.t
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    norm_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.long)
    n = steps = passes = 0
    for x, y in run.train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if t["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        if run.data.batch_transform is not None:
            x, y = run.data.batch_transform(x, y)
        out_holder = {}

        def closure():
            # Both passes of a GNP step see the same dropout / drop-path / ShakeDrop noise, so g2 is
            # the gradient of the same stochastic loss at the perturbed point (Algorithm 1, line 6).
            if "rng" in out_holder:
                _set_rng(device, out_holder["rng"])
            else:
                out_holder["rng"] = _get_rng(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t["precision"] == "bf16"):
                out = model(x)
                loss = run.criterion(out.float(), y)
            loss.backward()
            out_holder.setdefault("out", out.detach())
            return loss

        loss = opt.step(closure)
        run.sched.step()
        loss_sum += loss.detach().double() * y.shape[0]
        norm_sum += opt.last_grad_norm.detach().double()
        hard = y if y.ndim == 1 else y.argmax(1)
        wrong += (out_holder["out"].argmax(1) != hard).sum()
        n += y.shape[0]
        steps += 1
        passes += 1 + int(opt.last_full)
    return {"train_loss": float(loss_sum) / max(1, n), "train_error": 100.0 * float(wrong) / max(1, n),
            "grad_norm": float(norm_sum) / max(1, steps), "passes_per_step": passes / max(1, steps)}


def _evaluate_epoch(run: _Run, prog: _Progress, diverged: bool) -> dict:
    """Test (and validation) loss and error after an epoch, NaN when it diverged; updates ``prog``'s best
    test error and validation selection (strictly lower validation error: the earliest epoch wins a tie)."""
    out = {"test_loss": math.nan, "test_error": math.nan, "val_loss": math.nan, "val_error": math.nan}
    if diverged:
        return out
    out["test_loss"], out["test_error"] = evaluate(run.model, run.test_loader, run.device, run.t["precision"])
    prog.best = min(prog.best, out["test_error"])
    prog.last_test = out["test_error"]
    if run.val_loader is not None:
        out["val_loss"], out["val_error"] = evaluate(run.model, run.val_loader, run.device, run.t["precision"])
        if out["val_error"] < prog.best_val:
            prog.best_val, prog.test_at_best_val = out["val_error"], out["test_error"]
    return out


def _state(run: _Run, prog: _Progress, metrics: dict) -> dict:
    """The checkpoint after an epoch: a CPU copy of everything :func:`_restore` needs, with the metrics
    of every epoch so far."""
    return _snapshot({
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        "generator": run.gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": prog.epoch,
        "best_test_error": prog.best, "best_val_error": prog.best_val,
        "test_error_at_best_val": prog.test_at_best_val, "metrics": metrics, "history": prog.history,
    })


def _nan_inf(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def _report_finished(trial: dict, state: dict, report) -> TrialResult:
    """A trial whose checkpoint is its last (it ended before the driver went down): report the last epoch
    again with that checkpoint, train nothing. The checkpoint goes with the report so that a trial resumed
    in a new Tune trial folder (:func:`gnp_study.trainable.earlier_checkpoint`) holds its epochs' history
    there too."""
    m = dict(state["metrics"])
    for k in ("val_loss", "val_error", "best_val_error", "test_error_at_best_val"):
        m.setdefault(k, math.nan)
    report(m, state)
    epoch = state["epoch"]
    faults.log_event("end", trial, epoch, True)
    diverged = m.get("status") == "diverged"
    return TrialResult("diverged" if diverged else "completed", epoch, m["best_test_error"], m["test_error"],
                       epoch if diverged else None, m["best_val_error"], m["test_error_at_best_val"])


def train_trial(spec: StudySpec, trial: dict, report: Callable[[dict, dict | None], None],
                resume_state: dict | None = None, device: str | torch.device | None = None) -> TrialResult:
    """Train one trial and report its metrics after every epoch.

    Args:
        spec: the validated study.
        trial: ``TrialConfig.to_dict()``: ``stage``, ``config`` (with ``alpha`` and ``r``), ``seed``,
            ``trial_id``, ``config_key``.
        report: called after every epoch as ``report(metrics, state)``; ``metrics`` is a flat dict
            (``epoch`` 1-based, ``train_loss``, ``train_error`` %, ``test_loss``, ``test_error`` %,
            ``best_test_error`` %, ``val_loss``, ``val_error`` %, ``best_val_error`` % (lowest so far),
            ``test_error_at_best_val`` % (test error at that epoch, the earliest on ties; the four
            validation metrics are NaN without ``data.validation``), ``grad_norm`` mean norm(g1), ``lr``,
            ``epoch_time_s``, ``passes_per_step`` (forward-backward passes per optimizer step, 1 to 2),
            ``status`` "running"/"completed"/"diverged", ``diverged_epoch``,
            ``node``), ``state`` is a checkpoint
            (dict of tensors and plain data for ``torch.save``) or ``None`` on epochs without one.
        resume_state: a state previously passed to ``report``: training continues after its epoch with
            the same model, optimizer, schedule and random-number state (bit for bit on CPU).
        device: torch device; default CUDA when the trial was given a GPU, else CPU.

    Returns:
        :class:`TrialResult`. A diverging trial (loss or mean norm(g1) non-finite or beyond
        ``spec.divergence``) returns with status ``"diverged"`` at that epoch instead of raising.

    Raises:
        Whatever the model or data raise (the runner retries such a trial from its last checkpoint).
    """
    run = _setup(spec, trial, device)
    t = run.t
    prog = _restore(run, resume_state) if resume_state is not None else _Progress()
    finished = resume_state is not None and (prog.epoch >= t["epochs"]
                                             or resume_state["metrics"].get("status") == "diverged")
    faults.log_event("start", trial, prog.epoch, finished)
    if finished:
        return _report_finished(trial, resume_state, report)
    fault = faults.for_trial(trial, resumed=resume_state is not None)
    node = socket.gethostname()
    for epoch in range(prog.epoch + 1, t["epochs"] + 1):
        t0 = time.perf_counter()
        if fault is not None:
            fault(epoch)
        tr = _train_epoch(run)
        diverged = (not math.isfinite(tr["train_loss"]) or not math.isfinite(tr["grad_norm"])
                    or tr["train_loss"] > spec.divergence.max_loss or tr["grad_norm"] > spec.divergence.max_grad_norm)
        ev = _evaluate_epoch(run, prog, diverged)
        prog.epoch = epoch
        done = diverged or epoch == t["epochs"]
        metrics = {
            "epoch": epoch, "train_loss": tr["train_loss"], "train_error": tr["train_error"],
            "test_loss": ev["test_loss"], "test_error": ev["test_error"], "best_test_error": _nan_inf(prog.best),
            "val_loss": ev["val_loss"], "val_error": ev["val_error"], "best_val_error": _nan_inf(prog.best_val),
            "test_error_at_best_val": prog.test_at_best_val, "grad_norm": tr["grad_norm"],
            "lr": run.opt.param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - t0,
            "passes_per_step": tr["passes_per_step"],
            "status": "diverged" if diverged else ("completed" if done else "running"),
            "diverged_epoch": epoch if diverged else math.nan, "node": node,
        }
        prog.history.append(dict(metrics))
        # A diverged trial checkpoints too: resumed after a driver restart, it reports its end again
        # instead of training again.
        report(metrics, _state(run, prog, metrics) if done or epoch % spec.checkpoint_every == 0 else None)
        if done:
            faults.log_event("end", trial, epoch, True)
        if diverged:
            return TrialResult("diverged", epoch, metrics["best_test_error"], prog.last_test, epoch,
                               metrics["best_val_error"], prog.test_at_best_val)
    return TrialResult("completed", t["epochs"], _nan_inf(prog.best), prog.last_test, None,
                       _nan_inf(prog.best_val), prog.test_at_best_val)
