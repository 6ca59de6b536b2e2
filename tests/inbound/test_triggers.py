"""The delivery-report, opt-out and send-failed triggers, end to end over real parts: the
subscribe actions, the sandbox's delivery reports (GET through the dev host) and
``/sandbox/inbound`` (POST to our webhook through the dev host), the trigger-events queue and
its fan-out, the New Message dispatcher, and a loopback receiver standing in for the flow."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from azure.data.tables import TableClient

from shared import names
from shared.clock import ManualClock, use, utcnow
from shared.inbound import subscription_url
from shared.settings import get_settings
from shared.signing import new_nonce
from shared.storage import queue_client, table_client
from shared.suppressions import SuppressionStore
from shared.triggers import (
    SUBSCRIBERS_TTL_SECONDS,
    OptOutTriggerData,
    TriggerKind,
    TriggerNotifier,
)
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import CUSTOMER, ONE_WAY, TWO_WAY, Inbound
from tests.inbound.test_delivery_reports import DELIVERED, UNDELIVERABLE, report, send
from tests.inbound.test_subscriptions import SENDER, simulate_inbound

TRIGGERS = {
    TriggerKind.DELIVERY_REPORT: ("DeliveryReportArrived", "DeleteDeliveryReportTrigger"),
    TriggerKind.OPT_OUT: ("RecipientOptedOut", "DeleteOptOutTrigger"),
    TriggerKind.SEND_FAILED: ("SendFailed", "DeleteSendFailedTrigger"),
}


def subscribe(env: Inbound, kind: TriggerKind, callback: str, service: str, **params: str) -> Any:
    return env.call(
        TRIGGERS[kind][0],
        "POST",
        route_params={"Service": service},
        params=params,
        headers={"Customer-Id": CUSTOMER},
        body={"callbackUrl": callback},
    )


def unsubscribe(env: Inbound, kind: TriggerKind, location: str) -> int:
    parts = urlsplit(location)
    *_, service, subscription = parts.path.split("/")
    return env.call(
        TRIGGERS[kind][1],
        "DELETE",
        route_params={"Service": service, "SubscriptionId": subscription},
        params=dict(parse_qsl(parts.query)),
    ).status


def deliver(env: Inbound) -> int:
    """Fan the queued notes out, then run the dispatcher; returns the dispatcher's runs."""
    env.run_queue(names.TRIGGER_EVENTS_QUEUE, "TriggerFanout")
    return env.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher")


def bodies(receiver: CallbackReceiver, path: str | None = None) -> list[dict[str, Any]]:
    return [json.loads(c.body) for c in receiver.calls if path is None or c.path == path]


def wait_for_queue(queue: str, count: int, timeout: float = 10) -> None:
    client = queue_client(queue)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (client.get_queue_properties().approximate_message_count or 0) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{queue} did not get {count} message(s)")


def _connector() -> dict[str, Any]:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "connector" / "apiDefinition.swagger.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


# --- When a delivery report arrives -------------------------------------------------------------


