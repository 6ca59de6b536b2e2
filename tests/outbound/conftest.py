"""Fixtures for the outbound tests: Azurite, a sandbox, and the real queue-trigger function.

``outbound`` wires the app's settings to the session's Azurite and to a sandbox (reset before
each test), empties the app's queues, and offers helpers that play the Functions host: take a
message from ``smartdialog-outbound``, invoke the real ``OutboundSender`` function with a real
``func.QueueMessage``, delete it on success.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

from devhost.azurite import Azurite
from sandbox.server import SandboxServer
from shared.names import EVENTS_QUEUE, OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
from shared.outbound import reset_sender_cache
from shared.settings import reset_settings_cache
from shared.storage import queue_client
from tests.waiting import MARGIN, PATIENCE

CUSTOMER = "1001"
SERVICE = "s-1001-oneway"
REPLY_SERVICE = "s-1001-reply"
DELIVERED = "+358400000001"
REJECTED = "+358400000002"
UNDELIVERABLE = "+358400000003"
TEMPORARY = "+358400000004"
THROTTLED = "+358400000005"
ERROR = "+358400000006"
SLOW = "+358400000007"
SECRET = "test-callback-secret-of-at-least-32-bytes"


def sms(*addresses: str, content: str = "Hello $(name)", **extra: Any) -> dict[str, Any]:
    """A SendMessage body (PascalCase, as upstream and our actions take it)."""
    return {
        "Sender": "Sandbox",
        "Content": content,
        "Protocol": "SMS",
        "Recipients": [{"Address": a, "Personalization": {"name": "Ada"}} for a in addresses],
        **extra,
    }


def fresh_number() -> str:
    """A number no other test uses (not a sandbox magic one)."""
    return f"+35841{random.randrange(10**6, 10**7)}"


def opt_out(phone: str, service: str = SERVICE) -> None:
    """``phone`` texts STOP to ``service`` (as the inbound processor records it)."""
    from shared.suppressions import SuppressionStore

    SuppressionStore.from_settings().add(
        service, phone, keyword="STOP", source="inbound", now=dt.datetime.now(dt.UTC)
    )


def padding(text: str) -> dict[str, str]:
    """``text`` cut into placeholder values that no Content uses, each within the cap: a send
    as large as ``text``, whose Content and values the send actions still accept."""
    from shared.outbound import MAX_CONTENT_CHARS

    cuts = range(0, len(text), MAX_CONTENT_CHARS)
    return {f"pad{i}": text[at : at + MAX_CONTENT_CHARS] for i, at in enumerate(cuts)}


@functools.cache
def _app_functions() -> dict[str, Callable[..., Any]]:
    from devhost import app_functions
    from function_app import app

    return {f.get_function_name(): f.get_user_function() for f in app_functions(app)}


def app_function(name: str) -> Callable[..., Any]:
    """A function of the real app by name, as the host finds it in the app's metadata."""
    functions = _app_functions()
    assert name in functions, f"{name} is not registered"
    return functions[name]


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any


def call_http(
    name: str,
    method: str,
    *,
    route_params: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> HttpAnswer:
    """Invoke the app's HTTP function ``name`` with a real ``func.HttpRequest``."""
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{name}",
        headers=headers or {},
        params=params or {},
        route_params=route_params or {},
        body=raw,
    )
    response = app_function(name)(request)
    content = response.get_body()
    return HttpAnswer(
        response.status_code,
        dict(response.headers),
        json.loads(content) if content else None,
    )


def status_of(location: str) -> HttpAnswer:
    """GET a status URL (a send's Location) through the real GetMessageStatus function."""
    parts = urlsplit(location)
    message_id = unquote(parts.path.rsplit("/", 1)[-1])
    return call_http(
        "GetMessageStatus",
        "GET",
        route_params={"MessageId": message_id},
        params=dict(parse_qsl(parts.query)),
    )


def sender_function() -> Callable[[func.QueueMessage], None]:
    """The real queue-trigger function, as the host finds it in the app's metadata."""
    return app_function("OutboundSender")


