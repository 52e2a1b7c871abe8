"""A racing study with a confirmation stage through the real CLI and real Ray Tune: the races' trials and
decisions agree with the race rebuilt from the trials table, a diverging candidate is eliminated after its
first block, the confirmation stage runs the raced choices on fresh seeds and the tables are scored there,
the report shows the race, TensorBoard's event files hold every trial's per-epoch test error under its
readable name (stage, alpha, r, seed), and a driver killed inside a race and then inside the confirmation
stage resumes to the same trials."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest
import yaml

from gnp_study import protocol, racing
from gnp_study.results import CONFIRMATION, load_study, study_results_table
from gnp_study.spec import load_spec
from helpers import cli, completed_results, finish

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

RUN_TIMEOUT_S = 800

RACE = {
    "name": "tinyrace",
    "data": {"dataset": "digits", "augmentation": "none"},
    "model": {"name": "small_cnn"},
    "training": {"epochs": 2, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "stages": {
        "standard": {"space": {"lr": [0.05]}},
        "sam": {"r": [0.05, 0.1], "race": {"first_block": 2}},
        # alpha = -100 (an extra, figure only) mixes 101 g1 - 100 g2: its first-epoch training loss is ~10,
        # above divergence.max_loss (every other configuration is near 2): a diverged candidate
        "gnp": {"alpha": [0.5, 0.8], "alpha_extra": [-100.0], "figure2_r": [0.05], "race": {"first_block": 2}},
        # the three raced choices on two seeds no race saw
        "confirm": {"seeds": [3, 4]},
        # the chosen GNP with the second pass every 2 steps, on the confirmation seeds
        "cost": {"every": [1, 2]},
    },
    "divergence": {"max_loss": 5.0},
    "seeds": [0, 1, 2],
    "resources": {"cpus_per_trial": 1},
    "max_failures": 1,
}


@pytest.fixture(scope="module")
def race_run(ray_head, tmp_path_factory):
    d = tmp_path_factory.mktemp("race")
    study = d / "race.yaml"
    study.write_text(yaml.safe_dump(RACE))
    out = d / "study"
    proc = cli(["run", "greedy", str(study), "--output", str(out), "--address", ray_head])
    text = finish(proc, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, text[-4000:]
    return study, out, text


def test_race_trials_and_decisions_agree_with_the_rebuilt_race(race_run):
    study, out, _ = race_run
    spec = load_spec(study)
    trials = pd.read_parquet(out / "trials.parquet")
    decisions = json.loads((out / "decisions.json").read_text())
    assert not trials["trial_id"].duplicated().any()
    for stage in ("sam", "gnp"):
        t = trials[trials["stage"] == stage]
        res = racing.results_frame(t, "best_test_error")
        ran = set(zip(res["config_key"], res["seed"]))
        for race in protocol.stage_races(stage, spec, decisions):
            st = racing.replay(race, res)
            assert st.finished
            assert set(st.wanted) <= ran  # every trial the race asked for ran once
            # beyond them at most `lookahead` trials per block test started ahead
            extra = {x for x in ran if x[0] in race.candidates} - set(st.wanted)
            assert len(extra) <= len(st.tests) * race.config.lookahead
        dec = decisions[stage]
        assert "race" in dec and dec["race"]["trials_run"] == len(t)
        survivors = {k for r in dec["race"]["races"] for k, c in r["candidates"].items() if c["status"] == "survivor"}
        assert dec["config_key"] in survivors


def test_diverging_candidate_is_eliminated_after_its_first_block(race_run):
    _, out, _ = race_run
    trials = pd.read_parquet(out / "trials.parquet")
    gnp = trials[trials["stage"] == "gnp"]
    bad = gnp[gnp["alpha"] == -100.0]
    assert len(bad) and (bad["status"] == "diverged").all(), bad[["r", "seed", "status"]]
    races = json.loads((out / "decisions.json").read_text())["gnp"]["race"]["races"]
    for race in races:  # one race per r of stage 3
        (cand,) = [c for c in race["candidates"].values() if c["alpha"] == -100.0]
        assert cand["status"] == "eliminated" and cand["block"] == 1 and cand["reason"] == "diverged"
        assert cand["n_seeds"] == 2 and cand["seeds_run"] == int((bad["r"] == cand["r"]).sum()) <= 3
    # a race that ended with every seed gave its survivors all 3
    for race in races:
        if race["end_reason"] == "all seeds":
            assert {c["seeds_run"] for c in race["candidates"].values() if c["status"] == "survivor"} == {3}


def test_confirmation_runs_the_raced_choices_on_fresh_seeds_and_scores_the_tables(race_run):
    _, out, text = race_run
    trials = pd.read_parquet(out / "trials.parquet")
    decisions = json.loads((out / "decisions.json").read_text())
    chosen = {s: decisions[s]["config_key"] for s in ("standard", "sam", "gnp")}
    assert decisions["confirm"]["schemes"] == chosen
    conf = trials[trials["stage"] == "confirm"]
    assert sorted(zip(conf["config_key"], conf["seed"])) == sorted((k, s) for k in chosen.values() for s in (3, 4))
    assert (conf["status"] == "completed").all() and conf["epochs_run"].eq(2).all()
    assert "stage confirm: 6/6 trials done" in text
    table = study_results_table(load_study(out))
    assert table.attrs["seeds"] == CONFIRMATION
    for i, stage in enumerate(("standard", "sam", "gnp")):
        mine = conf[conf["config_key"] == chosen[stage]]["best_test_error"]
        assert table.loc[i, "mean"] == pytest.approx(mine.mean()) and int(table.loc[i, "n"]) == 2
    md = (out / "results.md").read_text()
    assert "confirmation seeds" in md and "Selection seeds" in md


def test_cost_stage_runs_the_chosen_gnp_amortised_on_the_confirmation_seeds(race_run):
    _, out, text = race_run
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    decisions = json.loads((out / "decisions.json").read_text())
    gnp = json.loads(decisions["gnp"]["config_key"])
    c = trials[trials["stage"] == "cost"]
    assert sorted(c["seed"]) == [3, 4] and (c["status"] == "completed").all()
    assert {json.loads(x)["every"] for x in c["config"]} == {2}
    assert all({k: v for k, v in json.loads(x).items() if k != "every"} == gnp for x in c["config"])
    rec = decisions["cost"]
    assert rec["seeds"] == [3, 4] and rec["reference"]["gnp"]["stage"] == "confirm"
    # measured passes: about 1.5 per step with the second pass every 2 steps (an epoch of an odd number of
    # steps has one more or one fewer full step), 2 for full GNP, 1 for Standard
    pps = epochs.groupby("trial_id")["passes_per_step"].mean()
    assert all(abs(pps[t] - 1.5) <= 0.05 for t in c["trial_id"]), pps
    conf = trials[trials["stage"] == "confirm"].set_index("config_key")["trial_id"]
    assert (pps[conf.loc[[decisions["standard"]["config_key"]]]] == 1.0).all()
    assert (pps[conf.loc[[decisions["gnp"]["config_key"]]]] == 2.0).all()
    assert "Cost of the second pass" in (out / "results.md").read_text()
    assert (out / "figure_cost.png").exists() and 'id="figure-cost"' in (out / "report.html").read_text()
    assert "GNP every 2 steps (1.5" in text or "GNP every 2 steps (1.4" in text


def test_report_shows_the_race(race_run):
    _, out, _ = race_run
    md = (out / "results.md").read_text()
    assert "Race" in md and "eliminated" in md
    assert "Race" in (out / "report.html").read_text()


def test_tensorboard_has_every_trials_test_error_under_its_readable_name(race_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, _ = race_run
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(trials) > 0
    for row in trials.itertuples():
        every = json.loads(row.config).get("every")
        prefix = f"{row.stage}_alpha={row.alpha:g}_r={row.r:g}{f'_every={every}' if every else ''}_seed={row.seed}_"
        dirs = [p for p in (out / "ray" / row.stage).iterdir() if p.is_dir() and p.name.startswith(prefix)]
        assert len(dirs) == 1, (prefix, [p.name for p in (out / "ray" / row.stage).iterdir()])
        ea = EventAccumulator(str(dirs[0]))
        ea.Reload()
        tags = ea.Tags()["scalars"]

        def logged(tag):
            return {int(e.step): e.value for e in ea.Scalars(tag)} if tag in tags else {}

        ep = epochs[epochs["trial_id"] == row.trial_id].set_index("epoch")
        assert len(ep) == row.epochs_run > 0
        # Tune's step is the report count: one report per epoch; an epoch whose test error is NaN (the
        # epoch a trial diverged is not evaluated) has no point, Tune's logger skips NaN
        for tag, col in (("ray/tune/test_error", "test_error"), ("ray/tune/train_loss", "train_loss")):
            want = ep[col].dropna()
            got = logged(tag)
            assert sorted(got) == sorted(int(e) for e in want.index), (dirs[0].name, tag)
            for epoch, v in want.items():
                assert got[int(epoch)] == pytest.approx(v, rel=1e-5, abs=1e-3)  # event files store float32
        if row.status == "completed":
            assert len(logged("ray/tune/test_error")) == row.epochs_run


@pytest.mark.timeout(3 * RUN_TIMEOUT_S)
def test_killed_race_and_confirmation_resume_to_the_same_trials(race_run, ray_head, tmp_path):
    """SIGKILL the driver in the middle of stage 2's race, run again: the race is rebuilt (Tune's snapshot
    and the searcher's table of ended trials) and ends with the same trials and numbers as without the kill.
    That second run is SIGKILLed inside the confirmation stage; a third run finishes it without running a
    decided stage or a finished confirmation trial again, with the same confirmation trials."""

    study, ref_out, _ = race_run
    out = tmp_path / "killed"
    args = ["run", "greedy", str(study), "--output", str(out), "--address", ray_head]
    proc = cli(args)
    deadline = time.time() + RUN_TIMEOUT_S
    killed = False
    for line in proc.stdout:  # ends when the driver's output closes
        if "stage sam (race): 3/" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert killed, "the driver never reached the third trial of stage 2"
    assert not (out / "decisions.json").exists() or "sam" not in json.loads((out / "decisions.json").read_text())
    # What a kill while Tune copies its snapshot to storage leaves (seen in CI: "EOFError: Ran out of input"
    # on restore): the searcher's saved state files cut to nothing. Made certain here, not left to timing.
    exp = out / "ray" / "sam"
    cut = [max(exp.glob(p)) for p in ("search_gen_state-*.json", "searcher-state-*.pkl") if list(exp.glob(p))]
    assert cut, "Tune saved no searcher state before the kill"
    for path in cut:
        path.write_bytes(b"")
    # The second run finishes the race, then is killed in turn inside the confirmation stage
    again = cli(args)
    lines, killed = [], False
    for line in again.stdout:
        lines.append(line)
        if "stage confirm: 2/6 trials done" in line:
            os.killpg(again.pid, signal.SIGKILL)
            killed = True
            break
        if time.time() > deadline + RUN_TIMEOUT_S:
            os.killpg(again.pid, signal.SIGKILL)
            break
    again.wait(timeout=60)
    text = "".join(lines)
    assert killed, "the second run never reached the second trial of the confirmation stage:\n" + text[-4000:]
    assert "Failed to restore" not in text and "Traceback" not in text, text[-4000:]
    assert all(p.name in text for p in cut), text[-4000:]  # said what it set aside, and where
    assert all((exp / "damaged-state" / p.name).exists() for p in cut)
    decided = json.loads((out / "decisions.json").read_text())
    assert {"standard", "sam", "gnp"} <= set(decided) and "confirm" not in decided
    finished_before = completed_results(out / "ray" / "confirm")
    assert finished_before, "no confirmation trial had finished at the kill"
    third = cli(args)
    text = finish(third, timeout=RUN_TIMEOUT_S)
    assert third.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert "stage sam" not in text and "stage gnp" not in text, text[-4000:]  # decided stages are not run again
    # confirmation trials that had finished were not trained again (Tune may repeat a final report from a
    # snapshot that predates the trial's end, never an epoch)
    for path, before in finished_before.items():
        after = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        assert after[: len(before)] == before, path
        assert all(x["epoch"] == before[-1]["epoch"] for x in after[len(before):]), f"{path} trained again"
    ref = pd.read_parquet(ref_out / "trials.parquet").set_index("trial_id")
    got = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    assert not got.index.duplicated().any()
    d_ref = json.loads((ref_out / "decisions.json").read_text())
    d_got = json.loads((out / "decisions.json").read_text())
    # Every trial a race wanted (its blocks up to each test) ran in both, with the same numbers. Beyond
    # them, which trials started ahead of a block test (race.lookahead) depends on which worker was free
    # when: such trials may differ between two runs, killed or not, and are then never wanted by the race.
    spec = load_spec(study)
    wanted = set()
    for stage in ("sam", "gnp"):
        res = racing.results_frame(ref[ref["stage"] == stage].reset_index(), "best_test_error")
        for race in protocol.stage_races(stage, spec, d_ref):
            wanted |= set(racing.replay(race, res).wanted)
    key = lambda t: (t["config_key"], int(t["seed"]))  # noqa: E731
    ref_w = {i for i, t in ref.iterrows() if key(t) in wanted}
    assert ref_w and ref_w <= set(got.index)
    cols = ["status", "best_test_error", "epochs_run"]
    common = sorted(set(ref.index) & set(got.index))
    pd.testing.assert_frame_equal(got.loc[common, cols], ref.loc[common, cols])
    assert all(key(t) not in wanted for i, t in pd.concat([ref, got]).iterrows() if i not in common)
    # the confirmation stage is not raced: the same six trials, with the same numbers
    conf_ref, conf_got = ref[ref["stage"] == "confirm"], got[got["stage"] == "confirm"]
    assert len(conf_ref) == 6 and sorted(conf_got.index) == sorted(conf_ref.index)
    assert d_got["confirm"] == d_ref["confirm"]

    def timing_free(races):  # the races without the counts of trials started ahead
        races = json.loads(json.dumps(races))
        for r in races:
            r.pop("trials_run")
            for c in r["candidates"].values():
                c.pop("seeds_run")
        return races

    for stage in ("sam", "gnp"):
        assert d_got[stage]["config_key"] == d_ref[stage]["config_key"]
        assert timing_free(d_got[stage]["race"]["races"]) == timing_free(d_ref[stage]["race"]["races"])
