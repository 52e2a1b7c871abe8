"""The user's own code named in a study: import paths ``package.module:attribute`` and their calls.

A study may name a model, a data set (and later a training function) by import path instead of a
registry name, the convention of setuptools entry points (``module:attr``, PEP 621 ``[project.scripts]``)
and of ``pkg_resources``/``importlib.metadata``. This module resolves such a path, calls the callable
with the keyword arguments it accepts, and finds the code that Ray must ship to its workers
(``runtime_env["py_modules"]``, see https://docs.ray.io/en/latest/ray-core/handling-dependencies.html).

Only the standard library is imported here; every error is a :class:`UserCodeError` whose message names
the study key and the fault (the import error's own message for a module that does not import).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable

#: ``package.module:attribute`` (attribute may be dotted: ``module:Class.factory``).
_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class UserCodeError(ValueError):
    """The user's code named by a study cannot be imported, called, or returns the wrong kind of object."""


def is_target(name: str) -> bool:
    """Whether ``name`` is an import path ``package.module:attribute`` (not a registry or library name
    such as ``small_cnn`` or ``torchvision:resnet18``)."""
    return bool(_TARGET.match(name)) and name.split(":", 1)[0] not in ("torchvision", "timm")


def add_code_dir(folder: str | Path | None) -> str | None:
    """Put ``folder`` first on ``sys.path`` (once), so the study's import paths resolve from it.

    Args:
        folder: the folder holding the user's package (``code_dir`` of the study, made absolute by
            :func:`gnp_study.spec.load_spec`), or None.
    Returns:
        The absolute folder added (str), or None.
    Raises:
        UserCodeError: the folder does not exist.
    """
    if folder is None:
        return None
    p = Path(folder).expanduser().resolve()
    if not p.is_dir():
        raise UserCodeError(f"code_dir: folder {str(folder)!r} does not exist")
    s = str(p)
    if s not in sys.path:
        sys.path.insert(0, s)
    return s


def load(target: str, key: str) -> Any:
    """The object named by ``target`` (``package.module:attribute``).

    Args:
        target: the import path.
        key: the study key that names it (``model.name``, ``data.dataset``), for messages.
    Returns:
        The attribute (usually a class or a function).
    Raises:
        UserCodeError: not an import path, the module does not import (the message carries the import
            error's own message), or the attribute does not exist.
    """
    if not _TARGET.match(target):
        raise UserCodeError(f"{key}: {target!r} is not an import path of the form package.module:attribute")
    module_name, attr = target.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure while importing the user's module is theirs
        raise UserCodeError(f"{key}: module {module_name!r} does not import: {type(e).__name__}: {e} "
                            f"(is its folder the study's code_dir, or on PYTHONPATH?)") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserCodeError(f"{key}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def accepted(fn: Callable, offered: dict[str, Any]) -> dict[str, Any]:
    """The items of ``offered`` that ``fn`` accepts as keyword arguments (all of them when it takes
    ``**kwargs``; none when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(offered)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in names}


def call(fn: Callable, key: str, kwargs: dict[str, Any], offered: dict[str, Any] | None = None) -> Any:
    """Call the user's ``fn(**offered it accepts, **kwargs)``; the study's ``kwargs`` win over ``offered``.

    Raises:
        UserCodeError: ``fn`` is not callable, or raised (the message names ``key`` and the exception).
    """
    if not callable(fn):
        raise UserCodeError(f"{key}: {fn!r} is not callable")
    args = dict(accepted(fn, offered or {}), **kwargs)
    try:
        return fn(**args)
    except Exception as e:  # noqa: BLE001 - reported with the key that names the user's callable
        raise UserCodeError(f"{key}: calling {getattr(fn, '__qualname__', fn)!r} with {sorted(args)} raised "
                            f"{type(e).__name__}: {e}") from None


def load_function(target: str, key: str = "training.function") -> Callable:
    """The user's training function named by ``target``, checked to take one positional argument (the
    trial's context, :class:`gnp_study.own_loop.TrialContext`); further parameters must have defaults.

    Raises:
        UserCodeError: the import fails (see :func:`load`), the object is not callable, or its signature
            does not accept exactly one positional argument; the message names ``key``.
    """
    fn = load(target, key)
    if not callable(fn):
        raise UserCodeError(f"{key}: {target!r} is {type(fn).__name__}, not a function")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn  # a builtin or C callable without a readable signature: trusted
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_one = (positional or any(p.kind is p.VAR_POSITIONAL for p in params)) and len(required) <= 1 and \
        all(p in positional[:1] for p in required)
    if not takes_one:
        sig = f"{getattr(fn, '__qualname__', target)}{inspect.signature(fn)}"
        raise UserCodeError(f"{key}: {sig} has the wrong signature: a training function takes one argument, "
                            f"the trial's context (def train(ctx): ...)")
    return fn


def _installed(path: Path) -> bool:
    """Whether ``path`` lies in the interpreter's installed packages (site-packages, the standard library)."""
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(path.is_relative_to(Path(r).resolve()) for r in roots if r)


def ship_dirs(targets: list[str], key: str = "study") -> list[str]:
    """The package folders Ray must ship to its workers for the given import paths.

    For every target's top-level package that is imported from a folder of its own (not installed in
    site-packages and not ``gnp_study`` itself), the package's folder: what Ray's
    ``runtime_env["py_modules"]`` uploads and puts on every worker's path.

    Args:
        targets: import paths (``package.module:attribute``), already importable.
        key: for messages.
    Returns:
        Absolute folder paths, without duplicates, in the order first named.
    Raises:
        UserCodeError: a target's top-level module is a single file (``nets.py``): Ray ships packages
            (folders with ``__init__.py``), so the message asks for one.
    """
    out: list[str] = []
    for target in targets:
        top = target.split(":", 1)[0].split(".")[0]
        if top == "gnp_study":
            continue
        mod = sys.modules.get(top) or importlib.import_module(top)
        file = getattr(mod, "__file__", None)
        if file is None:  # a namespace package: its folders
            paths = [Path(p) for p in getattr(mod, "__path__", [])]
        elif Path(file).name == "__init__.py":
            paths = [Path(file).resolve().parent]
        else:
            if _installed(Path(file).resolve()):
                continue
            raise UserCodeError(f"{key}: module {top!r} is a single file ({file}); Ray ships packages to its "
                                f"workers: put it in a folder {top}/ with an __init__.py")
        for p in paths:
            p = p.resolve()
            if not _installed(p) and str(p) not in out:
                out.append(str(p))
    return out
