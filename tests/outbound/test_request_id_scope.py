"""A caller's RequestId goes upstream as given. SmartDialog remembers it per account, while our
message ids are per customer: two customers of one connection (one account, as the sandbox's
account 1 serves 1001 and 1002) may both use one. The second is answered 409 with the first's
answer, which is not its own: it fails ``duplicate-request-id``, never recorded as sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.outbound._attempt import Sent
from tests.crash import LEASE, crash_once
from tests.outbound.conftest import CUSTOMER, SERVICE, Outbound, call_http, sms

OTHER_CUSTOMER, OTHER_SERVICE = "1002", "s-1002-oneway"
FIRST, SECOND = "+358401000101", "+358401000102"


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def assert_second_failed_not_sent(outbound: Outbound, first: str, second: str) -> None:
    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200, 409]  # not retried: it never can succeed
    assert record(first).status is MessageStatus.SENT
    failed = record(second)
    assert failed.status is MessageStatus.FAILED
    assert (failed.upstream_message_id, failed.duplicate) == (None, False)
    assert failed.failure is not None
    assert (failed.failure.code, failed.failure.upstreamStatus) == ("duplicate-request-id", 409)
    events = {e["subject"]: e for e in outbound.events()}
    assert events[first]["type"].endswith(".sent")
    assert events[second]["type"].endswith(".failed")
    assert events[second]["data"]["error"]["code"] == "duplicate-request-id"
    assert calls[0]["response"]["MessageId"] not in str(events[second])
    assert len(outbound.sandbox.state.snapshot("messages")) == 1


def test_a_request_id_another_customer_of_the_account_used_first_fails_the_send(
    outbound: Outbound,
) -> None:
    request_id = f"order-{uuid.uuid4().hex[:6]}"
    ids = []
    for customer, service, address, text in (
        (CUSTOMER, SERVICE, FIRST, "Your order shipped"),
        (OTHER_CUSTOMER, OTHER_SERVICE, SECOND, "Alert: server down"),
    ):
        answer = call_http(
            "SendMessage", "POST", body=sms(address, content=text, RequestId=request_id),
            headers={"Customer-Id": customer, "Service-Id": service},
        )  # fmt: skip
        assert answer.status == 202, answer.body
        ids.append(answer.body["Id"])

    outbound.drain()

    assert ids[0] != ids[1]
    assert_second_failed_not_sent(outbound, *ids)


def test_a_queue_only_send_reusing_another_customers_request_id_fails_too(
    outbound: Outbound,
) -> None:
    request_id = f"order-{uuid.uuid4().hex[:6]}"
    commands: list[dict[str, Any]] = [
        {"operation": "SendMessage", "messageId": f"{request_id}-{customer}",
         "customerId": customer, "serviceId": service,
         "body": sms(address, RequestId=request_id)}
        for customer, service, address in (
            (CUSTOMER, SERVICE, FIRST), (OTHER_CUSTOMER, OTHER_SERVICE, SECOND)
        )
    ]  # fmt: skip
    for command in commands:
        outbound.enqueue(command)
        outbound.drain()

    assert_second_failed_not_sent(outbound, *(c["messageId"] for c in commands))


def test_only_an_original_that_lists_none_of_its_numbers_is_another_messages() -> None:
    def original(*addresses: str, camel: bool = False) -> Sent:
        if camel:
            listed = [{"address": a, "id": f"r{i}"} for i, a in enumerate(addresses)]
            return Sent({"messageId": "u", "recipients": listed}, duplicate=True)
        listed = [{"Address": a, "Id": f"r{i}"} for i, a in enumerate(addresses)]
        return Sent({"MessageId": "u", "Recipients": listed}, duplicate=True)

    assert not original(FIRST).answers_another([FIRST])
    assert not original("0401000101", camel=True).answers_another([FIRST])  # E.164 both sides
    assert original(FIRST).answers_another([SECOND])
    assert original(FIRST, "+4915112345678").answers_another([SECOND])
    # Our own earlier attempt's answer, as upstream may write it: not another message's.
    assert not original("358401000101").answers_another([FIRST])  # bare digits
    assert not original("4915112345678").answers_another(["+4915112345678"])
    assert not original(FIRST).answers_another([FIRST, FIRST])  # a repeat listed once
    assert not original(FIRST).answers_another([FIRST, SECOND])  # one left out (opted out)
    assert not Sent({"MessageId": "u"}, duplicate=True).answers_another([SECOND])  # unknown
    assert not Sent(original(FIRST).body).answers_another([SECOND])  # a 2xx: this call's own


def _without_plus(answer: dict[str, Any]) -> None:
    for recipient in answer["Recipients"]:
        recipient["Address"] = recipient["Address"].lstrip("+")


def _listed_once(answer: dict[str, Any]) -> None:
    answer["Recipients"] = answer["Recipients"][:1]


GERMAN = "+4915112345678"
OWN_RETRIES = [
    ("numbers without their plus", [GERMAN, FIRST], _without_plus),
    ("a repeated number listed once", [GERMAN, GERMAN], _listed_once),
    ("a recipient left out", [FIRST, GERMAN], _listed_once),
]


@pytest.mark.parametrize(
    ("addresses", "rewrite"), [c[1:] for c in OWN_RETRIES], ids=[c[0] for c in OWN_RETRIES]
)
def test_the_409_of_our_own_attempt_whose_answer_was_lost_records_it_sent_not_failed(
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
    addresses: list[str],
    rewrite: Callable[[dict[str, Any]], None],
) -> None:
    """A worker died after upstream took the message; the retry's 409 carries upstream's
    remembered answer, written as SmartDialog may write it. It is this message's own: sent."""
    crash_once(
        monkeypatch, MessageStore, "swap", "worker died after upstream accepted the message",
        when=lambda record, **changes: changes.get("status") is MessageStatus.SENT,
    )  # fmt: skip
    message_id = f"own-{uuid.uuid4().hex[:6]}"
    command = {"operation": "SendMessage", "messageId": message_id, "body": sms(*addresses)}
    text = json.dumps(command)
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    state = outbound.sandbox.state
    with state.lock:
        for _, answer in state.request_ids.values():
            rewrite(answer)
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out

    outbound.invoke(text, dequeue_count=2)

    assert [c["status"] for c in outbound.upstream()] == [200, 409]
    done = record(message_id)
    assert done.status is MessageStatus.SENT, done.failure
    assert done.duplicate
    assert [e["type"].rsplit(".", 1)[-1] for e in outbound.events()] == ["sent"]
    assert len(state.snapshot("messages")) == 1


