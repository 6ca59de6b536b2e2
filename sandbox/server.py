"""The sandbox's HTTP server: a stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive.

Programmatic use (tests, benchmarks)::

    from sandbox.server import SandboxServer

    with SandboxServer(port=0, quota_calls=5, quota_period=1.0) as server:  # port 0: any free port
        auth = {"Authorization": f"Bearer {server.token}"}
        httpx.get(server.api_url + "/customers", headers=auth)
        server.state.snapshot("requests")  # what it received
        server.account_token("2")  # account 2's static token: customer 2001 only
        server.reset()  # back to the seed
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from sandbox.app import SEED_PATH, Request, Response, Sandbox, SandboxConfig
from sandbox.contract import BASE_PATH
from sandbox.faults import FaultPlan
from sandbox.quota import Clock
from sandbox.state import SandboxState

__all__ = ["SandboxServer"]

log = logging.getLogger("sandbox.server")
NO_BODY_STATUSES = frozenset({204, 304})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s went away", client_address)  # normal for benchmarks and timeouts
        else:
            log.exception("error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    server: _HTTPServer

    def _serve(self) -> None:
        request = Request(
            method=self.command,
            target=self.path,
            headers=dict(self.headers.items()),
            body=self._body(),
        )
        response = self.server.sandbox.handle(request)
        if response.drop:
            self._reset()
            return
        self._write(response)

    def _reset(self) -> None:
        """Reset the connection (RST, no answer): linger 0, then close the socket and its
        reader (which holds a reference that would delay the close); the writer holds none."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _write(self, response: Response) -> None:
        content = response.content()
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {response.status} {phrase}", "Server: smartdialog-sandbox"]
        if response.status not in NO_BODY_STATUSES:
            if content:
                lines.append("Content-Type: application/json; charset=utf-8")
            lines.append(f"Content-Length: {len(content)}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # One write per response: with TCP_NODELAY, headers and body leave in the same segment.
        self.wfile.write(
            head
            if self.command == "HEAD" or response.status in NO_BODY_STATUSES
            else head + content
        )

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class SandboxServer:
    """A sandbox on a background thread. ``port=0`` picks a free port; ``url`` is known once
    started.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        quota_calls: int = 100,
        quota_period: float = 60.0,
        dlr_delay: float = 0.2,
        slow_seconds: float = 3.0,
        latency_ms: float = 0.0,
        static_token: str | None = "sandbox-token",  # noqa: S107 - public test token
        token_ttl: int = 3600,
        refresh_token_ttl: int = 0,
        public_url: str | None = None,
        seed_path: str | Path | None = None,
        log_limit: int = 10_000,
        faults: FaultPlan | None = None,
        account_tokens: Mapping[str, Sequence[str]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.config = SandboxConfig(
            quota_calls=quota_calls,
            quota_period=quota_period,
            dlr_delay=dlr_delay,
            slow_seconds=slow_seconds,
            latency_ms=latency_ms,
            static_token=static_token,
            token_ttl=token_ttl,
            refresh_token_ttl=refresh_token_ttl,
            public_url=public_url,
            seed_path=Path(seed_path) if seed_path else SEED_PATH,
            log_limit=log_limit,
            faults=faults or FaultPlan(),
            account_tokens={k: list(v) for k, v in (account_tokens or {}).items()},
        )
        self.app = Sandbox(self.config, clock=clock)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> SandboxServer:
        """Open the listening socket (done by ``start``; separate so the CLI can report the port
        first).
        """
        if self._httpd is None:
            self._httpd = _HTTPServer((self.host, self.port), self.app)
            self.port = self._httpd.server_address[1]
        return self

    def start(self) -> SandboxServer:
        """Serve on a daemon thread; returns self."""
        self.bind()
        assert self._httpd is not None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until ``stop`` (or KeyboardInterrupt)."""
        self.bind()
        assert self._httpd is not None
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving, cancel pending callbacks and close the socket. Idempotent."""
        httpd, self._httpd = self._httpd, None
        self.app.close()
        if httpd is not None:
            if self._thread is not None:
                httpd.shutdown()
                self._thread.join(timeout=5)
            httpd.server_close()

    def reset(self) -> None:
        """Back to the seed (same as ``POST /sandbox/reset``)."""
        self.app.reset()

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:54321``."""
        if self._httpd is None:
            raise RuntimeError("the sandbox is not running; call start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """``url`` plus ``/api-integrations/v1``."""
        return self.url + BASE_PATH

    @property
    def token(self) -> str:
        """The static bearer token accepted on API calls."""
        if not self.config.static_token:
            raise RuntimeError("the static token is disabled")
        return self.config.static_token

    def account_token(self, account: str) -> str:
        """The first static bearer token of ``account`` (e.g. ``"2"``: ``sandbox-token-2``)."""
        tokens = self.app.accounts[account].static_tokens
        if not tokens:
            raise RuntimeError(f"account {account} has no static token")
        return tokens[0]

    @property
    def authority(self) -> str:
        """The B2C-style OAuth authority path on this sandbox: ``{url}/{tenant}/{policy}``."""
        oauth = self.app.seed.get("oauth", {})
        return (
            f"{self.url}/{oauth.get('tenant', 'sandbox')}/{oauth.get('policy', 'B2C_1A_sandbox')}"
        )

    @property
    def state(self) -> SandboxState:
        """Live state for assertions: ``state.snapshot("requests" | "messages" |
        "delivery_reports")`` etc.
        """
        return self.app.state

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
