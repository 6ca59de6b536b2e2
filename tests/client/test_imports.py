"""Importing the client package stays cheap: msal and friends load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("msal", "phonenumbers", "azure", "requests", "jsonschema")


def test_import_loads_no_heavy_module() -> None:
    code = "import json, sys; import shared.smartdialog; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == []
