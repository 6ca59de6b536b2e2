"""A send end to end: HTTP action -> queue -> sender -> sandbox -> status URL -> delivery report.

Everything goes over real sockets: the test's HTTP client to the dev host, the dev host's queue
listener to Azurite, the app's client to the sandbox, the sandbox's DLR GET back to the dev host.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from azure.data.tables import TableClient

from sandbox.contract import validate_request
from shared.messages import MessageRecord
from shared.names import MESSAGES_TABLE, OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE, poison_queue
from shared.signing import TokenPurpose, verify
from tests.e2e.conftest import (
    CALLBACK_SECRET,
    DELIVERED_NUMBER,
    MAX_DEQUEUE_COUNT,
    ONE_WAY_SERVICE,
    Stack,
    poll,
)
from tests.fixtures.sandbox import CallbackReceiver


def _sms(*addresses: str, content: str = "Hello $(name) from e2e") -> dict[str, Any]:
    return {
        "Sender": "Sandbox",
        "Content": content,
        "Recipients": [{"Address": a, "Personalization": {"name": "Ada"}} for a in addresses],
    }


def _send(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    response = stack.http.post(f"{stack.api}/messages", json=body)
    assert response.status_code == 202, response.text
    return response


def _sent_status(stack: Stack, location: str) -> dict[str, Any]:
    """Follow the status URL (as Logic Apps would) until it answers 200; the 200 body."""

    def probe() -> dict[str, Any] | None:
        response = stack.http.get(location)
        assert response.status_code in (200, 202), response.text
        return response.json() if response.status_code == 200 else None

    return poll(probe, what="the status URL to answer 200")


def test_send_answers_202_then_its_status_url_answers_200_with_the_sandboxs_message_id(
    stack: Stack,
) -> None:
    accepted = _send(stack, _sms(DELIVERED_NUMBER))

    location = accepted.headers["Location"]
    assert location.startswith(f"{stack.api}/messages/")
    assert "token=" in location
    assert int(accepted.headers["Retry-After"]) >= 1
    assert accepted.json()["Status"] in ("accepted", "queued", "sending")

    sent = _sent_status(stack, location)
    upstream = [
        m
        for m in stack.sandbox_get("/sandbox/messages")
        if m.get("direction") == "outbound" and m.get("messageId") == sent["MessageId"]
    ]
    assert len(upstream) == 1, "the sandbox should have received exactly this one send"
    assert sent["Status"] == "sent"
    assert sent["MessagePartCount"] == 1
    assert [r["Address"] for r in sent["Recipients"]] == [DELIVERED_NUMBER]


def test_status_url_without_its_token_is_refused(stack: Stack) -> None:
    location = _send(stack, _sms(DELIVERED_NUMBER)).headers["Location"]

    bare = location.split("?", 1)[0]
    assert stack.http.get(bare).status_code == 401
    assert stack.http.get(bare + "?token=v1.0.forged").status_code == 403


def test_delivery_report_from_the_sandbox_marks_the_recipient_delivered(stack: Stack) -> None:
    location = _send(stack, _sms(DELIVERED_NUMBER)).headers["Location"]
    sent = _sent_status(stack, location)

    def delivered() -> dict[str, Any] | None:
        doc = stack.http.get(location).json()
        statuses = [r.get("Status") for r in doc["Recipients"]]
        return doc if statuses == ["delivered"] else None

    doc = poll(delivered, what="the recipient's status to become delivered")
    assert doc["MessageId"] == sent["MessageId"]
    reports = _delivery_reports(stack, sent["MessageId"])
    assert all(str(r.get("httpStatus", "")).startswith("2") for r in reports), reports
    assert all(
        r["url"].startswith(f"{stack.api}/callbacks/dlr/{doc['Id']}?token=") for r in reports
    )


def _delivery_reports(stack: Stack, upstream_message_id: str) -> list[dict[str, Any]]:
    """The sandbox's log of its DLR callbacks for a message (it logs once our answer is in)."""
    return poll(
        lambda: [
            r
            for r in stack.sandbox_get("/sandbox/delivery-reports")
            if r.get("messageId") == upstream_message_id
        ],
        what="the sandbox to log its DLR callback",
    )


def _upstream_send(stack: Stack, upstream_message_id: str) -> dict[str, Any]:
    [request] = [
        r
        for r in stack.sandbox_get("/sandbox/requests?operationId=SendMessage")
        if (r.get("response") or {}).get("MessageId") == upstream_message_id
    ]
    return dict(request)


