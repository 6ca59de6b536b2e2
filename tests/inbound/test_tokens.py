"""Callback tokens: each webhook registration and subscription has its own nonce, unregistering
revokes its URL, URLs made before nonces keep working until their registration is gone, DLR
URLs expire, and a short callback secret is a configuration error (503), not an open door."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import names
from shared.callback_urls import delivery_report_url
from shared.clock import ManualClock, utcnow
from shared.inbound import SubscriptionStore, WebhookRegistration, WebhookRegistry
from shared.settings import get_settings
from shared.signing import TokenPurpose, sign
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import CUSTOMER, SECRET, TWO_WAY, Inbound


def message(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sender": "+358401234567",
        "recipient": "+358501234567",
        "content": "A message for the token tests",
        "timestamp": "2026-01-31T12:00:00.123Z",
        "protocol": "SMS",
        "attachments": [],
        "messageId": str(uuid.uuid4()),
    }
    body.update(changes)
    return body


def token_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["token"]


def deliver(env: Inbound, token: str | dict[str, str]) -> int:
    """POST a message with ``token``, or with a webhook URL's whole query."""
    return env.call(
        "InboundWebhook",
        "POST",
        route_params={"Service": TWO_WAY},
        params={"token": token} if isinstance(token, str) else token,
        body=message(),
    ).status


def register(env: Inbound) -> tuple[str, dict[str, str]]:
    """(ActionId, the query of the URL SmartDialog was given) of a new registration."""
    answer = env.call(
        "RegisterInboundWebhook",
        "POST",
        route_params={"Service": TWO_WAY},
        headers={"Customer-Id": CUSTOMER},
    )
    assert answer.status == 201, answer.body
    action_id = answer.body["ActionId"]
    [action] = [a for a in env.sandbox.state.actions_for(TWO_WAY) if a["id"] == action_id]
    return action_id, dict(parse_qsl(urlsplit(action["endpointUrl"]).query))


def unregister(env: Inbound, action_id: str) -> int:
    return env.call(
        "UnregisterInboundWebhook",
        "DELETE",
        route_params={"Service": TWO_WAY, "ActionId": action_id},
    ).status


# --- webhook URLs: one nonce per registration, revoked by unregistering ---------------------------


def test_an_unregistered_webhook_url_is_refused_and_leaves_no_trace(inbound: Inbound) -> None:
    first, first_token = register(inbound)
    second, second_token = register(inbound)
    assert first_token != second_token  # each registration has its own URL
    assert first_token["token"].startswith("v2.")
    assert first_token["connection"] == "default"
    assert deliver(inbound, first_token) == 202

    assert unregister(inbound, first) == 204
    before = inbound.count(names.INBOUND_INTAKE_QUEUE)
    assert deliver(inbound, first_token) == 401
    assert inbound.count(names.INBOUND_INTAKE_QUEUE) == before  # nothing queued
    [revoked] = inbound.rows(names.REVOKED_TOKENS_TABLE)
    assert revoked["ActionId"] == first
    assert "token" not in str(revoked).lower()  # the nonce, never the credential

    assert deliver(inbound, second_token) == 202  # the other registration is untouched
    assert unregister(inbound, second) == 204
    assert deliver(inbound, second_token) == 401


def test_a_webhook_url_made_before_nonces_works_until_its_last_registration_is_removed(
    inbound: Inbound,
) -> None:
    # A registration of the previous release: no nonce on record, a v1 token made the old way.
    old_action = "action-before-nonces"
    WebhookRegistry.from_settings().add(
        WebhookRegistration(TWO_WAY, old_action, "pipeline-before-nonces", CUSTOMER, utcnow())
    )
    old_token = sign(TokenPurpose.WEBHOOK, f"service/{TWO_WAY}", secrets=[SECRET])
    assert old_token.startswith("v1.")
    assert deliver(inbound, old_token) == 202

    _, new_token = register(inbound)  # re-registering ...
    assert deliver(inbound, old_token) == 202  # ... leaves the old one working meanwhile
    assert unregister(inbound, old_action) == 204  # gone upstream already: our record goes

    assert deliver(inbound, old_token) == 401
    assert deliver(inbound, new_token) == 202


