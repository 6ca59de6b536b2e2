"""The fuzz stack: the real app in the dev host, Azurite and the sandbox over real sockets, with
every URL we hand the app pinned to a loopback receiver.

``fuzz_stack`` (module scope) is the e2e stack with quotas out of the way (the fuzz is about
answers, not throttling: a quota wait would only slow it down) and a :class:`Receiver` on
127.0.0.1 that answers 200 to anything, so delivery-report forwarding and New Message
subscribers never reach beyond this machine. ``FuzzBudget`` spreads a time budget over the
fuzz tests, so the whole fuzz stays bounded however slow the machine is.

Knobs (environment): ``FUZZ_EXAMPLES`` (default 8) scales every fuzz test's example count (the
deep fuzzers, ``test_send_fuzz``, ``test_queue_fuzz`` and ``test_webhook_fuzz``, run a multiple of
it: ``FUZZ_EXAMPLES=500`` for a long local hunt); ``FUZZ_BUDGET_SECONDS`` (default 75) bounds the
schemathesis and callback fuzz. Every run is derandomized: the same examples each time.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings

from devhost import DevHost, load_app, load_host_json
from devhost.azurite import Azurite
from sandbox.server import SandboxServer
from shared.outbound import reset_sender_cache
from shared.settings import reset_settings_cache
from tests.e2e.conftest import (
    _FOREIGN_SETTINGS,
    CALLBACK_SECRET,
    CUSTOMER,
    MAX_DEQUEUE_COUNT,
    ONE_WAY_SERVICE,
    REPO,
    VISIBILITY_TIMEOUT,
    _clear_queues,
)
from tests.waiting import MARGIN

#: Examples per operation and generation mode (``FUZZ_EXAMPLES`` overrides).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
#: Seconds the whole fuzz may take before the remaining tests shrink to one example each.
BUDGET_SECONDS = float(os.environ.get("FUZZ_BUDGET_SECONDS", "75"))
#: Longest a single request may take: longer counts as a hang.
REQUEST_TIMEOUT = 10.0


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        self.server.calls += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class FuzzStack:
    host: DevHost
    sandbox: SandboxServer
    receiver_url: str
    http: httpx.Client
    storage: str

    @property
    def api(self) -> str:
        return f"{self.host.url}/api"


@dataclass
class FuzzBudget:
    """How many examples the next fuzz test may run, given the time left."""

    started: float = dataclasses.field(default_factory=time.monotonic)

    def examples(self) -> int:
        left = BUDGET_SECONDS - (time.monotonic() - self.started)
        return EXAMPLES if left > 0 else 1


@pytest.fixture(scope="session")
def fuzz_budget() -> FuzzBudget:
    return FuzzBudget()


@pytest.fixture(scope="module")
def fuzz_stack(azurite: Azurite) -> Iterator[FuzzStack]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    httpd.daemon_threads = True
    httpd.calls = 0  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sandbox = SandboxServer(dlr_delay=0.05, slow_seconds=0.3, quota_calls=1_000_000).start()
    options = load_host_json(REPO / "host.json")
    options = dataclasses.replace(
        options,
        queues=dataclasses.replace(
            options.queues,
            max_polling_interval=0.2,
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
        # Retries (the sandbox's 429 and 500 recipients) end within seconds, not minutes.
        env.setenv("SMARTDIALOG_SEND_RETRY_MAX_SECONDS", "1")
        env.setenv("SMARTDIALOG_SEND_MAX_ATTEMPTS", "5")
        # A copy deferred behind another worker's claim comes back in seconds, not 2 minutes.
        env.setenv("SMARTDIALOG_SEND_TIMEOUT_SECONDS", "3")
        env.setenv("SMARTDIALOG_SEND_LEASE_SECONDS", "6")
        env.setenv("SMARTDIALOG_QUOTA_CALLS", "2000")
        env.setenv("SMARTDIALOG_QUOTA_WAIT_SECONDS", "0")
        env.setenv("SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", str(MARGIN))
        env.setenv("SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS", "0.5")
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
            with httpx.Client(timeout=REQUEST_TIMEOUT, trust_env=False) as http:
                receiver = f"http://127.0.0.1:{httpd.server_address[1]}"
                yield FuzzStack(host, sandbox, receiver, http, azurite.connection_string)
        finally:
            host.stop(grace=5)
            sandbox.stop()
            httpd.shutdown()
            httpd.server_close()
            reset_settings_cache()
            reset_sender_cache()


def poison_messages(storage: str) -> dict[str, list[str]]:
    """The texts on every ``-poison`` queue of the app (the host's give-up pile)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    from shared.names import QUEUES, poison_queue

    found: dict[str, list[str]] = {}
    for name in (poison_queue(q) for q in QUEUES):
        try:
            queue = QueueClient.from_connection_string(storage, name)
            texts = [m.content[:300] for m in queue.peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            continue
        if texts:
            found[name] = texts
    return found


def settle(storage: str, queue: str, seconds: float = 20.0) -> None:
    """Wait (bounded) until ``queue`` is empty, visible or not: its trigger has run on all."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    deadline = time.monotonic() + seconds
    client = QueueClient.from_connection_string(storage, queue)
    while time.monotonic() < deadline:
        try:
            if not client.get_queue_properties().approximate_message_count:
                return
        except ResourceNotFoundError:
            return
        time.sleep(0.2)


def deep_settings(examples: int) -> settings:
    """Hypothesis settings of a deep fuzzer: ``examples`` examples, derandomized (a fixed seed:
    the same examples every run), no database, no shrinking (each example costs real calls)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def field_errors(answer: httpx.Response) -> list[str]:
    """The ``field`` of each error of a problem answer (none if it is no problem document)."""
    try:
        errors = answer.json().get("errors") or []
    except (ValueError, AttributeError):
        return []
    return [str(e.get("field")) for e in errors if isinstance(e, dict) and e.get("field")]


def final_event_subjects(events: list[dict[str, Any]]) -> set[str]:
    """The messages that have a final lifecycle event (sent, failed or cancelled) in ``events``."""
    from shared.events import MESSAGE_CANCELLED, MESSAGE_FAILED, MESSAGE_SENT

    final = {MESSAGE_SENT, MESSAGE_FAILED, MESSAGE_CANCELLED}
    return {str(e.get("subject")) for e in events if e.get("type") in final}
