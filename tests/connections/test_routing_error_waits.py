"""While the connections have an error of the whole (a mistyped key that may be a connection's,
a customer claimed twice), every queued send waits, unrecorded when first seen: none is decided
by settings that may be wrong, none goes out through an account it may not belong to, and none
fails for a connection that may only be mistyped (README, "Connections").

Found in review: a command naming a connection was checked against its customer only when the
routing was certain. Seen first during such an error, it was recorded; after the fix the check
skipped it (recorded: "checked when accepted") and it went out through a connection that does
not serve its customer. And a send naming a connection the mistyped keys define was failed
``connection-removed`` for good, while the same request over HTTP got a 503 to retry.
"""

from __future__ import annotations

import json
import uuid

from shared.connections import CONNECTION_HEADER
from shared.messages import MessageStore
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE
from shared.outbound import OutboundSender
from tests.connections.conftest import TwoConnections, forget_settings
from tests.outbound.conftest import CUSTOMER, SERVICE, call_http, fresh_number, sms


def _mistype(two: TwoConnections, key: str, value: str) -> None:
    two.env.monkeypatch.setenv(key, value)
    forget_settings()


def _rule_send(two: TwoConnections, connection: str) -> str:
    """Queue a send as a notification rule does (its connection, no customer, no service)."""
    message_id = f"rule-{connection}-{uuid.uuid4()}"
    two.env.enqueue({"operation": "SendMessage", "messageId": message_id,
                     "Connection": connection, "body": sms(fresh_number())})  # fmt: skip
    return message_id


def _assert_held_unrecorded(two: TwoConnections, message_id: str) -> None:
    assert two.env.queued(OUTBOUND_DEAD_LETTER_QUEUE) == 0
    assert two.env.queued() == 1  # put back to wait
    assert MessageStore.from_settings().get(message_id) is None  # nothing decided yet


def test_a_command_first_seen_during_a_routing_error_is_still_refused_for_an_unserved_customer(
    two: TwoConnections,
) -> None:
    command = {"operation": "SendMessage", "messageId": f"unserved-{uuid.uuid4()}",
               "Connection": "second", "customerId": CUSTOMER, "serviceId": SERVICE,
               "body": sms(fresh_number())}  # fmt: skip
    text = json.dumps(command)
    _mistype(two, "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID", "oops")

    waiting = OutboundSender.from_settings().process(text, queue_message_id="q-unserved")

    assert str(waiting.kind) == "deferred", waiting
    assert MessageStore.from_settings().get(command["messageId"]) is None  # nothing decided
    two.env.monkeypatch.delenv("SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID")
    forget_settings()
    after = OutboundSender.from_settings().process(text, queue_message_id="q-unserved")
    assert str(after.kind) == "dead-lettered", after
    assert two.second_upstream() == []


def test_a_send_naming_a_connection_the_mistyped_keys_define_waits_instead_of_failing(
    two: TwoConnections,
) -> None:
    _mistype(two, "SMARTDIALOG_CONNECTION__SALES__ACCESS_TOKEN", "sales-token")
    _mistype(two, "SMARTDIALOG_CONNECTION__SALES__CUSTOMERS", "1002")
    http = call_http("SendMessage", "POST", body=sms(fresh_number()),
                     headers={CONNECTION_HEADER: "sales"})  # fmt: skip
    message_id = f"wait-for-sales-{uuid.uuid4()}"
    two.env.enqueue({"operation": "SendMessage", "messageId": message_id, "Connection": "sales",
                     "customerId": "1002", "serviceId": "s-1002-oneway",
                     "body": sms(fresh_number())})  # fmt: skip

    two.env.run_once()

    assert http.status == 503
    record = MessageStore.from_settings().get(message_id)
    assert record is None or not record.status.is_final
    assert two.env.queued() == 1  # put back to wait
    assert not [e for e in two.env.events() if e["type"].endswith("message.failed")]


def test_a_send_naming_a_mistyped_connection_and_no_customer_waits_too(
    two: TwoConnections,
) -> None:
    """As a notification rule queues it (its connection, no ``customerId``): it was recorded
    with defaults the mistyped keys hide, found malformed and dead-lettered, lost for good
    (found in a second read of the fix above)."""
    keys = {"ACCESS_TOKEN": "sales-token", "CUSTOMERS": "1002", "CUSTOMER_ID": "1002",
            "SERVICE_ID": "s-1002-oneway"}  # fmt: skip
    for setting, value in keys.items():
        _mistype(two, f"SMARTDIALOG_CONNECTION__SALES__{setting}", value)
    message_id = _rule_send(two, "sales")

    two.env.run_once()

    _assert_held_unrecorded(two, message_id)


def test_a_rule_send_naming_a_sound_connection_waits_while_another_key_is_mistyped(
    two: TwoConnections,
) -> None:
    """SECOND's service key mistyped (one underscore): an error of the whole. A rule's send (its
    connection, no customer, no service) was not held, read with the service the mistyped key
    hides, and dead-lettered ``malformed``: lost (third read)."""
    from tests.connections.conftest import SECOND_SERVICE

    two.drop_connection("SECOND", "SERVICE_ID")
    _mistype(two, "SMARTDIALOG_CONNECTIONS__SECOND_SERVICE_ID", SECOND_SERVICE)
    message_id = _rule_send(two, "second")

    two.env.run_once()

    _assert_held_unrecorded(two, message_id)
