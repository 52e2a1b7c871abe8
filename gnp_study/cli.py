"""The ``gnp-study`` command line.

Verbs: ``run greedy`` (run or resume a study), ``plan`` (count trials and estimate cost without
training), ``report`` (rebuild tables, figures and report.html from a study folder), ``init`` (write a
starting study file for a model and data), ``validate`` (check a study file), and the cluster verbs ``submit``, ``status``, ``logs``, ``stop``.
Bad input (a study file, a data folder, a study folder) prints one message and exits with status 2.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def cmd_run_greedy(args: argparse.Namespace) -> int:
    from gnp_study.api import run_greedy_study
    from gnp_study.study_folder import FIGURE2_PNG, FIGURE3_PNG, REPORT_HTML, RESULTS_MD

    _, out = run_greedy_study(args.study, args.output, address=args.address, new=args.new, build_report=True)
    print_summary(out)
    for name in (RESULTS_MD, FIGURE2_PNG, FIGURE3_PNG, REPORT_HTML):
        print(f"  {out}/{name}")
    return 0


def summary_lines(study_dir: str | Path) -> list[str]:
    """The console summary of a finished (or partly run) study: the results table's three rows with their
    mean ± std and 95% CI, then the verdicts in words (:func:`gnp_study.results.verdict_lines`).

    Args:
        study_dir: the study folder (a storage URI is read from its local mirror).

    Returns:
        Lines of text.

    Raises:
        StudyFolderError: the folder holds no readable study.
    """
    from gnp_study.cost import cost_lines, study_cost
    from gnp_study.results import label_noise_text, load_study, study_results_table, verdict_lines

    if "://" in str(study_dir):
        from gnp_study.runner import _mirror_dir

        study_dir = _mirror_dir(str(study_dir).rstrip("/"))
    study = load_study(study_dir)
    table = study_results_table(study)
    verdicts = verdict_lines(study, table)
    lines = [f"[gnp-study] {study.name}: {verdicts[0]}"]
    if label_noise_text(study.spec):
        lines.append(f"  {label_noise_text(study.spec)}")
    for _, row in table.iterrows():
        ci = f", 95% CI {row['ci95']}" if row["ci95"] not in ("", "n/a") else ""
        lines.append(f"  {row['scheme']:<8} {row['configuration']:<28} {row['test_error']}{ci} "
                     f"({int(row['n'])}/{int(row['n_seeds'])} seeds)")
    lines += [f"  - {v}" for v in verdicts[1:]]
    cost = study_cost(study)
    if cost is not None:
        lines.append("  Cost of the second pass (amortised GNP, every k steps):")
        lines += [f"  - {v}" for v in cost_lines(*cost)]
    if any("seeds would resolve" in v for v in verdicts):
        lines.append("  (gnp-study plan STUDY --seeds N prices a run with N seeds)")
    return lines


def print_summary(study_dir: str | Path) -> None:
    """Print :func:`summary_lines` to stdout."""
    for line in summary_lines(study_dir):
        print(line)


def cmd_validate(args: argparse.Namespace) -> int:
    from gnp_study.api import load_study

    spec = load_study(args.study)
    print(f"{args.study or 'digits'}: valid study {spec.name!r}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from gnp_study.api import init_study

    out = init_study(args.out, args.model, args.data, root=args.root, code_dir=args.code_dir, name=args.name,
                     force=args.force)
    print(f"{out}: a valid starting study; edit it, then: gnp-study plan {out} --measure, "
          f"gnp-study run greedy {out}")
    return 0


def _measure_epoch(spec) -> float:
    """Seconds of one standard (alpha = 0) epoch of the study's first configuration, measured here."""
    from gnp_study.protocol import plan
    from gnp_study.train import train_trial

    one = spec.model_copy(deep=True)
    one.training.epochs = 1
    if spec.stages.standard.search == "grid":
        trial = plan("standard", one, {})[0]
    else:
        from gnp_study.protocol import TrialConfig

        trial = TrialConfig("standard", {"alpha": 0.0, "r": 0.0}, spec.seeds[0])
    seen: dict = {}
    train_trial(one, trial.to_dict(), lambda m, s: seen.update(m))
    return float(seen["epoch_time_s"])


