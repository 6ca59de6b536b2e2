"""Everything per connection: sync actions, bulk sends, packs and keys; the default's keys stay
what they were before connections (an upgrade in place keeps its quota log, idempotency claims
and message ids); a misconfigured connection's queued sends wait instead of failing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from shared.clock import ManualClock, utcnow
from shared.connections import CONNECTION_HEADER, connection_settings
from shared.logs import HeldSends
from shared.messages import MessageStatus, MessageStore, idempotency_key_hash
from shared.names import OUTBOUND_QUEUE
from shared.outbound import OutboundSender, OutcomeKind, _routing
from shared.outbound._models import parse_outbound_message, request_message_id
from shared.outbound._records import pack_key
from shared.quota import connection_key
from shared.storage import queue_client
from tests.bulk.test_bulk_action import batch_status
from tests.connections.conftest import (
    SECOND_CUSTOMER,
    SECOND_SERVICE,
    TwoConnections,
    forget_quota_logs,
    forget_settings,
)
from tests.outbound.conftest import call_http, fresh_number, padding, sms
from tests.outbound.test_sizes import personalised

EVENTS_FIXTURES = Path(__file__).parents[1] / "events" / "fixtures"


def test_a_sync_action_goes_through_the_named_connections_account(two: TwoConnections) -> None:
    answer = call_http("GetUserCustomers", "GET", headers={CONNECTION_HEADER: "second"})
    assert answer.status == 200, answer.body
    calls = two.second.state.snapshot("requests")
    assert [r["operationId"] for r in calls] == ["GetUserCustomers"]
    assert two.env.sandbox.state.snapshot("requests") == []


def bulk_through_second(
    first_address: int, count: int, connection: str | None = "second", pad: str = ""
) -> str:
    """SendBulkMessages through ``connection`` (None: the default), to ``count`` numbers from
    +358403<first>, each named P<i> (with ``pad`` in values no Content uses); the batch's
    status URL (its Location)."""

    body = {
        "Sender": "Sandbox",
        "Content": "Hi $(name)",
        "Recipients": [
            {
                "Address": f"+358403{first_address + i:06d}",
                "Personalization": {"name": f"P{i}", **padding(pad)},
            }
            for i in range(count)
        ],
    }
    headers = {CONNECTION_HEADER: connection} if connection else {}
    accepted = call_http("SendBulkMessages", "POST", body=body, headers=headers)
    assert accepted.status == 202, accepted.body
    return str(accepted.headers["Location"])


def test_a_bulk_send_goes_through_its_connection(two: TwoConnections) -> None:
    bulk_through_second(0, 5)
    two.env.drain()
    [call] = two.second_upstream()
    assert len(call["body"]["Recipients"]) == 5
    assert two.env.upstream() == []
    assert {e["data"]["connection"] for e in two.env.events()} == {"second"}


def test_the_defaults_keys_are_unchanged_and_a_named_connections_differ(
    two: TwoConnections,
) -> None:
    default, second = connection_settings(None), connection_settings("second")
    assert connection_key(default) != connection_key(second)
    # The default's quota key as it was computed before connections existed.
    before = hashlib.sha256(f"{default.base_url.lower()}\nstatic-token".encode()).hexdigest()
    assert connection_key(default).endswith("~" + before[:24])
    assert idempotency_key_hash("1001", "k") == idempotency_key_hash("1001", "k", None)
    assert idempotency_key_hash("1001", "k") != idempotency_key_hash("1001", "k", "second")
    assert request_message_id("1001", "r") != request_message_id("1001", "r", "second")
    plain = parse_outbound_message(
        '{"operation": "SendMessage", "customerId": "1002", "serviceId": "s", '
        '"body": {"Sender": "S", "Content": "x", "Recipients": [{"Address": "+358400000001"}]}}'
    )
    named = plain.model_copy(update={"Connection": "second"})
    assert pack_key(plain) is not None
    assert pack_key(plain) != pack_key(named)


def test_a_queued_command_naming_no_connection_goes_through_the_one_claiming_its_customer(
    two: TwoConnections,
) -> None:
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": "by-customer",
            "customerId": SECOND_CUSTOMER,
            "serviceId": SECOND_SERVICE,
            "body": sms("+358400000014"),
        }
    )
    sent = OutboundSender.from_settings().process(text, queue_message_id="q3")
    assert sent.kind is OutcomeKind.SENT
    assert len(two.second_upstream()) == 1
    assert two.env.upstream() == []  # never the default account
    [event] = two.env.events()
    assert event["data"]["connection"] == "second"


def test_a_misconfigured_connection_defers_its_sends_until_fixed(two: TwoConnections) -> None:
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": "waits",
            "Connection": "second",
            "customerId": SECOND_CUSTOMER,
            "serviceId": SECOND_SERVICE,
            "body": sms("+358400000011"),
        }
    )
    two.drop_connection("SECOND", "ACCESS_TOKEN")  # no credentials now
    waited = OutboundSender.from_settings().process(text, queue_message_id="q1")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert two.env.queued() == 1  # back on the queue (for a minute), not failed
    assert two.env.events() == []
    assert two.second_upstream() == []
    two.set_connection("SECOND", ACCESS_TOKEN="sandbox-token-2")
    sent = OutboundSender.from_settings().process(text, queue_message_id="q1")
    assert sent.kind is OutcomeKind.SENT
    assert len(two.second_upstream()) == 1


def rule_send(address: str) -> tuple[str, str]:
    """What a notification rule of connection ``second`` queues for an alert, as the notifier
    plans it: no customerId and, the rule naming no ServiceId, no serviceId (its connection's
    defaults fill them in). Its message id and queue text."""
    from shared.notify._intake import parse_object
    from shared.notify._notify import Notifier
    from shared.notify._rules import Rule
    from shared.settings import get_settings

    alert = json.loads((EVENTS_FIXTURES / "alert-activated.cloudevent.json").read_text())
    rule = Rule.model_validate(
        {
            "Id": "cpu",
            "Match": {"EventType": "Microsoft.AlertsManagement.Alert.Activated"},
            "Message": {"Sender": "Ops", "Content": "fired", "Protocol": "SMS"},
            "Recipients": {"Numbers": [address]},
            "Connection": "second",
        }
    )
    plan = Notifier(get_settings()).plan(parse_object(alert), rules=[rule], dry_run=True)
    [planned] = plan.sends
    assert (planned.command.customerId, planned.command.serviceId) == (None, None)
    return planned.message_id, planned.command.model_dump_json(by_alias=True, exclude_none=True)


@pytest.mark.parametrize(
    ("address", "setting", "broken"),
    [("+358400000013", "ACCESS_TOKEN", None), ("+358400000015", "QUOTA_CALLS", "0")],
)
def test_a_rule_send_of_a_misconfigured_connection_waits_with_its_customer(
    two: TwoConnections, address: str, setting: str, broken: str | None
) -> None:
    """Credentials missing, or a setting that does not validate: the rule's send waits as the
    connection's other sends do, recorded with the connection's own customer and service."""
    message_id, text = rule_send(address)
    if broken is None:
        two.drop_connection("SECOND", setting)
    else:
        two.set_connection("SECOND", **{setting: broken})
    waited = OutboundSender.from_settings().process(text, queue_message_id="q4")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert two.env.dead_letters() == []
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert (record.status, record.connection) == (MessageStatus.QUEUED, "second")
    assert (record.customer_id, record.service_id) == (SECOND_CUSTOMER, SECOND_SERVICE)

    two.set_connection("SECOND", ACCESS_TOKEN="sandbox-token-2", QUOTA_CALLS=2000)
    sent = OutboundSender.from_settings().process(text, queue_message_id="q4")
    assert sent.kind is OutcomeKind.SENT
    [upstream] = two.second.state.snapshot("messages")
    assert (upstream["customerId"], upstream["serviceId"]) == (SECOND_CUSTOMER, SECOND_SERVICE)
    assert two.env.upstream() == []


def test_a_send_recorded_while_its_connection_was_broken_is_checked_against_every_opt_out(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    """A queue-only send (to two numbers) its connection could not take is recorded without
    checking its recipients. When it goes, every opt-out counts: not only those written since
    it was recorded, the window a pack's members (checked when recorded) are read with."""
    from shared.suppressions import SuppressionStore

    address = fresh_number()  # (the opt-out stays: a number no other test sends to)
    SuppressionStore.from_settings().add(
        SECOND_SERVICE, address, keyword="STOP", source="inbound", now=utcnow()
    )
    manual_clock.advance(3600)  # recorded an hour after the STOP
    message_id = f"m-{utcnow().timestamp():.0f}-broken"
    body = {"Sender": "Clinic", "Content": "Hi",
            "Recipients": [{"Address": address}, {"Address": fresh_number()}]}  # fmt: skip
    text = json.dumps({"operation": "SendMessage", "messageId": message_id, "body": body,
                       "Connection": "second", "customerId": SECOND_CUSTOMER,
                       "serviceId": SECOND_SERVICE})  # fmt: skip
    two.drop_connection("SECOND", "ACCESS_TOKEN")
    waited = OutboundSender.from_settings().process(text, queue_message_id="q6")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")

    two.set_connection("SECOND", ACCESS_TOKEN="sandbox-token-2", QUOTA_CALLS=2000)
    OutboundSender.from_settings().process(text, queue_message_id="q6")

    assert two.second.state.snapshot("messages") == []
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert record.failure.code == "suppressed"


