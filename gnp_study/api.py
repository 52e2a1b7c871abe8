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
from typing import TYPE_CHECKING, Any, Union

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
    spec, source = _parse(study)
    return _checked(spec, source, facts, check_data)


def _checked(spec: StudySpec, source: str, facts: dict | None = None, check_data: bool = True) -> StudySpec:
    """:func:`load_study` after the schema: the user's code, the data root made absolute, the data folder."""
    from gnp_study.data import check_data as _check_data
    from gnp_study.spec import check_study_code

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



# ------------------------------------------------------------------------------------ gnp-study init
#: The template :func:`new_study_text` renders (shipped as package data, like report.html).
STUDY_TEMPLATE = "study.yaml.j2"


def _yaml_scalar(value: Any) -> str:
    """``value`` as a one-line YAML value (quoted only where YAML needs it)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def _default_name(out: Path) -> str:
    """A valid study name from the file name: characters a name may not hold become ``_``."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", out.stem) or "study"
    return name if re.match(r"[A-Za-z0-9]", name) else f"study{name}"


def new_study_text(out: str | Path, model: str, data: str, *, root: str | None = None,
                   code_dir: str | Path | None = None, name: str | None = None) -> str:
    """The text of a starting study file for ``model`` and ``data``, rendered from
    ``gnp_study/templates/study.yaml.j2``: every key with a comment, the greedy stages explained, the
    paper's grids. Nothing is checked here (:func:`init_study` checks and writes it).

    Args:
        out: where the file is meant to go (its name gives the default study name; a relative
            ``code_dir`` is written relative to its folder).
        model: ``model.name``: a registry name, ``torchvision:<name>``, ``timm:<name>`` or an import path.
        data: ``data.dataset``: a registry name, ``imagefolder`` or an import path.
        root: ``data.root`` as given (a relative root is read relative to where gnp-study runs).
        code_dir: the folder holding the user's package, relative to the current directory.
        name: the study's name (default: from the file name).
    """
    import os
    import shlex
    import textwrap

    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from gnp_study import __version__
    from gnp_study.data import DATASETS
    from gnp_study.models import MODELS, model_kind

    out = Path(out)
    if data in DATASETS:
        data_kind = "registry"
        augs = DATASETS[data].augmentations
        augmentation = next((a for a in ("basic", "imagenet") if a in augs), "none")
    else:
        data_kind, augs, augmentation = ("imagefolder" if data == "imagefolder" else "function"), (), "none"
    if code_dir is not None:
        # Stored relative to the file's folder when both lie in one tree (the project moves as a whole),
        # else absolute.
        folder, here = Path(code_dir).expanduser().resolve(), out.expanduser().absolute().parent.resolve()
        shared = Path(os.path.commonpath([folder, here]))
        code_dir = os.path.relpath(folder, here) if shared != Path(shared.anchor) else str(folder)
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["yaml"] = _yaml_scalar
    env.filters["shell"] = shlex.quote
    env.filters["comment"] = lambda text: textwrap.fill(text, width=100, initial_indent="  # ",
                                                        subsequent_indent="  #   ", break_on_hyphens=False)
    name = name if name is not None else _default_name(out)
    return env.get_template(STUDY_TEMPLATE).render(
        version=__version__, path=str(out), name=name, description=f"GNP study of {model} on {data}",
        data=data, data_kind=data_kind, root=root, augmentation=augmentation, augmentations=", ".join(augs),
        registry_datasets=", ".join(sorted(DATASETS)), model=model, model_kind=model_kind(model),
        registry_models=", ".join(sorted(MODELS)), code_dir=code_dir)


def init_study(out: str | Path, model: str, data: str, *, root: str | None = None,
               code_dir: str | Path | None = None, name: str | None = None, force: bool = False) -> Path:
    """Write a starting study file (:func:`new_study_text`) to ``out``, after checking it as ``gnp-study
    validate`` checks a file there: nothing is written unless it is valid.

    Returns:
        ``out`` as a Path.

    Raises:
        SpecError: ``out`` exists (and ``force`` is not set) or is a folder, or the study is invalid (an
            unknown model or data set, user code that does not import, a name a study may not have).
        DataError: the data folder lacks the data set's files.
    """
    import os

    import yaml

    from gnp_study.spec import SpecError, parse_spec

    out = Path(out)
    if out.is_dir():
        raise SpecError(f"{out} is a folder; give the study file's path (e.g. {out / 'study.yaml'})")
    if out.exists() and not force:
        raise SpecError(f"{out} exists; refusing to overwrite it (--force replaces it)")
    text = new_study_text(out, model, data, root=root, code_dir=code_dir, name=name)
    # Checked as load_spec reads the file where it will lie: messages name it, code_dir is relative to its
    # folder (which may not exist yet: the path is made absolute here, without resolving through it).
    raw = yaml.safe_load(text)
    here = out.absolute().parent
    if raw.get("code_dir") is not None:
        raw["code_dir"] = os.path.normpath(here / raw["code_dir"])
    spec = parse_spec(raw, str(out), check_names=False, base_dir=here)
    _checked(spec, str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
