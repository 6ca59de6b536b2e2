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
import sys
import traceback
from collections.abc import Callable
from typing import TypedDict

__all__ = ["FIGURES", "FigureRow", "main", "percentile"]


class _FigureRequired(TypedDict):
    figure: str
    value: float
    anchor: float
    target: str  # "<= 1.5" or ">= 0.8": the bound on value / anchor; "info": none


class FigureRow(_FigureRequired, total=False):
    """One line of the table."""

    unit: str
    note: str


#: (name shown if the figure cannot run, "module:function"). Order is the table's order.
FIGURES: list[tuple[str, str]] = [
    ("cold start", "bench.cold_start:measure"),
    ("action overhead", "bench.action_overhead:measure"),
    ("webhook ingest", "bench.webhook_ingest:measure"),
    ("quota", "bench.quota_e2e:measure"),
    ("bulk", "bench.bulk:measure"),
    ("storage ops", "bench.storage_ops:measure"),
    ("quota at the real rate", "bench.quota_real:measure"),
    ("flow send step", "bench.flow_step:measure"),
    ("events in", "bench.events:measure"),
    ("two connections at the real rate", "bench.connections:measure"),
]


#: The target of a figure shown for information only (never PASS or FAIL).
INFO = "info"


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile by nearest rank."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _verdict(ratio: float, target: str) -> bool:
    op, _, bound = target.partition(" ")
    limit = float(bound)
    return ratio <= limit if op == "<=" else ratio >= limit


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
                if row["target"] == INFO:
                    results.append((name, row, "INFO"))
                    continue
                if row["anchor"] <= 0:  # a run too small to judge
                    results.append((name, row, "ERROR: anchor not positive"))
                    continue
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
        ratio = row["value"] / row["anchor"] if row["anchor"] else math.inf
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
