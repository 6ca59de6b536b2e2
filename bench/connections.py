"""Two connections at full quota side by side: each its own SmartDialog account (its own sandbox
process and token) at 100 calls / 60 s (+ 0.25 s margin), each with a backlog of sends that
cannot share a call, drained together by ``WORKERS`` workers calling the app's real
``OutboundSender`` (:func:`bench.quota_e2e.drain_with_workers`) from one queue.

Per run and connection: utilisation by the real-quota formula
(:func:`bench.quota_e2e.floor_utilisation`: floor((N - 1) / calls) * (period + margin) over the
span of its calls), the most calls in any window of the period, upstream 429s, duplicates and
lost sends; and the combined calls per minute (two connections: twice one connection's). The
figure is the median of ``SMARTDIALOG_BENCH_CONNECTIONS_RUNS`` runs (default 3; about 3 minutes
each at the real rate). ``python -m bench.connections --compressed`` runs once at a compressed
quota (10 calls / 4 s + 0.1 s, 121 sends each) for a quick look.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench._app import app_settings, environment, fresh_queues, functions
from bench.quota_e2e import (
    SandboxProcess,
    drain_with_workers,
    fault_rows,
    floor_utilisation,
    invocation_row,
    max_in_window,
    repeats,
)

if TYPE_CHECKING:
    from bench.__main__ import FigureRow

__all__ = ["measure", "run_two_connections"]

RUNS = int(os.environ.get("SMARTDIALOG_BENCH_CONNECTIONS_RUNS") or 3)
#: Per connection: one more than a multiple of the quota (see bench.quota_real).
MESSAGES = 301
WORKERS = 4
REAL = (100, 60.0, 0.25)
COMPRESSED = (10, 4.0, 0.1)
SECOND_TOKEN = "sandbox-token-2"


def _second_customer() -> str:
    """The sandbox's second account's customer (2001; 1002 before the sandbox had accounts)."""
    from pathlib import Path

    seed = (Path(__file__).resolve().parent.parent / "sandbox" / "seed.json").read_text("utf-8")
    return "2001" if '"2001"' in seed else "1002"


SECOND_CUSTOMER = _second_customer()
#: (connection, its Connection field, customer, service) of each account.
ACCOUNTS = (
    ("default", None, "1001", "s-1001-oneway"),
    ("second", "second", SECOND_CUSTOMER, f"s-{SECOND_CUSTOMER}-oneway"),
)
DELIVERED = "+358400000001"


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_two_connections(
    *,
    messages: int = MESSAGES,
    workers: int = WORKERS,
    quota: tuple[int, float, float] = REAL,
) -> dict[str, Any]:
    """One run: ``messages`` unpackable sends on each of two connections, drained together."""
    from devhost.azurite import start_azurite
    from shared.names import OUTBOUND_QUEUE

    calls, period, margin = quota
    window = period + margin
    azurite = start_azurite()
    sandboxes = {
        "default": SandboxProcess(calls, period),
        # A sandbox with accounts knows sandbox-token-2 as its second account's.
        "second": SandboxProcess(calls, period)
        if SECOND_CUSTOMER == "2001"
        else SandboxProcess(calls, period, token=SECOND_TOKEN),
    }
    second = sandboxes["second"]
    env = {
        **app_settings(azurite.connection_string, sandboxes["default"]),
        "SMARTDIALOG_QUOTA_CALLS": str(calls),
        "SMARTDIALOG_QUOTA_PERIOD_SECONDS": str(period),
        "SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS": str(margin),
        "SMARTDIALOG_SEND_RETRY_BASE_SECONDS": "1",
        "SMARTDIALOG_CONNECTIONS__SECOND__BASE_URL": second.api_url,
        "SMARTDIALOG_CONNECTIONS__SECOND__ACCESS_TOKEN": SECOND_TOKEN,
        "SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMERS": SECOND_CUSTOMER,
        "SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMER_ID": SECOND_CUSTOMER,
        "SMARTDIALOG_CONNECTIONS__SECOND__SERVICE_ID": f"s-{SECOND_CUSTOMER}-oneway",
    }
    run = uuid.uuid4().hex[:8]
    try:
        with environment(env):
            from shared.connections import reset_connections_cache
            from shared.storage import queue_client

            reset_connections_cache()
            fresh_queues()
            outbound = queue_client(OUTBOUND_QUEUE)
            ids: dict[str, list[str]] = {name: [] for name, *_ in ACCOUNTS}
            for i in range(messages):  # interleaved: both backlogs wait on one queue
                for name, field, customer, service in ACCOUNTS:
                    message_id = f"bench-{run}-{name}-{i:05d}"
                    ids[name].append(message_id)
                    command: dict[str, Any] = {
                        "operation": "SendMessage",
                        "messageId": message_id,
                        "customerId": customer,
                        "serviceId": service,
                        "body": {
                            "Sender": "Bench",
                            "Content": f"Connections benchmark {name} {i} $(n)",
                            "Recipients": [{"Address": DELIVERED, "Personalization": {"n": 1}}],
                        },
                    }
                    if field is not None:
                        command["Connection"] = field
                    outbound.send_message(json.dumps(command))
            elapsed, errors, invoked = drain_with_workers(
                functions()["OutboundSender"],
                workers=workers,
                per_receive=1,
                done=lambda: all(len(s.log("messages")) >= messages for s in sandboxes.values()),
                timeout=((messages - 1) // calls + 2) * window + 60,
            )
            per: dict[str, dict[str, Any]] = {}
            every: list[float] = []
            for name, sandbox in sandboxes.items():
                requests = [
                    r
                    for r in sandbox.log("requests")
                    if r.get("method") == "POST" and str(r.get("path", "")).endswith("/messages")
                ]
                times = sorted(_time(r["time"]) for r in requests)
                every.extend(times)
                ok = [r for r in requests if r.get("status") == 200]
                per_id = Counter(str((r.get("body") or {}).get("RequestId")) for r in ok)
                sent = sorted(_time(r["time"]) for r in requests if r.get("status") == 200)
                utilisation, span = floor_utilisation(sent, calls, window)  # refused: none
                per[name] = {
                    "calls": len(times),
                    "span": round(span, 3),
                    "utilisation": round(utilisation, 4),
                    "max_in_window": max_in_window(times, period),
                    "upstream_429": sum(1 for r in requests if r.get("status") == 429),
                    "duplicates": sum(n - 1 for n in per_id.values() if n > 1) + repeats(requests),
                    "lost": sum(1 for m in ids[name] if per_id.get(m, 0) == 0),
                }
            every.sort()
            overall = every[-1] - every[0] if len(every) > 1 else 0.0
            return {
                "messages_per_connection": messages,
                "workers": workers,
                "quota": f"{calls}/{period:g} s + {margin:g} s",
                "connections": per,
                "combined_calls_per_minute": round((len(every) - 1) / overall * 60, 2)
                if overall
                else 0.0,
                "one_connection_quota_per_minute": round(calls / window * 60, 2),
                "seconds": round(elapsed, 2),
                "invocations": invoked,
                "worker_errors": len(errors),
                "first_errors": errors[:3],
            }
    finally:
        for sandbox in sandboxes.values():
            sandbox.stop()
        azurite.stop()


def measure() -> list[FigureRow]:
    """The rows for ``python -m bench`` (issue 16, performance): the real rate, median of runs."""
    runs = [run_two_connections() for _ in range(RUNS)]
    calls, period, margin = REAL
    shape = f"2 connections x {calls}/{period:g} s + {margin:g} s, {MESSAGES} sends each"
    rows: list[FigureRow] = []
    for name, *_ in ACCOUNTS:
        values = [r["connections"][name]["utilisation"] for r in runs]
        rows.append(
            {
                "figure": f"connection {name} utilisation, median of {len(runs)} ({shape})",
                "value": statistics.median(values),
                "anchor": 1.0,
                "target": ">= 0.99",
                "note": ", ".join(f"{v:.4f}" for v in values),
            }
        )
    one = calls / (period + margin) * 60
    rows.append(
        {
            "figure": f"combined calls per minute, median ({shape})",
            "value": statistics.median(r["combined_calls_per_minute"] for r in runs),
            "anchor": 2 * one,
            "target": ">= 0.98",
            "unit": "calls/min",
            "note": f"twice one connection's {one:.1f}",
        }
    )
    rows.append(
        {
            "figure": f"connections: max calls of one connection in a {period:g} s window",
            "value": max(c["max_in_window"] for r in runs for c in r["connections"].values()),
            "anchor": float(calls),
            "target": "<= 1.0",
            "unit": "calls",
        }
    )
    every = [c for r in runs for c in r["connections"].values()]
    return rows + fault_rows("connections: ", every) + [invocation_row("connections: ", runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--compressed", action="store_true", help="10 calls / 4 s, one run")
    parser.add_argument("--messages", type=int, default=None, help="sends per connection")
    args = parser.parse_args()
    quota = COMPRESSED if args.compressed else REAL
    messages = args.messages or (121 if args.compressed else MESSAGES)
    print(json.dumps(run_two_connections(messages=messages, quota=quota), indent=2))


if __name__ == "__main__":
    main()