def cmd_plan(args: argparse.Namespace) -> int:
    from gnp_study.api import load_study
    from gnp_study.protocol import count_trials

    facts: dict = {}
    spec = load_study(args.study, facts, check_data=args.check_data)
    n_seeds = len(spec.seeds) if args.seeds is None else args.seeds
    counts = count_trials(spec, n_seeds)
    ep = spec.training.epochs
    seeds_text = (f"{n_seeds} seeds" if args.seeds is None else
                  f"{n_seeds} seeds (--seeds; the study file has {len(spec.seeds)})")
    print(f"study {spec.name!r}: {spec.model.name} on {spec.data.dataset} ({spec.data.augmentation}), "
          f"{ep} epochs, {seeds_text}")
    print(f"  model           : {facts['parameters']:,} parameters, {facts['num_classes']} classes")
    if "n_train" in facts:
        print(f"  data            : {facts['n_train']} training, {facts['n_test']} test, {facts['n_val']} validation "
              f"samples; one sample {tuple(facts['sample_shape'])} {facts['sample_dtype']}")
    reported = spec.metric.name if spec.metric is not None else "test_error"
    if "function" in facts:
        print(f"  training        : your function {facts['function']} (it reports {reported} each epoch)")
    if spec.metric is not None:
        better = "higher" if spec.metric.mode == "max" else "lower"
        print(f"  decides on      : each trial's best {reported} over its epochs ({spec.metric.mode}: {better} "
              f"is better)")
    if counts["standard_search"]:
        print(f"  stage 1 search : {counts['standard_search']:5d} trials (Optuna TPE on seed {spec.seeds[0]})")
    print(f"  stage 1 standard: {counts['standard']:5d} trials (alpha = 0)")
    print(f"  stage 2 sam     : {counts['sam']:5d} trials (alpha = 1, r in {spec.stages.sam.r})")
    n_alpha, fig2 = len(spec.stages.gnp.all_alpha()), spec.stages.gnp.figure2_r
    print(f"  stage 3 gnp     : {counts['gnp']:5d} trials at most ({n_alpha} alpha{'s' if n_alpha != 1 else ''} "
          f"at the best r" + (f" and at each Figure-2 r in {fig2})" if fig2 else ")"))
    if counts["confirm"]:
        cs = spec.stages.confirm.seeds
        print(f"  confirm         : {counts['confirm']:5d} trials at most (the 3 chosen configurations on "
              f"{len(cs)} fresh seeds {cs})")
    if counts["cost"]:
        ks = [k for k in spec.stages.cost.every if k != 1]
        print(f"  cost            : {counts['cost']:5d} trials (the chosen GNP with the second pass every k in "
              f"{ks} steps, on {counts['cost'] // len(ks)} seeds; k = 1 reuses full GNP's trials)")
    print(f"  total           : {counts['total']:5d} trials at most")
    _print_race_bounds(spec, counts, args.seeds)
    epoch_time = args.epoch_time
    source = "given"
    if epoch_time is None and args.measure:
        epoch_time, source = _measure_epoch(spec), "measured here"
    if epoch_time is None:
        print("  (add --epoch-time SECONDS or --measure for an estimate of trial-hours / GPU hours)")
    else:
        # alpha = 0 takes one forward-backward pass per step, every other trial two (Algorithm 1), or
        # 1 + 1/k with the second pass every k steps (training.every, the cost stage's k).
        one_pass = (counts["standard_search"] + counts["standard"]) * ep * epoch_time
        # the confirmation stage: Standard (one pass) and SAM, GNP (two) on its seeds
        n_conf = counts["confirm"] // 3
        one_pass += n_conf * ep * epoch_time
        passes = 1 + 1 / spec.training.every
        two_pass = (counts["sam"] + counts["gnp"] + 2 * n_conf) * ep * passes * epoch_time
        if counts["cost"]:
            ks = [k for k in spec.stages.cost.every if k != 1]
            two_pass += sum(counts["cost"] // len(ks) * ep * (1 + 1 / k) * epoch_time for k in ks)
        hours = (one_pass + two_pass) / 3600
        gpu = spec.resources.gpus_per_trial
        print(f"  estimate        : {hours:.1f} trial-hours at {epoch_time:g} s per standard epoch ({source}); "
              + (f"{hours * gpu:.1f} GPU hours at {gpu:g} GPU per trial" if gpu else
                 f"{hours * spec.resources.cpus_per_trial:.1f} CPU hours (CPU trials)"))
    return 0


def _print_race_bounds(spec, counts: dict, seeds_arg: int | None) -> None:
    """The racing stages' bounds under the plan's counts (:func:`gnp_study.racing.plan_bounds`): the fixed
    protocol's count, the fewest trials (all but one candidate out after the first block) and the most."""
    from gnp_study import racing

    raced = [(s, racing.plan_bounds(s, spec)) for s in racing.RACE_STAGES]
    raced = [(s, b) for s, b in raced if b is not None]
    if not raced:
        return
    if seeds_arg is not None:
        print(f"  (race bounds below use the study file's {len(spec.seeds)} seeds, not --seeds)")
    fixed_23 = counts["sam"] + counts["gnp"]
    lo_23 = hi_23 = fixed_23
    for stage, (fixed, fewest, most) in raced:
        cfg = racing.race_config(spec, stage)
        print(f"  race {stage:<11}: {fewest}..{most} trials instead of {fixed} (first block {cfg.first_block} "
              f"seeds, then {cfg.block} per block; {cfg.correction} at level {cfg.level:g}"
              + (f"; extra seeds {list(cfg.extra_seeds)}" if cfg.extra_seeds else "") + ")")
        if seeds_arg is None:
            lo_23 += fewest - fixed
            hi_23 += most - fixed
    if seeds_arg is None:
        print(f"  stages 2-3     : {lo_23}..{hi_23} trials racing, {fixed_23} with the fixed protocol")


def cmd_report(args: argparse.Namespace) -> int:
    from gnp_study.report import build_outputs

    paths = build_outputs(Path(args.study_dir), error_bars=args.error_bars)
    for p in paths.values():
        print(p)
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error, exit status 2)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 seed, got {v}")
    return v


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (a usage error, exit status 2, otherwise)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"an epoch takes more than 0 seconds, got {text}")
    return v


