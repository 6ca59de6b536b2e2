"""The fast path: a store decides on the log it last wrote or read and writes it back at once.

Storage round trips are counted on the wire (an azure-core request hook on each store's own
client), so "one round trip" means one HTTP request to Azurite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pytest
from azure.core.pipeline import PipelineRequest

from devhost.azurite import Azurite
from shared.quota import DenialReason, InMemoryQuotaStore, QuotaDenied, QuotaGrant, TableQuotaStore
from tests.quota.conftest import ManualClock


@dataclass
class Wire:
    """The requests one store's table client sent, as ``"METHOD"`` strings."""

    sent: list[str] = field(default_factory=list)

    def hook(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        self.sent.append(request.http_request.method)

    def take(self) -> list[str]:
        """The requests since the last call, and forget them."""
        taken, self.sent = self.sent, []
        return taken


@dataclass
class Instance:
    store: TableQuotaStore
    wire: Wire
    clock: ManualClock


class MakeInstance(Protocol):
    def __call__(self, calls: int, period: float = 60.0, offset: float = 0.0) -> Instance: ...


@pytest.fixture
def instance(azurite: Azurite, unique_name: str) -> Iterator[MakeInstance]:
    """Makes a store with its own client and clock on one fresh table, counting its requests."""
    from azure.data.tables import TableClient

    made: list[TableClient] = []

    def make(calls: int, period: float = 60.0, offset: float = 0.0) -> Instance:
        wire = Wire()
        client = TableClient.from_connection_string(
            azurite.connection_string, unique_name, raw_request_hook=wire.hook
        )
        made.append(client)
        clock = ManualClock().at(offset)
        store = TableQuotaStore(
            client, connection="test-connection", calls=calls, period=period, clock=clock
        )
        return Instance(store, wire, clock)

    yield make
    for client in made:
        client.close()


def grant(result: QuotaGrant | QuotaDenied) -> QuotaGrant:
    assert isinstance(result, QuotaGrant), result
    return result


def test_an_uncontended_grant_is_one_storage_round_trip(instance: MakeInstance) -> None:
    one = instance(calls=50)
    grant(one.store.try_acquire())  # first use: create the table, read (none), create
    assert one.wire.take() == ["POST", "GET", "POST"]

    for step in range(1, 11):
        one.clock.at(step * 0.1)
        granted = grant(one.store.try_acquire())
        assert one.wire.take() == ["PUT"]  # the compare-and-swap write alone, no read
        assert (granted.attempts, granted.in_window) == (1, step + 1)

    stats = one.store.stats()
    assert (stats.grants, stats.fast_grants, stats.cas_conflicts, stats.stale_cache) == (
        11,
        10,
        0,
        0,
    )
    assert one.store.used() == 11


def test_after_another_store_wrote_the_stale_write_is_refused_and_decided_again(
    instance: MakeInstance,
) -> None:
    first = instance(calls=5)
    second = instance(calls=5, offset=0.5)
    grant(first.store.try_acquire())
    grant(second.store.try_acquire())  # the entity moved on behind first's back
    first.wire.take()

    first.clock.at(1)
    granted = grant(first.store.try_acquire())

    # The write from memory meets a 412, then the ordinary read and write.
    assert first.wire.take() == ["PUT", "GET", "PUT"]
    assert (granted.attempts, granted.in_window) == (2, 3)  # second's grant was counted
    stats = first.store.stats()
    assert (stats.stale_cache, stats.cas_conflicts) == (1, 1)

    # Another writer is active: read first until the log is seen unchanged since our write,
    first.clock.at(2)
    grant(first.store.try_acquire())
    assert first.wire.take() == ["GET", "PUT"]
    # then one round trip again.
    first.clock.at(3)
    grant(first.store.try_acquire())
    assert first.wire.take() == ["PUT"]
    assert first.store.used() == second.store.used() == 5


def test_a_stale_log_in_memory_never_admits_past_the_limit(instance: MakeInstance) -> None:
    first = instance(calls=2)
    second = instance(calls=2, offset=0.5)
    grant(first.store.try_acquire())  # first remembers a log of one grant
    grant(second.store.try_acquire())  # ... but the stored log is now full

    first.clock.at(1)
    refused = first.store.try_acquire()

    assert isinstance(refused, QuotaDenied)
    assert refused.reason is DenialReason.FULL
    assert refused.in_window == 2
    assert refused.retry_after == pytest.approx(59, abs=0.01)
    assert first.store.used() == 2


def test_a_log_full_in_memory_is_checked_in_storage_before_refusing(
    instance: MakeInstance,
) -> None:
    one = instance(calls=2)
    grant(one.store.try_acquire())
    one.clock.at(1)
    grant(one.store.try_acquire())
    one.wire.take()

    one.clock.at(2)
    refused = one.store.try_acquire()

    assert isinstance(refused, QuotaDenied)
    assert refused.reason is DenialReason.FULL
    assert one.wire.take() == ["GET"]  # decided on what storage says; nothing written


def test_a_grant_from_memory_still_follows_the_late_rule() -> None:
    from tests.quota.conftest import SlowClock

    clock = SlowClock(step=0.0)
    store = InMemoryQuotaStore(calls=5, period=10, margin=0.1, clock=clock)
    grant(store.try_acquire())  # now the store has the log in memory

    clock.step = 0.2  # every clock reading is 0.2 s after the last: the write "took" that long
    late = store.try_acquire()

    assert isinstance(late, QuotaDenied)
    assert late.reason is DenialReason.LATE
    assert store.stats().fast_grants == 0
    assert store.used() == 1  # the late grant was taken out of the log again


def test_the_in_memory_store_takes_the_fast_path_too() -> None:
    clock = ManualClock()
    store = InMemoryQuotaStore(calls=3, period=10, clock=clock)
    for step in range(3):
        clock.at(step)
        grant(store.try_acquire())

    assert store.stats().fast_grants == 2
