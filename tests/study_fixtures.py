"""Synthetic study folders in the real on-disk format (docs/study-folder.md), for tests of
``gnp_study.results`` and ``gnp_study.report``.

The numbers are made up but shaped like a real greedy study: a 2-value lr grid for Standard, an r grid for
SAM, the basic alpha set plus B_a and B_b at two Figure-2 radii for GNP, 3 seeds, per-epoch curves that
fall and flatten, one alpha (2.0) whose seeds all diverge, one partly diverged configuration, one failed
trial, and a SAM row with one diverged seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SEEDS = (0, 1, 2)
#: Seed offsets of the per-trial best error around the configuration's value (sum 0: the mean over all
#: three seeds equals the configuration's value).
SEED_OFFSETS = (-0.12, 0.03, 0.09)
EPOCHS = 8
LRS = (0.05, 0.1)
SAM_R = (0.02, 0.05, 0.1)
BASIC_ALPHA = tuple(round(0.1 * i, 1) for i in range(1, 10))
B_A = (-0.1, -0.2, -0.5)
B_B = (1.1, 1.2, 1.3, 1.5, 2.0)
FIGURE2_R = (0.05, 0.1)
DIVERGED_ALPHA = 2.0  # all seeds diverge, at every r
PARTLY_DIVERGED = ("gnp", 1.5, 0.1, 2)  # (stage, alpha, r, seed) that diverges alone
SAM_DIVERGED = ("sam", 1.0, 0.05, 1)  # the chosen SAM configuration loses one seed
FAILED = ("gnp", -0.5, 0.1, 0)  # a failed trial (exception), no epoch finished
WEIGHT_DECAY = 5e-4

#: Table 1 of the paper, WideResNet-28-10, Cifar10 with cutout: the "71%" example of Section 4.1.
PAPER_ROWS = [("Standard", 2.81, 0.07), ("SAM", 2.43, 0.13), ("GNP", 2.16, 0.11)]


def true_error(stage: str, alpha: float, r: float, lr: float) -> float:
    """The configuration's made-up best test error (percent) before seed offsets."""
    if stage == "standard":
        return {0.05: 5.6, 0.1: 5.2}[lr]
    if stage == "sam":
        return {0.02: 5.0, 0.05: 4.8, 0.1: 4.95}[r]
    return 4.5 + 1.2 * (alpha - 0.8) ** 2 + (0.15 if r == 0.1 else 0.0)


def config_key(cfg: dict) -> str:
    """Canonical JSON of a configuration (without the seed), as the contract describes."""
    return json.dumps(cfg, sort_keys=True)


@dataclass
class SyntheticStudy:
    """What :func:`make_study` wrote: the folder, the tables and the decisions."""

    path: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    decisions: dict
    spec: dict
    paper: pd.DataFrame | None
    stages: tuple[str, ...] = field(default=("standard", "sam", "gnp"))


def _status(stage: str, alpha: float, r: float, seed: int) -> str:
    if stage == "gnp" and math.isclose(alpha, DIVERGED_ALPHA):
        return "diverged"
    for s, a, rr, sd in (PARTLY_DIVERGED, SAM_DIVERGED):
        if stage == s and math.isclose(alpha, a) and math.isclose(r, rr) and seed == sd:
            return "diverged"
    s, a, rr, sd = FAILED
    if stage == s and math.isclose(alpha, a) and math.isclose(r, rr) and seed == sd:
        return "failed"
    return "completed"


def _plan(stages: tuple[str, ...], best_lr: float, best_r: float) -> list[tuple[str, dict]]:
    plan: list[tuple[str, dict]] = []
    if "standard" in stages:
        plan += [("standard", {"lr": lr, "weight_decay": WEIGHT_DECAY, "alpha": 0.0, "r": 0.0}) for lr in LRS]
    if "sam" in stages:
        plan += [("sam", {"lr": best_lr, "weight_decay": WEIGHT_DECAY, "alpha": 1.0, "r": r}) for r in SAM_R]
    if "gnp" in stages:
        for r in sorted({best_r, *FIGURE2_R}):
            for a in BASIC_ALPHA + B_A + B_B:
                plan.append(("gnp", {"lr": best_lr, "weight_decay": WEIGHT_DECAY, "alpha": a, "r": r}))
    return plan


