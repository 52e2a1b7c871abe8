"""The Python entry point for notebooks and scripts: :func:`run_study`, the same code path as
``gnp-study run greedy``.

``gnp-study run greedy`` calls :func:`run_greedy_study`, and so does :func:`run_study`: the study is
loaded and checked (:func:`load_study`: the study file's keys, the user's model, data and training
function, the data folder) before anything is written, the study folder is chosen as the command line
chooses it (:func:`output_dir`), and :func:`gnp_study.runner.run_greedy` runs or resumes the greedy
protocol there. Bad input raises the exception whose message the command line prints after
``gnp-study: error:`` (:data:`USER_ERRORS`).

Importing this module loads neither torch nor Ray; a run does.
"""

from __future__ import annotations

import copy
import datetime as _dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from gnp_study.spec import StudySpec

#: What :func:`run_study` and :func:`load_study` accept as a study: a YAML file (a path, or the name of a
#: shipped study in ``search_spaces/``), the file's content as a dict, or a :class:`gnp_study.spec.StudySpec`.
Study = Union[str, Path, dict, "StudySpec", None]

#: How a study given as a dict or a StudySpec is named in messages (a file is named by its path).
DICT_SOURCE = "<dict>"
SPEC_SOURCE = "<StudySpec>"


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (a study, a data folder, a study folder): the command line prints
    their message and exits with status 2; :func:`run_study` lets them propagate."""
    from gnp_study.data import DataError
    from gnp_study.protocol import ProtocolError
    from gnp_study.runner import StudyError
    from gnp_study.spec import SpecError
    from gnp_study.study_folder import StudyFolderError

    return (SpecError, StudyError, DataError, ProtocolError, StudyFolderError)


def _parse(study: Study) -> tuple[StudySpec, str]:
    """The study validated by its schema (not yet its code or data), and the name messages give it."""
    from gnp_study.spec import SpecError, StudySpec, find_study, load_spec, parse_spec

    if isinstance(study, StudySpec):
        # Checked again from its content (it may have been changed after it was built), on a copy: the
        # caller's object is never changed (the data root below, code_dir made absolute).
        raw = copy.deepcopy(study.model_dump(mode="json"))
        return parse_spec(raw, SPEC_SOURCE, check_names=False), SPEC_SOURCE
    if isinstance(study, dict):
        return parse_spec(copy.deepcopy(study), DICT_SOURCE, check_names=False), DICT_SOURCE
    if study is None or isinstance(study, (str, Path)):
        return load_spec(study, check_names=False), str(find_study(study))
    raise SpecError(f"a study is a path to a YAML file, a study name, a dict or a StudySpec, not "
                    f"{type(study).__name__}")


def load_study(study: Study, facts: dict | None = None, *, check_data: bool = True) -> StudySpec:
    """Load a study and check everything that can be checked before Ray starts: the keys and values
    (:mod:`gnp_study.spec`), the user's model, data and training function (built or loaded once,
    :func:`gnp_study.spec.check_study_code`) and, for a registry data set, its data folder.

    Args:
        study: a YAML file (path, or a name in ``search_spaces/``; ``None``: the default ``digits``), its
            content as a dict, or a :class:`~gnp_study.spec.StudySpec` (never changed: a checked copy is
            returned). A relative ``data.root`` or ``code_dir`` of a dict or StudySpec is relative to the
            current directory; a file's ``code_dir`` is relative to the file's folder.
        facts: when given, receives what :func:`gnp_study.spec.check_study_code` found (parameter count,
            the user's data sizes).
        check_data: also check a registry data set's files (``gnp-study plan`` without ``--check-data``
            leaves them unchecked).

    Returns:
        The checked spec, a relative registry data root made absolute (trials run in their own folders).

    Raises:
        SpecError: a missing or invalid study, or user code that does not import or build; the message
            names the file (or ``<dict>`` / ``<StudySpec>``) and the key.
        DataError: the data folder lacks the files, or a subset is larger than its split.
    """
    from gnp_study.data import check_data as _check_data
    from gnp_study.spec import check_study_code

    spec, source = _parse(study)
    found = check_study_code(spec, source)
    if facts is not None:
        facts.update(found)
    if not spec.data.is_registry():
        return spec  # the user's image folder or data function: read and checked by check_study_code
    if spec.data.root and "://" not in spec.data.root and not Path(spec.data.root).is_absolute():
        # Trials run in their own working directories (Ray Tune's trial folders): a root relative to
        # where the user ran the command is made absolute here, before it is stored and validated.
        spec.data.root = str(Path(spec.data.root).resolve())
    if check_data:
        _check_data(spec.data.dataset, spec.data.root, spec.data.format,
                    train_subset=spec.data.train_subset, test_subset=spec.data.test_subset)
    return spec


def output_dir(spec: StudySpec, output: str | Path | None = None, new: bool = False) -> Path | str:
    """The study folder of a run: ``output``, default ``reports/<study name>``; with ``new`` a fresh one,
    ``<output>-<YYYYmmdd-HHMMSS>``. A storage URI (``s3://``, ``gs://``, ``file://``) stays a string."""
    stamp = f"-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}" if new else ""
    if output and "://" in str(output):
        return str(output).rstrip("/") + stamp
    out = Path(output) if output else Path("reports") / spec.name
    return out.with_name(out.name + stamp) if new else out


def run_greedy_study(study: Study, output: str | Path | None = None, *, address: str | None = None,
                     new: bool = False, build_report: bool = True) -> tuple[StudySpec, Path | str]:
    """What ``gnp-study run greedy`` does, for :func:`run_study` and the command line alike: check the study
    (:func:`load_study`), choose the study folder (:func:`output_dir`), say both on stderr, and run or
    resume the greedy protocol there (:func:`gnp_study.runner.run_greedy`).

    Returns:
        ``(spec, folder)``: the checked spec and the study folder (a storage URI stays a string).

    Raises:
        The errors of :data:`user_errors` for bad input, before any trial; ``StudyInterrupted`` on Ctrl-C.
    """
    from gnp_study.runner import run_greedy

    spec = load_study(study)
    out = output_dir(spec, output, new)
    print(f"[gnp-study] study {spec.name!r} -> {out}", file=sys.stderr)
    run_greedy(spec, out, address=address, build_report=build_report)
    return spec, out


def run_study(study: Study, output: str | Path | None = None, *, address: str | None = None,
              new: bool = False, build_report: bool = True) -> Path:
    """Run (or resume) a study's greedy protocol, as ``gnp-study run greedy STUDY`` does, and return its folder.

    Everything is checked before any trial, with the command line's messages; nothing is written when a
    check fails. Progress goes to stderr, as on the command line.

    Args:
        study: a study YAML file (path or shipped name), its content as a dict, or a
            :class:`~gnp_study.spec.StudySpec` (see :func:`load_study`).
        output: the study folder (``--output``), default ``reports/<study name>``; a path, or a URI that
            every node reaches (``s3://...``). A folder that holds this study is resumed.
        address: the Ray cluster (``--address``): default ``RAY_ADDRESS``, else a local Ray on 127.0.0.1,
            started in this process and left running for the next call. A Ray this process already
            connected to (``ray.init``) is used as it is.
        new: a new study folder ``<output>-<timestamp>`` instead of resuming (``--new``).
        build_report: build the tables, figures and ``report.html`` at the end.

    Returns:
        The study folder: ``trials.parquet``, ``decisions.json``, ``results.md``, ``report.html``, ...
        (docs/study-folder.md). For a URI, the local mirror that holds the same files.

    Raises:
        SpecError, DataError, StudyError, StudyFolderError, ProtocolError: bad input (the study, the data
            folder, the study folder), with the message ``gnp-study`` prints; raised before any trial.
        StudyInterrupted: Ctrl-C; calling again with the same arguments resumes the study.

    Example::

        import gnp_study
        folder = gnp_study.run_study("search_spaces/digits.yaml", "reports/digits")
        print((folder / "results.md").read_text())
    """
    _, out = run_greedy_study(study, output, address=address, new=new, build_report=build_report)
    if isinstance(out, str):
        from gnp_study.runner import _mirror_dir

        return _mirror_dir(out)
    return Path(out)