def _add_init_parser(sub) -> None:
    """Add the ``init`` command (:func:`cmd_init`) to the subparsers ``sub`` of :func:`build_parser`."""
    ini = sub.add_parser(
        "init", help="write a starting study file for your model and data",
        description=("Write a starting study file for a model and a data set, every key commented and the greedy "
                     "stages explained, after checking it as 'validate' does (the model is built, the data read "
                     "once): an invalid study is not written. Edit it, then run 'plan' and 'run greedy' on it."))
    ini.add_argument("out", metavar="OUT.yaml", help="the study file to write")
    ini.add_argument("--model", required=True, metavar="M",
                     help="model.name: a registry name (e.g. small_cnn, resnet20, wrn28_10), torchvision:<name>, "
                          "timm:<name>, or an import path package.module:attribute to your nn.Module class or "
                          "factory")
    ini.add_argument("--data", required=True, metavar="D",
                     help="data.dataset: a registry name (e.g. digits, cifar10), imagefolder, or an import path "
                          "package.module:function returning your (train, test) Datasets")
    ini.add_argument("--root", default=None, metavar="PATH",
                     help="data.root: the data set's folder (written as given; a relative one is read from where "
                          "gnp-study runs)")
    ini.add_argument("--code-dir", default=None, metavar="DIR",
                     help="the folder holding your package (relative to here; written relative to OUT's folder); "
                          "default: OUT's folder")
    ini.add_argument("--name", default=None, help="the study's name (default: from OUT's file name)")
    ini.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    ini.set_defaults(func=cmd_init)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``gnp-study`` with every verb."""
    p = argparse.ArgumentParser(prog="gnp-study", description=(
        "Run the greedy parameter study of 'Penalizing Gradient Norm for Efficiently Improving "
        "Generalization in Deep Learning' (Zhao, Zhang & Hu, ICML 2022) as Ray Tune trials."))
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = sub.add_parser("run", help="run a study", description="Run a study.")
    run_sub = run.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    g = run_sub.add_parser(
        "greedy", help="run or resume the greedy protocol (standard -> SAM r grid -> GNP alpha grid)",
        description=(
            "Run the paper's greedy protocol (Section 4.1) as Ray Tune trials: stage 1 standard training "
            "(alpha = 0), stage 2 the r grid with alpha = 1 (SAM), stage 3 the alpha grid at the best r and "
            "at each Figure-2 r; every configuration over all seeds. Writes to the study folder: study.yaml, "
            "trials.parquet, epochs.parquet, decisions.json, run_info.json, results.md, results.csv, "
            "figure2.png, figure3.png, report.html, and Ray's experiment storage under ray/. Running the same "
            "command again on the same folder resumes it."))
    g.add_argument("study", nargs="?", default=None,
                   help="study YAML file or the name of one in search_spaces/ (default: digits)")
    g.add_argument("--output", "-o", default=None, help="study folder (default: reports/<study name>/)")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (auto, ray://HOST:10001, HOST:6379); default RAY_ADDRESS, "
                        "else Ray starts locally on 127.0.0.1")
    g.add_argument("--new", action="store_true",
                   help="use a new study folder (<output>-<timestamp>) instead of resuming")
    g.set_defaults(func=cmd_run_greedy)

    pl = sub.add_parser("plan", help="count trials per stage and estimate the cost, without training",
                        description="Print the trials per stage and in total, and an estimate of trial-hours "
                                    "(GPU hours when trials use GPUs) from a given or measured epoch time. "
                                    "Writes nothing.")
    pl.add_argument("study", nargs="?", default=None, help="study YAML file or name (default: digits)")
    how = pl.add_mutually_exclusive_group()
    how.add_argument("--epoch-time", type=_positive_seconds, default=None, metavar="S",
                     help="seconds per standard epoch of one trial")
    how.add_argument("--measure", action="store_true", help="measure one standard epoch here (needs the data)")
    pl.add_argument("--check-data", action="store_true", help="also check that the data folder is there")
    pl.add_argument("--seeds", type=_positive_int, default=None, metavar="N",
                    help="price the study with N seeds instead of the study file's (e.g. the seeds a verdict "
                         "says would resolve a comparison)")
    pl.set_defaults(func=cmd_plan)

    _add_init_parser(sub)

    v = sub.add_parser("validate", help="validate a study file and its data folder",
                       description="Validate a study file (keys, types, ranges, names) and check its data "
                                   "folder. Writes nothing.")
    v.add_argument("study", nargs="?", default=None)
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("report", help="rebuild tables, figures and report.html from a study folder",
                       description="Rebuild results.md, results.csv, figure2.png, figure3.png and report.html "
                                   "in a study folder from its stored tables, without Ray or training.")
    r.add_argument("study_dir", help="the study folder")
    r.add_argument("--error-bars", choices=("ci", "std"), default="ci",
                   help="Figure 2's error bars and band: the 95%% CI of the mean over seeds (ci, default) or "
                        "± 1 std over seeds (std)")
    r.set_defaults(func=cmd_report)

    try:
        from gnp_study.jobs import add_job_commands
    except ImportError:  # pragma: no cover - cluster verbs not installed
        pass
    else:
        add_job_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gnp-study`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    from gnp_study.api import user_errors
    from gnp_study.runner import StudyInterrupted

    try:
        return int(args.func(args) or 0)
    except StudyInterrupted as e:
        print(f"gnp-study: interrupted: {e}", file=sys.stderr)
        return 130
    except user_errors() as e:
        print(f"gnp-study: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gnp-study: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``gnp-study`` console script and ``python -m gnp_study``: run :func:`main` on ``sys.argv`` and exit
    the process with its status.

    Raises:
        SystemExit: always, with :func:`main`'s status (0, 2 for bad input, 130 when interrupted).

    Before exiting, every object still alive moves to the garbage collector's permanent generation
    (``gc.freeze``): with torch and Ray loaded, the full collection Python runs while it shuts down walks
    millions of objects that are freed right after anyway (about 1 s after a study, with the machine
    otherwise idle; 0.3 s instead of 1.4 s measured after a Ray Tune run). Everything else of a normal exit
    still happens: ``atexit`` handlers (Ray's shutdown), finalizers, flushing and closing files.
    """
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    entry()
