"""A small HTTP/1.1 server (keep-alive, one thread per connection) in front of the HTTP triggers.

The request line and headers are parsed here directly (``http.server`` goes through the much
slower ``email`` parser), and each reply leaves in a single write with ``TCP_NODELAY``, so the
host adds little to a request's latency.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["HttpReply", "HttpServer", "IncomingRequest", "reply_bytes"]

log = logging.getLogger("devhost.http")

MAX_LINE = 65536
MAX_HEADERS = 200
#: Kestrel's default keep-alive timeout, which the real host inherits.
KEEP_ALIVE_SECONDS = 130.0
#: The real host's request body limit (100 MB, its FUNCTIONS_REQUEST_BODY_SIZE_LIMIT default):
#: a larger body is answered 413 without being read, so the app never sees it.
MAX_BODY_BYTES = 104_857_600


@dataclass(frozen=True)
class IncomingRequest:
    """A parsed request: headers keep their order and repetitions."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    host: str


@dataclass
class HttpReply:
    """What to send back."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def reply_bytes(reply: HttpReply, *, head: bool, keep_alive: bool) -> bytes:
    """Serialize ``reply`` (status line, headers, body) into one buffer."""
    lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}", f"Date: {_http_date()}"]
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    no_body = reply.status in (204, 304) or 100 <= reply.status < 200
    if not no_body:
        lines.append(f"Content-Length: {len(reply.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head_bytes if head or no_body else head_bytes + reply.body


class _Connection(socketserver.StreamRequestHandler):
    """Serves the requests of one TCP connection, one after another."""

    disable_nagle_algorithm = True
    timeout = KEEP_ALIVE_SECONDS
    server: _Server

    def handle(self) -> None:
        self.server.track(self.connection, add=True)
        try:
            while self._serve_one():
                pass
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.server.track(self.connection, add=False)

    def _read_line(self) -> bytes:
        line = self.rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise _BadRequest(431, "line too long")
        return line

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            received = 0
            while True:
                size_line = self._read_line().split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError as exc:
                    raise _BadRequest(400, "bad chunk size") from exc
                if size < 0:
                    raise _BadRequest(400, "bad chunk size")
                if size == 0:
                    while self._read_line() not in (b"\r\n", b"\n", b""):
                        pass  # trailers are dropped
                    return b"".join(chunks)
                received += size
                if received > MAX_BODY_BYTES:
                    raise _BadRequest(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = headers.get("content-length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError as exc:
            raise _BadRequest(400, "bad Content-Length") from exc
        if size < 0:
            raise _BadRequest(400, "bad Content-Length")
        if size > MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large")
        body = self.rfile.read(size)
        if len(body) != size:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _serve_one(self) -> bool:
        line = self._read_line()
        if not line:
            return False
        if line in (b"\r\n", b"\n"):
            return True  # tolerated between pipelined requests
        try:
            parts = line.decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise _BadRequest(400, "bad request line")
            method, target, version = parts
            headers: list[tuple[str, str]] = []
            while True:
                raw = self._read_line()
                if raw in (b"\r\n", b"\n", b""):
                    break
                if len(headers) >= MAX_HEADERS:
                    raise _BadRequest(431, "too many headers")
                name, sep, value = raw.decode("latin-1").partition(":")
                if not sep or not name or name != name.strip():
                    raise _BadRequest(400, "bad header line")
                headers.append((name, value.strip()))
            lowered = {name.lower(): value for name, value in headers}
            connection = lowered.get("connection", "").lower()
            keep_alive = (
                "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
            )
            if lowered.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = self._read_body(lowered)
        except _BadRequest as exc:
            reply = HttpReply(exc.status, [("Content-Type", "text/plain")], str(exc).encode())
            self.wfile.write(reply_bytes(reply, head=False, keep_alive=False))
            return False
        request = IncomingRequest(method.upper(), target, headers, body, lowered.get("host", ""))
        reply = self.server.dispatch(request)
        keep_alive = keep_alive and not self.server.closing
        self.wfile.write(reply_bytes(reply, head=request.method == "HEAD", keep_alive=keep_alive))
        return keep_alive


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], dispatch: Callable[[IncomingRequest], HttpReply]
    ) -> None:
        super().__init__(address, _Connection)
        self.dispatch = dispatch
        self.closing = False
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def drop_connections(self) -> None:
        """Wake idle keep-alive readers so their threads end."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class HttpServer:
    """Binds at construction (so a busy port fails early), serves after :meth:`start`."""

    def __init__(
        self, host: str, port: int, dispatch: Callable[[IncomingRequest], HttpReply]
    ) -> None:
        self._in_flight = 0
        self._idle = threading.Condition()
        self._dispatch = dispatch
        self._server = _Server((host, port), self._counted)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="devhost-http",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def _counted(self, request: IncomingRequest) -> HttpReply:
        with self._idle:
            self._in_flight += 1
        try:
            if self._server.closing:
                return HttpReply(503, [("Content-Type", "text/plain"), ("Retry-After", "1")], b"")
            return self._dispatch(request)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def start(self) -> None:
        """Start accepting connections."""
        self._thread.start()

    def stop(self, grace: float) -> bool:
        """Stop accepting, let running requests finish (up to ``grace`` s), close connections."""
        self._server.closing = True
        if self._thread.is_alive():
            self._server.shutdown()
        deadline = time.monotonic() + grace
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(timeout=deadline - time.monotonic())
            finished = self._in_flight == 0
        self._server.drop_connections()
        self._server.server_close()
        if not finished:
            log.warning("%d HTTP request(s) still running at shutdown", self._in_flight)
        return finished
