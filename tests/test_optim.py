"""Tests of gnp_study.optim.GNP against independent computations, and of the known SAM-family pitfalls.

The reference gradients below are computed with ``torch.func.functional_call`` and
``torch.autograd.grad`` on copies of the parameters, one tensor at a time, without GNP's code.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gnp_study.optim import GNP, frozen_bn_stats

torch.set_num_threads(1)
DT = torch.float64


# ------------------------------------------------------------------------------------------- helpers
def make_mlp(seed: int = 0, dtype: torch.dtype = DT, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).to(dtype)


def make_data(seed: int = 1, n: int = 32, dtype: torch.dtype = DT) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def make_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, calls: list | None = None):
    def closure():
        if calls is not None:
            calls.append(1)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def grad_at(model: nn.Module, params: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
    """Gradient of the CE loss of ``model`` evaluated at ``params`` (missing grads -> zeros)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
    gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(leaves.items(), gs)}


def reference_gradient(model, x, y, alpha, r, *, normalize=False, wd=0.0) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 4-7, written out per tensor. ``wd`` > 0 puts an L2 term in the loss."""
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    g1 = grad_at(copy.deepcopy(model), theta, x, y)
    g1 = {k: g + wd * theta[k] for k, g in g1.items()}
    n1 = torch.sqrt(sum((g * g).sum() for g in g1.values()))
    e = {k: (r * g / n1 if n1 > 0 else torch.zeros_like(g)) for k, g in g1.items()}
    theta2 = {k: theta[k] + e[k] for k in theta}
    g2 = grad_at(copy.deepcopy(model), theta2, x, y)
    g2 = {k: g + wd * theta2[k] for k, g in g2.items()}
    c1 = (1 - alpha) / n1 if normalize else (1 - alpha)
    return {k: c1 * g1[k] + alpha * g2[k] for k in theta}


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_params_close(a: dict, b: dict, **tol) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m: f"{k}: {m}")


def one_sgd_update(model, grads: dict, lr: float) -> dict:
    return {k: v.detach() - lr * grads[k] for k, v in model.named_parameters()}


# ----------------------------------------------------------------------------- independent numerics
@pytest.mark.parametrize("alpha", [0.0, 0.8, 1.0, -0.5, 1.5])
@pytest.mark.parametrize("normalize", [False, True])
def test_quadratic_closed_form(alpha, normalize):
    """L = 0.5 t^T A t + b^T t: one step equals (1-a)(At+b)[/|At+b|] + a(A(t+ru)+b) (Algorithm 1)."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=g, dtype=DT)
    A = m @ m.T + 5 * torch.eye(5, dtype=DT)
    b = torch.randn(5, generator=g, dtype=DT)
    t0 = torch.randn(5, generator=g, dtype=DT)
    theta = nn.Parameter(t0.clone())
    r, lr = 0.1, 1.0
    opt = GNP([theta], torch.optim.SGD, alpha=alpha, r=r, normalize_g1=normalize, lr=lr)

    def closure():
        loss = 0.5 * theta @ A @ theta + b @ theta
        loss.backward()
        return loss

    opt.step(closure)
    grad = A @ t0 + b
    u = grad / grad.norm()
    first = grad / grad.norm() if normalize else grad
    expected = (1 - alpha) * first + alpha * (A @ (t0 + r * u) + b)
    torch.testing.assert_close(theta.detach(), t0 - lr * expected, rtol=1e-12, atol=1e-12)


