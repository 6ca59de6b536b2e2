"""Store-only quota benchmark: many processes and threads hammer one Table quota log.

Workers are split over ``processes`` spawned processes (threads inside each). Half of
each process's threads behave like the queue sender (``try_acquire``, then sleep the
``retry_after`` it was given), the other half like a sync action (``acquire`` with a
timeout). Every grant's recorded time and the time the worker got it back (both
``time.time()`` on this one machine) are collected and checked:

- ``max_in_window``: the most grants received in any sliding window of the period;
  must be <= ``calls`` (what SmartDialog would see if each call went out at once);
- ``max_in_window_decided``: the same over the recorded grant times and a window of
  period + margin, the store's own invariant; must be <= ``calls`` whatever the load;
- ``utilisation``: grants / (calls x duration / period), what the quota allows;
- ``efficiency``: grants / what a perfect limiter with the same margin admits to
  always-hungry callers (``calls`` at 0, W, 2W, ... with W = period + margin): the
  part lost to contention and wake-up latency;
- ``max_grant_delay_ms``: longest time from a grant's recorded time to its caller
  having it; the store withdraws grants later than half the margin (``late_grants``), so
  this stays below that plus a thread switch.

Run alone with ``python -m bench.quota_store`` (starts its own Azurite); ``measure()``
gives the rows of ``make bench``. Scripts calling :func:`run_store_benchmark` need an
``if __name__ == "__main__":`` guard: the workers are spawned processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import queue
import random
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.quota import (
    QuotaDenied,
    QuotaExceeded,
    QuotaGrant,
    QuotaStore,
    TableQuotaStore,
)

if TYPE_CHECKING:
    from bench.__main__ import FigureRow

#: How long to wait for the worker processes beyond the run itself (start-up on a busy box).
_PROCESS_GRACE = 120.0


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    first = 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def _sender_worker(
    store: QuotaStore, end: float, out: list[tuple[float, float]], lat: list[float]
) -> None:
    while (now := time.time()) < end:
        started = time.perf_counter()
        result = store.try_acquire()
        lat.append(time.perf_counter() - started)
        if isinstance(result, QuotaGrant):
            out.append((result.granted_at, time.time()))
        elif isinstance(result, QuotaDenied):
            time.sleep(max(0.0, min(result.retry_after + random.uniform(0, 0.02), end - now)))


def _action_worker(store: QuotaStore, end: float, out: list[tuple[float, float]]) -> None:
    while (remaining := end - time.time()) > 0:
        try:
            grant = store.acquire(remaining)
        except QuotaExceeded:
            return  # no slot frees before the end of the run
        out.append((grant.granted_at, time.time()))


def hammer(
    store: QuotaStore, threads: int, duration: float
) -> tuple[list[tuple[float, float]], list[float]]:
    """Run ``threads`` workers on ``store`` for ``duration`` seconds (half sender-like, half
    action-like). Returns every grant as (recorded time, time received) and the latency
    of every ``try_acquire`` call in seconds.
    """
    end = time.time() + duration
    grants: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_sender_worker if i % 2 == 0 else _action_worker,
            args=(store, end, grants[i], latencies[i]) if i % 2 == 0 else (store, end, grants[i]),
            name=f"quota-hammer-{i}",
            daemon=True,
        )
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [g for each in grants for g in each], [x for each in latencies for x in each]


def _process_main(
    connection_string: str,
    table: str,
    connection: str,
    quota: tuple[int, float, float],
    threads: int,
    duration: float,
    barrier: Any,
    results: Any,
) -> None:
    from azure.data.tables import TableClient

    calls, period, margin = quota
    client = TableClient.from_connection_string(connection_string, table)
    store = TableQuotaStore(
        client, connection=connection, calls=calls, period=period, margin=margin
    )
    store.used()  # warm up: connection pool, table creation
    barrier.wait()
    grants, latencies = hammer(store, threads, duration)
    stats = store.stats()
    results.put(
        {
            "grants": grants,
            "latencies": latencies,
            "denials": stats.denials,
            "contended_denials": stats.contended_denials,
            "late_grants": stats.late_grants,
            "cas_conflicts": stats.cas_conflicts,
        }
    )


def run_store_benchmark(
    connection_string: str,
    calls: int,
    period: float,
    workers: int,
    duration: float,
    *,
    margin: float = 0.05,
    processes: int = 2,
) -> dict[str, Any]:
    """Hammer one quota log from ``workers`` threads in ``processes`` processes.

    Returns the figures described in the module docstring, plus the raw counts.
    Uses a fresh table in the given storage account and deletes it afterwards.
    """
    from azure.data.tables import TableServiceClient

    processes = max(1, min(processes, workers))
    per_process = [
        workers // processes + (1 if i < workers % processes else 0) for i in range(processes)
    ]
    table = f"QuotaBench{uuid.uuid4().hex[:12]}"
    connection = f"bench-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")  # no forked SDK connections or locks
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_main,
            args=(
                connection_string,
                table,
                connection,
                (calls, period, margin),
                n,
                duration,
                barrier,
                results,
            ),
            name=f"quota-bench-{i}",
        )
        for i, n in enumerate(per_process)
    ]
    for p in procs:
        p.start()
    collected: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + duration + _PROCESS_GRACE
        while len(collected) < processes:
            try:
                collected.append(results.get(timeout=0.5))
            except queue.Empty:
                crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if crashed or time.monotonic() > deadline:
                    codes = [p.exitcode for p in procs]
                    raise RuntimeError(
                        f"quota benchmark workers did not report (exit codes {codes}); "
                        "a script that calls this needs an `if __name__ == '__main__':` guard"
                    ) from None
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        service = TableServiceClient.from_connection_string(connection_string)
        service.delete_table(table)

    pairs: list[tuple[float, float]] = [(g[0], g[1]) for r in collected for g in r["grants"]]
    decided = [g for g, _ in pairs]
    received = [r for _, r in pairs]
    latencies = sorted(x for r in collected for x in r["latencies"])
    window = period + margin
    ideal = calls * math.ceil(duration / window)
    allowed = calls * duration / period
    return {
        "calls": calls,
        "period": period,
        "margin": margin,
        "workers": workers,
        "processes": processes,
        "duration": duration,
        "grants": len(pairs),
        "max_in_window": max_in_window(received, period),
        "max_in_window_decided": max_in_window(decided, window),
        "allowed": allowed,
        "utilisation": round(len(pairs) / allowed, 3),
        "efficiency": round(len(pairs) / ideal, 3),
        "max_grant_delay_ms": round(max((r - g for g, r in pairs), default=0.0) * 1000, 1),
        "denials": sum(r["denials"] for r in collected),
        "contended_denials": sum(r["contended_denials"] for r in collected),
        "late_grants": sum(r["late_grants"] for r in collected),
        "cas_conflicts": sum(r["cas_conflicts"] for r in collected),
        "try_acquire_ms_p50": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "try_acquire_ms_p99": (
            round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1) if latencies else None
        ),
    }


def measure() -> list[FigureRow]:
    """The ``make bench`` rows: a compressed quota (20 per 2 s, the default 0.25 s margin)
    hammered by 8 threads in 2 processes for 10 s, on a throw-away Azurite."""
    from devhost.azurite import start_azurite

    with start_azurite() as azurite:
        r = run_store_benchmark(
            azurite.connection_string, calls=20, period=2.0, workers=8, duration=10.0, margin=0.25
        )
    note = (
        f"{r['grants']} grants, utilisation of the raw quota {r['utilisation']}, "
        f"{r['cas_conflicts']} CAS conflicts, {r['contended_denials']} contended denials, "
        f"{r['late_grants']} late grants, grant-to-caller delay <= {r['max_grant_delay_ms']} ms, "
        f"try_acquire p50/p99 {r['try_acquire_ms_p50']}/{r['try_acquire_ms_p99']} ms"
    )
    return [
        {
            "figure": "quota store grants vs exact limiter",
            "value": r["grants"],
            "anchor": r["grants"] / r["efficiency"] if r["efficiency"] else 1.0,
            "unit": "grants",
            "target": ">= 0.95",
            "note": note,
        },
        {
            "figure": "quota store max calls in any window",
            "value": r["max_in_window"],
            "anchor": r["calls"],
            "unit": "calls",
            "target": "<= 1.0",
        },
    ]


def main() -> None:
    """Start a throw-away Azurite and print one run's figures as JSON."""
    from devhost.azurite import start_azurite

    with start_azurite() as azurite:
        figures = run_store_benchmark(
            azurite.connection_string, calls=20, period=2.0, workers=8, duration=10.0, margin=0.25
        )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
