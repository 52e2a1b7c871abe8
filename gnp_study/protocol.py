"""The greedy protocol of the paper as plain functions on data (no Ray, no torch).

Section 4.1 of Zhao, Zhang & Hu (2022):

1. ``standard`` (alpha = 0): find the standard hyper-parameters (a grid, or an Optuna search on one seed
   whose best configurations are then run over all seeds);
2. ``sam`` (alpha = 1, which is SAM by Eq. 10; the paper's text says zero by mistake): grid over r;
3. ``gnp``: grid over alpha at the best r, and at every r that has a Figure-2 panel.

:func:`plan` turns a stage into :class:`TrialConfig` objects, :func:`decide` picks a stage's winner from a
trials table. Every configuration runs over all seeds; the metric is the best test error seen during
training (paper mode) or the best validation error (validation mode, :func:`gnp_study.results.selection`);
seeds aggregate to mean +- std (:func:`gnp_study.results.aggregate_seeds`). A decision also says how sure
it is (:func:`gnp_study.stats`): each candidate's probability of being best, the margin to the runner-up
with its paired CI, and the candidates not distinguishable from the winner.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from gnp_study import racing, shrinkage, stats
from gnp_study.results import aggregate_seeds, selection
from gnp_study.spec import StudySpec, config_key  # noqa: F401  (config_key: part of this module's API)

STAGES = ("standard", "sam", "gnp")
#: The confirmation stage (``stages.confirm``): the three chosen configurations on fresh seeds.
CONFIRM = "confirm"
#: The cost stage (``stages.cost``): the chosen GNP configuration with an amortised second pass.
COST = "cost"
#: The stages after the three selection stages, in the order they run; none of them chooses anything.
POST_STAGES = (CONFIRM, COST)


def study_stages(spec: StudySpec) -> tuple[str, ...]:
    """The stages a study runs, in order: :data:`STAGES`, then ``confirm`` when ``stages.confirm`` is set,
    then ``cost`` when ``stages.cost`` is set."""
    return STAGES + tuple(s for s in POST_STAGES if getattr(spec.stages, s) is not None)


def cost_seeds(spec: StudySpec) -> list[int]:
    """The seeds of the cost stage: the confirmation seeds when the study has a confirmation stage (fresh
    seeds, unbiased by the choice of alpha and r), else the study's ``seeds``."""
    return list(spec.stages.confirm.seeds) if spec.stages.confirm is not None else list(spec.seeds)


def cost_reference(spec: StudySpec, decisions: dict) -> dict[str, dict]:
    """Where the cost stage finds Standard and full GNP on its seeds: ``{"standard": {"stage": ...,
    "config_key": ...}, "gnp": {...}}``, the confirmation stage's trials when the study has one, else the
    selection stages' (those of the chosen configurations).

    Raises:
        ProtocolError: a selection stage is not decided.
    """
    configs = confirm_configs(decisions)
    stage_of = {s: (CONFIRM if spec.stages.confirm is not None else s) for s in ("standard", "gnp")}
    return {s: {"stage": stage_of[s], "config_key": config_key(configs[s])} for s in ("standard", "gnp")}


def confirm_configs(decisions: dict) -> dict[str, dict]:
    """The configuration each scheme chose, ``{"standard": config, "sam": config, "gnp": config}``, as the
    confirmation stage runs them (the decisions' ``config``, alpha and r included).

    Raises:
        ProtocolError: a selection stage is not decided.
    """
    missing = [s for s in STAGES if s not in decisions]
    if missing:
        raise ProtocolError(f"stage {CONFIRM!r} needs the decisions of {', '.join(missing)} first")
    return {s: dict(decisions[s]["config"]) for s in STAGES}


class ProtocolError(RuntimeError):
    """A stage cannot be planned or decided (e.g. every configuration diverged)."""


