"""URLs we are given, through the real functions: refused at accept time when that can be judged
without DNS (400 naming the field, nothing stored or queued), judged again when called (a name
resolving inside is dead-lettered as refused, nothing connects), and the caller's DlrUrl called
from its own queue, never inside SmartDialog's delivery-report request."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared import names
from shared.guarded_http import GuardedClient
from shared.inbound import (
    DispatchOutcome,
    DlrForwarder,
    SubscriberDelivery,
    SubscriberDispatcher,
    Subscription,
    SubscriptionStore,
)
from shared.messages import MessageStore
from shared.settings import get_settings
from shared.storage import queue_client
from tests.fixtures.sandbox import CallbackReceiver
from tests.guard.servers import FakeResolver, RecordingBackend, raw_server, trickle_headers
from tests.inbound.conftest import CUSTOMER, ONE_WAY, TWO_WAY, Inbound
from tests.inbound.test_delivery_reports import DELIVERED, report, send
from tests.inbound.test_subscriptions import NOW, subscribe

PRODUCTION = "https://smartdialog.example.net"
INTERNAL_URLS = [
    "https://169.254.169.254/latest/meta-data/iam/",
    "https://10.0.0.8/dlr",
    "https://[::ffff:127.0.0.1]/dlr",
    "https://2130706433/dlr",
    "https://localhost/dlr",
    "http://flow.example.com/dlr",
]


def send_answer(env: Inbound, **extra: Any) -> Any:
    body = {"Sender": "Sandbox", "Content": "Hi", "Recipients": [{"Address": DELIVERED}], **extra}
    return env.call(
        "SendMessage", "POST", headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY}, body=body
    )


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_a_dlr_url_inside_our_network_is_refused_at_accept_time(inbound: Inbound, url: str) -> None:
    inbound.configure(PUBLIC_BASE_URL=PRODUCTION)
    answer = send_answer(inbound, DlrUrl=url)
    assert answer.status == 400, answer.body
    assert answer.headers["Content-Type"] == "application/problem+json"
    [error] = answer.body["errors"]
    assert error["field"].endswith("DlrUrl")
    assert "Refused" in error["message"]
    assert inbound.count(names.OUTBOUND_QUEUE) == 0


def test_a_bulk_send_with_an_internal_dlr_url_is_refused_and_records_nothing(
    inbound: Inbound,
) -> None:
    inbound.configure(PUBLIC_BASE_URL=PRODUCTION)
    before = batch_rows(inbound)  # other tests' batches may share this Azurite
    answer = inbound.call(
        "SendBulkMessages",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY},
        body={
            "Sender": "Sandbox",
            "Content": "Hi",
            "Recipients": [{"Address": DELIVERED}],
            "DlrUrl": "https://[::ffff:169.254.169.254]/dlr",
        },
    )
    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["DlrUrl"]
    assert inbound.count(names.OUTBOUND_QUEUE) == 0
    assert batch_rows(inbound) == before


def batch_rows(inbound: Inbound) -> int:
    with contextlib.suppress(ResourceNotFoundError):  # no table yet is no row either
        return len(inbound.rows(names.BATCHES_TABLE))
    return 0


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_a_subscription_callback_inside_our_network_is_refused(inbound: Inbound, url: str) -> None:
    inbound.configure(PUBLIC_BASE_URL=PRODUCTION)
    answer = inbound.call(
        "NewMessage",
        "POST",
        route_params={"Service": TWO_WAY},
        headers={"Customer-Id": CUSTOMER},
        body={"callbackUrl": url},
    )
    assert answer.status == 400, answer.body
    [error] = answer.body["errors"]
    assert error["field"].endswith("callbackUrl")
    assert SubscriptionStore.from_settings().list(TWO_WAY) == []
    assert inbound.sandbox.state.actions_for(TWO_WAY) == []  # no webhook registered either


def test_an_allowed_internal_range_is_accepted(inbound: Inbound) -> None:
    inbound.configure(PUBLIC_BASE_URL=PRODUCTION, CALLBACK_ALLOWED_HOSTS="10.0.0.0/8")
    assert send_answer(inbound, DlrUrl="https://10.0.0.8/dlr").status == 202


# --- judged when called ---------------------------------------------------------------------------


def dispatcher(backend: RecordingBackend, resolver: FakeResolver) -> SubscriberDispatcher:
    settings = get_settings()
    return SubscriberDispatcher(
        subscriptions=SubscriptionStore.from_settings(),
        deliveries=queue_client(names.INBOUND_DELIVERIES_QUEUE),
        dead_letters=queue_client(names.INBOUND_DEAD_LETTER_QUEUE),
        http=GuardedClient.from_settings(settings, resolver=resolver, network_backend=backend),
        max_attempts=3,
        retry_base_seconds=0,
        clock=lambda: NOW,
    )


@pytest.mark.parametrize(
    ("callback", "resolves_to"),
    [
        ("https://hooks.example.com/flow?sig=s", "10.1.2.3"),
        ("https://hooks.example.com/flow?sig=s", "169.254.169.254"),
        ("http://hooks.example.com/flow?sig=s", "93.184.215.14"),  # plain http
    ],
)
def test_a_subscriber_the_guard_refuses_is_dead_lettered_at_once_and_nothing_connects(
    inbound: Inbound, callback: str, resolves_to: str
) -> None:
    inbound.configure(PUBLIC_BASE_URL=PRODUCTION)
    # Stored as a subscription made before the accept-time check (or by DNS that changed since).
    SubscriptionStore.from_settings().add(Subscription(TWO_WAY, "sub-1", callback, CUSTOMER, NOW))
    backend, resolver = RecordingBackend(), FakeResolver({"hooks.example.com": [resolves_to]})
    delivery = SubscriberDelivery(
        service=TWO_WAY, subscriptionId="sub-1", event={"data": {}}, firstQueuedAt=NOW
    )
    result = dispatcher(backend, resolver).process(delivery.model_dump_json())
    assert result.outcome is DispatchOutcome.DEAD_LETTERED
    assert backend.connects == []
    [letter] = inbound.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert letter["reason"] == "refused"
    assert "hooks.example.com" in letter["detail"]
    assert "sig" not in letter["detail"]
    assert inbound.count(names.INBOUND_DELIVERIES_QUEUE) == 0


def test_a_trickling_subscriber_is_cut_at_the_deadline_and_retried_later(
    inbound: Inbound,
) -> None:
    inbound.configure(CALLBACK_TIMEOUT_SECONDS=1)
    with raw_server(trickle_headers(1.0)) as server:
        subscribe(inbound, f"{server.url}/flow")
        [subscription] = SubscriptionStore.from_settings().list(TWO_WAY)
        delivery = SubscriberDelivery(
            service=TWO_WAY,
            subscriptionId=subscription.subscription_id,
            event={"data": {}},
            firstQueuedAt=NOW,
        )
        dispatcher = SubscriberDispatcher.from_settings()  # its clients, queues and tables
        started = time.monotonic()
        result = dispatcher.process(delivery.model_dump_json())
        took = time.monotonic() - started
    assert result.outcome is DispatchOutcome.RETRY_SCHEDULED
    # Not cut before its second (the lower bound), and cut at it: a cut at the 10 s default
    # (the setting ignored) must fail. The subscription's read and the retry's write are timed
    # too (0.1 s idle, under 0.1 s more on a loaded 2-core machine): 4 s of slack.
    assert 1.0 <= took < 5.0
    assert "no complete answer within 1 s" in (result.detail or "")


# --- the caller's DlrUrl, forwarded from a queue --------------------------------------------------


def test_a_delivery_report_queues_the_forward_and_calls_nothing_itself(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    message_id = send(inbound, DELIVERED, DlrUrl=f"{callback_receiver.url}/mine?ref=7")
    answer = report(inbound, message_id, status="delivered", recipient=DELIVERED)
    assert answer.status == 200
    assert callback_receiver.calls == []
    [forward] = inbound.read(names.DLR_FORWARD_QUEUE)
    assert forward["messageId"] == message_id
    assert "url" not in json.dumps(forward).lower()  # the URL stays in the record
    assert inbound.run_queue(names.DLR_FORWARD_QUEUE, "DlrForwarder") == 1
    [call] = callback_receiver.wait_for(1)
    assert (call.path, call.query["ref"], call.query["status"]) == ("/mine", "7", "delivered")


def test_a_slow_dlr_url_never_holds_the_delivery_report(inbound: Inbound) -> None:
    inbound.configure(CALLBACK_TIMEOUT_SECONDS=1)
    with raw_server(trickle_headers(1.0)) as server:
        message_id = send(inbound, DELIVERED, DlrUrl=f"{server.url}/slow")
        started = time.monotonic()
        assert report(inbound, message_id, status="delivered").status == 200
        assert time.monotonic() - started < 0.5
        assert server.requests == []
        started = time.monotonic()
        inbound.queue_function("DlrForwarder", _take())
        assert time.monotonic() - started < 1.5  # the forwarder too is cut at the deadline
    [again] = inbound.read(names.DLR_FORWARD_QUEUE)  # re-enqueued for a later attempt
    assert (again["messageId"], again["attempts"]) == (message_id, 1)


def _take() -> str:
    client = queue_client(names.DLR_FORWARD_QUEUE)
    [message] = list(client.receive_messages(messages_per_page=1, visibility_timeout=30))
    client.delete_message(message)
    return str(message.content)


def test_a_failing_dlr_url_is_retried_then_dead_lettered(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    callback_receiver.status = 503
    message_id = send(inbound, DELIVERED, DlrUrl=f"{callback_receiver.url}/mine?sig=secret")
    assert report(inbound, message_id, status="delivered").status == 200
    runs = inbound.run_queue(names.DLR_FORWARD_QUEUE, "DlrForwarder")
    assert runs == 3  # SMARTDIALOG_DISPATCH_MAX_ATTEMPTS
    assert len(callback_receiver.calls) == 3
    [letter] = inbound.read(names.DLR_FORWARD_DEAD_LETTER_QUEUE)
    assert (letter["reason"], letter["attempts"], letter["lastStatus"]) == (
        "attempts-exhausted",
        3,
        503,
    )
    assert letter["messageId"] == message_id
    assert "127.0.0.1" in letter["detail"]
    assert "secret" not in letter["detail"]


def test_a_dlr_url_judged_internal_when_called_is_dead_lettered_as_refused(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    # Accepted while the app ran locally; the app now runs with a public address.
    message_id = send(inbound, DELIVERED, DlrUrl=f"{callback_receiver.url}/mine")
    inbound.configure(PUBLIC_BASE_URL=PRODUCTION)
    assert report(inbound, message_id, status="delivered").status == 200
    assert inbound.run_queue(names.DLR_FORWARD_QUEUE, "DlrForwarder") == 1
    assert callback_receiver.calls == []
    [letter] = inbound.read(names.DLR_FORWARD_DEAD_LETTER_QUEUE)
    assert letter["reason"] == "refused"


def test_a_forward_whose_message_has_no_dlr_url_is_dropped(inbound: Inbound) -> None:
    message_id = send(inbound, DELIVERED)
    assert report(inbound, message_id, status="delivered").status == 200
    assert inbound.count(names.DLR_FORWARD_QUEUE) == 0
    assert MessageStore.from_settings().get(message_id) is not None
    forward = json.dumps({"messageId": message_id, "params": {}, "firstQueuedAt": NOW.isoformat()})
    result = DlrForwarder.from_settings().process(forward)
    assert result.outcome is DispatchOutcome.UNSUBSCRIBED


def test_a_forward_naming_no_message_of_ours_is_dead_lettered_with_its_reason(
    inbound: Inbound,
) -> None:
    """A message id no message of ours has (a "/" is refused in a Table key): the store's
    lookup raised, and the host retried the message into poison without a reason."""
    forward = {"messageId": "a/b", "params": {}, "firstQueuedAt": "2026-01-01T00:00:00Z"}
    inbound.queue_function("DlrForwarder", json.dumps(forward))

    [letter] = inbound.read(names.DLR_FORWARD_DEAD_LETTER_QUEUE)
    assert letter["reason"] == "malformed"
    assert "messageId" in letter["detail"]