def test_a_rule_send_of_a_removed_connection_fails_connection_removed_with_its_event(
    two: TwoConnections,
) -> None:
    message_id, text = rule_send("+358400000014")
    two.remove_connection("SECOND")
    failed = OutboundSender.from_settings().process(text, queue_message_id="q5")
    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "connection-removed")
    assert two.env.upstream() == []
    assert two.second_upstream() == []
    [event] = two.env.events()
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    data = event["data"]
    assert (data["messageId"], data["connection"]) == (message_id, "second")
    assert data["error"]["code"] == "connection-removed"
    assert data.get("customerId") is None  # gone with the connection's settings
    assert data["origin"]["ruleId"] == "cpu"
    [letter] = two.env.dead_letters()
    assert (letter["reason"], letter["messageId"]) == ("failed", message_id)


def test_a_send_waiting_for_its_misconfigured_connection_still_expires_with_its_event(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    valid_until = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC) + dt.timedelta(seconds=20)
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": "waits-too-long",
            "Connection": "second",
            "customerId": SECOND_CUSTOMER,
            "serviceId": SECOND_SERVICE,
            "validUntil": valid_until.isoformat(),
            "body": sms("+358400000012"),
        }
    )
    two.drop_connection("SECOND", "ACCESS_TOKEN")
    waited = OutboundSender.from_settings().process(text, queue_message_id="q2")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert waited.delay_seconds == 20  # back when its validity ends, not a minute later
    record = MessageStore.from_settings().get("waits-too-long")
    assert record is not None  # recorded on its first wait
    assert record.status is MessageStatus.QUEUED

    manual_clock.advance(21)
    failed = OutboundSender.from_settings().process(text, queue_message_id="q2")
    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    assert two.second_upstream() == []
    [event] = two.env.events()
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert (event["data"]["error"]["code"], event["data"]["connection"]) == ("expired", "second")
    # It says what it waited for (it used to say only "validUntil ... passed").
    detail = event["data"]["error"]["detail"]
    assert "waited for the settings of connection second: " in detail
    assert "SMARTDIALOG_CONNECTIONS__SECOND__ACCESS_TOKEN" in detail


