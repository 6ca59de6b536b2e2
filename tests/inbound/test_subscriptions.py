"""Webhook registration and the New Message trigger, end to end over real sockets:
NewMessage -> sandbox pipeline -> POST /sandbox/inbound -> our webhook (dev host) -> intake
queue -> InboundProcessor -> queue event + one delivery per subscriber -> dispatcher -> the
subscriber's callback."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpcore
import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared import names
from shared.clock import ManualClock, current, use, utcnow
from shared.guarded_http import CallbackAnswer, CallbackPolicy, GuardedClient
from shared.inbound import (
    MESSAGE_RECEIVED,
    DispatchOutcome,
    SubscriberDelivery,
    SubscriberDispatcher,
    Subscription,
    SubscriptionStore,
    _dispatch,
)
from shared.inbound._dispatch import MAX_RETRY_DELAY_SECONDS
from shared.settings import get_settings
from shared.storage import queue_client, safe_key, table_client, utc
from shared.triggers import TriggerNotifier
from tests.fixtures.sandbox import CallbackReceiver, ReceivedCall
from tests.inbound.conftest import CUSTOMER, TWO_WAY, HttpAnswer, Inbound

SENDER = "+358401234567"
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def subscribe(env: Inbound, callback: str, service: str = TWO_WAY) -> str:
    answer = env.call(
        "NewMessage",
        "POST",
        route_params={"Service": service},
        headers={"Customer-Id": CUSTOMER},
        body={"callbackUrl": callback},
    )
    assert answer.status == 201, answer.body
    return answer.headers["Location"]


def unsubscribe(env: Inbound, location: str, token: str | None = None) -> int:
    parts = urlsplit(location)
    *_, service, subscription = parts.path.split("/")
    params = dict(parse_qsl(parts.query))
    if token is not None:
        params["token"] = token
    return env.call(
        "DeleteNewMessageTrigger",
        "DELETE",
        route_params={"Service": service, "SubscriptionId": subscription},
        params=params,
    ).status


def simulate_inbound(env: Inbound, content: str = "Hi") -> dict[str, object]:
    response = httpx.post(
        f"{env.sandbox.url}/sandbox/inbound",
        json={"sender": SENDER, "recipient": "+358501234567", "content": content},
        timeout=10,
    )
    response.raise_for_status()
    result: dict[str, object] = response.json()
    return result


def test_inbound_sms_reaches_the_queue_and_a_subscriber_exactly_once(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    location = subscribe(served, f"{callback_receiver.url}/flow?sig=secret")
    [action] = served.sandbox.state.actions_for(TWO_WAY)
    assert action["endpointUrl"].startswith(f"{get_settings().public_base_url}/api/callbacks/")
    assert "token=" in action["endpointUrl"]

    result = simulate_inbound(served, "Hello from the sandbox")
    [delivery] = result["deliveries"]  # type: ignore[misc]
    assert delivery["status"] == 202
    assert served.process_intake() == 1
    [event] = served.read(names.INBOUND_QUEUE)
    assert event["type"] == MESSAGE_RECEIVED
    assert event["data"]["content"] == "Hello from the sandbox"

    assert served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    [call] = callback_receiver.wait_for(1)
    assert call.method == "POST"
    assert call.path == "/flow"
    assert call.query == {"sig": "secret"}
    body = json.loads(call.body)
    assert body["sender"] == SENDER
    assert body["content"] == "Hello from the sandbox"
    assert body["service"] == TWO_WAY
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["ce-id"] == event["id"]
    assert headers["ce-type"] == MESSAGE_RECEIVED

    # SmartDialog retrying the same message: the same event again, not again to the flow.
    payload = result["payload"]
    again = httpx.post(action["endpointUrl"], json=payload, timeout=10)
    assert (again.status_code, again.json()["id"]) == (202, event["id"])
    assert served.process_intake() == 1
    assert [e["id"] for e in served.read(names.INBOUND_QUEUE)] == [event["id"]] * 2
    assert served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    assert len(callback_receiver.calls) == 1

    # Unsubscribed: the next message still reaches the queue, not the flow.
    assert unsubscribe(served, location) == 200
    simulate_inbound(served, "After unsubscribing")
    assert served.process_intake() == 1
    assert served.count(names.INBOUND_QUEUE) == 3
    assert served.count(names.INBOUND_DELIVERIES_QUEUE) == 0


def test_second_subscription_reuses_the_registered_webhook(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(inbound, f"{callback_receiver.url}/a")
    subscribe(inbound, f"{callback_receiver.url}/b")
    assert len(inbound.sandbox.state.actions_for(TWO_WAY)) == 1
    assert len(inbound.rows(names.SUBSCRIPTIONS_TABLE)) == 2


def test_subscribing_the_same_callback_again_replaces_the_subscription_not_doubles_it(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    """The platform subscribes a flow's trigger again (an edit, a lost answer) without always
    ending the first: two subscriptions to one URL sent every message to the flow twice."""
    first = subscribe(served, f"{callback_receiver.url}/flow")
    second = subscribe(served, f"{callback_receiver.url}/flow")
    subscribe(served, f"{callback_receiver.url}/other-flow")

    def callbacks() -> list[str]:
        rows = served.rows(names.SUBSCRIPTIONS_TABLE)  # also the index's ~asks-questions row
        live = [r for r in rows if "CallbackUrl" in r and not r.get("ReplacedBy")]
        return sorted(r["CallbackUrl"].rsplit("/", 1)[1] for r in live)

    assert callbacks() == ["flow", "other-flow"]

    simulate_inbound(served, "Once")
    assert served.process_intake() == 1
    # An instance whose index still lists the replaced subscription (it keeps it up to 30 s)
    # makes the flow's delivery for that one: it goes to its successor, not nowhere.
    queue = queue_client(names.INBOUND_DELIVERIES_QUEUE)
    ids = {urlsplit(url).path.rsplit("/", 1)[1] for url in (first, second)}
    for message in list(queue.receive_messages(messages_per_page=32, visibility_timeout=1)):
        delivery = json.loads(message.content)
        if delivery["subscriptionId"] in ids:
            stale = {**delivery, "subscriptionId": urlsplit(first).path.rsplit("/", 1)[1]}
            queue.send_message(json.dumps(stale))
            queue.delete_message(message)
    served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher")
    assert sorted(c.path for c in callback_receiver.wait_for(2)) == ["/flow", "/other-flow"]

    assert unsubscribe(served, first) == 200  # what is left of the replaced one goes
    assert unsubscribe(served, second) == 200
    assert callbacks() == ["other-flow"]
    assert len(served.rows(names.SUBSCRIPTIONS_TABLE)) == 2  # the index row, and other-flow


def _live_ids(env: Inbound) -> list[str]:
    rows = env.rows(names.SUBSCRIPTIONS_TABLE)  # also the index's ~asks-questions row
    return [r["RowKey"] for r in rows if "CallbackUrl" in r and not r.get("ReplacedBy")]


def test_two_subscribes_of_one_trigger_at_once_leave_one_subscription(
    served: Inbound, callback_receiver: CallbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power Automate retries a slow subscribe and the two land on two instances: each listed
    the trigger's earlier subscriptions before the other added its own, neither replaced the
    other, and every message went to the flow twice. Each caller's Location still ends what
    is left of its own."""
    callback = f"{callback_receiver.url}/flow"
    real_add, retry = SubscriptionStore.add, []

    def add_after_the_retry(self: SubscriptionStore, subscription: Subscription) -> None:
        if not retry:  # the retry lists, adds and answers between this one's list and add
            retry.append("under way")
            retry[0] = subscribe(served, callback)
        real_add(self, subscription)

    monkeypatch.setattr(SubscriptionStore, "add", add_after_the_retry)
    locations = [subscribe(served, callback), *retry]
    assert len(_live_ids(served)) == 1

    simulate_inbound(served, "Once")
    assert served.process_intake() == 1
    served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher")
    assert [c.path for c in callback_receiver.wait_for(1)] == ["/flow"]
    assert len(callback_receiver.calls) == 1

    assert [unsubscribe(served, location) for location in locations] == [200, 200]
    assert _live_ids(served) == []


