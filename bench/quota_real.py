"""The quota at the real rate: the app's default quota (100 calls / 60 s, 0.25 s margin) and a
backlog of sends that cannot share a call.

``MESSAGES`` sends, each with its own content, are drained by ``WORKERS`` workers that each
take one queue message at a time and call the app's real ``OutboundSender`` function
(:func:`bench.quota_e2e.run_quota_benchmark`), against the sandbox in its own process, which
enforces the same quota and records every call. Per run:

- utilisation = floor((N - 1) / calls) * (period + margin) / (last call - first call), with N
  the upstream calls: the least time the quota lets N calls span, against the time they did;
- the most calls in any window of the period (at most ``calls``), upstream 429s, duplicates
  (a RequestId accepted twice) and lost sends.

The figure is the median of ``SMARTDIALOG_BENCH_QUOTA_REAL_RUNS`` runs (default 3); each run
takes three minutes by nature. Where the time beyond the floor went is measured from outside
(:mod:`bench._observe`: every quota decision and sender outcome, timed). The grants' span is
exactly ``ramp + windows * (period + margin) + the lateness of one slot per window``: the ramp
is the time the first window took to make the calls the last window repeats (none when N - 1 is
a multiple of the quota), and a slot is late by the time from its freeing (a grant leaving the
window) to the grant that took it. ``python -m bench.quota_real`` prints one run's diagnosis.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench._observe import Invocation, Observation, observe_sender
from bench.quota_e2e import (
    fault_rows,
    floor_utilisation,
    invocation_row,
    max_in_window,
    run_quota_benchmark,
)

if TYPE_CHECKING:
    from bench.__main__ import FigureRow
    from bench._observe import QuotaDecision

__all__ = ["diagnose", "measure", "run_real_rate"]

RUNS = int(os.environ.get("SMARTDIALOG_BENCH_QUOTA_REAL_RUNS") or 3)
#: One more than a multiple of the quota: the floor is then reachable by a sender of any speed.
#: With 250 the figure also charges the time the first window takes to make the 50 calls the
#: last one repeats, i.e. how fast the machine sends (2.4 of 3.0 s lost on 2 cores: 0.976).
MESSAGES = 301
WORKERS = 4


def _quota_defaults() -> tuple[int, float, float]:
    """The app's default quota: calls, period and safety margin (shared/settings.py)."""
    from shared.settings import Settings

    fields = Settings.model_fields
    return (
        int(fields["quota_calls"].default),
        float(fields["quota_period_seconds"].default),
        float(fields["quota_safety_margin_seconds"].default),
    )


def _invocation_of(decision: QuotaDecision, seen: Observation) -> Invocation | None:
    """The sender invocation that asked for ``decision``."""
    return next(
        (
            i
            for i in seen.invocations
            if i.thread == decision.thread and i.started <= decision.asked <= i.ended
        ),
        None,
    )


def diagnose(
    seen: Observation, call_times: list[float], calls: int, window: float
) -> dict[str, Any]:
    """Where the calls' span went beyond the floor, from the sender's decisions and outcomes.

    For each window's slot on the way to the last grant: how late it was taken, and when the
    invocation that took it began relative to the slot freeing (after it: no sender was waiting
    for the slot, the taker came from the queue that late).
    """
    from shared.outbound import OutcomeKind
    from shared.quota import QuotaDenied, QuotaGrant

    pairs = sorted(
        ((d.result.granted_at, d) for d in seen.decisions if isinstance(d.result, QuotaGrant)),
        key=lambda pair: pair[0],
    )
    grants = [t for t, _ in pairs]
    if len(grants) <= calls or not call_times:
        return {"grants": len(grants)}
    windows = (len(grants) - 1) // calls
    chain_start = len(grants) - windows * calls - 1
    late, taker_began = [], []
    for j in range(chain_start + calls, len(grants), calls):
        freed = grants[j - calls] + window
        late.append(round(grants[j] - freed, 3))
        taker = _invocation_of(pairs[j][1], seen)
        taker_began.append(round(taker.started - freed, 3) if taker else None)
    every_slot = sorted(grants[j] - (grants[j - calls] + window) for j in range(calls, len(grants)))
    sent = [i for i in seen.invocations if i.outcome and i.outcome.kind is OutcomeKind.SENT]
    deferred = [i for i in seen.invocations if i.outcome and i.outcome.kind is OutcomeKind.DEFERRED]
    denied_threads = [
        (d.thread, d.asked) for d in seen.decisions if isinstance(d.result, QuotaDenied)
    ]
    return {
        "grants": len(grants),
        "unused_grants": len(grants) - len(call_times),
        "ramp": round(grants[chain_start] - grants[0], 3),
        "slots_late": late,
        "taker_began_after_slot_freed": taker_began,
        "slot_lateness_median": round(statistics.median(every_slot), 3),
        "slot_lateness_p90": round(every_slot[int(0.9 * (len(every_slot) - 1))], 3),
        # the last call's way from grant to sandbox minus the first one's
        "arrival_skew": round((call_times[-1] - grants[-1]) - (call_times[0] - grants[0]), 3),
        "denials": dict(
            Counter(
                str(d.result.reason) for d in seen.decisions if isinstance(d.result, QuotaDenied)
            )
        ),
        "deferrals": dict(Counter(str(i.outcome.detail) for i in deferred if i.outcome)),
        "deferral_seconds": dict(
            sorted(Counter(i.outcome.delay_seconds or 0 for i in deferred if i.outcome).items())
        ),
        # sent after a denial in the same invocation: waited in process for a slot
        "waited_in_process": sum(
            any(t == i.thread and i.started <= a <= i.ended for t, a in denied_threads)
            for i in sent
        ),
        "invocations": len(seen.invocations),
        "raised": sum(1 for i in seen.invocations if i.outcome is None),
    }


