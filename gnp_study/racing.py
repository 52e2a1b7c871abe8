"""Racing stages: spend seeds where the decision is still open (pure data code: no Ray, no torch).

A race (F-Race, Birattari et al. 2002; irace, López-Ibáñez et al. 2016) evaluates candidates on a growing
set of instances and drops a candidate as soon as a test says it is worse than the best. Here the
candidates are the configurations of a stage (stage 2: the r grid; stage 3: the alphas at one r) and the
instances are seeds, in the order of the study's ``seeds`` list (then ``race.extra_seeds``).

The race, block by block:

1. every candidate runs the first ``first_block`` seeds;
2. when every trial of the block has ended, the *reference* is chosen by the stage's own choice rule
   (:func:`gnp_study.protocol.decide`: fewest diverged or failed seeds, then lowest mean, then grid order)
   among the selectable candidates still in the race, on the seeds raced so far;
3. every other candidate still in the race is compared with the reference seed by seed
   (:func:`gnp_study.stats.paired`, paired t over the seeds both completed). The one-sided p-value that the
   candidate is worse (from the two-sided paired t p-value ``p_t``: ``p_t / 2`` when its mean difference is
   positive, else ``1 - p_t / 2``) is corrected for the number of comparisons of the block with **Holm's**
   step-down method (default) or Bonferroni (``correction``). Holm controls the family-wise error rate at
   ``level`` like Bonferroni does, under any dependence between the comparisons (they share the reference,
   so they are correlated), and never eliminates fewer candidates; Bonferroni is offered for a simpler
   statement. A comparison with fewer than 2 paired seeds, or with every difference 0 (a tie), has no
   p-value and never eliminates;
4. **a diverged (or failed) seed counts as a loss**: a candidate that diverged or failed on a raced seed
   where the reference completed is eliminated at that block without a test (the choice rule ranks
   fewest diverged seeds first, so it could only win if the reference diverged too);
5. the race ends when one candidate is left, when every survivor has every seed, or when the next block
   would take the race past ``max_trials`` (default: the fixed protocol's count, candidates x study
   seeds). With ``extra_seeds`` and a ``max_trials`` the survivors get seeds the fixed protocol never
   runs: the trials the race saved buy resolution where the decision is still open.

In stage 3 every r of the stage races on its own (one race per r); the selectable alphas
(``stages.gnp.alpha``) and the extras B_a, B_b (``alpha_extra``) race together, but only a selectable alpha
can be the reference, so an extra is dropped when it is worse than the best selectable alpha at that r and
never eliminates a selectable one. The decision at the best r is made among the survivors only
(:func:`survivor_trials`).

Everything here is a function of the trials table: :func:`replay` rebuilds the race (which trials it has
asked for, who is eliminated at which block by which test) from the trials that ended, so a resumed
stage continues the same race, and the trials started ahead of a block test (``lookahead``) never change
which candidates are eliminated (a block test only reads the seeds of the blocks up to it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from gnp_study import stats
from gnp_study.spec import config_key

#: Stages that can race (stage 1 always runs its grid over every seed).
RACE_STAGES = ("sam", "gnp")
CORRECTIONS = ("holm", "bonferroni")
#: Trial statuses that count as a loss for the candidate (see the module docstring, point 4).
BAD = ("diverged", "failed")


@dataclass(frozen=True)
class RaceConfig:
    """How a stage races (``stages.<stage>.race`` of the study file).

    Attributes:
        first_block: seeds every candidate runs before the first test (>= 2: a paired t needs 2 pairs).
        block: seeds added to every survivor after each test (>= 1).
        level: family-wise significance level of one block's eliminations (0.05).
        correction: ``"holm"`` or ``"bonferroni"``.
        max_trials: trial budget of one race (None: candidates x study seeds, the fixed protocol's count).
        extra_seeds: seeds after the study's seeds that survivors may get within ``max_trials``.
        lookahead: trials of the next block that may start, leader first, while the current block's last
            trials run (0: wait for every block test).
    """

    first_block: int = 2
    block: int = 1
    level: float = 0.05
    correction: str = "holm"
    max_trials: int | None = None
    extra_seeds: tuple = ()
    lookahead: int = 1

    @classmethod
    def from_spec(cls, race) -> "RaceConfig":
        """From a :class:`gnp_study.spec.RaceSpec` (or a plain dict of the same fields)."""
        d = race if isinstance(race, dict) else race.model_dump()
        d = dict(d)
        d["extra_seeds"] = tuple(d.get("extra_seeds") or ())
        return cls(**d)


@dataclass(frozen=True)
class Race:
    """One race: candidates (config keys, grid order) raced over ``seeds``.

    Attributes:
        name: ``"sam"`` or ``"gnp r=0.05"``.
        candidates: config keys in grid order.
        selectable: the keys that may be the reference (and win).
        seeds: seeds in race order (study seeds, then extra seeds).
        config: the :class:`RaceConfig`.
        max_trials: the resolved trial budget of this race.
    """

    name: str
    candidates: tuple
    selectable: frozenset
    seeds: tuple
    config: RaceConfig
    max_trials: int

    @property
    def fixed_trials(self) -> int:
        """Trials of the fixed protocol for these candidates: candidates x study seeds (no extra seeds)."""
        return len(self.candidates) * (len(self.seeds) - len(self.config.extra_seeds))

    def bounds(self) -> tuple[int, int]:
        """``(fewest, most)`` trials the race can take: every candidate's first block (all but one
        eliminated at the first test), and the budget or every candidate on every seed."""
        first = min(self.config.first_block, len(self.seeds))
        return len(self.candidates) * first, min(self.max_trials, len(self.candidates) * len(self.seeds))


@dataclass
class Elimination:
    """Why and when a candidate left the race.

    Attributes:
        key: the candidate's config key. block: the block (1-based) whose test eliminated it.
        n_seeds: seeds raced at that block. reason: ``"test"`` or ``"diverged"``.
        reference: config key of the reference at that block.
        n_pairs, diff: paired seeds and mean paired difference (candidate minus reference, points).
        p: one-sided p-value (candidate worse); threshold: the level it was compared with after the
        correction (Holm: level / (m - i) for the i-th smallest of m p-values).
    """

    key: str
    block: int
    n_seeds: int
    reason: str
    reference: str
    n_pairs: int = 0
    diff: float = float("nan")
    p: float = float("nan")
    threshold: float = float("nan")


@dataclass
class BlockTest:
    """One block's test: ``n_seeds`` raced, the reference, the comparisons (key -> dict with n_pairs,
    diff, p, threshold, eliminated) and the candidates eliminated."""

    block: int
    n_seeds: int
    reference: str | None
    comparisons: dict = field(default_factory=dict)
    eliminated: list = field(default_factory=list)


@dataclass
class RaceState:
    """What a race looks like given the trials that ended (:func:`replay`).

    Attributes:
        race: the :class:`Race`.
        alive: keys still in the race (grid order).
        eliminated: key -> :class:`Elimination`.
        tests: the block tests done, in order.
        wanted: every (key, seed) trial the race has asked for so far, in order (blocks in order).
        lookahead: (key, seed) trials of the next block, leader first, that may start before the current
            block's test (empty when the race is finished or the next block would pass the budget).
        finished: the race is over; end_reason: ``"one left"``, ``"all seeds"`` or ``"budget"``.
        n_seeds: seeds raced at the last test (0 before the first).
    """

    race: Race
    alive: list
    eliminated: dict
    tests: list
    wanted: list
    lookahead: list
    finished: bool
    end_reason: str | None
    n_seeds: int

    def missing(self, ended: set) -> list:
        """The wanted trials not in ``ended`` (a set of (key, seed)), in order."""
        return [t for t in self.wanted if t not in ended]


# ---------------------------------------------------------------------------------------- the test
def one_sided_p(cmp: stats.Paired) -> float:
    """One-sided p-value that ``a`` (the candidate) has the higher error than ``b`` (the reference), from
    the two-sided paired t-test of :func:`gnp_study.stats.paired`: ``p_t / 2`` when the mean difference is
    positive, ``1 - p_t / 2`` otherwise; NaN when the test has no p-value (fewer than 2 pairs, or every
    difference 0)."""
    if cmp.n < 2 or not math.isfinite(cmp.p_t):
        return float("nan")
    return cmp.p_t / 2 if cmp.diff > 0 else 1 - cmp.p_t / 2


def corrected_rejections(pvalues: dict, level: float, correction: str) -> dict:
    """Which null hypotheses a family of p-values rejects at family-wise level ``level``.

    Args:
        pvalues: key -> p-value (NaN: no test, never rejected, but counted in the family size).
        level: the family-wise level (0.05).
        correction: ``"holm"`` (Holm 1979, step-down: sort ascending, reject the i-th smallest (0-based) while
            p <= level / (m - i), stop at the first that is not) or ``"bonferroni"`` (p <= level / m).

    Returns:
        key -> (rejected: bool, threshold: float), the threshold each p-value was compared with (for Holm
        the one of its rank; NaN p-values get the last threshold).

    Raises:
        ValueError: an unknown correction.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    m = len(pvalues)
    if m == 0:
        return {}
    if correction == "bonferroni":
        return {k: (bool(math.isfinite(p) and p <= level / m), level / m) for k, p in pvalues.items()}
    order = sorted(pvalues, key=lambda k: (not math.isfinite(pvalues[k]), pvalues[k] if math.isfinite(pvalues[k])
                                           else 0.0))
    out, stopped = {}, False
    for i, k in enumerate(order):
        thr = level / (m - i)
        p = pvalues[k]
        ok = (not stopped) and math.isfinite(p) and p <= thr
        stopped = stopped or not ok
        out[k] = (ok, thr)
    return out


