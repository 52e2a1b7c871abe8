"""README.md and docs/: links that resolve, a README of a user's-guide length, a demo table that cannot go
stale silently, and no references a reader cannot open. Fast: no Ray, no training."""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 260

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than '-' and '_'
    removed, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text).strip().lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            out.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code."""
    return [(i, m.group(1)) for i, line in _prose_lines(path.read_text(encoding="utf-8"))
            for m in _LINK.finditer(line)]


def broken_links(path: Path) -> list[str]:
    bad = []
    for line, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{line}: {target}"
        if not dest.exists():
            bad.append(f"{where} (no such file)")
        elif ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{where} (outside the repository)")
        elif anchor:
            if dest.suffix != ".md" or dest.is_dir():
                bad.append(f"{where} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(dest):
                bad.append(f"{where} (no heading with that anchor)")
    return bad


def test_github_slugs():
    assert github_slug("The demo's result") == "the-demos-result"
    assert github_slug("Report and checkpoint cadence (`report_every`, `checkpoint_every`)") == \
        "report-and-checkpoint-cadence-report_every-checkpoint_every"
    assert github_slug("Race vs fixed protocol (measured)") == "race-vs-fixed-protocol-measured"
    assert github_slug("`bench_optim.py`: cost of a GNP step") == "bench_optimpy-cost-of-a-gnp-step"


def test_the_link_check_finds_a_broken_link_and_anchor(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    page.write_text("# Page\n\n[ok](other.md#a-section) [gone](missing.md) [no anchor](other.md#nope)\n"
                    "[self](#page) [self bad](#none) [web](https://example.org)\n"
                    "```\n[in code](missing-too.md)\n```\n`[inline](missing-three.md)`\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = broken_links(page)
    assert len(bad) == 3 and all(("missing.md" in b or "#nope" in b or "#none" in b) for b in bad), bad


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_readme_is_a_users_guide_length():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move long material to docs/ or benchmarks/README.md"


def test_readme_keeps_the_ci_sentence_and_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "`.ci/run` calls `make test`." in text
    assert "make demo" in text and "make test" in text


#: References a reader of the repository cannot open: an issue or item number of a tracker, or a path
#: under notes/ (a folder the repository does not have). A notes/ path that exists is allowed.
_TRACKER = re.compile(r"\b(issue|item)s?\s+#?\d+|\bnotes/[\w./-]+", re.IGNORECASE)

#: Where such references must not stand: the pages, and every source, test, benchmark and study file.
#: tests/data holds stored fixture data (not prose), so it is left out.
_CHECKED_DIRS = ("docs", "gnp_study", "tests", "benchmarks", "cluster", "search_spaces", ".ci")
_CHECKED_TOP = ("README.md", "Makefile", "pyproject.toml")
_CHECKED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".toml", ".html", ".txt", ""}
_UNCHECKED = (ROOT / "tests" / "data",)


def checked_files(root: Path = ROOT) -> list[Path]:
    """The files :func:`tracker_references` is run on: ``_CHECKED_TOP`` and every text file (by suffix)
    below ``_CHECKED_DIRS`` of ``root``, except tests/data and caches. Returns sorted paths."""
    out = [root / name for name in _CHECKED_TOP if (root / name).is_file()]
    unchecked = [root / u.relative_to(ROOT) for u in _UNCHECKED]
    for d in _CHECKED_DIRS:
        for path in (root / d).rglob("*"):
            if (not path.is_file() or path.suffix not in _CHECKED_SUFFIXES or "__pycache__" in path.parts
                    or any(path.is_relative_to(u) for u in unchecked)):
                continue
            out.append(path)
    return sorted(out)


def tracker_references(path: Path, root: Path = ROOT) -> list[str]:
    """Every match of ``_TRACKER`` in the text file ``path``, as ``"relative/path:line: match"``; a
    path under notes/ that exists below ``root`` (a sentence's full stop after it aside) is not reported.
    Returns [] for a clean file."""
    found = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for m in _TRACKER.finditer(line):
            ref = m.group(0)
            if ref.lower().startswith("notes/") and (root / ref.rstrip(".")).exists():
                continue
            found.append(f"{path.relative_to(root)}:{i}: {ref}")
    return found


def test_the_reference_checker_finds_planted_references(tmp_path):
    """Each kind of reference planted in a temp file is reported with its line; an existing notes/ path,
    a bare word "issue" and a version number are not. The planted strings are built from pieces so that
    this file itself stays clean."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "real.md").write_text("x", encoding="utf-8")
    planted = tmp_path / "tests" / "test_x.py"
    planted.parent.mkdir()
    lines = ['"""Ok: an issue with the data, version 2, see ' + "notes" + '/real.md."""',
             "# " + "Issue" + " 12: one",
             "# the split (" + "items" + " 2 and 6)",
             "x = 1  # " + "issue" + " #7",
             "# see " + "notes" + "/contracts.md"]
    planted.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = tracker_references(planted, root=tmp_path)
    assert [f.split(": ", 1)[0] for f in found] == [f"tests/test_x.py:{i}" for i in (2, 3, 4, 5)], found
    assert found[3].endswith("notes" + "/contracts.md")
    (tmp_path / "tests" / "data").mkdir()
    (tmp_path / "tests" / "data" / "stored.md").write_text("# " + "issue" + " 3\n", encoding="utf-8")
    assert checked_files(tmp_path) == [planted]


def test_the_checked_files_cover_code_tests_and_benchmarks():
    files = {p.relative_to(ROOT).as_posix() for p in checked_files()}
    assert {"README.md", "gnp_study/report.py", "tests/conftest.py", "tests/test_readme.py",
            "benchmarks/README.md", "benchmarks/bench_study.py", "docs/statistics.md"} <= files
    assert not any(f.startswith("tests/data/") for f in files)


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_references_a_reader_cannot_open(path):
    assert tracker_references(path) == []


def _demo_table_module():
    spec = importlib.util.spec_from_file_location("demo_table", ROOT / "benchmarks" / "demo_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_demo_table_is_the_table_of_the_stored_trials():
    """The block between the demo-table markers equals the table the results code computes from
    docs/demo/ (written by `python benchmarks/demo_table.py reports/digits_label_noise --write`)."""
    mod = _demo_table_module()
    want = mod.table_markdown(*mod.from_store())
    got = mod.readme_block(README.read_text(encoding="utf-8"))
    assert got == want, ("README's demo table is not what docs/demo/ gives; regenerate it with "
                         "`python benchmarks/demo_table.py reports/digits_label_noise --write`")


def test_stored_trials_are_the_confirmation_trials_of_the_chosen_configurations():
    mod = _demo_table_module()
    trials, decisions = mod.from_store()
    assert set(trials.columns) == set(mod.TRIAL_COLUMNS + [decisions["metric"]])
    assert set(trials["stage"]) == {"confirm"}
    assert set(trials["config_key"]) == set(decisions["confirm"]["schemes"].values())
    for key, g in trials.groupby("config_key"):
        assert sorted(g["seed"]) == sorted(decisions["confirm"]["seeds"]), key


def test_demo_table_follows_the_stored_numbers(tmp_path):
    """A changed trial changes the table (the check is not vacuous), and --write rewrites only the block."""
    mod = _demo_table_module()
    trials, decisions = mod.from_store()
    before = mod.table_markdown(trials, decisions)
    changed = trials.copy()
    changed.loc[changed.index[0], decisions["metric"]] += 30.0  # a Standard confirmation trial
    assert mod.table_markdown(changed, decisions) != before
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{mod.START}\nold table\n{mod.END}\ntail\n", encoding="utf-8")
    mod.write(trials, decisions, store=tmp_path / "demo", readme=readme)
    assert readme.read_text(encoding="utf-8") == f"head\n{mod.START}\n{before}\n{mod.END}\ntail\n"
    assert mod.table_markdown(*mod.from_store(tmp_path / "demo")) == before
