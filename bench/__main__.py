"""``python -m bench`` (``make bench``): measure every registered figure, print one table.

Each figure is measured side by side with its *anchor* (the same work without our code, or the
floor we cannot go under) in the same run, so machine speed cancels out; the target bounds the
ratio value / anchor. Timing assertions live here, never in ``make test``.

Adding a figure: write ``measure() -> list[FigureRow]`` in a module of this package (rows are
plain dicts with the keys of :class:`FigureRow`; import the type under ``TYPE_CHECKING`` only) and
add ``"bench.<module>:measure"`` to :data:`FIGURES`. A figure whose module does not exist yet is
listed as "not written yet"; one that raises is listed as ERROR and the others still run.

Exit status: 0 even when a figure FAILs (the table says so loudly); ``--strict`` exits 1 on any
FAIL or ERROR. ``--only WORD`` runs the figures whose name or entry contains WORD.
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import TypedDict

__all__ = ["FIGURES", "FigureRow", "main", "percentile"]


class _FigureRequired(TypedDict):
    figure: str
    value: float
    anchor: float
    target: str  # "<= 1.5" or ">= 0.8": the bound on value / anchor


class FigureRow(_FigureRequired, total=False):
    """One line of the table."""

    unit: str
    note: str


#: (name shown if the figure cannot run, "module:function"). Order is the table's order.
FIGURES: list[tuple[str, str]] = [
    ("cold start", "bench.cold_start:measure"),
    ("action overhead", "bench.__main__:measure_action_overhead_placeholder"),
    ("webhook ingest", "bench.webhook_ingest:measure"),
    ("quota", "bench.quota_store:measure"),
]


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile by nearest rank."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _verdict(ratio: float, target: str) -> bool:
    op, _, bound = target.partition(" ")
    limit = float(bound)
    return ratio <= limit if op == "<=" else ratio >= limit


# --- action overhead: harness ready, route is a placeholder ---------------------------------------


def measure_action_overhead_placeholder(requests: int = 300, warmup: int = 30) -> list[FigureRow]:
    """Latency through the dev host vs straight to the sandbox, both over keep-alive httpx.

    PLACEHOLDER: it times GET /api/health through the host against GET /sandbox/health direct.
    When the group-contact action is benchmarked, move this to ``bench/action_overhead.py`` and
    swap the two requests for the action (through the host) and the same upstream call made with
    httpx against the sandbox (direct). The Azurite + sandbox + dev host start-up stays as is.
    """
    import os

    import httpx

    from devhost.azurite import start_azurite
    from devhost.stack import REPO_ROOT, free_port, start_devhost, start_sandbox

    azurite = start_azurite()
    children = []
    try:
        sandbox = start_sandbox(
            port=free_port(),
            log_path=REPO_ROOT / ".run" / "bench-sandbox.log",
            extra_args=("--quota-calls", "0", "--log-level", "WARNING"),
        )
        children.append(sandbox)
        env = {
            **os.environ,
            "AzureWebJobsStorage": azurite.connection_string,
            "SMARTDIALOG_BASE_URL": f"{sandbox.url}/api-integrations/v1",
            "SMARTDIALOG_ACCESS_TOKEN": "sandbox-token",
        }
        devhost = start_devhost(
            port=free_port(),
            env=env,
            log_path=REPO_ROOT / ".run" / "bench-devhost.log",
            extra_args=("--no-queues",),
        )
        children.append(devhost)
        through, direct = f"{devhost.url}/api/health", f"{sandbox.url}/sandbox/health"
        with httpx.Client(timeout=10) as client:
            for _ in range(warmup):
                client.get(through).raise_for_status()
                client.get(direct).raise_for_status()
            host_ms: list[float] = []
            direct_ms: list[float] = []
            for _ in range(requests):  # alternate, so both see the same machine state
                started = time.perf_counter()
                client.get(through).raise_for_status()
                host_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                client.get(direct).raise_for_status()
                direct_ms.append((time.perf_counter() - started) * 1000)
    finally:
        for child in reversed(children):
            child.stop()
        azurite.stop()
    note = "PLACEHOLDER route: /api/health vs /sandbox/health"
    return [
        {
            "figure": "action overhead (median)",
            "value": statistics.median(host_ms),
            "anchor": statistics.median(direct_ms),
            "unit": "ms",
            "target": "<= 1.3",
            "note": note,
        },
        {
            "figure": "action overhead (p95)",
            "value": percentile(host_ms, 0.95),
            "anchor": percentile(direct_ms, 0.95),
            "unit": "ms",
            "target": "<= 1.3",
            "note": note,
        },
    ]


# --- runner -------------------------------------------------------------------------------------


def _load(entry: str) -> Callable[[], list[FigureRow]] | None:
    module_name, _, function = entry.partition(":")
    try:
        module = sys.modules[__name__] if module_name == "bench.__main__" else None
        module = module or importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    measure = getattr(module, function, None)
    return measure if callable(measure) else None


def _run(names: list[tuple[str, str]]) -> list[tuple[str, FigureRow | None, str]]:
    """(name, row or None, status) for every figure."""
    results: list[tuple[str, FigureRow | None, str]] = []
    for name, entry in names:
        print(f"==> measuring {name} ...", file=sys.stderr, flush=True)
        try:
            measure = _load(entry)
            if measure is None:
                results.append((name, None, f"not written yet ({entry})"))
                continue
            for row in measure():
                ratio = row["value"] / row["anchor"]
                results.append((name, row, "PASS" if _verdict(ratio, row["target"]) else "FAIL"))
        except Exception as exc:
            traceback.print_exc()
            results.append((name, None, f"ERROR: {type(exc).__name__}: {exc}"))
    return results


def _table(results: list[tuple[str, FigureRow | None, str]]) -> str:
    header = ("figure", "value", "anchor", "ratio", "target", "result")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for name, row, status in results:
        if row is None:
            rows.append((name, "-", "-", "-", "-", status))
            continue
        unit = row.get("unit", "")
        ratio = row["value"] / row["anchor"]
        rows.append(
            (
                row["figure"],
                f"{row['value']:.3g} {unit}".strip(),
                f"{row['anchor']:.3g} {unit}".strip(),
                f"{ratio:.2f}",
                row["target"],
                status,
            )
        )
        if row.get("note"):
            notes.append(f"  {row['figure']}: {row['note']}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the figures and print the table; see the module docstring for the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--strict", action="store_true", help="exit 1 if any figure FAILs")
    parser.add_argument("--only", default=None, help="run only figures matching this word")
    args = parser.parse_args(argv)
    selected = [
        (name, entry)
        for name, entry in FIGURES
        if args.only is None or args.only in name or args.only in entry
    ]
    results = _run(selected)
    print(_table(results))
    bad = [s for _, _, s in results if s == "FAIL" or s.startswith("ERROR")]
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