@dataclass(frozen=True)
class TrialConfig:
    """One trial: a configuration of one stage and one seed.

    Attributes:
        stage: ``"standard"``, ``"sam"`` or ``"gnp"``.
        config: the hyper-parameters that differ from the study's training recipe, always including
            ``alpha`` (balance coefficient, Eq. 10) and ``r`` (perturbation radius, Algorithm 1 line 5).
        seed: the random seed (int).
    """

    stage: str
    config: dict = field(hash=False)
    seed: int

    @property
    def config_key(self) -> str:
        return config_key(self.config)

    @property
    def trial_id(self) -> str:
        """Deterministic id: ``<stage>-<8 hex of the configuration>-s<seed>``."""
        digest = hashlib.sha1(self.config_key.encode()).hexdigest()[:8]
        return f"{self.stage}-{digest}-s{self.seed}"

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready) with ``trial_id`` and ``config_key`` added."""
        d = asdict(self)
        d["trial_id"] = self.trial_id
        d["config_key"] = self.config_key
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        return cls(stage=d["stage"], config=dict(d["config"]), seed=int(d["seed"]))


def _grid(space: dict[str, list]) -> list[dict]:
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def _over_seeds(stage: str, configs: list[dict], seeds: list[int]) -> list[TrialConfig]:
    return [TrialConfig(stage, dict(c), s) for c in configs for s in seeds]


def standard_configs(spec: StudySpec) -> list[dict]:
    """The stage-1 grid: one dict per configuration (alpha = 0, r = 0 added).

    Raises:
        ProtocolError: the stage is an Optuna search (its configurations come from the search).
    """
    st = spec.stages.standard
    if st.search != "grid":
        raise ProtocolError("stage 'standard' is an Optuna search: its configurations come from the search")
    return [dict(c, alpha=0.0, r=0.0) for c in _grid(st.space)] if st.space else [{"alpha": 0.0, "r": 0.0}]


def gnp_r_values(spec: StudySpec, best_r: float) -> list[float]:
    """The r values of stage 3: the best r first, then each Figure-2 r not equal to it."""
    return [best_r] + [r for r in spec.stages.gnp.figure2_r if r != best_r]


def plan(stage: str, spec: StudySpec, decisions: dict, standard_candidates: list[dict] | None = None
         ) -> list[TrialConfig]:
    """The trials of one stage.

    Args:
        stage: one of :data:`STAGES`.
        spec: the validated study.
        decisions: the decisions of earlier stages (``decisions.json`` content): ``sam`` needs
            ``decisions["standard"]``, ``gnp`` needs ``standard`` and ``sam``.
        standard_candidates: for an Optuna stage 1, the configurations the search chose to run over all
            seeds (dicts of searched fields); ignored otherwise.

    Returns:
        The list of :class:`TrialConfig`, configurations in grid order, seeds innermost.

    Raises:
        ProtocolError: an earlier decision is missing, or the stage name is unknown.

    Stage ``confirm`` runs the three chosen configurations (:func:`confirm_configs`) on
    ``stages.confirm.seeds``; stage ``cost`` runs the chosen GNP configuration with ``every = k`` for each
    k > 1 of ``stages.cost.every`` on :func:`cost_seeds`.
    """
    seeds = list(spec.seeds)
    if stage == "standard":
        if spec.stages.standard.search == "optuna":
            if not standard_candidates:
                raise ProtocolError("an Optuna stage 1 needs the candidates found by the search")
            configs = [dict(c, alpha=0.0, r=0.0) for c in standard_candidates]
        else:
            configs = standard_configs(spec)
        return _over_seeds(stage, configs, seeds)
    if "standard" not in decisions:
        raise ProtocolError(f"stage {stage!r} needs the decision of stage 'standard' first")
    base = {k: v for k, v in decisions["standard"]["config"].items() if k not in ("alpha", "r")}
    if stage == "sam":
        return _over_seeds(stage, [dict(base, alpha=1.0, r=r) for r in spec.stages.sam.r], seeds)
    if stage == "gnp":
        if "sam" not in decisions:
            raise ProtocolError("stage 'gnp' needs the decision of stage 'sam' first")
        rs = gnp_r_values(spec, decisions["sam"]["r"])
        alphas = spec.stages.gnp.all_alpha()
        return _over_seeds(stage, [dict(base, alpha=a, r=r) for r in rs for a in alphas], seeds)
    if stage == COST:
        if spec.stages.cost is None:
            raise ProtocolError("the study has no cost stage (stages.cost)")
        gnp = confirm_configs(decisions)["gnp"]
        ks = [k for k in spec.stages.cost.every if k != 1]  # k = 1 is full GNP: its trials are reused
        return _over_seeds(stage, [dict(gnp, every=k) for k in ks], cost_seeds(spec))
    if stage == CONFIRM:
        if spec.stages.confirm is None:
            raise ProtocolError("the study has no confirmation stage (stages.confirm)")
        # One configuration once: GNP choosing alpha = 1 at SAM's r is SAM, and shares its trials.
        unique = {config_key(c): c for c in confirm_configs(decisions).values()}
        return _over_seeds(stage, list(unique.values()), list(spec.stages.confirm.seeds))
    raise ProtocolError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def count_trials(spec: StudySpec, n_seeds: int | None = None) -> dict[str, int]:
    """Trials per stage and in total, before anything runs (Figure-2 r assumed distinct from best r
    unless the r grid has one value).

    Args:
        spec: the study.
        n_seeds: price the study with this many seeds instead of ``len(spec.seeds)`` (``plan --seeds``);
            the Optuna search of stage 1 runs on one seed either way.

    Returns:
        ``{"standard": n1, "standard_search": n0, "sam": n2, "gnp": n3, "confirm": n4, "cost": n5,
        "total": n}`` where ``standard_search`` is the Optuna search on one seed (0 for a grid), ``confirm``
        the confirmation stage at most (3 configurations on its seeds; 0 without one; ``n_seeds`` does not
        change it) and ``cost`` the cost stage (one configuration per k > 1 on :func:`cost_seeds`).
    """
    st = spec.stages.standard
    n_seeds = len(spec.seeds) if n_seeds is None else int(n_seeds)
    if n_seeds < 1:
        raise ProtocolError(f"seeds: need at least 1, got {n_seeds}")
    if st.search == "optuna":
        search, n1 = st.num_samples, min(st.top_k, st.num_samples) * n_seeds
    else:
        search, n1 = 0, len(standard_configs(spec)) * n_seeds
    n2 = len(spec.stages.sam.r) * n_seeds
    f2 = spec.stages.gnp.figure2_r
    # Worst case: the best r is not a Figure-2 r (one more alpha grid); best case it is one of them.
    n_r_max = len(set(f2)) + (0 if set(spec.stages.sam.r) <= set(f2) else 1)
    n3 = len(spec.stages.gnp.all_alpha()) * n_seeds * max(1, n_r_max)
    n4 = 3 * len(spec.stages.confirm.seeds) if spec.stages.confirm is not None else 0
    n5 = 0
    if spec.stages.cost is not None:
        seeds = len(spec.stages.confirm.seeds) if spec.stages.confirm is not None else n_seeds
        n5 = sum(k != 1 for k in spec.stages.cost.every) * seeds
    return {"standard_search": search, "standard": n1, "sam": n2, "gnp": n3, "confirm": n4, "cost": n5,
            "total": search + n1 + n2 + n3 + n4 + n5}


def confirm_record(trials: pd.DataFrame, spec: StudySpec, decisions: dict) -> dict:
    """The ``decisions.json`` entry of the confirmation stage (nothing is chosen there: it records which
    trials score each scheme).

    Args:
        trials: the trials table (rows of stage ``confirm`` are used); spec: the study; decisions: the three
            selection decisions.

    Returns:
        ``{"seeds": [...], "schemes": {"standard": config_key, "sam": ..., "gnp": ...}, "n": {scheme:
        completed seeds}, "metric": the report column}``.

    Raises:
        ProtocolError: a selection stage is not decided, or no confirmation trial completed for a scheme.
    """
    sel = selection(spec)
    df = trials[trials["stage"] == CONFIRM]
    keys = {s: config_key(c) for s, c in confirm_configs(decisions).items()}
    done = {s: int(((df["config_key"] == k) & (df["status"] == "completed")).sum()) for s, k in keys.items()}
    empty = [s for s, n in done.items() if n == 0]
    if empty:
        raise ProtocolError(f"no confirmation trial of {', '.join(empty)} completed: the confirmation seeds "
                            f"cannot score it; see the trials' errors in trials.parquet")
    return {"seeds": list(spec.stages.confirm.seeds), "schemes": keys, "n": done, "metric": sel.report_column}


def cost_record(trials: pd.DataFrame, spec: StudySpec, decisions: dict) -> dict:
    """The ``decisions.json`` entry of the cost stage (nothing is chosen there: it records which trials
    hold each k).

    Args:
        trials: the trials table; spec: the study; decisions: the selection decisions (and ``confirm``).

    Returns:
        ``{"seeds": [...], "reference": {"standard": {"stage", "config_key"}, "gnp": {...}}, "every":
        [{"every": k, "stage": ..., "config_key": ..., "n": completed seeds}, ...] (k ascending; k = 1 is
        the reference GNP), "metric": the report column}``.

    Raises:
        ProtocolError: a selection stage is not decided.
    """
    ref = cost_reference(spec, decisions)
    gnp = confirm_configs(decisions)["gnp"]
    rows = []
    for k in spec.stages.cost.every:
        where = ref["gnp"] if k == 1 else {"stage": COST, "config_key": config_key(dict(gnp, every=k))}
        t = trials[(trials["stage"] == where["stage"]) & (trials["config_key"] == where["config_key"])
                   & trials["seed"].isin(cost_seeds(spec))]
        rows.append({"every": int(k), **where, "n": int((t["status"] == "completed").sum())})
    return {"seeds": cost_seeds(spec), "reference": ref, "every": rows, "metric": selection(spec).report_column}


def _rank(agg: pd.DataFrame, sign: float = 1.0) -> pd.DataFrame:
    """The candidates (rows of :func:`gnp_study.results.aggregate_seeds`, grid order) ordered by the choice
    rule, :func:`gnp_study.stats.choice_order` (``sign`` -1: the highest mean first)."""
    return agg.iloc[stats.choice_order(agg["n_diverged"] + agg["n_failed"], agg["mean"], sign)]


def _candidates(agg: pd.DataFrame) -> list[dict]:
    cols = ["config_key", "alpha", "r", "mean", "std", "sem", "ci_low", "ci_high", "n", "n_seeds", "n_diverged",
            "n_failed"]
    out = []
    for row in agg[cols].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return out




def _certainty(df: pd.DataFrame, agg: pd.DataFrame, candidates: list[dict], best_key: str, metric: str,
               sign: float = 1.0) -> dict:
    """The fields of a decision that say how sure it is; fills ``prob_best`` and ``vs_winner`` into
    ``candidates`` (in place) and returns ``margin``, ``indistinguishable`` and ``prob_best_method``."""
    ok = df["status"] == "completed"
    keys = agg["config_key"].tolist()
    values = (df.assign(_v=df[metric].astype(float).where(ok))
              .pivot_table(index="seed", columns="config_key", values="_v", aggfunc="first", dropna=False)
              .reindex(columns=keys))
    bad = (df.assign(_b=df["status"].isin(["diverged", "failed"]))
           .pivot_table(index="seed", columns="config_key", values="_b", aggfunc="max", dropna=False)
           .reindex(index=values.index, columns=keys).fillna(False).astype(bool))
    pb = stats.prob_best(values, bad, sign)
    best_values = values[best_key]
    indistinguishable = []
    for c in candidates:
        p = float(pb[c["config_key"]])
        c["prob_best"] = p if math.isfinite(p) else None
        if c["config_key"] == best_key:
            c["vs_winner"] = None
            continue
        cmp = stats.paired(values[c["config_key"]], best_values)
        c["vs_winner"] = cmp.to_dict()
        if (c.get("n") or 0) > 0 and not cmp.resolved:
            indistinguishable.append(c["config_key"])
    ranked = [k for k in _rank(agg, sign).query("n > 0")["config_key"] if k != best_key]
    margin = None
    if ranked:
        ru = ranked[0]
        mean_of = dict(zip(agg["config_key"], agg["mean"]))
        margin = {"runner_up": ru, "mean_difference": float(mean_of[ru] - mean_of[best_key]),
                  "paired": stats.paired(values[ru], best_values).to_dict()}
    return {
        "margin": margin,
        "indistinguishable": indistinguishable,
        "prob_best_method": {"draws": shrinkage.DRAWS, "seed": shrinkage.SEED, "spike": shrinkage.SPIKE,
                             "method": shrinkage.METHOD},
    }


def stage_races(stage: str, spec: StudySpec, decisions: dict) -> list[racing.Race]:
    """The races of a racing stage given the earlier decisions: :func:`gnp_study.racing.races_from_configs`
    on the configurations of :func:`plan` (stage 3's best r first).

    Raises:
        ValueError: the stage does not race in ``spec``.
    """
    configs = list({tc.config_key: tc.config for tc in plan(stage, spec, decisions)}.values())
    best_r = decisions["sam"]["r"] if stage == "gnp" else None
    return racing.races_from_configs(stage, configs, spec, best_r)


def decide(stage: str, trials: pd.DataFrame, spec: StudySpec, decisions: dict | None = None) -> dict:
    """Choose the winner of a stage from its trials.

    The winner has the lowest mean error over seeds among the configurations with the fewest diverged or
    failed seeds; a configuration whose seeds all diverged or failed is never chosen. The error is the
    study's decision column (:func:`gnp_study.results.selection`): ``best_test_error`` in paper mode,
    ``best_val_error`` in validation mode, ``best_<name>`` with a study ``metric`` (with ``mode: max``
    the highest mean wins, the probability of being best is of the highest true mean, and the decision
    carries ``"direction": "max"``). In
    stage ``gnp`` only the selectable grid (``stages.gnp.alpha``) at the best r competes (the extras B_a
    and B_b and the other Figure-2 r values are run for the figures).

    Args:
        stage: one of :data:`STAGES`.
        trials: the trials table (``trials.parquet`` schema); rows of other stages are ignored.
        spec: the study.
        decisions: earlier decisions (``gnp`` needs ``decisions["sam"]["r"]``).

    Returns:
        A JSON-ready dict: ``config`` (the winning configuration), ``config_key``, ``mean``, ``std`` (None
        with one completed seed), ``n``, ``n_seeds``, ``selection`` (``"paper"`` or ``"validation"``),
        ``metric`` (the column decided on), ``candidates`` (every competing configuration, ranked, each with
        ``mean``, ``std``, ``sem``, ``ci_low``, ``ci_high``, ``n``..., ``prob_best`` (posterior probability of
        having the lowest true mean, :func:`gnp_study.stats.prob_best`; None when it cannot be estimated) and ``vs_winner`` (the candidate minus the winner,
        paired over the seeds both completed, :meth:`gnp_study.stats.Paired.to_dict`; None for the
        winner)), ``margin`` (``runner_up`` config_key, ``mean_difference`` runner-up minus winner, and
        ``paired``: that difference paired by seed with its 95% CI; None with a single eligible
        candidate), ``indistinguishable`` (config_keys of the candidates with a completed seed whose paired
        95% CI against the winner includes 0 or cannot be computed: fewer than 2 paired seeds) and
        ``prob_best_method`` (draws, seed, prior, method); plus ``r`` for ``sam`` and ``alpha`` and ``r`` for ``gnp``.
        A racing stage (``stages.<stage>.race``) decides among the race's survivors on the seeds the race
        asked for (:func:`gnp_study.racing.survivor_trials`) and adds ``race``
        (:func:`gnp_study.racing.summary`: seeds per candidate, where each was eliminated, the test).

    Raises:
        ProtocolError: no trial of the stage, every configuration diverged or failed, or the trials lack
            the decision column.
    """
    df = trials[trials["stage"] == stage]
    sel = selection(spec)
    df, race = _decision_trials(stage, df, spec, decisions, sel)
    agg = _rank(aggregate_seeds(df, sel.decide_column), sel.sign)
    best = _winner(stage, agg, df)
    config = json.loads(best["config_key"])
    candidates = _candidates(agg)
    out = {
        "config": config,
        "config_key": best["config_key"],
        "mean": float(best["mean"]),
        "std": float(best["std"]) if math.isfinite(float(best["std"])) else None,
        "n": int(best["n"]),
        "n_seeds": int(best["n_seeds"]),
        "selection": sel.mode,
        "metric": sel.decide_column,
        "candidates": candidates,
    }
    if sel.direction == "max":  # a study's metric where higher is better (absent: lower is better)
        out["direction"] = "max"
    out.update(_certainty(df, agg, candidates, best["config_key"], sel.decide_column, sel.sign))
    if race is not None:
        out["race"] = race
    if stage == "sam":
        out["r"] = float(config["r"])
    if stage == "gnp":
        out["alpha"] = float(config["alpha"])
        out["r"] = float(config["r"])
    return out


def _decision_trials(stage: str, df: pd.DataFrame, spec: StudySpec, decisions: dict | None, sel
                     ) -> tuple[pd.DataFrame, dict | None]:
    """The trials a stage decides from, and its race summary.

    Takes the stage, its trials (``df``: rows of that stage), the study, the earlier decisions and the
    study's :func:`gnp_study.results.selection`. A racing stage keeps the candidates the race kept, on the
    seeds it asked for (:func:`gnp_study.racing.survivor_trials`); stage ``gnp`` keeps the selectable grid
    at the best r. Returns those trials and the race's :func:`gnp_study.racing.summary` (None when the
    stage does not race).

    Raises:
        ProtocolError: no trial is left, or the trials lack the decision column.
    """
    race = None
    if stage in ("sam", "gnp") and df is not None and len(df) and racing.race_config(spec, stage) is not None:
        # A racing stage decides among the candidates the race kept, on the seeds it asked for.
        races = stage_races(stage, spec, decisions or {})
        race = racing.summary(stage, df, races, sel.race_metric)
        df = racing.survivor_trials(stage, df, races, sel.race_metric)
    if stage == "gnp":
        best_r = (decisions or {})["sam"]["r"]
        df = df[(df["r"] == best_r) & df["alpha"].isin(spec.stages.gnp.alpha)]
    if df.empty:
        raise ProtocolError(f"stage {stage!r} has no trials to decide from")
    if sel.decide_column not in df.columns:
        raise ProtocolError(f"stage {stage!r} decides on {sel.decide_column!r} ({sel.mode} mode) but the trials "
                            f"table has no such column")
    return df, race


def _winner(stage: str, agg: pd.DataFrame, df: pd.DataFrame) -> pd.Series:
    """The first eligible row (a completed seed) of the ranked candidates ``agg`` (:func:`_rank`) of the
    stage's trials ``df``.

    Raises:
        ProtocolError: every configuration of the stage diverged or failed (when every trial failed, the
            message quotes the first trial's error: no trial trained, a fault rather than divergence).
    """
    eligible = agg[agg["n"] > 0]
    if eligible.empty:
        failed = df[df["status"] == "failed"] if "status" in df.columns else df.iloc[:0]
        if len(failed) == len(df) and "error" in df.columns:
            first = str(failed["error"].iloc[0]).strip().splitlines()
            raise ProtocolError(f"every trial of stage {stage!r} failed ({len(df)} trials); the first one's "
                                f"error: {first[-1] if first else '(none recorded)'}")
        raise ProtocolError(f"every configuration of stage {stage!r} diverged or failed "
                            f"({int(agg['n_seeds'].sum())} trials): nothing to choose; lower the learning "
                            f"rate or check the failed trials' errors in trials.parquet")
    return eligible.iloc[0]
