"""The architecture page names a test for every crash window: each such test exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_architecture_page_names_exists() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", page))
    defined = {
        match
        for path in (ROOT / "tests").rglob("test_*.py")
        for match in re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(encoding="utf-8"), re.M)
    }
    assert len(named) >= 10
    assert named - defined == set()


def test_every_crash_window_row_names_a_test() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Crash windows", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    body = rows[1:]  # past the header
    assert body
    assert all("`test_" in row for row in body), [r for r in body if "`test_" not in r]
