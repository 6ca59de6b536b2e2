"""Importing the quota must stay cheap: no Azure SDK until a Table store is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_quota_loads_no_azure_sdk() -> None:
    script = (
        "import sys, shared.quota\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'azure', 'msal'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
