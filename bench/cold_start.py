"""Cold start: how long importing ``function_app`` takes in a fresh interpreter, next to importing
``azure.functions`` alone (the floor every Python function app pays). Target ratio <= 1.2."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.__main__ import FigureRow

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = 15
TARGET = "<= 1.2"

# Measured inside the child, so interpreter start-up (the same for both) is left out.
_PROBE = (
    "import sys, time; sys.path.insert(0, {root!r}); t = time.perf_counter(); import {module};"
    " print(time.perf_counter() - t)"
)


def import_seconds(module: str) -> float:
    """Seconds to import ``module`` in a fresh interpreter (cwd and sys.path: the repo)."""
    code = _PROBE.format(root=str(REPO_ROOT), module=module)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(runs: int = RUNS) -> list[FigureRow]:
    """Median import times, alternating the two so drift hits both alike."""
    import_seconds("function_app")  # warm the .pyc caches and the OS file cache
    import_seconds("azure.functions")
    app: list[float] = []
    floor: list[float] = []
    for _ in range(runs):
        app.append(import_seconds("function_app"))
        floor.append(import_seconds("azure.functions"))
    return [
        {
            "figure": "cold start: import function_app vs azure.functions",
            "value": statistics.median(app) * 1000,
            "anchor": statistics.median(floor) * 1000,
            "unit": "ms (median)",
            "target": TARGET,
            "note": f"{runs} fresh interpreters each",
        }
    ]
