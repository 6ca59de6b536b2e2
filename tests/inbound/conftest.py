"""Fixtures for the inbound tests: Azurite, a sandbox, the real functions, and a dev host.

``inbound`` wires the app's settings to the session's Azurite and a sandbox (reset), empties
the inbound queues and tables, and offers helpers that play the Functions host: call an HTTP
function with a real ``func.HttpRequest``, run a queue function (the intake processor, the
dispatcher) over its queue with real ``func.QueueMessage``s. ``served``
additionally serves the app's HTTP functions through the dev host on a free port, so the
sandbox can POST to our webhook and GET our DLR URLs over real sockets.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage

from devhost import DevHost
from devhost.azurite import Azurite
from sandbox.server import SandboxServer
from shared import names
from shared.clock import utcnow
from shared.conversations.actions import reset_asker_cache
from shared.inbound import reset_caches, reset_dispatcher_cache
from shared.inbound._models import InboundIntake, NewMessagePayload
from shared.outbound import reset_sender_cache
from shared.settings import reset_settings_cache
from shared.storage import queue_client, table_client
from tests.fixtures.sandbox import callback_receiver  # noqa: F401 - a fixture
from tests.waiting import MARGIN, PATIENCE

REPO = Path(__file__).resolve().parents[2]
CUSTOMER = "1001"
TWO_WAY = "s-1001-twoway"
ONE_WAY = "s-1001-oneway"
SECRET = "inbound-test-secret-of-at-least-32-bytes"
OLD_SECRET = "inbound-old-secret-of-at-least-32-bytes"
QUEUES = (
    names.INBOUND_INTAKE_QUEUE,
    names.INBOUND_QUEUE,
    names.INBOUND_DELIVERIES_QUEUE,
    names.INBOUND_DEAD_LETTER_QUEUE,
    names.EVENTS_QUEUE,
    names.OUTBOUND_QUEUE,
    names.OUTBOUND_DEAD_LETTER_QUEUE,
    names.DLR_FORWARD_QUEUE,
    names.DLR_FORWARD_DEAD_LETTER_QUEUE,
    names.TRIGGER_EVENTS_QUEUE,
)
TABLES = (
    names.WEBHOOKS_TABLE,
    names.REVOKED_TOKENS_TABLE,
    names.SUBSCRIPTIONS_TABLE,
    names.INBOUND_SEEN_TABLE,
    names.SUPPRESSIONS_TABLE,
    names.DELIVERY_REPORTS_TABLE,
    names.QUESTIONS_TABLE,
)


@functools.cache
def _app_functions() -> dict[str, Callable[..., Any]]:
    from devhost._metadata import app_functions
    from function_app import app

    # Indexed once per app object, shared with the dev host (a second get_functions() fails).
    return {f.get_function_name(): f.get_user_function() for f in app_functions(app)}


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Inbound:
    """The wired environment of one test."""

    sandbox: SandboxServer
    monkeypatch: pytest.MonkeyPatch

    def configure(self, **settings: Any) -> None:
        """Set app settings (names without the SMARTDIALOG_ prefix) and forget cached ones."""
        for name, value in settings.items():
            self.monkeypatch.setenv(f"SMARTDIALOG_{name}", str(value))
        reset_settings_cache()
        reset_caches()
        reset_dispatcher_cache()
        reset_sender_cache()
        reset_asker_cache()

    def call(
        self,
        name: str,
        method: str,
        *,
        route_params: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> HttpAnswer:
        """Invoke the app's HTTP function ``name`` with a real ``func.HttpRequest``."""
        if body is None:
            raw = b""
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body).encode()
        request = func.HttpRequest(
            method=method,
            url=f"http://localhost:7071/api/{name}",
            headers=headers or {},
            params=params or {},
            route_params=route_params or {},
            body=raw,
        )
        response = _app_functions()[name](request)
        content = response.get_body()
        return HttpAnswer(
            response.status_code, dict(response.headers), json.loads(content) if content else None
        )

    def register_webhook(self, service: str = TWO_WAY) -> None:
        """Register our New Message webhook of ``service`` (RegisterInboundWebhook, through the
        sandbox): a question needs it, its reply comes through it."""
        done = self.call("RegisterInboundWebhook", "POST", route_params={"Service": service})
        assert done.status == 201, done.body

    def queue_function(
        self, name: str, text: str, dequeue_count: int = 1, message_id: str | None = None
    ) -> None:
        """Invoke the app's queue function ``name`` with a real ``func.QueueMessage``."""
        message = QueueMessage(
            id=message_id or str(uuid.uuid4()), body=text.encode(), dequeue_count=dequeue_count
        )
        _app_functions()[name](message)

    def run_queue(self, queue: str, function: str, timeout: float = PATIENCE) -> int:
        """Play the host on ``queue`` until it is empty (visible or not); returns invocations."""
        client = queue_client(queue)
        deadline = time.monotonic() + timeout
        runs = 0
        while time.monotonic() < deadline:
            taken = list(client.receive_messages(messages_per_page=16, visibility_timeout=30))
            for message in taken:
                self.queue_function(function, message.content, message.dequeue_count, message.id)
                client.delete_message(message)
                runs += 1
            if not taken:
                if client.get_queue_properties().approximate_message_count == 0:
                    return runs
                time.sleep(0.1)
        raise AssertionError(f"{queue} did not drain within {timeout} s")

    def process_intake(self) -> int:
        """Run ``InboundProcessor`` over the intake queue until it is empty (what the host does
        after each webhook call); returns invocations."""
        return self.run_queue(names.INBOUND_INTAKE_QUEUE, "InboundProcessor")

    def read(self, queue: str) -> list[dict[str, Any]]:
        """Every visible message of ``queue`` as JSON (they stay on the queue)."""
        return [json.loads(m.content) for m in queue_client(queue).peek_messages(max_messages=32)]

    def count(self, queue: str) -> int:
        return int(queue_client(queue).get_queue_properties().approximate_message_count)

    def rows(self, table: str) -> list[dict[str, Any]]:
        return [dict(e) for e in table_client(table).list_entities()]


