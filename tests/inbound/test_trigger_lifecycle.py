"""Found in review: how a trigger's subscription ends. Its DELETE was routed by the
``X-SmartDialog-Connection`` header the connector sends on every call, so a routing error, or a
header naming a connection since removed, made every unsubscribe fail and left the subscription.
A flow deleted without its DELETE (its callback answering 404 or 410) kept its subscription for
ever, every later event POSTed and dead-lettered again. And a delivery-report trigger edited
from "final" to "all" lost the final report still being delivered for the replaced one."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import names
from shared.clock import utcnow
from shared.connections import CONNECTION_HEADER, reset_connections_cache
from shared.events import make_event
from shared.inbound import DispatchOutcome, SubscriberDelivery, SubscriberDispatcher
from shared.triggers import EVENT_TYPES, DeliveryReportTriggerData, TriggerKind, notify_send_failed
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import CUSTOMER, ONE_WAY, TWO_WAY, Inbound
from tests.inbound.test_triggers import TRIGGERS, deliver, subscribe

DELETES = {**{k: v[1] for k, v in TRIGGERS.items()}, "new-message": "DeleteNewMessageTrigger"}


def _location(env: Inbound, kind: TriggerKind | str, callback: str) -> str:
    if isinstance(kind, TriggerKind):
        answer = subscribe(env, kind, callback, TWO_WAY)
    else:
        answer = env.call(
            "NewMessage",
            "POST",
            route_params={"Service": TWO_WAY},
            headers={"Customer-Id": CUSTOMER},
            body={"callbackUrl": callback},
        )
    assert answer.status == 201, answer.body
    return str(answer.headers["Location"])


def _delete(env: Inbound, kind: TriggerKind | str, location: str, **headers: str) -> Any:
    parts = urlsplit(location)
    *_, service, subscription = parts.path.split("/")
    return env.call(
        DELETES[kind],
        "DELETE",
        route_params={"Service": service, "SubscriptionId": subscription},
        params=dict(parse_qsl(parts.query)),
        headers=headers,
    )


def _live(env: Inbound) -> list[str]:
    rows = env.rows(names.SUBSCRIPTIONS_TABLE)
    return sorted(r["RowKey"] for r in rows if "CallbackUrl" in r and not r.get("ReplacedBy"))


@pytest.mark.parametrize("kind", [*TRIGGERS, "new-message"])
def test_a_triggers_delete_ends_it_during_a_routing_error_or_naming_a_removed_connection(
    inbound: Inbound, kind: TriggerKind | str
) -> None:
    removed = _location(inbound, kind, "https://flow.example/removed")
    broken = _location(inbound, kind, "https://flow.example/broken")
    assert len(_live(inbound)) == 2

    # The connector sends the header on every call; this connection is gone from the settings.
    answer = _delete(inbound, kind, removed, **{CONNECTION_HEADER: "sales-eu"})
    assert answer.status == 200, answer.body
    assert len(_live(inbound)) == 1

    inbound.monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID", "x")  # no connection
    reset_connections_cache()
    assert inbound.call("ListConnections", "GET").status == 503  # a routing error of the whole
    answer = _delete(inbound, kind, broken)
    assert answer.status == 200, answer.body
    assert _live(inbound) == []


def _fail(env: Inbound, message_id: str) -> bool:
    failure = {"code": "suppressed", "title": "The recipient is suppressed."}
    noted = notify_send_failed(message_id, "{}", ONE_WAY, failure, utcnow())
    deliver(env)
    return noted


@pytest.mark.parametrize("status", [404, 410])
def test_a_subscription_whose_callback_answers_gone_is_removed(
    inbound: Inbound,
    callback_receiver: CallbackReceiver,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    answer = subscribe(inbound, TriggerKind.SEND_FAILED, f"{callback_receiver.url}/g", ONE_WAY)
    assert answer.status == 201, answer.body
    gone = urlsplit(answer.headers["Location"]).path.rsplit("/", 1)[1]
    callback_receiver.status = status

    with caplog.at_level(logging.WARNING, logger="shared.inbound.dispatch"):
        assert _fail(inbound, "m-1")
    assert len(callback_receiver.calls) == 1
    [letter] = inbound.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert (letter["reason"], letter["lastStatus"]) == ("rejected", status)
    assert f"subscription {gone} removed" in letter["detail"]
    assert _live(inbound) == []
    [line] = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert gone in line
    assert callback_receiver.url not in line

    # Later failures reach nobody: no note, no POST, no second dead letter.
    assert not _fail(inbound, "m-2")
    assert len(callback_receiver.calls) == 1
    assert inbound.count(names.INBOUND_DEAD_LETTER_QUEUE) == 1


def test_a_callback_refusing_with_another_4xx_keeps_its_subscription(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    answer = subscribe(inbound, TriggerKind.SEND_FAILED, f"{callback_receiver.url}/b", ONE_WAY)
    assert answer.status == 201, answer.body
    callback_receiver.status = 400
    assert _fail(inbound, "m-1")
    [letter] = inbound.read(names.INBOUND_DEAD_LETTER_QUEUE)
    assert letter["reason"] == "rejected"
    assert "removed" not in letter["detail"]
    assert len(_live(inbound)) == 1


def _report_for(subscription_id: str, state: str, final: bool) -> str:
    """A delivery made for ``subscription_id`` still on its way (a retry in its backoff, or
    fanned out by an instance whose index still lists it)."""
    data = DeliveryReportTriggerData(
        messageId="m-1",
        recipient="+358401234567",
        state=state,
        final=final,
        reportedAt=utcnow(),
        service=ONE_WAY,
    )
    event = make_event(
        EVENT_TYPES[TriggerKind.DELIVERY_REPORT],
        data,
        event_id=f"m-1:r:{state}:trigger",
        subject="m-1",
        time=utcnow(),
    )
    delivery = SubscriberDelivery(
        service=ONE_WAY,
        subscriptionId=subscription_id,
        event=json.loads(event.to_json()),
        firstQueuedAt=utcnow(),
        attempts=2,
    )
    return delivery.to_json()


@pytest.mark.parametrize(
    ("before", "after", "final", "outcome"),
    [
        ("final", "all", True, DispatchOutcome.DELIVERED),  # "all" wants every final one
        ("all", "final", True, DispatchOutcome.DELIVERED),
        ("all", "final", False, DispatchOutcome.UNSUBSCRIBED),  # "final" does not want it
        ("final", "final", True, DispatchOutcome.DELIVERED),
    ],
)
def test_a_delivery_for_an_edited_report_trigger_goes_to_its_successor_if_it_wants_it(
    inbound: Inbound,
    callback_receiver: CallbackReceiver,
    before: str,
    after: str,
    final: bool,
    outcome: DispatchOutcome,
) -> None:
    flow = f"{callback_receiver.url}/dr"
    replaced = subscribe(inbound, TriggerKind.DELIVERY_REPORT, flow, ONE_WAY, States=before)
    assert replaced.status == 201, replaced.body
    pending = _report_for(
        urlsplit(replaced.headers["Location"]).path.rsplit("/", 1)[1], "delivered", final
    )
    # The maker edits the trigger: Power Automate subscribes the same callback URL again.
    successor = subscribe(inbound, TriggerKind.DELIVERY_REPORT, flow, ONE_WAY, States=after)
    assert successor.status == 201, successor.body

    assert SubscriberDispatcher.from_settings().process(pending).outcome == outcome
    posted = [json.loads(c.body) for c in callback_receiver.calls]
    delivered = outcome is DispatchOutcome.DELIVERED
    assert [(b["state"], b["final"]) for b in posted] == (
        [("delivered", final)] if delivered else []
    )
