"""Storage operations counted, not timed: the accept path of a send, and a pack's drain.

Every HTTP request the app's table and queue clients send is counted by kind and by table or
queue (``shared.storage.count_round_trips``), against Azurite and an in-process sandbox, through
the app's real functions:

1. **accept**: one SendMessage of one recipient (the HTTP function, in process), ``SENDS`` times
   without an Idempotency-Key and ``SENDS`` times with one, after a warm-up that made the tables
   and queues: round trips per accepted send (the mean: every trip any send made; the median
   is in the note). Target of the issue "One send path": at most 3.
2. **drain**: ``PACK_MEMBERS`` packable SendMessage requests (same sender and content, one
   recipient each) are accepted first; then the dev host runs the queue triggers with host.json's
   settings until every recipient was accepted upstream and the outbound queue is empty. Table
   writes and transactions during the drain per member sent; target at most 0.1 (plus each
   member's event, a queue put, which is not counted there). The host's own receives and deletes
   go through its own queue client and are not counted; the note gives the invocations per
   member instead (each one a message received and deleted by the host).

Run it alone with ``python -m bench.storage_ops``; ``measure()`` gives the rows of ``make bench``.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench._app import (
    accepted_upstream,
    app_settings,
    environment,
    fresh_queues,
    post,
    run_host_until,
)
from bench._observe import observe_sender
from bench.quota_e2e import repeats

if TYPE_CHECKING:
    from bench.__main__ import FigureRow
    from shared.outbound import SendOutcome
    from shared.storage import RoundTrips, StorageOp

__all__ = ["measure", "run_storage_ops_benchmark"]

SENDS = 50
WARM_UP = 5
PACK_MEMBERS = 200
#: The lane backstop of this run (``SMARTDIALOG_LANE_BACKSTOP_SECONDS``, default 300): each
#: member's own queue message stays invisible this long, and the drain ends when the queue is
#: empty, so it waits this out. A minute is well after the pack's call (the 200 accepts take a
#: few seconds) and counts the same operations as the default, four minutes sooner.
BACKSTOP_SECONDS = 60
#: Anchors: the issue's targets (round trips per accepted send; table writes per pack member).
ACCEPT_TARGET = 3.0
PACK_TARGET = 0.1

Counts = Counter[tuple["StorageOp", str]]


def _accept(counter: RoundTrips, count: int, *, keyed: bool, first: int) -> list[Counts]:
    """``count`` single sends through SendMessage, each one's round trips."""
    samples: list[Counts] = []
    for i in range(first, first + count):
        body = {
            "Sender": "Bench",
            "Content": "Hi $(name), your order shipped.",
            "Recipients": [{"Address": f"+35840{i:07d}", "Personalization": {"name": "Ada"}}],
        }
        headers = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"} if keyed else {}
        before = counter.snapshot()
        post("SendMessage", body, headers)
        samples.append(counter.snapshot() - before)
    return samples


def _by_kind(counts: Counts, per: float) -> dict[str, dict[str, float]]:
    """Counts per ``per`` by kind, each with its tables or queues: {kind: {name: n}}."""
    kinds: dict[str, dict[str, float]] = {}
    for (op, name), n in sorted(counts.items()):
        kinds.setdefault(str(op), {})[name or "-"] = round(n / per, 3)
    return kinds


def _summary(
    kinds: dict[str, dict[str, float]], refused: dict[str, dict[str, float]] | None = None
) -> str:
    """ "table read 1 (SmartDialogSuppressions 1), ..." for a row's note; with ``refused``, how
    many of each kind were answered with an error status (a lost compare-and-swap: 412/409)."""
    parts = []
    for kind, names in kinds.items():
        detail = ", ".join(f"{name} {n:g}" for name, n in names.items())
        lost = sum((refused or {}).get(kind, {}).values())
        parts.append(
            f"{kind} {sum(names.values()):.3g} ({detail}{f'; refused {lost:.3g}' if lost else ''})"
        )
    return "; ".join(parts)


def _outcome(outcome: SendOutcome | None) -> str:
    """ "sent", "deferred/claimed", "sent/200 messages" (a pack's leader), "raised"."""
    if outcome is None:
        return "raised"
    detail = outcome.detail or ""
    if detail.startswith("pack "):  # "pack <id>: 200 messages"
        detail = detail.split(": ", 1)[-1]
    return f"{outcome.kind}/{detail}" if detail else str(outcome.kind)


def _queue_messages(connection: str, name: str) -> int:
    """Messages in a queue, visible or not (through a client of its own: not counted)."""
    from azure.storage.queue import QueueClient

    with QueueClient.from_connection_string(connection, name) as queue:
        return int(queue.get_queue_properties().approximate_message_count or 0)


