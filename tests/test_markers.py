"""The test suite's markers (tests/README.md): registered in pyproject.toml, ``ray`` on every test that
uses the Ray head (conftest refuses a collection otherwise), and ``e2e`` on the end-to-end modules.
Fast: reads files as text, starts nothing."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import unmarked_ray_items

ROOT = Path(__file__).resolve().parent.parent
#: Modules whose every test runs a study end to end (through Ray Tune, or the CLI in a subprocess).
E2E_MODULES = ("test_study_e2e", "test_race_e2e", "test_cluster_e2e", "test_kill_soak", "test_local_ray",
               "test_resume_old_folder", "test_examples_e2e")


def _item(nodeid: str, fixtures: tuple[str, ...], markers: tuple[str, ...]):
    """A stand-in for a collected pytest item: node id, fixture names and marker names."""
    return SimpleNamespace(nodeid=nodeid, fixturenames=fixtures,
                           get_closest_marker=lambda name: name if name in markers else None)


def test_a_ray_head_test_without_the_ray_marker_is_reported():
    items = [_item("a::ok", ("ray_head", "tmp_path"), ("ray", "slow")),
             _item("b::unmarked", ("tmp_path", "ray_head"), ("slow",)),
             _item("c::no_ray", ("tmp_path",), ())]
    assert unmarked_ray_items(items) == ["b::unmarked"]
    assert unmarked_ray_items(items[::2]) == []


def test_the_markers_are_registered():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = {m.split(":", 1)[0] for m in cfg["tool"]["pytest"]["ini_options"]["markers"]}
    assert {"ray", "slow", "gpu", "e2e"} <= names


def _module_marks(path: Path) -> set[str]:
    """The marker names in a module's ``pytestmark = [...]`` (``pytest.mark.NAME`` or a call of it)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return {n.attr for n in ast.walk(node.value)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
                    and n.value.attr == "mark"}
    return set()


@pytest.mark.parametrize("module", E2E_MODULES)
def test_end_to_end_modules_carry_e2e_and_ray(module):
    assert {"e2e", "ray"} <= _module_marks(ROOT / "tests" / f"{module}.py")


def test_every_module_named_e2e_is_listed():
    named = {p.stem for p in (ROOT / "tests").glob("test_*e2e*.py")}
    assert named <= set(E2E_MODULES)
