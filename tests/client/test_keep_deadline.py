"""keep_deadline reaches every connection pool of an httpx client, the proxies the environment
names included, and refuses a client it cannot bound rather than leave its calls unbounded; its
streams tell a request that never left from one cut part-way."""

from __future__ import annotations

import time

import httpcore
import httpx
import pytest

from shared.deadline import Deadline, DeadlineBackend, DeadlineStream, keep_deadline


def test_the_pools_of_proxies_from_the_environment_keep_the_deadline_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with httpx.Client() as client:
        keep_deadline(keep_deadline(client))  # twice: wrapped once
        transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
        backends = [t._pool._network_backend for t in transports]  # type: ignore[attr-defined]

    assert len(backends) == 2
    assert all(isinstance(b, DeadlineBackend) for b in backends)
    assert not any(isinstance(b._inner, DeadlineBackend) for b in backends)


def test_a_client_without_a_network_backend_to_wrap_is_refused() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    with httpx.Client(transport=mock) as client, pytest.raises(TypeError):
        keep_deadline(client)


class _Wire(httpcore.NetworkStream):
    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def test_only_a_request_of_which_no_byte_went_out_is_cut_as_not_sent() -> None:
    deadline = Deadline.after(60)
    stream = DeadlineStream(_Wire(), deadline.left)
    stream.write(b"POST / HTTP/1.1\r\n\r\n")
    deadline.ends = 0  # passed with the request part-way: it may have been received
    with pytest.raises(httpcore.WriteTimeout):
        stream.write(b"{}")
    deadline.ends = time.monotonic() + 60
    stream.read(4096)  # an answer: the next write is the next request's first
    deadline.ends = 0
    with pytest.raises(httpcore.ConnectTimeout):  # as if never connected: not sent
        stream.write(b"POST / HTTP/1.1\r\n\r\n")