def test_quadratic_exact_mode_matches_eq6():
    """exact=True on the quadratic: g + alpha*r*A g/|g| (Eq. 6 with H = A, lambda = alpha*r)."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(4, 4, generator=g, dtype=DT)
    A = m @ m.T + torch.eye(4, dtype=DT)
    b = torch.randn(4, generator=g, dtype=DT)
    t0 = torch.randn(4, generator=g, dtype=DT)
    theta = nn.Parameter(t0.clone())
    alpha, r = 0.7, 0.2
    opt = GNP([theta], torch.optim.SGD, alpha=alpha, r=r, exact=True, lr=1.0)
    opt.step(lambda: 0.5 * theta @ A @ theta + b @ theta)
    grad = A @ t0 + b
    torch.testing.assert_close(theta.detach(), t0 - (grad + alpha * r * A @ grad / grad.norm()),
                               rtol=1e-12, atol=1e-12)


def _update_gradient(model, x, y, **gnp_kwargs) -> dict:
    """Final gradient of one GNP step, read back from an SGD(lr=1) update on a copy of the model."""
    mdl = copy.deepcopy(model)
    before = params_of(mdl)
    exact = gnp_kwargs.get("exact", False)
    opt = GNP(mdl.parameters(), torch.optim.SGD, lr=1.0, **gnp_kwargs)
    if exact:
        opt.step(lambda: F.cross_entropy(mdl(x), y))
    else:
        opt.step(make_closure(mdl, x, y))
    return {k: before[k] - v.detach() for k, v in mdl.named_parameters()}


def test_exact_mode_equals_gradient_of_eq1():
    """exact=True equals autograd's gradient of L_S + lambda * ||grad L_S|| (Eq. 1/5), computed directly."""
    model = make_mlp(seed=2)
    x, y = make_data(seed=5)
    alpha, r = 0.8, 0.05
    g_exact = _update_gradient(model, x, y, alpha=alpha, r=r, exact=True)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
    gs = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    penalised = loss + alpha * r * torch.sqrt(sum((g * g).sum() for g in gs))
    ref = dict(zip(leaves, torch.autograd.grad(penalised, list(leaves.values()))))
    assert_params_close(g_exact, ref, rtol=1e-10, atol=1e-12)


def test_first_order_converges_to_exact_eq1_as_r_shrinks():
    """|g_GNP(r) - grad Eq.1| = O(r^2): it must shrink at least linearly (here: >= 3x per halving of r)."""
    model = make_mlp(seed=4)
    x, y = make_data(seed=6)
    alpha = 0.8
    diffs = []
    for r in [0.2, 0.1, 0.05, 0.025]:
        fo = _update_gradient(model, x, y, alpha=alpha, r=r)
        ex = _update_gradient(model, x, y, alpha=alpha, r=r, exact=True)
        diffs.append(math.sqrt(sum(float((fo[k] - ex[k]).pow(2).sum()) for k in fo)))
    ratios = [a / b for a, b in zip(diffs, diffs[1:])]
    assert diffs[0] > 1e-8, diffs                 # the two computations are not trivially identical
    assert all(q >= 3.0 for q in ratios), (diffs, ratios)


@pytest.mark.parametrize("alpha,normalize,wd", [(0.8, False, 0.0), (-0.3, False, 0.0), (1.7, True, 0.0),
                                                (0.8, True, 0.0), (0.6, False, 1e-2), (0.6, True, 1e-2)])
def test_mlp_step_matches_reference(alpha, normalize, wd):
    """One step on an MLP equals the per-tensor reference of Algorithm 1 (variants included)."""
    model = make_mlp()
    x, y = make_data()
    got = _update_gradient(model, x, y, alpha=alpha, r=0.05, normalize_g1=normalize,
                           perturb_weight_decay=wd > 0, weight_decay=wd)
    ref = reference_gradient(model, x, y, alpha, 0.05, normalize=normalize, wd=wd)
    assert_params_close(got, ref, rtol=1e-10, atol=1e-12)


def test_alpha_one_equals_independent_sam():
    """alpha = 1 equals SAM (Foret et al.) computed independently, over 3 SGD-momentum steps."""
    model = make_mlp(seed=7)
    ref_model = copy.deepcopy(model)
    x, y = make_data(seed=8)
    rho, lr, mom, wd = 0.05, 0.1, 0.9, 5e-4
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=1.0, r=rho, lr=lr, momentum=mom, weight_decay=wd)
    theta = params_of(ref_model)
    buf = {k: None for k in theta}
    for _ in range(3):
        opt.step(make_closure(model, x, y))
        g = grad_at(ref_model, theta, x, y)
        n = torch.sqrt(sum((v * v).sum() for v in g.values()))
        g2 = grad_at(ref_model, {k: theta[k] + rho * g[k] / n for k in theta}, x, y)
        for k in theta:
            d = g2[k] + wd * theta[k]
            buf[k] = d.clone() if buf[k] is None else mom * buf[k] + d
            theta[k] = theta[k] - lr * buf[k]
    assert_params_close(params_of(model), theta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("base,kw", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
])
@pytest.mark.parametrize("alpha,r", [(0.0, 0.05), (0.8, 0.0)])
def test_one_pass_equals_base_optimizer_bit_for_bit(base, kw, alpha, r):
    """alpha = 0 or r = 0: one closure call per step and parameters identical to the base optimizer's."""
    model = make_mlp(dtype=torch.float32, bn=True)
    ref = copy.deepcopy(model)
    x, y = make_data(dtype=torch.float32)
    calls: list = []
    opt = GNP(model.parameters(), base, alpha=alpha, r=r, model=model, **kw)
    ref_opt = base(ref.parameters(), **kw)
    for _ in range(4):
        opt.step(make_closure(model, x, y, calls))
        ref_opt.zero_grad()
        make_closure(ref, x, y)()
        ref_opt.step()
    assert len(calls) == 4
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.isnan(opt.last_g2_norm) and torch.isnan(opt.last_cos)


