"""One deadline for a whole operation, kept by every network step of it.

httpx's timeouts bound each step on its own (a connect, each write, each read), so an answer
that trickles in a few bytes per read, or a re-try after a renewed token, can take any number of
timeouts in all. Inside :func:`within` (on the calling thread), a client made by
:func:`keep_deadline` gives each connect, TLS handshake, write and read at most the time left
before the deadline, and none once it has passed (that step's httpcore timeout is raised): no
byte of a request goes out, and no answer is waited for, after the deadline.

httpx has no public way to hand its transport a network backend: :func:`keep_deadline` wraps the
one of each connection pool the client made (its own, and any for a proxy the environment names)
and raises ``TypeError`` if httpx no longer has one to wrap, rather than leave calls unbounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ssl import SSLContext
from typing import Any

import httpcore
import httpx

__all__ = ["keep_deadline", "left", "within"]

_local = threading.local()


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Run the block under a deadline ``seconds`` from now (None: no deadline of its own; an
    enclosing one still holds)."""
    outer: float | None = getattr(_local, "deadline", None)
    if seconds is not None:
        ends = time.monotonic() + seconds
        _local.deadline = ends if outer is None else min(outer, ends)
    try:
        yield
    finally:
        _local.deadline = outer


def left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout``, or the time left before this thread's deadline if that is shorter; raises
    ``error`` once the deadline has passed."""
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("the operation's deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        wait = left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, wait))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        wait = left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, wait, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        wait = left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, wait, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def keep_deadline(client: httpx.Client) -> httpx.Client:
    """``client``, its connection pools' network steps kept within :func:`within`'s deadline."""
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore.NetworkBackend):
            raise TypeError(f"no network backend to keep a deadline in {type(transport)}")
        if not isinstance(backend, _Backend):
            pool._network_backend = _Backend(backend)  # type: ignore[union-attr]
    return client
