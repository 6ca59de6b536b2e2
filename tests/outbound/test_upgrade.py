"""Upgrades in place: rows and queue messages written by the previous release (issue 8's code,
captured in tests/fixtures/previous_release.json) keep working after a deploy."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from shared.clock import ManualClock
from shared.messages import MessageStatus, MessageStore, PackStore
from shared.outbound import PackDriver, parse_queue_message
from shared.settings import get_settings
from tests.outbound.conftest import Outbound, status_of

PREVIOUS = Path(__file__).resolve().parent.parent / "fixtures" / "previous_release.json"


def _rows() -> dict[str, Any]:
    def decode(value: dict[str, Any]) -> Any:
        if set(value) == {"$datetime"}:
            return dt.datetime.fromisoformat(value["$datetime"])
        return value

    loaded: dict[str, Any] = json.loads(PREVIOUS.read_text(encoding="utf-8"), object_hook=decode)
    return loaded


def _store(name: str) -> str:
    """Write a record and its slots exactly as the previous release did; its message id."""
    record, slots = _rows()[name]
    table = MessageStore.from_settings().table
    for entity in [record, *slots]:
        table.upsert_entity({k: v for k, v in entity.items() if v is not None})
    return str(record["MessageId"])


def _status_url(message_id: str) -> str:
    from shared.outbound._service import SendService

    return SendService(get_settings()).status_url(message_id)


def test_a_send_the_previous_release_queued_is_sent_once(outbound: Outbound) -> None:
    message_id = _store("queued_record")
    outbound.enqueue(_rows()["queued_command"])

    outbound.drain()

    assert len(outbound.upstream()) == 1
    assert status_of(_status_url(message_id)).status == 200


def test_a_send_the_previous_release_left_accepted_is_enqueued_by_its_status_poll(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    message_id = _store("accepted_record")
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    manual_clock.advance((manual_clock.now() - record.updated_at.timestamp()) + 31)

    assert status_of(_status_url(message_id)).status == 202
    outbound.drain()

    assert status_of(_status_url(message_id)).status == 200
    assert len(outbound.upstream()) == 1


def test_a_send_the_previous_release_indexed_when_accepted_is_sent_and_leaves_the_index(
    outbound: Outbound,
) -> None:
    message_id = _store("indexed_record")
    row = _rows()["index_row"]
    packs = PackStore.from_settings()
    packs.table.upsert_entity(row)
    outbound.enqueue(_rows()["indexed_command"])

    outbound.drain()

    assert len(outbound.upstream()) == 1
    done = MessageStore.from_settings().get(message_id)
    assert done is not None
    assert done.status is MessageStatus.SENT
    key = str(row["PartitionKey"]).removeprefix("q-")
    assert packs.candidates(key, limit=10) == []


def test_a_pack_driver_of_the_previous_release_is_read_as_one(outbound: Outbound) -> None:
    text = _rows()["driver_text"]
    assert isinstance(parse_queue_message(text), PackDriver)

    outbound.invoke(text)  # its pack is not in this store: dead-lettered with the reason

    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    assert "not a bulk pack of this app" in letter["detail"]


def test_sends_the_previous_release_indexed_and_lane_sends_of_the_same_key_each_go_once(
    outbound: Outbound,
) -> None:
    from shared.messages import in_lane
    from tests.outbound.conftest import call_http

    message_id = _store("indexed_record")
    PackStore.from_settings().table.upsert_entity(_rows()["index_row"])
    outbound.enqueue(_rows()["indexed_command"])
    body = {"Sender": "Shop", "Content": "Hi $(name)", "Protocol": "SMS"}  # the same pack key
    lane_ids = []
    for address in ("+358401000002", "+358401000003"):
        recipients = [{"Address": address, "Personalization": {"name": "Bo"}}]
        answer = call_http("SendMessage", "POST", body={**body, "Recipients": recipients})
        assert answer.status == 202, answer.body
        lane_ids.append(answer.body["Id"])
    assert all(in_lane(i) for i in lane_ids)

    outbound.drain()

    sent = [r["Address"] for c in outbound.upstream() for r in c["body"]["Recipients"]]
    assert sorted(sent) == ["+358401000001", "+358401000002", "+358401000003"]
    store = MessageStore.from_settings()
    for done in (store.get(i) for i in [message_id, *lane_ids]):
        assert done is not None
        assert done.status is MessageStatus.SENT