def test_a_customer_claimed_twice_holds_its_queued_sends_as_the_http_actions_refuse(
    two: TwoConnections,
) -> None:
    """Routing by customer is ambiguous: the HTTP actions answer 503, and a queued command of
    that customer waits (it used to go out through the connection whose name sorts first);
    once the double claim is gone it goes through the connection that claims it."""
    two.set_connection("THIRD", ACCESS_TOKEN="tok-3", BASE_URL=two.second.api_url,
                       CUSTOMERS=SECOND_CUSTOMER)  # fmt: skip
    refused = call_http("SendMessage", "POST", body=sms("+358400000014"),
                        headers={"Customer-Id": SECOND_CUSTOMER})  # fmt: skip
    assert refused.status == 503
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": "claimed-twice",
            "customerId": SECOND_CUSTOMER,
            "serviceId": SECOND_SERVICE,
            "body": sms("+358400000015"),
        }
    )
    put_back = outbound_texts(two)
    waited = OutboundSender.from_settings().process(text, queue_message_id="q5")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert (two.second_upstream(), two.env.upstream(), two.env.events()) == ([], [], [])
    assert put_back == [text]  # as it came: no connection picked for it, nothing recorded
    assert MessageStore.from_settings().get("claimed-twice") is None

    two.drop_connection("THIRD", "ACCESS_TOKEN", "BASE_URL", "CUSTOMERS")
    sent = OutboundSender.from_settings().process(put_back[0], queue_message_id="q5")
    assert sent.kind is OutcomeKind.SENT
    assert len(two.second_upstream()) == 1
    [event] = two.env.events()
    assert event["data"]["connection"] == "second"


def outbound_texts(two: TwoConnections) -> list[str]:
    """The texts put on the outbound queue from now on (they go on the queue all the same)."""
    from azure.storage.queue import QueueClient

    texts: list[str] = []
    real = QueueClient.send_message

    def recorded(queue: QueueClient, content: Any, *args: Any, **kwargs: Any) -> Any:
        if queue.queue_name == OUTBOUND_QUEUE:
            texts.append(str(content))
        return real(queue, content, *args, **kwargs)

    two.env.monkeypatch.setattr(QueueClient, "send_message", recorded)
    return texts


def test_a_send_waiting_out_a_routing_error_takes_its_id_and_service_from_its_connection(
    two: TwoConnections,
) -> None:
    """A command of ``second``'s customer naming no service and no messageId waits out a
    mistyped key (which may be a claim): nothing is decided for it meanwhile (no record, its
    text back as it came), so once fixed it goes through ``second`` with second's service and
    its id in second's scope, as a repeat of it would get: not the default's, which made the
    waiting copy and its redelivered original two messages."""
    key = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"
    two.env.monkeypatch.setenv(key, "sales-client")
    forget_settings()
    text = json.dumps({"operation": "SendMessage", "customerId": SECOND_CUSTOMER,
                       "body": sms("+358400000017", RequestId="rid-wait")})  # fmt: skip
    put_back = outbound_texts(two)
    waited = OutboundSender.from_settings().process(text, queue_message_id="q7")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert put_back == [text]
    store = MessageStore.from_settings()
    ours, defaults = (request_message_id(SECOND_CUSTOMER, "rid-wait", c) for c in ("second", None))
    assert (store.get(ours), store.get(defaults)) == (None, None)

    two.env.monkeypatch.delenv(key)
    forget_settings()
    sent = OutboundSender.from_settings().process(put_back[0], queue_message_id="q7")
    assert (sent.kind, sent.message_id) == (OutcomeKind.SENT, ours)
    assert [m["serviceId"] for m in two.second.state.snapshot("messages")] == [SECOND_SERVICE]
    assert (store.get(defaults), two.env.upstream()) == (None, [])


