"""Found in review: the pipeline routed every action, so while the connections had an error of
the whole (or the connection a poll's header names was broken or removed) every status URL
answered 503 (or 400) with no Retry-After: a flow waiting on a 202 failed its step while the
message was still sent later (a "run after: failed" resend sent it twice). The status URLs and
CancelMessage need only the app's settings and our records: they are not routed."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from shared.connections import CONNECTION_HEADER
from tests.connections.conftest import TwoConnections, forget_settings
from tests.outbound.conftest import DELIVERED, HttpAnswer, call_http, sms

ROUTING_ERROR = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"  # a key naming no connection


def poll(operation: str, location: str, headers: dict[str, str] | None = None) -> HttpAnswer:
    """GET a status URL (a Location) through the real function ``operation``."""
    parts = urlsplit(location)
    name = {"GetMessageStatus": "MessageId", "GetQuestionStatus": "QuestionId"}
    return call_http(
        operation,
        "GET",
        route_params={name.get(operation, "BatchId"): unquote(parts.path.rsplit("/", 1)[-1])},
        params=dict(parse_qsl(parts.query)),
        headers=headers or {},
    )


def accepted(operation: str, body: Any, **headers: str) -> HttpAnswer:
    answer = call_http(operation, "POST", body=body, headers=headers)
    assert answer.status == 202, answer.body
    return answer


def test_status_urls_and_cancel_answer_during_a_routing_error_and_the_flow_gets_its_answer(
    two: TwoConnections,
) -> None:
    send = accepted("SendMessage", sms(DELIVERED))
    named = accepted("SendMessage", sms(DELIVERED), **{CONNECTION_HEADER: "second"})
    to_cancel = accepted("SendMessage", sms(DELIVERED))
    bulk = accepted("SendBulkMessages", {"Sender": "S", "Content": "Hi",
                                         "Recipients": [{"Address": DELIVERED}]})  # fmt: skip
    route = {"Service": "s-1001-twoway"}  # its replies come through our webhook
    assert call_http("RegisterInboundWebhook", "POST", route_params=route).status == 201
    question = accepted(
        "SendMessageAndWaitForReply",
        {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": DELIVERED},
        **{"Service-Id": "s-1001-twoway"},
    )
    two.env.monkeypatch.setenv(ROUTING_ERROR, "sales-client")
    forget_settings()
    assert call_http("SendMessage", "POST", body=sms(DELIVERED)).status == 503  # still routed

    for operation, answer, headers in (
        ("GetMessageStatus", send, {}),
        ("GetMessageStatus", named, {CONNECTION_HEADER: "second"}),  # the connector's policy
        ("GetBulkStatus", bulk, {}),
        ("GetQuestionStatus", question, {}),
    ):
        polled = poll(operation, answer.headers["Location"], headers)
        assert polled.status == 202, (operation, polled.body)
        assert int(polled.headers["Retry-After"]) >= 1
    cancel = call_http("CancelMessage", "DELETE", route_params={"MessageId": to_cancel.body["Id"]})
    assert (cancel.status, cancel.body["Status"]) == (200, "cancelled")

    two.env.monkeypatch.delenv(ROUTING_ERROR)
    forget_settings()
    two.env.drain()
    for answer in (send, named):
        final = poll("GetMessageStatus", answer.headers["Location"])
        assert final.status == 200, final.body
    assert poll("GetBulkStatus", bulk.headers["Location"]).status == 200


def test_a_poll_naming_a_removed_connection_still_gets_its_answer(two: TwoConnections) -> None:
    named = accepted("SendMessage", sms(DELIVERED), **{CONNECTION_HEADER: "second"})
    location = named.headers["Location"]
    two.drop_connection("SECOND", "BASE_URL", "ACCESS_TOKEN", "CUSTOMERS", "CUSTOMER_ID",
                        "SERVICE_ID", "QUOTA_CALLS")  # fmt: skip

    polled = poll("GetMessageStatus", location, {CONNECTION_HEADER: "second"})
    assert polled.status == 202, polled.body

    two.env.drain()  # its sender fails it: connection-removed
    final = poll("GetMessageStatus", location, {CONNECTION_HEADER: "second"})
    assert (final.status, final.body["code"]) == (422, "connection-removed"), final.body


def test_a_send_its_customers_new_connection_holds_is_polled_at_the_recheck(
    two: TwoConnections,
) -> None:
    """The sender routes a command that names no connection through the one claiming its
    customer now; its status read the record's (``default``, never claimed yet). Found in
    review of the status waits: with the customer now claimed by a misconfigured connection,
    the send waited for that connection's settings while its status answered Retry-After 1."""
    import json

    from shared.names import OUTBOUND_QUEUE
    from shared.outbound import OutboundSender, OutcomeKind
    from shared.settings import get_settings
    from shared.unconfigured import RECHECK_SECONDS
    from tests.connections.conftest import SECOND_CUSTOMER, SECOND_SERVICE
    from tests.outbound.conftest import status_of

    two.drop_connection("SECOND", "CUSTOMERS", "CUSTOMER_ID")  # the default serves it now
    headers = {"Customer-Id": SECOND_CUSTOMER, "Service-Id": SECOND_SERVICE}
    sent = accepted("SendMessage", sms("+358400000027"), **headers)
    [copy] = [json.dumps(m) for m in two.env.read(OUTBOUND_QUEUE)]
    two.set_connection("SECOND", CUSTOMERS=SECOND_CUSTOMER, CUSTOMER_ID=SECOND_CUSTOMER)
    two.drop_connection("SECOND", "ACCESS_TOKEN")  # its customer's connection now, broken

    waits = OutboundSender.from_settings().process(copy)
    polled = status_of(sent.headers["Location"])

    assert (waits.kind, waits.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert polled.body["LastError"]["code"] == "configuration"
    longest = get_settings().send_status_retry_after_seconds
    assert polled.headers["Retry-After"] == str(min(RECHECK_SECONDS, longest))
