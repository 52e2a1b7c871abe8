"""The package's import graph: layers import downwards only, no module imports one that imports it back.

The layers are those of ``docs/architecture.md`` (lowest first). Every ``import`` / ``from ... import``
of a package module counts, at module level or inside a function (an import inside a function is still
a dependency; it only hides a cycle from the interpreter). Read as text with :mod:`ast`: nothing is
imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gnp_study"

# docs/architecture.md, "Layers": lowest first. A module may import modules of its own layer or below.
LAYERS: list[tuple[str, set[str]]] = [
    ("optimizer", {"optim"}),
    ("user code", {"user_code"}),
    ("training parts", {"models", "data", "gpu_data", "own_data"}),
    ("study description", {"spec", "study_folder"}),
    ("statistics", {"shrinkage", "stats"}),
    ("study logic", {"results", "racing", "protocol", "cost"}),
    ("training loop", {"faults", "train", "own_loop"}),
    ("outputs", {"cost_figure", "report", "paper"}),
    ("Ray adapter", {"trainable", "tune_state", "race_search", "runner", "jobs"}),
    ("interface", {"api", "cli", "__main__", "__init__"}),
]
LEVEL = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
# Third-party imports a layer must not make anywhere (module level or inside functions).
FORBIDDEN = {
    "user_code": {"torch", "numpy", "pandas", "ray", "torchvision", "yaml", "pydantic"},
    "optim": {"numpy", "pandas", "scipy", "ray", "torchvision", "yaml", "pydantic", "matplotlib"},
    "protocol": {"ray", "torch", "torchvision"},
    "racing": {"ray", "torch", "torchvision"},
    "results": {"ray", "torch", "torchvision"},
    "stats": {"ray", "torch", "torchvision"},
    "shrinkage": {"ray", "torch", "torchvision"},
    "cost": {"ray", "torch", "torchvision"},
    "report": {"ray", "torch", "torchvision"},
    "cost_figure": {"ray", "torch", "torchvision"},
}


def _imports(path: Path) -> tuple[dict[str, list[int]], set[str]]:
    """``(package modules imported -> line numbers, top-level names of other imports)`` of one module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own: dict[str, list[int]] = {}
    other: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "gnp_study":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            elif node.module:
                other.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "gnp_study" and len(parts) > 1:
                    names.append(parts[1])
                elif parts[0] != "gnp_study":
                    other.add(parts[0])
        for n in names:
            if n != path.stem and (path.parent / f"{n}.py").exists():
                own.setdefault(n, []).append(node.lineno)
    return own, other


def _graph(pkg: Path = PKG) -> dict[str, dict[str, list[int]]]:
    """Module -> {package module it imports -> line numbers}, for every module of ``pkg``."""
    return {p.stem: _imports(p)[0] for p in sorted(pkg.glob("*.py"))}


def _upward(graph: dict) -> list[str]:
    return [f"{m} ({LAYERS[LEVEL[m]][0]}) imports {d} ({LAYERS[LEVEL[d]][0]}) at line {lines[0]}"
            for m, deps in graph.items() for d, lines in deps.items() if LEVEL[d] > LEVEL[m]]


def _cycles(graph: dict) -> list[list[str]]:
    """Each cycle found by a depth-first search, as the modules along it (first == last)."""
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_every_module_has_a_layer():
    missing = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in LEVEL)
    assert not missing, f"modules without a layer (add them to LAYERS and docs/architecture.md): {missing}"
    gone = sorted(m for m in LEVEL if not (PKG / f"{m}.py").exists())
    assert not gone, f"LAYERS names modules that do not exist: {gone}"


def test_layers_import_downwards_only():
    upward = _upward(_graph())
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_pure_layers_import_no_engine(module):
    _, other = _imports(PKG / f"{module}.py")
    bad = sorted(other & FORBIDDEN[module])
    assert not bad, f"gnp_study.{module} imports {bad}"


def test_the_checks_see_a_hidden_cycle_and_an_upward_import(tmp_path):
    """On a made-up package: a cycle through an import inside a function, and an upward relative import."""
    pkg = tmp_path / "gnp_study"
    pkg.mkdir()
    (pkg / "stats.py").write_text("import numpy\n\ndef f():\n    from gnp_study import protocol\n")
    (pkg / "protocol.py").write_text("from gnp_study import stats\n")
    (pkg / "optim.py").write_text("from .spec import x\n")
    (pkg / "spec.py").write_text("")
    g = _graph(pkg)
    assert g == {"optim": {"spec": [1]}, "protocol": {"stats": [1]}, "spec": {}, "stats": {"protocol": [4]}}
    assert _cycles(g) == [["protocol", "stats", "protocol"]]
    assert _upward(g) == ["optim (optimizer) imports spec (study description) at line 1",
                          "stats (statistics) imports protocol (study logic) at line 4"]
    assert _imports(pkg / "stats.py")[1] == {"numpy"}


def test_study_logic_loads_without_torch_or_ray():
    """Importing the statistics, study logic and results modules (and the package) loads neither torch
    nor Ray, so they run where neither is installed; ``gnp_study.GNP`` still resolves on first use."""
    import subprocess
    import sys

    code = ("import sys, gnp_study, gnp_study.stats, gnp_study.protocol, gnp_study.racing, gnp_study.results, "
            "gnp_study.cost, gnp_study.study_folder; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules)); "
            "print(gnp_study.GNP.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PKG.parent, check=True).stdout.split()
    assert out == ["[]", "gnp_study.optim"]


def test_docs_layer_table_matches_the_enforced_layers():
    """docs/architecture.md's "Layers" table names the same layers, in the same order, with the same
    modules as :data:`LAYERS` (the table is the newcomer's map: it must not fall behind the code)."""
    doc = (PKG.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("## Layers", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`"):
            rows.append((cells[0], set(re.findall(r"`([A-Za-z_]+)`", cells[1]))))
    assert rows == LAYERS


def test_no_function_of_the_package_is_over_80_lines():
    """docs/architecture.md: every function a reader sees whole (at most 80 lines, docstring included)."""
    long = []
    for f in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{f.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long
