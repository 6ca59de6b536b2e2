"""A keyed dead letter (the outbound failure letter, a kept poison message) is written once: its
index row first, then its queue message, then the count the dead-letters alert reads. A retry
of one whose queue put failed (or whose writer died) finishes it, rather than taking the row for
a letter written already; two writers finishing it at once leave one message, counted once."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ServiceRequestError
from azure.storage.queue import QueueClient

from shared.deadletters import DeadLetterFilter, DeadLetterIndex, write_dead_letter
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE
from shared.storage import ensured_queue
from tests.crash import crash_once
from tests.outbound.conftest import Outbound
from tests.telemetry.conftest import Telemetry
from tests.telemetry.test_traces import total

AT = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)


def counted(telemetry: Telemetry) -> float:
    return total(
        telemetry, "smartdialog.deadletters", queue=OUTBOUND_DEAD_LETTER_QUEUE, reason="failed"
    )


def write(queue: QueueClient, key: str) -> Any:
    text = f'{{"id":"{key}","reason":"failed","messageId":"{key}"}}'
    return write_dead_letter(queue, text, queue_name=OUTBOUND_DEAD_LETTER_QUEUE, now=AT, key=key)


def the_row(key: str) -> Any:
    where = DeadLetterFilter(queue=OUTBOUND_DEAD_LETTER_QUEUE)
    rows = DeadLetterIndex.from_settings().matching(where, limit=1000)
    [entry] = [e for e in rows if e.row_key.endswith(key)]
    return entry


def test_a_keyed_letter_whose_queue_put_failed_is_put_and_counted_by_its_retry(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row was written, the put failed: the host's retry found the row, took it for a
    letter written already, and the letter was never queued nor counted (PoisonKeeper then
    deleted the host's poison copy)."""
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    key = f"m-{uuid.uuid4().hex}:failed"
    crash_once(
        monkeypatch, QueueClient, "send_message", "connection reset", error=ServiceRequestError
    )
    before = counted(telemetry)
    with pytest.raises(ServiceRequestError):
        write(queue, key)

    sent = write(queue, key)  # the host's retry
    with pytest.raises(ResourceExistsError):
        write(queue, key)  # written already: nothing more

    assert [m["id"] for m in outbound.dead_letters()] == [key]
    assert counted(telemetry) == before + 1
    assert the_row(key).queue_message_id == sent.id


def test_two_writers_finishing_one_unlinked_letter_at_once_leave_one_message_counted_once(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both find the row unlinked and both put; the link is written only into the row as read,
    so the second to link deletes its message and takes the letter as written already."""
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    key = f"m-{uuid.uuid4().hex}:failed"
    send_message = QueueClient.send_message
    faults = ["connection reset"]
    others: list[Any] = []
    raced = []

    def racing(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        if faults:  # the first writer's put fails: the row stays unlinked
            raise ServiceRequestError(faults.pop())
        sent = send_message(self, *args, **kwargs)
        if not raced:  # while this writer is between its put and its link, another finishes
            raced.append(True)
            others.append(write(queue, key))
        return sent

    monkeypatch.setattr(QueueClient, "send_message", racing)
    before = counted(telemetry)
    with pytest.raises(ServiceRequestError):
        write(queue, key)

    with pytest.raises(ResourceExistsError):
        write(queue, key)

    [other] = others
    assert [m["id"] for m in outbound.dead_letters()] == [key]
    assert counted(telemetry) == before + 1
    assert the_row(key).queue_message_id == other.id


def test_a_keyed_letter_whose_link_failed_is_put_once_by_its_retry(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put worked and the link write failed (a storage blip): the letter was counted as
    linked, and the host's retry found the row unlinked and put a second, unindexed copy."""
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    key = f"m-{uuid.uuid4().hex}:failed"
    crash_once(monkeypatch, DeadLetterIndex, "link", "connection reset", error=ServiceRequestError)
    before = counted(telemetry)
    with pytest.raises(ServiceRequestError):
        write(queue, key)

    sent = write(queue, key)  # the host's retry

    assert [m["id"] for m in outbound.dead_letters()] == [key]
    assert counted(telemetry) == before + 1
    assert the_row(key).queue_message_id == sent.id


def test_a_keyed_letter_whose_link_landed_though_its_call_raised_stands_counted(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link was written, then its call raised (a time-out after the write): taking the
    message back left the row linked to a message that was gone, never counted."""
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    key = f"m-{uuid.uuid4().hex}:failed"
    crash_once(
        monkeypatch, DeadLetterIndex, "link", "timed out after the write",
        first=lambda real, self, *a, **k: real(self, *a, **k), error=ServiceRequestError,
    )  # fmt: skip
    before = counted(telemetry)
    sent = write(queue, key)
    with pytest.raises(ResourceExistsError):
        write(queue, key)  # the host's retry: written already

    assert [m["id"] for m in outbound.dead_letters()] == [key]
    assert counted(telemetry) == before + 1
    assert the_row(key).queue_message_id == sent.id


def test_a_keyed_letter_whose_link_outcome_is_unknown_keeps_its_message_and_counts_it(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link was written, its call raised and the re-read failed too: the unknown outcome was
    taken for a failed link, the message taken back, and the host's retry found the row linked:
    the row pointed at a deleted message, the queue held nothing, the alert never counted it."""
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    key = f"m-{uuid.uuid4().hex}:failed"
    crash_once(
        monkeypatch, DeadLetterIndex, "link", "timed out after the write",
        first=lambda real, self, *a, **k: real(self, *a, **k), error=ServiceRequestError,
    )  # fmt: skip
    crash_once(monkeypatch, DeadLetterIndex, "get", "connection reset", error=ServiceRequestError)
    before = counted(telemetry)
    with pytest.raises(ServiceRequestError):
        write(queue, key)
    with pytest.raises(ResourceExistsError):
        write(queue, key)  # the host's retry: written already

    assert [m["id"] for m in outbound.dead_letters()] == [key]
    assert counted(telemetry) == before + 1
    [held] = queue.peek_messages(max_messages=32)
    assert the_row(key).queue_message_id == held.id


def test_a_keyed_letter_whose_link_and_take_back_both_failed_is_doubled_never_lost(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link failed and so did taking the message back: the retry puts a second copy and
    indexes and counts that one; the first stays on the queue unindexed (a window
    write_dead_letter names): a doubled letter, never a lost one."""
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    key = f"m-{uuid.uuid4().hex}:failed"
    crash_once(monkeypatch, DeadLetterIndex, "link", "connection reset", error=ServiceRequestError)
    crash_once(
        monkeypatch, QueueClient, "delete_message", "connection reset", error=ServiceRequestError
    )
    before = counted(telemetry)
    with pytest.raises(ServiceRequestError):
        write(queue, key)
    sent = write(queue, key)  # the host's retry

    assert [m["id"] for m in outbound.dead_letters()] == [key, key]
    assert counted(telemetry) == before + 1
    assert the_row(key).queue_message_id == sent.id
