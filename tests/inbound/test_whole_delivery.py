"""A New Message subscriber gets each inbound message whole, in one POST, whatever its size.

``smartdialog-inbound`` carries a large ``message.received`` in parts (Logic Apps cannot open our
blobs); the subscriber deliveries carry it by reference instead (``eventBlob``, one blob in
``smartdialog-payloads`` whatever the number of subscribers), so a flow runs once per message.
Ordinary messages are unchanged: the delivery carries its event and no blob is touched.
Deliveries already queued in the previous shape (the event inline, possibly one part of it) are
still delivered."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
from azure.core.exceptions import ResourceNotFoundError

from shared import names
from shared.inbound import DispatchOutcome, SubscriberDelivery, SubscriberDispatcher
from shared.payloads import PayloadStore, queue_message_bytes
from shared.storage import blob_service, queue_client
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import TWO_WAY, Inbound
from tests.inbound.test_sizes import taken
from tests.inbound.test_subscriptions import subscribe
from tests.inbound.test_webhook import payload, post, token_for

EMOJI = "\U0001f600"
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "inbound-delivery.json"
#: The keys a delivery carrying its event has always had (the previous release's shape).
PREVIOUS_KEYS = {"service", "subscriptionId", "event", "attempts", "firstQueuedAt"}


class CountingPayloads(PayloadStore):
    """The real payload store, counting its writes and reads."""

    def __init__(self) -> None:
        real = PayloadStore.from_settings()
        super().__init__(real._container)
        self.puts: list[str] = []
        self.gets: list[str] = []

    def put(self, text: str, *, kind: str) -> str:
        name = super().put(text, kind=kind)
        self.puts.append(name)
        return name

    def get(self, name: str) -> str | None:
        self.gets.append(name)
        return super().get(name)


def event_blobs() -> set[str]:
    container = blob_service().get_container_client(names.PAYLOADS_CONTAINER)
    try:
        return {b.name for b in container.list_blobs(name_starts_with="event/")}
    except ResourceNotFoundError:
        return set()


def dispatcher(payloads: PayloadStore | None = None) -> SubscriberDispatcher:
    built = SubscriberDispatcher.from_settings()
    return SubscriberDispatcher(
        subscriptions=built.subscriptions,
        deliveries=queue_client(names.INBOUND_DELIVERIES_QUEUE),
        dead_letters=queue_client(names.INBOUND_DEAD_LETTER_QUEUE),
        http=built._http,
        max_attempts=built.max_attempts,
        retry_base_seconds=built.retry_base_seconds,
        payloads=payloads or PayloadStore.from_settings(),
    )


def subscription_id(env: Inbound, callback: str) -> str:
    return urlsplit(subscribe(env, callback)).path.rsplit("/", 1)[-1]


def test_two_subscribers_of_a_message_in_parts_share_one_blob_and_each_get_one_whole_post(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(inbound, f"{callback_receiver.url}/flow-a")
    subscribe(inbound, f"{callback_receiver.url}/flow-b")
    content = EMOJI * 20_000
    before = event_blobs()

    assert post(inbound, payload(content=content), token=token_for()).status == 202
    assert inbound.process_intake() == 1

    assert len(taken(names.INBOUND_QUEUE)) >= 2  # the queue's consumers keep their parts
    deliveries = [json.loads(t) for t in taken(names.INBOUND_DELIVERIES_QUEUE)]
    assert len(deliveries) == 2  # one per subscriber, not one per part and subscriber
    [blob] = {d["eventBlob"] for d in deliveries}
    assert event_blobs() - before == {blob}
    for delivery in deliveries:
        assert "event" not in delivery
        jsonschema.validate(delivery, json.loads(SCHEMA.read_text()))
        assert dispatcher().process(json.dumps(delivery)).outcome is DispatchOutcome.DELIVERED

    calls = callback_receiver.calls
    assert sorted(c.path for c in calls) == ["/flow-a", "/flow-b"]
    for call in calls:
        assert json.loads(call.body)["content"] == content
        assert call.headers["ce-type"] == "fi.arena.smartdialog.message.received"


def test_a_message_in_parts_without_subscribers_writes_no_event_blob(inbound: Inbound) -> None:
    before = event_blobs()
    assert post(inbound, payload(content=EMOJI * 20_000), token=token_for()).status == 202
    assert inbound.process_intake() == 1
    assert len(taken(names.INBOUND_QUEUE)) >= 2
    assert inbound.count(names.INBOUND_DELIVERIES_QUEUE) == 0
    assert event_blobs() == before


def test_an_ordinary_message_is_delivered_as_before_with_no_blob_written_or_read(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(inbound, f"{callback_receiver.url}/flow")
    before = event_blobs()

    assert post(inbound, payload(content="Hi"), token=token_for()).status == 202
    assert inbound.process_intake() == 1

    [text] = taken(names.INBOUND_DELIVERIES_QUEUE)
    assert set(json.loads(text)) == PREVIOUS_KEYS  # the shape it always had
    assert event_blobs() == before
    payloads = CountingPayloads()
    assert dispatcher(payloads).process(text).outcome is DispatchOutcome.DELIVERED
    assert (payloads.puts, payloads.gets) == ([], [])
    [call] = callback_receiver.calls
    assert json.loads(call.body)["content"] == "Hi"


def test_a_delivery_by_reference_is_retried_by_reference_then_posted_whole(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(inbound, f"{callback_receiver.url}/flow")
    content = "\u00e9" * 1_000 + EMOJI * 19_000
    assert post(inbound, payload(content=content), token=token_for()).status == 202
    assert inbound.process_intake() == 1
    [first] = taken(names.INBOUND_DELIVERIES_QUEUE)

    callback_receiver.status = 503  # busy: retried later
    assert dispatcher().process(first).outcome is DispatchOutcome.RETRY_SCHEDULED
    [again] = taken(names.INBOUND_DELIVERIES_QUEUE)
    assert queue_message_bytes(again) < 1024  # the reference, not the event
    assert json.loads(again)["eventBlob"] == json.loads(first)["eventBlob"]
    assert json.loads(again)["attempts"] == 1

    callback_receiver.status = 200
    assert dispatcher().process(again).outcome is DispatchOutcome.DELIVERED
    busy, done = callback_receiver.calls
    assert json.loads(busy.body) == json.loads(done.body)  # the whole message both times
    assert json.loads(done.body)["content"] == content


def test_a_delivery_whose_event_blob_is_gone_is_dead_lettered_and_nothing_is_posted(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    sub = subscription_id(inbound, f"{callback_receiver.url}/flow")
    gone = "event/" + "0" * 64
    queued = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    text = SubscriberDelivery(
        service=TWO_WAY, subscriptionId=sub, eventBlob=gone, firstQueuedAt=queued
    ).to_json()

    assert dispatcher().process(text).outcome is DispatchOutcome.DEAD_LETTERED

    assert callback_receiver.calls == []
    [letter] = inbound.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert letter["reason"] == "malformed"
    assert gone in letter["detail"]
    assert letter["original"] == text
    assert inbound.count(names.INBOUND_DELIVERIES_QUEUE) == 0


def previous_release_delivery(sub: str, part: int, parts: int) -> str:
    """A delivery as the previous release queued it: the event inline (one part of a message
    that came in parts), ``eventBlob`` unknown to it."""
    data: dict[str, Any] = {
        "sender": "+358401234567",
        "recipient": "+358501234567",
        "content": f"slice {part}",
        "timestamp": None,
        "protocol": "SMS",
        "attachments": [],
        "messageId": "m-prev",
        "service": TWO_WAY,
        "receivedAt": "2026-12-01T12:00:00Z",
        "part": part,
        "parts": parts,
    }
    event = {
        "specversion": "1.0",
        "id": f"{TWO_WAY}:m-prev:{part}",
        "source": "/smartdialog-functions",
        "type": "fi.arena.smartdialog.message.received",
        "time": "2026-12-01T12:00:00Z",
        "subject": "m-prev",
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(
        {
            "service": TWO_WAY,
            "subscriptionId": sub,
            "event": event,
            "attempts": 0,
            "firstQueuedAt": "2026-12-01T12:00:01Z",
        }
    )


def test_deliveries_queued_in_the_previous_shape_are_still_delivered_and_retried_in_it(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    sub = subscription_id(inbound, f"{callback_receiver.url}/flow")
    old = previous_release_delivery(sub, 2, 3)
    jsonschema.validate(json.loads(old), json.loads(SCHEMA.read_text()))

    callback_receiver.status = 503
    assert dispatcher().process(old).outcome is DispatchOutcome.RETRY_SCHEDULED
    [again] = taken(names.INBOUND_DELIVERIES_QUEUE)
    assert set(json.loads(again)) == PREVIOUS_KEYS  # still readable by the previous release
    assert json.loads(again)["event"] == json.loads(old)["event"]

    callback_receiver.status = 200
    queue_client(names.INBOUND_DELIVERIES_QUEUE).send_message(again)
    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    done = callback_receiver.calls[-1]
    assert json.loads(done.body)["content"] == "slice 2"
    assert done.headers["ce-id"] == f"{TWO_WAY}:m-prev:2"
