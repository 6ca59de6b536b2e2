"""Queue triggers and queue output bindings against Azure Storage (Azurite locally).

The listener follows the Storage Queues extension of the Functions host
(``QueueListener`` / ``QueueProcessor`` in Azure/azure-webjobs-sdk and its v5 successor):

* it receives up to ``batchSize`` messages, invisible for 10 minutes while they run, and runs them
  concurrently; it fetches the next batch as soon as no more than ``newBatchThreshold`` are still
  running, so at most ``batchSize + newBatchThreshold`` run at once;
* an empty queue makes it back off exponentially (randomized) from 100 ms up to
  ``maxPollingInterval``; any message found resets the delay; a message written by an output
  binding of this host to a watched queue wakes its listener at once (the host's
  ``SharedQueueWatcher``);
* a function that returns normally deletes its message; one that raises makes the message visible
  again after ``visibilityTimeout``, unless this was attempt ``maxDequeueCount`` (dequeue count
  ``>= maxDequeueCount``): then the message is copied to ``<queue>-poison`` (created if missing) and
  deleted. A message received with a dequeue count already ``> maxDequeueCount`` (its host died
  mid-run) goes to the poison queue without running. So a failing function runs exactly
  ``maxDequeueCount`` times.
* ``messageEncoding`` ``none`` passes the stored text through as UTF-8 bytes; ``base64`` decodes
  it, and a message that is not valid base64 goes to the poison queue unprocessed.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc
import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.functions.queue import QueueMessage as BoundQueueMessage

from devhost._hostjson import QueueOptions
from devhost._invoke import Invoker
from devhost._metadata import FunctionSpec, QueueOutputSpec
from shared.settings import identity_storage_problem

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

__all__ = [
    "QueueListener",
    "StorageNotConfiguredError",
    "StorageQueues",
    "decode_body",
    "encode_body",
    "to_payloads",
]

log = logging.getLogger("devhost.queues")

#: The host receives messages invisible for 10 minutes while they run (QueueListener).
RECEIVE_VISIBILITY_SECONDS = 600
#: QueuePollingIntervals.Minimum in the host.
MIN_POLLING_INTERVAL = 0.1
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
)


class StorageNotConfiguredError(RuntimeError):
    """The app setting named by a binding's ``connection`` is missing."""


def encode_body(payload: bytes, encoding: str) -> str:
    """What is stored for ``payload`` under host.json's ``messageEncoding``."""
    if encoding == "base64":
        return base64.b64encode(payload).decode("ascii")
    return payload.decode("utf-8")


