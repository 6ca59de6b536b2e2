"""A caller's RequestId goes upstream as given. SmartDialog remembers it per account, while our
message ids are per customer: two customers of one connection (one account, as the sandbox's
account 1 serves 1001 and 1002) may both use one. The second is answered 409 with the first's
answer, which is not its own: it fails ``duplicate-request-id``, never recorded as sent."""

from __future__ import annotations

import uuid
from typing import Any

from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.outbound._attempt import Sent
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


def test_only_an_original_that_lacks_one_of_its_numbers_is_another_messages() -> None:
    mine = {"MessageId": "u", "Recipients": [{"Address": FIRST, "Id": "r1"}]}
    camel = {"messageId": "u", "recipients": [{"address": "0401000101", "id": "r1"}]}
    assert not Sent(mine, duplicate=True).answers_another([FIRST])
    assert not Sent(camel, duplicate=True).answers_another([FIRST])  # E.164 on both sides
    assert Sent(mine, duplicate=True).answers_another([SECOND])
    assert Sent(mine, duplicate=True).answers_another([FIRST, FIRST])  # one listing short
    assert not Sent({"MessageId": "u"}, duplicate=True).answers_another([SECOND])  # unknown
    assert not Sent(mine).answers_another([SECOND])  # a 2xx is this call's own answer