def test_per_group_alpha_r_use_global_norm():
    """Groups with their own alpha and r; the perturbation divides by the norm over all groups (Eq. 9)."""
    model = make_mlp(seed=9)
    x, y = make_data(seed=9)
    (a1, r1), (a2, r2) = (0.5, 0.1), (1.3, 0.02)
    mdl = copy.deepcopy(model)
    opt = GNP([{"params": mdl[0].parameters(), "alpha": a1, "r": r1},
               {"params": mdl[2].parameters(), "alpha": a2, "r": r2}], torch.optim.SGD, lr=1.0)
    opt.step(make_closure(mdl, x, y))
    theta = params_of(model)
    g1 = grad_at(model, theta, x, y)
    n1 = torch.sqrt(sum((g * g).sum() for g in g1.values()))
    ar = {k: (a1, r1) if k.startswith("0.") else (a2, r2) for k in theta}
    g2 = grad_at(model, {k: theta[k] + ar[k][1] * g1[k] / n1 for k in theta}, x, y)
    expected = {k: theta[k] - ((1 - ar[k][0]) * g1[k] + ar[k][0] * g2[k]) for k in theta}
    assert_params_close(params_of(mdl), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(alpha=float("nan")), dict(alpha=float("inf")), dict(r=-0.01),
                                dict(r=float("nan")), dict(r=float("inf")), dict(alpha="x"),
                                dict(max_grad_norm=-1.0), dict(exact=True, normalize_g1=True)])
def test_invalid_arguments_raise_value_error(kw):
    with pytest.raises(ValueError):
        GNP(make_mlp().parameters(), torch.optim.SGD, lr=0.1, **kw)


def test_invalid_group_values_raise_and_valid_extremes_pass():
    m = make_mlp()
    with pytest.raises(ValueError, match="r must be"):
        GNP([{"params": m[0].parameters(), "r": -1.0}], lr=0.1)
    opt = GNP(m[0].parameters(), lr=0.1, alpha=-0.5)          # B_a / B_b values are allowed
    with pytest.raises(ValueError, match="alpha must be"):
        opt.add_param_group({"params": m[2].parameters(), "alpha": float("inf")})
    opt.add_param_group({"params": m[2].parameters(), "alpha": 2.0})
    assert [g["alpha"] for g in opt.param_groups] == [-0.5, 2.0]
    assert opt.param_groups is opt.base_optimizer.param_groups and len(opt.base_optimizer.param_groups) == 2
    with pytest.raises(TypeError):
        GNP(m.parameters(), torch.optim.SGD(m.parameters(), lr=0.1))


# ----------------------------------------------------------------------------------------- logging
def test_logging_tensors_match_independent_values():
    model = make_mlp(seed=11)
    x, y = make_data(seed=11)
    theta = params_of(model)
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.1, lr=0.1)
    opt.step(make_closure(model, x, y))
    g1 = torch.cat([g.reshape(-1) for g in grad_at(model, theta, x, y).values()])
    g2 = torch.cat([g.reshape(-1) for g in grad_at(
        model, {k: theta[k] + 0.1 * g / g1.norm() for (k, g) in grad_at(model, theta, x, y).items()},
        x, y).values()])
    for t in (opt.last_grad_norm, opt.last_g2_norm, opt.last_cos):
        assert isinstance(t, torch.Tensor) and t.dim() == 0 and not t.requires_grad
    torch.testing.assert_close(opt.last_grad_norm, g1.norm(), rtol=1e-10, atol=0)
    torch.testing.assert_close(opt.last_g2_norm, g2.norm(), rtol=1e-10, atol=0)
    torch.testing.assert_close(opt.last_cos, g1 @ g2 / (g1.norm() * g2.norm()), rtol=1e-7, atol=1e-9)


