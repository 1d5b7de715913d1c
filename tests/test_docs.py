"""The docs name things that exist: every test they name, every file they link."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_test_named_in_the_conformance_matrix_exists() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text()
    named = {name for name in re.findall(r"`(?:[\w.]+::)?(test_\w+)", text)}
    assert len(named) > 40
    missing = sorted(named - _defined_tests())
    assert not missing, f"docs/conformance.md names tests that do not exist: {missing}"


def test_every_test_named_in_any_doc_exists() -> None:
    defined = _defined_tests()
    missing = {}
    for path in (ROOT / "docs").glob("*.md"):
        names = set(re.findall(r"\b(test_[a-z0-9_]+)\b", path.read_text()))
        # file names such as test_install.py are files, checked below
        names = {n for n in names if not (ROOT / "tests" / f"{n}.py").exists()}
        if names - defined:
            missing[path.name] = sorted(names - defined)
    assert not missing, f"docs name tests that do not exist: {missing}"


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken
