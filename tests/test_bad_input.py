"""Bad input: each case gives one clear message naming the field or file, exit status 2, no trial
started, and no existing result file changed (a long study must survive a bad edit)."""

from __future__ import annotations

import copy
import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml

from gnp_study.cli import main
from gnp_study.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
DIGITS = yaml.safe_load((ROOT / "search_spaces" / "digits.yaml").read_text())


def study_with(**changes) -> dict:
    """The digits study with dotted-path changes (``None`` deletes the key)."""
    raw = yaml.safe_load(yaml.safe_dump(DIGITS))
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is _DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return raw


_DELETE = object()

# (case id, study file content (dict or raw text), text the message must contain)
SPEC_CASES = [
    ("unknown-dataset", study_with(data__dataset="cifar11"), "data.dataset"),
    ("unknown-model", study_with(model__name="resnet9000"), "model.name"),
    ("unknown-augmentation", study_with(data__augmentation="mixup9"), "data.augmentation"),
    ("r-zero", study_with(stages__sam__r=[0.0, 0.05]), "r"),
    ("r-negative", study_with(stages__sam__r=[-0.05]), "r"),
    ("r-nan", study_with(stages__sam__r=[float("nan")]), "stages.sam.r"),
    ("r-inf", study_with(stages__sam__r=[float("inf")]), "finite"),
    ("r-empty", study_with(stages__sam__r=[]), "empty grid"),
    ("r-duplicate", study_with(stages__sam__r=[0.05, 0.05]), "duplicate"),
    ("alpha-empty", study_with(stages__gnp__alpha=[]), "empty grid"),
    ("alpha-duplicate", study_with(stages__gnp__alpha=[0.8, 0.8]), "duplicate"),
    ("alpha-nan", study_with(stages__gnp__alpha=[float("nan")]), "finite"),
    ("alpha-overlap", study_with(stages__gnp__alpha_extra=[0.8]), "share"),
    ("lr-grid-empty", study_with(stages__standard__space={"lr": []}), "space.lr"),
    ("lr-grid-duplicate", study_with(stages__standard__space={"lr": [0.1, 0.1]}), "duplicate"),
    ("space-not-searchable", study_with(stages__standard__space={"epochs": [1, 2]}), "not searchable"),
    ("zero-seeds", study_with(seeds=[]), "seeds"),
    ("duplicate-seeds", study_with(seeds=[1, 1]), "seeds"),
    ("epochs-zero", study_with(training__epochs=0), "training.epochs"),
    ("batch-size-zero", study_with(training__batch_size=0), "training.batch_size"),
    ("lr-negative", study_with(training__lr=-0.1), "training.lr"),
    ("wrong-type", study_with(training__batch_size="big"), "training.batch_size"),
    ("unknown-key-typo", study_with(trainng={"epochs": 3}), "trainng: unknown key"),
    ("unknown-nested-key", study_with(training__learning_rate=0.1), "training.learning_rate"),
    ("missing-key", study_with(model=_DELETE), "model"),
    ("yaml-syntax", "name: x\ntraining: {epochs: 3\nseeds: [0\n", "YAML syntax error"),
    ("not-a-mapping", "- just\n- a list\n", "mapping"),
    ("figure2-r-not-in-grid", study_with(stages__gnp__figure2_r=[0.3]), "figure2_r"),
    ("negative-gpus", study_with(resources__gpus_per_trial=-1), "resources.gpus_per_trial"),
    ("negative-max-failures", study_with(max_failures=-1), "max_failures"),
    ("bad-base-optimizer", study_with(training__base_optimizer="lbfgs"), "training.base_optimizer"),
    ("space-lr-negative", study_with(stages__standard__space={"lr": [-1.0, 0.05]}), "stages.standard.space.lr"),
    ("space-batch-size-zero", study_with(stages__standard__space={"batch_size": [0]}),
     "stages.standard.space.batch_size"),
    ("space-momentum-above-one", study_with(stages__standard__space={"momentum": [1.5]}),
     "stages.standard.space.momentum"),
    ("space-weight-decay-negative", study_with(stages__standard__space={"weight_decay": [-1.0]}),
     "stages.standard.space.weight_decay"),
    ("optuna-range-out-of-bounds", study_with(stages__standard__search="optuna",
                                              stages__standard__space={"momentum": {"low": 1.0, "high": 5.0}}),
     "stages.standard.space.momentum"),
    ("alpha-huge", study_with(stages__gnp__alpha_extra=[1e308]), "at most 100"),
    ("figure3-alpha-not-run", study_with(stages__gnp__figure3_alpha=[7.0]), "figure3_alpha"),
    ("seed-negative", study_with(seeds=[-1]), "seeds"),
    ("model-kwargs-unknown", study_with(model__kwargs={"bogus": 1}), "model.kwargs"),
    ("data-folder-missing", study_with(data__dataset="cifar10", data__root="/nonexistent/cifar"),
     "/nonexistent/cifar"),
    # the validation split and label noise (docs/studies.md): digits trains on 300 of 1,437 images
    ("validation-too-large", study_with(data__validation={"size": 1138}), "data.validation.size"),
    ("validation-size-zero", study_with(data__validation={"size": 0}), "data.validation.size"),
    ("validation-size-bool", study_with(data__validation={"size": True}), "data.validation.size"),
    ("validation-seed-negative", study_with(data__validation={"size": 100, "seed": -1}), "data.validation.seed"),
    ("train-subset-too-large", study_with(data__train_subset=5000), "data.train_subset"),
    ("label-noise-fraction-one", study_with(data__label_noise={"fraction": 1.0}), "data.label_noise.fraction"),
    ("label-noise-fraction-negative", study_with(data__label_noise={"fraction": -0.1}),
     "data.label_noise.fraction"),
    ("label-noise-fraction-bool", study_with(data__label_noise={"fraction": True}), "data.label_noise.fraction"),
    ("label-noise-fraction-nan", study_with(data__label_noise={"fraction": float("nan")}),
     "data.label_noise.fraction"),
    ("label-noise-kind-unknown", study_with(data__label_noise={"fraction": 0.2, "kind": "uniform"}),
     "data.label_noise.kind"),
    ("label-noise-typo", study_with(data__label_noise={"fracton": 0.2}), "data.label_noise.fracton"),
]

