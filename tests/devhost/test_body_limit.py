"""The dev host refuses bodies over the real host's limit before reading them, as the real host
does, and never waits on a chunk size it cannot honour."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import azure.functions as func
import pytest

from devhost import DevHost
from devhost._http import MAX_BODY_BYTES
from tests.devhost.conftest import host_options

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
calls: list[int] = []


@app.function_name("Echo")
@app.route(route="echo", methods=["POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    calls.append(len(req.get_body()))
    return func.HttpResponse(req.get_body())


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with DevHost(app, host_options(), port=0, queues=False) as running:
        yield int(running.url.rsplit(":", 1)[1])


def exchange(port: int, head: bytes) -> bytes:
    """Send ``head`` (and no more) and read the answer until the host closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data


def test_a_content_length_over_the_hosts_limit_is_413_without_reading_the_body(
    port: int,
) -> None:
    calls.clear()
    too_big = MAX_BODY_BYTES + 1
    answer = exchange(
        port, f"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {too_big}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert calls == []


def test_chunks_adding_up_over_the_limit_are_413(port: int) -> None:
    calls.clear()
    size = f"{MAX_BODY_BYTES + 1:x}".encode()
    answer = exchange(
        port,
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + size
        + b"\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert calls == []


def test_a_negative_chunk_size_is_400_not_a_read_until_the_connection_closes(port: int) -> None:
    answer = exchange(
        port, b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")