def _rank(keys: list, values: pd.DataFrame, bad: pd.DataFrame, order: dict) -> list:
    """Keys ordered by the choice rule (:func:`gnp_study.stats.choice_order`: fewest bad seeds, then lowest
    mean of the completed ones, keys without one last, then grid order ``order``)."""
    keys = sorted(keys, key=order.__getitem__)
    means = [float(values[k].mean()) for k in keys]  # NaN without a completed seed (placed last)
    return [keys[i] for i in stats.choice_order([int(bad[k].sum()) for k in keys], means)]


def _tables(results: pd.DataFrame, keys: list, seeds: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, bad): one row per seed, one column per key; value NaN unless completed."""
    values = pd.DataFrame(np.nan, index=list(seeds), columns=list(keys), dtype=float)
    bad = pd.DataFrame(False, index=list(seeds), columns=list(keys), dtype=bool)
    if len(results):
        sub = results[results["config_key"].isin(keys) & results["seed"].isin(seeds)]
        for k, s, st, v in zip(sub["config_key"], sub["seed"], sub["status"], sub["value"]):
            if st == "completed" and v == v:
                values.loc[int(s), k] = float(v)
            elif st in BAD:
                bad.loc[int(s), k] = True
    return values, bad


def block_test(race: Race, alive: list, seeds: list, results: pd.DataFrame, block: int) -> BlockTest:
    """The elimination test after one block (module docstring, points 2-4).

    Args:
        race: the race; alive: keys in the race at this block (grid order); seeds: the seeds raced so far.
        results: ended trials (columns config_key, seed, status, value).
        block: the block number (1-based), recorded.

    Returns:
        The :class:`BlockTest` (its ``eliminated`` lists the keys that leave the race).
    """
    order = {k: i for i, k in enumerate(race.candidates)}
    values, bad = _tables(results, alive, seeds)
    sel = [k for k in alive if k in race.selectable and values[k].notna().any()]
    test = BlockTest(block=block, n_seeds=len(seeds), reference=None)
    if not sel:
        return test
    ref = _rank(sel, values, bad, order)[0]
    test.reference = ref
    ref_ok = values[ref].notna()
    pvals = {}
    for k in alive:
        if k == ref:
            continue
        lost = bad[k] & ref_ok
        if lost.any():
            test.comparisons[k] = {"n_pairs": 0, "diff": None, "p": None, "threshold": None, "eliminated": True,
                                   "reason": "diverged", "seeds_lost": [int(s) for s in lost[lost].index]}
            continue
        cmp = stats.paired(values[k], values[ref])
        p = one_sided_p(cmp)
        pvals[k] = p
        test.comparisons[k] = {"n_pairs": cmp.n, "diff": cmp.diff if math.isfinite(cmp.diff) else None,
                               "p": p if math.isfinite(p) else None, "threshold": None, "eliminated": False,
                               "reason": "test"}
    for k, (rej, thr) in corrected_rejections(pvals, race.config.level, race.config.correction).items():
        test.comparisons[k]["threshold"] = thr
        test.comparisons[k]["eliminated"] = rej
    test.eliminated = [k for k in alive if k in test.comparisons and test.comparisons[k]["eliminated"]]
    return test


# --------------------------------------------------------------------------------------- the race
def oriented(metric: str, value):
    """A race's value of ``value`` (a number or a column): races are lower-is-better, so a metric written
    ``"-best_accuracy"`` (higher is better, :attr:`gnp_study.results.Selection.race_metric`) is negated."""
    return -value if metric.startswith("-") else value


def results_frame(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The columns a race reads from a trials table (``trials.parquet`` schema): config_key, seed, status,
    and ``value`` = the decision metric (``best_test_error``, ``best_val_error``, a study's ``best_<name>``;
    negated when ``metric`` is written with a leading ``-``, see :func:`oriented`)."""
    if trials is None or not len(trials):
        return pd.DataFrame(columns=["config_key", "seed", "status", "value"])
    out = trials[["config_key", "seed", "status"]].copy()
    out["seed"] = out["seed"].astype(int)
    col = metric.lstrip("-")
    out["value"] = oriented(metric, trials[col].astype(float)) if col in trials.columns else np.nan
    return out.reset_index(drop=True)


