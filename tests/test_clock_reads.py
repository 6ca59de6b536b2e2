"""Times the app makes up when it is given none come from the app's clock (shared.clock), so a
test's manual clock and the code agree: an event's time, a dead letter's, a pack's and a poison
message's when their rows or messages lack one, and the latest birth year a contact may have."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from azure.storage.queue import QueueMessage
from pydantic import BaseModel, ValidationError

from shared import clock
from shared.actions.contacts import NewGroupContactBody
from shared.deadletters import DeadLetterIndex, _entry
from shared.events import make_event
from shared.messages import Pack
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE, poison_queue
from shared.ops._poison import poison_view

THEN = dt.datetime(2001, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def then() -> Iterator[clock.ManualClock]:
    """The app's clock stopped at :data:`THEN`, years before the system clock."""
    with clock.use(clock.ManualClock(THEN.timestamp())) as installed:
        assert isinstance(installed, clock.ManualClock)
        yield installed


class _Data(BaseModel):
    n: int = 1


def test_an_event_given_no_time_has_the_clocks(then: clock.ManualClock) -> None:
    assert make_event("t.test", _Data(), event_id="e-1", subject="s").time == THEN


def test_a_dead_letter_indexed_with_no_time_has_the_clocks(
    storage_env: str, then: clock.ManualClock
) -> None:
    entry = DeadLetterIndex.from_settings().begin(OUTBOUND_DEAD_LETTER_QUEUE, "{}")
    assert entry.dead_lettered_at == THEN
    assert _entry({"PartitionKey": OUTBOUND_DEAD_LETTER_QUEUE, "RowKey": "r"}).dead_lettered_at == (
        THEN
    )


def test_a_pack_row_with_no_creation_time_has_the_clocks(then: clock.ManualClock) -> None:
    assert Pack.from_entity({"PartitionKey": "p-1"}).created_at == THEN


def test_a_poison_message_with_no_insertion_time_has_the_clocks(then: clock.ManualClock) -> None:
    message = QueueMessage(content="{}")
    message.id = "q-1"
    assert poison_view(poison_queue(OUTBOUND_QUEUE), message).dead_lettered_at == THEN


def test_the_latest_birth_year_is_the_clocks_year(then: clock.ManualClock) -> None:
    assert NewGroupContactBody(phone="+358401234567", birthYear=2001).birthYear == 2001
    with pytest.raises(ValidationError, match="between 1900 and 2001"):
        NewGroupContactBody(phone="+358401234567", birthYear=2002)
