"""A lasting quota-store error (``QuotaStoreError.lasting``: a damaged quota log, a quota table
the app may not create) met by a queued send: it waits, unclaimed and unattempted, as for a
broken setting (``LastError`` ``configuration``, a recheck), is sent once an administrator
fixed it, and fails ``expired`` with its event when its validity ends. Before, the sender raised
at every delivery, so after the host's ``maxDequeueCount`` each queued send went to the poison
queue and ``PoisonKeeper`` failed it ``poisoned``."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.messages import FailureInfo, MessageRecord, MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE, QUOTA_TABLE
from shared.outbound import OutboundSender
from shared.outbound._outcomes import CONFIGURATION_RECHECK_SECONDS, OutcomeKind
from shared.quota import GRANTS_PROPERTY, ROW_KEY, connection_key
from shared.settings import get_settings
from shared.storage import ensure_table, queue_client, table_client
from tests.bulk.test_batch_packs import NUMBERS, accepted_batch, drivers, member_ids
from tests.outbound.conftest import (
    DELIVERED,
    Outbound,
    call_http,
    sms,
    status_of,
)
from tests.waiting import TIGHT_MARGIN


def damage_log() -> Callable[[], None]:
    """Damage this connection's quota log in the real table (as a hand edit might); the
    returned ``fix`` deletes it, as the error tells an administrator to."""
    table, key = table_client(QUOTA_TABLE), connection_key(get_settings())
    ensure_table(table)
    table.upsert_entity({"PartitionKey": key, "RowKey": ROW_KEY, GRANTS_PROPERTY: "12,x"})
    return lambda: table.delete_entity(key, ROW_KEY)


@pytest.fixture
def damaged_log(outbound: Outbound) -> Callable[[], None]:
    return damage_log()


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_a_damaged_quota_log_holds_a_send_as_a_broken_setting_until_fixed(
    outbound: Outbound, damaged_log: Callable[[], None], manual_clock: ManualClock
) -> None:
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="quota broken"))
    mid, location = accepted.body["Id"], accepted.headers["Location"]
    [copy] = queue_client(OUTBOUND_QUEUE).receive_messages()

    for _ in range(3):  # no delivery raises: none counts towards the poison queue
        deferred = OutboundSender.from_settings().process(copy.content)
        assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "configuration")
        assert deferred.delay_seconds == CONFIGURATION_RECHECK_SECONDS
        manual_clock.advance(deferred.delay_seconds)  # its copy is back

    waiting = record(mid)
    assert (waiting.status, waiting.attempts, waiting.lease_until) == (
        MessageStatus.QUEUED, 0, None,
    )  # fmt: skip
    polled = status_of(location)
    assert polled.status == 202
    assert polled.body["LastError"]["code"] == "configuration"
    assert "is not a valid log" in polled.body["LastError"]["detail"]
    assert outbound.upstream() == []
    assert outbound.events() == []
    assert outbound.dead_letters() == []

    damaged_log()  # fixed: the entity deleted, as the error says
    assert OutboundSender.from_settings().process(copy.content).kind is OutcomeKind.SENT
    assert status_of(location).status == 200


def test_a_send_waiting_for_the_quota_store_fails_expired_with_its_event(
    outbound: Outbound, manual_clock: ManualClock, damaged_log: Callable[[], None]
) -> None:
    valid_until = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC) + dt.timedelta(seconds=20)
    text = json.dumps({"operation": "SendMessage", "messageId": "m-quota-late",
                       "body": sms(DELIVERED), "validUntil": valid_until.isoformat()})  # fmt: skip

    deferred = OutboundSender.from_settings().process(text)
    assert (deferred.detail, deferred.delay_seconds) == ("configuration", 20)
    manual_clock.advance(21)
    failed = OutboundSender.from_settings().process(text)

    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    assert record("m-quota-late").attempts == 0
    assert [e["data"]["error"]["code"] for e in outbound.events()] == ["expired"]
    # what it waited for (it read only "validUntil … passed", as if nothing had held it)
    [detail] = [e["data"]["error"]["detail"] for e in outbound.events()]
    assert "passed while it waited for the quota store failed: " in detail
    assert "is not a valid log" in detail
    assert [d["messageId"] for d in outbound.dead_letters()] == ["m-quota-late"]
    assert outbound.upstream() == []


def test_a_bulk_pack_waits_for_a_damaged_quota_log_its_members_unattempted(
    outbound: Outbound, damaged_log: Callable[[], None], manual_clock: ManualClock
) -> None:
    ids = member_ids(accepted_batch(*NUMBERS[:3]))
    [driver] = drivers(outbound)

    deferred = OutboundSender.from_settings().process(json.dumps(driver))

    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert {(record(i).status, record(i).attempts) for i in ids} == {(MessageStatus.QUEUED, 0)}
    assert {(record(i).last_error or FailureInfo(code="none")).code for i in ids} == {
        "configuration"
    }
    assert all("is not a valid log" in str(record(i).last_error) for i in ids)
    assert outbound.upstream() == []

    damaged_log()
    manual_clock.advance(deferred.delay_seconds)  # the driver is back
    OutboundSender.from_settings().process(json.dumps(driver))
    [call] = outbound.upstream()
    assert len(call["body"]["Recipients"]) == 3
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_a_bulk_driver_whose_grant_went_stale_waits_when_the_next_take_meets_a_damaged_log(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver takes a second grant after a stale one: a lasting quota-store error there
    raised (claims left ``sending``, the host's retries ending in the poison queue) instead of
    waiting as the first take's does."""
    from shared.outbound._attempt import Upstream

    outbound.configure(QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    ids = member_ids(accepted_batch(*NUMBERS[:2]))
    [driver] = drivers(outbound)
    real, first = Upstream.attempt, [True]

    def slow_then_damaged(self: Upstream, *args: Any, **kwargs: Any) -> Any:
        if first:  # a starved thread: the grant goes stale (TIGHT_MARGIN); the log is damaged
            first.pop()
            # A real wait: the quota store's AttemptGate stamps and checks its grants by the
            # system clock (the store's own), which a manual clock would not move.
            time.sleep(0.45)
            damage_log()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Upstream, "attempt", slow_then_damaged)

    deferred = OutboundSender.from_settings().process(json.dumps(driver))

    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert {(record(i).status, record(i).attempts) for i in ids} == {(MessageStatus.QUEUED, 0)}
    assert all("is not a valid log" in str(record(i).last_error) for i in ids)
    assert outbound.upstream() == []