def replay(race: Race, results: pd.DataFrame) -> RaceState:
    """Rebuild a race from the trials that ended.

    Args:
        race: the :class:`Race`.
        results: ended trials (:func:`results_frame`): rows of other candidates or seeds are ignored.

    Returns:
        The :class:`RaceState`: the race runs block by block as long as every trial of a block has ended;
        the first block with a trial missing is where it stands (``finished`` False, ``wanted`` lists that
        block's trials and those before).
    """
    cfg = race.config
    seeds = list(race.seeds)
    ended = set(zip(results["config_key"], results["seed"].astype(int))) if len(results) else set()
    order = {k: i for i, k in enumerate(race.candidates)}
    alive = list(race.candidates)
    n = min(cfg.first_block, len(seeds))
    wanted = [(k, s) for k in alive for s in seeds[:n]]
    eliminated, tests = {}, []
    block = 1
    while True:
        if any(t not in ended for t in wanted):
            values, bad = _tables(results, alive, seeds[:n])
            m = min(cfg.block, len(seeds) - n)
            ahead = []
            if m > 0 and len(alive) > 1 and len(wanted) + len(alive) * m <= race.max_trials:
                ranked = _rank(alive, values, bad, order)
                ahead = [(k, s) for k in ranked for s in seeds[n:n + m]]
            return RaceState(race, alive, eliminated, tests, wanted, ahead, False, None, tests[-1].n_seeds if tests
                             else 0)
        test = block_test(race, alive, seeds[:n], results, block)
        tests.append(test)
        for k in test.eliminated:
            c = test.comparisons[k]
            eliminated[k] = Elimination(k, block, n, c["reason"], test.reference, c["n_pairs"],
                                        c["diff"] if c["diff"] is not None else float("nan"),
                                        c["p"] if c["p"] is not None else float("nan"),
                                        c["threshold"] if c["threshold"] is not None else float("nan"))
        alive = [k for k in alive if k not in test.eliminated]
        reason = None
        m = min(cfg.block, len(seeds) - n)
        if len(alive) <= 1:
            reason = "one left"
        elif m == 0:
            reason = "all seeds"
        elif len(wanted) + len(alive) * m > race.max_trials:
            reason = "budget"
        if reason:
            return RaceState(race, alive, eliminated, tests, wanted, [], True, reason, n)
        wanted = wanted + [(k, s) for k in alive for s in seeds[n:n + m]]
        n += m
        block += 1


