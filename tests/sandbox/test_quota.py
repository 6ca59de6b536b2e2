"""The sliding-window quota: exact, per connection, with Retry-After."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandbox.quota import SlidingWindowQuota
from sandbox.server import SandboxServer
from tests.sandbox.helpers import ERROR, SEND_HEADERS, client, http, sms


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_window_admits_exactly_the_limit_and_frees_slots_one_period_later(clock: FakeClock) -> None:
    quota = SlidingWindowQuota(calls=3, period=10.0, clock=clock)
    for offset in (0.0, 1.0, 2.0):
        clock.now = 1000.0 + offset
        assert quota.acquire("c") is None
    clock.now = 1002.5
    assert quota.acquire("c") == 8  # ceil(1000 + 10 - 1002.5)
    clock.now = 1009.99
    assert quota.acquire("c") == 1
    clock.now = 1010.0  # the call at t=1000 leaves the window [1000, 1010)
    assert quota.acquire("c") is None
    assert quota.acquire("c") == 1  # next slot frees at 1011


def test_rejected_calls_take_no_slot(clock: FakeClock) -> None:
    quota = SlidingWindowQuota(calls=1, period=5.0, clock=clock)
    assert quota.acquire("c") is None
    for _ in range(10):
        clock.now += 0.4
        assert quota.acquire("c") is not None
    clock.now = 1005.0
    assert quota.acquire("c") is None
    assert quota.used("c") == 1


def test_connections_have_separate_windows_and_zero_disables(clock: FakeClock) -> None:
    quota = SlidingWindowQuota(calls=1, period=5.0, clock=clock)
    assert quota.acquire("a") is None
    assert quota.acquire("b") is None
    assert quota.acquire("a") == 5
    unlimited = SlidingWindowQuota(calls=0, period=5.0, clock=clock)
    assert all(unlimited.acquire("a") is None for _ in range(1000))


def test_over_quota_api_call_is_429_with_retry_after(
    sandbox_factory: Callable[..., SandboxServer], clock: FakeClock
) -> None:
    server = sandbox_factory(quota_calls=2, quota_period=60.0, clock=clock)
    with client(server) as api:
        assert api.get("/customers").status_code == 200
        clock.now += 30.2
        assert api.get("/phonenumberregions").status_code == 200
        clock.now += 0.1
        refused = api.get("/customers")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "30"  # ceil(1000 + 60 - 1030.3) = ceil(29.7)
        assert "60 seconds" in refused.json()["errorMessage"]
        clock.now = 1060.0
        assert api.get("/customers").status_code == 200


def test_every_admitted_call_counts_including_errors_but_not_unauthenticated_ones(
    sandbox_factory: Callable[..., SandboxServer], clock: FakeClock
) -> None:
    server = sandbox_factory(quota_calls=3, quota_period=60.0, clock=clock)
    with client(server) as api, client(server, token="wrong") as stranger:
        assert stranger.get("/customers").status_code == 401  # no connection: not counted
        assert api.post("/messages", headers=SEND_HEADERS, json=sms(ERROR)).status_code == 500
        assert api.post("/messages", headers={}, json=sms(ERROR)).status_code == 400
        assert api.get("/customers").status_code == 200
        assert api.get("/customers").status_code == 429


def test_each_token_subject_is_its_own_connection(
    sandbox_factory: Callable[..., SandboxServer], clock: FakeClock
) -> None:
    server = sandbox_factory(quota_calls=1, quota_period=60.0, clock=clock)
    token = http.post(
        f"{server.authority}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
        },
    ).json()["access_token"]
    with client(server) as static, client(server, token) as issued:
        assert static.get("/customers").status_code == 200
        assert issued.get("/customers").status_code == 200
        assert static.get("/customers").status_code == 429
        assert issued.get("/customers").status_code == 429


def test_reset_clears_the_quota_log(
    sandbox_factory: Callable[..., SandboxServer], clock: FakeClock
) -> None:
    server = sandbox_factory(quota_calls=1, quota_period=60.0, clock=clock)
    with client(server) as api:
        assert api.get("/customers").status_code == 200
        assert api.get("/customers").status_code == 429
        assert http.post(f"{server.url}/sandbox/reset").status_code == 200
        assert api.get("/customers").status_code == 200
