"""One number, one form: a command put on ``smartdialog-outbound`` directly has its phone
numbers read as the send actions read them (E.164, region FI), so a number written two ways is
one number to the pack key, to a pack's members, to the share of its answer and to its reports;
an address that is no phone number is dead-lettered, as the send actions answer it 400."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.messages import MessageRecord, MessageStatus, MessageStore
from tests.outbound.conftest import Outbound, call_http, sms

NUMBER = "+358401009999"
WRITTEN = "040 100 9999"  # the same number, as a person writes it


def _record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None, message_id
    return found


def _ids(*names: str) -> list[str]:
    """Message ids of this test only (records outlive a test)."""
    run = uuid.uuid4().hex[:8]
    return [f"{name}-{run}" for name in names]


def _body(operation: str, *addresses: str) -> dict[str, Any]:
    if operation == "SendWhatsappTemplateMessage":
        return {"TemplateName": "welcome", "Recipients": [{"Address": a} for a in addresses]}
    return sms(*addresses, content="Code $(name)")


def _quota_full(outbound: Outbound) -> None:
    """One call a minute, and this one's taken: every new send waits in the index."""
    from tests.bulk.test_packing import waiting_for_a_slot

    waiting_for_a_slot(outbound, period=60)


def _quota_free(outbound: Outbound) -> None:
    outbound.configure(QUOTA_CALLS=2000)


@pytest.mark.parametrize("operation", ["SendMessage", "SendWhatsappTemplateMessage"])
def test_one_number_written_two_ways_by_two_queued_commands_never_shares_a_call(
    outbound: Outbound, operation: str
) -> None:
    rev_a, rev_b = _ids("rev-a", "rev-b")
    _quota_full(outbound)
    for message_id, address in ((rev_a, NUMBER), (rev_b, WRITTEN)):
        command = {
            "operation": operation,
            "messageId": message_id,
            "body": _body(operation, address),
        }
        outbound.invoke(json.dumps(command))  # recorded and indexed, deferred for the quota
    assert _record(rev_a).pack_key == _record(rev_b).pack_key  # the same text: one key

    _quota_free(outbound)
    outbound.invoke(_record(rev_a).command)  # it leads; rev-b follows in its own call

    calls = outbound.upstream(operation)
    key = "Recipients" if operation == "SendMessage" else "recipients"
    assert [[r["Address"] for r in c["body"]["Recipients"]] for c in calls] == [[NUMBER]] * 2
    ids = set()
    for message_id in (rev_a, rev_b):
        done, [slot] = MessageStore.from_settings().get_with_slots(message_id)
        assert done is not None
        assert done.status is MessageStatus.SENT
        assert slot.address == NUMBER  # its recipient is recorded as it is sent: E.164
        [own] = json.loads(done.result or "{}")[key]  # its own recipient id, not the other's
        ids.add(own.get("Id") or own.get("id"))
    assert len(ids) == 2


def test_a_queued_command_naming_one_number_twice_goes_alone_as_a_literal_repeat_does(
    outbound: Outbound,
) -> None:
    """However the number is written twice, the message is sent alone: a repeat through the
    send action (which writes both E.164) is never packed either."""
    accepted = call_http("SendMessage", "POST", body=sms(NUMBER, WRITTEN, content="Code"))
    assert accepted.status == 202, accepted.body
    assert _record(accepted.body["Id"]).pack_key is None
    outbound.drain()
    twice, other = _ids("twice", "other")
    _quota_full(outbound)
    for message_id, addresses in ((twice, (NUMBER, WRITTEN)), (other, ("+358401001111",))):
        body = sms(*addresses, content="Code")
        outbound.invoke(
            json.dumps({"operation": "SendMessage", "messageId": message_id, "body": body})
        )
    assert _record(twice).pack_key is None
    assert _record(other).pack_key is not None

    _quota_free(outbound)
    outbound.invoke(_record(other).command)
    outbound.invoke(_record(twice).command)

    sent = [[r["Address"] for r in c["body"]["Recipients"]] for c in outbound.upstream()[1:]]
    assert sent == [["+358401001111"], [NUMBER, NUMBER]]
    assert _record(twice).status is MessageStatus.SENT


def test_a_queued_command_whose_address_is_no_phone_number_is_dead_lettered_unsent(
    outbound: Outbound,
) -> None:
    [message_id] = _ids("no-number")
    body = sms("+358401001111", "040 12", content="Code")
    outbound.invoke(json.dumps({"operation": "SendMessage", "messageId": message_id, "body": body}))

    assert outbound.upstream() == []
    assert MessageStore.from_settings().get(message_id) is None
    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    assert "body.Recipients.1.Address: not a valid phone number" in letter["detail"]
    assert [e["field"] for e in letter["errors"]] == ["body.Recipients.1.Address"]