def test_a_token_made_before_nonces_opens_nothing_where_no_such_registration_exists(
    inbound: Inbound,
) -> None:
    register(inbound)  # only registrations with a nonce
    assert (
        deliver(inbound, sign(TokenPurpose.WEBHOOK, f"service/{TWO_WAY}", secrets=[SECRET])) == 401
    )


# --- subscription URLs: the token opens its own subscription only ---------------------------------


def unsubscribe(env: Inbound, subscription_id: str, token: str) -> int:
    return env.call(
        "DeleteNewMessageTrigger",
        "DELETE",
        route_params={"Service": TWO_WAY, "SubscriptionId": subscription_id},
        params={"token": token},
    ).status


def test_a_subscription_location_carries_the_nonce_stored_with_it(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    answer = inbound.call(
        "NewMessage",
        "POST",
        route_params={"Service": TWO_WAY},
        headers={"Customer-Id": CUSTOMER},
        body={"callbackUrl": callback_receiver.url},
    )
    assert answer.status == 201
    subscription_id = answer.body["id"]
    token = token_of(answer.headers["Location"])
    [row] = inbound.rows(names.SUBSCRIPTIONS_TABLE)
    assert token.startswith(f"v2.0.{row['Nonce']}.")

    # The same subject signed the old way (no nonce) does not open a subscription with one.
    old_way = sign(
        TokenPurpose.WEBHOOK, f"subscription/{TWO_WAY}/{subscription_id}", secrets=[SECRET]
    )
    assert unsubscribe(inbound, subscription_id, old_way) == 403
    assert unsubscribe(inbound, subscription_id, token) == 200
    assert inbound.rows(names.SUBSCRIPTIONS_TABLE) == []


def test_a_subscription_made_before_nonces_is_removed_with_its_old_token(inbound: Inbound) -> None:
    from shared.inbound import Subscription

    SubscriptionStore.from_settings().add(
        Subscription(TWO_WAY, "sub-before-nonces", "https://flow.example/cb", CUSTOMER, utcnow())
    )
    old_way = sign(
        TokenPurpose.WEBHOOK, f"subscription/{TWO_WAY}/sub-before-nonces", secrets=[SECRET]
    )
    assert unsubscribe(inbound, "sub-before-nonces", old_way) == 200
    assert inbound.rows(names.SUBSCRIPTIONS_TABLE) == []


# --- delivery-report URLs expire after the send's validity plus the reporting window --------------


def report(env: Inbound, message_id: str, token: str) -> int:
    return env.call(
        "DeliveryReport",
        "GET",
        route_params={"MessageId": message_id},
        params={"token": token, "status": "delivered", "recipient": "358401234567"},
    ).status


def test_a_delivery_report_url_expires_after_validity_plus_the_reporting_window(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    inbound.configure(SEND_VALIDITY_SECONDS=3600, DLR_REPORTING_WINDOW_SECONDS=600)
    message_id = str(uuid.uuid4())
    token = token_of(delivery_report_url(get_settings(), message_id))

    manual_clock.advance(3600 + 600 - 2)
    assert report(inbound, message_id, token) != 401  # still opens (no such message: not 401)
    manual_clock.advance(3)
    assert report(inbound, message_id, token) == 401


def test_a_send_valid_for_longer_keeps_its_delivery_report_url_longer(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    inbound.configure(SEND_VALIDITY_SECONDS=3600, DLR_REPORTING_WINDOW_SECONDS=600)
    message_id = str(uuid.uuid4())
    valid_until = utcnow() + dt.timedelta(hours=5)
    url = delivery_report_url(get_settings(), message_id, valid_until=valid_until)

    manual_clock.advance(5 * 3600 + 600 - 2)
    assert report(inbound, message_id, token_of(url)) != 401
    manual_clock.advance(3)
    assert report(inbound, message_id, token_of(url)) == 401


def test_a_send_scheduled_far_ahead_keeps_its_delivery_report_url_past_its_send_time(
    served: Inbound, manual_clock: ManualClock
) -> None:
    """SmartDialog sends it at its SendDateTime, 10 days on, and reports then: the URL used
    to expire at the validity's end plus the window (8 days here), refusing every report."""
    from tests.inbound.test_delivery_reports import send

    served.configure(DLR_REPORTING_WINDOW_SECONDS=600)
    sends_at = utcnow() + dt.timedelta(days=10)
    message_id = send(served, "+358401234567", SendDateTime=sends_at.isoformat())
    [request] = served.sandbox.state.snapshot("requests")
    url = request["body"]["DlrUrl"]

    manual_clock.advance(10 * 86400 + 600 - 2)
    assert report(served, message_id, token_of(url)) == 200
    manual_clock.advance(3)
    assert report(served, message_id, token_of(url)) == 401


# --- a short callback secret is a configuration error, reported on first use ----------------------


def test_a_short_callback_secret_makes_health_and_sends_answer_503_and_leaves_the_rest_working(
    inbound: Inbound, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbound.configure(CALLBACK_SECRETS="too-short-a-secret")
    records = len(inbound.rows(names.MESSAGES_TABLE))

    health = inbound.call("Health", "GET")
    assert health.status == 503
    assert health.body["type"] == "urn:smartdialog-functions:problem:configuration"
    assert [e["field"] for e in health.body["errors"]] == ["SMARTDIALOG_CALLBACK_SECRETS"]
    assert "too-short-a-secret" not in str(health.body)

    send = inbound.call(
        "SendMessage",
        "POST",
        body={
            "Sender": "Sandbox",
            "Content": "Not sent while the secret is short",
            "Recipients": [{"Address": "+358401234567"}],
        },
    )
    assert send.status == 503
    assert send.headers["Content-Type"] == "application/problem+json"
    assert "SMARTDIALOG_CALLBACK_SECRETS" in send.body["detail"]
    assert inbound.count(names.OUTBOUND_QUEUE) == 0
    assert len(inbound.rows(names.MESSAGES_TABLE)) == records

    # The webhook cannot check its token: 503, so SmartDialog retries once it is fixed.
    assert deliver(inbound, "v1.0.whatever") == 503

    # Said once a minute, however often SmartDialog calls (it may call thousands of times).
    from shared.inbound import _http
    from shared.logs import HeldSends

    fresh = HeldSends(_http.log, level=logging.ERROR, what="SmartDialog callback")
    monkeypatch.setattr(_http, "_UNSIGNED", fresh, raising=False)  # none said yet here
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shared.inbound"):
        for _ in range(5):
            assert deliver(inbound, "v1.0.whatever") == 503
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(said) == 1, said
    assert "SMARTDIALOG_CALLBACK_SECRETS" in said[0]

    # A function that needs no callback secret still works.
    unrelated = inbound.call(
        "GetSuppression", "GET", route_params={"Service": TWO_WAY, "Phone": "+358401234567"}
    )
    assert unrelated.status == 200
    assert unrelated.body["Suppressed"] is False


def test_health_is_ok_once_the_secret_is_long_enough(inbound: Inbound) -> None:
    inbound.configure(CALLBACK_SECRETS="x" * 32)
    answer = inbound.call("Health", "GET")
    assert (answer.status, answer.body) == (200, {"status": "ok"})


@pytest.fixture(autouse=True)
def _no_platform_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSITE_HOSTNAME", raising=False)
    monkeypatch.delenv("AZURE_FUNCTIONS_ENVIRONMENT", raising=False)


def test_a_webhook_token_does_not_open_a_service_whose_name_spells_its_connection() -> None:
    """``service/a/connection/b`` is both service ``a`` on connection ``b`` and service
    ``a/connection/b`` (no connection): a token for the first must not open the second, whose
    revocation would be looked up under another service."""
    from shared.inbound._registry import verify_webhook_token, webhook_url
    from shared.settings import Settings

    settings = Settings(
        SMARTDIALOG_CALLBACK_SECRETS=SECRET, SMARTDIALOG_PUBLIC_BASE_URL="https://x.example"
    )
    token = token_of(webhook_url(settings, "svc", "n" * 22, connection="conn"))

    assert verify_webhook_token(settings, "svc", token, "conn") is not None
    assert verify_webhook_token(settings, "svc/connection/conn", token, None) is None