def test_sandbox_delivery_reports_reach_the_flow_with_the_sends_customer_data(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    answer = subscribe(served, TriggerKind.DELIVERY_REPORT, f"{callback_receiver.url}/dlr", ONE_WAY)
    assert answer.status == 201, answer.body
    assert answer.body["kind"] == "delivery-report"
    assert f"/api/triggers/delivery-reports/{ONE_WAY}/" in answer.headers["Location"]

    message_id = send(served, DELIVERED, UNDELIVERABLE, CustomerData="sharepoint-row-17")
    wait_for_queue(names.TRIGGER_EVENTS_QUEUE, 2)  # the sandbox's two reports, via the dev host

    assert deliver(served) == 2
    calls = callback_receiver.wait_for(2)
    got = sorted(bodies(callback_receiver), key=lambda b: b["state"])
    assert [(b["recipient"], b["state"], b["final"]) for b in got] == [
        (DELIVERED, "delivered", True),
        (UNDELIVERABLE, "undelivered", True),
    ]
    assert {b["messageId"] for b in got} == {message_id}
    assert {b["customerData"] for b in got} == {"sharepoint-row-17"}
    assert {b["service"] for b in got} == {ONE_WAY}
    assert {b["statusCode"] for b in got} == {"1", "2"}
    headers = [{k.lower(): v for k, v in c.headers.items()} for c in calls]
    assert {h["ce-type"] for h in headers} == {"fi.arena.smartdialog.trigger.delivery-report"}
    assert {h["ce-subject"] for h in headers} == {message_id}


def test_final_states_only_unless_the_flow_asks_for_every_state(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    # Not served: the sandbox's own reports go nowhere; these reports are ours, one by one.
    base = callback_receiver.url
    assert subscribe(inbound, TriggerKind.DELIVERY_REPORT, f"{base}/final", ONE_WAY).status == 201
    every = subscribe(inbound, TriggerKind.DELIVERY_REPORT, f"{base}/all", ONE_WAY, States="all")
    assert every.status == 201, every.body
    message_id = send(inbound, DELIVERED)

    assert report(inbound, message_id, status="sent", recipient=DELIVERED).status == 200
    assert report(inbound, message_id, status="delivered", recipient=DELIVERED).status == 200
    deliver(inbound)

    assert [b["state"] for b in bodies(callback_receiver, "/final")] == ["delivered"]
    assert sorted(b["state"] for b in bodies(callback_receiver, "/all")) == ["delivered", "sent"]
    assert [b["final"] for b in bodies(callback_receiver, "/all") if b["state"] == "sent"] == [
        False
    ]


def test_a_repeated_or_late_report_does_not_run_the_flow_again(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    url = f"{callback_receiver.url}/all"
    assert subscribe(inbound, TriggerKind.DELIVERY_REPORT, url, ONE_WAY, States="all").status == 201
    message_id = send(inbound, DELIVERED)
    for state in ("delivered", "delivered", "sent"):  # SmartDialog's retry, then a late "sent"
        assert report(inbound, message_id, status=state, recipient=DELIVERED).status == 200
    deliver(inbound)
    assert [b["state"] for b in bodies(callback_receiver)] == ["delivered"]


def test_a_delivery_report_for_a_service_nobody_watches_writes_no_note(inbound: Inbound) -> None:
    message_id = send(inbound, DELIVERED)
    assert report(inbound, message_id, status="delivered", recipient=DELIVERED).status == 200
    assert inbound.count(names.TRIGGER_EVENTS_QUEUE) == 0


class CountingTable:
    """A real table client that counts the queries made through it."""

    def __init__(self, table: TableClient) -> None:
        self.table = table
        self.queries = 0

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.table.query_entities(*args, **kwargs)


def test_the_subscriber_lookup_is_one_query_per_service_per_ttl(inbound: Inbound) -> None:
    clock = ManualClock()
    table = CountingTable(table_client(names.SUBSCRIPTIONS_TABLE))
    queue = queue_client(names.TRIGGER_EVENTS_QUEUE)
    with use(clock):
        notifier = TriggerNotifier(subscriptions=table, queue=queue)  # type: ignore[arg-type]
        data = OptOutTriggerData(
            phone=SENDER,
            keyword="STOP",
            direction="out",
            occurredAt=utcnow(),
            messageId="m-1",
            service=TWO_WAY,
        )

        def note() -> bool:
            return notifier.notify(
                TriggerKind.OPT_OUT, TWO_WAY, event_id="e", time=utcnow(), data=data
            )

        assert [note() for _ in range(50)] == [False] * 50
        assert table.queries == 1  # nobody subscribed: one query, then nothing for the TTL
        assert inbound.count(names.TRIGGER_EVENTS_QUEUE) == 0

        subscribe(inbound, TriggerKind.OPT_OUT, "https://flow.example/cb", TWO_WAY)
        assert note() is False  # still the cached answer (this notifier was not told)
        clock.advance(SUBSCRIBERS_TTL_SECONDS + 1)
        assert note() is True
        assert note() is True
        assert table.queries == 2
        assert inbound.count(names.TRIGGER_EVENTS_QUEUE) == 2


# --- When a recipient opts out or back in --------------------------------------------------------


def test_stop_and_start_by_sms_reach_the_opt_out_flow_and_not_the_new_message_flow(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    base = callback_receiver.url
    answer = subscribe(served, TriggerKind.OPT_OUT, f"{base}/optout", TWO_WAY)
    assert answer.status == 201, answer.body
    assert len(served.sandbox.state.actions_for(TWO_WAY)) == 1  # registered the webhook
    new_message = served.call(
        "NewMessage",
        "POST",
        route_params={"Service": TWO_WAY},
        headers={"Customer-Id": CUSTOMER},
        body={"callbackUrl": f"{base}/messages"},
    )
    assert new_message.status == 201

    simulate_inbound(served, "Stop!")
    simulate_inbound(served, "hello")
    assert served.process_intake() == 2
    deliver(served)
    simulate_inbound(served, "start")
    assert served.process_intake() == 1
    deliver(served)

    callback_receiver.wait_for(5)
    out, back = bodies(callback_receiver, "/optout")
    assert (out["phone"], out["keyword"], out["direction"]) == (SENDER, "STOP!", "out")
    assert (back["keyword"], back["direction"]) == ("START", "in")
    assert out["service"] == TWO_WAY
    assert dt.datetime.fromisoformat(out["occurredAt"]) <= dt.datetime.fromisoformat(
        back["occurredAt"]
    )
    # New Message still gets every message (its own shape), the opt-out flow only keywords.
    assert [b["content"] for b in bodies(callback_receiver, "/messages")] == [
        "Stop!",
        "hello",
        "start",
    ]


def test_a_stop_whose_message_id_is_not_ascii_reaches_the_opt_out_flow(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    from tests.inbound.test_subscriptions import cloud_event
    from tests.inbound.test_webhook import payload, post, token_for

    message_id = "stop-\u00e9\n1"  # the opt-out event's subject is the inbound messageId
    assert subscribe(inbound, TriggerKind.OPT_OUT, callback_receiver.url, TWO_WAY).status == 201
    body = payload(content="STOP", messageId=message_id)
    assert post(inbound, body, token=token_for()).status == 202
    assert inbound.process_intake() == 1
    assert deliver(inbound) == 1
    [call] = callback_receiver.wait_for(1)
    assert inbound.count(names.INBOUND_DEAD_LETTER_QUEUE) == 0
    event = cloud_event(call)
    assert event.get_subject() == message_id
    assert event.get_id() == f"{TWO_WAY}:{message_id}:stop"
    assert event.get_data()["messageId"] == message_id


def test_a_failing_opt_out_subscriber_is_dead_lettered_without_holding_up_the_other(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(served, TriggerKind.OPT_OUT, "http://127.0.0.1:9/refused", TWO_WAY)
    subscribe(served, TriggerKind.OPT_OUT, f"{callback_receiver.url}/ok", TWO_WAY)
    simulate_inbound(served, "STOP")
    assert served.process_intake() == 1
    assert deliver(served) == 1 + 3  # one success, three attempts (DISPATCH_MAX_ATTEMPTS)
    assert [b["direction"] for b in bodies(callback_receiver)] == ["out"]
    [letter] = served.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert (letter["reason"], letter["attempts"]) == ("attempts-exhausted", 3)
    event = json.loads(letter["original"])["event"]
    assert event["type"] == "fi.arena.smartdialog.trigger.opt-out"


def test_an_unsubscribed_opt_out_flow_gets_nothing_more(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    location = subscribe(served, TriggerKind.OPT_OUT, callback_receiver.url, TWO_WAY).headers[
        "Location"
    ]
    assert "/api/triggers/opt-outs/" in location
    # Another trigger's DELETE route does not end it (the row's kind must match).
    assert unsubscribe(served, TriggerKind.SEND_FAILED, location) == 200
    assert len(served.rows(names.SUBSCRIPTIONS_TABLE)) == 1
    assert unsubscribe(served, TriggerKind.OPT_OUT, location) == 200
    assert served.rows(names.SUBSCRIPTIONS_TABLE) == []
    assert unsubscribe(served, TriggerKind.OPT_OUT, location) == 200  # repeating is harmless

    simulate_inbound(served, "STOP")
    assert served.process_intake() == 1
    assert served.count(names.TRIGGER_EVENTS_QUEUE) == 0
    assert callback_receiver.calls == []


@pytest.mark.parametrize("kind", list(TRIGGERS))
def test_the_delete_of_a_replaced_subscriptions_location_removes_what_is_left_of_it(
    inbound: Inbound, callback_receiver: CallbackReceiver, kind: TriggerKind
) -> None:
    """Subscribed again to the same URL, the first subscription's row stays, marked replaced;
    its Location's DELETE found no subscription of the kind and left the row for ever (and
    instances of the previous release kept indexing it)."""
    flow = f"{callback_receiver.url}/flow"
    first = subscribe(inbound, kind, flow, TWO_WAY).headers["Location"]
    second = subscribe(inbound, kind, flow, TWO_WAY).headers["Location"]
    first_id = urlsplit(first).path.rsplit("/", 1)[1]

    def ids() -> list[str]:
        return sorted(r["RowKey"] for r in inbound.rows(names.SUBSCRIPTIONS_TABLE))

    assert len(ids()) == 2
    others = [k for k in TRIGGERS if k is not kind]
    assert unsubscribe(inbound, others[0], first) == 200  # not another trigger's to end
    assert first_id in ids()
    # A token signed for this id but another subscription of it (its nonce): refused.
    forged = subscription_url(get_settings(), TWO_WAY, first_id, new_nonce(), kind)
    assert unsubscribe(inbound, kind, forged) == 403
    assert first_id in ids()
    assert unsubscribe(inbound, kind, first) == 200
    assert ids() == [urlsplit(second).path.rsplit("/", 1)[1]]
    assert unsubscribe(inbound, kind, first) == 200  # repeating is harmless


# --- When a send fails ---------------------------------------------------------------------------


def test_a_queued_send_that_fails_reaches_the_send_failed_flow(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    answer = subscribe(inbound, TriggerKind.SEND_FAILED, f"{callback_receiver.url}/failed", ONE_WAY)
    assert answer.status == 201, answer.body
    phone = "+358411234567"
    SuppressionStore.from_settings().add(
        ONE_WAY, phone, keyword="STOP", source="inbound", now=utcnow()
    )
    message_id = f"m-{uuid.uuid4().hex[:12]}"
    command = {
        "operation": "SendMessage",
        "messageId": message_id,
        "body": {
            "Sender": "Sandbox",
            "Content": "Your appointment",
            "Recipients": [{"Address": phone}],
            "CustomerData": "row-9",
        },
    }
    queue_client(names.OUTBOUND_QUEUE).send_message(json.dumps(command))
    inbound.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")

    assert deliver(inbound) == 1
    [body] = bodies(callback_receiver, "/failed")
    assert (body["messageId"], body["code"], body["customerData"]) == (
        message_id,
        "suppressed",
        "row-9",
    )
    assert body["reason"]
    assert body["service"] == ONE_WAY
    assert body["fieldErrors"] == []
    [call] = callback_receiver.calls
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["ce-type"] == "fi.arena.smartdialog.trigger.send-failed"


def test_a_send_refused_for_its_fields_carries_them_to_the_send_failed_flow(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    from shared.messages import FailureInfo
    from shared.triggers import notify_send_failed

    answer = subscribe(inbound, TriggerKind.SEND_FAILED, f"{callback_receiver.url}/failed", ONE_WAY)
    assert answer.status == 201, answer.body
    failure = FailureInfo.model_validate(
        {
            "code": "malformed",
            "title": "Its queued command could not be read",
            "errors": [
                {"field": "body.Recipients.0.Personalization.n", "message": "Input should be text"}
            ],
        }
    )
    command = json.dumps({"body": {"CustomerData": "row-3"}})
    assert notify_send_failed("m-fields", command, ONE_WAY, failure.model_dump(), utcnow())
    assert deliver(inbound) == 1
    [body] = bodies(callback_receiver, "/failed")
    assert body["fieldErrors"] == [
        {"field": "body.Recipients.0.Personalization.n", "message": "Input should be text"}
    ]
    assert (body["code"], body["customerData"]) == ("malformed", "row-3")


def test_a_failed_discussion_reply_reaches_no_send_failed_flow(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    """A discussion reply has no service (SmartDialog takes none: its thread has one we do not
    know); its failure went to the flows of the connection's default service (SERVICE_ID, here
    ONE_WAY), which know nothing of that thread."""
    answer = subscribe(inbound, TriggerKind.SEND_FAILED, f"{callback_receiver.url}/failed", ONE_WAY)
    assert answer.status == 201, answer.body
    command = {
        "operation": "SendDiscussionReplyMessage",
        "messageId": "m-reply",
        "validUntil": "2000-01-01T00:00:00Z",  # fails expired, without a call
        "body": {"ThreadId": "t-1", "Content": "Thanks!", "CustomerData": "row-1"},
    }
    queue_client(names.OUTBOUND_QUEUE).send_message(json.dumps(command))
    inbound.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")

    [event] = inbound.read(names.EVENTS_QUEUE)  # still announced, to smartdialog-events
    assert (event["type"], event["data"]["messageId"]) == (
        "fi.arena.smartdialog.message.failed",
        "m-reply",
    )
    assert inbound.count(names.TRIGGER_EVENTS_QUEUE) == 0
    deliver(inbound)
    assert callback_receiver.calls == []


# --- bad input ----------------------------------------------------------------------------------


def test_a_subscription_to_an_unknown_service_is_a_400_naming_it(inbound: Inbound) -> None:
    for kind in TriggerKind:
        if kind is TriggerKind.NEW_MESSAGE:
            continue
        answer = subscribe(inbound, kind, "https://flow.example/cb", "s-1001-nope")
        assert answer.status == 400, (kind, answer.body)
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert "s-1001-nope" in answer.body["detail"]
        assert [e["field"] for e in answer.body["errors"]] == ["Service"]
    assert inbound.rows(names.SUBSCRIPTIONS_TABLE) == []
    assert inbound.rows(names.WEBHOOKS_TABLE) == []


def test_an_opt_out_subscription_to_a_one_way_service_is_a_400_naming_it(
    inbound: Inbound,
) -> None:
    answer = subscribe(inbound, TriggerKind.OPT_OUT, "https://flow.example/cb", ONE_WAY)
    assert answer.status == 400, answer.body
    assert ONE_WAY in answer.body["detail"]
    assert "TwoWay" in answer.body["detail"]
    assert inbound.rows(names.SUBSCRIPTIONS_TABLE) == []
    assert inbound.sandbox.state.actions_for(ONE_WAY) == []


def test_a_bad_states_value_or_callback_is_a_400_and_stores_nothing(inbound: Inbound) -> None:
    bad_states = subscribe(
        inbound, TriggerKind.DELIVERY_REPORT, "https://flow.example/cb", ONE_WAY, States="some"
    )
    assert bad_states.status == 400
    assert "States" in {e["field"] for e in bad_states.body["errors"]}
    bad_url = subscribe(inbound, TriggerKind.SEND_FAILED, "not a url", ONE_WAY)
    assert bad_url.status == 400
    assert inbound.rows(names.SUBSCRIPTIONS_TABLE) == []


def test_a_malformed_note_is_refused_loudly(inbound: Inbound) -> None:
    from shared.inbound import MalformedNotification, fan_out_trigger

    note = {
        "kind": "opt-out",
        "service": TWO_WAY,
        "eventId": "e-1",
        "time": utcnow().isoformat(),
        "data": {"phone": SENDER},  # the opt-out's other fields are missing
    }
    try:
        fan_out_trigger(json.dumps(note))
    except MalformedNotification:
        pass
    else:
        raise AssertionError("a note that is not one of ours must raise (poison)")
    assert inbound.count(names.INBOUND_DELIVERIES_QUEUE) == 0


# --- what the triggers cost the delivery-report and failure paths ------------------------------


def _trigger_calls(counter: Any, before: Any) -> dict[str, int]:
    """Round trips since ``before`` on what the triggers add (the subscriptions table, read by
    the notifier, and the trigger-events queue)."""
    diff = counter.snapshot() - before
    mine = (names.SUBSCRIPTIONS_TABLE, names.TRIGGER_EVENTS_QUEUE)
    return {f"{op} {name}": n for (op, name), n in diff.items() if name in mine}


def test_storage_calls_the_triggers_add_per_delivery_report_and_per_failure(
    inbound: Inbound, monkeypatch: Any
) -> None:
    from shared import storage

    first, second, third, fourth = (send(inbound, DELIVERED) for _ in range(4))
    monkeypatch.setattr(storage, "_round_trips", None)  # counting is off again afterwards
    counter = storage.count_round_trips()
    inbound.configure()  # rebuild the cached services on counted clients

    def cost(message_id: str) -> dict[str, int]:
        before = counter.snapshot()
        assert report(inbound, message_id, status="delivered", recipient=DELIVERED).status == 200
        return _trigger_calls(counter, before)

    # Nobody subscribed: one partition query for the service, then nothing for the TTL.
    assert cost(first) == {"table query SmartDialogSubscriptions": 1}
    assert cost(second) == {}
    # A subscriber (this process subscribed it, so its cache was dropped): one query, then one
    # queue write per report; the process's first note also writes the ~layout row from which
    # notes carry their trace (once per process).
    subscribe(inbound, TriggerKind.DELIVERY_REPORT, "https://flow.example/cb", ONE_WAY)
    before = counter.snapshot()
    assert report(inbound, third, status="delivered", recipient=DELIVERED).status == 200
    assert _trigger_calls(counter, before) == {
        "table query SmartDialogSubscriptions": 1,
        "table write SmartDialogSubscriptions": 1,
        "queue put smartdialog-trigger-events": 1,
    }
    assert cost(fourth) == {"queue put smartdialog-trigger-events": 1}
    # The fan-out: the subscriber index the report already cached (one query at most, should
    # the TTL have run out on a slow machine), one delivery per note and subscriber.
    before = counter.snapshot()
    inbound.run_queue(names.TRIGGER_EVENTS_QUEUE, "TriggerFanout")
    diff = counter.snapshot() - before
    assert diff[storage.StorageOp.TABLE_QUERY, names.SUBSCRIPTIONS_TABLE] <= 1
    assert diff[storage.StorageOp.QUEUE_PUT, names.INBOUND_DELIVERIES_QUEUE] == 2

    # A failed send for a service nobody watches for failures: the answer cached by the report
    # above is reused (one query at most, should the TTL have run out on a slow machine).
    phone = "+358411234568"
    SuppressionStore.from_settings().add(
        ONE_WAY, phone, keyword="STOP", source="inbound", now=utcnow()
    )
    command = {
        "operation": "SendMessage",
        "messageId": f"m-{uuid.uuid4().hex[:12]}",
        "body": {"Sender": "Sandbox", "Content": "Hi", "Recipients": [{"Address": phone}]},
    }
    queue_client(names.OUTBOUND_QUEUE).send_message(json.dumps(command))
    before = counter.snapshot()
    inbound.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")
    assert _trigger_calls(counter, before) in ({}, {"table query SmartDialogSubscriptions": 1})


def test_a_new_message_row_written_before_kinds_stays_a_new_message_subscription(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    from shared.inbound import SubscriptionStore
    from shared.storage import plain_datetime

    # As the previous release wrote it: no Kind, no States (and a webhook registered).
    answer = subscribe(served, TriggerKind.OPT_OUT, f"{callback_receiver.url}/optout", TWO_WAY)
    assert answer.status == 201
    table_client(names.SUBSCRIPTIONS_TABLE).create_entity(
        {
            "PartitionKey": TWO_WAY,
            "RowKey": "legacy-1",
            "Service": TWO_WAY,
            "CallbackUrl": f"{callback_receiver.url}/legacy",
            "CustomerId": CUSTOMER,
            "CreatedAt": plain_datetime(utcnow()),
        }
    )
    store = SubscriptionStore.from_settings()
    assert [s.subscription_id for s in store.list(TWO_WAY)] == ["legacy-1"]
    assert [s.kind for s in store.list(TWO_WAY, TriggerKind.OPT_OUT)] == [TriggerKind.OPT_OUT]

    simulate_inbound(served, "STOP")
    assert served.process_intake() == 1
    deliver(served)
    callback_receiver.wait_for(2)
    assert [b["content"] for b in bodies(callback_receiver, "/legacy")] == ["STOP"]
    assert [b["direction"] for b in bodies(callback_receiver, "/optout")] == ["out"]


def test_the_connector_describes_every_field_each_trigger_delivers() -> None:
    from shared.triggers import (
        DeliveryReportTriggerData,
        OptOutTriggerData,
        SendFailedTriggerData,
    )

    document = _connector()
    routes = {
        "/triggers/delivery-reports/{Service}": DeliveryReportTriggerData,
        "/triggers/opt-outs/{Service}": OptOutTriggerData,
        "/triggers/send-failures/{Service}": SendFailedTriggerData,
    }
    for path, model in routes.items():
        content = document["paths"][path]["x-ms-notification-content"]["schema"]["properties"]
        assert set(content) == set(model.model_fields), path
        assert all(p["title"].istitle() or " " not in p["title"] for p in content.values())
    state = document["paths"]["/triggers/delivery-reports/{Service}"]["x-ms-notification-content"]
    assert state["schema"]["properties"]["state"]["enum"] == ["sent", "delivered", "undelivered"]


@pytest.mark.parametrize("route", ["delivery-reports", "send-failures"])
def test_the_send_triggers_service_dropdown_offers_one_way_and_two_way_services(
    inbound: Inbound, route: str
) -> None:
    # Both are accepted (the service a message is sent through); the dropdown listed 1-way only.
    operation = _connector()["paths"][f"/triggers/{route}/{{Service}}"]["post"]
    [service] = [p for p in operation["parameters"] if p["name"] == "Service"]
    dropdown = service["x-ms-dynamic-values"]
    assert dropdown["operationId"] == "GetCustomerServices"
    params = {k: v for k, v in dropdown["parameters"].items() if not isinstance(v, dict)}
    answer = inbound.call(
        "GetCustomerServices", "GET", params=params, headers={"Customer-Id": CUSTOMER}
    )
    assert answer.status == 200, answer.body
    offered = {s["id"] for s in answer.body}
    assert {ONE_WAY, TWO_WAY} <= offered


def test_the_new_message_output_says_a_flow_gets_the_message_whole() -> None:
    schema = _connector()["paths"]["/inbound/subscriptions/{Service}"]["x-ms-notification-content"]
    part = schema["schema"]["properties"]["part"]["description"]
    assert "Always 1" in part
    assert "concatenate" not in part


def test_the_new_message_delete_route_does_not_end_another_triggers_subscription(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    answer = subscribe(served, TriggerKind.OPT_OUT, f"{callback_receiver.url}/stop", TWO_WAY)
    assert answer.status == 201, answer.body
    parts = urlsplit(answer.headers["Location"])
    *_, service, subscription = parts.path.split("/")

    status = served.call(
        "DeleteNewMessageTrigger",
        "DELETE",
        route_params={"Service": service, "SubscriptionId": subscription},
        params=dict(parse_qsl(parts.query)),
    ).status

    assert status == 200  # a repeat of an unsubscribe is fine, and says nothing of others
    from shared.inbound import SubscriptionStore

    kept = SubscriptionStore.from_settings().list(TWO_WAY, TriggerKind.OPT_OUT)
    assert [s.subscription_id for s in kept] == [subscription]


def test_a_delivered_after_an_undelivered_is_no_second_final_run(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    """A first part's UNDELIV, then another's DELIVRD: the recipient shows delivered, but a
    "final states only" flow runs once per recipient (for the undelivered); an "all" flow gets
    the delivered too, with final false."""
    base = callback_receiver.url
    assert subscribe(inbound, TriggerKind.DELIVERY_REPORT, f"{base}/final", ONE_WAY).status == 201
    every = subscribe(inbound, TriggerKind.DELIVERY_REPORT, f"{base}/all", ONE_WAY, States="all")
    assert every.status == 201, every.body
    message_id = send(inbound, DELIVERED, Content="x" * 400)
    for stat, part in (("UNDELIV", "1"), ("DELIVRD", "2")):
        assert (
            report(inbound, message_id, status=stat, part=part, recipient=DELIVERED).status == 200
        )
    deliver(inbound)

    final = [(b["state"], b["final"]) for b in bodies(callback_receiver, "/final")]
    assert final == [("undelivered", True)]
    every_state = sorted((b["state"], b["final"]) for b in bodies(callback_receiver, "/all"))
    assert every_state == [("delivered", False), ("undelivered", True)]
