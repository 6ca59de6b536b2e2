"""One request's work is bounded whatever the queues hold: an action on a poison message by id,
a bulk action on a poison queue, a purge whose pop receipt is stale, and the refresh of pop
receipts after a scan. Through the real functions and Azurite, as the rest of tests/ops."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.deadletters import DeadLetterFilter, DeadLetterIndex, write_dead_letter
from shared.names import (
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    DLR_FORWARD_QUEUE,
    INBOUND_INTAKE_QUEUE,
    poison_queue,
)
from shared.ops import keep_poison
from shared.settings import get_settings
from shared.storage import ensured_queue, queue_client
from tests.ops.conftest import Outbound, letter
from tests.outbound.conftest import call_http

POISON = poison_queue(DLR_FORWARD_QUEUE)


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many messages each ``receive_messages`` of the test received (one entry a call)."""
    from azure.storage.queue import QueueClient

    counts: list[int] = []
    receive = QueueClient.receive_messages

    def counting(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        pages = receive(self, *args, **kwargs)
        counts.append(0)
        original = pages.by_page

        def by_page(*a: Any, **k: Any) -> Iterator[Any]:
            for page in original(*a, **k):
                items = list(page)
                counts[-1] += len(items)
                yield iter(items)

        pages.by_page = by_page  # type: ignore[method-assign]
        return pages

    monkeypatch.setattr(QueueClient, "receive_messages", counting)
    return counts


def poison_messages(count: int) -> None:
    """``count`` messages on the DLR forward poison queue, as the host leaves them."""
    poison = ensured_queue(POISON)
    for n in range(count):
        poison.send_message(json.dumps({"messageId": f"p-{n}", "status": "delivered"}))


def test_an_id_no_queue_message_can_have_is_not_looked_for(
    ops: Outbound, received: list[int]
) -> None:
    """Any ``<poison queue>~<text>`` was taken for a poison message and looked for by receiving
    the whole queue (up to 5,000 messages, each hidden a minute and its dequeue count raised)."""
    poison_messages(40)

    answer = call_http(
        "PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": f"{POISON}~does-not-exist"}
    )

    assert answer.status == 404, answer.body
    assert received == []


def test_an_action_on_a_poison_id_receives_at_most_its_requests_limit(
    ops: Outbound, received: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-drive of an id no message has received the whole queue looking for it."""
    monkeypatch.setattr("shared.ops._poison.REQUEST_RECEIVE_LIMIT", 40)
    poison_messages(100)

    answer = call_http(
        "RedriveDeadLetter", "POST", route_params={"DeadLetterId": f"{POISON}~{uuid.uuid4()}"}
    )

    assert answer.status == 409, answer.body
    assert sum(received) == 40
    assert len(queue_client(POISON).peek_messages(max_messages=32)) == 32  # shown again


def test_a_bulk_action_on_a_poison_queue_stops_at_its_limit_and_says_more(
    ops: Outbound, received: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan went on receiving (and hiding) every message of the queue after it had its
    limit, and of every other poison queue after that."""
    from shared.ops.actions import desk

    poison_messages(100)
    done, more, _ = desk(get_settings()).purge_matching(DeadLetterFilter(queue=POISON), limit=10)
    first = list(received)
    monkeypatch.setattr("shared.ops._poison.REQUEST_RECEIVE_LIMIT", 40)
    calls = []
    for _ in range(5):
        answer = call_http("PurgeDeadLetters", "POST", params={"queue": POISON})
        calls.append((answer.body["purged"], answer.body["more"]))
        if not answer.body["more"]:
            break

    assert (len(done), more) == (10, True)
    assert first == [32]  # one page: it had its 10
    assert calls == [(40, True), (40, True), (10, False)]
    assert queue_client(POISON).peek_messages() == []


def test_a_bulk_action_that_can_do_nothing_more_does_not_say_more(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept poison messages are received (and passed over) on the request's budget: with more
    of them than one call receives, every call answered more, doing nothing, for ever."""
    monkeypatch.setattr("shared.ops._poison.REQUEST_RECEIVE_LIMIT", 5)
    poison_messages(6)
    assert keep_poison() == 6

    answer = call_http(
        "RedriveDeadLetters", "POST", params={"queue": POISON, "minAgeSeconds": "3600"}
    )

    assert (answer.body["redriven"], answer.body["more"]) == (0, False), answer.body


def test_a_bulk_action_on_every_poison_queue_reaches_those_behind_one_full_of_kept_letters(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first poison queue's kept letters used up the whole budget: the poison messages of
    the queues after it were never reached (with reason=poison, by no call while it stayed so)."""
    monkeypatch.setattr("shared.ops._poison.REQUEST_RECEIVE_LIMIT", 12)
    intake = ensured_queue(poison_queue(INBOUND_INTAKE_QUEUE))
    for n in range(13):
        intake.send_message(json.dumps({"n": n}))
    assert keep_poison() == 13
    poison_messages(1)  # behind it, not kept yet

    answer = call_http("PurgeDeadLetters", "POST", params={"reason": "poison"})

    assert answer.body["purged"] == 14, answer.body
    assert queue_client(POISON).peek_messages() == []


def test_a_purge_whose_receipt_is_stale_receives_only_up_to_its_letter(
    ops: Outbound, received: list[int]
) -> None:
    """The purge's scan for the letter went on through the rest of its queue."""
    queue = queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE)
    for n in range(40):
        write_dead_letter(queue, letter(messageId=f"m-{n}"), queue_name=queue.queue_name)
    for message in list(queue.receive_messages(messages_per_page=32, max_messages=40)):
        queue.update_message(message, content=message.content, visibility_timeout=0)  # stale
    first = DeadLetterIndex.from_settings().matching(DeadLetterFilter(), limit=1)
    letter_id = next(first).id
    received.clear()

    answer = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})

    assert answer.body["outcome"] == "purged", answer.body
    assert received == [32]  # its page, not the queue
    assert queue.get_queue_properties().approximate_message_count == 39


def test_a_scans_receipts_are_refreshed_reading_only_the_rows_it_needs(ops: Outbound) -> None:
    """The refresh read every row of the queue's index partition, however many."""
    queue = queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE)
    for n in range(60):
        write_dead_letter(queue, letter(messageId=f"m-{n}"), queue_name=queue.queue_name)
    index = DeadLetterIndex.from_settings()
    table = index._table
    read: list[int] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

        def query_entities(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            for row in table.query_entities(*args, **kwargs):
                read.append(1)
                yield row

    index._table = Counting()  # type: ignore[assignment]
    [oldest] = queue.receive_messages(max_messages=1)
    shown = queue.update_message(oldest, content=oldest.content, visibility_timeout=0)
    index.refresh_receipts(queue.queue_name, {str(oldest.id): str(shown.pop_receipt)})

    assert len(read) == 1
    [entry] = index.matching(DeadLetterFilter(queue=queue.queue_name), limit=1)
    assert (entry.queue_message_id, entry.pop_receipt) == (oldest.id, shown.pop_receipt)
