"""Found in review: CancelMessage swapped the record to ``cancelled``, then its slots' update or
its event's enqueue failed (storage unavailable, the worker gone): the caller got a 500 and the
record stayed cancelled and unannounced. The retried cancel answered 200 sending nothing, and
the sender skipped cancelled records ("whoever cancelled announces that"): the
``message.cancelled`` event was lost for good. The retried cancel now finishes the announcement,
and so does the sender when it finds such a record (same event id)."""

from __future__ import annotations

from typing import Any

import pytest

import shared.outbound._service as service_mod
from shared.messages import MessageStatus, MessageStore, RecipientStatus
from shared.names import EVENTS_QUEUE
from shared.settings import get_settings
from tests.crash import crash_once
from tests.outbound.conftest import DELIVERED, Outbound, call_http, sms

CANCELLED = "fi.arena.smartdialog.message.cancelled"


def _accepted() -> str:
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    assert accepted.status == 202, accepted.body
    return str(accepted.body["Id"])


def _cancel(message_id: str) -> Any:
    return call_http("CancelMessage", "DELETE", route_params={"MessageId": message_id})


def _assert_announced_once(outbound: Outbound, message_id: str) -> None:
    events = [e for e in outbound.events() if e["type"] == CANCELLED]
    assert {e["id"] for e in events} == {f"{message_id}:cancelled"}
    assert events[0]["data"]["messageId"] == message_id
    record, slots = MessageStore.from_settings(get_settings()).get_with_slots(message_id)
    assert record is not None
    assert (record.status, record.announced) == (MessageStatus.CANCELLED, True)
    assert [s.status for s in slots] == [RecipientStatus.CANCELLED]
    assert outbound.upstream() == []  # never sent


def test_a_cancel_retried_after_its_event_failed_sends_the_event(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = _accepted()
    real = service_mod.ensured_queue
    faults = [RuntimeError("events queue unavailable (simulated storage 503)")]

    class OnceFailing:
        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def send_message(self, *args: Any, **kwargs: Any) -> Any:
            if faults:
                raise faults.pop()
            return self.queue.send_message(*args, **kwargs)

    def ensured(name: str, settings: Any) -> Any:
        queue = real(name, settings)
        return OnceFailing(queue) if name == EVENTS_QUEUE else queue

    monkeypatch.setattr(service_mod, "ensured_queue", ensured)
    assert _cancel(message_id).status == 500
    assert outbound.events() == []

    again = _cancel(message_id)

    assert (again.status, again.body["Status"]) == (200, "cancelled")
    _assert_announced_once(outbound, message_id)


def test_the_sender_announces_a_cancel_that_failed_midway(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = _accepted()
    crash_once(
        monkeypatch, MessageStore, "advance_recipients", "table unavailable (simulated storage 503)"
    )
    assert _cancel(message_id).status == 500  # the caller gives up: no retry

    outbound.drain()

    _assert_announced_once(outbound, message_id)
