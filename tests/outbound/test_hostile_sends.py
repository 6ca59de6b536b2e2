"""Hostile sends: refused with a 400 and nothing queued, or, when they reach the queue some
other way, failed for good with their reason (never left ``sending``)."""

from __future__ import annotations

import pytest

from shared.messages import MessageStatus, MessageStore
from tests.outbound.conftest import DELIVERED, SERVICE, Outbound, call_http, sms


def test_a_non_finite_personalization_is_400_naming_it_and_nothing_is_queued(
    outbound: Outbound,
) -> None:
    raw = b'{"Sender": "Sandbox", "Content": "Hi $(n)", "Recipients": [{"Address": "'
    raw += DELIVERED.encode() + b'", "Personalization": {"n": 1e999}}]}'

    answer = call_http("SendMessage", "POST", headers={"Service-Id": SERVICE}, body=raw)

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Recipients[0].Personalization.n"]
    assert outbound.queued() == 0
    assert outbound.upstream() == []


def test_a_lone_surrogate_in_content_is_400_naming_content(outbound: Outbound) -> None:
    raw = b'{"Sender": "Sandbox", "Content": "Hi \\ud800", "Recipients": [{"Address": "'
    raw += DELIVERED.encode() + b'"}]}'

    answer = call_http("SendMessage", "POST", headers={"Service-Id": SERVICE}, body=raw)

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Content"]
    assert outbound.queued() == 0


@pytest.mark.parametrize("request_id", ["bulk\norder-1", "a\tb", "a\x7fb", "\x00"])
def test_a_request_id_with_a_control_character_is_400_naming_it(
    outbound: Outbound, request_id: str
) -> None:
    """Found in review: a newline stands for a separator where keys are told apart, so a
    SendMessage with RequestId "bulk\nK" took (422 for ever after) the bulk send's
    Idempotency-Key K, never used."""
    for action, body in (("SendMessage", sms(DELIVERED, RequestId=request_id)),
                         ("SendMessageAndWaitForReply", {"Sender": "S", "Content": "?",
                          "Recipient": DELIVERED, "RequestId": request_id})):  # fmt: skip
        answer = call_http(action, "POST", headers={"Service-Id": SERVICE}, body=body)
        assert answer.status == 400, answer.body
        assert [e["field"] for e in answer.body["errors"]] == ["RequestId"]
    assert outbound.queued() == 0


def test_a_queued_send_with_a_non_ascii_service_id_fails_for_good_with_its_reason(
    outbound: Outbound,
) -> None:
    outbound.enqueue(
        {
            "operation": "SendMessage",
            "messageId": "m-ascii",
            "serviceId": "s-1001-öneway",
            "body": sms(DELIVERED),
        }
    )

    outbound.drain()

    record = MessageStore.from_settings().get("m-ascii")
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert "Service-Id" in (record.failure.detail or "")
    assert record.attempts <= 1
    assert outbound.upstream() == []
    [event] = outbound.events()
    assert event["type"] == "fi.arena.smartdialog.message.failed"


def test_a_content_past_the_cap_is_400_naming_content_and_nothing_is_queued(
    outbound: Outbound,
) -> None:
    from shared.outbound import MAX_CONTENT_CHARS

    at_cap = call_http("SendMessage", "POST", body=sms(DELIVERED, content="y" * MAX_CONTENT_CHARS))
    assert at_cap.status == 202, at_cap.body
    queued = outbound.queued()

    answer = call_http("SendMessage", "POST", body=sms(DELIVERED, content="y" * 400_000))

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Content"]
    assert outbound.queued() == queued


def test_a_placeholder_value_past_the_cap_is_400_naming_it_and_nothing_is_queued(
    outbound: Outbound,
) -> None:
    from shared.outbound import MAX_CONTENT_CHARS

    body = sms(DELIVERED, content="Hi")
    body["Recipients"][0]["Personalization"] = {"unused": "x" * (MAX_CONTENT_CHARS + 1)}

    answer = call_http("SendMessage", "POST", body=body)

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Recipients[0].Personalization.unused"]
    assert outbound.queued() == 0


def test_a_text_past_the_cap_once_filled_in_is_400_naming_its_recipient(
    outbound: Outbound,
) -> None:
    """1,000 placeholders (4,000 characters) filled with 10 characters each: 10,000 characters
    for the second recipient (it was estimated and accepted; 20,000 placeholders and a
    500-character value took 8 s and 250 MiB before the 202)."""
    from shared.outbound import MAX_CONTENT_CHARS

    body = sms(DELIVERED, "+358402000003", content="$(a)" * 1_000)
    body["Recipients"][0]["Personalization"] = {"a": "x" * 4}  # 4,000: fits
    body["Recipients"][1]["Personalization"] = {"a": "x" * 10, "b": "y" * MAX_CONTENT_CHARS}

    answer = call_http("SendMessage", "POST", body=body)

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Recipients[1].Personalization"]
    assert "10,000" in answer.body["errors"][0]["message"]
    assert outbound.queued() == 0
    assert outbound.upstream() == []
