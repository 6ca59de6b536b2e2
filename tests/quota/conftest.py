"""Quota test helpers: a hand-driven clock and store factories for both stores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pytest

from devhost.azurite import Azurite
from shared.quota import InMemoryQuotaStore, QuotaStore, TableQuotaStore

#: A fixed, binary-exact start time, so boundaries in the tests are exact.
T0 = 1_700_000_000.0


class ManualClock:
    """A clock that moves only when told to (or when something sleeps on it)."""

    def __init__(self, start: float = T0) -> None:
        self.time = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.time += max(seconds, 0.0)

    def at(self, offset: float) -> ManualClock:
        """Jump to ``T0 + offset``."""
        self.time = T0 + offset
        return self


class RacingClock(ManualClock):
    """A manual clock that lets a rival write the log between our read and our write.

    The store reads its clock right after reading the log, so ``before_now`` runs
    exactly in the gap a real concurrent writer would use.
    """

    def __init__(self, before_now: Callable[[], object], races: int = 1) -> None:
        super().__init__()
        self.before_now = before_now
        self.races = races

    def now(self) -> float:
        if self.races > 0:
            self.races -= 1
            self.before_now()
        return super().now()


class StoreFactory(Protocol):
    def __call__(
        self,
        *,
        calls: int,
        period: float,
        margin: float = 0.0,
        clock: ManualClock | None = None,
        connection: str = "test-connection",
    ) -> QuotaStore: ...


@pytest.fixture
def table_store(azurite: Azurite, unique_name: str) -> StoreFactory:
    """Makes Table stores on a fresh table; each is a separate 'instance' with its own client."""
    from azure.data.tables import TableClient

    def make(
        *,
        calls: int,
        period: float,
        margin: float = 0.0,
        clock: ManualClock | None = None,
        connection: str = "test-connection",
    ) -> QuotaStore:
        client = TableClient.from_connection_string(azurite.connection_string, unique_name)
        return TableQuotaStore(
            client, connection=connection, calls=calls, period=period, margin=margin, clock=clock
        )

    return make


@pytest.fixture(params=["memory", "table"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Both stores, for tests of the semantics they must share."""
    if request.param == "table":
        factory: StoreFactory = request.getfixturevalue("table_store")
        return factory

    def make(
        *,
        calls: int,
        period: float,
        margin: float = 0.0,
        clock: ManualClock | None = None,
        connection: str = "test-connection",
    ) -> QuotaStore:
        return InMemoryQuotaStore(
            calls=calls, period=period, margin=margin, clock=clock, connection=connection
        )

    return make


class SlowClock(ManualClock):
    """A manual clock on which every reading is ``step`` seconds after the previous one,
    as if each storage round trip took that long."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def now(self) -> float:
        self.time += self.step
        return self.time