def test_a_subscribe_crossing_one_of_ec7daff_during_a_deploy_leaves_one_live(
    served: Inbound, callback_receiver: CallbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trigger subscribed at once on this release (N) and on an ec7daff instance (E, which
    dated its row before listing and replaces what it listed by its own): N adds n; E lists
    (n), adds e (older); N lists again and marks e replaced by n; E marks n replaced by e. The
    cycle left nothing live and every event for the flow was dropped until it was saved."""
    callback = f"{callback_receiver.url}/flow"
    real_add, real_replace = SubscriptionStore.add, SubscriptionStore.replace
    e = Subscription(TWO_WAY, "sub-ec7daff", callback, CUSTOMER, utcnow() - dt.timedelta(seconds=1))
    e_listed: list[Subscription] = []

    def add_then_ec7daff_adds(self: SubscriptionStore, subscription: Subscription) -> None:
        real_add(self, subscription)
        if subscription is not e:
            e_listed.extend(s for s in self.list(TWO_WAY) if s.callback_url == callback)
            self.add(e)

    def replace_then_ec7daff_replaces(
        self: SubscriptionStore, earlier: Subscription, by: str
    ) -> None:
        real_replace(self, earlier, by)
        if earlier.subscription_id == e.subscription_id:
            for listed in e_listed:
                real_replace(self, listed, e.subscription_id)

    monkeypatch.setattr(SubscriptionStore, "add", add_then_ec7daff_adds)
    monkeypatch.setattr(SubscriptionStore, "replace", replace_then_ec7daff_replaces)
    location = subscribe(served, callback)
    n_id = urlsplit(location).path.rsplit("/", 1)[1]
    assert [s.subscription_id for s in e_listed] == [n_id]
    assert _live_ids(served) == [n_id]
    followed = SubscriptionStore.from_settings().live(TWO_WAY, e.subscription_id)
    assert followed is not None
    assert followed.subscription_id == n_id

    simulate_inbound(served, "Once")
    assert served.process_intake() == 1
    served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher")
    assert [c.path for c in callback_receiver.wait_for(1)] == ["/flow"]


def test_a_delivery_for_a_cycle_of_replaced_subscriptions_goes_to_its_newest(
    inbound: Inbound,
) -> None:
    """Until a subscribe makes one of them live again, a delivery made for either row of such
    a cycle (n replaced by e, e by n) went nowhere: it goes to the newest of the cycle."""
    store = SubscriptionStore.from_settings()
    old = Subscription(TWO_WAY, "sub-old", "https://flow.example/x", CUSTOMER, utcnow())
    e = Subscription(TWO_WAY, "sub-e", old.callback_url, CUSTOMER, utcnow())
    n = Subscription(TWO_WAY, "sub-n", old.callback_url, CUSTOMER, e.created_at + dt.timedelta(1))
    for subscription in (old, e, n):
        store.add(subscription)
    store.replace(old, e.subscription_id)
    store.replace(e, n.subscription_id)
    store.replace(n, e.subscription_id)

    for start in (old, e, n):
        followed = store.live(TWO_WAY, start.subscription_id)
        assert followed is not None
        assert followed.subscription_id == n.subscription_id


def test_a_subscribe_again_on_an_instance_whose_clock_is_behind_still_replaces_the_first(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    """The newest of one trigger's subscriptions stays: one subscribed after the first was
    listed is newer than it whatever the instance's clock says, so the flow's DELETE of the
    first Location (after an edit) does not end the one it now holds."""
    first = subscribe(inbound, f"{callback_receiver.url}/flow")
    with use(ManualClock(current().now() - 60)):
        second = subscribe(inbound, f"{callback_receiver.url}/flow")
    assert unsubscribe(inbound, first) == 200
    assert _live_ids(inbound) == [urlsplit(second).path.rsplit("/", 1)[1]]


class PreviousReleaseSubscriptions(SubscriptionStore):
    """The subscriptions as the previous release (def6ed5) reads a delivery's: its dispatcher
    calls ``get``, which knows no ``ReplacedBy`` and takes every row with a ``CallbackUrl`` of a
    kind it knows for a subscription (and its index lists every such row)."""

    def live(
        self, service: str, subscription_id: str, event: Mapping[str, object] | None = None
    ) -> Subscription | None:
        try:
            entity = table_client(names.SUBSCRIPTIONS_TABLE).get_entity(
                safe_key(service), safe_key(subscription_id)
            )
        except ResourceNotFoundError:
            return None
        if "CallbackUrl" not in entity or str(entity.get("Kind") or "new-message") not in {
            "new-message",
            "delivery-report",
            "opt-out",
            "send-failed",
        }:
            return None
        created = utc(entity.get("CreatedAt"))
        assert created is not None  # as def6ed5 asserts it
        return Subscription(
            service=str(entity["Service"]),
            subscription_id=str(entity["RowKey"]),
            callback_url=str(entity["CallbackUrl"]),
            customer_id=str(entity.get("CustomerId", "")),
            created_at=created,
            nonce=str(entity["Nonce"]) if entity.get("Nonce") else None,
        )


def test_the_previous_release_still_delivers_what_is_made_for_a_replaced_subscription(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    """During a deploy an instance of the previous release runs alongside: its index lists the
    replaced row, and a delivery made for it (or a retry in its backoff) may be taken by it.
    The replaced row kept only ReplacedBy, so it read no subscription and dropped the delivery:
    the flow lost the event. Delivered twice at worst is better."""
    first = subscribe(served, f"{callback_receiver.url}/flow")
    second = subscribe(served, f"{callback_receiver.url}/flow")
    first_id, second_id = (urlsplit(url).path.rsplit("/", 1)[1] for url in (first, second))

    store = SubscriptionStore.from_settings()  # this release: no longer a subscriber
    assert store.get(TWO_WAY, first_id) is None
    assert [s.subscription_id for s in store.list(TWO_WAY)] == [second_id]
    assert [s.subscription_id for s in store.every()] == [second_id]
    index = TriggerNotifier.for_settings(get_settings())._query(TWO_WAY)
    assert [e.subscription_id for e in index.entries] == [second_id]
    followed = store.live(TWO_WAY, first_id)
    assert followed is not None
    assert followed.subscription_id == second_id

    simulate_inbound(served, "Once")
    assert served.process_intake() == 1
    queue = queue_client(names.INBOUND_DELIVERIES_QUEUE)
    [message] = queue.receive_messages(messages_per_page=32, visibility_timeout=1)
    stale = {**json.loads(message.content), "subscriptionId": first_id}
    queue.delete_message(message)
    built = SubscriberDispatcher.from_settings()
    previous = SubscriberDispatcher(
        subscriptions=PreviousReleaseSubscriptions(table_client(names.SUBSCRIPTIONS_TABLE)),
        deliveries=queue,
        dead_letters=queue_client(names.INBOUND_DEAD_LETTER_QUEUE),
        http=built._http,
        max_attempts=built.max_attempts,
        retry_base_seconds=built.retry_base_seconds,
        payloads=built._payloads,
    )
    assert previous.process(json.dumps(stale)).outcome is DispatchOutcome.DELIVERED
    [call] = callback_receiver.wait_for(1)
    assert call.path == "/flow"
    assert json.loads(call.body)["content"] == "Once"


def test_a_replaced_subscription_whose_delete_came_first_is_simply_gone(
    inbound: Inbound,
) -> None:
    """The platform's DELETE of the old Location can land between a new subscribe's look-up
    and its replacing the old row: replacing raised (the new subscribe answered 500 with its
    subscription live) and must instead leave nothing behind."""
    store = SubscriptionStore.from_settings()
    old = Subscription(TWO_WAY, "sub-old", "https://flow.example/x", CUSTOMER, utcnow())
    store.add(old)
    assert store.remove(TWO_WAY, "sub-old")

    store.replace(old, "sub-new")

    assert store.live(TWO_WAY, "sub-old") is None
    assert [r for r in inbound.rows(names.SUBSCRIPTIONS_TABLE) if r["RowKey"] == "sub-old"] == []


def test_unsubscribe_needs_the_locations_token(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    location = subscribe(inbound, f"{callback_receiver.url}/a")
    other = subscribe(inbound, f"{callback_receiver.url}/b")
    other_token = dict(parse_qsl(urlsplit(other).query))["token"]
    assert unsubscribe(inbound, location, token="v1.0.forged") == 401
    assert unsubscribe(inbound, location, token=other_token) == 401
    assert len(inbound.rows(names.SUBSCRIPTIONS_TABLE)) == 2
    assert unsubscribe(inbound, location) == 200
    assert unsubscribe(inbound, location) == 200  # repeating is harmless
    assert len(inbound.rows(names.SUBSCRIPTIONS_TABLE)) == 1


def test_a_failing_subscriber_is_dead_lettered_and_does_not_block_the_others(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(served, "http://127.0.0.1:9/refused")  # nothing listens on the discard port
    subscribe(served, f"{callback_receiver.url}/ok")
    simulate_inbound(served)
    assert served.process_intake() == 1
    runs = served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher")
    assert runs == 1 + 3  # one success, three attempts (SMARTDIALOG_DISPATCH_MAX_ATTEMPTS)
    assert len(callback_receiver.wait_for(1)) == 1
    [letter] = served.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert letter["reason"] == "attempts-exhausted"
    assert letter["attempts"] == 3
    assert "127.0.0.1" in letter["detail"]
    assert "/refused" not in letter["detail"]  # the host only: a URL may carry a secret
    assert json.loads(letter["original"])["event"]["type"] == MESSAGE_RECEIVED


def test_a_subscriber_answering_404_is_dead_lettered_at_once(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    callback_receiver.status = 404
    subscribe(served, callback_receiver.url)
    simulate_inbound(served)
    assert served.process_intake() == 1
    assert served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    [letter] = served.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert (letter["reason"], letter["lastStatus"]) == ("rejected", 404)


def cloud_event(call: ReceivedCall) -> Any:
    """The CloudEvent a binary-mode POST carries, as the ``cloudevents`` SDK reads it."""
    from cloudevents.core.bindings.http import HTTPMessage, from_binary
    from cloudevents.core.formats.json import JSONFormat

    return from_binary(HTTPMessage(dict(call.headers), call.body), JSONFormat())


@pytest.mark.parametrize(
    "message_id",
    ["msg-\u00e9t\u00e9-1", "m-1\nX-Injected: yes", 'a "quoted" 100% id', "\U0001f600"],
    ids=["non-ascii", "line-break", "space-quote-percent", "emoji"],
)
def test_any_message_id_reaches_the_flow_percent_encoded_in_its_cloudevents_headers(
    inbound: Inbound, callback_receiver: CallbackReceiver, message_id: str
) -> None:
    from tests.inbound.test_webhook import payload, post, token_for

    subscribe(inbound, f"{callback_receiver.url}/flow")
    assert post(inbound, payload(messageId=message_id), token=token_for()).status == 202
    assert inbound.process_intake() == 1
    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    [call] = callback_receiver.wait_for(1)
    assert inbound.count(names.INBOUND_DEAD_LETTER_QUEUE) == 0
    ce = [v for k, v in call.headers.items() if k.lower().startswith("ce-")]
    assert all(v.isascii() and v.isprintable() and " " not in v for v in ce)
    event = cloud_event(call)
    assert (event.get_id(), event.get_subject()) == (f"{TWO_WAY}:{message_id}", message_id)
    assert event.get_data()["messageId"] == message_id  # the body carries it as it is


@dataclass
class RecordingQueue:
    """Stands in for a queue client: keeps what was sent and with which options."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def send_message(self, content: str, **options: Any) -> None:
        self.sent.append((content, options))


def http_date(after: dt.timedelta) -> str:
    return email.utils.format_datetime(NOW + after, usegmt=True)


@pytest.mark.parametrize(
    ("advice", "expected_seconds"),
    [
        pytest.param({"Retry-After": http_date(dt.timedelta(minutes=2))}, 120, id="http-date"),
        pytest.param({"Retry-After": "120"}, 120, id="seconds"),
        pytest.param({"retry-after-ms": "120000"}, 120, id="milliseconds"),
        pytest.param(
            {"Retry-After": http_date(dt.timedelta(hours=2))},
            MAX_RETRY_DELAY_SECONDS,
            id="http-date-beyond-the-cap",
        ),
        # no datetime holds it (OverflowError): no advice, the backoff (the dispatcher raised)
        pytest.param(
            {"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"},
            None,
            id="http-date-overflowing",
        ),
    ],
)
def test_a_subscribers_retry_after_outlasts_the_backoff_up_to_the_cap(
    inbound: Inbound, advice: dict[str, str], expected_seconds: int | None
) -> None:
    SubscriptionStore.from_settings().add(
        Subscription(TWO_WAY, "sub-busy", "https://flow.example/cb?sig=s", CUSTOMER, NOW)
    )
    deliveries, dead_letters = RecordingQueue(), RecordingQueue()
    head = "".join(f"{name}: {value}\r\n" for name, value in advice.items())
    busy = httpcore.MockBackend(  # the answer without a server: no traffic leaves the test
        [f"HTTP/1.1 503 Busy\r\n{head}Content-Length: 0\r\n\r\n".encode()]
    )
    http = GuardedClient(
        CallbackPolicy(),
        deadline_seconds=5,
        resolver=lambda host, port: ["93.184.215.14"],
        network_backend=busy,
    )
    dispatcher = SubscriberDispatcher(
        subscriptions=SubscriptionStore.from_settings(),
        deliveries=deliveries,
        dead_letters=dead_letters,
        http=http,
        max_attempts=8,
        retry_base_seconds=5,  # the first backoff is at most 5 s: the advice must win
        clock=lambda: NOW,
    )
    delivery = SubscriberDelivery(
        service=TWO_WAY, subscriptionId="sub-busy", event={"data": {}}, firstQueuedAt=NOW
    )
    result = dispatcher.process(delivery.model_dump_json())

    assert result.outcome is DispatchOutcome.RETRY_SCHEDULED
    if expected_seconds is None:  # the first backoff: at most retry_base_seconds
        assert result.delay_seconds is not None
        assert 0 <= result.delay_seconds <= 5
        expected_seconds = result.delay_seconds
    assert (result.status, result.delay_seconds) == (503, expected_seconds)
    [(again, options)] = deliveries.sent
    assert options == {"visibility_timeout": expected_seconds}
    assert json.loads(again)["attempts"] == 1
    assert dead_letters.sent == []


#: Where the tests' callback hosts resolve: the slow ones' calls are held, the fast one's not.
ADDRESSES = {"slow.example": "93.184.215.14", "slow2.example": "93.184.215.15",
             "fast.example": "93.184.215.16"}  # fmt: skip


class HeldBackend(httpcore.MockBackend):
    """Answers 200 to every call; a call to a slow host is held until ``go`` is set, ``began``
    counting those."""

    def __init__(self) -> None:
        super().__init__([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
        self.began = threading.Semaphore(0)
        self.go = threading.Event()

    def connect_tcp(self, host: str, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        if host != ADDRESSES["fast.example"]:
            self.began.release()
            assert self.go.wait(30)
        return super().connect_tcp(host, *args, **kwargs)


@pytest.fixture
def six_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A worker pool of six threads: three callback slots (made afresh for the test)."""
    monkeypatch.setenv("PYTHON_THREADPOOL_THREAD_COUNT", "6")
    _dispatch._slots.cache_clear()
    yield _dispatch.call_slots()
    _dispatch._slots.cache_clear()


@pytest.mark.parametrize(
    ("threads", "slots"), [("6", 3), ("1", 1), ("", None), ("lots", None), ("0", None)]
)
def test_the_callback_slots_are_half_the_workers_threads(
    monkeypatch: pytest.MonkeyPatch, threads: str, slots: int | None
) -> None:
    monkeypatch.setenv("PYTHON_THREADPOOL_THREAD_COUNT", threads)
    default = max(1, min(32, (os.cpu_count() or 1) + 4) // 2)  # the worker's own pool, halved
    assert _dispatch.call_slots() == (default if slots is None else slots)


def test_slow_callbacks_hold_at_most_the_call_slots_and_never_all_for_one_host(
    inbound: Inbound, six_threads: int
) -> None:
    """Found by an attacker's look: subscriptions whose callbacks answer a byte every half
    second held every worker thread (each call up to its 10 s deadline, 8 attempts), so the
    webhook and every action took seconds. Now a process makes at most half its threads' worth
    of such calls at once, one host's at most all but one of them (a chaos run saw a slow
    subscriber hold up a fast one by a minute when it could take them all); a delivery that
    finds no slot is put back at once, no attempt spent, no call made, no thread held."""
    assert six_threads == 3
    store = SubscriptionStore.from_settings()
    for name in ADDRESSES:
        store.add(Subscription(TWO_WAY, f"sub-{name}", f"https://{name}/cb?sig=s", CUSTOMER, NOW))
    deliveries, backend = RecordingQueue(), HeldBackend()
    http = GuardedClient(CallbackPolicy(), deadline_seconds=60, network_backend=backend,
                         resolver=lambda host, port: [ADDRESSES[host]])  # fmt: skip
    dispatcher = SubscriberDispatcher(
        subscriptions=store, deliveries=deliveries, dead_letters=RecordingQueue(), http=http,
        max_attempts=8, retry_base_seconds=5, clock=lambda: NOW,
    )  # fmt: skip

    def to(name: str) -> str:
        return SubscriberDelivery(
            service=TWO_WAY, subscriptionId=f"sub-{name}", event={"data": {}}, firstQueuedAt=NOW
        ).model_dump_json()

    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(dispatcher.process, to("slow.example")) for _ in range(2)]
        for _ in held:
            assert backend.began.acquire(timeout=30)  # two slots hold its calls now
        its_host_full = dispatcher.process(to("slow.example"))
        fast = dispatcher.process(to("fast.example"))  # the slot left, at once
        held.append(pool.submit(dispatcher.process, to("slow2.example")))
        assert backend.began.acquire(timeout=30)  # every slot holds a call now
        all_full = dispatcher.process(to("fast.example"))
        backend.go.set()
        results = [call.result(timeout=30) for call in held]

    assert [r.outcome for r in results] == [DispatchOutcome.DELIVERED] * 3
    assert fast.outcome is DispatchOutcome.DELIVERED
    assert not backend.began.acquire(blocking=False)  # no slow call beyond the slots
    spread = _dispatch.SLOT_RETRY_SECONDS
    for put_back in (its_host_full, all_full):
        assert (put_back.outcome, put_back.status) == (DispatchOutcome.RETRY_SCHEDULED, None)
        assert put_back.delay_seconds is not None
        assert spread <= put_back.delay_seconds <= 2 * spread
    [(again, _), (fast_again, options)] = deliveries.sent
    assert options == {"visibility_timeout": all_full.delay_seconds}
    assert json.loads(again)["attempts"] == json.loads(fast_again)["attempts"] == 0
    # The slots are free again: the copies put back are delivered.
    assert dispatcher.process(again).outcome is DispatchOutcome.DELIVERED
    assert dispatcher.process(fast_again).outcome is DispatchOutcome.DELIVERED


def test_a_callback_that_raises_anything_frees_its_slot(inbound: Inbound, six_threads: int) -> None:
    def broken() -> Any:
        raise RuntimeError("a bug in a call")

    for _ in range(six_threads + 1):
        with pytest.raises(RuntimeError):
            _dispatch.judge_call(broken, "flow.example", now=lambda: 0.0)
    verdict = _dispatch.judge_call(
        lambda: CallbackAnswer(200, {}, b"", False, 0), "flow.example", now=lambda: 0.0
    )
    assert verdict.kind == "delivered"


def register_webhook(inbound: Inbound, service: str) -> HttpAnswer:
    """RegisterInboundWebhook for ``service`` of the test customer; its answer."""
    return inbound.call(
        "RegisterInboundWebhook",
        "POST",
        route_params={"Service": service},
        headers={"Customer-Id": CUSTOMER},
    )


def test_register_and_unregister_the_webhook(inbound: Inbound) -> None:
    answer = register_webhook(inbound, TWO_WAY)
    assert answer.status == 201
    action_id = answer.body["ActionId"]
    assert answer.body["PipelineId"]
    [action] = inbound.sandbox.state.actions_for(TWO_WAY)
    assert action["id"] == action_id
    [row] = inbound.rows(names.WEBHOOKS_TABLE)
    assert "token" not in json.dumps(row, default=str)  # the credential is not stored

    gone = inbound.call(
        "UnregisterInboundWebhook",
        "DELETE",
        route_params={"Service": TWO_WAY, "ActionId": action_id},
    )
    assert gone.status == 204
    assert inbound.sandbox.state.actions_for(TWO_WAY) == []
    assert inbound.rows(names.WEBHOOKS_TABLE) == []


def test_a_registration_that_cannot_be_recorded_is_removed_upstream(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unrecorded, its URL (a token without expiry) could never be revoked, and the caller's
    retry registers another action beside it."""
    from shared.inbound import WebhookRegistry
    from tests.crash import crash_once

    crash_once(monkeypatch, WebhookRegistry, "add", "storage failed")
    answer = register_webhook(inbound, TWO_WAY)
    assert answer.status == 500
    assert inbound.sandbox.state.actions_for(TWO_WAY) == []
    assert inbound.rows(names.WEBHOOKS_TABLE) == []


def test_registering_for_a_one_way_service_maps_the_upstream_refusal(inbound: Inbound) -> None:
    answer = register_webhook(inbound, "s-1001-oneway")
    assert answer.status in (404, 422)
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert inbound.rows(names.WEBHOOKS_TABLE) == []


def test_unregistering_an_unknown_action_is_404(inbound: Inbound) -> None:
    answer = inbound.call(
        "UnregisterInboundWebhook",
        "DELETE",
        route_params={"Service": TWO_WAY, "ActionId": "nope"},
    )
    assert answer.status == 404


def test_unregistering_a_webhook_recorded_without_its_pipeline_id_asks_for_it(
    inbound: Inbound,
) -> None:
    """SmartDialog's documented NewMessage answer is ``{"id"}`` alone: the action is ours, on
    record, but its removal (``DELETE /pipelines/{id}/actions/{id}``) needs the pipeline id.
    It was a 404 saying this app registered no such action."""
    from shared.actions import ActionRequest, handle
    from shared.smartdialog import SmartDialogClient, StaticTokenAuth

    upstream: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        upstream.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(201, json={"id": "a-1"})  # no pipelineId, no Location
        return httpx.Response(404 if "p-wrong" in request.url.path else 204)

    def client(_: object) -> SmartDialogClient:
        return SmartDialogClient(
            "https://smartdialog.invalid/api-integrations/v1",
            StaticTokenAuth("secret-token-abc"),
            http_client=httpx.Client(transport=httpx.MockTransport(answer)),
            max_retries=0,
        )

    def act(name: str, method: str, params: dict[str, str] | None = None) -> Any:
        route = {"Service": TWO_WAY, **({"ActionId": "a-1"} if method == "DELETE" else {})}
        request = ActionRequest(method, route_params=route, query=params or {})
        return handle(name, request, settings=get_settings(), client_factory=client)

    registered = act("RegisterInboundWebhook", "POST")
    assert registered.status == 201
    assert "PipelineId" not in registered.body
    refused = act("UnregisterInboundWebhook", "DELETE")
    assert refused.status == 409
    assert "PipelineId" in refused.body["detail"]
    assert "pipeline id" in refused.body["detail"]
    assert len(inbound.rows(names.WEBHOOKS_TABLE)) == 1  # still on record
    assert act("UnregisterInboundWebhook", "DELETE", {"PipelineId": "p-7"}).status == 204
    assert upstream[-1] == ("DELETE", "/api-integrations/v1/pipelines/p-7/actions/a-1")
    assert inbound.rows(names.WEBHOOKS_TABLE) == []

    # A PipelineId SmartDialog has no such action in: a wrong one, or the action removed by
    # hand. It was answered 204 as removed; then the record was kept, a dead end if the action
    # was gone. Now the record is forgotten (its URL refused) and the 404 says so.
    assert act("RegisterInboundWebhook", "POST").status == 201
    wrong = act("UnregisterInboundWebhook", "DELETE", {"PipelineId": "p-wrong"})
    assert (wrong.status, wrong.body["title"]) == (404, "Not in that pipeline")
    assert wrong.body["detail"].endswith(
        "(connection default); this app forgot it: if it is still there, remove it."
    )
    assert inbound.rows(names.WEBHOOKS_TABLE) == []


def test_unsubscribe_answers_the_subscription_it_ended(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    # The connector documents a schema for this 200 (Microsoft's rules want one): it is honoured.
    location = urlsplit(subscribe(inbound, callback_receiver.url))
    *_, service, subscription = location.path.split("/")
    answer = inbound.call(
        "DeleteNewMessageTrigger",
        "DELETE",
        route_params={"Service": service, "SubscriptionId": subscription},
        params=dict(parse_qsl(location.query)),
    )
    assert (answer.status, answer.body) == (200, {"id": subscription, "service": TWO_WAY})
