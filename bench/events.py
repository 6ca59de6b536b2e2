"""Events in: events per second from the CloudEvents HTTP door to queued sends, next to raw
``QueueClient.send_message`` of the same number of send commands into the same Azurite.

- *through the door* (the figure): ``EVENTS`` Azure Monitor alerts (structured mode, a fresh id
  each) POSTed one by one to the app's ``CloudEvents`` function in process (a real
  ``HttpRequest``), against one stored rule with one fixed recipient: parse, match (JMESPath
  condition), render, one send command queued on ``smartdialog-outbound``; answered 202 once it
  is stored. Storage round trips are counted (``shared.storage.count_round_trips``) and printed
  per matched event (target at most 5).
- *raw* (the anchor): the same number of copies of one such command text put on another queue.
- *twice*: ``TWICE`` other alerts are each delivered twice; the dev host's sender then drains
  ``smartdialog-outbound`` against an in-process sandbox: upstream calls per event (target 0
  duplicates, i.e. exactly one call per event).

The rates are medians of ``ROUNDS`` rounds. Each round starts with both queues empty (Azurite
slows with every message it holds) and the sides take turns, ``BLOCK`` events at a time, the one
going first alternating: both meet the same Azurite and the same load from the rest of the machine
(whole rounds of 200 events, raw then door, ranged 0.71-0.94 on unchanged code).

Run alone with ``python -m bench.events``.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._app import app_settings, environment, fresh_queues, functions, run_host_until

if TYPE_CHECKING:
    from bench.__main__ import FigureRow

__all__ = ["measure", "run_events_benchmark"]

TARGET = ">= 0.3"
EVENTS = 1200
TWICE = 20
ROUNDS = 3
#: Events of one side in a row: the sides take turns (module docstring).
BLOCK = 100
#: Events POSTed before the rounds (tables, queues, clients, the rules read; caches warm).
WARMUP = 50
RAW_QUEUE = "bench-raw-events"
ALERT = (
    Path(__file__).resolve().parent.parent / "tests/events/fixtures/alert-activated.cloudevent.json"
)
RECIPIENT = "+358400000001"


def _rule() -> dict[str, Any]:
    return {
        "Id": "bench-alerts",
        "Match": {
            "EventType": "Microsoft.AlertsManagement.Alert.Activated",
            "Condition": "data.essentials.severity == 'Sev1'",
        },
        "Message": {"Sender": "Ops", "Content": "$(data.essentials.alertRule) fired ($(id))"},
        "Recipients": {"Numbers": [RECIPIENT]},
    }


def _call(name: str, method: str, body: Any, headers: dict[str, str]) -> Any:
    import azure.functions as func

    request = func.HttpRequest(
        method=method, url=f"http://localhost:7071/api/{name}", headers=headers,
        params={}, route_params={}, body=json.dumps(body).encode(),
    )  # fmt: skip
    return functions()[name](request)


def _post_events(events: list[dict[str, Any]]) -> int:
    sends = 0
    for event in events:
        response = _call(
            "CloudEvents", "POST", event, {"Content-Type": "application/cloudevents+json"}
        )
        assert response.status_code == 202, response.get_body()[:300]
        sends += json.loads(response.get_body())["Sends"]
    return sends


def _alerts(count: int) -> list[dict[str, Any]]:
    base = json.loads(ALERT.read_text())
    alerts = []
    for _ in range(count):
        alert = copy.deepcopy(base)
        alert["id"] = str(uuid.uuid4())
        alerts.append(alert)
    return alerts


def run_events_benchmark(
    events: int = EVENTS, twice: int = TWICE, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Measure; a dict of the numbers (see the module docstring; ``twice=0`` skips that part,
    which starts the dev host)."""
    from azure.storage.queue import QueueClient

    from devhost.azurite import start_azurite
    from sandbox.server import SandboxServer
    from shared.names import OUTBOUND_QUEUE
    from shared.storage import count_round_trips

    counter = count_round_trips()  # before the app builds a client
    out: dict[str, Any] = {"events": events}
    with (
        start_azurite() as azurite,
        SandboxServer(dlr_delay=3600) as sandbox,
        environment(app_settings(azurite.connection_string, sandbox)),
    ):
        fresh_queues()
        created = _call("CreateNotificationRule", "POST", _rule(), {})
        assert created.status_code == 201, created.get_body()[:300]
        _post_events(_alerts(WARMUP))  # warm-up: tables, queues, clients, the rules read
        outbound = QueueClient.from_connection_string(azurite.connection_string, OUTBOUND_QUEUE)
        raw = QueueClient.from_connection_string(azurite.connection_string, RAW_QUEUE)
        raw.create_queue()
        text = outbound.peek_messages(max_messages=1)[0].content
        door_rates, raw_rates, ops = [], [], []
        for _ in range(rounds):
            fresh_queues()
            raw.clear_messages()
            alerts = _alerts(events)
            spent = {"door": 0.0, "raw": 0.0}
            before = counter.snapshot()
            for block, start in enumerate(range(0, events, BLOCK)):
                part = alerts[start : start + BLOCK]
                for side in ("raw", "door") if block % 2 == 0 else ("door", "raw"):
                    started = time.perf_counter()
                    if side == "door":
                        sends = _post_events(part)
                        assert sends == len(part), f"{sends} sends for {len(part)} events"
                    else:
                        for _ in part:
                            raw.send_message(text)
                    spent[side] += time.perf_counter() - started
            door_rates.append(events / spent["door"])
            raw_rates.append(events / spent["raw"])
            ops.append(sum((counter.snapshot() - before).values()) / events)  # raw's: uncounted
        out.update(
            door=statistics.median(door_rates),
            raw=statistics.median(raw_rates),
            ops_per_event=statistics.median(ops),
            ratios=[round(d / r, 2) for d, r in zip(door_rates, raw_rates, strict=True)],
        )
        if not twice:
            return out
        # Duplicates: every event delivered twice, then the sender drains the queue.
        fresh_queues()
        pairs = _alerts(twice)
        _post_events(pairs)
        _post_events(pairs)
        run_host_until(
            lambda: outbound.get_queue_properties().approximate_message_count == 0, timeout=300
        )
        calls: dict[str, int] = {}
        for message in sandbox.state.snapshot("messages"):
            for alert in pairs:
                if alert["id"] in str(message.get("content")):
                    calls[alert["id"]] = calls.get(alert["id"], 0) + 1
        out["twice"] = twice
        out["missing"] = sum(1 for a in pairs if a["id"] not in calls)
        out["duplicates"] = sum(n - 1 for n in calls.values())
    return out


def measure() -> list[FigureRow]:
    """The rows for ``python -m bench`` (issue 15, notification rules)."""
    r = run_events_benchmark()
    return [
        {
            "figure": "events in: HTTP door -> queued sends",
            "value": round(r["door"], 1),
            "anchor": round(r["raw"], 1),
            "target": TARGET,
            "unit": "events/s",
            "note": f"{r['events']} alerts x {ROUNDS} rounds (ratios {r['ratios']}), anchor raw "
            "send_message; "
            f"{r['ops_per_event']:.2f} storage ops per matched event (target <= 5)",
        },
        {
            "figure": "events in: storage ops per matched event",
            "value": round(r["ops_per_event"], 2),
            "anchor": 5.0,
            "target": "<= 1",
            "unit": "ops",
        },
        {
            "figure": "events in: duplicates when delivered twice",
            "value": float(r["duplicates"] + r["missing"]),
            "anchor": 1.0,
            "target": "<= 0",
            "unit": "sends",
            "note": f"{r['twice']} alerts delivered twice: {r['duplicates']} duplicate and "
            f"{r['missing']} missing sends",
        },
    ]


if __name__ == "__main__":
    print(json.dumps(run_events_benchmark(), indent=2))
