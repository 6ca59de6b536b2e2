"""Two paths for an inbound message: the webhook publishes a message that needs no processing
itself (no opt-out keyword, a service that never asked a question, no New Message subscriber);
every other message goes through the intake queue and the processor, as before. Which services
ask is known from ``~asks-questions`` rows in the subscriber index, complete only after two scans
of the open questions an upgrade window apart (shared.triggers)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter

import httpx
import pytest

from shared import names, storage
from shared.clock import ManualClock, utcnow
from shared.inbound import InboundProcessor, Subscription, SubscriptionStore
from shared.inbound._models import InboundIntake, NewMessagePayload
from shared.messages import QuestionStore
from shared.names import LAYOUT_PARTITION, UPGRADE_WINDOW
from shared.settings import get_settings
from shared.storage import StorageOp, table_client
from shared.triggers import (
    ASKS_LAYOUT_ROW,
    ASKS_MARGIN,
    ASKS_ROW,
    SUBSCRIBERS_TTL_SECONDS,
    TriggerKind,
    TriggerNotifier,
)
from tests.fixtures.clock import manual_clock
from tests.inbound.conftest import CUSTOMER, TWO_WAY, Inbound
from tests.inbound.test_question_costs import _ask, _intake
from tests.inbound.test_tokens import register
from tests.inbound.test_webhook import payload, post, storage_requests, token_for

__all__ = ["manual_clock", "storage_requests"]

OTHER = "s-1001-other"
TTL = dt.timedelta(seconds=SUBSCRIBERS_TTL_SECONDS)


def _complete_rows() -> None:
    """The ``~asks-questions`` rows as an install past its upgrade window has them."""
    table_client(names.SUBSCRIPTIONS_TABLE).upsert_entity(
        {
            "PartitionKey": LAYOUT_PARTITION,
            "RowKey": ASKS_LAYOUT_ROW,
            "Since": utcnow() - 2 * UPGRADE_WINDOW,
            "CompleteAt": utcnow() - UPGRADE_WINDOW,
        }
    )


def _subscribe(connection: str = "default") -> None:
    """A New Message subscription of :data:`TWO_WAY` on ``connection``."""
    SubscriptionStore.from_settings().add(
        Subscription(
            service=TWO_WAY,
            subscription_id=str(uuid.uuid4()),
            callback_url="https://example.com/flow",
            customer_id=CUSTOMER,
            created_at=utcnow(),
            kind=TriggerKind.NEW_MESSAGE,
            connection=connection,
        )
    )


def _where(inbound: Inbound) -> tuple[int, int]:
    """(intake messages, events on smartdialog-inbound)."""
    return inbound.count(names.INBOUND_INTAKE_QUEUE), inbound.count(names.INBOUND_QUEUE)


# --- the webhook -----------------------------------------------------------------------------


def test_a_message_that_needs_no_processing_is_published_by_the_webhook_in_one_call(
    inbound: Inbound, storage_requests: list[str]
) -> None:
    _complete_rows()
    token = token_for()
    assert post(inbound, payload(), token=token).status == 202  # warm: token, index, layout
    inbound.read(names.INBOUND_QUEUE)
    storage_requests.clear()
    body = payload(content="See you at ten")
    answer = post(inbound, body, token=token)

    assert answer.status == 202
    assert storage_requests == [f"POST /devstoreaccount1/{names.INBOUND_QUEUE}/messages"]
    assert _where(inbound) == (0, 2)
    event = next(e for e in inbound.read(names.INBOUND_QUEUE) if e["id"] == answer.body["id"])
    assert event["id"] == f"{TWO_WAY}:{body['messageId']}"
    assert event["data"]["content"] == "See you at ten"
    assert event["data"]["connection"] == "default"
    assert "optOut" not in event["data"]

    # The same message through the processor (before the rows were complete) is the same event.
    processed = InboundProcessor.from_settings(get_settings())
    intake = InboundIntake(
        service=TWO_WAY,
        messageKey=body["messageId"],
        receivedAt=dt.datetime.fromisoformat(event["data"]["receivedAt"]),
        payload=NewMessagePayload.model_validate(body),
    )
    inbound.monkeypatch.setattr(processed.subscribers, "asks_questions", lambda *_, **__: False)
    processed.process(intake.model_dump_json(exclude_none=True))
    again = [e for e in inbound.read(names.INBOUND_QUEUE) if e["id"] == event["id"]]
    assert len(again) == 2
    assert {k: v for k, v in again[1].items() if k != "traceparent"} == {
        k: v for k, v in event.items() if k != "traceparent"
    }


def _stop() -> dict[str, str]:
    return {"content": "STOP"}


@pytest.mark.parametrize("why", ["keyword", "subscriber", "asks", "rows not complete"])
def test_a_message_that_needs_processing_goes_to_the_intake_queue(
    inbound: Inbound, why: str
) -> None:
    if why != "rows not complete":
        _complete_rows()
    changes: dict[str, str] = _stop() if why == "keyword" else {}
    if why == "subscriber":
        _subscribe()
    if why == "asks":
        TriggerNotifier.for_settings(get_settings()).mark_asking(TWO_WAY)

    assert post(inbound, payload(**changes), token=token_for()).status == 202

    assert _where(inbound) == (1, 0)
    assert inbound.process_intake() == 1
    assert _where(inbound) == (0, 1)


def test_a_subscriber_on_another_connection_does_not_stop_the_webhook_publishing(
    inbound: Inbound,
) -> None:
    _complete_rows()
    _subscribe(connection="marketing")
    assert post(inbound, payload(), token=token_for()).status == 202
    assert _where(inbound) == (0, 1)


# --- the processor ---------------------------------------------------------------------------


def _calls(counter: storage.RoundTrips, before: Counter[tuple[StorageOp, str]]) -> int:
    return sum((counter.snapshot() - before).values())


def test_the_processor_looks_for_a_question_only_for_a_service_that_asked(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    _complete_rows()
    monkeypatch.setattr(storage, "_round_trips", None)
    QuestionStore.from_settings().table  # noqa: B018 - the table exists before counting
    counter = storage.count_round_trips()
    processor = InboundProcessor.from_settings(get_settings())
    processor.process(_intake("warm up", service=OTHER))
    processor.process(_intake("warm up", service=TWO_WAY))

    before = counter.snapshot()
    processor.process(_intake("Hello", service=TWO_WAY))
    never_asked = _calls(counter, before)
    processor.subscribers.mark_asking(TWO_WAY)
    processor.process(_intake("warm up", service=TWO_WAY))  # its index is read again
    before = counter.snapshot()
    processor.process(_intake("Hello", service=TWO_WAY))
    asked = _calls(counter, before)

    assert (never_asked, asked) == (1, 2)  # the event; the question query and the event


# --- the rows: written before a question, completed after an upgrade --------------------------


def test_the_rows_are_complete_after_two_scans_an_upgrade_window_apart(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    _ask("+358401110001", TWO_WAY)
    processor = InboundProcessor.from_settings(get_settings())
    index = processor.subscribers
    assert index.asks_questions(OTHER)  # before any scan: every service may have a question

    processor.process(_intake("Hello", service=OTHER))  # the first scan
    subscriptions = table_client(names.SUBSCRIPTIONS_TABLE)
    assert subscriptions.get_entity(TWO_WAY, ASKS_ROW)["Kind"] == ASKS_ROW
    layout = subscriptions.get_entity(LAYOUT_PARTITION, ASKS_LAYOUT_ROW)
    assert "CompleteAt" not in layout
    _ask("+358401110002", OTHER)  # the previous release still runs meanwhile
    manual_clock.advance(UPGRADE_WINDOW.total_seconds() - 60)
    processor.process(_intake("Hello", service=OTHER))
    assert index.asks_questions(OTHER)  # not yet complete

    manual_clock.advance(61)
    processor.process(_intake("Hello", service=TWO_WAY))  # the second scan
    layout = subscriptions.get_entity(LAYOUT_PARTITION, ASKS_LAYOUT_ROW)
    assert layout["CompleteAt"] == utcnow() + TTL + ASKS_MARGIN
    # Complete only once every instance's index has seen the rows the second scan wrote.
    assert index.asks_questions("s-1001-never")
    manual_clock.advance((TTL + ASKS_MARGIN).total_seconds())
    assert index.asks_questions(TWO_WAY)
    assert index.asks_questions(OTHER)  # its question came after the first scan
    assert not index.asks_questions("s-1001-never")
    # Another instance learns it from the layout row.
    fresh = TriggerNotifier(
        subscriptions=subscriptions, queue=storage.queue_client(names.TRIGGER_EVENTS_QUEUE)
    )
    assert not fresh.asks_questions("s-1001-never")
    assert fresh.asks_questions(OTHER)


def test_a_services_first_question_waits_until_every_index_has_seen_its_row(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    index = TriggerNotifier.for_settings(get_settings())
    now = utcnow()
    assert index.mark_asking(OTHER) == now  # rows not complete: every instance looks anyway

    _complete_rows()
    index = TriggerNotifier(
        subscriptions=table_client(names.SUBSCRIPTIONS_TABLE),
        queue=storage.queue_client(names.TRIGGER_EVENTS_QUEUE),
    )
    first = index.mark_asking(TWO_WAY)
    assert first == now + TTL + ASKS_MARGIN
    manual_clock.advance(10)
    assert index.mark_asking(TWO_WAY) == first  # the same row, whoever asks
    manual_clock.advance(TTL.total_seconds())
    assert index.mark_asking(TWO_WAY) == first  # now in the past: no wait


def test_the_first_question_of_a_service_is_queued_invisible_until_every_index_knows(
    inbound: Inbound,
) -> None:
    _complete_rows()
    inbound.register_webhook()
    answer = inbound.call(
        "SendMessageAndWaitForReply",
        "POST",
        headers={"Service-Id": TWO_WAY, "Content-Type": "application/json"},
        body={
            "Sender": "Clinic",
            "Content": "Reply YES",
            "Recipient": "+358401110003",
            "Options": ["Yes"],
            "TimeoutSeconds": 60,
        },
    )
    assert answer.status == 202, answer.body
    assert inbound.count(names.OUTBOUND_QUEUE) == 1
    assert inbound.read(names.OUTBOUND_QUEUE) == []  # invisible for now
    row = table_client(names.SUBSCRIPTIONS_TABLE).get_entity(TWO_WAY, ASKS_ROW)
    assert row["Service"] == TWO_WAY
    # The recipient has the whole timeout from when the question may go out.
    question = QuestionStore.from_settings().open_question(TWO_WAY, "+358401110003")
    assert question is not None
    waited = question.expires_at - question.created_at - dt.timedelta(seconds=60)
    assert TTL + ASKS_MARGIN <= waited < TTL + ASKS_MARGIN + dt.timedelta(seconds=5)


def test_the_webhook_leaves_a_message_to_the_processor_when_the_index_cannot_be_read(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import ServiceRequestError

    _complete_rows()

    def unreachable(self: TriggerNotifier, service: str) -> None:
        raise ServiceRequestError("connection refused")

    monkeypatch.setattr(TriggerNotifier, "_query", unreachable)
    assert post(inbound, payload(), token=token_for()).status == 202
    assert _where(inbound) == (1, 0)


def test_a_scan_that_fails_leaves_every_service_asking_and_the_message_processed(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    number = "+358401110004"
    _ask(number, TWO_WAY)
    processor = InboundProcessor.from_settings(get_settings())

    def broken() -> list[str]:
        raise TimeoutError("the questions table took too long")

    processor.process(_intake("Hello", service=OTHER))  # the first scan, then the second fails
    manual_clock.advance(UPGRADE_WINDOW.total_seconds())
    asks = processor.subscribers.asks_questions
    assert asks(TWO_WAY, scan=broken)  # no exception: every service asks
    assert asks("s-1001-never", scan=broken)
    processor.process(_intake("yes", number, TWO_WAY))
    assert QuestionStore.from_settings().open_question(TWO_WAY, number) is None  # answered


def test_a_service_named_like_the_layout_partition_has_no_phantom_subscriber(
    inbound: Inbound,
) -> None:
    index = TriggerNotifier.for_settings(get_settings())
    index.mark_asking(OTHER)
    _complete_rows()
    assert index.subscribers(TriggerKind.NEW_MESSAGE, LAYOUT_PARTITION) == []
    assert SubscriptionStore.from_settings().list(LAYOUT_PARTITION) == []


def test_the_rows_are_not_subscriptions(inbound: Inbound) -> None:
    TriggerNotifier.for_settings(get_settings()).mark_asking(TWO_WAY)
    _complete_rows()
    store = SubscriptionStore.from_settings()
    assert store.every() == []
    assert store.get(TWO_WAY, ASKS_ROW) is None
    assert store.list(TWO_WAY) == []
    assert not store.remove(TWO_WAY, ASKS_ROW)


def test_a_plain_message_smartdialog_sends_again_is_the_same_event_again(
    inbound: Inbound,
) -> None:
    _complete_rows()
    body = payload()
    token = token_for()
    first, again = (post(inbound, body, token=token) for _ in range(2))  # its 202 got lost
    assert (first.status, again.status) == (202, 202)
    assert first.body["id"] == again.body["id"]
    events = inbound.read(names.INBOUND_QUEUE)
    assert [e["id"] for e in events] == [first.body["id"]] * 2
    assert events[0]["data"]["content"] == events[1]["data"]["content"] == body["content"]


def test_the_sandboxs_inbound_message_reaches_the_queue_through_the_dev_host_without_the_processor(
    served: Inbound,
) -> None:
    """SmartDialog's POST over a real socket to the dev host serving the app: the event is on
    smartdialog-inbound when the 202 comes back, and nothing waits for the processor."""
    _complete_rows()
    register(served)
    response = httpx.post(
        f"{served.sandbox.url}/sandbox/inbound",
        json={"sender": "+358401110005", "recipient": "Clinic", "content": "Running late"},
        timeout=10,
    )
    response.raise_for_status()
    [delivery] = response.json()["deliveries"]
    assert delivery["status"] == 202
    assert _where(served) == (0, 1)
    [event] = served.read(names.INBOUND_QUEUE)
    assert event["data"]["content"] == "Running late"
    assert event["data"]["sender"] == "+358401110005"