def intake_text(content: str, sender: str, service: str = TWO_WAY) -> str:
    """The intake queue message of an inbound message ``content`` from ``sender`` (what the
    webhook puts on ``smartdialog-inbound-intake``), received now (the test's clock)."""
    message = {"sender": sender, "recipient": "Clinic", "content": content}
    payload = NewMessagePayload.model_validate({**message, "messageId": str(uuid.uuid4())})
    intake = InboundIntake(
        service=service, messageKey=str(payload.messageId), receivedAt=utcnow(), payload=payload
    )
    return intake.model_dump_json(exclude_none=True)


def _empty(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    reset_settings_cache()
    for queue in QUEUES:
        client = queue_client(queue)
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        client.clear_messages()
    for table in TABLES:
        client = table_client(table)
        with contextlib.suppress(ResourceExistsError):
            client.create_table()
        for entity in client.list_entities(select=["PartitionKey", "RowKey"]):
            client.delete_entity(entity["PartitionKey"], entity["RowKey"])


@pytest.fixture(scope="session")
def inbound_sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(dlr_delay=0.05, slow_seconds=0.3).start()
    yield server
    server.stop()


@pytest.fixture
def inbound(
    azurite: Azurite, inbound_sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Inbound]:
    """Settings wired to Azurite and the shared sandbox (reset); inbound state emptied."""
    inbound_sandbox.reset()
    _empty(monkeypatch, azurite)
    env = Inbound(inbound_sandbox, monkeypatch)
    env.configure(
        BASE_URL=inbound_sandbox.api_url,
        ACCESS_TOKEN=inbound_sandbox.token,
        CUSTOMER_ID=CUSTOMER,
        SERVICE_ID=ONE_WAY,
        CALLBACK_SECRETS=SECRET,
        PUBLIC_BASE_URL="http://localhost:7071",
        QUOTA_CALLS=2000,
        QUOTA_SAFETY_MARGIN_SECONDS=MARGIN,
        DISPATCH_MAX_ATTEMPTS=3,
        DISPATCH_RETRY_BASE_SECONDS=0,
        SEND_RETRY_BASE_SECONDS=0,
    )
    yield env
    reset_settings_cache()
    reset_caches()
    reset_dispatcher_cache()
    reset_sender_cache()
    reset_asker_cache()


@pytest.fixture(scope="session")
def dev_host() -> Iterator[DevHost]:
    """The real app's HTTP functions served on a free port (queues are run by the tests)."""
    from devhost import load_app

    app = load_app("function_app:app", REPO)
    host = DevHost(app, REPO / "host.json", port=0, queues=False, access_log_enabled=False)
    host.start()
    yield host
    host.stop()


@pytest.fixture
def served(inbound: Inbound, dev_host: DevHost) -> Inbound:
    """``inbound`` with SMARTDIALOG_PUBLIC_BASE_URL pointing at the dev host, so the webhook
    and DLR URLs we hand to the sandbox reach the real functions over sockets."""
    inbound.configure(PUBLIC_BASE_URL=dev_host.url)
    return inbound