def decode_body(stored: str, encoding: str) -> bytes:
    """The body a function sees for a stored message; raises ValueError if not decodable."""
    if encoding == "base64":
        try:
            return base64.b64decode(stored.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError(f"message is not valid base64: {exc}") from exc
    return stored.encode("utf-8")


def _payload(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, func.QueueMessage):
        return item.get_body()
    raise TypeError(f"a queue output takes str, bytes or QueueMessage, not {type(item).__name__}")


def to_payloads(value: Any) -> list[bytes]:
    """Message bodies for an output binding value: str, bytes, QueueMessage or a list of them."""
    if isinstance(value, str | bytes | bytearray | func.QueueMessage):
        return [_payload(value)]
    if isinstance(value, collections.abc.Iterable):
        return [_payload(item) for item in value]
    raise TypeError(f"a queue output takes str, bytes or QueueMessage, not {type(value).__name__}")


class StorageQueues:
    """Queue clients per (connection setting, queue), created on first use and shared by threads."""

    def __init__(self, encoding: str, environ: collections.abc.Mapping[str, str] | None = None):
        self.encoding = encoding
        self._environ = environ if environ is not None else os.environ
        self._clients: dict[tuple[str, str], QueueClient] = {}
        self._created: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Callable[[], None]]] = {}

    def _connection_string(self, setting: str) -> str | None:
        value = self._environ.get(setting)
        if value and value.strip().lower() == "usedevelopmentstorage=true":
            return DEVELOPMENT_STORAGE
        return value or None

    def client(self, setting: str, queue: str) -> QueueClient:
        """A client for ``queue`` in the account that app setting ``setting`` names."""
        key = (setting, queue)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._new_client(setting, queue)
                self._clients[key] = client
        return client

    def _new_client(self, setting: str, queue: str) -> QueueClient:
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.queue import QueueClient

        # A pool as large as the most concurrent messages, so no connection is thrown away.
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport = RequestsTransport(session=session, session_owner=False)
        conn = self._connection_string(setting)
        if conn:
            return QueueClient.from_connection_string(conn, queue, transport=transport)
        uri = self._environ.get(f"{setting}__queueServiceUri")
        account = self._environ.get(f"{setting}__accountName")
        if problem := identity_storage_problem(uri, account):
            name = f"{setting}__queueServiceUri" if uri else f"{setting}__accountName"
            raise StorageNotConfiguredError(f"{name} {problem}")
        if uri or account:
            from azure.identity import DefaultAzureCredential

            url = uri or f"https://{account}.queue.core.windows.net"
            credential = DefaultAzureCredential(
                managed_identity_client_id=self._environ.get(f"{setting}__clientId")
            )
            return QueueClient(url, queue, credential=credential, transport=transport)
        raise StorageNotConfiguredError(
            f"app setting {setting!r} is not set: put a storage connection string in it "
            "(local.settings.json Values or the environment)"
        )

    def ensure_queue(self, setting: str, queue: str) -> QueueClient:
        """The client, after creating the queue if it does not exist yet (once per host)."""
        from azure.core.exceptions import ResourceExistsError

        client = self.client(setting, queue)
        if (setting, queue) not in self._created:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            self._created.add((setting, queue))
        return client

    def watch(self, queue: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever this host writes to ``queue``."""
        self._watchers.setdefault(queue, []).append(wake)

    def send(self, setting: str, queue: str, payloads: list[bytes]) -> None:
        """Send each payload as one message (encoded per host.json); creates the queue if needed."""
        client = self.ensure_queue(setting, queue)
        for payload in payloads:
            client.send_message(encode_body(payload, self.encoding))
        for wake in self._watchers.get(queue, ()):
            wake()

    def write_output(self, binding: QueueOutputSpec, value: Any) -> None:
        """The output-binding writer used by :class:`~devhost._invoke.Invoker`."""
        self.send(binding.connection, binding.queue_name, to_payloads(value))


class _Backoff:
    """RandomizedExponentialBackoffStrategy(minimum=100 ms, maximum=maxPollingInterval)."""

    def __init__(self, maximum: float) -> None:
        self.minimum = min(MIN_POLLING_INTERVAL, maximum)
        self.maximum = maximum
        self._current = 0.0
        self._exponent = 1

    def next_delay(self, found_message_since_last_delay: bool) -> float:
        if found_message_since_last_delay or self._current == 0.0:
            self._current, self._exponent = self.minimum, 1
            return self._current
        if self._current < self.maximum:
            delta = self.minimum * random.uniform(0.8, 1.2)
            self._current = min(self.maximum, self.minimum + delta * (2**self._exponent - 1))
            self._exponent += 1
        return self._current


class QueueListener:
    """Polls one queue for one queue-triggered function."""

    def __init__(
        self,
        spec: FunctionSpec,
        options: QueueOptions,
        storage: StorageQueues,
        invoker: Invoker,
    ) -> None:
        assert spec.queue is not None
        self.spec = spec
        self.trigger = spec.queue
        self.options = options
        self._storage = storage
        self._invoker = invoker
        self._poison_name = f"{self.trigger.queue_name}-poison"
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._in_flight = 0
        self._idle = threading.Condition()
        self._pool = ThreadPoolExecutor(
            max_workers=options.batch_size + options.new_batch_threshold,
            thread_name_prefix=f"devhost-{spec.name}",
        )
        self._thread = threading.Thread(
            target=self._run, name=f"devhost-poll-{spec.name}", daemon=True
        )
        storage.watch(self.trigger.queue_name, self._wake.set)

    @property
    def in_flight(self) -> int:
        """Messages being processed right now."""
        return self._in_flight

    def start(self) -> None:
        """Create the queue if missing (raises if storage is not configured), then poll."""
        self._storage.ensure_queue(self.trigger.connection, self.trigger.queue_name)
        self._thread.start()

    def stop(self, grace: float) -> bool:
        """Stop polling and wait up to ``grace`` seconds for running messages; True if all ended."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(grace, 1.0))
        deadline = time.monotonic() + grace
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(timeout=deadline - time.monotonic())
            finished = self._in_flight == 0
        self._pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:
            log.warning(
                "%s: %d message(s) still running at shutdown; they become visible again later",
                self.spec.name,
                self._in_flight,
            )
        return finished

    def _run(self) -> None:
        client = self._storage.client(self.trigger.connection, self.trigger.queue_name)
        backoff = _Backoff(self.options.max_polling_interval)
        found_since_delay = False
        while not self._stopping.is_set():
            try:
                batch = list(
                    client.receive_messages(
                        messages_per_page=self.options.batch_size,
                        max_messages=self.options.batch_size,
                        visibility_timeout=RECEIVE_VISIBILITY_SECONDS,
                    )
                )
            except Exception as exc:  # storage down or queue deleted: back off, as the host does
                log.warning("%s: receiving from %s failed: %s", self.spec.name, client.url, exc)
                batch = []
            if batch:
                found_since_delay = True
                with self._idle:
                    self._in_flight += len(batch)
                for message in batch:
                    self._pool.submit(self._process, message)
                # Fetch again as soon as no more than newBatchThreshold are still running.
                with self._idle:
                    while (
                        self._in_flight > self.options.new_batch_threshold
                        and not self._stopping.is_set()
                    ):
                        self._idle.wait(timeout=0.5)
                continue
            delay = backoff.next_delay(found_since_delay)
            found_since_delay = False
            self._wake.wait(delay)
            self._wake.clear()

    def _process(self, message: QueueMessage) -> None:
        try:
            self._process_one(message)
        except Exception:
            log.exception("%s: queue bookkeeping for message %s failed", self.spec.name, message.id)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _trigger_value(self, message: QueueMessage, body: bytes) -> Any:
        if self.spec.trigger_as is not None:
            return body.decode("utf-8") if self.spec.trigger_as is str else body
        return BoundQueueMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )

    def _process_one(self, message: QueueMessage) -> None:
        name, max_count = self.spec.name, self.options.max_dequeue_count
        dequeue_count = message.dequeue_count or 1
        if dequeue_count > max_count:
            self._move_to_poison(message, f"dequeue count {dequeue_count} > {max_count}")
            return
        try:
            body = decode_body(message.content or "", self._storage.encoding)
        except ValueError as exc:
            self._move_to_poison(message, str(exc))
            return
        invocation_id = str(uuid.uuid4())
        started = time.perf_counter()
        try:
            self._invoker.invoke(
                self.spec, self.trigger.param, self._trigger_value(message, body), invocation_id
            )
        except Exception:
            log.exception(
                "Executed '%s' (Failed, Id=%s, message %s, dequeue count %d)",
                name,
                invocation_id,
                message.id,
                dequeue_count,
            )
            if dequeue_count >= max_count:
                self._move_to_poison(message, f"attempt {dequeue_count} of {max_count} failed")
            else:
                self._release(message)
            return
        log.info(
            "Executed '%s' (Succeeded, Id=%s, message %s, %.1f ms)",
            name,
            invocation_id,
            message.id,
            (time.perf_counter() - started) * 1000,
        )
        self._delete(message)

    def _client(self) -> QueueClient:
        return self._storage.client(self.trigger.connection, self.trigger.queue_name)

    def _delete(self, message: QueueMessage) -> None:
        from azure.core.exceptions import HttpResponseError

        try:
            self._client().delete_message(message.id, message.pop_receipt)
        except HttpResponseError as exc:  # pop receipt mismatch or gone: someone else owns it now
            log.debug("could not delete message %s: %s", message.id, exc)

    def _release(self, message: QueueMessage) -> None:
        from azure.core.exceptions import HttpResponseError

        try:
            self._client().update_message(
                message.id,
                message.pop_receipt,
                visibility_timeout=int(self.options.visibility_timeout),
            )
        except HttpResponseError as exc:
            log.debug("could not release message %s: %s", message.id, exc)

    def _move_to_poison(self, message: QueueMessage, reason: str) -> None:
        log.warning(
            "Message Id '%s' has reached MaxDequeueCount of %d (%s). Moving message to queue '%s'.",
            message.id,
            self.options.max_dequeue_count,
            reason,
            self._poison_name,
        )
        poison = self._storage.ensure_queue(self.trigger.connection, self._poison_name)
        poison.send_message(message.content or "")  # as stored: same encoding as the source
        self._delete(message)
