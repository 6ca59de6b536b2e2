"""Queue and table clients for the app's storage account.

Locally (and in tests) ``AzureWebJobsStorage`` is a connection string, Azurite's or a
real account's. In Azure the app uses identity-based settings
(``AzureWebJobsStorage__accountName`` or the service URIs, and ``__clientId`` for a
user-assigned identity) and authenticates with ``DefaultAzureCredential``. The Azure
SDKs are imported here, on first use, never when ``function_app`` is imported.

Benchmarks count the storage round trips of this process with :func:`count_round_trips`
(off by default; then the clients' transport is the plain one and nothing is counted).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from shared.names import OUTBOUND_QUEUE
from shared.problems import FieldError
from shared.settings import (
    SettingsInvalid,
    StorageSettings,
    get_settings,
    identity_storage_problem,
)

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient, QueueServiceClient


_Service = Literal["table", "queue", "blob"]
_Client = TypeVar("_Client")
_STORAGE = "AzureWebJobsStorage"


class StorageNotConfigured(SettingsInvalid):
    """No storage setting, or one the storage SDK cannot read (a malformed or incomplete
    connection string): the 503 configuration problem naming the setting, never its value.
    ``/api/health`` names it too (:func:`storage_errors`)."""


@dataclass(frozen=True)
class StorageTarget:
    """The storage settings (``AzureWebJobsStorage`` and its identity-based forms): what a
    storage client depends on, and the key of the per-process client caches. Every
    connection's settings name the app's one storage account, so they share its clients (one
    connection pool per service) however many connections there are."""

    storage: str | None
    storage_account_name: str | None
    storage_queue_uri: str | None
    storage_table_uri: str | None
    storage_blob_uri: str | None
    storage_client_id: str | None

    @classmethod
    def of(cls, settings: StorageSettings) -> StorageTarget:
        return cls(*(getattr(settings, f.name) for f in fields(cls)))


def _credential(settings: StorageTarget) -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id)


def _service_uri(settings: StorageTarget, kind: _Service) -> tuple[str, str]:
    """The ``kind`` service's URI for identity-based access, and the setting that gives it."""
    explicit, name = getattr(settings, f"storage_{kind}_uri"), settings.storage_account_name
    if not (explicit or name):
        unset = f"is not set: give a connection string, or {_STORAGE}__accountName or __{kind}"
        raise StorageNotConfigured([FieldError(_STORAGE, f"{unset}ServiceUri (identity-based).")])
    setting = f"{_STORAGE}__{kind}ServiceUri" if explicit else f"{_STORAGE}__accountName"
    if problem := identity_storage_problem(explicit, name):
        raise StorageNotConfigured([FieldError(setting, problem)])
    return setting, explicit or f"https://{name}.{kind}.core.windows.net"


def _built(
    settings: StorageTarget,
    kind: _Service,
    new: Callable[..., _Client],
    parse: Callable[..., _Client],
) -> _Client:
    """The ``kind`` service client of ``settings``: ``parse`` of the connection string, else
    ``new`` on the service URI with the app's identity. Raises :class:`StorageNotConfigured`
    when there is neither, or the SDK cannot read the setting (it makes no request)."""
    conn = _connection_string(settings)
    setting, uri = (_STORAGE, "") if conn else _service_uri(settings, kind)
    try:
        if conn:
            return parse(conn, **_transport_options(_endpoint(conn, kind), kind))
        return new(uri, credential=_credential(settings), **_transport_options(uri, kind))
    except Exception as exc:  # the SDK's message may quote the value: ours names the setting
        why = (
            "is not a connection string with an account and its key or SAS"
            if conn  # else its URI, or the identity's certificate file, AZURE_* tenant or client
            else "cannot be used with the app's identity: check it and the AZURE_* settings"
        )
        raise StorageNotConfigured(
            [FieldError(setting, f"{why} ({type(exc).__name__}).")]
        ) from None


