"""A sync action's quota grant must still be fresh when its request leaves.

A slow connect (DNS, TCP and TLS to a far host, or a pool wait) between the grant and the
request's first byte ages the grant past half the safety margin. Before, the sync actions'
client had no ``before_send`` check: the request went out with the stale grant, and a grant
taken one window after it on a warm connection reached SmartDialog at once: ``calls + 1``
calls in one period, which the sandbox (an exact sliding window on arrival) answered 429.
Now a stale grant is replaced once within ``SMARTDIALOG_QUOTA_WAIT_SECONDS``, else the action
answers our quota-full 429 with ``Retry-After`` and sends nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import pytest

from sandbox.server import SandboxServer
from shared.actions import shared_client
from shared.settings import get_settings
from tests.actions.conftest import call, wire
from tests.waiting import TIGHT_MARGIN


class SlowFirstConnect(httpcore.NetworkBackend):
    """The real backend, its first connect taking ``seconds`` (a cold connection)."""

    def __init__(self, inner: httpcore.NetworkBackend, seconds: float) -> None:
        self.inner = inner
        self.delays = [seconds]

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if self.delays:
            time.sleep(self.delays.pop())
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def slow_first_connect(seconds: float) -> None:
    """Make the sync actions' client's first connection take ``seconds`` to open."""
    pool: Any = shared_client(get_settings())._http._transport._pool  # type: ignore[attr-defined]
    pool._network_backend = SlowFirstConnect(pool._network_backend, seconds)


def test_a_grant_gone_stale_on_a_slow_connect_is_replaced_so_upstream_never_sees_one_too_many(
    storage_env: str,
    sandbox_factory: Callable[..., SandboxServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SmartDialog and our quota: 1 call per 1 s (margin 0.25 s): the reviewer's sequence.
    server = sandbox_factory(quota_calls=1, quota_period=1.0)
    wire(
        monkeypatch,
        server,
        SMARTDIALOG_QUOTA_CALLS="1",
        SMARTDIALOG_QUOTA_PERIOD_SECONDS="1",
        SMARTDIALOG_QUOTA_WAIT_SECONDS="5",
        SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS=str(TIGHT_MARGIN),
    )
    slow_first_connect(0.4)  # past half the margin

    first = call("GetPhoneNumberRegions", method="GET")  # its grant goes stale while connecting
    second = call("GetWhatsappTemplateCategories", method="GET")  # a warm connection

    assert (first.status, second.status) == (200, 200)  # before: 200, then upstream's 429
    assert [r["status"] for r in server.state.snapshot("requests")] == [200, 200]


def test_a_stale_grant_with_no_slot_to_replace_it_is_our_429_and_nothing_is_sent(
    storage_env: str,
    sandbox_factory: Callable[..., SandboxServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = sandbox_factory()  # its own URL: a quota log of its own
    wire(monkeypatch, server, SMARTDIALOG_QUOTA_CALLS="1", SMARTDIALOG_QUOTA_PERIOD_SECONDS="60",
         SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS=str(TIGHT_MARGIN))  # fmt: skip
    slow_first_connect(0.4)

    reply = call("GetPhoneNumberRegions", method="GET")

    assert reply.status == 429
    assert reply.body["type"] == "urn:smartdialog-functions:problem:rate-limited"
    assert 55 <= int(reply.headers["Retry-After"]) <= 61
    assert server.state.snapshot("requests") == []  # the stale grant carried nothing
