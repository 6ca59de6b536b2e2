"""The status store on Azurite: every table created, slots that only move forward under
concurrent delivery reports, and a clear error for a damaged record."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared.callback_urls import delivery_report_url
from shared.inbound import DeliveryReportService
from shared.messages import (
    DamagedRecordError,
    MessageRecord,
    MessageStatus,
    MessageStore,
    RecipientSlot,
    RecipientStatus,
)
from shared.outbound import OutboundSender, parse_outbound_message
from shared.settings import get_settings
from shared.storage import table_client, table_service
from tests.outbound.conftest import DELIVERED, Outbound, sms

OTHER = "+358401112233"


def test_a_fresh_process_creates_every_table_it_uses(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that has not created any table yet, against tables that do not exist yet:
    # the send action and the sender must create each of them, not just the first one.
    from shared import storage, suppressions
    from shared.messages import _idempotency, _store
    from shared.outbound import _service

    suffix = uuid.uuid4().hex[:10]
    tables = {
        "MESSAGES_TABLE": f"FreshMessages{suffix}",
        "IDEMPOTENCY_TABLE": f"FreshIdempotency{suffix}",
    }
    monkeypatch.setattr(_store, "MESSAGES_TABLE", tables["MESSAGES_TABLE"])
    monkeypatch.setattr(_idempotency.IdempotencyStore, "TABLE", tables["IDEMPOTENCY_TABLE"])
    monkeypatch.setattr(suppressions, "SUPPRESSIONS_TABLE", f"FreshSuppressions{suffix}")
    monkeypatch.setattr(storage, "_ready", set())
    wanted = {*tables.values(), f"FreshSuppressions{suffix}"}
    try:
        command = parse_outbound_message(
            json.dumps({"operation": "SendMessage", "body": sms(DELIVERED)})
        )
        accepted = _service.SendService(get_settings()).accept(command, idempotency_key=suffix)
        assert accepted.status == 202
        outbound.drain()

        record = MessageStore.from_settings().get(accepted.body["Id"])
        assert record is not None
        assert record.status is MessageStatus.SENT
        existing = {t.name for t in table_service().list_tables()}
        assert wanted <= existing, wanted - existing
    finally:
        for name in wanted:
            table_service().delete_table(name)


def _sent_message(outbound: Outbound, *addresses: str) -> str:
    message_id = f"m-{uuid.uuid4().hex[:12]}"
    outbound.enqueue({"operation": "SendMessage", "messageId": message_id,
                      "body": sms(*addresses)})  # fmt: skip
    outbound.drain()
    return message_id


def _slots(message_id: str) -> list[RecipientSlot]:
    return MessageStore.from_settings().get_with_slots(message_id)[1]


def test_advancing_recipients_never_overwrites_a_delivery_report_that_lands_meanwhile(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = _sent_message(outbound, DELIVERED, OTHER)
    settings = get_settings()
    token = dict(parse_qsl(urlsplit(delivery_report_url(settings, message_id)).query))["token"]
    store = MessageStore.from_settings(settings)
    real_read = store.get_with_slots

    def read_then_a_report_lands(wanted: str) -> tuple[MessageRecord | None, list[RecipientSlot]]:
        read = real_read(wanted)
        # Between our read and our write, SmartDialog reports recipient 0 delivered.
        answer = DeliveryReportService.from_settings(settings).handle(
            message_id, {"token": token, "recipient": DELIVERED, "status": "delivered"}
        )
        assert answer.advanced
        return read

    monkeypatch.setattr(store, "get_with_slots", read_then_a_report_lands)
    store.advance_recipients(message_id, RecipientStatus.SENT, now=dt.datetime.now(dt.UTC))

    first, second = _slots(message_id)
    assert (first.status, second.status) == ("delivered", "sent")


def test_advancing_recipients_is_forward_only_and_repeatable(outbound: Outbound) -> None:
    message_id = _sent_message(outbound, DELIVERED)
    store = MessageStore.from_settings()
    now = dt.datetime.now(dt.UTC)

    store.advance_recipients(message_id, RecipientStatus.DELIVERED, now=now)
    store.advance_recipients(message_id, RecipientStatus.SENT, now=now)
    store.advance_recipients(message_id, RecipientStatus.CANCELLED, now=now)

    [slot] = _slots(message_id)
    assert slot.status == "delivered"


@pytest.mark.parametrize(
    ("entity", "problem"),
    [
        ({"Status": "bogus"}, "CreatedAt is missing"),
        (
            {
                "Status": "bogus",
                "CreatedAt": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "Operation": "SendMessage",
                "CustomerId": "1001",
            },
            "bogus",
        ),
        (
            {
                "Status": "sent",
                "CreatedAt": "not a time",
                "Operation": "SendMessage",
                "CustomerId": "1001",
            },
            "not a time",
        ),
    ],
)
def test_a_damaged_record_raises_a_clear_typed_error(entity: dict[str, Any], problem: str) -> None:
    with pytest.raises(DamagedRecordError) as raised:
        MessageRecord.from_entity({"PartitionKey": "m-damaged", "RowKey": "message", **entity})
    error = raised.value
    assert (error.message_id, error.row_key) == ("m-damaged", "message")
    assert problem in str(error)
    assert "damaged status record m-damaged/message" in str(error)


def test_the_sender_raises_on_a_damaged_record_so_the_host_retries_then_poisons_it(
    outbound: Outbound,
) -> None:
    message_id = f"m-{uuid.uuid4().hex[:12]}"
    table = table_client("SmartDialogMessages")
    table.upsert_entity({"PartitionKey": message_id, "RowKey": "message", "Status": "bogus"})
    try:
        text = json.dumps({"operation": "SendMessage", "messageId": message_id,
                           "body": sms(DELIVERED)})  # fmt: skip
        with pytest.raises(DamagedRecordError):
            OutboundSender.from_settings().process(text)
        assert outbound.upstream() == []
        assert outbound.dead_letters() == []
    finally:
        table.delete_entity(message_id, "message")