# ------------------------------------------------------------------------------------- from a study
def race_config(spec, stage: str) -> RaceConfig | None:
    """The :class:`RaceConfig` of a stage of a study (a ``StudySpec`` or the resolved ``study.yaml``
    dict), or None when the stage runs the fixed protocol."""
    if stage not in RACE_STAGES:
        return None
    if isinstance(spec, dict):
        race = ((spec.get("stages") or {}).get(stage) or {}).get("race")
    else:
        race = getattr(getattr(spec.stages, stage), "race", None)
    return None if race is None else RaceConfig.from_spec(race)


def races_from_configs(stage: str, configs: list[dict], spec, best_r: float | None = None) -> list[Race]:
    """The races of a stage from its configurations (grid order, one dict per configuration with ``alpha``
    and ``r``).

    Args:
        stage: ``"sam"`` (one race over r) or ``"gnp"`` (one race per r; selectable: ``stages.gnp.alpha``).
        configs: the stage's configurations (:func:`gnp_study.protocol.plan`, one per configuration).
        spec: the study (``StudySpec`` or resolved dict) with ``stages.<stage>.race`` set.
        best_r: stage 3's best r (its race comes first); ignored for ``sam``.

    Returns:
        The races, deciding race first. Raises ValueError when the stage does not race.
    """
    cfg = race_config(spec, stage)
    if cfg is None:
        raise ValueError(f"stage {stage!r} has no race in the study")
    seeds = spec["seeds"] if isinstance(spec, dict) else spec.seeds
    all_seeds = tuple(int(s) for s in list(seeds) + list(cfg.extra_seeds))

    def make(name, cfgs, selectable):
        keys = tuple(dict.fromkeys(config_key(c) for c in cfgs))
        budget = cfg.max_trials if cfg.max_trials is not None else len(keys) * len(seeds)
        return Race(name, keys, frozenset(selectable), all_seeds, cfg, int(budget))

    if stage == "sam":
        return [make("sam", configs, [config_key(c) for c in configs])]
    if isinstance(spec, dict):
        grid = [float(a) for a in spec["stages"]["gnp"]["alpha"]]
    else:
        grid = [float(a) for a in spec.stages.gnp.alpha]
    rs = list(dict.fromkeys(float(c["r"]) for c in configs))
    if best_r is not None and best_r in rs:
        rs = [best_r] + [r for r in rs if r != best_r]
    out = []
    for r in rs:
        at = [c for c in configs if float(c["r"]) == r]
        out.append(make(f"gnp r={r:g}", at, [config_key(c) for c in at if float(c["alpha"]) in grid]))
    return out


