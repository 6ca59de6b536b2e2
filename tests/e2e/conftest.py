"""End-to-end fixtures: the real app in the dev host, Azurite and the sandbox, over real sockets.

``stack`` (module scope) starts one :class:`SandboxServer` and one :class:`DevHost` serving the
real ``function_app`` (its own ``host.json``, with the queue timings shortened so retries and
poison moves take about a second), wired to the session's Azurite through the environment exactly
as ``make run`` wires the processes. Tests talk to it only over HTTP and through Azurite's queues
and tables, as a user would. Every wait is a poll with a deadline (:func:`poll`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from devhost import DevHost, load_app, load_host_json
from devhost.azurite import Azurite
from sandbox.server import SandboxServer
from shared.names import QUEUES, poison_queue
from shared.outbound import reset_sender_cache
from shared.settings import reset_settings_cache
from tests.waiting import MARGIN, wait_for

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CUSTOMER = "1001"
ONE_WAY_SERVICE = "s-1001-oneway"
TWO_WAY_SERVICE = "s-1001-twoway"
GROUP_SERVICE = "s-1001-group"
DELIVERED_NUMBER = "+358400000001"
CALLBACK_SECRET = "e2e-callback-secret-of-at-least-32-bytes"
#: Queue timings for tests: a failed message is visible again after 1 s, 3 attempts, 100 ms polls.
VISIBILITY_TIMEOUT = 1.0
MAX_DEQUEUE_COUNT = 3
# Settings a developer's shell might carry that would point the app elsewhere.
_FOREIGN_SETTINGS = (
    "SMARTDIALOG_CLIENT_ID",
    "SMARTDIALOG_CLIENT_SECRET",
    "SMARTDIALOG_REFRESH_TOKEN",
    "SMARTDIALOG_SCOPES",
    "SMARTDIALOG_AUTHORITY",
)


def poll(probe: Callable[[], T | None], *, timeout: float = 15.0, what: str) -> T:
    """Call ``probe`` until it returns something truthy; fail the test after ``timeout`` s."""
    return wait_for(probe, timeout, what)


@dataclass
class Stack:
    """The running pieces and clients for them."""

    host: DevHost
    sandbox: SandboxServer
    storage: str
    http: httpx.Client

    @property
    def api(self) -> str:
        """The app's HTTP API base, e.g. ``http://127.0.0.1:PORT/api``."""
        return f"{self.host.url}/api"

    def queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.storage, name)

    def peek(self, name: str) -> list[str]:
        """Texts of up to 32 visible messages of queue ``name`` (none if it does not exist)."""
        try:
            return [m.content for m in self.queue(name).peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return []

    def sandbox_get(self, path: str) -> Any:
        response = self.http.get(f"{self.sandbox.url}{path}")
        response.raise_for_status()
        return response.json()

    def has_function(self, name: str) -> bool:
        return any(spec.name == name for spec in self.host.functions)


def _clear_queues(storage: str) -> None:
    for name in (*QUEUES, *(poison_queue(q) for q in QUEUES)):
        with contextlib.suppress(ResourceNotFoundError):
            QueueClient.from_connection_string(storage, name).clear_messages()


@pytest.fixture(scope="module")
def stack(azurite: Azurite) -> Iterator[Stack]:
    """The sandbox and the dev host with the real app, for one test module."""
    sandbox = SandboxServer(dlr_delay=0.05, slow_seconds=0.3).start()
    options = load_host_json(REPO / "host.json")
    options = dataclasses.replace(
        options,
        queues=dataclasses.replace(
            options.queues,
            max_polling_interval=0.1,
            visibility_timeout=VISIBILITY_TIMEOUT,
            max_dequeue_count=MAX_DEQUEUE_COUNT,
        ),
    )
    _clear_queues(azurite.connection_string)
    app = load_app("function_app:app", REPO)
    with pytest.MonkeyPatch.context() as env:
        for name in _FOREIGN_SETTINGS:
            env.delenv(name, raising=False)
        env.setenv("AzureWebJobsStorage", azurite.connection_string)
        env.setenv("SMARTDIALOG_BASE_URL", sandbox.api_url)
        env.setenv("SMARTDIALOG_ACCESS_TOKEN", sandbox.token)
        env.setenv("SMARTDIALOG_CUSTOMER_ID", CUSTOMER)
        env.setenv("SMARTDIALOG_SERVICE_ID", ONE_WAY_SERVICE)
        env.setenv("SMARTDIALOG_CALLBACK_SECRETS", CALLBACK_SECRET)
        env.setenv("SMARTDIALOG_SEND_RETRY_BASE_SECONDS", "0.5")
        env.setenv("SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", str(MARGIN))
        env.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Development")  # as make run says
        # The host binds in its constructor, so its public URL is known before any request
        # reads the settings (they are read on first use).
        host = DevHost(
            app,
            options,
            port=0,
            function_directory=REPO,
            environ={"AzureWebJobsStorage": azurite.connection_string},
            access_log_enabled=False,
        )
        env.setenv("SMARTDIALOG_PUBLIC_BASE_URL", host.url)
        reset_settings_cache()
        reset_sender_cache()
        host.start()
        try:
            with httpx.Client(timeout=15, trust_env=False) as http:
                yield Stack(host, sandbox, azurite.connection_string, http)
        finally:
            host.stop(grace=5)
            sandbox.stop()
            reset_settings_cache()
            reset_sender_cache()
