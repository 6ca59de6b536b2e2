"""Upgrades in place: rows and queue messages written by the previous release (issue 8's code,
captured in tests/fixtures/previous_release.json) keep working after a deploy."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared.callback_urls import delivery_report_url
from shared.clock import ManualClock, utcnow
from shared.messages import MessageStatus, MessageStore, Pack, PackMember, PackStore
from shared.names import OUTBOUND_QUEUE
from shared.outbound import (
    PackDriver,
    parse_outbound_message,
    parse_queue_message,
    request_fingerprint,
)
from shared.outbound._models import SendMessageCommand
from shared.outbound._records import command_text, new_record
from shared.settings import get_settings
from tests.crash import LEASE, crash_once
from tests.outbound.conftest import (
    CUSTOMER,
    DELIVERED,
    SERVICE,
    Outbound,
    call_http,
    sms,
    status_of,
)

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


# --- queued commands with numbers as written (the previous release did not normalize them) ------

NUMBER = "+358401009999"
WRITTEN = "040 100 9999"  # the same number, as the previous release kept it from the queue


def _ids(*names: str) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{name}-{run}" for name in names]


def _as_written(message_id: str, *addresses: str, **changes: Any) -> str:
    """A command put on the queue with ``addresses`` as written, recorded (with ``changes``) as
    the previous release recorded it: its command, fingerprint and slots with the addresses as
    written. The text of its copies on the queue."""
    body = {**sms(*addresses), "RequestId": message_id}
    command = parse_outbound_message(
        json.dumps({"operation": "SendMessage", "messageId": message_id,
                    "customerId": CUSTOMER, "serviceId": SERVICE, "body": body})
    )  # fmt: skip
    now = utcnow()
    record, slots = new_record(command, now=now, validity=dt.timedelta(days=1))
    written = [replace(s, address=a) for s, a in zip(slots, addresses, strict=True)]
    stored = MessageStore.from_settings().create(replace(record, **changes), written)
    assert stored is not None
    if stored.status is MessageStatus.QUEUED and stored.pack_id is None:
        PackStore.from_settings().index([stored])
    return command_text(command)


def _record(message_id: str) -> Any:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_a_send_the_previous_release_queued_as_written_never_shares_a_call_with_its_number(
    outbound: Outbound,
) -> None:
    """Its copy is still its message (its fingerprint was taken as written), and a new send
    to its number in E.164 does not pack it: two calls, each member its own recipient id."""
    old, new = _ids("old", "new")
    copy = _as_written(old, WRITTEN, status=MessageStatus.QUEUED)
    command = {"operation": "SendMessage", "messageId": new, "body": sms(NUMBER)}

    outbound.invoke(json.dumps(command))  # leads, and finds the old one in the index
    outbound.invoke(copy)

    calls = outbound.upstream()  # (the old one as recorded: upstream reads it as FI, as we do)
    assert [[r["Address"] for r in c["response"]["Recipients"]] for c in calls] == [[NUMBER]] * 2
    assert outbound.dead_letters() == []
    ids = set()
    for message_id in (old, new):
        done = _record(message_id)
        assert done.status is MessageStatus.SENT
        [own] = json.loads(done.result)["Recipients"]
        ids.add(own["Id"])
    assert len(ids) == 2


def test_a_pack_the_previous_release_formed_with_one_number_twice_sends_each_member_once(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """A pack formed before a number written two ways was one number, retried after its worker
    died once upstream took it: upstream's 409 names the number twice, once for each member."""
    first, second = _ids("first", "second")
    now = utcnow()
    pack_id = "pack-" + uuid.uuid4().hex
    claimed = {"status": MessageStatus.SENDING, "attempts": 1, "pack_id": pack_id,
               "lease_until": now - dt.timedelta(seconds=1)}  # fmt: skip
    copy = _as_written(first, NUMBER, **claimed)
    _as_written(second, WRITTEN, **claimed)
    key = _record(first).pack_key
    members = (PackMember(first, (NUMBER,)), PackMember(second, (WRITTEN,)))
    PackStore.from_settings().save(Pack(pack_id, str(key), members, created_at=now))
    crash_once(monkeypatch, PackStore, "save", "died after upstream took the pack",
               when=lambda pack: bool(pack.recipient_ids))  # fmt: skip

    with pytest.raises(RuntimeError):
        outbound.invoke(copy)
    manual_clock.advance(LEASE + 1)
    outbound.invoke(copy, dequeue_count=2)  # the retry: 409 with the first answer

    assert [c["status"] for c in outbound.upstream()] == [200, 409]
    ids = set()
    for message_id in (first, second):
        done = _record(message_id)
        assert done.status is MessageStatus.SENT
        [own] = json.loads(done.result)["Recipients"]
        ids.add(own["Id"])
    assert len(ids) == 2