def run_real_rate(messages: int = MESSAGES, workers: int = WORKERS) -> dict[str, Any]:
    """One run: its figures and the diagnosis of where the time went."""
    from shared.names import QUOTA_TABLE
    from shared.storage import StorageOp, count_round_trips

    calls, period, margin = _quota_defaults()
    window = period + margin
    counter = count_round_trips()
    before, refused_before = counter.snapshot(), counter.refused()
    with observe_sender() as seen:
        result = run_quota_benchmark(
            messages=messages,
            workers=workers,
            quota_calls=calls,
            quota_period=period,
            safety_margin=margin,
            timeout=((messages - 1) // calls + 2) * window + 60,
            sandbox_in_process=False,
            per_receive=1,
            distinct_content=True,
        )
    quota_write = (StorageOp.TABLE_WRITE, QUOTA_TABLE)
    times: list[float] = result["call_times"]
    utilisation, span = floor_utilisation(result["sent_times"], calls, window)  # refused: none
    floor = (len(result["sent_times"]) - 1) // calls * window
    return {
        "messages": messages,
        "workers": workers,
        "quota": f"{calls}/{period:g} s + {margin:g} s",
        "calls": len(times),
        "span": round(span, 3),
        "floor": round(floor, 3),
        "utilisation": round(utilisation, 4),
        "max_in_window": max_in_window(times, period),
        "upstream_429": result["upstream_429"],
        "duplicates": result["duplicates"],
        "lost": result["lost"],
        "seconds": result["elapsed_seconds"],
        "worker_errors": result["worker_errors"],
        "quota_writes": (counter.snapshot() - before)[quota_write],
        "quota_writes_refused": (counter.refused() - refused_before)[quota_write],
        "diagnosis": diagnose(seen, times, calls, window),
    }


def _story(run: dict[str, Any]) -> str:
    """One run's utilisation and where its span went, for the note."""
    d = run["diagnosis"]
    delays = sorted(d.get("deferral_seconds", {})) or [0]
    return (
        f"{run['utilisation']:.4f} (span {run['span']:.2f} s = floor {run['floor']:.2f} s + ramp "
        f"{d.get('ramp')} s + slots late {d.get('slots_late')} s + arrival {d.get('arrival_skew')} "
        f"s; each slot's taker began {d.get('taker_began_after_slot_freed')} s after it freed; "
        f"{sum(d.get('deferrals', {}).values())} deferrals of {delays[0]}-{delays[-1]} whole s, "
        f"{d.get('waited_in_process')} sends waited in process; quota writes "
        f"{run['quota_writes']}, {run['quota_writes_refused']} lost to contention)"
    )


def measure() -> list[FigureRow]:
    """The rows for ``python -m bench`` (issue "One send path", performance)."""
    runs = [run_real_rate() for _ in range(RUNS)]
    calls, period, margin = _quota_defaults()
    shape = f"{calls}/{period:g} s + {margin:g} s, {MESSAGES} unpackable sends, {WORKERS} workers"
    rows: list[FigureRow] = [
        {
            "figure": f"real-rate quota utilisation, median of {len(runs)} ({shape})",
            "value": statistics.median(r["utilisation"] for r in runs),
            "anchor": 1.0,
            "target": ">= 0.99",
            "note": "; ".join(_story(r) for r in runs),
        },
        {
            "figure": f"real-rate max calls in a {period:g} s window",
            "value": max(r["max_in_window"] for r in runs),
            "anchor": float(calls),
            "target": "<= 1.0",
            "unit": "calls",
        },
    ]
    return rows + fault_rows("real-rate ", runs) + [invocation_row("real-rate ", runs)]


if __name__ == "__main__":
    print(json.dumps(run_real_rate(), indent=2))