def _decide(trials: pd.DataFrame, stage: str, extra: tuple[float, ...] = (), best_r: float = 0.0) -> dict:
    """Choose the configuration with the lowest mean over completed seeds (plain pandas, as the protocol
    does); for gnp only among the basic alphas at SAM's best r."""
    sub = trials[trials["stage"] == stage]
    if stage == "gnp":
        sub = sub[~sub["alpha"].round(6).isin([round(a, 6) for a in extra]) & np.isclose(sub["r"], best_r)]
    ok = sub[sub["status"] == "completed"]
    g = ok.groupby("config_key")["best_test_error"]
    means, stds, ns = g.mean(), g.std(ddof=1), g.count()
    candidates = []
    for key, grp in sub.groupby("config_key"):
        candidates.append(
            {
                "config_key": key,
                "mean": float(means.get(key, float("nan"))),
                "std": float(stds.get(key, float("nan"))) if ns.get(key, 0) > 1 else 0.0,
                "n": int(ns.get(key, 0)),
                "n_seeds": int(len(grp)),
                "n_diverged": int((grp["status"] == "diverged").sum()),
                "n_failed": int((grp["status"] == "failed").sum()),
            }
        )
    best = min((c for c in candidates if c["n"] > 0), key=lambda c: c["mean"])
    cfg = json.loads(best["config_key"])
    out = {k: best[k] for k in ("config_key", "mean", "std", "n", "n_seeds")}
    out["candidates"] = candidates
    if stage == "standard":
        out["config"] = {k: v for k, v in cfg.items() if k not in ("alpha", "r")}
    elif stage == "sam":
        out["r"] = cfg["r"]
    else:
        out["alpha"], out["r"] = cfg["alpha"], cfg["r"]
    return out