# Inputs that used to pass validation and fail inside every trial (or be read as 1.0): a study must be
# refused before any trial starts, naming the bad key.
# digits has 1,437 training and 360 test images (scikit-learn's 1,797 split 80/20).
TRIAL_TIME_CASES = [
    ("train-subset-above-data", study_with(data__train_subset=1438), "data.train_subset"),
    ("test-subset-above-data", study_with(data__test_subset=361), "data.test_subset"),
    ("space-lr-true", study_with(stages__standard__space={"lr": [True]}), "stages.standard.space"),
    ("epochs-true", study_with(training__epochs=True), "training.epochs"),
    ("lr-true", study_with(training__lr=True), "training.lr"),
    ("batch-size-true", study_with(training__batch_size=True), "training.batch_size"),
    ("seeds-true", study_with(seeds=[True]), "seeds"),
    ("r-true", study_with(stages__sam__r=[True, 0.05, 0.1]), "stages.sam.r"),
    ("alpha-false", study_with(stages__gnp__alpha=[False, 0.5]), "stages.gnp.alpha"),
    ("alpha-extra-true", study_with(stages__gnp__alpha_extra=[True]), "stages.gnp.alpha_extra"),
    ("train-subset-true", study_with(data__train_subset=True), "data.train_subset"),
    ("gpus-false", study_with(resources__gpus_per_trial=False), "resources.gpus_per_trial"),
    ("max-failures-true", study_with(max_failures=True), "max_failures"),
    ("report-every-zero", study_with(report_every=0), "report_every"),
    ("report-every-true", study_with(report_every=True), "report_every"),
    ("report-every-float", study_with(report_every=2.5), "report_every"),
    ("optuna-low-true", study_with(stages__standard__search="optuna",
                                   stages__standard__space={"lr": {"low": True, "high": 2.0}}),
     "stages.standard.space.lr"),
]
SPEC_CASES += TRIAL_TIME_CASES


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture
def existing_results(tmp_path) -> Path:
    """An output folder that already holds result files which must survive untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("| precious |\n")
    (out / "figure2.png").write_bytes(b"\x89PNG precious")
    return out


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_clean_failure(code, err, must_contain, out: Path, before: dict):
    assert code == 2, err
    assert "Traceback" not in err
    assert must_contain in err, err
    assert err.count("gnp-study: error:") == 1
    assert snapshot(out) == before
    assert not (out / "ray").exists() and not (out / "trials.parquet").exists()


@pytest.mark.parametrize("case, content, must_contain", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_study_file(case, content, must_contain, tmp_path, existing_results, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    before = snapshot(existing_results)
    code, err = run_cli(["run", "greedy", str(study), "--output", str(existing_results)], capsys)
    assert_clean_failure(code, err, must_contain, existing_results, before)


@pytest.mark.parametrize("case, content, must_contain", [c for c in SPEC_CASES if c[2].startswith("data.")],
                         ids=[c[0] for c in SPEC_CASES if c[2].startswith("data.")])
def test_bad_data_option_fails_validate(case, content, must_contain, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(content))
    code, err = run_cli(["validate", str(study)], capsys)
    assert code == 2 and must_contain in err and "Traceback" not in err, err


def test_missing_study_file(tmp_path, existing_results, capsys):
    before = snapshot(existing_results)
    code, err = run_cli(["run", "greedy", str(tmp_path / "nope.yaml"), "--output", str(existing_results)], capsys)
    assert_clean_failure(code, err, "nope.yaml", existing_results, before)


def test_data_folder_with_wrong_layout(tmp_path, existing_results, capsys):
    root = tmp_path / "cifar"
    (root / "train" / "cat").mkdir(parents=True)  # ImageFolder-ish but no test/ and no images
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(study_with(data__dataset="cifar10", data__root=str(root))))
    before = snapshot(existing_results)
    code, err = run_cli(["run", "greedy", str(study), "--output", str(existing_results)], capsys)
    assert_clean_failure(code, err, str(root), existing_results, before)


def test_output_folder_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(DIGITS))
    code, err = run_cli(["run", "greedy", str(study), "--output", str(blocker / "out")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "cannot write to the study folder" in err and str(blocker / "out") in err
    assert blocker.read_text() == "not a folder"


def _stored_study(tmp_path) -> tuple[Path, Path]:
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(DIGITS))
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.yaml").write_text(yaml.safe_dump(load_spec(study).resolved(), sort_keys=False))
    return study, out


def test_corrupted_trials_parquet(tmp_path, capsys):
    study, out = _stored_study(tmp_path)
    (out / "trials.parquet").write_bytes(b"PAR1 this is not parquet")
    before = snapshot(out)
    code, err = run_cli(["run", "greedy", str(study), "--output", str(out)], capsys)
    assert code == 2 and "Traceback" not in err and "trials.parquet" in err
    assert snapshot(out) == before
    assert not (out / "ray").exists()


# A truncated or missing trial checkpoint no longer stops the study: the restore is moved to the newest
# complete checkpoint on storage, or the trial trains from scratch (tests/test_interrupts.py,
# test_restore_from_a_deleted_checkpoint_moves_to_the_newest_complete_one and the tests after it).


def test_changed_study_is_refused_with_a_diff(tmp_path, capsys):
    study, out = _stored_study(tmp_path)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(study_with(training__epochs=7)))
    before = snapshot(out)
    code, err = run_cli(["run", "greedy", str(changed), "--output", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "different spec" in err and "-  epochs: 15" in err and "+  epochs: 7" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("stored, given", [(1, 15), (15, 1), (15, 5)])
def test_a_folder_resumes_with_another_report_every(tmp_path, stored, given):
    """report_every changes what Tune receives, not a trial's numbers: a folder stored with one value is
    not refused with another (a folder of a version without the key has the default, 1); anything else
    that changed still is."""
    from gnp_study.runner import StudyError, check_study_folder
    from gnp_study.spec import parse_spec

    out = tmp_path / "out"
    out.mkdir()
    stored_spec = parse_spec(study_with(report_every=stored))
    (out / "study.yaml").write_text(yaml.safe_dump(stored_spec.resolved(), sort_keys=False))
    assert ("report_every" in yaml.safe_load((out / "study.yaml").read_text())) == (stored != 1)
    check_study_folder(parse_spec(study_with(report_every=given)), out)  # no error
    with pytest.raises(StudyError, match="different spec"):
        check_study_folder(parse_spec(study_with(report_every=given, training__epochs=7)), out)


def test_report_on_a_folder_without_a_study(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(["report", str(empty)], capsys)
    assert code == 2 and "Traceback" not in err and str(empty) in err
    assert list(empty.iterdir()) == []


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_gpus_requested_without_gpus(tmp_path, existing_results, capsys, ray_head):
    import ray

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(study_with(resources__gpus_per_trial=0.5)))
    before = snapshot(existing_results)
    try:
        code, err = run_cli(["run", "greedy", str(study), "--output", str(existing_results),
                             "--address", ray_head], capsys)
    finally:
        ray.shutdown()
    assert code == 2 and "Traceback" not in err
    assert "resources.gpus_per_trial" in err and "0 GPU" in err
    assert not (existing_results / "ray").exists() and not (existing_results / "trials.parquet").exists()
    assert {k: v for k, v in snapshot(existing_results).items() if k in before} == before


def test_study_file_that_is_not_utf8(tmp_path, existing_results, capsys):
    study = tmp_path / "bad.yaml"
    study.write_bytes(b"name: \xff\xfe\n")
    before = snapshot(existing_results)
    code, err = run_cli(["run", "greedy", str(study), "--output", str(existing_results)], capsys)
    assert_clean_failure(code, err, "not UTF-8", existing_results, before)


@pytest.mark.parametrize("name, content", [("decisions.json", "{not json"), ("decisions.json", "[]"),
                                           ("decisions.json", '{"standard": "x"}'),
                                           ("run_info.json", "{not json")])
def test_corrupted_json_in_the_study_folder(tmp_path, capsys, name, content):
    study, out = _stored_study(tmp_path)
    (out / name).write_text(content)
    before = snapshot(out)
    code, err = run_cli(["run", "greedy", str(study), "--output", str(out)], capsys)
    assert code == 2 and "Traceback" not in err and name in err
    assert snapshot(out) == before
    assert not (out / "ray").exists()


@pytest.mark.parametrize("case, content, must_contain", TRIAL_TIME_CASES,
                         ids=[c[0] for c in TRIAL_TIME_CASES])
def test_validate_rejects_trial_time_failures_in_one_line(case, content, must_contain, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(content))
    code, err = run_cli(["validate", str(study)], capsys)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if case != "optuna-low-true":  # pydantic reports each arm of the list-or-range union on its own line
        assert len(lines) == 1, err
    assert lines[0].startswith("gnp-study: error: ") and must_contain in err and "Traceback" not in err
    if "subset" in case and "true" not in case:
        assert "1437" in err if case.startswith("train") else "360" in err


@pytest.mark.parametrize("value", [1437, 300])
def test_a_subset_within_the_data_is_valid(value, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    # the whole training split leaves no image for a validation split: the study then has none
    study.write_text(yaml.safe_dump(study_with(data__train_subset=value, data__test_subset=360,
                                               data__validation=_DELETE if value == 1437 else {"size": 1000})))
    code, err = run_cli(["validate", str(study)], capsys)
    assert code == 0, err


def test_booleans_stay_accepted_where_the_field_is_a_switch(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(study_with(training__nesterov=True, training__normalize_g1=False,
                                               stages__standard__search="optuna",
                                               stages__standard__space={"lr": {"low": 0.01, "high": 0.5,
                                                                               "log": True}})))
    code, err = run_cli(["validate", str(study)], capsys)
    assert code == 0, err
    spec = load_spec(study)
    assert spec.training.nesterov is True and spec.stages.standard.space["lr"].log is True


def _trials_with(path: Path, column: str, values) -> None:
    import pandas as pd

    df = pd.read_parquet(path)
    df[column] = values(df[column])
    df.to_parquet(path, index=False)


def _json_with(path: Path, change) -> None:
    import json

    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _yaml_with(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


# (case id, file damaged, how, text the message must hold besides the file name). Each parses but is malformed.
MALFORMED_FOLDER_CASES = [
    ("decisions-unknown-key", "decisions.json", lambda p: _json_with(p, lambda d: d.update(stages=5)), "'stages'"),
    ("decision-is-a-number", "decisions.json", lambda p: _json_with(p, lambda d: d.update(standard=5)),
     "'standard' must be a mapping"),
    ("decision-is-a-list", "decisions.json", lambda p: _json_with(p, lambda d: d.update(sam=[1, 2])),
     "'sam' must be a mapping"),
    ("decision-r-is-text", "decisions.json", lambda p: _json_with(p, lambda d: d["sam"].update(r="x")), "'sam.r'"),
    ("decision-alpha-null", "decisions.json", lambda p: _json_with(p, lambda d: d["gnp"].update(alpha=None)),
     "'gnp.alpha'"),
    ("candidates-a-number", "decisions.json", lambda p: _json_with(p, lambda d: d["gnp"].update(candidates=5)),
     "'gnp.candidates'"),
    ("candidate-without-mean", "decisions.json",
     lambda p: _json_with(p, lambda d: d["sam"].update(candidates=[{"config_key": "{}"}])), "lacks 'mean'"),
    ("run-info-stages-5", "run_info.json", lambda p: _json_with(p, lambda d: d.update(stages=5)),
     "'stages' must be a mapping"),
    ("run-info-stage-a-number", "run_info.json", lambda p: _json_with(p, lambda d: d["stages"].update(sam=5)),
     "'stages.sam'"),
    ("run-info-hours-text", "run_info.json",
     lambda p: _json_with(p, lambda d: d["stages"]["sam"].update(cpu_hours="many")), "'stages.sam.cpu_hours'"),
    ("run-info-versions-5", "run_info.json", lambda p: _json_with(p, lambda d: d.update(versions=5)), "'versions'"),
    ("study-yaml-a-list", "study.yaml", lambda p: p.write_text("- a\n- b\n"), "mapping"),
    ("study-yaml-stages-5", "study.yaml", lambda p: _yaml_with(p, lambda d: d.update(stages=5)), "'stages'"),
    ("study-yaml-gnp-alpha-5", "study.yaml", lambda p: _yaml_with(p, lambda d: d["stages"]["gnp"].update(alpha=5)),
     "'stages.gnp.alpha'"),
    ("study-yaml-figure2-r-text", "study.yaml",
     lambda p: _yaml_with(p, lambda d: d["stages"]["gnp"].update(figure2_r=["a"])), "'stages.gnp.figure2_r'"),
    ("study-yaml-data-5", "study.yaml", lambda p: _yaml_with(p, lambda d: d.update(data=5)), "'data'"),
    ("study-yaml-validation-5", "study.yaml",
     lambda p: _yaml_with(p, lambda d: d["data"].update(validation=5)), "'data.validation'"),
    ("trials-missing-column", "trials.parquet",
     lambda p: __import__("pandas").read_parquet(p).drop(columns=["seed"]).to_parquet(p, index=False), "'seed'"),
    ("trials-alpha-text", "trials.parquet", lambda p: _trials_with(p, "alpha", lambda c: c.astype(str)), "'alpha'"),
    ("trials-error-a-number", "trials.parquet", lambda p: _trials_with(p, "error", lambda c: [1] * len(c)),
     "'error'"),
    ("trials-best-error-text", "trials.parquet",
     lambda p: _trials_with(p, "best_test_error", lambda c: c.astype(str)), "'best_test_error'"),
    ("epochs-epoch-text", "epochs.parquet", lambda p: _trials_with(p, "epoch", lambda c: c.astype(str)), "'epoch'"),
]


@pytest.fixture(scope="module")
def reported_study(tmp_path_factory) -> Path:
    """A synthetic study folder with its outputs built (which a failed report must leave as they are)."""
    from study_fixtures import make_study

    from gnp_study.report import build_outputs

    folder = tmp_path_factory.mktemp("reported") / "study"
    make_study(folder)
    build_outputs(folder)
    return folder


@pytest.mark.parametrize("case, name, damage, must_contain", MALFORMED_FOLDER_CASES,
                         ids=[c[0] for c in MALFORMED_FOLDER_CASES])
def test_report_refuses_a_malformed_study_folder_before_writing(case, name, damage, must_contain, tmp_path,
                                                                 capsys, reported_study):
    import shutil

    folder = tmp_path / "study"
    shutil.copytree(reported_study, folder)
    damage(folder / name)
    before = snapshot(folder)
    code, err = run_cli(["report", str(folder)], capsys)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gnp-study: error: "), err
    assert str(folder / name) in err and must_contain in err, err
    assert snapshot(folder) == before, "nothing is rewritten before the folder is checked"


def _number_paths(node, path=()):
    """Every place in a resolved spec that holds a number or a list of numbers (booleans excluded)."""
    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(node, dict):
        for k, v in node.items():
            yield from _number_paths(v, path + (k,))
    elif is_num(node) or (isinstance(node, list) and node and all(is_num(v) for v in node)):
        yield path


def test_a_boolean_is_refused_wherever_the_resolved_spec_holds_a_number():
    from gnp_study.spec import SpecError, parse_spec

    resolved = load_spec(ROOT / "search_spaces" / "digits.yaml").resolved()
    paths = list(_number_paths(resolved))
    assert ("training", "lr") in paths and ("seeds",) in paths and ("stages", "sam", "r") in paths
    for path in paths:
        raw = copy.deepcopy(resolved)
        node = raw
        for k in path[:-1]:
            node = node[k]
        old = node[path[-1]]
        node[path[-1]] = [True] + old[1:] if isinstance(old, list) else True
        with pytest.raises(SpecError) as err:
            parse_spec(raw, "digits", check_names=False)
        msg = str(err.value)
        assert "boolean" in msg and msg.count("\n") == 0, (path, msg)
        # the field's dotted path (a mapping's key, as stages.standard.space's lr, follows the path)
        assert ".".join(path) in msg or (".".join(path[:-1]) in msg and f"{path[-1]}[0]" in msg), (path, msg)