def survivor_trials(stage: str, trials: pd.DataFrame, races: list[Race], metric: str) -> pd.DataFrame:
    """The trials of a racing stage that the decision reads: eliminated candidates removed, and only the
    seeds the race asked for (a trial started ahead of a block test that then did not run is left out).

    Args:
        stage: the racing stage; trials: the trials table (other stages' rows are kept as they are);
        races: the stage's races (:func:`gnp_study.protocol.stage_races`); metric: the decision column.

    Returns:
        ``trials`` without the rows the races did not keep."""
    df = trials[trials["stage"] == stage]
    res = results_frame(df, metric)
    keep = set()
    for race in races:
        st = replay(race, res)
        keep |= {t for t in st.wanted if t[0] not in st.eliminated}
    mask = [(k, int(s)) in keep for k, s in zip(trials["config_key"], trials["seed"])]
    other = (trials["stage"] != stage).to_numpy()
    return trials[np.asarray(mask, dtype=bool) | other]


def summary(stage: str, trials: pd.DataFrame, races: list[Race], metric: str) -> dict:
    """JSON-ready account of a stage's races (:func:`gnp_study.protocol.stage_races`), stored as
    ``decisions[stage]["race"]``; ``metric`` is the decision column.

    Returns:
        ``{"config": RaceConfig fields, "trials_run": n, "fixed_trials": n, "races": [...]}`` where each race
        has ``name``, ``end_reason``, ``n_seeds`` (seeds raced at the last test), ``trials_run``,
        ``fixed_trials``, ``bounds`` [fewest, most], ``tests`` (per block: n_seeds, reference, comparisons)
        and ``candidates`` (per config_key: alpha, r, selectable, seeds_run (trials that ended, any status),
        status ``"survivor"``/``"eliminated"``, block, reason, reference, diff, p, threshold).
    """
    cfg = races[0].config
    df = trials[trials["stage"] == stage]
    res = results_frame(df, metric)
    out = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
           "test": ("one-sided paired t-test (candidate worse than the reference) over the seeds both completed, "
                    f"{cfg.correction} correction over the block's comparisons at family-wise level {cfg.level:g}; "
                    "a diverged or failed seed where the reference completed eliminates without a test"),
           "races": []}
    total = fixed = 0
    for race in races:
        st = replay(race, res)
        run = res[res["config_key"].isin(race.candidates)]
        n_run = int(len(run))
        total += n_run
        fixed += race.fixed_trials
        cands = {}
        for k in race.candidates:
            c = json.loads(k)
            e = st.eliminated.get(k)
            cands[k] = {"alpha": float(c["alpha"]), "r": float(c["r"]), "selectable": k in race.selectable,
                        "seeds_run": int((run["config_key"] == k).sum()),
                        "status": "eliminated" if e else "survivor"}
            if e:
                cands[k].update({"block": e.block, "n_seeds": e.n_seeds, "reason": e.reason,
                                 "reference": e.reference, "n_pairs": e.n_pairs,
                                 "diff": None if not math.isfinite(e.diff) else e.diff,
                                 "p": None if not math.isfinite(e.p) else e.p,
                                 "threshold": None if not math.isfinite(e.threshold) else e.threshold})
        out["races"].append({
            "name": race.name, "finished": st.finished, "end_reason": st.end_reason, "n_seeds": st.n_seeds,
            "trials_run": n_run, "fixed_trials": race.fixed_trials, "bounds": list(race.bounds()),
            "tests": [{"block": t.block, "n_seeds": t.n_seeds, "reference": t.reference,
                       "comparisons": t.comparisons} for t in st.tests],
            "candidates": cands,
        })
    out["trials_run"], out["fixed_trials"] = total, fixed
    return out