def test_upstream_send_carries_our_signed_dlr_url_and_keeps_the_callers_for_after_ours(
    stack: Stack, callback_receiver: CallbackReceiver
) -> None:
    own = f"{callback_receiver.url}/my-dlr?ref=e2e-42"
    accepted = _send(stack, {**_sms(DELIVERED_NUMBER), "DlrUrl": own})
    message_id = accepted.json()["Id"]
    sent = _sent_status(stack, accepted.headers["Location"])

    # What went upstream: our DLR URL, signed for this message, in a request the published
    # definition accepts; the caller's URL is not sent.
    request = _upstream_send(stack, sent["MessageId"])
    ours = request["body"]["DlrUrl"]
    assert ours.startswith(f"{stack.api}/callbacks/dlr/{message_id}?token=")
    token = dict(parse_qsl(urlsplit(ours).query))["token"]
    assert verify(token, TokenPurpose.DLR, message_id, secrets=[CALLBACK_SECRET])
    assert own not in json.dumps(request["body"])
    assert (
        validate_request(
            request["method"], request["path"], request["headers"], body=request["body"]
        )
        == []
    )

    # The sandbox reports to us; we record it, then call the caller's own URL, query kept.
    [call] = callback_receiver.wait_for(1, timeout=15)
    assert call.path == "/my-dlr"
    assert call.query["ref"] == "e2e-42"
    assert call.query["status"] == "delivered"
    assert "token" not in call.query
    reports = _delivery_reports(stack, sent["MessageId"])
    assert [str(r["httpStatus"]) for r in reports] == ["200"], reports
    doc = stack.http.get(accepted.headers["Location"]).json()
    assert [r["Status"] for r in doc["Recipients"]] == ["delivered"]
    # The stored request keeps the caller's URL (and so its fingerprint stays the caller's).
    table = TableClient.from_connection_string(stack.storage, MESSAGES_TABLE)
    try:
        from shared.messages._records import record_keys

        record = MessageRecord.from_entity(table.get_entity(*record_keys(message_id)))
    finally:
        table.close()
    assert json.loads(record.command)["body"]["DlrUrl"] == own


def test_malformed_outbound_message_is_dead_lettered_with_its_reason(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    text = json.dumps({"operation": "SendMessage", "note": marker})  # no body, unknown field
    stack.queue(OUTBOUND_QUEUE).send_message(text)

    def letter() -> dict[str, Any] | None:
        for stored in stack.peek(OUTBOUND_DEAD_LETTER_QUEUE):
            doc = json.loads(stored)
            if marker in doc.get("original", ""):
                return dict(doc)
        return None

    doc = poll(letter, what=f"the message in {OUTBOUND_DEAD_LETTER_QUEUE}")
    assert doc["reason"] == "malformed"
    assert doc["original"] == text
    assert doc["queue"] == OUTBOUND_QUEUE
    assert doc["errors"], "the dead letter should list what was wrong"
    # The sender handled it (returned normally): the host does not retry or poison it.
    assert not any(marker in t for t in stack.peek(poison_queue(OUTBOUND_QUEUE)))
    assert not any(marker in t for t in stack.peek(OUTBOUND_QUEUE))


def test_message_whose_status_record_is_unreadable_ends_in_the_poison_queue(stack: Stack) -> None:
    # The sender raises only when our own storage fails; a damaged status record is such a
    # failure, every attempt, so the host retries it maxDequeueCount times, then poisons it.
    message_id = str(uuid.uuid4())
    table = TableClient.from_connection_string(stack.storage, MESSAGES_TABLE)
    table.upsert_entity({"PartitionKey": message_id, "RowKey": "message", "Status": "bogus"})
    try:
        _assert_poisoned_and_never_sent(stack, message_id)
    finally:  # leave no damaged record for other tests that read the table
        table.delete_entity(message_id, "message")
        table.close()


def _assert_poisoned_and_never_sent(stack: Stack, message_id: str) -> None:
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": message_id,
            "customerId": "1001",
            "serviceId": ONE_WAY_SERVICE,
            "body": _sms(DELIVERED_NUMBER),
        }
    )
    stack.queue(OUTBOUND_QUEUE).send_message(text)

    poisoned = poll(
        lambda: [t for t in stack.peek(poison_queue(OUTBOUND_QUEUE)) if message_id in t],
        timeout=10 + 2 * MAX_DEQUEUE_COUNT,
        what=f"the message in {poison_queue(OUTBOUND_QUEUE)}",
    )
    assert poisoned == [text], "the poison queue keeps the message exactly as it was"
    assert not any(message_id in t for t in stack.peek(OUTBOUND_QUEUE))
    assert not any(message_id in t for t in stack.peek(OUTBOUND_DEAD_LETTER_QUEUE))
    sent_upstream = [
        m for m in stack.sandbox_get("/sandbox/messages") if m.get("requestId") == message_id
    ]
    assert sent_upstream == [], "nothing may be sent while the record cannot be read"
