"""Fixtures for the action tests: the real HTTP functions, wired to a sandbox and Azurite.

``app`` points the app's settings at the session's Azurite (the quota store) and at a sandbox
reset before the test, with the static sandbox token and customer ``1001`` as the default.
``call(operationId, ...)`` invokes the decorated function the Functions host would, with a real
``func.HttpRequest``; ``upstream()`` lists what the sandbox received.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import pytest

from sandbox.contract import validate_request
from sandbox.server import SandboxServer
from shared.actions import shared_client
from shared.settings import get_settings, reset_settings_cache
from tests.waiting import MARGIN

CUSTOMER = "1001"
GROUP = "s-1001-group"
IDENTITY = "+358501234567"
CREDENTIAL_SETTINGS = (
    "SMARTDIALOG_CLIENT_ID",
    "SMARTDIALOG_CLIENT_SECRET",
    "SMARTDIALOG_REFRESH_TOKEN",
    "SMARTDIALOG_SCOPES",
)


@dataclass
class Reply:
    """A function's answer, decoded."""

    status: int
    headers: Mapping[str, str]
    body: Any
    raw: bytes

    @property
    def fields(self) -> list[str]:
        """The ``field`` of each entry in a problem document's ``errors``."""
        return [e["field"] for e in self.body.get("errors", [])]


@functools.cache
def registered_functions() -> tuple[Any, ...]:
    """The app's function metadata, indexed once (``get_functions()`` refuses a second call)."""
    from devhost import app_functions
    from function_app import app

    return app_functions(app)


def function(operation_id: str) -> Callable[[func.HttpRequest], func.HttpResponse]:
    """The user function registered under ``operation_id``, as the host finds it."""
    for candidate in registered_functions():
        if candidate.get_function_name() == operation_id:
            user_function: Callable[[func.HttpRequest], func.HttpResponse]
            user_function = candidate.get_user_function()
            return user_function
    raise LookupError(operation_id)


def call(
    operation_id: str,
    *,
    method: str,
    route: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> Reply:
    """Invoke the real function with a real ``func.HttpRequest``; ``body`` may be bytes or JSON."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{operation_id}",
        headers=dict(headers or {}),
        params=dict(params or {}),
        route_params=dict(route or {}),
        body=raw,
    )
    response = function(operation_id)(request)
    content = response.get_body()
    decoded = json.loads(content) if content else None
    return Reply(response.status_code, dict(response.headers), decoded, content)


@dataclass
class App:
    """The wired app: its sandbox, and helpers to inspect what reached it."""

    sandbox: SandboxServer

    def upstream(self) -> list[dict[str, Any]]:
        """Every API request the sandbox received since the test began."""
        requests: list[dict[str, Any]] = self.sandbox.state.snapshot("requests")
        return requests

    def assert_upstream_valid(self) -> list[dict[str, Any]]:
        """Every received request, each checked against SmartDialog's published definition."""
        requests = self.upstream()
        assert requests, "expected an upstream call"
        for entry in requests:
            problems = validate_request(
                entry["method"], entry["path"], entry["headers"], entry["query"], entry["body"]
            )
            assert problems == [], (entry["method"], entry["path"], problems)
        return requests

    def quota_used(self) -> int:
        """Grants in the app's quota window right now (Azurite)."""
        from shared import quota

        return quota.from_settings(get_settings()).used()


def wire(monkeypatch: pytest.MonkeyPatch, server: SandboxServer, **env: str) -> None:
    """Point the app at ``server`` with the static token; ``env`` adds or overrides settings."""
    for name in CREDENTIAL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    settings = {
        "SMARTDIALOG_BASE_URL": server.api_url,
        "SMARTDIALOG_ACCESS_TOKEN": server.token,
        "SMARTDIALOG_CUSTOMER_ID": CUSTOMER,
        "SMARTDIALOG_SERVICE_ID": "",
        "SMARTDIALOG_QUOTA_CALLS": "2000",
        "SMARTDIALOG_QUOTA_WAIT_SECONDS": "0",
        # tests.waiting.MARGIN: a stale grant is answered 429 here (no quota wait to take another).
        "SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS": str(MARGIN),
        **env,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    shared_client.cache_clear()


@pytest.fixture
def app(
    storage_env: str, sandbox_server: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    wire(monkeypatch, sandbox_server)
    yield App(sandbox_server)
    shared_client.cache_clear()
    reset_settings_cache()