def test_a_report_finds_its_recipient_the_previous_release_recorded_as_written(
    outbound: Outbound,
) -> None:
    """A report naming no recipient id reaches the member of a pack, and the recipient of that
    member, that the previous release recorded with the number as written."""
    first, second = _ids("first", "second")
    pack_id = "pack-" + uuid.uuid4().hex
    sent = {"status": MessageStatus.SENT, "attempts": 1, "pack_id": pack_id}
    _as_written(first, "040 100 1111", "040 100 3333", **sent)
    _as_written(second, "040 100 2222", **sent)
    members = (
        PackMember(first, ("040 100 1111", "040 100 3333")),
        PackMember(second, ("040 100 2222",)),
    )
    PackStore.from_settings().save(Pack(pack_id, "k", members, created_at=utcnow()))
    url = delivery_report_url(get_settings(), pack_id)
    query = {**dict(parse_qsl(urlsplit(url).query)), "recipient": "+358401003333",
             "status": "delivered"}  # fmt: skip

    answer = call_http("DeliveryReport", "GET", route_params={"MessageId": pack_id}, params=query)

    assert answer.status == 200, answer.body
    assert answer.body["status"] == "recorded"
    _, slots = MessageStore.from_settings().get_with_slots(first)
    assert [str(s.status) for s in slots] == ["pending", "delivered"]


# --- an instance of the previous release draining while the new one runs -----------------------

TEMPORARY_WRITTEN = "040 000 0004"  # the sandbox's TEMPORARY number (503 twice), as written


def _previous_release_takes(text: str) -> bool:
    """Whether an instance of the previous release, still draining during the deploy, takes
    the queue message ``text`` for its recorded send (its ``Outcomes.someone_elses``): only if
    the record's fingerprint is that of the copy as it normalized one (ids and defaults filled
    in, numbers as written). Else it dead-letters the copy ``malformed``, unlinked, and the
    record stays ``queued`` for good."""
    command = parse_outbound_message(text)
    assert isinstance(command, SendMessageCommand)
    assert command.messageId is not None
    body = command.body.model_copy(
        update={"RequestId": command.body.RequestId or command.messageId}
    )
    filled = command.model_copy(
        update={"customerId": command.customerId or CUSTOMER,
                "serviceId": command.serviceId or SERVICE, "body": body}
    )  # fmt: skip
    return bool(_record(command.messageId).fingerprint == request_fingerprint(filled))


def test_a_send_the_previous_release_queued_as_written_goes_back_on_the_queue_as_written(
    outbound: Outbound,
) -> None:
    """Retried here after a 503, its copy keeps the numbers as written: an instance of the
    previous release that takes it finds it is the recorded message (sent in E.164 all the
    same)."""
    [message_id] = _ids("retried")
    outbound.enqueue(_as_written(message_id, TEMPORARY_WRITTEN, status=MessageStatus.QUEUED))

    outbound.run_once()  # 503: back on the queue (no backoff in these tests)

    [copy] = outbound.read(OUTBOUND_QUEUE)
    assert [r["Address"] for r in copy["body"]["Recipients"]] == [TEMPORARY_WRITTEN]
    assert _previous_release_takes(json.dumps(copy))
    outbound.drain()
    assert _record(message_id).status is MessageStatus.SENT
    sent = [[r["Address"] for r in c["body"]["Recipients"]] for c in outbound.upstream()]
    assert sent == [["+358400000004"]] * 3