def test_a_copy_routed_before_a_routing_error_stays_its_records_and_waits(
    two: TwoConnections,
) -> None:
    """Accepted through ``default`` before ``second`` claimed its customer (its record names
    no connection), deferred by ``second``'s quota (its copy names ``second``), then a key is
    mistyped: the copy is still its record's and waits for the fix. It used to be
    dead-lettered as another message's, leaving its record queued with no queue message."""
    two.drop_connection("SECOND", "CUSTOMERS", "CUSTOMER_ID")
    headers = {"Customer-Id": SECOND_CUSTOMER, "Service-Id": SECOND_SERVICE}
    accepted = call_http("SendMessage", "POST", body=sms("+358400000027"), headers=headers)
    assert accepted.status == 202, accepted.body
    [original] = [json.dumps(m) for m in two.env.read(OUTBOUND_QUEUE)]
    two.set_connection("SECOND", CUSTOMERS=SECOND_CUSTOMER, CUSTOMER_ID=SECOND_CUSTOMER,
                       QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=30)  # fmt: skip
    forget_quota_logs()
    filler = {"operation": "SendMessage", "messageId": "filler", "Connection": "second",
              "body": sms("+358400000037")}  # fmt: skip
    assert OutboundSender.from_settings().process(json.dumps(filler)).kind is OutcomeKind.SENT
    put_back = outbound_texts(two)
    deferred = OutboundSender.from_settings().process(original, queue_message_id="q8")
    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "quota")
    [copy] = put_back
    assert json.loads(copy)["Connection"] == "second"

    key = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"
    two.env.monkeypatch.setenv(key, "sales-client")
    forget_settings()
    waited = OutboundSender.from_settings().process(copy, queue_message_id="q8")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert two.env.dead_letters() == []

    two.env.monkeypatch.delenv(key)
    two.set_connection("SECOND", QUOTA_CALLS=2000)
    sent = OutboundSender.from_settings().process(put_back[-1], queue_message_id="q8")
    assert (sent.kind, sent.message_id) == (OutcomeKind.SENT, accepted.body["Id"])
    assert len(two.second_upstream()) == 2


def test_two_connections_with_one_identity_hold_their_queued_sends_until_they_expire(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    """One upstream identity twice (one quota upstream, two sliding logs here): the HTTP
    actions answer 503 and the queued sends of either connection wait, unsent, and expire
    with their events."""
    import os

    two.set_connection("SECOND", ACCESS_TOKEN=os.environ["SMARTDIALOG_ACCESS_TOKEN"],
                       BASE_URL=os.environ["SMARTDIALOG_BASE_URL"])  # fmt: skip
    refused = call_http("SendMessage", "POST", body=sms("+358400000016"),
                        headers={CONNECTION_HEADER: "second"})  # fmt: skip
    assert refused.status == 503
    valid_until = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC) + dt.timedelta(seconds=20)
    texts = [
        json.dumps(
            {
                "operation": "SendMessage",
                "messageId": f"one-identity-{i}",
                "validUntil": valid_until.isoformat(),
                "body": sms(f"+35840000002{i}"),
                **({"Connection": "second"} if i else {}),
            }
        )
        for i in range(2)
    ]
    for i, text in enumerate(texts):
        waited = OutboundSender.from_settings().process(text, queue_message_id=f"q{i}")
        assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    manual_clock.advance(21)
    for i, text in enumerate(texts):
        failed = OutboundSender.from_settings().process(text, queue_message_id=f"q{i}")
        assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    assert two.env.upstream() == []
    failures = {e["data"]["messageId"]: e["data"]["connection"] for e in two.env.events()}
    assert failures == {"one-identity-0": "default", "one-identity-1": "second"}


