"""The sync actions' process-wide client: one per settings object, never silently dropped,
and closed (connection pool included) when the cache is cleared."""

from __future__ import annotations

import pytest

from shared.actions import shared_client
from shared.settings import Settings, get_settings
from tests.actions.conftest import App


def test_one_client_per_settings_and_clearing_closes_it(app: App) -> None:
    settings = get_settings()
    client = shared_client(settings)
    assert shared_client(settings) is client
    shared_client.cache_clear()
    assert client._http.is_closed
    assert shared_client(settings) is not client


def test_many_settings_objects_evict_nothing(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    # lru_cache(maxsize=2) dropped the first client here without closing its pool.
    made = [
        shared_client(Settings(SMARTDIALOG_QUOTA_WAIT_SECONDS=float(n)))  # type: ignore[call-arg]
        for n in range(4)
    ]
    assert all(not client._http.is_closed for client in made)
    again = shared_client(Settings(SMARTDIALOG_QUOTA_WAIT_SECONDS=0.0))  # type: ignore[call-arg]
    assert again is made[0]
    info = shared_client.cache_info()
    assert (info.currsize, info.hits, info.misses) == (4, 1, 4)
    shared_client.cache_clear()
    assert all(client._http.is_closed for client in made)


def test_an_actions_quota_wait_is_at_most_half_its_deadline(app: App) -> None:
    """A longer SMARTDIALOG_QUOTA_WAIT_SECONDS took its slot after the 120 s the call has in
    all, only to answer 504; it is taken as 60, and a shorter one as it is."""
    from shared.actions._pipeline import SYNC_DEADLINE_SECONDS

    waits = {}
    for given in (600.0, 7.0):
        client = shared_client(Settings(SMARTDIALOG_QUOTA_WAIT_SECONDS=given))  # type: ignore[call-arg]
        waits[given] = client._before_attempt._wait  # type: ignore[union-attr]
    assert waits == {600.0: SYNC_DEADLINE_SECONDS / 2, 7.0: 7.0}
