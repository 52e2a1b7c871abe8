"""A wheel of the project (``pip wheel .``, what ``pip install .`` installs) holds the shipped studies, the
templates and the paper's results, and a study name such as ``digits`` resolves from it with no checkout
beside it: the wheel is unpacked into a temporary folder and its package imported from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")


@pytest.mark.timeout(300)
def test_a_wheel_ships_the_studies_and_resolves_a_study_name_without_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy of what the build reads, so that it writes nothing into the checkout
    for d in ("gnp_study", "search_spaces"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=240,
                           cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("gnp_study-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    studies = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert studies and {f"gnp_study/search_spaces/{n}" for n in studies} <= names
    for f in ("gnp_study/templates/report.html", "gnp_study/templates/study.yaml.j2", "gnp_study/paper_results.csv"):
        assert f in names
    assert not any(n.startswith(("search_spaces/", "tests/")) for n in names)  # nothing at the top level

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import gnp_study.spec as s; print(s.__file__); print(s.find_study('digits')); "
            "print(s.load_spec('digits_label_noise').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    module, found, name = out.stdout.split()
    assert Path(module).is_relative_to(site) and Path(found) == site / "gnp_study" / "search_spaces" / "digits.yaml"
    assert name == "digits_label_noise"
    cli = subprocess.run([sys.executable, "-m", "gnp_study", "validate", "digits"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert cli.returncode == 0 and "valid study 'digits'" in cli.stdout, cli.stdout[-2000:] + cli.stderr[-2000:]