def make_study(
    root: str | Path,
    stages: tuple[str, ...] = ("standard", "sam", "gnp"),
    paper: bool = True,
    run_info: bool = True,
) -> SyntheticStudy:
    """Write a synthetic study folder (study.yaml, trials.parquet, epochs.parquet, decisions.json,
    run_info.json, optionally paper_reference.csv) under ``root`` and return what was written.

    Args:
        root: the folder to create.
        stages: which stages "have run" (a prefix of standard, sam, gnp).
        paper: write ``paper_reference.csv`` (Table 1's "71%" example).
        run_info: write ``run_info.json``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": "synthetic",
        "description": "Synthetic study for the report tests.",
        "data": {"dataset": "digits", "augmentation": "none", "root": None, "train_subset": None},
        "model": {"name": "small_cnn"},
        "training": {"epochs": EPOCHS, "batch_size": 64, "base_optimizer": "sgd", "lr": 0.1,
                     "momentum": 0.9, "weight_decay": WEIGHT_DECAY},
        "stages": {
            "standard": {"search": "grid", "grid": {"lr": list(LRS)}},
            "sam": {"r": list(SAM_R)},
            "gnp": {"alpha": list(BASIC_ALPHA), "alpha_extra": list(B_A + B_B), "figure2_r": list(FIGURE2_R),
                    "figure3_alpha": list(B_B) + [0.8]},
        },
        "seeds": list(SEEDS),
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")

    rng = np.random.default_rng(1234)
    trial_rows, epoch_rows, decisions = [], [], {}
    best_lr, best_r = 0.1, 0.05
    for stage in ("standard", "sam", "gnp"):
        if stage not in stages:
            continue
        for cfg in (c for s, c in _plan((stage,), best_lr, best_r) if s == stage):
            key = config_key(cfg)
            base = true_error(stage, cfg["alpha"], cfg["r"], cfg["lr"])
            for seed, offset in zip(SEEDS, SEED_OFFSETS):
                tid = f"{stage}_{len(trial_rows):04d}"
                status = _status(stage, cfg["alpha"], cfg["r"], seed)
                best = round(base + offset, 4)
                n_ep = EPOCHS if status == "completed" else (0 if status == "failed" else 2 + seed % 2)
                g = 25.0 * np.exp(-(np.arange(1, EPOCHS + 1) - 1) / 1.2)
                curve = best + g - g[EPOCHS - 2]  # minimum (= best) at epoch EPOCHS-1
                curve[EPOCHS - 1] = best + 0.1  # a little over-fitting at the end
                gn0 = 3.0 / (1.0 + 0.5 * max(cfg["alpha"], -0.5)) + 0.3 * seed
                errs = []
                for ep in range(1, n_ep + 1):
                    diverging = status == "diverged" and ep == n_ep
                    te = 90.0 if diverging else float(curve[ep - 1])
                    errs.append(te)
                    epoch_rows.append(
                        {
                            "trial_id": tid, "stage": stage, "config_key": key, "alpha": cfg["alpha"],
                            "r": cfg["r"], "seed": seed, "epoch": ep,
                            "train_loss": float("nan") if diverging else 2.0 * math.exp(-ep / 2.0),
                            "train_error": max(te - 2.0, 0.0),
                            "test_loss": float("nan") if diverging else 1.5 * math.exp(-ep / 2.5) + 0.1,
                            "test_error": te,
                            "best_test_error": min(errs),
                            "grad_norm": float("inf") if diverging
                            else gn0 * math.exp(-(ep - 1) / 3.0) + 0.2 + 0.02 * rng.random(),
                            "lr": cfg["lr"] * 0.5 * (1 + math.cos(math.pi * ep / EPOCHS)),
                            "epoch_time_s": 1.0 + 0.1 * rng.random(),
                        }
                    )
                finite = [e for e in errs if e < 90.0]
                trial_rows.append(
                    {
                        "trial_id": tid, "stage": stage, "config_key": key,
                        "config": json.dumps(cfg), "alpha": float(cfg["alpha"]), "r": float(cfg["r"]),
                        "seed": seed, "status": status,
                        "best_test_error": min(finite) if finite else float("nan"),
                        "final_test_error": errs[-1] if errs else float("nan"),
                        "epochs_run": n_ep,
                        "diverged_epoch": float(n_ep) if status == "diverged" else float("nan"),
                        "error": "RuntimeError: out of memory" if status == "failed" else "",
                        "wall_time_s": 10.0 + n_ep, "node": "node-0", "cpus": 1.0, "gpus": 0.0,
                    }
                )
        trials_so_far = pd.DataFrame(trial_rows)
        decisions[stage] = _decide(trials_so_far, stage, B_A + B_B, best_r)
        if stage == "standard":
            best_lr = decisions[stage]["config"]["lr"]
        if stage == "sam":
            best_r = decisions[stage]["r"]

    trials = pd.DataFrame(trial_rows)
    epochs = pd.DataFrame(epoch_rows)
    trials.to_parquet(root / "trials.parquet", index=False)
    epochs.to_parquet(root / "epochs.parquet", index=False)
    (root / "decisions.json").write_text(json.dumps(decisions, indent=2), encoding="utf-8")
    if run_info:
        info = {
            "started": "2025-01-01T10:00:00",
            "finished": "2025-01-01T10:06:30" if "gnp" in stages else None,
            "wall_time_s": 390.0,
            "stages": {
                s: {"wall_time_s": 100.0 + 50 * i, "cpu_hours": 0.05 * (i + 1), "gpu_hours": 0.0,
                    "n_trials": int((trials["stage"] == s).sum())}
                for i, s in enumerate(stages)
            },
            "versions": {"python": "3.11.9", "torch": "2.14.1", "torchvision": "0.29.1", "ray": "2.60.0",
                         "gnp_study": "0.1.0"},
            "hardware": {"platform": "Linux-x86_64", "cpu": "Synthetic CPU", "cpu_count": 2, "gpus": [],
                         "ray_nodes": 1},
            "ray_address": None,
        }
        (root / "run_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    paper_df = None
    if paper:
        paper_df = pd.DataFrame(PAPER_ROWS, columns=["scheme", "mean", "std"])
        paper_df.to_csv(root / "paper_reference.csv", index=False)
    return SyntheticStudy(root, trials, epochs, decisions, spec, paper_df, tuple(stages))


def make_validation_study(path: Path):
    """:func:`make_study` in validation mode: study.yaml gets ``data.validation`` and the trials the two
    validation columns (``best_val_error`` = best test error + 1.0, ``test_error_at_best_val`` = best test
    error + 0.5)."""
    s = make_study(path)
    spec = yaml.safe_load((s.path / "study.yaml").read_text())
    spec["data"]["validation"] = {"size": 200, "seed": 3}
    (s.path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    t = pd.read_parquet(s.path / "trials.parquet")
    t["best_val_error"] = t["best_test_error"] + 1.0
    t["test_error_at_best_val"] = t["best_test_error"] + 0.5
    t.to_parquet(s.path / "trials.parquet", index=False)
    return s
