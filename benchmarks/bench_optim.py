"""Speed and memory of the GNP optimizer step against SGD and pytorch_optimizer.SAM.

One optimizer step (forward, backward, update; two forward-backward passes for GNP and SAM) of a
CIFAR-sized ResNet-18 (torchvision ``resnet18(num_classes=10)``; by default with the usual CIFAR stem:
3x3 stride-1 first convolution, no max-pool) on random 3x32x32 batches. All optimizers run in one process,
each on its own copy of the same model; the repetitions interleave them (rotating the order), so drift in
machine load hits every method alike. Ratios are medians over repetitions of time(method)/time(reference)
measured in the same repetition.

Peak extra memory is the peak of memory allocated during optimizer construction plus two steps, minus
SGD's peak, in units of the parameter size (bytes of all parameters): on CUDA from
``torch.cuda.max_memory_allocated``, on CPU from the allocator events of ``torch.profiler`` with
``profile_memory=True``.

Usage::

    python benchmarks/bench_optim.py                 # batch 128, CUDA when present, else CPU
    python benchmarks/bench_optim.py --quick         # batch 32, fewer repetitions (a few minutes on 2 CPU cores)
    python benchmarks/bench_optim.py --device cpu --batch 128 --reps 7 --json out.json

Needs ``pytorch_optimizer`` (``pip install -e '.[bench]'``); without it the SAM column is skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gnp_study.optim import GNP  # noqa: E402

try:
    from pytorch_optimizer import SAM
except ImportError:                                   # benchmark extra not installed
    SAM = None

BASE = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


def build_model(name: str) -> nn.Module:
    """ResNet-18 with 10 classes; ``resnet18-cifar`` swaps in the CIFAR stem (3x3/1 conv, no max-pool)."""
    model = torchvision.models.resnet18(num_classes=10)
    if name == "resnet18-cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif name != "resnet18":
        raise ValueError(f"unknown model {name!r}; use resnet18-cifar or resnet18")
    return model


#: ``--precision``: the autocast dtype of the forward passes (None: fp32, no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Runner:
    """One method: its own model copy and optimizer, and a ``step()`` doing one full optimizer step.

    ``precision`` (:data:`PRECISIONS`): bf16 runs the forward passes under ``torch.autocast``; fp16 also
    scales the loss with a ``torch.amp.GradScaler`` (SGD through ``scaler.step``, GNP through
    ``step(closure, scaler=...)``, both followed by ``scaler.update()``).
    """

    def __init__(self, name: str, model: nn.Module, make_opt: Callable[[nn.Module], torch.optim.Optimizer],
                 kind: str, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32"):
        self.name, self.kind, self.x, self.y = name, kind, x, y
        self.model = model
        self.make_opt = make_opt
        self.opt = make_opt(model)
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(x.device.type) if precision == "fp16" else None
        if self.scaler is not None and kind == "sam":
            raise ValueError("pytorch_optimizer.SAM has no GradScaler form: not timed at fp16")

    def closure(self) -> torch.Tensor:
        with torch.autocast(self.x.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = F.cross_entropy(self.model(self.x), self.y)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss

    def step(self) -> None:
        if self.kind == "plain":                      # SGD: zero, forward-backward, update
            self.opt.zero_grad(set_to_none=True)
            self.closure()
            if self.scaler is not None:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
        elif self.kind == "gnp":                      # GNP clears gradients itself
            self.opt.step(self.closure, scaler=self.scaler)
            if self.scaler is not None:
                self.scaler.update()
        else:                                         # pytorch_optimizer.SAM: caller runs the first pass
            self.opt.zero_grad(set_to_none=True)
            self.closure()
            self.opt.step(self.closure)


#: The amortised modes timed beside full GNP (``GNP(..., every=k)``).
AMORTISED_K = (2, 5, 10)


def methods(include_sam: bool) -> list[tuple[str, Callable[[nn.Module], torch.optim.Optimizer], str]]:
    out = [
        ("SGD", lambda m: torch.optim.SGD(m.parameters(), **BASE), "plain"),
        # A second, identical SGD: its ratio to SGD shows the noise floor of the measurement.
        ("SGD (control copy)", lambda m: torch.optim.SGD(m.parameters(), **BASE), "plain"),
        ("GNP(alpha=0)", lambda m: GNP(m.parameters(), torch.optim.SGD, alpha=0.0, r=0.05, model=m, **BASE), "gnp"),
        ("GNP(alpha=0.8)", lambda m: GNP(m.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=m, **BASE), "gnp"),
        ("GNP(alpha=1)", lambda m: GNP(m.parameters(), torch.optim.SGD, alpha=1.0, r=0.05, model=m, **BASE), "gnp"),
    ]
    # Amortised GNP: the second pass every k steps, timed over whole cycles of k steps (see cycle_of); the
    # ratio's floor is 1 + 1/k passes plus the update
    for k in AMORTISED_K:
        out.append((f"GNP(alpha=0.8, every={k})",
                    lambda m, k=k: GNP(m.parameters(), torch.optim.SGD, alpha=0.8, r=0.05, model=m, every=k, **BASE),
                    "gnp"))
    if include_sam:
        out.append(("pytorch_optimizer.SAM", lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, **BASE), "sam"))
    return out


def cycle_of(name: str) -> int:
    """Steps in one cycle of a method: k for ``GNP(..., every=k)`` (one full step and k - 1 reusing the
    stored direction), else 1. Every timing of it covers whole cycles, whatever phase it starts in."""
    return int(name.split("every=")[1].rstrip(")")) if "every=" in name else 1


def whole_cycles(steps: int, cycle: int) -> int:
    """``steps`` rounded up to a multiple of ``cycle``."""
    return -(-steps // cycle) * cycle


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(runner: Runner, steps: int, device: torch.device, clock: Callable[[], float]) -> float:
    sync(device)
    t0 = clock()
    for _ in range(steps):
        runner.step()
    sync(device)
    return (clock() - t0) / steps


def peak_bytes(make_model: Callable[[], nn.Module], make_opt, kind: str, x, y, device: torch.device,
               precision: str = "fp32") -> int:
    """Peak bytes allocated while building the optimizer and taking two steps, from a grad-free model."""
    model = make_model()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        runner = Runner("m", model, make_opt, kind, x, y, precision)
        runner.step()
        runner.step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner = Runner("m", model, make_opt, kind, x, y, precision)
        runner.step()
        runner.step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = [e["args"] for e in events
           if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    if not mem:
        return 0
    mem.sort(key=lambda a: a.get("Ev Idx", 0))
    # "Total Allocated" is the allocator's running total, which also counts memory allocated before the
    # profiler started and never freed while it ran; measure from the total just before the first event.
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(a["Total Allocated"] for a in mem) - start


def update_only_ms(proto: nn.Module, make_opt, kind: str, device: torch.device, reps: int,
                   clock: Callable[[], float], cycle: int = 1) -> float:
    """Median time of the optimizer's own work per step on fixed random gradients (no forward/backward).

    For two-pass methods the time of both halves is summed; handing them fresh gradients (standing in
    for the backward passes) is not timed. With ``cycle`` > 1 (amortised GNP) each sample is the mean over
    one whole cycle of ``cycle`` steps.
    """
    model = copy.deepcopy(proto)
    g = torch.Generator(device="cpu").manual_seed(2)
    fixed = [torch.randn(p.shape, generator=g).to(device) for p in model.parameters()]

    def set_grads() -> None:
        for p, gr in zip(model.parameters(), fixed):
            p.grad = gr.clone()
    opt = make_opt(model)
    out = []
    for _ in range((reps + 1) * cycle):                # the first cycle allocates state: not counted
        set_grads()
        sync(device)
        t0 = clock()
        if kind == "plain":
            opt.step()
        elif kind == "gnp":
            two = opt.first_step()
        else:
            opt.first_step(zero_grad=True)
            two = True
        sync(device)
        t = clock() - t0
        if kind != "plain":
            if two:
                set_grads()
            sync(device)
            t0 = clock()
            opt.second_step()
            sync(device)
            t += clock() - t0
        out.append(t)
    per_cycle = [sum(out[i:i + cycle]) / cycle for i in range(0, len(out), cycle)]
    return 1e3 * statistics.median(per_cycle[1:])


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu}), {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--model", default="resnet18-cifar", choices=["resnet18-cifar", "resnet18"])
    ap.add_argument("--batch", type=int, help="batch size (default 128; 32 with --quick)")
    ap.add_argument("--reps", type=int, help="interleaved repetitions (default 5; 3 with --quick)")
    ap.add_argument("--steps", type=int, help="timed steps per method per repetition (default 3; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    ap.add_argument("--quick", action="store_true", help="smaller defaults for a CPU smoke run")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads on CPU (default: torch's choice)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (CPU device only; with --threads 1 "
                         "it counts this process's work alone, robust on a machine shared with other jobs)")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="fp32, bf16 (autocast) or fp16 (autocast + GradScaler; pytorch_optimizer.SAM not timed)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--no-update-only", action="store_true",
                    help="skip timing the optimizer's own work on fixed gradients")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    for key, full, quick in (("batch", 128, 32), ("reps", 5, 3), ("steps", 3, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures host CPU time; use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.manual_seed(0)
    proto = build_model(args.model).to(device)
    param_bytes = sum(p.numel() * p.element_size() for p in proto.parameters())
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    todo = methods(SAM is not None and args.precision != "fp16")
    runners = [Runner(name, copy.deepcopy(proto), make, kind, x, y, args.precision) for name, make, kind in todo]
    for r in runners:
        for _ in range(args.warmup):
            r.step()

    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for rep in range(args.reps):
        k = rep % len(runners)
        for r in runners[k:] + runners[:k]:          # rotate the order each repetition
            times[r.name].append(time_steps(r, whole_cycles(args.steps, cycle_of(r.name)), device, clock))

    peaks = {}
    if not args.no_memory:
        for name, make, kind in todo:
            if name == "SGD (control copy)":
                continue
            peaks[name] = peak_bytes(lambda: copy.deepcopy(proto), make, kind, x, y, device, args.precision)

    upd = {}
    if not args.no_update_only:
        for name, make, kind in todo:
            if name != "SGD (control copy)":
                upd[name] = update_only_ms(proto, make, kind, device, max(5, args.reps), clock, cycle_of(name))

    def ratio(a: str, b: str) -> float | None:
        if a not in times or b not in times:
            return None
        return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))

    rows = []
    for name in times:
        ref = "pytorch_optimizer.SAM" if name == "GNP(alpha=1)" and "pytorch_optimizer.SAM" in times else "SGD"
        extra = (peaks[name] - peaks["SGD"]) / param_bytes if name in peaks else None
        predicted = None
        if name in upd and "SGD" in upd:
            # F = one forward-backward (SGD step minus SGD's update); a method costs passes * F + update.
            fb = 1e3 * statistics.median(times["SGD"]) - upd["SGD"]
            passes = 1 if name.startswith("SGD") or name == "GNP(alpha=0)" else 2
            if "every=" in name:
                passes = 1 + 1 / cycle_of(name)
            predicted = (passes * fb + upd[name]) / (fb + upd["SGD"])
        rows.append(dict(method=name, ms_per_step=1e3 * statistics.median(times[name]),
                         update_ms=upd.get(name), ratio_from_update=predicted,
                         ratio_to_sgd=ratio(name, "SGD"),
                         ratio_to_sam=ratio(name, "pytorch_optimizer.SAM") if name == "GNP(alpha=1)" else None,
                         ratio_to_full=ratio(name, "GNP(alpha=0.8)") if "every=" in name else None,
                         extra_memory_params=extra, reference=ref))
    result = dict(machine=machine(device), device=device.type, model=args.model, batch=args.batch,
                  precision=args.precision,
                  reps=args.reps, steps=args.steps, clock=args.clock, param_mb=param_bytes / 2 ** 20, rows=rows)

    print(f"# GNP optimizer step, {args.model} at batch {args.batch}, {args.precision}, {device.type}: "
          f"{result['machine']}")
    print(f"# {args.reps} interleaved repetitions x {args.steps} steps, {args.clock}-clock time; "
          f"parameters {param_bytes / 2**20:.1f} MiB\n")
    print("| method | ms / step (median) | time / SGD | time / pytorch_optimizer.SAM | time / full GNP "
          "| update-only ms | passes x F + update, / SGD | peak extra memory over SGD (x params) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for row in rows:
        print(f"| {row['method']} | {row['ms_per_step']:.1f} | {f(row['ratio_to_sgd'], '.3f')} | "
              f"{f(row['ratio_to_sam'], '.3f')} | {f(row['ratio_to_full'], '.3f')} | {f(row['update_ms'], '.1f')} | "
              f"{f(row['ratio_from_update'], '.4f')} | {f(row['extra_memory_params'], '.2f')} |")
    print("\nupdate-only: the optimizer's own work per step on fixed gradients (no forward/backward); "
          "F = SGD step - SGD update.")
    print("\nTargets: GNP(alpha=0)/SGD <= 1.01; GNP(alpha=0.8)/SGD <= 2.02; GNP(alpha=1)/SAM <= 1.0 on CPU "
          "and <= 0.95 on CUDA; GNP extra memory <= 2 parameter sizes; GNP(alpha=0.8, every=5)/SGD <= 1.25.")
    print("time / full GNP: against GNP(alpha=0.8). Amortised rows are timed over whole cycles of k steps.")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
