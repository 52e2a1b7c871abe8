"""Vectorised seeds: S seeds of one configuration trained as one batched model with
``torch.func`` (stacked parameters, ``vmap``, ``functional_call``) against the same S trials run one after
the other with :func:`gnp_study.train.train_trial`, in one process, side by side.

The vectorised trainer here follows ``train_trial`` for the recipe of the study it is given (SGD with
momentum and weight decay, the study's LR schedule, GNP's Algorithm 1 with ``model=``: batch-norm running
statistics from the first pass only, no dropout, no augmentation) with the S seeds' parameters and
batch-norm buffers stacked along a leading dimension:

- each seed is built as ``train_trial`` builds it (``torch.manual_seed(seed)`` then ``build_model``) and
  draws its own batches (a training loader with ``torch.Generator().manual_seed(seed)``);
- one forward pass is ``vmap(functional_call(model, (params[s], buffers[s]), x[s]))`` over the seeds; the
  loss is the sum over seeds of each seed's mean loss, so each seed's gradient is its own;
- GNP per seed: ``||g1||`` is each seed's global norm over all its parameters, the perturbation
  ``r g1 / ||g1||`` and the mix ``(1 - alpha) g1 + alpha g2`` are per seed; the second pass runs on a copy
  of the buffers (running statistics are updated by the first pass only, as ``GNP(model=...)`` does);
- ``torch.optim.SGD`` steps the stacked tensors (momentum and decay are elementwise, so per seed);
- test and validation errors: the stacked models in eval mode on shared batches.

It prints, per number of seeds S: the wall time of S ``train_trial`` calls and of one vectorised run
(median [min, max] over repetitions that alternate the two, rotating the order), their ratio per
repetition, and how far the vectorised metrics are from the separate trials' (largest absolute
difference of the epoch-1 training loss, and of the final test error in percentage points).

Usage::

    python benchmarks/bench_seeds_vmap.py                       # digits study, S = 2, 4, 8, 3 repetitions
    python benchmarks/bench_seeds_vmap.py --seeds 4 --reps 5 --alpha 0.8 --r 0.05 --json out.json

Needs no Ray. Timings are whole training runs on one CPU thread (``cpus_per_trial: 1`` as in the study).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gnp_study import train  # noqa: E402
from gnp_study.models import build_model  # noqa: E402
from gnp_study.protocol import TrialConfig  # noqa: E402
from gnp_study.spec import load_spec  # noqa: E402


def separate(spec, config: dict, seeds: list[int]) -> list[list[dict]]:
    """The S trials one after the other with ``train_trial``: per seed, the metrics of every epoch."""
    out = []
    for s in seeds:
        rows: list[dict] = []
        trial = TrialConfig("gnp", dict(config), int(s)).to_dict()
        train.train_trial(spec, trial, lambda m, st: rows.append(dict(m)), device="cpu")
        out.append(rows)
    return out


def vectorised(spec, config: dict, seeds: list[int]) -> list[list[dict]]:
    """The S trials as one batched model (see the module docstring): per seed, every epoch's metrics
    (``train_loss``, ``test_error``, ``val_error``)."""
    t = train.effective_recipe(spec, config)
    assert t["base_optimizer"] == "sgd" and not t["normalize_g1"] and not t["perturb_weight_decay"]
    assert t["grad_clip"] in (None, 0) and t["label_smoothing"] == 0 and spec.data.augmentation == "none"
    alpha, r = float(config["alpha"]), float(config["r"])
    device = torch.device("cpu")
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    data = train.study_datasets(spec)
    models, loaders = [], []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build_model(spec.model.name, data.num_classes, in_channels=data.in_channels,
                                  image_size=data.image_size, **spec.model.kwargs))
        loaders.append(train._loaders(spec, t, data, torch.Generator().manual_seed(s), device))
    S = len(seeds)
    params, buffers = stack_module_state(models)
    plist = list(params.values())
    base = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.SGD(plist, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                          nesterov=t["nesterov"] and t["momentum"] > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, train.lr_multiplier(t, len(loaders[0][0])))

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    fwd = vmap(one)                                 # (S, B, ...) inputs, one batch per seed
    fwd_shared = vmap(one, in_dims=(0, 0, None))    # one batch for every seed (evaluation)

    def per_seed_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (like.ndim - 1)))

    def losses(x, y, bufs):
        out = fwd(params, bufs, x)                  # (S, B, classes)
        per = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(S, -1).mean(1)
        return per, out

    @torch.no_grad()
    def errors(loader):
        base.eval()
        wrong, n = torch.zeros(S, dtype=torch.long), 0
        for x, y in loader:
            out = fwd_shared(params, buffers, x)
            wrong += (out.argmax(2) != y).sum(1)
            n += y.numel()
        base.train()
        return (100.0 * wrong.double() / n).tolist()

    history: list[list[dict]] = [[] for _ in seeds]
    for epoch in range(1, t["epochs"] + 1):
        base.train()
        loss_sum, n = torch.zeros(S, dtype=torch.float64), 0
        for batches in zip(*(ld[0] for ld in loaders)):
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            for p in plist:
                p.grad = None
            per, _ = losses(x, y, buffers)          # first pass: updates the running statistics
            per.sum().backward()
            if alpha != 0.0 and r != 0.0:
                with torch.no_grad():
                    g1 = [p.grad.clone() for p in plist]
                    norm = torch.sqrt(sum((g.flatten(1) ** 2).sum(1) for g in g1))   # (S,) per seed
                    theta = [p.detach().clone() for p in plist]
                    for p, g in zip(plist, g1):
                        p.add_(g * per_seed_view(r / norm, g))                       # theta + r g1/||g1||
                for p in plist:
                    p.grad = None
                frozen = {k: v.clone() for k, v in buffers.items()}                  # second pass: no stats
                per2, _ = losses(x, y, frozen)
                per2.sum().backward()
                with torch.no_grad():
                    for p, th, g in zip(plist, theta, g1):
                        p.copy_(th)
                        p.grad.mul_(alpha).add_(g, alpha=1.0 - alpha)                # (1-a) g1 + a g2
            opt.step()
            sched.step()
            loss_sum += per.detach().double() * y.shape[1]
            n += y.shape[1]
        test = errors(loaders[0][1])
        val = errors(loaders[0][2]) if loaders[0][2] is not None else [math.nan] * S
        for i in range(S):
            history[i].append({"epoch": epoch, "train_loss": float(loss_sum[i]) / n, "test_error": test[i],
                               "val_error": val[i]})
    return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--study", default=str(ROOT / "search_spaces" / "digits.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 4, 8], help="numbers of seeds S")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--r", type=float, default=0.05)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    if a.reps < 1 or any(S < 1 for S in a.seeds):
        ap.error("--reps and every --seeds value must be at least 1")
    try:
        spec = load_spec(a.study, check_names=False)
    except ValueError as e:
        ap.error(str(e))
    print(f"[bench] {Path(a.study).name}, alpha = {a.alpha:g}, r = {a.r:g}, seeds {a.seeds}, {a.reps} repetition(s), "
          f"{max(1, int(spec.resources.cpus_per_trial))} thread(s); ratio = median of the per-repetition "
          f"ratios vmap/separate", flush=True)
    config = {"alpha": a.alpha, "r": a.r}
    train.CACHE_DATA = True
    separate(spec, config, [0])                     # warm-up: imports, data, first-call costs
    vectorised(spec, config, [0, 1])
    rows = []
    for S in a.seeds:
        seeds = list(range(S))
        times = {"separate": [], "vmap": []}
        dev_loss = dev_test = 0.0
        for rep in range(a.reps):
            order = ["separate", "vmap"] if rep % 2 == 0 else ["vmap", "separate"]
            got = {}
            for kind in order:
                t0 = time.perf_counter()
                got[kind] = (separate if kind == "separate" else vectorised)(spec, config, seeds)
                times[kind].append(time.perf_counter() - t0)
            for ref, vec in zip(got["separate"], got["vmap"]):
                dev_loss = max(dev_loss, abs(ref[0]["train_loss"] - vec[0]["train_loss"]))
                dev_test = max(dev_test, abs(ref[-1]["test_error"] - vec[-1]["test_error"]))
        ratios = [v / s for v, s in zip(times["vmap"], times["separate"])]
        row = {"seeds": S, "separate_s": times["separate"], "vmap_s": times["vmap"], "ratio": ratios,
               "max_dev_epoch1_train_loss": dev_loss, "max_dev_final_test_error_pp": dev_test}
        rows.append(row)

        def fmt(v):
            return f"{statistics.median(v):.2f} [{min(v):.2f}, {max(v):.2f}]"

        print(f"S={S}: separate {fmt(times['separate'])} s, vmap {fmt(times['vmap'])} s, ratio vmap/separate "
              f"{fmt(ratios)}; max |diff| epoch-1 train loss {dev_loss:.2e}, final test error "
              f"{dev_test:.2f} pp", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": platform.platform(), "study": a.study, "alpha": a.alpha,
                                            "r": a.r, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
