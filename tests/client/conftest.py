"""Fixtures for the SmartDialog client tests: a sandbox on a free port and clients wired to it.

Every request a client built here sends is captured (``captured``) through an httpx event hook, so
tests can check it against the published definition with ``sandbox.contract.validate_request``.
Sleeps are recorded instead of slept (``sleeps``), so retry tests run in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sandbox.server import SandboxServer
from shared.smartdialog import AuthProvider, SmartDialogClient, StaticTokenAuth

SLOW_SECONDS = 0.3


@dataclass
class SentRequest:
    """One request as the client put it on the wire."""

    method: str
    raw_path: str  # percent-encoded, with the query string
    headers: dict[str, str]
    body: Any

    @property
    def request_id(self) -> str | None:
        return self.body.get("RequestId") if isinstance(self.body, dict) else None


@pytest.fixture(scope="session")
def sd_server() -> Iterator[SandboxServer]:
    server = SandboxServer(host="127.0.0.1", port=0, dlr_delay=0.05, slow_seconds=SLOW_SECONDS)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sd(sd_server: SandboxServer) -> SandboxServer:
    """The shared sandbox, reset to its seed (quota log, RequestIds, contacts, logs)."""
    sd_server.reset()
    return sd_server


@pytest.fixture
def captured() -> list[SentRequest]:
    return []


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(
    sd: SandboxServer, captured: list[SentRequest], sleeps: list[float]
) -> Iterator[Callable[..., SmartDialogClient]]:
    """``make_client(**options)``: a client for the sandbox; options override the defaults."""
    made: list[tuple[SmartDialogClient, httpx.Client]] = []

    def record(request: httpx.Request) -> None:
        content = request.content
        body: Any = json.loads(content) if content else None
        captured.append(
            SentRequest(
                request.method, request.url.raw_path.decode("ascii"), dict(request.headers), body
            )
        )

    def make(
        *,
        auth: AuthProvider | None = None,
        base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = 5.0,
        **options: Any,
    ) -> SmartDialogClient:
        http = httpx.Client(timeout=timeout, transport=transport, event_hooks={"request": [record]})
        options.setdefault("sleep", sleeps.append)
        client = SmartDialogClient(
            base_url or sd.api_url,
            auth or StaticTokenAuth(sd.token),
            http_client=http,
            **options,
        )
        made.append((client, http))
        return client

    yield make
    for client, http in made:
        client.close()
        http.close()


def sandbox_requests(
    server: SandboxServer, operation_id: str | None = None
) -> list[dict[str, Any]]:
    """The sandbox's request log (API and token calls), optionally for one operation."""
    entries: list[dict[str, Any]] = httpx.get(
        server.url + "/sandbox/requests",
        params={"operationId": operation_id} if operation_id else None,
    ).json()
    return entries
