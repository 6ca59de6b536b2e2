"""An inbound SMS end to end: register our webhook with the sandbox through our own action, let
the sandbox deliver a simulated inbound message to it over HTTP (202: on the intake queue), let
the dev host's ``InboundProcessor`` turn it into the event, find the event on
``smartdialog-inbound``."""

from __future__ import annotations

import json
import uuid
from typing import Any

from shared.names import INBOUND_INTAKE_QUEUE, INBOUND_QUEUE, poison_queue
from tests.e2e.conftest import MAX_DEQUEUE_COUNT, TWO_WAY_SERVICE, Stack, poll

SENDER = "+358401234567"


def _events_with(stack: Stack, marker: str) -> list[dict[str, Any]]:
    events = [json.loads(text) for text in stack.peek(INBOUND_QUEUE)]
    return [e for e in events if marker in json.dumps(e.get("data", {}))]


def _intake_drained(stack: Stack) -> bool:
    """Nothing on the intake queue, visible or being processed."""
    properties = stack.queue(INBOUND_INTAKE_QUEUE).get_queue_properties()
    return int(properties.approximate_message_count or 0) == 0


def _register(stack: Stack) -> dict[str, Any]:
    response = stack.http.post(f"{stack.api}/inbound/webhooks/{TWO_WAY_SERVICE}")
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def _simulate_inbound(stack: Stack, content: str) -> dict[str, Any]:
    response = stack.http.post(
        f"{stack.sandbox.url}/sandbox/inbound",
        json={
            "sender": SENDER,
            "recipient": "SmartDialog",
            "content": content,
            "service": TWO_WAY_SERVICE,
        },
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_inbound_sms_in_the_sandbox_reaches_the_inbound_queue_as_one_event(stack: Stack) -> None:
    assert stack.has_function("InboundProcessor")
    registration = _register(stack)
    assert registration.get("ActionId")
    pipelines = stack.sandbox_get("/sandbox/pipelines")
    assert f"{stack.api}/callbacks/inbound/{TWO_WAY_SERVICE}?token=" in json.dumps(pipelines)

    marker = f"Hello back {uuid.uuid4().hex}"
    delivered = _simulate_inbound(stack, marker)
    deliveries = delivered["deliveries"]
    assert deliveries, "the sandbox should have called our webhook"
    assert all(d["status"] == 202 for d in deliveries), deliveries

    events = poll(lambda: _events_with(stack, marker), what="the event on smartdialog-inbound")
    assert len(events) == 1
    event = events[0]
    assert event["specversion"] == "1.0"
    assert event["type"] == "fi.arena.smartdialog.message.received"
    assert event["data"]["content"] == marker

    # SmartDialog may retry a delivery: the same payload again is acknowledged and published
    # again as the same event (same id: consumers de-duplicate on it).
    again = stack.http.post(deliveries[0]["endpointUrl"], json=delivered["payload"])
    assert again.status_code == 202, again.text
    assert again.json() == {"status": "accepted", "id": event["id"]}
    poll(lambda: _intake_drained(stack), what="the processor to take the retried call")

    def both() -> list[dict[str, Any]] | None:
        found = _events_with(stack, marker)
        return found if len(found) == 2 else None

    assert {e["id"] for e in poll(both, what="the repeated event")} == {event["id"]}


def test_forged_webhook_call_is_refused_and_leaves_no_event(stack: Stack) -> None:
    marker = f"forged {uuid.uuid4().hex}"
    payload = {
        "sender": SENDER,
        "recipient": "SmartDialog",
        "content": marker,
        "timestamp": "2026-01-31T12:00:00.000Z",
        "protocol": "SMS",
        "attachments": [],
        "messageId": str(uuid.uuid4()),
    }
    url = f"{stack.api}/callbacks/inbound/{TWO_WAY_SERVICE}"

    assert stack.http.post(url, json=payload).status_code == 401
    assert stack.http.post(f"{url}?token=v1.0.forged", json=payload).status_code == 401
    # A real message posted afterwards shows up, so the queues were being read all along.
    _register(stack)
    witness = f"witness {uuid.uuid4().hex}"
    _simulate_inbound(stack, witness)
    poll(lambda: _events_with(stack, witness), what="the witness event")
    assert _events_with(stack, marker) == []
    for queue in (INBOUND_INTAKE_QUEUE, poison_queue(INBOUND_INTAKE_QUEUE)):
        assert not any(marker in text for text in stack.peek(queue))


def test_a_malformed_intake_message_ends_in_the_intake_poison_queue(stack: Stack) -> None:
    # Only our webhook writes the intake queue; anything else there is retried
    # maxDequeueCount times by the host, then kept in -poison for inspection.
    text = json.dumps({"schemaVersion": 1, "marker": uuid.uuid4().hex})
    stack.queue(INBOUND_INTAKE_QUEUE).send_message(text)
    poisoned = poll(
        lambda: [t for t in stack.peek(poison_queue(INBOUND_INTAKE_QUEUE)) if t == text],
        timeout=10 + 2 * MAX_DEQUEUE_COUNT,
        what="the intake message in smartdialog-inbound-intake-poison",
    )
    assert poisoned == [text]