def test_step_forces_no_host_sync(monkeypatch):
    """No .item()/bool()/float() on a tensor inside step (all variants, BN model, scheduler attached)."""
    model = make_mlp(dtype=torch.float32, bn=True)
    x, y = make_data(dtype=torch.float32)
    opt = GNP([{"params": model[0].parameters(), "alpha": 0.5},
               {"params": list(model[1].parameters()) + list(model[3].parameters()), "r": 0.1}],
              torch.optim.SGD, alpha=0.8, r=0.05, model=model, normalize_g1=True, perturb_weight_decay=True,
              max_grad_norm=0.5, lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.9)
    closure = make_closure(model, x, y)
    opt.step(closure)                 # lazily allocated state outside the check

    def no_sync(*a, **k):
        raise AssertionError("host sync inside GNP.step")
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    for _ in range(2):
        opt.step(closure)
    monkeypatch.undo()
    sched.step()
    assert torch.isfinite(opt.last_grad_norm)


# ---------------------------------------------------------------------- pitfall 1: batch norm stats
def _bn_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    bn = {"momentum": nn.BatchNorm1d(16, momentum=0.1), "cumulative": nn.BatchNorm1d(16, momentum=None),
          "sync": nn.SyncBatchNorm(16)}[kind]
    return nn.Sequential(nn.Linear(6, 16), bn, nn.Tanh(), nn.Linear(16, 3)).to(DT)


@pytest.mark.parametrize("kind", ["momentum", "cumulative", "sync"])
@pytest.mark.parametrize("form", ["closure", "explicit", "context_manager"])
def test_bn_running_stats_updated_by_first_pass_only(kind, form):
    model = _bn_model(kind)
    x, y = make_data()
    ref = copy.deepcopy(model)
    expected_grad = reference_gradient(model, x, y, 0.8, 0.05)   # BN uses batch stats in both passes
    theta = params_of(model)
    ref(x)                                                       # the one pass that may touch the stats
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=1.0,
              model=None if form == "context_manager" else model)
    closure = make_closure(model, x, y)
    if form == "closure":
        opt.step(closure)
    else:
        closure()
        assert opt.first_step()
        if form == "context_manager":
            with frozen_bn_stats(model) as frozen:
                assert len(frozen) == 1
                closure()
        else:
            closure()
        opt.second_step()
    bn, ref_bn = model[1], ref[1]
    assert bn.track_running_stats
    assert int(bn.num_batches_tracked) == 1
    assert torch.equal(bn.running_mean, ref_bn.running_mean) and torch.equal(bn.running_var, ref_bn.running_var)
    assert_params_close({k: theta[k] - v.detach() for k, v in model.named_parameters()}, expected_grad,
                        rtol=1e-10, atol=1e-12)


def test_bn_stats_without_model_are_updated_twice():
    """Control: without ``model`` the second pass does touch the statistics (the check above can fail)."""
    model = _bn_model("momentum")
    x, y = make_data()
    GNP(model.parameters(), alpha=0.8, r=0.05, lr=0.1).step(make_closure(model, x, y))
    assert int(model[1].num_batches_tracked) == 2


# -------------------------------------------------------------------- pitfall 2 and 3: zero norm, None
def test_zero_gradient_norm_no_perturbation_no_nan():
    model = make_mlp()
    x, _ = make_data()
    before = params_of(model)
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.1, momentum=0.9)

    def zero_loss():
        loss = (model(x) * 0.0).sum()
        loss.backward()
        return loss
    for _ in range(2):
        opt.step(zero_loss)
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), before[k])
    for t in (opt.last_grad_norm, opt.last_g2_norm, opt.last_cos):
        assert float(t) == 0.0


def test_frozen_model_steps_without_error():
    model = make_mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = make_data()
    before = params_of(model)
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.1, model=model)
    out = opt.step(lambda: model(x).sum())
    assert torch.isfinite(out) and float(opt.last_grad_norm) == 0.0
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


