"""Re-drives done again: a re-drive that stopped after its record write, a re-driven send that
fails again, a poison command reusing a failed message's id, and bulk re-drives whose first
letters all stay.

Through the real functions, Azurite and the sandbox, as the rest of tests/ops.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.messages import MessageStatus, MessageStore
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE
from tests.ops.conftest import Outbound, index_written_dead_letters
from tests.outbound.conftest import DELIVERED, call_http, sms


def _failed_letter(ops: Outbound, message_id: str, **command: Any) -> dict[str, Any]:
    """The one listed dead letter of a send that failed (``command`` makes it fail)."""
    ops.enqueue({"operation": "SendMessage", "messageId": message_id, **command})
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    [item] = call_http("ListDeadLetters", "GET").body["value"]
    return dict(item)


def _redrive(letter_id: str) -> Any:
    return call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})


def test_a_redrive_stopped_after_its_record_write_leaves_it_sendable(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fresh validity is in the re-drive's own write: a re-drive that stopped after writing
    the record never leaves it queued with the validity it expired with, so the next re-drive
    sends it (before, the second write was lost and the copy expired at once, unsent)."""
    item = _failed_letter(ops, "rv-valid", validUntil="2020-01-01T00:00:00Z", body=sms(DELIVERED))
    store = MessageStore.from_settings()
    swap = MessageStore.swap
    blips: list[str] = []

    def dies_after_the_redrive(self: MessageStore, record: Any, **changes: Any) -> Any:
        written = swap(self, record, **changes)
        if changes.get("_redrive") and not blips:
            blips.append(record.message_id)
            raise RuntimeError("the process died after the re-drive's record write")
        if "valid_until" in changes and not changes.get("_redrive"):
            raise AssertionError("a re-drive's validity written apart from its transition")
        return written

    monkeypatch.setattr(MessageStore, "swap", dies_after_the_redrive)
    assert _redrive(item["id"]).status == 500
    monkeypatch.setattr(MessageStore, "swap", swap)

    again = _redrive(item["id"])
    ops.drain()

    assert (again.status, again.body["outcome"]) == (200, "redriven")
    assert getattr(store.get("rv-valid"), "status", None) is MessageStatus.SENT
    assert len(ops.upstream()) == 1
