"""Inbound per connection: the webhook URL names its connection under its signature, and
subscriptions get only the events of their connection (rows made before connections: the
default one)."""

from __future__ import annotations

import uuid
from typing import Any

from shared import names
from shared.clock import utcnow
from shared.inbound import Subscription, SubscriptionStore
from shared.signing import TokenPurpose, new_nonce, sign
from shared.storage import queue_client
from shared.triggers import DEFAULT_CONNECTION, TriggerKind
from tests.inbound.conftest import CUSTOMER, SECRET, TWO_WAY, Inbound
from tests.inbound.test_tokens import register
from tests.inbound.test_webhook import payload


def _deliver(env: Inbound, query: dict[str, str], **body: Any) -> int:
    return env.call(
        "InboundWebhook",
        "POST",
        route_params={"Service": TWO_WAY},
        params=query,
        body=payload(**body),
    ).status


def test_the_webhook_url_names_its_connection_under_its_signature(inbound: Inbound) -> None:
    _, query = register(inbound)
    assert query["connection"] == DEFAULT_CONNECTION
    [row] = inbound.rows(names.WEBHOOKS_TABLE)
    assert row["Connection"] == DEFAULT_CONNECTION

    assert _deliver(inbound, {**query, "connection": "another"}) == 401  # not signed for it
    assert _deliver(inbound, {"token": query["token"]}) == 401  # nor without it
    assert inbound.count(names.INBOUND_INTAKE_QUEUE) == 0
    assert _deliver(inbound, query) == 202
    [intake] = inbound.read(names.INBOUND_INTAKE_QUEUE)
    assert intake["connection"] == DEFAULT_CONNECTION
    inbound.process_intake()
    [event] = inbound.read(names.INBOUND_QUEUE)
    assert event["data"]["connection"] == DEFAULT_CONNECTION


def test_a_webhook_url_made_before_connections_opens_the_default_connection(
    inbound: Inbound,
) -> None:
    from shared.inbound import WebhookRegistration, WebhookRegistry

    nonce = new_nonce()
    WebhookRegistry.from_settings().add(
        WebhookRegistration(TWO_WAY, "action-before-connections", "p-1", CUSTOMER, utcnow(), nonce)
    )
    old = sign(TokenPurpose.WEBHOOK, f"service/{TWO_WAY}", nonce=nonce, secrets=[SECRET])
    assert _deliver(inbound, {"token": old}) == 202
    assert _deliver(inbound, {"token": old, "connection": DEFAULT_CONNECTION}) == 401
    inbound.process_intake()
    [event] = inbound.read(names.INBOUND_QUEUE)
    assert event["data"]["connection"] == DEFAULT_CONNECTION


def _subscription(kind: TriggerKind, connection: str | None) -> str:
    """A subscription row as written by this release (or, with None, by one before
    connections: no ``Connection`` column)."""
    subscription_id = str(uuid.uuid4())
    store = SubscriptionStore.from_settings()
    store.add(
        Subscription(
            service=TWO_WAY,
            subscription_id=subscription_id,
            callback_url=f"https://flow.example/{subscription_id}",
            customer_id=CUSTOMER,
            created_at=utcnow(),
            nonce=new_nonce(),
            kind=kind,
            connection=connection or DEFAULT_CONNECTION,
        )
    )
    if connection is None:
        from shared.storage import table_client

        table = table_client(names.SUBSCRIPTIONS_TABLE)
        entity = dict(table.get_entity(TWO_WAY, subscription_id))
        del entity["Connection"]
        table.upsert_entity(entity, mode="replace")  # type: ignore[arg-type]
    return subscription_id


def test_subscriptions_get_only_their_connections_events(inbound: Inbound) -> None:
    mine = _subscription(TriggerKind.NEW_MESSAGE, DEFAULT_CONNECTION)
    older = _subscription(TriggerKind.NEW_MESSAGE, None)
    _subscription(TriggerKind.NEW_MESSAGE, "another")
    opt_outs = _subscription(TriggerKind.OPT_OUT, None)
    _subscription(TriggerKind.OPT_OUT, "another")
    assert SubscriptionStore.from_settings().get(TWO_WAY, older).connection == "default"  # type: ignore[union-attr]

    _, query = register(inbound)
    assert _deliver(inbound, query, content="STOP") == 202
    inbound.process_intake()
    deliveries = inbound.read(names.INBOUND_DELIVERIES_QUEUE)
    assert sorted(d["subscriptionId"] for d in deliveries) == sorted([mine, older])
    [note] = inbound.read(names.TRIGGER_EVENTS_QUEUE)
    assert (note["kind"], note["connection"], note["data"]["connection"]) == (
        "opt-out",
        DEFAULT_CONNECTION,
        DEFAULT_CONNECTION,
    )
    queue_client(names.INBOUND_DELIVERIES_QUEUE).clear_messages()
    assert inbound.run_queue(names.TRIGGER_EVENTS_QUEUE, "TriggerFanout") == 1
    [delivery] = inbound.read(names.INBOUND_DELIVERIES_QUEUE)
    assert delivery["subscriptionId"] == opt_outs


def test_a_send_failed_note_goes_only_to_its_connections_subscriptions(inbound: Inbound) -> None:
    from shared.messages import FailureInfo
    from shared.triggers import notify_send_failed

    _subscription(TriggerKind.SEND_FAILED, None)  # the default connection's
    theirs = _subscription(TriggerKind.SEND_FAILED, "another")
    failure = FailureInfo.model_validate({"code": "rejected", "title": "Refused upstream"})
    command = '{"body": {"CustomerData": "row-7"}}'

    assert notify_send_failed(
        "m-another", command, TWO_WAY, failure.model_dump(), utcnow(), connection="another"
    )
    [note] = inbound.read(names.TRIGGER_EVENTS_QUEUE)
    assert (note["kind"], note["connection"], note["data"]["connection"]) == (
        "send-failed",
        "another",
        "another",
    )
    assert inbound.run_queue(names.TRIGGER_EVENTS_QUEUE, "TriggerFanout") == 1
    [delivery] = inbound.read(names.INBOUND_DELIVERIES_QUEUE)
    assert delivery["subscriptionId"] == theirs
