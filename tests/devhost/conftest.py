"""Dev host test helpers: short host.json options, a host factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from azure.storage.queue import QueueClient

from devhost import DevHost, HostOptions, QueueOptions

#: Fast queue semantics for tests: 1 s visibility after failure, 3 attempts, 100 ms polling.
FAST_QUEUES = QueueOptions(
    batch_size=4,
    new_batch_threshold=2,
    max_polling_interval=0.1,
    visibility_timeout=1.0,
    max_dequeue_count=3,
    message_encoding="none",
)


def host_options(**queue_overrides: object) -> HostOptions:
    """host.json options with :data:`FAST_QUEUES`, some fields overridden."""
    fields = {**FAST_QUEUES.__dict__, **queue_overrides}
    return HostOptions(route_prefix="api", queues=QueueOptions(**fields))  # type: ignore[arg-type]


def queue_texts(conn: str, name: str) -> list[str]:
    """The stored texts of up to 32 visible messages, without dequeuing them."""
    client = QueueClient.from_connection_string(conn, name)
    try:
        return [m.content for m in client.peek_messages(max_messages=32)]
    except Exception:  # queue does not exist (yet)
        return []


@pytest.fixture
def run_host(storage_env: str) -> Iterator[Callable[..., DevHost]]:
    """Start DevHosts on free ports against the session's Azurite; all stopped after the test."""
    hosts: list[DevHost] = []

    def start(app: object, options: HostOptions | None = None, **kwargs: object) -> DevHost:
        host = DevHost(
            app,  # type: ignore[arg-type]
            options or host_options(),
            port=0,
            environ={"AzureWebJobsStorage": storage_env},
            **kwargs,  # type: ignore[arg-type]
        )
        hosts.append(host.start())
        return host

    yield start
    for host in hosts:
        host.stop(grace=5)
