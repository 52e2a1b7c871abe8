"""What amortised GNP keeps with each reused direction: ``reuse="orthogonal"`` (the part of g2 - g1
orthogonal to g1, after LookSAM, Liu et al. 2022) against ``reuse="difference"`` (g2 - g1 itself).

Reads a finished study folder that has a cost stage (its trials ran with the study's ``training.reuse``,
by default orthogonal), trains the same cost-stage trials again with the other reuse mode (same chosen
GNP configuration, same k, same seeds: :func:`gnp_study.train.train_trial`, no Ray, ``--jobs`` processes)
and prints, for each k and each mode, GNP(k) - Standard and GNP(k) - full GNP paired seed by seed
(:func:`gnp_study.stats.paired`) and the share of full GNP's improvement kept (:func:`gnp_study.stats.ratio`,
Fieller's interval), on the study's report column.

Usage::

    make demo                                          # reports/digits_label_noise/ with its cost stage
    python benchmarks/bench_reuse.py reports/digits_label_noise --jobs 2 --json reuse.json
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gnp_study.results import load_study, selection  # noqa: E402
from gnp_study.spec import parse_spec  # noqa: E402
from gnp_study.stats import paired, ratio  # noqa: E402


def _train(args: tuple[dict, dict, str]) -> float:
    """Train one trial (the spec as a dict, the trial, the report column) and return its last
    report-column value (percent)."""
    from gnp_study.train import train_trial

    raw, trial, column = args
    last = {}
    train_trial(parse_spec(raw, check_names=False), trial, lambda m, st: last.update(m))
    return float(last[column])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="a finished study folder with a cost stage")
    ap.add_argument("--jobs", type=int, default=2, help="training processes (default 2)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    study = load_study(args.study)
    rec = study.decisions["cost"]
    column = selection(study.spec).report_column
    raw = dict(study.spec)
    ran = raw["training"].get("reuse", "orthogonal")
    other = "difference" if ran == "orthogonal" else "orthogonal"
    seeds = [int(s) for s in rec["seeds"]]
    t = study.trials

    def values(where) -> pd.Series:
        rows = t[(t["stage"] == where["stage"]) & (t["config_key"] == where["config_key"])
                 & (t["status"] == "completed")]
        return rows.set_index("seed")[column].reindex(seeds)

    std = values(rec["reference"]["standard"])
    full = next(values(r) for r in rec["every"] if int(r["every"]) == 1)
    gnp_cfg = json.loads(t[t["config_key"] == rec["reference"]["gnp"]["config_key"]]["config"].iloc[0])
    ks = [int(r["every"]) for r in rec["every"] if int(r["every"]) != 1]

    raw_other = dict(raw, training=dict(raw["training"], reuse=other))
    parse_spec(raw_other, check_names=False)  # the study as rerun is valid before any training
    jobs = [(raw_other, {"stage": "cost", "config": dict(gnp_cfg, every=k), "seed": s,
                         "trial_id": f"reuse_{k}_{s}", "config_key": "reuse"}, column) for k in ks for s in seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        got = list(pool.map(_train, jobs))
    trained = {(tr["config"]["every"], tr["seed"]): v for (_, tr, _), v in zip(jobs, got)}

    rows = []
    for k in ks:
        by_mode = {ran: next(values(r) for r in rec["every"] if int(r["every"]) == k),
                   other: pd.Series([trained[(k, s)] for s in seeds], index=seeds)}
        for mode in ("orthogonal", "difference"):
            v = by_mode[mode]
            p_std, p_full = paired(v, std), paired(v, full)
            q = ratio(std.sub(v), std.sub(full))
            rows.append(dict(every=k, reuse=mode, mean=float(v.mean()), vs_standard=p_std.diff,
                             vs_standard_ci=[p_std.ci_low, p_std.ci_high], vs_standard_resolved=bool(p_std.resolved),
                             vs_full=p_full.diff, vs_full_ci=[p_full.ci_low, p_full.ci_high],
                             vs_full_resolved=bool(p_full.resolved), kept=q.estimate,
                             kept_ci=[q.ci_low, q.ci_high] if q.bounded else None))
    print(f"# {study.name}: {column}, seeds {seeds}; Standard {std.mean():.2f}, full GNP {full.mean():.2f}; "
          f"study ran reuse={ran}, this script trained reuse={other}\n")
    print("| k | reuse | mean | GNP(k) − Standard (95% CI) | GNP(k) − full GNP (95% CI) | share kept (95% CI) |")
    print("| ---: | --- | ---: | --- | --- | --- |")
    for r in rows:
        lo, hi = r["vs_standard_ci"]
        flo, fhi = r["vs_full_ci"]
        kept = (f"{100 * r['kept']:.0f}% ({100 * r['kept_ci'][0]:.0f}% to {100 * r['kept_ci'][1]:.0f}%)"
                if r["kept_ci"] else f"{100 * r['kept']:.0f}% (unbounded)")
        print(f"| {r['every']} | {r['reuse']} | {r['mean']:.2f} | {r['vs_standard']:+.2f} ({lo:+.2f} to {hi:+.2f})"
              f"{' resolved' if r['vs_standard_resolved'] else ''} | {r['vs_full']:+.2f} ({flo:+.2f} to {fhi:+.2f})"
              f"{' resolved' if r['vs_full_resolved'] else ''} | {kept} |")
    out = dict(study=study.name, column=column, seeds=seeds, ran=ran, rows=rows)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
