"""Sends to recipients who opted out: refused over HTTP (422), failed at once from the queue
(``suppressed``), unless the send is transactional; ``Transactional`` never goes upstream."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from typing import Any

import pytest

from sandbox.contract import validate_request
from shared.messages import MessageStatus, MessageStore
from shared.suppressions import SuppressionStore
from tests.outbound.conftest import (
    DELIVERED,
    REPLY_SERVICE,
    SERVICE,
    Outbound,
    call_http,
    sms,
    status_of,
)


def opted_out(service: str = SERVICE) -> str:
    """A fresh number (not a sandbox magic one) that opted out of ``service`` by STOP."""
    phone = f"+35841{random.randrange(10**6, 10**7)}"
    SuppressionStore.from_settings().add(
        service, phone, keyword="STOP", source="inbound", now=dt.datetime.now(dt.UTC)
    )
    return phone


def records_containing(marker: str) -> list[Any]:
    store = MessageStore.from_settings()
    found = []
    for entity in store.table.list_entities():  # records: RowKey ``message`` or ``<row>.message``
        if not str(entity["RowKey"]).endswith("message"):
            continue
        if marker in json.dumps(dict(entity), default=str):
            found.append(entity)
    return found


def assert_valid_upstream(request: dict[str, Any]) -> None:
    assert "Transactional" not in request["body"]
    assert "transactional" not in request["body"]
    errors = validate_request(
        request["method"], request["path"], request["headers"], body=request["body"]
    )
    assert errors == [], errors


def test_send_to_an_opted_out_recipient_is_refused_naming_it_and_nothing_happens(
    outbound: Outbound,
) -> None:
    phone = opted_out()
    marker = uuid.uuid4().hex
    body = sms(DELIVERED, phone, content=f"Offer {marker}")

    refused = call_http("SendMessage", "POST", body=body, headers={"Idempotency-Key": marker})

    assert refused.status == 422, refused.body
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in refused.body["errors"]] == ["Recipients[1].Address"]
    assert "STOP" in refused.body["errors"][0]["message"]
    assert "transactional" in refused.body["detail"]
    assert outbound.queued() == 0
    assert records_containing(marker) == []
    outbound.drain()
    assert outbound.upstream() == []

    # The refused request did not use up its idempotency key: a corrected request may reuse it.
    fixed = call_http(
        "SendMessage", "POST", body=sms(DELIVERED, content=f"Offer {marker}"),
        headers={"Idempotency-Key": marker},
    )  # fmt: skip
    assert fixed.status == 202, fixed.body


@pytest.mark.parametrize(
    ("operation", "service", "route", "body"),
    [
        ("SendMessage", SERVICE, {}, None),
        ("SendReplyMessage", REPLY_SERVICE, {"ParentMessageId": "m-parent"}, None),
        (
            "SendWhatsappTemplateMessage",
            SERVICE,
            {},
            {"TemplateName": "welcome", "Recipients": [{"Address": "PHONE"}]},
        ),
    ],
)
def test_transactional_send_reaches_an_opted_out_recipient_without_the_flag_upstream(
    outbound: Outbound,
    operation: str,
    service: str,
    route: dict[str, str],
    body: dict[str, Any] | None,
) -> None:
    phone = opted_out(service)
    payload = sms(phone) if body is None else json.loads(json.dumps(body).replace("PHONE", phone))
    headers = {"Service-Id": service}

    refused = call_http(operation, "POST", route_params=route, headers=headers, body=payload)
    assert refused.status == 422, refused.body

    accepted = call_http(
        operation, "POST", route_params=route, headers=headers,
        body={**payload, "Transactional": True},
    )  # fmt: skip
    assert accepted.status == 202, accepted.body
    [queued] = outbound.read("smartdialog-outbound")
    assert queued["transactional"] is True
    assert "Transactional" not in queued["body"]
    outbound.drain()

    assert status_of(accepted.headers["Location"]).status == 200
    [request] = outbound.upstream(operation)
    assert request["status"] == 200
    assert_valid_upstream(request)


def test_discussion_reply_has_no_transactional_field(outbound: Outbound) -> None:
    answer = call_http(
        "SendDiscussionReplyMessage",
        "POST",
        body={"ThreadId": "t-1", "Content": "Hi", "Transactional": True},
    )
    assert answer.status == 400
    assert "Transactional" in {e["field"] for e in answer.body["errors"]}


def test_queued_send_to_an_opted_out_recipient_fails_at_once_as_suppressed(
    outbound: Outbound,
) -> None:
    phone = opted_out()
    message_id = f"m-{uuid.uuid4().hex[:12]}"
    message = {"operation": "SendMessage", "messageId": message_id, "body": sms(DELIVERED, phone)}
    outbound.enqueue(message)
    outbound.drain()

    assert outbound.upstream() == []
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert record.failure.code == "suppressed"
    assert record.attempts == 0
    assert "body.Recipients[1].Address" in (record.failure.detail or "")
    [event] = outbound.events()
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert event["data"]["error"]["code"] == "suppressed"
    [letter] = outbound.dead_letters()
    assert letter["reason"] == "failed"
    assert letter["error"]["code"] == "suppressed"
    assert letter["messageId"] == message_id
    assert phone in letter["original"]


def test_queued_transactional_send_to_an_opted_out_recipient_is_sent(outbound: Outbound) -> None:
    phone = opted_out()
    message_id = f"m-{uuid.uuid4().hex[:12]}"
    outbound.enqueue(
        {
            "operation": "SendMessage",
            "messageId": message_id,
            "transactional": True,
            "body": sms(phone),
        }
    )
    outbound.drain()

    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.SENT
    [request] = outbound.upstream()
    assert_valid_upstream(request)
