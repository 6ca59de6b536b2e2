"""Sends to recipients who opted out: refused over HTTP (422), failed at once from the queue
(``suppressed``), unless the send is transactional; ``Transactional`` never goes upstream."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from sandbox.contract import validate_request
from shared.messages import MessageStatus, MessageStore
from tests.outbound.conftest import (
    DELIVERED,
    REPLY_SERVICE,
    SERVICE,
    Outbound,
    call_http,
    fresh_number,
    opt_out,
    sms,
    status_of,
)


def opted_out(service: str = SERVICE) -> str:
    """A fresh number that opted out of ``service`` by STOP."""
    phone = fresh_number()
    opt_out(phone, service)
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


# --- a STOP that comes after the send was accepted ----------------------------------------------


def accept_send(phone: str) -> str:
    accepted = call_http("SendMessage", "POST", body=sms(phone))
    assert accepted.status == 202, accepted.body
    return str(accepted.body["Id"])


def assert_failed_suppressed(outbound: Outbound, message_id: str, attempts: int = 0) -> None:
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert record.failure.code == "suppressed"
    assert record.attempts == attempts
    assert "body.Recipients[0].Address" in (record.failure.detail or "")
    [event] = [e for e in outbound.events() if e["subject"] == message_id]
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert event["data"]["error"]["code"] == "suppressed"
    [letter] = [d for d in outbound.dead_letters() if d["messageId"] == message_id]
    assert letter["error"]["code"] == "suppressed"


def answer_first_call(monkeypatch: pytest.MonkeyPatch, phone: str, error: Any) -> None:
    """The sandbox answers the first call to ``phone`` with ``error`` (an ``ApiError``)."""
    import sandbox.app as sandbox_app

    original, answered = sandbox_app.Sandbox._send, []

    def send(self: Any, call: Any, parts: int, pascal_case: bool) -> Any:
        if not answered and phone in [r["Address"] for r in call.body["Recipients"]]:
            answered.append(error)
            raise error
        return original(self, call, parts, pascal_case)

    monkeypatch.setattr(sandbox_app.Sandbox, "_send", send)


def test_a_stop_after_the_send_was_accepted_fails_it_at_send_time_and_nothing_goes_upstream(
    outbound: Outbound,
) -> None:
    phone = fresh_number()
    message_id = accept_send(phone)
    opt_out(phone)  # the recipient texts STOP while the send waits on the queue

    outbound.drain()

    assert outbound.upstream() == []
    assert_failed_suppressed(outbound, message_id)


def test_a_stop_between_attempts_fails_the_retry_when_the_first_surely_did_not_go(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox.app import ApiError

    phone = fresh_number()
    answer_first_call(monkeypatch, phone, ApiError(429, "Slow down", {"Retry-After": "1"}))
    message_id = accept_send(phone)
    outbound.run_once()  # 429: nothing was sent, a retry is scheduled
    opt_out(phone)

    outbound.drain()

    assert [c["status"] for c in outbound.upstream()] == [429]
    assert_failed_suppressed(outbound, message_id, attempts=1)


def test_a_stop_after_an_attempt_that_may_have_gone_leaves_its_retry_to_settle_it(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 may have sent it: the retry (same RequestId) says whether it did; failing it
    ``suppressed`` would report unsent a text the recipient may have got."""
    from sandbox.app import ApiError

    phone = fresh_number()
    answer_first_call(monkeypatch, phone, ApiError(503, "Try again"))
    message_id = accept_send(phone)
    outbound.run_once()
    opt_out(phone)

    outbound.drain()

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [503, 200]
    assert len({c["body"]["RequestId"] for c in calls}) == 1
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.SENT


def test_a_check_of_recipients_checked_before_reads_only_what_was_written_since(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack's members were checked when they were recorded: at send time only suppressions
    written since can stop them, read with two queries (the service's, every service's)
    whatever the pack's size. It read each member's recipient, a query each (200 for a pack
    of 200), or every row of both lists for larger packs."""
    from shared import storage
    from shared.names import SUPPRESSIONS_TABLE
    from shared.storage import StorageOp
    from shared.suppressions import ALL_SERVICES, SuppressionStore, recipient_key

    store = SuppressionStore.from_settings()
    addresses = [fresh_number() for _ in range(40)]
    opt_out(addresses[1])  # before they were checked: found then, not again
    table = store._table  # the row's own Timestamp, as storage wrote it
    key = storage.safe_key(recipient_key(addresses[1]))
    since = table.get_entity(storage.safe_key(SERVICE), key).metadata["timestamp"]
    since += dt.timedelta(milliseconds=1)  # (Azurite compares whole milliseconds)
    opt_out(addresses[7])
    opt_out(addresses[30], ALL_SERVICES)
    opt_out(addresses[31], "some-other-service")
    monkeypatch.setattr(storage, "_round_trips", None)
    counter = storage.count_round_trips()
    counted = SuppressionStore.from_settings()
    before = counter.snapshot()

    hits = counted.suppressed_many(SERVICE, addresses, since=since)

    assert sorted(hits) == [7, 30]
    assert (hits[7].service, hits[30].service) == (SERVICE, ALL_SERVICES)
    used = counter.snapshot() - before
    assert sum(used.values()) == used[StorageOp.TABLE_QUERY, SUPPRESSIONS_TABLE] == 2
    # Without it, or past the limit of rows to read, every suppression counts.
    assert sorted(counted.suppressed_many(SERVICE, addresses)) == [1, 7, 30]
    assert sorted(counted.suppressed_many(SERVICE, addresses, since=since, scan_limit=1)) == [
        1, 7, 30,
    ]  # fmt: skip
