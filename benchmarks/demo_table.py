"""The README's demo table, built from a finished demo study with the package's own results code.

    python benchmarks/demo_table.py [STUDY_FOLDER]            # print the table (default reports/digits_label_noise)
    python benchmarks/demo_table.py [STUDY_FOLDER] --write    # also store its trials and rewrite README's block
    python benchmarks/demo_table.py --check                   # README's block equals the table of docs/demo/?

The table (Scheme / Configuration / Test error % mean ± std / vs Standard, paired 95% CI) comes from
:func:`gnp_study.results.results_table` and :func:`gnp_study.results.comparisons`, the functions that
write ``results.md``, on the study's report column and the seeds that score it (the confirmation seeds
when the study has them). ``--write`` stores what the table is computed from in ``docs/demo/``:
``trials.csv`` (the scoring trials only, with the columns the results code reads) and ``decisions.json``
(each stage's chosen configuration and the confirmation record), then replaces the lines between
``<!-- demo-table:start -->`` and ``<!-- demo-table:end -->`` in README.md. ``tests/test_readme.py``
recomputes the table from ``docs/demo/`` and compares it with README, so the table cannot go stale
silently.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gnp_study import results  # noqa: E402
from gnp_study.stats import fmt_signed  # noqa: E402

README = ROOT / "README.md"
STORE = ROOT / "docs" / "demo"
TRIALS_CSV, DECISIONS_JSON = "trials.csv", "decisions.json"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
DEFAULT_STUDY = ROOT / "reports" / "digits_label_noise"

#: trials.parquet columns the results table and the paired comparisons read (plus the report column).
TRIAL_COLUMNS = ["trial_id", "stage", "config_key", "alpha", "r", "seed", "status"]


def _scoring_rows(trials: pd.DataFrame, decisions: dict[str, Any], metric: str) -> pd.DataFrame:
    """The trials that score the three chosen configurations (the rows the table is computed from)."""
    source = results.scored_on(decisions)
    keep = pd.Series(False, index=trials.index)
    for stage, _ in results.SCHEMES:
        t_stage, key = results._scheme_trials(decisions, stage, source)
        if key is not None:
            keep |= (trials["stage"] == t_stage) & (trials["config_key"] == key)
    return trials.loc[keep, TRIAL_COLUMNS + [metric]].reset_index(drop=True)


def _decisions_subset(decisions: dict[str, Any], metric: str) -> dict[str, Any]:
    """What the table needs of decisions.json: each stage's choice and the confirmation record."""
    out: dict[str, Any] = {"metric": metric}
    for stage, _ in results.SCHEMES:
        d = decisions.get(stage)
        if isinstance(d, dict):
            out[stage] = {k: d[k] for k in ("config", "config_key", "r", "alpha") if k in d}
    confirm = decisions.get("confirm")
    if isinstance(confirm, dict):
        out["confirm"] = {k: confirm[k] for k in ("seeds", "schemes") if k in confirm}
    return out


def from_study(study_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(scoring trials, decisions subset) of a finished study folder, read with ``load_study``."""
    study = results.load_study(study_dir)
    metric = results.selection(study.spec).report_column
    return _scoring_rows(study.trials, study.decisions, metric), _decisions_subset(study.decisions, metric)


def from_store(store: str | Path = STORE) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(trials, decisions) as stored by ``--write`` in ``docs/demo/``."""
    store = Path(store)
    decisions = json.loads((store / DECISIONS_JSON).read_text(encoding="utf-8"))
    trials = pd.read_csv(store / TRIALS_CSV,
                         dtype={"trial_id": str, "stage": str, "config_key": str, "status": str})
    return trials, decisions


def table_markdown(trials: pd.DataFrame, decisions: dict[str, Any]) -> str:
    """The README's demo table (Markdown lines, no trailing newline)."""
    metric = decisions["metric"]
    table = results.results_table(trials, decisions, metric=metric)
    comps = results.comparisons(trials, decisions, metric)
    if table.attrs.get("seeds") == results.CONFIRMATION:
        seeds = f"{len(decisions['confirm']['seeds'])} confirmation seeds"
    else:
        seeds = f"{int(table['n_seeds'].max())} selection seeds"
    lines = [f"| Scheme | Configuration | Test error % (mean ± std, {seeds}) | vs Standard, paired 95% CI |",
             "| --- | --- | --- | --- |"]
    for _, row in table.iterrows():
        cell = ""
        if row["scheme"] != "Standard":
            p = comps[(row["scheme"], "Standard")]
            if p is None or p.n < 2:
                cell = "n/a"
            else:
                cell = (f"{fmt_signed(p.diff)} points ({fmt_signed(p.ci_low)} to {fmt_signed(p.ci_high)}): "
                        + ("resolved" if p.resolved else "not resolved"))
        config = re.sub(r"\s*=\s*", " = ", row["configuration"])
        lines.append(f"| {row['scheme']} | {config} | {row['test_error']} | {cell} |".replace("|  |", "| |"))
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The lines between the demo-table markers of README's text (stripped)."""
    try:
        start = text.index(START) + len(START)
        end = text.index(END, start)
    except ValueError:
        raise ValueError(f"README.md lacks the markers {START} ... {END}") from None
    return text[start:end].strip("\n")


def write(trials: pd.DataFrame, decisions: dict[str, Any], store: Path = STORE, readme: Path = README) -> None:
    """Store trials and decisions in ``store`` and rewrite README's block with their table."""
    store.mkdir(parents=True, exist_ok=True)
    trials.to_csv(store / TRIALS_CSV, index=False)
    (store / DECISIONS_JSON).write_text(json.dumps(decisions, indent=1) + "\n", encoding="utf-8")
    stored_trials, stored_decisions = from_store(store)
    table = table_markdown(stored_trials, stored_decisions)
    text = readme.read_text(encoding="utf-8")
    old = readme_block(text)
    start = text.index(START) + len(START)
    end = text.index(END, start)
    readme.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")
    print(f"wrote {store / TRIALS_CSV}, {store / DECISIONS_JSON}; README block "
          f"{'unchanged' if old == table else 'rewritten'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", nargs="?", default=str(DEFAULT_STUDY),
                    help="finished study folder (default: reports/digits_label_noise, what `make demo` writes)")
    ap.add_argument("--write", action="store_true",
                    help="store the table's trials in docs/demo/ and rewrite README's demo-table block")
    ap.add_argument("--check", action="store_true",
                    help="compare README's block with the table of docs/demo/ (no study folder read); exit 1 "
                         "when they differ")
    args = ap.parse_args(argv)
    if args.check:
        want = table_markdown(*from_store())
        got = readme_block(README.read_text(encoding="utf-8"))
        if got != want:
            print("README's demo table differs from the table of docs/demo/:\n" + want)
            return 1
        print("README's demo table matches docs/demo/")
        return 0
    try:
        trials, decisions = from_study(args.study)
    except results.StudyFolderError as e:
        print(f"demo_table: {e}", file=sys.stderr)
        return 2
    print(table_markdown(trials, decisions))
    if args.write:
        write(trials, decisions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
