"""One deadline for a whole HTTP operation, kept by every network step of it.

httpx's and httpcore's timeouts bound each step on its own (a connect, each write, each read), so
an answer that trickles in a few bytes per read, or a re-try after a renewed token, can take any
number of timeouts in all. A :class:`DeadlineStream` gives each TLS handshake, write and read at
most the time left before the deadline, and none once it has passed (that step's httpcore timeout
is raised; before a request's first byte, a connect's: it was not sent); a
:class:`DeadlineBackend` does so for each connect. No byte of a request goes out, and no answer
is waited for, after the deadline.

Where the deadline comes from is the caller's ``left`` (:data:`Left`):

- :meth:`Deadline.left`, a deadline of its own: :mod:`shared.guarded_http` makes a connection pool
  per call, so its backend holds the call's deadline (and no step can run without one).
- :func:`left`, this thread's deadline (:func:`within`): the SmartDialog client's httpx client
  lives across operations, so its backend finds the current operation's deadline there; outside
  :func:`within` httpx's own timeouts still hold.

httpx has no public way to hand its transport a network backend (``httpx.HTTPTransport`` takes
none, and a transport of our own would disable proxies from the environment): :func:`keep_deadline`
wraps the one of each connection pool an ``httpx.Client`` made (its own, and any for a proxy the
environment names) and raises ``TypeError`` if httpx no longer has one to wrap, rather than leave
calls unbounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from ssl import SSLContext
from typing import Any

import httpcore
import httpx

__all__ = [
    "Deadline",
    "DeadlineBackend",
    "DeadlineStream",
    "Left",
    "keep_deadline",
    "left",
    "within",
]

#: ``left(timeout, error)``: ``timeout``, or the time left before the deadline if that is
#: shorter; raises ``error`` once the deadline has passed.
Left = Callable[[float | None, type[Exception]], float | None]


class Deadline:
    """The moment (:func:`time.monotonic`) an operation must be over by."""

    __slots__ = ("ends",)

    def __init__(self, ends: float) -> None:
        self.ends = ends

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        """``timeout``, or the time left if that is shorter; raises ``error`` once it has passed."""
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise error("the operation's deadline passed")
        return remaining if timeout is None else min(timeout, remaining)


# --- this thread's deadline -----------------------------------------------------------------------

_local = threading.local()


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Run the block under a deadline ``seconds`` from now (None: no deadline of its own; an
    enclosing one still holds)."""
    outer: Deadline | None = getattr(_local, "deadline", None)
    if seconds is not None:
        ends = Deadline.after(seconds)
        _local.deadline = ends if outer is None or ends.ends < outer.ends else outer
    try:
        yield
    finally:
        _local.deadline = outer


def left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout``, or the time left before this thread's deadline if that is shorter; raises
    ``error`` once the deadline has passed."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    return timeout if deadline is None else deadline.left(timeout, error)


# --- the stream and the backend -------------------------------------------------------------------


class DeadlineStream(httpcore.NetworkStream):
    """``inner``, each operation of it given at most what ``left`` allows.

    A deadline that passes before a request's first write raises ``ConnectTimeout``, as one
    that passes while connecting does: no byte of it was sent. HTTP/1.1 writes a request whole
    before it reads the answer, so a write with none since the stream's last read (or since it
    opened) is a request's first.
    """

    def __init__(self, inner: httpcore.NetworkStream, left: Left) -> None:
        self._inner = inner
        self._left = left
        self._writing = False  # a request's bytes were (maybe) written since the last read

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._writing = False
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        error = httpcore.WriteTimeout if self._writing else httpcore.ConnectTimeout
        wait = self._left(timeout, error)
        self._writing = True
        self._inner.write(buffer, wait)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        wait = self._left(timeout, httpcore.ConnectTimeout)
        return self._again(self._inner.start_tls(ssl_context, server_hostname, wait))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def _again(self, inner: httpcore.NetworkStream) -> DeadlineStream:
        """``inner`` (this stream after its TLS handshake) kept as this one is; a subclass with
        state of its own returns one of its kind."""
        return DeadlineStream(inner, self._left)


class DeadlineBackend(httpcore.NetworkBackend):
    """``inner``, each connect given at most what ``left`` allows, its streams kept so too."""

    def __init__(self, inner: httpcore.NetworkBackend, left: Left) -> None:
        self._inner = inner
        self._left = left

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        wait = self._left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, wait, local_address, socket_options)
        return DeadlineStream(stream, self._left)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        wait = self._left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_unix_socket(path, wait, socket_options)
        return DeadlineStream(stream, self._left)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def keep_deadline(client: httpx.Client) -> httpx.Client:
    """``client``, its connection pools' network steps kept within this thread's deadline
    (:func:`within`)."""
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore.NetworkBackend):
            raise TypeError(f"no network backend to keep a deadline in {type(transport)}")
        if not isinstance(backend, DeadlineBackend):
            pool._network_backend = DeadlineBackend(backend, left)  # type: ignore[union-attr]
    return client