def _transport_options(endpoint: str, service: _Service) -> dict[str, Any]:
    """Client options that spare every storage request the ``requests`` environment lookups
    (azure-core's session reads ``os.environ`` for proxies and ``~/.netrc`` on *every* request:
    about a fifth of a local Table round trip, twice per quota token). The environment is read
    once, when the client is built: ``endpoint``'s proxy (``HTTP(S)_PROXY``/``ALL_PROXY``,
    ``NO_PROXY``) goes to the SDK's proxy policy, ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` to
    the transport (HTTPS or a proxy): a change needs a restart. ``.netrc`` is not read (it would
    only replace the SDK's signature). :class:`~shared.storage_session.StorageSession` skips
    what no storage request uses. ``service`` tells a counting transport
    (:func:`count_round_trips`) how to read requests; a queue's pass :func:`_kept_for_ever`."""
    import os

    from azure.core.pipeline.transport import RequestsTransport
    from requests.utils import get_environ_proxies

    from shared import http_headers, storage_multipart
    from shared.storage_session import StorageSession

    storage_multipart.install()  # table transactions without a thread pool each, or e-mail
    http_headers.install()  # answers' headers without the e-mail parser
    proxies = get_environ_proxies(endpoint)
    transport_options: dict[str, Any] = {"session": StorageSession(), "use_env_settings": False}
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    # A CA bundle as a path costs requests a stat() per request; plain HTTP (Azurite) needs none.
    if ca_bundle and (proxies or not endpoint.lower().startswith("http://")):
        transport_options["connection_verify"] = ca_bundle
    counter = _round_trips
    transport = RequestsTransport(**transport_options)
    if counter is not None and service != "blob":
        transport = _counting_transport(service, counter, transport)
    hook = {"raw_request_hook": _kept_for_ever} if service == "queue" else {}
    return {"transport": transport, **hook, **({"proxies": proxies} if proxies else {})}


def _endpoint(conn: str, kind: str) -> str:
    """The ``Queue``/``TableEndpoint`` of a connection string (or the account's default)."""
    parts = dict(part.split("=", 1) for part in conn.split(";") if "=" in part and part.strip())
    lowered = {name.strip().lower(): value.strip() for name, value in parts.items()}
    if explicit := lowered.get(f"{kind}endpoint"):
        return explicit
    protocol = lowered.get("defaultendpointsprotocol", "https")
    suffix = lowered.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{lowered.get('accountname', '')}.{kind}.{suffix}"


def _connection_string(settings: StorageTarget) -> str | None:
    value = settings.storage
    if value and value.strip() == "UseDevelopmentStorage=true":
        # Azurite on its default ports, as the Functions tooling understands it.
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
            "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
            "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
        )
    return value or None


def queue_service(settings: StorageSettings | None = None) -> QueueServiceClient:
    """The queue service client for ``settings`` (default: the current settings), cached per
    storage account (:class:`StorageTarget`)."""
    # Resolve the default before the cache: keyed on None, a changed environment would keep
    # getting the first client.
    return _queue_service(StorageTarget.of(settings or get_settings()))


@lru_cache(maxsize=4)
def _queue_service(settings: StorageTarget) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient as Client

    return _built(settings, "queue", Client, Client.from_connection_string)


def table_service(settings: StorageSettings | None = None) -> TableServiceClient:
    """The table service client for ``settings`` (default: the current settings), cached per
    storage account (:class:`StorageTarget`)."""
    return _table_service(StorageTarget.of(settings or get_settings()))


@lru_cache(maxsize=4)
def _table_service(settings: StorageTarget) -> TableServiceClient:
    from azure.data.tables import TableServiceClient as Client

    return _built(settings, "table", Client, Client.from_connection_string)


def blob_service(settings: StorageSettings | None = None) -> BlobServiceClient:
    """The blob service client for ``settings`` (default: the current settings), cached per
    storage account (:class:`StorageTarget`)."""
    return _blob_service(StorageTarget.of(settings or get_settings()))


@lru_cache(maxsize=4)
def _blob_service(settings: StorageTarget) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient as Client

    return _built(settings, "blob", Client, Client.from_connection_string)


def queue_client(name: str, settings: StorageSettings | None = None) -> QueueClient:
    """A client for one queue: plain text (host.json: messageEncoding none), :func:`xml_safe`."""
    return queue_service(settings).get_queue_client(name, message_encode_policy=_xml_safe_text()())


def xml_safe(text: str) -> str:
    """``text`` (JSON) with what XML 1.0 refuses in a Put Message request, U+FFFE and U+FFFF,
    as JSON escapes (they only stand in its strings, which read back the same)."""
    if "\ufffe" in text or "\uffff" in text:  # rarely: no copy made otherwise
        text = text.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
    return text


@lru_cache(maxsize=1)
def _xml_safe_text() -> Any:
    """The SDK's plain-text message policy, each message made :func:`xml_safe`."""
    from azure.storage.queue._message_encoding import NoEncodePolicy

    class XmlSafeText(NoEncodePolicy):
        def encode(self, content: str) -> str:
            return xml_safe(str(super().encode(content)))

    return XmlSafeText