@dataclass
class Outbound:
    """The wired environment of one test."""

    sandbox: SandboxServer
    monkeypatch: pytest.MonkeyPatch
    invocations: int = 0
    outcomes: list[str] = field(default_factory=list)

    def configure(self, **settings: Any) -> None:
        """Set app settings (names without the SMARTDIALOG_ prefix) and forget cached ones."""
        for name, value in settings.items():
            self.monkeypatch.setenv(f"SMARTDIALOG_{name}", str(value))
        reset_settings_cache()
        reset_sender_cache()

    def enqueue(self, message: dict[str, Any] | str, *, visibility: int = 0) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        queue_client(OUTBOUND_QUEUE).send_message(text, visibility_timeout=visibility)

    def invoke(self, text: str, *, message_id: str | None = None, dequeue_count: int = 1) -> None:
        """Invoke the real function once with ``text`` as a queue message."""
        message = QueueMessage(
            id=message_id or str(uuid.uuid4()), body=text.encode(), dequeue_count=dequeue_count
        )
        self.invocations += 1
        sender_function()(message)

    def run_once(self, *, visibility: int = 30, limit: int | None = None) -> int:
        """One host poll: invoke the function for every visible message (at most ``limit``),
        delete the ones that returned normally. Returns how many were taken."""
        queue = queue_client(OUTBOUND_QUEUE)
        taken = list(
            queue.receive_messages(
                messages_per_page=min(16, limit or 16),
                visibility_timeout=visibility,
                max_messages=limit,
            )
        )
        for message in taken:
            self.invoke(message.content, message_id=message.id, dequeue_count=message.dequeue_count)
            queue.delete_message(message)
        return len(taken)

    def drain(self, timeout: float = PATIENCE) -> None:
        """Run the sender until the outbound queue is empty, visible or not (the deadline only
        bounds a failing run)."""
        deadline = time.monotonic() + timeout
        queue = queue_client(OUTBOUND_QUEUE)
        while time.monotonic() < deadline:
            if self.run_once() == 0:
                if queue.get_queue_properties().approximate_message_count == 0:
                    return
                time.sleep(0.1)
        raise AssertionError(f"the outbound queue did not drain within {timeout} s")

    def queued(self, queue: str = OUTBOUND_QUEUE) -> int:
        """Messages on ``queue``, visible or not."""
        return int(queue_client(queue).get_queue_properties().approximate_message_count)

    def read(self, queue: str) -> list[dict[str, Any]]:
        """Every visible message of ``queue`` as JSON (they stay on the queue)."""
        return [json.loads(m.content) for m in queue_client(queue).peek_messages(max_messages=32)]

    def events(self) -> list[dict[str, Any]]:
        return self.read(EVENTS_QUEUE)

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.read(OUTBOUND_DEAD_LETTER_QUEUE)

    def upstream(self, operation: str = "SendMessage") -> list[dict[str, Any]]:
        """Requests the sandbox received for ``operation``."""
        return [
            r for r in self.sandbox.state.snapshot("requests") if r.get("operationId") == operation
        ]


@pytest.fixture(scope="session")
def outbound_sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(dlr_delay=0.05, slow_seconds=1.0).start()
    yield server
    server.stop()


def _wire(monkeypatch: pytest.MonkeyPatch, azurite: Azurite, server: SandboxServer) -> Outbound:
    server.reset()
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    env = Outbound(server, monkeypatch)
    env.configure(
        BASE_URL=server.api_url,
        ACCESS_TOKEN=server.token,
        CUSTOMER_ID=CUSTOMER,
        SERVICE_ID=SERVICE,
        CALLBACK_SECRETS=SECRET,
        PUBLIC_BASE_URL="http://localhost:7071",
        QUOTA_CALLS=2000,
        QUOTA_PERIOD_SECONDS=60,
        QUOTA_SAFETY_MARGIN_SECONDS=MARGIN,
        SEND_RETRY_BASE_SECONDS=0,
        SEND_MAX_ATTEMPTS=4,
        # Every lane member's message visible at once, as drain() expects; the lane triggers
        # and their backstop are tested in tests/outbound/test_lane_triggers.py.
        LANE_BACKSTOP_SECONDS=0,
    )
    for name in (OUTBOUND_QUEUE, EVENTS_QUEUE, OUTBOUND_DEAD_LETTER_QUEUE):
        queue = queue_client(name)
        with contextlib.suppress(Exception):  # it exists already
            queue.create_queue()
        queue.clear_messages()
    clear_pack_index()
    clear_quota()
    return env


def clear_quota() -> None:
    """Forget the quota's grants of earlier tests on this upstream: a test's sandbox gets a
    quota of its own (a private sandbox may get a port an earlier one had, and with it that
    one's grants, which a tight quota would count)."""
    from shared.names import QUOTA_TABLE
    from shared.quota import connection_key
    from shared.settings import get_settings
    from shared.storage import table_client

    table = table_client(QUOTA_TABLE)
    with contextlib.suppress(Exception):
        table.create_table()
    key = connection_key(get_settings())
    for entity in table.query_entities(f"PartitionKey eq '{key}'"):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])


def clear_pack_index() -> None:
    """Forget every packable message of earlier tests (their records stay, queued forever:
    without this, a later test's sender would pack them with its own messages): the index rows,
    and the waiting records of lanes (each lane is its own index)."""
    from shared.names import MESSAGES_TABLE, PACKS_TABLE
    from shared.storage import table_client

    table = table_client(PACKS_TABLE)
    with contextlib.suppress(Exception):
        table.create_table()
    for entity in table.query_entities("PartitionKey ge 'q-' and PartitionKey lt 'q.'"):
        with contextlib.suppress(Exception):
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])
    messages = table_client(MESSAGES_TABLE)
    with contextlib.suppress(Exception):
        for entity in messages.query_entities("Status eq 'queued' and Attempts eq 0"):
            if str(entity["PartitionKey"]).endswith(".l"):
                with contextlib.suppress(Exception):
                    messages.delete_entity(entity["PartitionKey"], entity["RowKey"])


@pytest.fixture
def outbound(
    azurite: Azurite, outbound_sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Outbound]:
    """Settings wired to Azurite and the shared sandbox (reset), queues emptied."""
    yield _wire(monkeypatch, azurite, outbound_sandbox)
    reset_settings_cache()
    reset_sender_cache()


@pytest.fixture
def private_outbound(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Outbound]]:
    """Like ``outbound`` but with a sandbox of its own (so a quota of its own)."""
    started: list[SandboxServer] = []

    def make(**options: Any) -> Outbound:
        options.setdefault("dlr_delay", 0.05)
        server = SandboxServer(**options).start()
        started.append(server)
        return _wire(monkeypatch, azurite, server)

    yield make
    for server in started:
        server.stop()
    reset_settings_cache()
    reset_sender_cache()