class _Branches(nn.Module):
    """Pass-dependent graph: ``a`` always used, ``b`` only in the chosen pass, ``c`` never."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c = nn.Linear(6, 3).to(DT), nn.Linear(6, 3).to(DT), nn.Linear(6, 3).to(DT)
        self.use_b = True

    def forward(self, x):
        out = self.a(torch.tanh(x))
        return out + self.b(x) ** 2 if self.use_b else out


@pytest.mark.parametrize("b_in_pass", [1, 2])
def test_none_gradient_in_one_pass_counts_as_zero(b_in_pass):
    model = _Branches()
    x, y = make_data(seed=4)
    alpha, r = 0.6, 0.1
    theta = params_of(model)
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=alpha, r=r, lr=1.0, momentum=0.5)
    calls: list = []

    def closure():
        model.use_b = (len(calls) + 1) == b_in_pass
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    # Independent: per-pass gradients with the branch switched as in the closure.
    model.use_b = b_in_pass == 1
    g1 = grad_at(model, theta, x, y)
    n1 = torch.sqrt(sum((g * g).sum() for g in g1.values()))
    model.use_b = b_in_pass == 2
    g2 = grad_at(model, {k: theta[k] + r * g1[k] / n1 for k in theta}, x, y)
    for k, v in model.named_parameters():
        if k.startswith("c."):
            assert v.grad is None and torch.equal(v.detach(), theta[k]) and v not in opt.state
        else:
            torch.testing.assert_close(v.detach(), theta[k] - ((1 - alpha) * g1[k] + alpha * g2[k]),
                                       rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- pitfall 4: state dict
@pytest.mark.parametrize("base,kw", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
])
def test_state_dict_resume_is_bit_for_bit(base, kw):
    x, y = make_data(dtype=torch.float32)

    def build():
        m = make_mlp(dtype=torch.float32, bn=True)
        o = GNP(m.parameters(), base, alpha=0.7, r=0.05, model=m, normalize_g1=True, **kw)
        s = torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)
        return m, o, s

    def run(m, o, s, n):
        for _ in range(n):
            o.step(make_closure(m, x, y))
            s.step()

    m_full, o_full, s_full = build()
    run(m_full, o_full, s_full, 6)
    m1, o1, s1 = build()
    run(m1, o1, s1, 3)
    blob = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "sched": s1.state_dict()}, blob)
    blob.seek(0)
    saved = torch.load(blob)
    assert saved["opt"]["state"], "base optimizer state (momentum / Adam moments) must be saved"
    m2, o2, s2 = build()
    m2.load_state_dict(saved["model"])
    o2.load_state_dict(saved["opt"])
    s2.load_state_dict(saved["sched"])
    run(m2, o2, s2, 3)
    for (k, a), b in zip(m_full.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_state_dict_records_settings_and_group_values():
    m = make_mlp()
    opt = GNP([{"params": m[0].parameters(), "alpha": 0.3, "r": 0.2}, {"params": m[2].parameters()}],
              torch.optim.SGD, alpha=0.9, r=0.01, normalize_g1=True, perturb_weight_decay=True,
              max_grad_norm=5.0, lr=0.1, weight_decay=1e-4)
    sd = opt.state_dict()
    assert sd["gnp"]["normalize_g1"] and sd["gnp"]["perturb_weight_decay"] and sd["gnp"]["max_grad_norm"] == 5.0
    other = GNP([{"params": m[0].parameters()}, {"params": m[2].parameters()}], torch.optim.SGD, lr=0.5)
    other.load_state_dict(copy.deepcopy(sd))
    assert other.normalize_g1 and other.perturb_weight_decay and other.max_grad_norm == 5.0 and not other.exact
    assert [(g["alpha"], g["r"], g["lr"]) for g in other.param_groups] == [(0.3, 0.2, 0.1), (0.9, 0.01, 0.1)]
    assert other.param_groups is other.base_optimizer.param_groups and other.state is other.base_optimizer.state


def test_state_dict_refused_mid_step_and_load_undoes_pending_step():
    model = make_mlp()
    x, y = make_data()
    opt = GNP(model.parameters(), lr=0.1)
    saved, before = opt.state_dict(), params_of(model)
    make_closure(model, x, y)()
    opt.first_step()
    with pytest.raises(RuntimeError):
        opt.state_dict()
    opt.load_state_dict(saved)                 # abandons the half-done step: theta is put back
    assert all(torch.equal(v.detach(), before[k]) for k, v in model.named_parameters())
    make_closure(model, x, y)()
    opt.first_step()
    make_closure(model, x, y)()
    opt.second_step()
    opt.state_dict()


# ------------------------------------------------------------------------ pitfall 5: LR schedulers
@pytest.mark.parametrize("form", ["closure", "explicit"])
def test_lr_scheduler_drives_base_lr_without_warning(form):
    model = make_mlp()
    x, y = make_data()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.5, r=0.05, lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    closure = make_closure(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(3):
            lr = 0.4 * 0.5 ** i
            assert opt.base_optimizer.param_groups[0]["lr"] == lr
            expected = one_sgd_update(model, reference_gradient(model, x, y, 0.5, 0.05), lr)
            if form == "closure":
                opt.step(closure)
            else:
                opt.zero_grad()                # the explicit form leaves .grad to the caller, as usual
                closure()
                opt.first_step()
                closure()
                opt.second_step()
            sched.step()
            assert_params_close(params_of(model), expected, rtol=1e-10, atol=1e-12)


def test_one_cycle_momentum_and_reload_keep_groups_shared():
    model = make_mlp()
    x, y = make_data()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.5, r=0.05, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(make_closure(model, x, y))
        sched.step()
        opt.load_state_dict(opt.state_dict())
        opt.step(make_closure(model, x, y))
        sched.step()
    base_group = opt.base_optimizer.param_groups[0]
    assert base_group["lr"] == sched.get_last_lr()[0] and base_group["momentum"] < 0.95
    assert opt.param_groups[0] is base_group


# --------------------------------------------------------------------------- pitfall 6: precision
def test_bf16_autocast_runs_unchanged():
    model = make_mlp(dtype=torch.float32, bn=True)
    fp32 = copy.deepcopy(model)
    x, y = make_data(dtype=torch.float32)

    def closure_for(m, amp):
        def closure():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(m(x).float(), y)
            loss.backward()
            return loss
        return closure
    before = params_of(model)
    o = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=model, lr=1.0)
    o.step(closure_for(model, True))
    GNP(fp32.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=fp32, lr=1.0).step(closure_for(fp32, False))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(o.last_grad_norm) and torch.isfinite(o.last_g2_norm)
    upd = torch.cat([(before[k] - v.detach()).reshape(-1) for k, v in model.named_parameters()])
    ref = torch.cat([(before[k] - v.detach()).reshape(-1) for k, v in fp32.named_parameters()])
    assert (upd - ref).norm() <= 0.05 * ref.norm()                   # bf16 rounding only
    assert int(model[1].num_batches_tracked) == 1


def _fp16_setup():
    model = make_mlp(dtype=torch.float32)
    x, y = make_data(dtype=torch.float32)
    return model, x, y


def _fp16_closure(model, x, y, scaler, overflow_on_call, calls):
    def closure():
        calls.append(1)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x).float(), y)
        if len(calls) == overflow_on_call:
            loss = loss * torch.tensor(float("inf"))       # forced overflow in this pass
        scaler.scale(loss).backward()
        return loss
    return closure


@pytest.mark.parametrize("overflow_pass", [1, 2])
@pytest.mark.parametrize("form", ["closure", "explicit"])
def test_fp16_grad_scaler_overflow_skips_whole_step(overflow_pass, form):
    model, x, y = _fp16_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=model, lr=0.1, momentum=0.9)
    before = params_of(model)
    calls: list = []
    closure = _fp16_closure(model, x, y, scaler, overflow_pass, calls)
    if form == "closure":
        opt.step(closure, scaler=scaler)
    else:
        closure()
        assert opt.first_step(scaler)
        closure()
        opt.second_step(scaler)
    scaler.update()
    assert len(calls) == 2
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), before[k]), k
    assert not any(opt.state[p] for p in model.parameters()), "skipped step must not create momentum"
    assert scaler.get_scale() == 2.0 ** 9


def test_fp16_grad_scaler_normal_step_uses_unscaled_gradients():
    model, x, y = _fp16_setup()
    plain = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.1)
    calls: list = []
    closure = _fp16_closure(model, x, y, scaler, 0, calls)
    closure()
    opt.first_step(scaler)
    closure()
    opt.second_step(scaler)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 12
    unscaled = torch.amp.GradScaler("cpu", enabled=False)
    GNP(plain.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.1).step(
        _fp16_closure(plain, x, y, unscaled, 0, []))
    assert_params_close(params_of(model), params_of(plain), rtol=1e-5, atol=1e-7)


def test_nonfinite_gradient_without_scaler_does_not_crash():
    model = make_mlp()
    x, y = make_data()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.1)

    def closure():
        loss = F.cross_entropy(model(x), y) * torch.tensor(float("inf"), dtype=DT)
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert not torch.isfinite(loss) and not torch.isfinite(opt.last_grad_norm)


# ---------------------------------------------------------------------- pitfall 7: accumulation
def test_gradient_accumulation_equals_large_batch():
    model = make_mlp(seed=12)
    acc = copy.deepcopy(model)
    x, y = make_data(seed=12, n=32)
    GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.5, momentum=0.9).step(
        make_closure(model, x, y))
    opt = GNP(acc.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, lr=0.5, momentum=0.9)

    def accumulate():
        total = 0.0
        for xb, yb in zip(x.chunk(4), y.chunk(4)):
            loss = F.cross_entropy(acc(xb), yb) / 4
            loss.backward()
            total = total + loss.detach()
        return total
    opt.step(accumulate)
    assert_params_close(params_of(acc), params_of(model), rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------- pitfall 9: clipping
def test_clipping_applies_to_final_gradient():
    model = make_mlp(seed=13)
    x, y = make_data(seed=13)
    max_norm = 0.05
    got = _update_gradient(model, x, y, alpha=0.8, r=0.05, max_grad_norm=max_norm)
    g = reference_gradient(model, x, y, 0.8, 0.05)
    total = torch.sqrt(sum((v * v).sum() for v in g.values()))
    assert total > max_norm
    clipped = {k: v * min(1.0, max_norm / (float(total) + 1e-6)) for k, v in g.items()}
    assert_params_close(got, clipped, rtol=1e-10, atol=1e-12)
    # Clipping g1 instead leaves the perturbation alone but changes the mix: a different update.
    theta = params_of(model)
    g1 = grad_at(model, theta, x, y)
    n1 = torch.sqrt(sum((v * v).sum() for v in g1.values()))
    g2 = grad_at(model, {k: theta[k] + 0.05 * g1[k] / n1 for k in theta}, x, y)
    wrong = {k: 0.2 * g1[k] * min(1.0, max_norm / float(n1)) + 0.8 * g2[k] for k in theta}
    assert max(float((wrong[k] - got[k]).abs().max()) for k in got) > 1e-4


# ------------------------------------------------------------------------------------- contracts
def test_closure_called_twice_and_returns_first_loss():
    model = make_mlp()
    x, y = make_data()
    calls: list = []
    closure = make_closure(model, x, y, calls)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y)
    opt = GNP(model.parameters(), lr=0.1)
    loss = opt.step(closure)
    assert len(calls) == 2 and torch.equal(loss.detach(), expected)


def test_step_without_closure_rules():
    model = make_mlp()
    x, y = make_data()
    with pytest.raises(RuntimeError, match="closure"):
        GNP(model.parameters(), lr=0.1).step()
    ref = copy.deepcopy(model)
    opt = GNP(model.parameters(), alpha=0.0, lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for m, o in ((model, opt), (ref, ref_opt)):
        make_closure(m, x, y)()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    exact = GNP(model.parameters(), exact=True, lr=0.1)
    with pytest.raises(RuntimeError):
        exact.first_step()
    with pytest.raises(RuntimeError, match="backward"):
        exact.step(make_closure(model, x, y))


def test_failing_second_pass_restores_theta_and_bn():
    model = make_mlp(bn=True)
    x, y = make_data()
    before = params_of(model)
    opt = GNP(model.parameters(), lr=0.1, model=model)
    calls: list = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return make_closure(model, x, y)()
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert all(torch.equal(v.detach(), before[k]) for k, v in model.named_parameters())
    assert model[1].track_running_stats
    opt.step(make_closure(model, x, y))        # usable afterwards


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_synchronisation():
    model = make_mlp(dtype=torch.float32, bn=True).cuda()
    x, y = (t.cuda() for t in make_data(dtype=torch.float32))
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=model, max_grad_norm=1.0,
              lr=0.1, momentum=0.9)
    closure = make_closure(model, x, y)
    opt.step(closure)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step(closure)
    finally:
        torch.cuda.set_sync_debug_mode("default")
