"""Routing: the header names the connection, else the customer's connection, else default; an
unknown connection or a customer the named one does not serve is a 400 that writes nothing."""

from __future__ import annotations

from typing import Any

from shared.connections import CONNECTION_HEADER
from tests.connections.conftest import SECOND_CUSTOMER, SECOND_SERVICE, TwoConnections
from tests.outbound.conftest import DELIVERED, call_http, sms, status_of


def send(headers: dict[str, str] | None = None, **body: Any) -> Any:
    return call_http("SendMessage", "POST", body=sms(DELIVERED, **body), headers=headers or {})


def queued_connections(two: TwoConnections) -> list[str | None]:
    return [m.get("Connection") for m in two.env.read("smartdialog-outbound")]


def test_the_header_names_the_connection_and_its_defaults_fill_the_send(
    two: TwoConnections,
) -> None:
    accepted = send({CONNECTION_HEADER: "Second"})
    assert accepted.status == 202, accepted.body
    assert accepted.body["Connection"] == "second"
    [queued] = two.env.read("smartdialog-outbound")
    assert (queued["Connection"], queued["customerId"], queued["serviceId"]) == (
        "second",
        SECOND_CUSTOMER,
        SECOND_SERVICE,
    )


def test_the_customer_routes_to_the_connection_that_claims_it(two: TwoConnections) -> None:
    accepted = send({"Customer-Id": SECOND_CUSTOMER, "Service-Id": SECOND_SERVICE})
    assert accepted.status == 202, accepted.body
    assert queued_connections(two) == ["second"]


def test_without_header_or_claimed_customer_it_is_the_default(two: TwoConnections) -> None:
    assert send().status == 202
    assert send({CONNECTION_HEADER: ""}).status == 202
    assert send({CONNECTION_HEADER: "default"}).status == 202
    # The default's queue messages look as they did before connections existed.
    assert queued_connections(two) == [None, None, None]


def test_an_unknown_connection_is_400_naming_it_and_writes_nothing(two: TwoConnections) -> None:
    answer = send({CONNECTION_HEADER: "nope", "Idempotency-Key": "k-unknown"})
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == CONNECTION_HEADER
    assert "nope" in answer.body["errors"][0]["message"]
    assert two.env.queued() == 0
    # Nothing was claimed either: the same key then works on a real connection.
    assert send({CONNECTION_HEADER: "second", "Idempotency-Key": "k-unknown"}).status == 202


def test_a_customer_the_named_connection_does_not_serve_is_400_and_writes_nothing(
    two: TwoConnections,
) -> None:
    answer = send({CONNECTION_HEADER: "second", "Customer-Id": "1001"})
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == "Customer-Id"
    default_answer = send({CONNECTION_HEADER: "default", "Customer-Id": SECOND_CUSTOMER})
    assert default_answer.status == 400
    assert two.env.queued() == 0
    assert two.env.upstream() == []
    assert two.second_upstream() == []


def test_the_same_request_id_on_two_connections_is_two_messages(two: TwoConnections) -> None:
    first = send(RequestId="same-request")
    second = send({CONNECTION_HEADER: "second"}, RequestId="same-request")
    assert first.status == second.status == 202
    assert first.body["Id"] != second.body["Id"]
    two.env.drain()
    assert status_of(first.headers["Location"]).body["Connection"] == "default"
    assert status_of(second.headers["Location"]).body["Connection"] == "second"