@pytest.mark.parametrize("operation", ["SendMessage", "SendWhatsappTemplateMessage"])
def test_a_send_with_a_request_id_is_never_packed_so_its_resubmission_is_refused_upstream(
    outbound: Outbound, operation: str
) -> None:
    """A flow run again (a new Idempotency-Key, its run id) with the same body RequestId: the
    first went alone with that RequestId, though another send of the same text waited with it,
    so SmartDialog answers the repeat 409 and the recipient gets it once."""
    request_id = f"order-{uuid.uuid4().hex}"
    template = {"TemplateName": "welcome", "BodyParameters": ["Ada"]}

    def body(address: str, **extra: Any) -> dict[str, Any]:
        if operation == "SendMessage":
            return sms(address, **extra)
        return {**template, "Recipients": [{"Address": address}], **extra}

    def resubmitted() -> str:
        answer = call_http(operation, "POST", body=body(FIRST, RequestId=request_id),
                           headers={"Idempotency-Key": f"run-{uuid.uuid4().hex}"})  # fmt: skip
        assert answer.status == 202, answer.body
        assert answer.body["RequestId"] == request_id
        return str(answer.body["Id"])

    first = resubmitted()
    assert call_http(operation, "POST", body=body(SECOND)).status == 202  # could share a call
    outbound.drain()
    resubmitted()
    outbound.drain()

    calls = [(c["body"]["RequestId"], [r["Address"] for r in c["body"]["Recipients"]],
              c["status"]) for c in outbound.upstream(operation)]  # fmt: skip
    assert [c for c in calls if FIRST in c[1] and c[2] == 200] == [(request_id, [FIRST], 200)]
    assert (request_id, [FIRST], 409) in calls
    assert record(first).upstream_request_id == request_id
