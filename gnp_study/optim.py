"""The GNP optimizer: gradient-norm penalty by Algorithm 1 of Zhao, Zhang & Hu (ICML 2022).

Training minimises Eq. 1, ``L(theta) = L_S(theta) + lambda * ||grad L_S(theta)||``. Its gradient (Eq. 6)
needs a Hessian-vector product, which the paper replaces by a finite difference (Eq. 8-11): with
``alpha = lambda / r`` (Eq. 10),

    g1 = grad L_S(theta)                                   (Algorithm 1, line 4)
    theta' = theta + r * g1 / ||g1||                       (line 5; ||.|| is the global L2 norm)
    g2 = grad L_S(theta')                                  (line 6)
    g  = (1 - alpha) * g1 + alpha * g2                     (line 7)
    theta <- base_optimizer step with g at theta           (line 8, any torch optimizer)

``alpha = 0`` is the standard update, ``alpha = 1`` is SAM (Foret et al., 2021). :class:`GNP` wraps any
``torch.optim.Optimizer`` class. This module imports only torch.

Closure form::

    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=model, lr=0.1, momentum=0.9)
    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    loss = opt.step(closure)            # two forward-backward passes (one when alpha == 0 or r == 0)
    print(float(opt.last_grad_norm))    # ||g1|| as a 0-dim tensor; reading it is the caller's sync

Explicit form with fp16 autocast and ``torch.amp.GradScaler`` (loops that own the passes)::

    scaler = torch.amp.GradScaler("cuda")
    opt.zero_grad()                     # the explicit form leaves clearing .grad before pass 1 to you
    with torch.autocast("cuda", dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    if opt.first_step(scaler):          # unscales g1, perturbs theta, clears .grad, freezes BN stats
        with torch.autocast("cuda", dtype=torch.float16):
            loss2 = F.cross_entropy(model(x), y)
        scaler.scale(loss2).backward()
    opt.second_step(scaler)             # unscales g2, restores theta, mixes, skips the step on inf/NaN
    scaler.update()                     # lowers the scale when g1 or g2 overflowed

Logging (tensors, set by every step; reading them is the only sync):

* ``last_grad_norm``: ||g1||, global L2 norm of the first-pass gradient (including the L2 term when
  ``perturb_weight_decay``), unscaled. Non-finite when the loss diverged (the step is then taken as
  written: the caller detects divergence from this value or the loss). With a GradScaler, a step
  skipped for an overflow also leaves a non-finite value here (expected, not divergence).
* ``last_g2_norm``: ||g2||; NaN when the step ran one pass or in exact mode.
* ``last_cos``: cos(g1, g2) in [-1, 1], 0 when either norm is 0; NaN when the step ran one pass or in
  exact mode. Computed sync-free as (||g1||^2 + ||g2||^2 - ||g1 - g2||^2) / (2 ||g1|| ||g2||).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import clip_grad_norm_, get_total_norm

__all__ = ["GNP", "frozen_bn_stats"]

_STATE_KEY = "gnp"
_STATE_FORMAT = 2  # 2: the amortised mode's settings and stored direction; 1 still loads
#: How a step between full steps reuses the stored penalty direction (``GNP(..., reuse=...)``).
REUSE_MODES = ("orthogonal", "difference")


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Stop batch-norm running statistics from updating inside the ``with`` block.

    Every ``_BatchNorm`` module of ``model`` (BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants, with
    ``momentum`` a number or None) that is in training mode and tracks running statistics is switched to
    ``track_running_stats = False`` for the block: it still normalises with the batch statistics, exactly
    as in the first pass, but leaves ``running_mean``, ``running_var`` and ``num_batches_tracked``
    untouched (nothing is copied or restored, so the buffers stay bit for bit what the first pass left).
    Use it around the second forward pass (at theta + r g1/||g1||) in loops that own the passes;
    ``GNP(..., model=model)`` does this itself.

    Args:
        model: any ``nn.Module`` (a DDP wrapper is fine: its ``modules()`` include the wrapped model's).

    Yields:
        The list of modules that were switched (restored on exit, also on an exception).

    Source: the SAM-family practice of keeping BN statistics from the perturbed pass out of the model
    (Foret et al., 2021, public code); the paper's Algorithm 1 updates statistics once per step.
    """
    frozen = [m for m in model.modules()
              if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield frozen
    finally:
        for m in frozen:
            m.track_running_stats = True


def _check_alpha_r(alpha: Any, r: Any, where: str) -> tuple[float, float]:
    try:
        a, rr = float(alpha), float(r)
    except (TypeError, ValueError):
        raise ValueError(f"alpha and r must be real numbers, got alpha={alpha!r}, r={r!r} ({where})") from None
    if not math.isfinite(a):
        raise ValueError(f"alpha must be finite (any real number; 0 = standard, 1 = SAM), got {alpha!r} ({where})")
    if not (math.isfinite(rr) and rr >= 0.0):
        raise ValueError(f"r must be a finite number >= 0, got {r!r} ({where})")
    return a, rr


def _by_device(tensors: list[Tensor]) -> Iterable[tuple[torch.device, list[Tensor]]]:
    """Split a tensor list by device (and dtype) for foreach ops that take a 0-dim tensor scalar."""
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype([tensors])
    for (device, _dtype), (lists, _idx) in grouped.items():
        yield device, lists[0]


def _mul_(tensors: list[Tensor], scale: Tensor) -> None:
    """``tensors *= scale`` in place for a 0-dim tensor ``scale``, without a host sync."""
    if tensors:
        for device, ts in _by_device(tensors):
            torch._foreach_mul_(ts, scale.to(device=device, non_blocking=True))


def _norm(tensors: list[Tensor]) -> Tensor:
    """Global L2 norm over a list of tensors as a detached 0-dim tensor, at least fp32 (0 if empty)."""
    n = get_total_norm(tensors, 2.0, error_if_nonfinite=False, foreach=None).detach()
    return n.to(torch.promote_types(n.dtype, torch.float32))


@dataclass
class _Pending:
    """What ``first_step`` leaves for ``second_step``."""

    two_pass: bool
    scaled: bool                       # the GradScaler unscaled g1
    norm1: Tensor                      # ||g1||
    inv1: Tensor                       # 1/||g1|| (0 when ||g1|| == 0)
    params: list[Tensor] = field(default_factory=list)   # params with a g1 (perturbed ones)
    theta: list[Tensor] = field(default_factory=list)    # saved theta, aligned with params
    g1: list[Tensor] = field(default_factory=list)       # saved g1, aligned with params
    frozen_bn: contextlib.ExitStack | None = None
    reuse: bool = False                # an amortised step: one pass, the stored direction reused


def _check_every(every: Any, reuse: Any) -> tuple[int, str]:
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or int(every) < 1:
        raise ValueError(f"every must be an integer >= 1 (the second pass every `every` steps; 1 = "
                         f"Algorithm 1), got {every!r}")
    if reuse not in REUSE_MODES:
        raise ValueError(f"reuse must be one of {', '.join(REUSE_MODES)}, got {reuse!r}")
    return int(every), str(reuse)


class GNP(torch.optim.Optimizer):
    """Gradient-norm-penalty optimizer (Algorithm 1) wrapping any base optimizer.

    Args:
        params: parameters or param-group dicts, as for any ``torch.optim`` optimizer. A group may set its
            own ``alpha`` and ``r`` (and base-optimizer options such as ``lr``).
        base_optimizer: the optimizer class applied to the final gradient (Algorithm 1, line 8), e.g.
            ``torch.optim.SGD`` or ``torch.optim.AdamW``; it is built on the same param groups, so
            ``opt.param_groups`` and LR schedulers attached to ``opt`` act on it directly.
        alpha: balance coefficient, ``alpha = lambda / r`` (Eq. 10), any finite real number (the paper's
            B_a sets use negative values, B_b values above 1). 0 = standard training, 1 = SAM.
        r: perturbation radius in parameter units (Algorithm 1, line 5), finite and >= 0.
        model: the trained module. When given, batch-norm running statistics are updated by the first
            pass only (see :func:`frozen_bn_stats`); without it the closure's second pass updates them too.
        normalize_g1: the authors' public-code variant: mix the normalised g1,
            ``g = (1 - alpha) * g1 / ||g1|| + alpha * g2``. Off by default (Algorithm 1 mixes raw g1).
        perturb_weight_decay: the authors' public-code variant: each group's ``weight_decay`` becomes an L2
            term of the loss, so g1 and g2 include ``weight_decay * theta`` at their own points (it shapes
            the perturbation) and the base optimizer's own decay is switched off during its step, so decay
            counts once. For SGD this is plain L2 in the loss; for AdamW it replaces decoupled decay by L2.
        max_grad_norm: clip the final gradient g (line 7) to this global L2 norm before the base step
            (``torch.nn.utils.clip_grad_norm_``); None or 0 = no clipping. Clipping g1 instead could not
            change the normalised perturbation, so it is the final gradient that is clipped.
        exact: compute the gradient of Eq. 1 exactly, ``g1 + alpha * r * H g1 / ||g1||`` (Eq. 6, lambda =
            alpha * r), with a Hessian-vector product by double backward. For study and tests on small
            models; the closure must then return the loss *without* calling ``backward()``.
        every: amortised GNP: the second pass on every ``every``-th step only (1, the default, is
            Algorithm 1 on every step, bit for bit). A full step also stores the penalty direction
            ``v = g2 - g1`` (``reuse="difference"``) or its part orthogonal to g1, ``v - (<v, g1> /
            ||g1||^2) g1`` (``reuse="orthogonal"``, as LookSAM reuses the SAM gradient's orthogonal part:
            Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022), with
            ``||g1||`` of that step. The ``every - 1`` steps after it take one forward-backward pass and
            use ``g = g1 + alpha * (||g1|| / ||g1_full||) * v`` (with ``normalize_g1``: ``(1 - alpha) g1 /
            ||g1|| + alpha (g1 + (||g1|| / ||g1_full||) v)``): the penalty keeps the size relative to the
            gradient it had when measured. With ``||g1|| = ||g1_full||`` and ``v = g2 - g1`` this is line 7
            exactly, so a full step is Algorithm 1's. The first step, and the step after one a GradScaler
            skipped, are full. The direction comes from the (all-reduced) g1 and g2, so under DDP it is the
            same on every replica.
        reuse: ``"orthogonal"`` (default) or ``"difference"``, see ``every``; ignored when ``every == 1``.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay`` ...).

    Raises:
        ValueError: ``alpha`` not finite; ``r`` not finite or negative (also for param groups added later);
            ``max_grad_norm`` negative or not finite; ``exact`` combined with ``normalize_g1``,
            ``perturb_weight_decay`` or ``every > 1``; ``every`` not an integer >= 1 (booleans refused);
            ``reuse`` not one of :data:`REUSE_MODES`.
        TypeError: ``base_optimizer`` is an optimizer instance instead of a class (or factory).

    Steps (see the module docstring for examples):

    * ``step(closure)``: the closure runs the forward pass, calls ``backward()`` and returns the loss; it
      need not zero gradients (GNP clears them before each pass) and may accumulate several micro-batches.
      GNP calls it at theta (g1) and at theta + r g1/||g1|| (g2), restores theta exactly, mixes and steps
      the base optimizer; ``.grad`` then holds the final gradient g. Returns the first pass's loss. When
      every group has ``alpha == 0`` or every group has ``r == 0`` the closure runs once and, with the
      variants off, the update is the base optimizer's alone, bit for bit.
    * ``first_step(scaler=None)`` / ``second_step(scaler=None)``: the same update for loops that own the
      passes (mixed precision, custom DDP handling).

    Mixed precision: bf16 autocast needs nothing. For fp16 pass a ``torch.amp.GradScaler`` as ``scaler``
    to ``first_step``/``second_step`` (or ``step(closure, scaler=scaler)`` with a closure calling
    ``scaler.scale(loss).backward()``), then call ``scaler.update()``. g1 and g2 are unscaled with
    ``scaler.unscale_`` (g1 as this optimizer, g2 as ``base_optimizer``); if either holds an inf or NaN
    the whole step is skipped, theta is restored bit for bit, and ``scaler.update()`` lowers the scale.
    Deciding the skip reads one flag from the device, as ``GradScaler.step`` does; without a scaler no
    step synchronises with the host.

    Distributed data parallel: wrap the model in DDP and use it in the closure as usual, with both
    passes synchronised (no ``no_sync`` around either pass). Then g1 and g2 are both all-reduced, every
    rank perturbs with the same global g1 and mixes the same gradients, replicas stay identical, and the
    update equals the single-process algorithm on the global batch. (The common SAM recipe that runs the
    first pass under ``no_sync`` lets replicas drift for ``alpha != 1``, because the local g1 enters g.)

    Memory: two parameter-sized buffers (saved theta and g1), allocated on the first two-pass step and
    kept; none for one-pass steps; with ``every > 1`` a third, the stored direction (and a transient one
    while ``reuse="orthogonal"`` projects it). The state dict holds the base optimizer's state (momentum,
    Adam moments), the param groups with ``alpha`` and ``r``, and GNP's settings under the key ``"gnp"``
    (with ``every > 1`` also the stored direction, its ``||g1||`` and the steps since the last full step,
    so a run resumed mid-cycle continues the same trajectory).

    Attributes:
        base_optimizer: the wrapped optimizer instance.
        last_grad_norm, last_g2_norm, last_cos: 0-dim tensors on the gradients' device, set by every step
            (None before the first): ||g1||, ||g2|| and cos(g1, g2), see the module docstring.
        last_full: bool, True when the last step ran the second pass (False for one-pass configurations
            and for the amortised steps between full steps); count passes as ``1 + last_full``.

    Source: Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization in Deep
    Learning", ICML 2022, Section 3.3 (Eq. 6-11) and Algorithm 1.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        *,
        alpha: float = 0.8,
        r: float = 0.05,
        model: nn.Module | None = None,
        normalize_g1: bool = False,
        perturb_weight_decay: bool = False,
        max_grad_norm: float | None = None,
        exact: bool = False,
        every: int = 1,
        reuse: str = "orthogonal",
        **base_kwargs: Any,
    ) -> None:
        if isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError("base_optimizer must be an optimizer class such as torch.optim.SGD, "
                            f"not an instance ({type(base_optimizer).__name__})")
        alpha, r = _check_alpha_r(alpha, r, "GNP arguments")
        self._settings: dict[str, Any] = {}
        self._set_settings(normalize_g1=normalize_g1, perturb_weight_decay=perturb_weight_decay,
                           max_grad_norm=max_grad_norm, exact=exact, every=every, reuse=reuse)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        defaults = dict(base_kwargs, alpha=alpha, r=r)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # One list of group dicts shared by GNP, the base optimizer and any LR scheduler; one state.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = dict(self.base_optimizer.defaults, alpha=alpha, r=r)
        self.model = model
        self._pending: _Pending | None = None
        self._theta_buf: dict[Tensor, Tensor] = {}
        self._g1_buf: dict[Tensor, Tensor] = {}
        self.last_grad_norm: Tensor | None = None
        self.last_g2_norm: Tensor | None = None
        self.last_cos: Tensor | None = None
        self.last_full = False
        # amortised mode: the stored direction per param, ||g1|| of its full step, steps since it
        self._v_buf: dict[Tensor, Tensor] = {}
        self._v_norm1: Tensor | None = None
        self._since_full = 0

    # ----------------------------------------------------------------------------------------- settings
    def _set_settings(self, *, normalize_g1: bool, perturb_weight_decay: bool, max_grad_norm: float | None,
                      exact: bool, every: int = 1, reuse: str = "orthogonal") -> None:
        every, reuse = _check_every(every, reuse)
        if exact and every > 1:
            raise ValueError("exact=True computes Eq. 6 on every step; it cannot be combined with every > 1 "
                             "(the amortised second pass)")
        if max_grad_norm is not None:
            m = float(max_grad_norm)
            if not (math.isfinite(m) and m >= 0.0):
                raise ValueError(f"max_grad_norm must be None or a finite number >= 0, got {max_grad_norm!r}")
            max_grad_norm = m if m > 0.0 else None
        if exact and (normalize_g1 or perturb_weight_decay):
            raise ValueError("exact=True computes Eq. 6 as written; it cannot be combined with "
                             "normalize_g1 or perturb_weight_decay")
        self._settings = dict(normalize_g1=bool(normalize_g1), perturb_weight_decay=bool(perturb_weight_decay),
                              max_grad_norm=max_grad_norm, exact=bool(exact), every=every, reuse=reuse)

    @property
    def normalize_g1(self) -> bool:
        """Mix ``(1 - alpha) g1/||g1|| + alpha g2`` (authors' code) instead of Algorithm 1's raw g1."""
        return self._settings["normalize_g1"]

    @property
    def perturb_weight_decay(self) -> bool:
        """Weight decay is an L2 term of the loss, so it enters g1, g2 and the perturbation."""
        return self._settings["perturb_weight_decay"]

    @property
    def max_grad_norm(self) -> float | None:
        """Global L2 norm the final gradient is clipped to, or None."""
        return self._settings["max_grad_norm"]

    @property
    def exact(self) -> bool:
        """Whether the step computes Eq. 6 with a Hessian-vector product instead of Algorithm 1."""
        return self._settings["exact"]

    @property
    def every(self) -> int:
        """The second pass runs on every ``every``-th step (1: every step, Algorithm 1)."""
        return self._settings["every"]

    @property
    def reuse(self) -> str:
        """How the steps between full steps reuse the stored direction (:data:`REUSE_MODES`)."""
        return self._settings["reuse"]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (to GNP and the base optimizer alike); it may set its own ``alpha`` and ``r``.

        Raises:
            ValueError: the group's ``alpha`` is not finite or its ``r`` is negative or not finite.
        """
        if "base_optimizer" not in self.__dict__:       # called by Optimizer.__init__
            super().add_param_group(param_group)
        else:
            param_group.setdefault("alpha", self.defaults["alpha"])
            param_group.setdefault("r", self.defaults["r"])
            _check_alpha_r(param_group["alpha"], param_group["r"], "param group")
            self.base_optimizer.add_param_group(param_group)   # appends to the shared list
        group = self.param_groups[-1]
        group["alpha"], group["r"] = _check_alpha_r(group["alpha"], group["r"],
                                                    f"param group {len(self.param_groups) - 1}")

    def state_dict(self) -> dict[str, Any]:
        """Base optimizer state + param groups (with ``alpha``, ``r``) + GNP settings under ``"gnp"``.

        Raises:
            RuntimeError: called between ``first_step`` and ``second_step`` (theta is perturbed then).
        """
        if self._pending is not None:
            raise RuntimeError("state_dict() called between first_step() and second_step(): "
                               "the parameters are perturbed; finish the step first")
        sd = super().state_dict()
        sd[_STATE_KEY] = dict(self._settings, format=_STATE_FORMAT)
        if self.every > 1:
            index = {id(q): i for i, q in enumerate(q for g in self.param_groups for q in g["params"])}
            sd[_STATE_KEY]["amortised"] = {
                "since_full": self._since_full,
                "norm1": None if self._v_norm1 is None else self._v_norm1.clone(),
                "direction": {index[id(q)]: v.clone() for q, v in self._v_buf.items() if id(q) in index},
            }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (a plain base-optimizer state dict works too).

        The base optimizer loads ``state`` and ``param_groups`` (momentum buffers, Adam moments, lr,
        per-group alpha/r); GNP's settings (``normalize_g1``, ``perturb_weight_decay``,
        ``max_grad_norm``, ``exact``, ``every``, ``reuse``) and the amortised mode's stored direction are
        restored from ``"gnp"`` when present (a dict without them: full steps until the next one stores it).

        Raises:
            ValueError: as ``torch.optim.Optimizer.load_state_dict`` (group count or sizes differ), or a
                loaded group's alpha/r is invalid.
        """
        if self._pending is not None:
            self._abort()                       # a half-done step: put theta and BN back first
        sd = dict(state_dict)
        settings = sd.pop(_STATE_KEY, None)
        self.base_optimizer.load_state_dict(sd)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        for i, group in enumerate(self.param_groups):
            group.setdefault("alpha", self.defaults["alpha"])
            group.setdefault("r", self.defaults["r"])
            group["alpha"], group["r"] = _check_alpha_r(group["alpha"], group["r"], f"loaded param group {i}")
        if settings is not None:
            # a dict of format 1 has no every/reuse: those keep the values this optimizer was built with
            self._set_settings(**dict(self._settings, **{k: settings[k] for k in (
                "normalize_g1", "perturb_weight_decay", "max_grad_norm", "exact", "every", "reuse") if k in settings}))
        self._v_buf, self._v_norm1, self._since_full = {}, None, 0
        saved = (settings or {}).get("amortised")
        if saved is not None and saved.get("norm1") is not None:
            flat = [q for g in self.param_groups for q in g["params"]]
            self._v_buf = {flat[int(i)]: v.to(device=flat[int(i)].device, dtype=flat[int(i)].dtype).clone()
                           for i, v in saved["direction"].items()}
            dev = next(iter(self._v_buf.values())).device if self._v_buf else saved["norm1"].device
            self._v_norm1 = saved["norm1"].to(dev).clone()
            self._since_full = int(saved["since_full"])

    # ---------------------------------------------------------------------------------------- helpers
    def _two_pass(self) -> bool:
        """A second pass is needed unless every group has alpha == 0 or every group has r == 0."""
        groups = [g for g in self.param_groups if g["params"]]
        return any(g["alpha"] != 0.0 for g in groups) and any(g["r"] != 0.0 for g in groups)

    def _grads(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        """Per group: (group, params with a grad, their grads); params with grad None are left out."""
        out = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            out.append((group, ps, [p.grad for p in ps]))
        return out

    def _add_l2(self, groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]) -> None:
        """grad += weight_decay * theta per group (the L2 term of the loss), for perturb_weight_decay."""
        for group, ps, gs in groups:
            wd = group.get("weight_decay", 0.0)
            if wd and ps:
                torch._foreach_add_(gs, ps, alpha=wd)

    @staticmethod
    def _buffers(params: list[Tensor], store: dict[Tensor, Tensor]) -> list[Tensor]:
        bufs = []
        for p in params:
            b = store.get(p)
            if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                b = store[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            bufs.append(b)
        return bufs

    def _reuse_now(self) -> bool:
        """Whether this step reuses the stored direction (``every > 1``, one stored, fewer than
        ``every - 1`` steps taken since its full step)."""
        return self.every > 1 and self._v_norm1 is not None and self._since_full < self.every - 1

    def _store_direction(self, groups, g1_by_group, p: _Pending, dot: Tensor) -> None:
        """Keep v = g2 - g1 (or its part orthogonal to g1) and ||g1|| of this full step; ``.grad`` holds g2
        and the g1 buffers g1 - g2 (before the mix)."""
        params = [q for _, ps, _ in groups for q in ps]
        d = [b for bs in g1_by_group for b in bs]                     # g1 - g2
        v = self._buffers(params, self._v_buf)
        have = {id(q) for q in params}
        for q in [q for q in self._v_buf if id(q) not in have]:
            del self._v_buf[q]                                       # no gradient this step: no direction
        if v:
            torch._foreach_copy_(v, d)
            torch._foreach_neg_(v)                                    # v = g2 - g1
            if self.reuse == "orthogonal":
                # v - (<v, g1> / ||g1||^2) g1, with <v, g1> = <g1, g2> - ||g1||^2 and g1 = g2 - v (.grad - v)
                coef = (dot - p.norm1.square()) * p.inv1.square()
                g2 = [g for _, _, gs in groups for g in gs]
                for vi, g2i in zip(v, g2):
                    g1i = g2i - vi
                    vi.sub_(g1i * coef.to(device=vi.device, dtype=vi.dtype))
        self._v_norm1 = p.norm1.clone()
        self._since_full = 0

    @torch.no_grad()
    def _reuse_mix(self, p: _Pending) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        """The amortised step's line 7: g = g1 + alpha (||g1|| / ||g1_full||) v per group (``normalize_g1``:
        ``(1 - alpha) g1/||g1|| + alpha (g1 + (||g1||/||g1_full||) v)``), with ``.grad`` holding g1."""
        groups = self._grads()
        scale = torch.where(self._v_norm1 > 0, p.norm1 / self._v_norm1, 0.0)
        for group, ps, gs in groups:
            alpha = group["alpha"]
            if not gs:
                continue
            if self.normalize_g1:
                _mul_(gs, (1.0 - alpha) * p.inv1 + alpha)
            if alpha == 0.0:
                continue
            for q, g in zip(ps, gs):
                v = self._v_buf.get(q)
                if v is not None:
                    g.add_(v * (alpha * scale).to(device=g.device, dtype=g.dtype))
        self._since_full += 1
        return groups

    def _nan_like(self, t: Tensor) -> Tensor:
        return torch.full((), float("nan"), device=t.device)

    def _base_step(self) -> None:
        """Algorithm 1, line 8: the base optimizer's step on the final gradient in ``.grad``."""
        saved = []
        if self.perturb_weight_decay:            # the L2 term is already in the gradient
            for group in self.param_groups:
                if group.get("weight_decay", 0.0):
                    saved.append((group, group["weight_decay"]))
                    group["weight_decay"] = 0.0
        try:
            self.base_optimizer.step()
        finally:
            for group, wd in saved:
                group["weight_decay"] = wd

    # ------------------------------------------------------------------------------------------ steps
    @torch.no_grad()
    def first_step(self, scaler: torch.amp.GradScaler | None = None) -> bool:
        """Algorithm 1, lines 4-5: take g1 from ``.grad`` and move theta to theta + r g1/||g1||.

        Call after the first pass's ``backward()``. It saves theta and g1 (two parameter-sized buffers),
        sets ``last_grad_norm``, perturbs each group by ``r_group * g1 / ||g1||`` with the global norm over
        all groups, freezes batch-norm statistics when the optimizer has the model, and clears ``.grad``
        for the second pass. With ||g1|| = 0 (or grads all None) theta is not moved.

        Args:
            scaler: an enabled ``torch.amp.GradScaler`` when the backward pass was scaled; g1 is unscaled
                with ``scaler.unscale_(self)``.

        Returns:
            True when the caller must run the second pass (forward + backward at the perturbed theta)
            before :meth:`second_step`; False when every group has alpha == 0 or every group has r == 0,
            or on an amortised step between full steps (``every > 1``): then call :meth:`second_step`
            directly (``.grad`` still holds g1, nothing was moved).

        Raises:
            RuntimeError: ``exact=True`` (needs ``step(closure)``), or a first step is already pending.
        """
        if self.exact:
            raise RuntimeError("exact=True computes Eq. 6 inside step(closure); first_step() is not available")
        if self._pending is not None:
            raise RuntimeError("first_step() called twice; call second_step() to finish the pending step")
        scaled = scaler is not None and scaler.is_enabled()
        if scaled:
            scaler.unscale_(self)
        groups = self._grads()
        if self.perturb_weight_decay:
            self._add_l2(groups)
        params = [p for _, ps, _ in groups for p in ps]
        grads = [g for _, _, gs in groups for g in gs]
        norm1 = _norm(grads)                                        # ||g1||, Eq. 9's denominator
        inv1 = torch.where(norm1 > 0, norm1.reciprocal(), 0.0)     # 0 for a zero (or NaN) norm: no NaN
        self.last_grad_norm = norm1
        if not self._two_pass():
            self._pending = _Pending(two_pass=False, scaled=scaled, norm1=norm1, inv1=inv1)
            return False
        if self._reuse_now():
            self._pending = _Pending(two_pass=False, scaled=scaled, norm1=norm1, inv1=inv1, reuse=True)
            return False
        theta = self._buffers(params, self._theta_buf)
        g1 = self._buffers(params, self._g1_buf)
        if params:
            torch._foreach_copy_(theta, params)                     # exact restore point
            torch._foreach_copy_(g1, grads)
        for group, ps, gs in groups:
            if group["r"] != 0.0 and ps:
                _mul_(gs, inv1 * group["r"])                        # .grad is scratch now: e = r g1/||g1||
                torch._foreach_add_(ps, gs)                         # line 5: theta' = theta + e
        stack = None
        if self.model is not None:
            stack = contextlib.ExitStack()
            stack.enter_context(frozen_bn_stats(self.model))
        self._pending = _Pending(True, scaled, norm1, inv1, params, theta, g1, stack)
        self.zero_grad(set_to_none=True)
        return True

    def second_step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Algorithm 1, lines 6-8: take g2 from ``.grad``, restore theta, mix and step the base optimizer.

        Call after :meth:`first_step` and, when it returned True, the second pass's ``backward()``. Same
        as ``step(scaler=scaler)``; it counts as the optimizer step for LR schedulers and step hooks.

        Args:
            scaler: the ``GradScaler`` given to :meth:`first_step` (call ``scaler.update()`` afterwards).

        Raises:
            RuntimeError: no pending :meth:`first_step` and the configuration needs two passes.
        """
        self.step(scaler=scaler)

    @torch.no_grad()
    def _abort(self) -> None:
        """Undo a pending first step (the second pass raised): restore theta and BN, clear grads."""
        p, self._pending = self._pending, None
        if p is not None and p.two_pass:
            if p.params:
                torch._foreach_copy_(p.params, p.theta)
            if p.frozen_bn is not None:
                p.frozen_bn.close()
        self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _finish(self, scaler: torch.amp.GradScaler | None) -> None:
        p, self._pending = self._pending, None
        assert p is not None
        scaled = p.scaled and scaler is not None
        self.last_full = p.two_pass
        if p.reuse:
            groups = self._reuse_mix(p)                              # .grad holds g1; g from the stored v
            self.last_g2_norm = self.last_cos = self._nan_like(p.norm1)
        elif not p.two_pass:
            groups = self._grads()                                   # .grad holds g1 = g
            if self.normalize_g1:                                    # g = ((1-alpha)/||g1|| + alpha) g1
                for group, _, gs in groups:
                    _mul_(gs, (1.0 - group["alpha"]) * p.inv1 + group["alpha"])
            self.last_g2_norm = self.last_cos = self._nan_like(p.norm1)
        else:
            try:
                if scaled:
                    scaler.unscale_(self.base_optimizer)             # g2 (same groups, its own inf record)
                groups = self._grads()
                if self.perturb_weight_decay:
                    self._add_l2(groups)                             # L2 gradient at theta'
            finally:
                if p.params:
                    torch._foreach_copy_(p.params, p.theta)          # restore theta bit for bit
                if p.frozen_bn is not None:
                    p.frozen_bn.close()
            groups, g1_by_group = self._align(groups, p)
            g2 = [g for _, _, gs in groups for g in gs]
            d = [b for bs in g1_by_group for b in bs]
            norm2 = _norm(g2)
            if d:
                torch._foreach_sub_(d, g2)                           # buffer := g1 - g2
            dnorm = _norm(d)
            n12 = p.norm1 * norm2
            dot = 0.5 * (p.norm1.square() + norm2.square() - dnorm.square())
            self.last_g2_norm = norm2
            self.last_cos = torch.where(n12 > 0, dot / n12, 0.0).clamp(-1.0, 1.0)
            if self.every > 1:
                self._store_direction(groups, g1_by_group, p, dot)
            # Line 7 (Eq. 10), written as g = g2 + b (g1 - g2) + (a + b - 1) g2 with a = alpha and
            # b = 1 - alpha (Algorithm 1) or (1 - alpha)/||g1|| (normalize_g1).
            for (group, _, gs), ds in zip(groups, g1_by_group):
                alpha = group["alpha"]
                if not gs or alpha == 1.0:
                    continue                                         # g = g2 exactly
                if self.normalize_g1:
                    b = (1.0 - alpha) * p.inv1
                    _mul_(gs, alpha + b)
                    _mul_(ds, b)
                    torch._foreach_add_(gs, ds)
                else:
                    torch._foreach_add_(gs, ds, alpha=1.0 - alpha)
        if self.max_grad_norm is not None:
            clip_grad_norm_([q for _, ps, _ in groups for q in ps], self.max_grad_norm, foreach=None)
        if scaled:
            finite = torch.isfinite(p.norm1)
            if p.two_pass:
                finite &= torch.isfinite(self.last_g2_norm)
            if not bool(finite):                                     # one flag read, as GradScaler.step
                self._v_norm1 = None                                 # amortised: the next step is full
                return                                               # skip: theta and state untouched
        self._base_step()

    def _align(self, groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]], p: _Pending
               ) -> tuple[list[tuple[dict[str, Any], list[Tensor], list[Tensor]]], list[list[Tensor]]]:
        """Pair each g2 with its g1 buffer; a missing g1 or g2 (grad None in one pass) counts as zero."""
        flat2 = [q for _, ps, _ in groups for q in ps]
        if len(flat2) == len(p.params) and all(a is b for a, b in zip(flat2, p.params)):
            out, i = [], 0
            for _, ps, _ in groups:
                out.append(p.g1[i:i + len(ps)])
                i += len(ps)
            return groups, out
        g1_of = dict(zip(p.params, p.g1))
        have2 = set(flat2)
        for q in p.params:
            if q not in have2:                                       # g2 is None: g2 = 0
                q.grad = torch.zeros_like(q)
        groups = self._grads()
        out = [[g1_of[q] if q in g1_of else torch.zeros_like(q) for q in ps] for _, ps, _ in groups]
        return groups, out

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *,
             scaler: torch.amp.GradScaler | None = None) -> Any:
        """One GNP update (Algorithm 1, lines 4-8); returns the loss of the first pass.

        Args:
            closure: runs the forward pass on the batch, calls ``backward()`` and returns the loss (with
                ``exact=True``: returns the loss without calling ``backward()``). None: finish a pending
                :meth:`first_step` (same as :meth:`second_step`), or, for a one-pass configuration
                (alpha == 0 or r == 0 everywhere), step the base optimizer on the ``.grad`` present.
            scaler: an enabled ``torch.amp.GradScaler`` whose ``scale(loss)`` the closure backpropagates;
                a step with inf/NaN in g1 or g2 is skipped (call ``scaler.update()`` afterwards).

        Returns:
            Whatever the closure returned on the first pass (None without a closure).

        Raises:
            RuntimeError: no closure and no pending first step in a two-pass configuration; a closure
                given while a first step is pending; with ``exact=True``, a closure that calls
                ``backward()``.
        """
        if closure is None:
            if self._pending is None:
                if self.exact or self._two_pass():
                    raise RuntimeError("GNP.step() needs a closure (two forward-backward passes), or call "
                                       "first_step() after the first backward and second_step() after the second")
                self.first_step(scaler)
            self._finish(scaler)
            return None
        if self._pending is not None:
            raise RuntimeError("step(closure) called while a first_step() is pending; call second_step()")
        if self.exact:
            return self._exact_step(closure)
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()                                         # line 4: g1 at theta
        if self.first_step(scaler):                                  # line 5
            try:
                with torch.enable_grad():
                    closure()                                        # line 6: g2 at theta'
            except BaseException:
                self._abort()
                raise
        self._finish(scaler)                                         # lines 7-8
        return loss

    def _exact_step(self, closure: Callable[[], Any]) -> Any:
        """Eq. 6: g = g1 + lambda * H g1 / ||g1||, lambda = alpha * r per group, by double backward."""
        self.zero_grad(set_to_none=True)
        params = [q for g in self.param_groups for q in g["params"] if q.requires_grad]
        owner = [g for g in self.param_groups for q in g["params"] if q.requires_grad]
        need_h = any(g["alpha"] * g["r"] != 0.0 for g in self.param_groups)
        with torch.enable_grad():
            loss = closure()
            if any(q.grad is not None for q in params):
                raise RuntimeError("exact=True: the closure must return the loss without calling backward(); "
                                   "GNP differentiates it twice itself")
            grads = torch.autograd.grad(loss, params, create_graph=need_h, allow_unused=True)
            grads = [torch.zeros_like(q) if g is None else g for q, g in zip(params, grads)]
            sq = torch.stack([g.square().sum() for g in grads]).sum() if grads else torch.zeros(())
            hg = None
            if need_h and sq.requires_grad:                          # d||g||^2/dtheta = 2 H g
                hg = torch.autograd.grad(sq, params, allow_unused=True)
        norm1 = sq.detach().sqrt()
        norm1 = norm1.to(torch.promote_types(norm1.dtype, torch.float32))
        inv1 = torch.where(norm1 > 0, norm1.reciprocal(), 0.0)
        with torch.no_grad():
            for q, g, group, h in zip(params, grads, owner, hg if hg is not None else [None] * len(params)):
                final = g.detach().clone()
                lam = group["alpha"] * group["r"]
                if h is not None and lam != 0.0:
                    final.add_(h * (0.5 * lam * inv1).to(h.dtype))
                q.grad = final
            self.last_grad_norm = norm1
            self.last_g2_norm = self.last_cos = self._nan_like(norm1)
            if self.max_grad_norm is not None:
                clip_grad_norm_(params, self.max_grad_norm, foreach=None)
            self._base_step()
        return loss