def table_client(name: str, settings: StorageSettings | None = None) -> TableClient:
    """A client for one table."""
    return table_service(settings).get_table_client(name)


# --- counting round trips (benchmarks) ----------------------------------------------------


#: Entities per entity-group transaction, all of one partition (the Table service's limit).
TABLE_TRANSACTION_LIMIT = 100


class StorageOp(enum.StrEnum):
    """What one storage HTTP round trip did."""

    TABLE_READ = "table read"  # one entity, by its keys
    TABLE_QUERY = "table query"  # one page of a filter (or of a whole table)
    TABLE_WRITE = "table write"  # create, update, upsert or delete one entity
    TABLE_TRANSACTION = "table transaction"  # up to 100 entity writes in one partition
    TABLE_ADMIN = "table admin"  # create, delete or list tables
    QUEUE_PUT = "queue put"
    QUEUE_GET = "queue get"  # receive: the messages become invisible
    QUEUE_PEEK = "queue peek"
    QUEUE_DELETE = "queue delete"  # one message
    QUEUE_UPDATE = "queue update"  # one message's visibility (or content)
    QUEUE_ADMIN = "queue admin"  # create, clear, properties of a queue; list queues


class RoundTrips:
    """The storage HTTP round trips of this process, by operation and table or queue name.

    Every request the transport sends counts once, whatever its answer (a refused
    compare-and-swap, a retry and a 404 are round trips too); those answered with an error
    status are also counted in :meth:`refused`. The name is ``""`` where the request names no
    table or queue (table admin, listing queues)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[StorageOp, str]] = Counter()
        self._refused: Counter[tuple[StorageOp, str]] = Counter()

    def add(self, op: StorageOp, name: str) -> None:
        """Count one round trip."""
        with self._lock:
            self._counts[op, name] += 1

    def add_refused(self, op: StorageOp, name: str) -> None:
        """Count one round trip (already added) as answered with a 4xx or 5xx status."""
        with self._lock:
            self._refused[op, name] += 1

    def snapshot(self) -> Counter[tuple[StorageOp, str]]:
        """A copy of the counts so far; subtract two for what happened in between."""
        with self._lock:
            return self._counts.copy()

    def refused(self) -> Counter[tuple[StorageOp, str]]:
        """A copy of the counts of round trips answered 4xx or 5xx so far (a lost
        compare-and-swap is a 412 or 409, an absent entity a 404). A transaction's own status
        is 202 even when a change in it was refused."""
        with self._lock:
            return self._refused.copy()


_round_trips: RoundTrips | None = None


def count_round_trips() -> RoundTrips:
    """Count this process's storage round trips from now on (the same counter on every call).

    Only clients built afterwards count: the ones cached here are rebuilt, but a client that
    something already holds keeps its plain transport, so call this before the app builds any."""
    global _round_trips
    if _round_trips is None:
        _round_trips = RoundTrips()
        _queue_service.cache_clear()
        _table_service.cache_clear()
    return _round_trips


def _table_op(request: Any) -> tuple[StorageOp, str]:
    """The operation and table of a Table service request (``Name(keys)``, ``Name()``,
    ``Name``, ``Tables...`` or ``$batch`` as the last path segment)."""
    method = str(request.method).upper()
    last = urlsplit(request.url).path.rstrip("/").rsplit("/", 1)[-1]
    name, paren, keys = last.partition("(")
    if last == "$batch":
        return StorageOp.TABLE_TRANSACTION, _transaction_table(request)
    if name == "Tables":
        return StorageOp.TABLE_ADMIN, ""
    if method == "GET":
        return (StorageOp.TABLE_READ if paren and keys != ")" else StorageOp.TABLE_QUERY), name
    return StorageOp.TABLE_WRITE, name


def _transaction_table(request: Any) -> str:
    """The table of a ``$batch``: its URL names none, its first change does."""
    try:
        changeset = request.multipart_mixed_info[0][0]
        return _table_op(changeset.multipart_mixed_info[0][0])[1]
    except (AttributeError, IndexError, TypeError):
        return ""


def _queue_op(request: Any) -> tuple[StorageOp, str]:
    """The operation and queue of a Queue service request (``.../<queue>/messages[/<id>]``)."""
    method = str(request.method).upper()
    url = urlsplit(request.url)
    parts = url.path.strip("/").split("/")
    if len(parts) >= 2 and parts[-1] == "messages":
        queue, peek = parts[-2], "peekonly=true" in url.query.lower()
        if method == "POST":
            return StorageOp.QUEUE_PUT, queue
        if method == "GET":
            return (StorageOp.QUEUE_PEEK if peek else StorageOp.QUEUE_GET), queue
        return StorageOp.QUEUE_ADMIN, queue  # DELETE: clear the queue
    if len(parts) >= 3 and parts[-2] == "messages":
        op = StorageOp.QUEUE_DELETE if method == "DELETE" else StorageOp.QUEUE_UPDATE
        return op, parts[-3]
    if "comp=list" in url.query:
        return StorageOp.QUEUE_ADMIN, ""  # list queues
    return StorageOp.QUEUE_ADMIN, parts[-1]  # create, delete, properties, metadata


def _kept_for_ever(request: Any) -> None:
    """A put onto the outbound queue (accept, put-back, re-drive: any client's) that names no
    time-to-live never expires: the default 7 days would drop a send that waits longer unseen."""
    op, queue = _queue_op(http := request.http_request)
    if op is StorageOp.QUEUE_PUT and queue == OUTBOUND_QUEUE and "messagettl=" not in http.url:
        http.url += ("&" if "?" in http.url else "?") + "messagettl=-1"


def _counting_transport(service: _Service, counter: RoundTrips, inner: Any) -> Any:
    """``inner`` (a transport), counting every request it sends in ``counter``."""
    from azure.core.pipeline.transport import HttpTransport

    classify = _table_op if service == "table" else _queue_op

    class CountingTransport(HttpTransport[Any, Any]):
        def send(self, request: Any, **kwargs: Any) -> Any:
            op, name = classify(request)
            counter.add(op, name)
            response = inner.send(request, **kwargs)
            if response.status_code >= 400:
                counter.add_refused(op, name)
            return response

        def open(self) -> None:
            inner.open()

        def close(self) -> None:
            inner.close()

        def __enter__(self) -> CountingTransport:
            inner.__enter__()
            return self

        def __exit__(self, *args: Any) -> None:
            inner.__exit__(*args)

    return CountingTransport()


# --- tables and queues that exist, stored datetimes, safe keys ------------------------------------


class QueueLike(Protocol):
    """What we need of a queue client (``azure.storage.queue.QueueClient``)."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...
    def delete_message(self, message: Any, pop_receipt: Any = None, **kwargs: Any) -> Any: ...


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
    """``value`` as the Tables SDK wants it (plain UTC; its own datetime subclass round-trips).
    Not through ``timestamp()``: a float loses microseconds, and 9999-12-31T23:59:59.999999Z
    rounds up into the year 10000."""
    if value is None:
        return None
    u = value.astimezone(dt.UTC)
    return dt.datetime(*u.timetuple()[:6], u.microsecond, tzinfo=dt.UTC)


def safe_key(value: str) -> str:
    """``value`` as a Table key: itself when allowed, else ``h-`` + its SHA-256 (stable)."""
    plain = value and len(value) <= _MAX_KEY and not _UNSAFE_KEY.search(value)
    return value if plain else "h-" + hashlib.sha256(value.encode()).hexdigest()


def already_exists(error: BaseException) -> bool:
    """Whether a Table transaction failed because an entity it creates exists already."""
    code = getattr(error, "error_code", None)
    return code == "EntityAlreadyExists" or "AlreadyExists" in f"{code} {error}"


def create_once(key: str, create: Callable[[], object], *, again: bool = False) -> None:
    """``create()`` once per process for ``key`` (one that exists already is fine, and so is a
    403: in Azure the Bicep creates every queue and table and scopes the data roles to each,
    which may not cover creating one; a name truly missing then fails on first use).
    ``again``: even if done before (it was found deleted since)."""
    if key in _ready and not again:
        return
    from azure.core.exceptions import HttpResponseError, ResourceExistsError

    with _ready_lock:
        if again or key not in _ready:
            try:
                create()
            except HttpResponseError as error:
                if not isinstance(error, ResourceExistsError) and error.status_code != 403:
                    raise
            _ready.add(key)


def ensure_table(client: TableClient, *, again: bool = False) -> TableClient:
    """``client``, its table created once per process if missing (Bicep creates the tables in
    Azure; Azurite starts empty), or ``again``."""
    # The client's url is the account's, not the table's.
    create_once(f"table|{client.url}|{client.table_name}", client.create_table, again=again)
    return client


def ensured_table(name: str, settings: StorageSettings | None = None) -> TableClient:
    """A client for table ``name`` whose table exists (see :func:`ensure_table`)."""
    return ensure_table(table_client(name, settings))


def ensured_queue(name: str, settings: StorageSettings | None = None) -> QueueClient:
    """A client for queue ``name``, created once per process if missing (the host creates only
    the queues it triggers on; Bicep creates them all in Azure)."""
    client = queue_client(name, settings)
    create_once(f"queue|{client.url}", client.create_queue)
    return client


def send_creating(queue: QueueLike, content: str) -> None:
    """``queue.send_message(content)`` in one request (:func:`put_message`). Only when the
    queue does not exist (a fresh Azurite; Bicep creates it in Azure) is it created and the
    message sent again."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        put_message(queue, content)
        return
    except ResourceNotFoundError:
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()  # type: ignore[attr-defined]
    put_message(queue, content)


def put_message(queue: QueueLike, content: str) -> None:
    """``queue.send_message(content)`` for a hot path (the inbound webhook): the same Put
    Message request (API version, :func:`xml_safe` text) through the client's own pipeline, not
    the SDK's model layer (a fifth of a put's CPU), by the generated client's ``send_request``
    (private; a client without one, or encoding or encrypting, gets ``send_message``). Other
    than 201 raises as ``send_message`` would (``ResourceNotFoundError``, 401/403
    ``ClientAuthenticationError``, else ``HttpResponseError``), never sent again (a 500 may
    have stored it)."""
    from xml.sax.saxutils import escape

    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        map_error,
    )
    from azure.core.rest import HttpRequest

    generated = getattr(queue, "_client", None)
    send = getattr(generated, "send_request", None)
    version = getattr(queue, "api_version", None)
    content = xml_safe(content)
    encoding = type(getattr(queue, "_message_encode_policy", None)).__name__
    plain = (
        encoding in ("NoEncodePolicy", "XmlSafeText")
        and getattr(queue, "key_encryption_key", None) is None
        and not getattr(queue, "require_encryption", False)
    )
    if send is None or not isinstance(version, str) or not plain:
        queue.send_message(content)
        return
    body = (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        f"<QueueMessage><MessageText>{escape(content)}</MessageText></QueueMessage>"
    )
    headers = {
        "Content-Type": "application/xml",
        "Accept": "application/xml",
        "x-ms-version": version,
    }
    answer = send(HttpRequest("POST", "/messages", headers=headers, content=body.encode()))
    if answer.status_code != 201:
        refused, missing, exists = (
            ClientAuthenticationError,
            ResourceNotFoundError,
            ResourceExistsError,
        )
        errors = {401: refused, 403: refused, 404: missing, 409: exists}
        map_error(status_code=answer.status_code, response=answer, error_map=errors)
        raise HttpResponseError(response=answer)


# --- long strings in Table properties ------------------------------------------------------------

#: UTF-16 units per string property (the limit is 64 KiB of UTF-16: 32K units; a character
#: past U+FFFF, such as an emoji, is two).
CHUNK_CHARS = 30_000


def utf16_units(text: str) -> int:
    """How long ``text`` is as the Table service counts a string."""
    return len(text.encode("utf-16-le")) // 2


def _pieces(text: str) -> list[str]:
    """``text`` cut into pieces of at most :data:`CHUNK_CHARS` UTF-16 units."""
    if utf16_units(text) == len(text):  # nothing past U+FFFF: every character is one unit
        return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    pieces, start, units = [], 0, 0
    for index, char in enumerate(text):
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > CHUNK_CHARS:
            pieces.append(text[start:index])
            start, units = index, 0
        units += width
    return [*pieces, text[start:]] if start < len(text) else pieces


def joined(entity: Mapping[str, Any], name: str) -> str | None:
    """The text :func:`chunked` wrote as ``name`` in ``entity`` (None: it wrote None)."""
    if (count := entity.get(f"{name}Chunks")) is None:
        return None
    return "".join(str(entity.get(f"{name}{i}", "")) for i in range(int(count)))


def chunked(name: str, text: str | None) -> dict[str, Any]:
    """``text`` as properties ``<name>Chunks`` and ``<name>0``, ``<name>1``, ... (a string
    property holds 32K UTF-16 units; an entity 1 MiB)."""
    if text is None:
        return {f"{name}Chunks": None}
    chunks = _pieces(text)
    return {f"{name}Chunks": len(chunks), **{f"{name}{i}": c for i, c in enumerate(chunks)}}
