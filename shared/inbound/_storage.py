"""Small storage helpers of the inbound package: tables and queues that exist, safe keys."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.queue import QueueClient

    from shared.settings import Settings

__all__ = [
    "QueueLike",
    "ensured_queue",
    "ensured_table",
    "plain_datetime",
    "safe_key",
    "send_creating",
    "utc",
    "utcnow",
]


class QueueLike(Protocol):
    """What we need of a queue client (``azure.storage.queue.QueueClient``)."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...


_ready: set[str] = set()
_lock = threading.Lock()
# Characters Table storage refuses in PartitionKey/RowKey, and control characters.
_UNSAFE_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY = 200


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def utc(value: Any) -> dt.datetime | None:
    """A stored datetime as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


def plain_datetime(value: dt.datetime | None) -> dt.datetime | None:
    # The SDK wants plain datetimes (its TablesEntityDatetime subclass round-trips too).
    return None if value is None else dt.datetime.fromtimestamp(value.timestamp(), dt.UTC)


def safe_key(value: str) -> str:
    """``value`` as a Table key: itself when allowed, else ``h-`` + its SHA-256 (stable)."""
    if value and len(value) <= _MAX_KEY and not _UNSAFE_KEY.search(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()


def ensured_table(name: str, settings: Settings | None = None) -> TableClient:
    """A client for table ``name``, created once per process if missing (Bicep creates them
    in Azure; Azurite starts empty)."""
    from azure.core.exceptions import ResourceExistsError

    from shared.storage import table_client

    client = table_client(name, settings)
    key = f"table|{client.url}|{name}"
    if key not in _ready:
        with _lock:
            if key not in _ready:
                with contextlib.suppress(ResourceExistsError):
                    client.create_table()
                _ready.add(key)
    return client


def ensured_queue(name: str, settings: Settings | None = None) -> QueueClient:
    """A client for queue ``name``, created once per process if missing."""
    from azure.core.exceptions import ResourceExistsError

    from shared.storage import queue_client

    client = queue_client(name, settings)
    key = f"queue|{client.url}"
    if key not in _ready:
        with _lock:
            if key not in _ready:
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                _ready.add(key)
    return client


def send_creating(queue: QueueLike, content: str) -> None:
    """``queue.send_message(content)`` in one request. Only when the queue does not exist (a
    fresh Azurite; Bicep creates it in Azure) is it created and the message sent again."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        queue.send_message(content)
        return
    except ResourceNotFoundError:
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()  # type: ignore[attr-defined]
    queue.send_message(content)
