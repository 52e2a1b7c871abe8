"""The amortised second pass (GNP(..., every=k)): k = 1 is Algorithm 1 bit for bit; between full steps the
update uses exactly the stored direction, checked against independent computations (a quadratic with
analytic gradients, and a small network whose gradients are taken by hand with torch.autograd.grad); a
state_dict round trip mid-cycle continues the same trajectory; bad k is refused; the GradScaler explicit
form matches the closure form."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnp_study.optim import GNP

ALPHA, R, LR = 0.7, 0.1, 0.05


def _quadratic(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + torch.eye(n, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


def _reference_quadratic(a, theta, steps, every, reuse, alpha=ALPHA, r=R, normalize=False):
    """Plain-tensor amortised GNP with SGD (no momentum) on L = theta' A theta / 2 (gradient A theta)."""
    theta = theta.clone()
    v = n_full = None
    since = 0
    for step in range(steps):
        g1 = a @ theta
        n1 = g1.norm()
        b = (1 - alpha) / n1 if normalize else (1 - alpha)
        if v is None or since >= every - 1:
            g2 = a @ (theta + r * g1 / n1)
            g = b * g1 + alpha * g2
            v = g2 - g1
            if reuse == "orthogonal":
                v = v - (v @ g1) / (g1 @ g1) * g1
            n_full, since = n1, 0
        else:
            g = b * g1 + alpha * (g1 + (n1 / n_full) * v)
            since += 1
        theta = theta - LR * g
    return theta


@pytest.mark.parametrize("reuse", ["orthogonal", "difference"])
@pytest.mark.parametrize("normalize", [False, True])
def test_steps_between_full_steps_use_the_stored_direction_on_a_quadratic(reuse, normalize):
    a, theta0 = _quadratic()
    theta = nn.Parameter(theta0.clone())
    opt = GNP([theta], torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, every=3, reuse=reuse, normalize_g1=normalize)
    for _ in range(8):
        def closure():
            loss = 0.5 * theta @ a @ theta
            loss.backward()
            return loss
        opt.step(closure)
    want = _reference_quadratic(a, theta0, 8, 3, reuse, normalize=normalize)
    torch.testing.assert_close(theta.detach(), want, rtol=1e-12, atol=1e-12)
    # and it is not full GNP: the reused steps changed the trajectory
    full = _reference_quadratic(a, theta0, 8, 1, reuse, normalize=normalize)
    assert (theta.detach() - full).abs().max() > 1e-6


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batches(n=7):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("reuse", ["orthogonal", "difference"])
def test_a_small_network_follows_the_hand_computed_amortised_update(reuse):
    model, ref = _net(), _net()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, every=3, reuse=reuse)
    params = list(ref.parameters())
    v = n_full = None
    since = 0
    for x, y in _batches():
        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        # by hand: flat gradients with torch.autograd.grad, the update written out
        g1 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(ref(x), y), params)])
        n1 = g1.norm()
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in params])
        if v is None or since >= 2:
            moved = flat + R * g1 / n1
            chunks, i = [], 0
            for p in params:
                chunks.append(moved[i:i + p.numel()].view_as(p).clone().requires_grad_(True))
                i += p.numel()
            out = torch.func.functional_call(ref, dict(zip([n for n, _ in ref.named_parameters()], chunks)), (x,))
            g2 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(out, y), chunks)])
            g = (1 - ALPHA) * g1 + ALPHA * g2
            v = g2 - g1
            if reuse == "orthogonal":
                v = v - (v @ g1) / (g1 @ g1) * g1
            n_full, since = n1, 0
        else:
            g = g1 + ALPHA * (n1 / n_full) * v
            since += 1
        with torch.no_grad():
            i = 0
            for p in params:
                p -= LR * g[i:i + p.numel()].view_as(p)
                i += p.numel()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-3}),
                                     (torch.optim.AdamW, {"weight_decay": 1e-2})])
