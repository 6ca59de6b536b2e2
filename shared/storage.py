"""Queue and table clients for the app's storage account.

Locally (and in tests) ``AzureWebJobsStorage`` is a connection string, Azurite's or a
real account's. In Azure the app uses identity-based settings
(``AzureWebJobsStorage__accountName`` or the service URIs, and ``__clientId`` for a
user-assigned identity) and authenticates with ``DefaultAzureCredential``. The Azure
SDKs are imported here, on first use, never when ``function_app`` is imported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.queue import QueueClient, QueueServiceClient


class StorageNotConfigured(RuntimeError):
    """Neither a connection string nor an identity-based storage setting is present."""


def _credential(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id)


def _service_uri(settings: Settings, kind: str) -> str:
    explicit = settings.storage_queue_uri if kind == "queue" else settings.storage_table_uri
    if explicit:
        return explicit
    if settings.storage_account_name:
        return f"https://{settings.storage_account_name}.{kind}.core.windows.net"
    raise StorageNotConfigured(
        "Set AzureWebJobsStorage (a connection string) or AzureWebJobsStorage__accountName "
        "(identity-based access) so the app can reach its queues and tables."
    )


def _transport_options(endpoint: str) -> dict[str, Any]:
    """Client options that spare every storage request the ``requests`` environment lookups.

    By default azure-core's ``requests`` session trusts the environment on *every* request:
    ``merge_environment_settings`` walks ``os.environ`` for proxies and ``NO_PROXY``, and
    ``prepare_request`` looks for a ``~/.netrc`` -- about a fifth of a local Table round
    trip, paid twice per quota token. Here the environment is read once, when the client is
    built: the proxy for ``endpoint`` (``HTTP(S)_PROXY``/``ALL_PROXY``, honouring
    ``NO_PROXY``) goes to the SDK's proxy policy and ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``
    to the transport, so proxy and CA settings still work, but a change to them after start-up
    needs a restart (the clients are cached per process). ``.netrc`` is no longer consulted:
    every request is signed by the SDK, and a netrc entry would only replace its
    ``Authorization`` header.
    """
    import os

    from azure.core.pipeline.transport import RequestsTransport
    from requests.utils import get_environ_proxies

    transport_options: dict[str, Any] = {"use_env_settings": False}
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        transport_options["connection_verify"] = ca_bundle
    options: dict[str, Any] = {"transport": RequestsTransport(**transport_options)}
    proxies = get_environ_proxies(endpoint)
    if proxies:
        options["proxies"] = proxies
    return options


def _endpoint(conn: str, kind: str) -> str:
    """The ``Queue``/``TableEndpoint`` of a connection string (or the account's default)."""
    parts = dict(part.split("=", 1) for part in conn.split(";") if "=" in part and part.strip())
    lowered = {name.strip().lower(): value.strip() for name, value in parts.items()}
    explicit = lowered.get(f"{kind}endpoint")
    if explicit:
        return explicit
    protocol = lowered.get("defaultendpointsprotocol", "https")
    suffix = lowered.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{lowered.get('accountname', '')}.{kind}.{suffix}"


def _connection_string(settings: Settings) -> str | None:
    value = settings.storage
    if value and value.strip() == "UseDevelopmentStorage=true":
        # Azurite on its default ports, as the Functions tooling understands it.
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
            "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
        )
    return value or None


def queue_service(settings: Settings | None = None) -> QueueServiceClient:
    """The queue service client for ``settings`` (default: the current settings), cached per
    settings object."""
    # Resolve the default before the cache: keyed on None, a changed environment would keep
    # getting the first client.
    return _queue_service(settings or get_settings())


@lru_cache(maxsize=4)
def _queue_service(settings: Settings) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient

    conn = _connection_string(settings)
    if conn:
        return QueueServiceClient.from_connection_string(
            conn, **_transport_options(_endpoint(conn, "queue"))
        )
    uri = _service_uri(settings, "queue")
    return QueueServiceClient(uri, credential=_credential(settings), **_transport_options(uri))


def table_service(settings: Settings | None = None) -> TableServiceClient:
    """The table service client for ``settings`` (default: the current settings), cached per
    settings object."""
    return _table_service(settings or get_settings())


@lru_cache(maxsize=4)
def _table_service(settings: Settings) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    conn = _connection_string(settings)
    if conn:
        return TableServiceClient.from_connection_string(
            conn, **_transport_options(_endpoint(conn, "table"))
        )
    uri = _service_uri(settings, "table")
    return TableServiceClient(
        endpoint=uri, credential=_credential(settings), **_transport_options(uri)
    )


def queue_client(name: str, settings: Settings | None = None) -> QueueClient:
    """A client for one queue. Messages are plain text (host.json: messageEncoding none)."""
    return queue_service(settings).get_queue_client(name)


def table_client(name: str, settings: Settings | None = None) -> TableClient:
    """A client for one table."""
    return table_service(settings).get_table_client(name)


# --- tables and queues that exist, stored datetimes, safe keys ------------------------------------


class QueueLike(Protocol):
    """What we need of a queue client (``azure.storage.queue.QueueClient``)."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...


_ready: set[str] = set()
_ready_lock = threading.Lock()
# Characters Table storage refuses in PartitionKey/RowKey, and control characters.
_UNSAFE_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY = 200


def utc(value: Any) -> dt.datetime | None:
    """A stored datetime as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


def plain_datetime(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` as the Tables SDK wants it (plain UTC; its own datetime subclass round-trips)."""
    return None if value is None else dt.datetime.fromtimestamp(value.timestamp(), dt.UTC)


def safe_key(value: str) -> str:
    """``value`` as a Table key: itself when allowed, else ``h-`` + its SHA-256 (stable)."""
    if value and len(value) <= _MAX_KEY and not _UNSAFE_KEY.search(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()


def ensure_table(client: TableClient) -> TableClient:
    """``client``, its table created once per process if missing (Bicep creates the tables in
    Azure; Azurite starts empty)."""
    key = f"table|{client.url}|{client.table_name}"  # url is the account's, not the table's
    if key not in _ready:
        from azure.core.exceptions import ResourceExistsError

        with _ready_lock:
            if key not in _ready:
                with contextlib.suppress(ResourceExistsError):
                    client.create_table()
                _ready.add(key)
    return client


def ensured_table(name: str, settings: Settings | None = None) -> TableClient:
    """A client for table ``name`` whose table exists (see :func:`ensure_table`)."""
    return ensure_table(table_client(name, settings))


def ensured_queue(name: str, settings: Settings | None = None) -> QueueClient:
    """A client for queue ``name``, created once per process if missing (the host creates only
    the queues it triggers on; Bicep creates them all in Azure)."""
    client = queue_client(name, settings)
    key = f"queue|{client.url}"
    if key not in _ready:
        from azure.core.exceptions import ResourceExistsError

        with _ready_lock:
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