def test_a_queued_command_as_written_recorded_by_a_failed_invocation_is_a_previous_instances(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded here, its invocation failed (the claim handed back): the host may deliver the
    copy as written to an instance of the previous release, which finds it is the record's."""
    from shared.outbound._quota_wait import QuotaWait

    [message_id] = _ids("handed-back")
    text = json.dumps({"operation": "SendMessage", "messageId": message_id, "body": sms(WRITTEN)})
    crash_once(monkeypatch, QuotaWait, "take", "the quota log could not be read (503)")
    with pytest.raises(RuntimeError):
        outbound.invoke(text)

    assert _record(message_id).status is MessageStatus.QUEUED
    assert _previous_release_takes(text)


# --- a blank RequestId ec7daff recorded as written ----------------------------------------------

#: Written by ec7daff's normalize/request_fingerprint/command_text: a queue command whose
#: RequestId is "  ", recorded and put back with "  " kept; now read as left out (BlankIsAbsent).
EC7DAFF_BLANK_REQUEST_ID = {
    "fingerprint": "716aa370b18e61e12c4fa52b629f0ac1e0b8a8cdb81eef9526335b00c14d46a7",
    "command": '{"messageId":"m-1","customerId":"1001","attempts":0,"deferrals":0,'
    '"serviceId":"2002","transactional":false,"operation":"SendMessage","body":{"Sender":'
    '"ACME","Content":"hi","Protocol":"SMS","Recipients":[{"Address":"+358401234567"}],'
    '"RequestId":"  "}}',
}


def _blank_request_id_as_ec7daff_recorded(message_id: str) -> str:
    """Record a queued send whose RequestId is "  " as ec7daff did (kept, not filled); the
    text of its copy on the queue."""
    body = sms(DELIVERED)
    command = parse_outbound_message(
        json.dumps({"operation": "SendMessage", "messageId": message_id,
                    "customerId": CUSTOMER, "serviceId": SERVICE, "body": body})
    )  # fmt: skip
    assert isinstance(command, SendMessageCommand)
    blank = command.model_copy(update={"body": command.body.model_copy(update={"RequestId": "  "})})
    record, slots = new_record(blank, now=utcnow(), validity=dt.timedelta(days=1))
    queued = replace(record, status=MessageStatus.QUEUED)
    stored = MessageStore.from_settings().create(queued, slots)
    assert stored is not None
    PackStore.from_settings().index([stored])
    return command_text(blank)


def test_a_blank_request_id_ec7daff_recorded_is_still_the_records_own() -> None:
    """Read now, its RequestId is filled with the message id while the record's command was
    compared without that fill: not the record's, so the copy was dead-lettered "messageId
    already used by a different message"."""
    from types import SimpleNamespace

    from shared.outbound._records import is_recorded_as, normalize

    old = EC7DAFF_BLANK_REQUEST_ID
    command = normalize(
        parse_outbound_message(old["command"]), message_id="m-1", customer_id=None, service_id=None
    )
    assert command.body.RequestId == "m-1"  # type: ignore[union-attr]
    assert is_recorded_as(SimpleNamespace(**old), command)  # type: ignore[arg-type]


def test_a_queued_send_with_a_blank_request_id_ec7daff_recorded_is_sent_once(
    outbound: Outbound,
) -> None:
    [message_id] = _ids("blank-request-id")
    outbound.enqueue(_blank_request_id_as_ec7daff_recorded(message_id))

    outbound.drain()

    assert outbound.dead_letters() == []
    assert _record(message_id).status is MessageStatus.SENT
    assert len(outbound.upstream()) == 1


def test_a_send_an_older_release_queued_past_todays_text_caps_is_sent_not_dead_lettered(
    outbound: Outbound,
) -> None:
    """Content, its values and the text filled in are capped when a send is accepted only: one
    queued before the caps (50,000 characters, a 5,000-character value filled in twice) goes."""
    body = sms(DELIVERED, content="y" * 50_000 + "$(a)$(a)")
    body["Recipients"][0]["Personalization"] = {"a": "x" * 5_000}
    outbound.enqueue({"operation": "SendMessage", "messageId": "older-long", "body": body})

    outbound.drain()

    sent = MessageStore.from_settings().get("older-long")
    assert sent is not None
    assert sent.status is MessageStatus.SENT
    assert outbound.dead_letters() == []
    [call] = outbound.upstream()
    assert call["body"]["Content"] == body["Content"]
    assert call["body"]["Recipients"][0]["Personalization"] == {"a": "x" * 5_000}