def test_a_bulk_pack_waiting_for_its_misconfigured_connection_still_expires_its_members(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    two.set_connection("SECOND", SEND_VALIDITY_SECONDS=600)
    bulk_through_second(10000, 3)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    two.drop_connection("SECOND", "ACCESS_TOKEN")

    waited = OutboundSender.from_settings().process(json.dumps(driver))
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert two.env.events() == []

    manual_clock.advance(601)  # the members' validity ends while the connection is broken
    ended = OutboundSender.from_settings().process(json.dumps(driver))

    assert (ended.kind, ended.detail) == (OutcomeKind.ACKNOWLEDGED, "configuration")
    assert two.second_upstream() == []
    events = two.env.events()
    assert len(events) == 3
    assert {e["type"] for e in events} == {"fi.arena.smartdialog.message.failed"}
    assert {e["data"]["error"]["code"] for e in events} == {"expired"}


def test_a_status_poll_redrives_a_lost_pack_through_the_batchs_connection_after_its_idle_time(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    two.set_connection("SECOND", SEND_RETRY_MAX_SECONDS=900)  # longer than the default's
    location = bulk_through_second(20000, 3)
    queue_client(OUTBOUND_QUEUE).clear_messages()  # its driver is lost (poisoned, say)
    default, second = connection_settings(None), connection_settings("second")
    manual_clock.advance(default.send_lease_seconds + default.send_retry_max_seconds + 61)

    # Polled as a flow follows Location: no connection header, so the default's settings.
    assert batch_status(location).status == 202
    assert two.env.queued() == 0  # idle by the default's backoff, not by its own connection's

    manual_clock.advance(second.send_retry_max_seconds - default.send_retry_max_seconds)
    assert batch_status(location).status == 202
    assert [m.get("Connection") for m in two.env.read(OUTBOUND_QUEUE)] == ["second"]
    two.env.drain()

    assert two.env.upstream() == []
    [call] = two.second_upstream()
    assert len(call["body"]["Recipients"]) == 3
    assert batch_status(location).body["Counts"]["sent"] == 3


def test_a_status_poll_leaves_a_pack_waiting_for_its_broken_connection_until_its_validity_ends(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    two.set_connection("SECOND", SEND_VALIDITY_SECONDS=3600)
    location = bulk_through_second(30000, 3)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    two.drop_connection("SECOND", "ACCESS_TOKEN")
    waited = OutboundSender.from_settings().process(json.dumps(driver))
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    queue_client(OUTBOUND_QUEUE).clear_messages()  # (its copy waits on: not needed here)

    manual_clock.advance(481)  # past the default's idle time: the driver is waiting, not lost
    assert batch_status(location).status == 202
    assert two.env.queued() == 0

    manual_clock.advance(3600)  # the members' validity ended: a driver fails them
    assert batch_status(location).status == 202
    assert [m.get("Connection") for m in two.env.read(OUTBOUND_QUEUE)] == ["second"]
    two.env.drain()
    assert two.env.upstream() == []
    assert two.second_upstream() == []
    assert batch_status(location).body["Counts"]["failed"] == 3
    assert {e["data"]["error"]["code"] for e in two.env.events()} == {"expired"}


def test_a_status_poll_redrives_a_batch_row_of_ec7daff_through_its_members_connection(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    """A batch row written by ec7daff has no Connection: its members' commands name it."""
    from azure.data.tables import UpdateMode

    from shared.messages import BatchStore

    location = bulk_through_second(60000, 2)
    queue_client(OUTBOUND_QUEUE).clear_messages()  # its driver is lost
    table = BatchStore.from_settings().table
    [row] = table.query_entities(f"PartitionKey eq '{location.split('?')[0].rsplit('/', 1)[-1]}'")
    assert row.pop("Connection") == "second"
    table.update_entity(row, mode=UpdateMode.REPLACE)
    manual_clock.advance(481)

    assert batch_status(location).status == 202
    assert [m.get("Connection") for m in two.env.read(OUTBOUND_QUEUE)] == ["second"]


@pytest.mark.parametrize(
    "broken", ["customer-claimed-twice", "mistyped-key", "no-default-credentials", "blob-kept"]
)
def test_a_status_poll_adds_no_driver_while_the_batchs_sends_wait_and_one_once_they_expire(
    two: TwoConnections, manual_clock: ManualClock, broken: str
) -> None:
    """Whatever holds the batch's sends (a routing error, the default's own settings, its
    connection's settings with every member's command kept in a blob), a status poll leaves its
    waiting pack alone until the members' validity ends: it used to add a driver every 480 s,
    each looping a minute at a time until then. (A status URL is not routed: it answers during
    a routing error too.)"""
    from shared.messages._records import INLINE_COMMAND_CHARS

    def poll() -> tuple[int, dict[str, Any]]:
        answer = batch_status(location)
        return answer.status, answer.body

    named = broken != "no-default-credentials"
    pad = "x" * INLINE_COMMAND_CHARS if broken == "blob-kept" else ""
    location = bulk_through_second(50000, 2, "second" if named else None, pad)
    drivers = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    if broken == "customer-claimed-twice":
        two.set_connection("THIRD", ACCESS_TOKEN="tok-3", BASE_URL=two.second.api_url,
                           CUSTOMERS=SECOND_CUSTOMER)  # fmt: skip
    elif broken == "mistyped-key":
        two.env.monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID", "sales-client")
        forget_settings()
    elif broken == "no-default-credentials":
        two.env.monkeypatch.delenv("SMARTDIALOG_ACCESS_TOKEN")
        forget_settings()
    else:
        two.drop_connection("SECOND", "ACCESS_TOKEN")
    for driver in drivers:
        waited = OutboundSender.from_settings().process(json.dumps(driver))
        assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    queue_client(OUTBOUND_QUEUE).clear_messages()  # (their copies wait on: not needed here)

    manual_clock.advance(481)  # past the idle time: the drivers are waiting, not lost
    assert poll()[0] == 202
    assert two.env.queued() == 0

    manual_clock.advance(86_400)  # the members' validity ended: a driver fails them
    assert poll()[0] == 202
    assert two.env.queued() == len(drivers)
    two.env.drain()
    assert (two.env.upstream(), two.second_upstream()) == ([], [])
    assert poll()[1]["Counts"]["failed"] == 2
    assert {e["data"]["error"]["code"] for e in two.env.events()} == {"expired"}


def test_a_driver_without_its_packs_connection_is_sent_to_that_connection_not_through_this_one(
    two: TwoConnections,
) -> None:
    # As an older release's status poll put it out: a named connection's pack, no Connection.
    bulk_through_second(40000, 3)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    stray = {k: v for k, v in driver.items() if k != "Connection"}

    moved = OutboundSender.from_settings().process(json.dumps(stray))

    assert (moved.kind, moved.detail) == (OutcomeKind.DEFERRED, "connection")
    assert [m.get("Connection") for m in two.env.read(OUTBOUND_QUEUE)] == ["second"]
    two.env.drain()
    assert two.env.upstream() == []
    assert len(two.second_upstream()) == 1
    assert {e["type"] for e in two.env.events()} == {"fi.arena.smartdialog.message.sent"}


def test_the_operations_overview_shows_each_connections_quota(two: TwoConnections) -> None:
    from shared.ops._overview import overview
    from shared.settings import get_settings

    forget_quota_logs()
    call_http("GetUserCustomers", "GET", headers={CONNECTION_HEADER: "second"})
    quotas = {q.connection: q for q in overview(get_settings()).quotas}
    assert set(quotas) == {"default", "second"}
    assert quotas["second"].calls == 2000
    assert quotas["second"].used == 1
    assert quotas["second"].key != quotas["default"].key


def test_without_default_credentials_the_named_connections_still_send(
    two: TwoConnections,
) -> None:
    two.env.monkeypatch.delenv("SMARTDIALOG_ACCESS_TOKEN")
    forget_settings()
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": "named-only",
            "Connection": "second",
            "customerId": SECOND_CUSTOMER,
            "serviceId": SECOND_SERVICE,
            "body": sms("+358400000011"),
        }
    )
    assert OutboundSender.from_settings().process(text).kind is OutcomeKind.SENT
    assert len(two.second_upstream()) == 1


@pytest.mark.parametrize(
    ("setting", "others"),
    [
        ("ACCESS_TOKEN", {}),
        ("CLIENT_SECRET", {"CLIENT_ID": "app-1"}),
        ("REFRESH_TOKEN", {"CLIENT_ID": "app-1", "CLIENT_SECRET": "secret"}),
    ],
)
def test_an_unresolved_key_vault_reference_of_the_default_account_stops_only_the_default(
    two: TwoConnections, setting: str, others: dict[str, str]
) -> None:
    """It failed the app's settings, so every named connection's actions answered 503 naming
    it and the sender held every send; a named connection's own is its error alone."""
    from shared.health import configuration_problem

    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/sd)"
    two.env.monkeypatch.delenv("SMARTDIALOG_ACCESS_TOKEN")
    for name, value in {**others, setting: reference}.items():
        two.env.monkeypatch.setenv(f"SMARTDIALOG_{name}", value)
    forget_settings()
    named = call_http("GetUserCustomers", "GET", headers={CONNECTION_HEADER: "second"})
    assert named.status == 200, named.body

    def send(message_id: str, **connection: str) -> OutcomeKind:
        text = json.dumps({"operation": "SendMessage", "messageId": message_id, **connection,
                           "body": sms("+358400000011")})  # fmt: skip
        return OutboundSender.from_settings().process(text, queue_message_id=message_id).kind

    assert send(f"kv-named-{setting}", Connection="second") is OutcomeKind.SENT
    assert len(two.second_upstream()) == 1
    assert send(f"kv-default-{setting}") is OutcomeKind.DEFERRED
    default = call_http("GetUserCustomers", "GET")
    for problem in (default.body, configuration_problem().to_dict()):  # type: ignore[union-attr]
        assert [e["field"] for e in problem["errors"]] == [f"SMARTDIALOG_{setting}"]
        assert "Key Vault reference" in problem["errors"][0]["message"]
        assert "vault.azure.net" not in json.dumps(problem)
    assert default.status == 503


def test_a_default_access_token_no_header_can_carry_stops_only_the_default(
    two: TwoConnections,
) -> None:
    """Checked as a setting (a second read of 1b18ca5), it failed the app's settings: every
    connection's actions and sends stopped, the webhook answered 503. It is the default
    connection's credentials error, as an unresolved Key Vault reference is."""
    from shared.health import configuration_problem

    two.env.monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", "sandbox-tok\u00e9n")
    forget_settings()

    named = call_http("GetUserCustomers", "GET", headers={CONNECTION_HEADER: "second"})
    default = call_http("GetUserCustomers", "GET")

    assert named.status == 200, named.body
    assert default.status == 503
    for problem in (default.body, configuration_problem().to_dict()):  # type: ignore[union-attr]
        assert [e["field"] for e in problem["errors"]] == ["SMARTDIALOG_ACCESS_TOKEN"]
        assert "Authorization header" in problem["errors"][0]["message"]
        assert "tok\u00e9n" not in json.dumps(problem, ensure_ascii=False)


def test_an_accepted_send_waiting_out_a_routing_error_still_expires_and_is_settled_later(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    """A send accepted over HTTP (recorded, routed by its customer) waits out a mistyped key
    unrouted; its validity still runs out meanwhile (it fails ``expired``, with its event, as
    any waiting send does), and a poisoned copy of it is looked at again later, not kept as
    nothing of ours (its record would have stayed ``queued`` for good)."""
    accepted = call_http("SendMessage", "POST", body=sms("+358400000047"))
    assert accepted.status == 202, accepted.body
    [text] = [json.dumps(m) for m in two.env.read(OUTBOUND_QUEUE)]
    key = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"
    two.env.monkeypatch.setenv(key, "sales-client")
    forget_settings()
    sender = OutboundSender.from_settings()
    assert sender.settle_poisoned(text) is None  # uncertain now: the keeper looks again
    waited = sender.process(text, queue_message_id="q9")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    record = MessageStore.from_settings().get(accepted.body["Id"])
    assert record is not None
    left = record.valid_until - dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    manual_clock.advance(left.total_seconds() + 1)
    failed = sender.process(text, queue_message_id="q9")
    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    [event] = two.env.events()
    assert event["data"]["error"]["code"] == "expired"
    assert (two.env.upstream(), two.second_upstream()) == ([], [])


def test_sends_waiting_for_their_connection_log_each_at_debug_and_one_warning_a_minute(
    two: TwoConnections, manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each waiting send wrote a warning naming no message at every recheck; now its line is at
    DEBUG with its id (one message can be followed), and one warning a minute counts them."""
    two.drop_connection("SECOND", "ACCESS_TOKEN")
    two.env.monkeypatch.setattr(_routing, "held", HeldSends(_routing.log))
    texts = [
        json.dumps({"operation": "SendMessage", "messageId": f"held-{i}", "Connection": "second",
                    "customerId": SECOND_CUSTOMER, "body": sms("+358400000051")})
        for i in range(5)
    ]  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="shared.outbound.sender"):
        for text in texts:
            assert OutboundSender.from_settings().process(text).detail == "configuration"
        manual_clock.advance(60)
        OutboundSender.from_settings().process(texts[0])

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("a send is waiting for the settings of connection second: ")
    assert warnings[1].startswith(
        "5 send(s) waiting for the settings of connection second in the last 60 s: "
    )
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    for i in range(5):
        assert any(m.startswith(f"message held-{i} waits for the settings of connection second")
                   for m in debug)  # fmt: skip


def test_a_send_stored_by_reference_waiting_out_a_routing_error_still_expires_saying_why(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    """An accepted send too large for a queue message is queued by reference (a
    ``StoredCommand``, which names its message): while a routing error lasts it used to be put
    back past its validity for good, never checked; it fails ``expired`` as any other, saying
    it waited for the connections' routing."""
    accepted = call_http("SendMessage", "POST", body=personalised(100, note="n" * 700))
    assert accepted.status == 202, accepted.body
    [text] = [json.dumps(m) for m in two.env.read(OUTBOUND_QUEUE)]
    assert json.loads(text)["kind"] == "stored"
    two.env.monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID", "sales-client")
    forget_settings()
    waited = OutboundSender.from_settings().process(text, queue_message_id="q10")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")

    record = MessageStore.from_settings().get(accepted.body["Id"])
    assert record is not None
    left = record.valid_until - dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    manual_clock.advance(left.total_seconds() + 1)
    failed = OutboundSender.from_settings().process(text, queue_message_id="q10")

    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    [event] = two.env.events()
    assert event["data"]["error"]["code"] == "expired"
    assert "waited for the connections' routing: " in event["data"]["error"]["detail"]
    assert (two.env.upstream(), two.second_upstream()) == ([], [])


def test_a_command_without_any_id_waiting_out_a_routing_error_is_one_message_once_fixed(
    two: TwoConnections,
) -> None:
    """No messageId, no RequestId: its id is its queue message's. Put back as it came, the copy
    (a new queue message) had another, so a host that could not delete the original after the
    put-back left two messages: both went out once fixed. The copy now carries the original's."""
    key = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"
    two.env.monkeypatch.setenv(key, "sales-client")
    forget_settings()
    text = json.dumps({"operation": "SendMessage", "customerId": SECOND_CUSTOMER,
                       "serviceId": SECOND_SERVICE, "body": sms("+358400000057")})  # fmt: skip
    put_back = outbound_texts(two)
    waited = OutboundSender.from_settings().process(text, queue_message_id="q-original")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    [copy] = put_back

    two.env.monkeypatch.delenv(key)
    forget_settings()
    sender = OutboundSender.from_settings()
    first = sender.process(text, queue_message_id="q-original")  # the original, not deleted
    again = sender.process(copy, queue_message_id="q-copy")
    assert first.kind is OutcomeKind.SENT
    assert again.message_id == first.message_id
    assert len(two.second_upstream()) == 1


@pytest.mark.parametrize("size", ["large", "at-the-limit"])
def test_a_large_command_without_any_id_waiting_out_a_routing_error_goes_back_whole(
    two: TwoConnections, size: str
) -> None:
    """Writing its id into a large non-ASCII command (json.dumps escaping it: an ä became 6 bytes)
    made a copy over the queue's 64 KiB: the put-back was refused, the host retried it into the
    poison queue, and an id taken from its queue message is lost with it. Now the copy is
    written as compactly as it came, and one that the id pushes over goes by reference."""
    from shared.payloads import QUEUE_MESSAGE_LIMIT, queue_message_bytes

    key = "SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID"
    two.env.monkeypatch.setenv(key, "sales-client")
    forget_settings()

    def command(content: str) -> str:
        return json.dumps({"operation": "SendMessage", "customerId": SECOND_CUSTOMER,
                           "serviceId": SECOND_SERVICE, "body": sms("+358400000067",
                           Content=content)}, ensure_ascii=False)  # fmt: skip

    text = command("ä" * 25_000)
    if size == "at-the-limit":
        text = command("ä" * 25_000 + "a" * (QUEUE_MESSAGE_LIMIT - 20 - queue_message_bytes(text)))
    put_back = outbound_texts(two)
    waited = OutboundSender.from_settings().process(text, queue_message_id=f"q-{size}")
    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    [copy] = put_back
    assert json.loads(copy).get("kind") == ("stored" if size == "at-the-limit" else None)

    two.env.monkeypatch.delenv(key)
    forget_settings()
    sent = OutboundSender.from_settings().process(copy, queue_message_id="q2")
    assert sent.kind is OutcomeKind.SENT


def test_a_bulk_pack_waiting_for_its_misconfigured_connection_says_so_on_its_members(
    two: TwoConnections,
) -> None:
    """Before, its members answered queued, Retry-After 1, no LastError while they waited."""
    location = bulk_through_second(30000, 2)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    two.drop_connection("SECOND", "ACCESS_TOKEN")

    waited = OutboundSender.from_settings().process(json.dumps(driver))

    assert (waited.kind, waited.detail) == (OutcomeKind.DEFERRED, "configuration")
    members = batch_status(location, details=True).body["Recipients"]
    store = MessageStore.from_settings()
    errors = [store.get(m["Id"]).last_error for m in members]  # type: ignore[union-attr]
    assert [e and e.code for e in errors] == ["configuration"] * 2
    assert all("connection second" in ((e and e.detail) or "") for e in errors)


def break_second(two: TwoConnections, removed: bool) -> None:
    """Connection second misconfigured (its token gone) or removed (every setting gone)."""
    if removed:
        two.remove_connection("SECOND")
    else:
        two.drop_connection("SECOND", "ACCESS_TOKEN")


#: A misconfigured connection's driver is acknowledged (its open members expire); a removed
#: one's fails.
BROKEN = pytest.mark.parametrize(
    ("removed", "outcome"),
    [(False, OutcomeKind.ACKNOWLEDGED), (True, OutcomeKind.FAILED)],
    ids=["misconfigured", "removed"],
)


@BROKEN
def test_an_all_final_packs_events_go_out_though_its_connection_is_misconfigured(
    two: TwoConnections, removed: bool, outcome: OutcomeKind
) -> None:
    """A driver of a pack whose members are all final, its row still listing them in
    ``announcing`` (a run stopped before their events; a status poll re-drives such a pack), was
    acknowledged unsent while its connection's settings were broken (or the connection removed):
    the events waited for the fix though they need nothing upstream."""
    from shared.messages import PackStore

    bulk_through_second(70000, 2)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    two.env.drain()
    first = sorted(e["id"] for e in two.env.events())
    packs = PackStore.from_settings()
    pack = packs.get(driver["packId"])
    assert pack is not None
    assert len(first) == 2
    assert packs.swap(pack, announcing=pack.member_ids) is not None  # their events not out
    break_second(two, removed)

    done = OutboundSender.from_settings().process(json.dumps(driver))

    assert done.kind is outcome
    assert sorted(e["id"] for e in two.env.events()) == sorted(first * 2)  # again, same ids
    assert two.env.queued() == 0
    pack = packs.get(driver["packId"])
    assert pack is not None
    assert pack.announcing == ()


@BROKEN
def test_a_final_members_listed_event_goes_out_though_another_member_was_open(
    two: TwoConnections, manual_clock: ManualClock, removed: bool, outcome: OutcomeKind
) -> None:
    """A run stopped after recording member A sent (listed in ``announcing``, its event not out)
    while B was still open; the connection then broke (or went) and B's validity ended. The
    driver failed B and stopped there: A's message.sent never went out, A stayed listed, and the
    batch answered done, so nothing would ever send it."""
    from shared.messages import PackStore

    two.set_connection("SECOND", SEND_VALIDITY_SECONDS=600)
    location = bulk_through_second(80000, 2)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    packs, store = PackStore.from_settings(), MessageStore.from_settings()
    pack = packs.get(driver["packId"])
    assert pack is not None
    a, b = pack.member_ids
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    sending = store.swap(store.get(a), status=MessageStatus.SENDING, updated_at=now, attempts=1)  # type: ignore[arg-type]
    assert sending is not None
    sent = store.swap(sending, status=MessageStatus.SENT, announced=True, finished_at=now,
                      updated_at=now)  # fmt: skip
    assert sent is not None
    assert packs.swap(pack, announcing=(a,)) is not None
    manual_clock.advance(601)  # B's validity ends while the connection is broken
    break_second(two, removed)

    done = OutboundSender.from_settings().process(json.dumps(driver))

    assert done.kind is outcome
    assert sorted((e["type"], e["data"]["messageId"]) for e in two.env.events()) == [
        ("fi.arena.smartdialog.message.failed", b),
        ("fi.arena.smartdialog.message.sent", a),
    ]
    assert packs.get(driver["packId"]).announcing == ()  # type: ignore[union-attr]
    assert batch_status(location).body["Status"] == "done"
    assert two.env.queued() == 0


@pytest.mark.parametrize("removed", [False, True], ids=["misconfigured", "removed"])
def test_an_all_final_packs_listed_events_under_a_live_lease_come_back_after_it(
    two: TwoConnections,
    manual_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    removed: bool,
) -> None:
    """A run died after recording every member (listed in ``announcing``, events not out) and the
    host gave its driver back within the pack's lease, the connection broken meanwhile: the
    driver was acknowledged (or failed) with the list left to the lease, and the batch answered
    done, so the events waited for a poll after the quiet time that a flow told done never makes.
    The driver comes back when the lease ends and sends them."""
    from shared.messages import PackStore

    bulk_through_second(81000, 2)
    [driver] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    two.env.drain()
    sent_events = len(two.env.events())
    packs = PackStore.from_settings()
    pack = packs.get(driver["packId"])
    assert pack is not None
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    lease = now + dt.timedelta(seconds=60)
    assert packs.swap(pack, announcing=pack.member_ids, lease_until=lease) is not None
    break_second(two, removed)
    put_back: list[str] = []
    real_send = QueueClient.send_message

    def kept(self: QueueClient, text: str, *args: Any, **kwargs: Any) -> Any:
        if self.queue_name == OUTBOUND_QUEUE:
            put_back.append(text)
        return real_send(self, text, *args, **kwargs)

    monkeypatch.setattr(QueueClient, "send_message", kept)  # the queue port, every connection's

    first = OutboundSender.from_settings().process(json.dumps(driver))
    assert (first.kind, first.detail) == (OutcomeKind.DEFERRED, "claimed")
    assert first.delay_seconds == 60  # invisible for what the lease still holds
    assert two.env.queued() == 1
    assert two.env.read(OUTBOUND_QUEUE) == []  # put back, not visible yet
    [copy] = put_back
    assert json.loads(copy)["packId"] == driver["packId"]
    manual_clock.advance(61)  # the lease ends: the copy comes back
    OutboundSender.from_settings().process(copy)

    assert len(two.env.events()) == sent_events + 2  # the two message.sent again, same ids
    assert packs.get(driver["packId"]).announcing == ()  # type: ignore[union-attr]