def plan_bounds(stage: str, spec, n_configs_by_r: dict | None = None) -> tuple[int, int, int] | None:
    """``(fixed, fewest, most)`` trials of a racing stage before anything runs, or None when the stage does
    not race.

    Args:
        stage: ``"sam"`` or ``"gnp"``; spec: the ``StudySpec``.
        n_configs_by_r: for ``gnp``, the number of alphas raced per r (default: every alpha at the number of
            r values :func:`gnp_study.protocol.count_trials` assumes, the worst case).
    """
    cfg = race_config(spec, stage)
    if cfg is None:
        return None
    n_seeds, n_all = len(spec.seeds), len(spec.seeds) + len(cfg.extra_seeds)
    if stage == "sam":
        groups = [len(spec.stages.sam.r)]
    else:
        f2 = spec.stages.gnp.figure2_r
        n_r = len(set(f2)) + (0 if set(spec.stages.sam.r) <= set(f2) else 1)
        groups = [len(spec.stages.gnp.all_alpha())] * max(1, n_r)
    fixed = sum(g * n_seeds for g in groups)
    first = min(cfg.first_block, n_all)
    fewest = sum(g * first for g in groups)
    most = sum(min(cfg.max_trials if cfg.max_trials is not None else g * n_seeds, g * n_all) for g in groups)
    return fixed, fewest, most
