"""The docs name things that exist: every test named in docs/conformance.md."""

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