def run_storage_ops_benchmark(
    *, sends: int = SENDS, pack_members: int = PACK_MEMBERS, timeout: float = 600.0
) -> dict[str, Any]:
    """Both measurements (module docstring); their counts."""
    from devhost.azurite import start_azurite
    from sandbox.server import SandboxServer
    from shared.names import EVENTS_QUEUE, OUTBOUND_QUEUE
    from shared.storage import StorageOp, count_round_trips

    counter = count_round_trips()  # before the app builds a client
    results: dict[str, Any] = {"sends": sends, "pack_members": pack_members}
    with (
        start_azurite() as azurite,
        SandboxServer(dlr_delay=3600) as sandbox,
        environment(
            {
                **app_settings(azurite.connection_string, sandbox),
                "SMARTDIALOG_LANE_BACKSTOP_SECONDS": str(BACKSTOP_SECONDS),
            }
        ),
    ):
        fresh_queues()
        _accept(counter, WARM_UP, keyed=False, first=0)
        _accept(counter, WARM_UP, keyed=True, first=WARM_UP)
        for keyed in (False, True):
            first = 2 * WARM_UP + (sends if keyed else 0)
            samples = _accept(counter, sends, keyed=keyed, first=first)
            totals = [sum(s.values()) for s in samples]
            results["accept with key" if keyed else "accept"] = {
                "median": statistics.median(totals),
                "mean": round(statistics.fmean(totals), 3),
                "max": max(totals),
                "per_send": _by_kind(sum(samples, Counter()), len(samples)),
            }

        # The drain: a backlog of packable sends, accepted before the host starts.
        fresh_queues()
        content = f"Pack {uuid.uuid4().hex[:6]} for $(name)"
        addresses = [f"+35845{i:07d}" for i in range(pack_members)]
        for i, address in enumerate(addresses):
            recipient = {"Address": address, "Personalization": {"name": f"r{i}"}}
            post(
                "SendMessage",
                {"Sender": "Bench", "Content": content, "Recipients": [recipient]},
            )
        wanted = set(addresses)
        connection = azurite.connection_string
        before, refused_before = counter.snapshot(), counter.refused()
        started = time.monotonic()
        with observe_sender() as seen:
            run_host_until(
                lambda: (
                    wanted <= accepted_upstream(sandbox)
                    and _queue_messages(connection, OUTBOUND_QUEUE) == 0
                ),
                timeout,
            )
        seconds = time.monotonic() - started
        drained = counter.snapshot() - before
        refused = counter.refused() - refused_before
        calls = [
            r
            for r in sandbox.state.snapshot("requests")
            if r.get("method") == "POST" and str(r.get("path", "")).endswith("/messages")
        ]
        per_address = Counter(
            r["address"] for m in sandbox.state.snapshot("messages") for r in m["recipients"]
        )
        members = sum(1 for a in wanted if per_address.get(a, 0) > 0)
        per = max(1, members)
        table_writes = sum(
            n
            for (op, _), n in drained.items()
            if op in (StorageOp.TABLE_WRITE, StorageOp.TABLE_TRANSACTION)
        )
        events = drained.get((StorageOp.QUEUE_PUT, EVENTS_QUEUE), 0)
        # The app's own puts, gets, deletes and updates: not its events, not queue set-up.
        queue_ops = (
            sum(
                n
                for (op, _), n in drained.items()
                if str(op).startswith("queue") and op is not StorageOp.QUEUE_ADMIN
            )
            - events
        )
        results["drain"] = {
            "members_sent": members,
            "upstream_calls": len(calls),
            "duplicates": sum(c - 1 for a, c in per_address.items() if a in wanted and c > 1)
            + repeats(calls),
            "seconds": round(seconds, 1),
            "table_writes_per_member": round(table_writes / per, 3),
            "queue_ops_per_member": round(queue_ops / per, 3),
            "events_per_member": round(events / per, 3),
            "invocations_per_member": round(len(seen.invocations) / per, 3),
            "outcomes": dict(Counter(_outcome(i.outcome) for i in seen.invocations)),
            "per_member": _by_kind(drained, per),
            "refused_per_member": _by_kind(refused, per),
        }
    return results


def measure() -> list[FigureRow]:
    """The rows for ``python -m bench`` (issue "One send path", performance)."""
    r = run_storage_ops_benchmark()
    rows: list[FigureRow] = []
    for name, label in (("accept", "no key"), ("accept with key", "Idempotency-Key")):
        a = r[name]
        note = f"mean of {r['sends']} (every trip any send made), median {a['median']:g}, "
        note += f"max {a['max']}; per send: "
        rows.append(
            {
                "figure": f"storage round trips per accepted SendMessage ({label})",
                "value": a["mean"],
                "anchor": ACCEPT_TARGET,
                "target": "<= 1.0",
                "unit": "trips",
                "note": note + _summary(a["per_send"]),
            }
        )
    d = r["drain"]
    outcomes = ", ".join(f"{k} {n}" for k, n in Counter[str](d["outcomes"]).most_common())
    note = (
        f"{d['members_sent']} of {r['pack_members']} sent in {d['upstream_calls']} upstream "
        f"call(s), {d['duplicates']} duplicates, drain {d['seconds']} s (lane backstop "
        f"{BACKSTOP_SECONDS} s); per member: events "
        f"{d['events_per_member']:g}, other queue ops {d['queue_ops_per_member']:g} (set-up "
        f"apart), invocations {d['invocations_per_member']:g} ({outcomes}); "
    )
    rows.append(
        {
            "figure": f"table writes per pack member sent ({r['pack_members']} packable sends)",
            "value": d["table_writes_per_member"],
            "anchor": PACK_TARGET,
            "target": "<= 1.0",
            "unit": "writes",
            "note": note + _summary(d["per_member"], d["refused_per_member"]),
        }
    )
    return rows


if __name__ == "__main__":
    print(json.dumps(run_storage_ops_benchmark(), indent=2))