def test_every_1_is_algorithm_1_bit_for_bit(base, kw):
    runs = []
    for extra in ({}, {"every": 1}, {"every": 1, "reuse": "difference"}):
        model = _net()
        opt = GNP(model.parameters(), base, alpha=ALPHA, r=R, lr=LR, **kw, **extra)
        for x, y in _batches():
            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
            assert opt.last_full
        runs.append([p.detach().clone() for p in model.parameters()])
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_last_full_marks_the_full_steps():
    model = _net()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, every=3)
    seen, calls = [], []
    for x, y in _batches():
        def closure():
            calls.append(1)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        seen.append(opt.last_full)
        if not opt.last_full:
            assert torch.isnan(opt.last_g2_norm) and torch.isnan(opt.last_cos)
    assert seen == [True, False, False, True, False, False, True]
    assert len(calls) == 7 + 3  # one pass per step, a second on the 3 full steps
    plain = _net()
    one_pass = GNP(plain.parameters(), torch.optim.SGD, alpha=0.0, r=R, lr=LR, every=3)
    x, y = _batches(1)[0]
    one_pass.step(lambda: F.cross_entropy(plain(x), y).backward())
    assert one_pass.last_full is False


@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.AdamW, {})])
def test_state_dict_round_trip_mid_cycle_continues_the_same_trajectory(base, kw):
    batches = _batches(9)
    model = _net()
    opt = GNP(model.parameters(), base, alpha=ALPHA, r=R, lr=LR, every=4, **kw)

    def run(m, o, bs):
        for x, y in bs:
            def closure():
                loss = F.cross_entropy(m(x), y)
                loss.backward()
                return loss
            o.step(closure)

    run(model, opt, batches[:5])            # full, reuse x3, full: the next steps reuse the stored direction
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    run(model, opt, batches[5:])
    fresh = _net()
    fresh_opt = GNP(fresh.parameters(), base, alpha=ALPHA, r=R, lr=LR, **kw)  # every comes from the state
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["opt"])
    assert fresh_opt.every == 4
    run(fresh, fresh_opt, batches[5:])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_a_state_dict_of_format_1_still_loads():
    model = _net()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR)
    sd = opt.state_dict()
    sd["gnp"] = {k: sd["gnp"][k] for k in ("normalize_g1", "perturb_weight_decay", "max_grad_norm", "exact")}
    sd["gnp"]["format"] = 1
    other = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, every=2)
    other.load_state_dict(sd)
    assert other.every == 2  # the settings it did not store keep their values


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "3", None])
def test_bad_every_is_refused(bad):
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        GNP(_net().parameters(), torch.optim.SGD, lr=LR, every=bad)


def test_bad_reuse_and_exact_are_refused():
    with pytest.raises(ValueError, match="reuse must be one of"):
        GNP(_net().parameters(), torch.optim.SGD, lr=LR, every=2, reuse="lookahead")
    with pytest.raises(ValueError, match="exact=True .* every > 1"):
        GNP(_net().parameters(), torch.optim.SGD, lr=LR, every=2, exact=True)


def test_grad_scaler_explicit_form_matches_the_closure_form_and_an_overflow_forces_a_full_step():
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler is not available")
    results = []
    for form in ("closure", "explicit"):
        model = _net()
        opt = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, every=3)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
        for x, y in _batches():
            if form == "closure":
                def closure():
                    loss = F.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    return loss
                opt.step(closure, scaler=scaler)
            else:
                opt.zero_grad()
                scaler.scale(F.cross_entropy(model(x), y)).backward()
                if opt.first_step(scaler):
                    scaler.scale(F.cross_entropy(model(x), y)).backward()
                opt.second_step(scaler)
            scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))

    # an overflow in a full step: the step is skipped and the next one is full again
    model = _net()
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=ALPHA, r=R, lr=LR, every=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    seen = []
    for i, (x, y) in enumerate(_batches(5)):
        def closure(i=i):
            loss = F.cross_entropy(model(x), y) * (float("inf") if i == 3 else 1.0)
            scaler.scale(loss).backward()
            return loss
        opt.step(closure, scaler=scaler)
        scaler.update()
        seen.append(opt.last_full)
    assert seen == [True, False, False, True, True]
