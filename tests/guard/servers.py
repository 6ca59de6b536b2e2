"""Loopback servers that misbehave on purpose, and network backends that record or answer
without a server (for addresses no test may send traffic to)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpcore


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1 that runs ``behaviour(conn)`` for each connection."""

    url: str
    port: int
    requests: list[bytes] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # bytes each connection managed to send

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """The requests, once at least ``count`` arrived (connection threads run on their own)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.requests)


@contextmanager
def raw_server(
    behaviour: Callable[[socket.socket, RawServer], None],
    tls: ssl.SSLContext | None = None,
) -> Iterator[RawServer]:
    """Serves on 127.0.0.1, over TLS with ``tls`` (a server context) if given."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = RawServer(f"http://127.0.0.1:{port}", port)
    stop = threading.Event()

    listener.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_run, args=(conn,), daemon=True).start()

    def _run(conn: socket.socket) -> None:
        if tls is not None:
            conn.settimeout(10)
            try:
                conn = tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                server.requests.append(b"<handshake failed>")
                return
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            server.requests.append(data)
            with contextlib.suppress(OSError):  # the client hung up: what cut-off tests want
                behaviour(conn, server)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=2)


def trickle_headers(interval: float) -> Callable[[socket.socket, RawServer], None]:
    """Sends a status line and then one header byte every ``interval`` seconds, for ever."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while True:
            conn.sendall(b"x")
            time.sleep(interval)

    return behaviour


def trickle_body(interval: float) -> Callable[[socket.socket, RawServer], None]:
    """Answers 200 with a 1,000-byte body sent one byte every ``interval`` seconds."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"x")
            time.sleep(interval)

    return behaviour


def huge_answer(total: int) -> Callable[[socket.socket, RawServer], None]:
    """Answers 200 with a ``total``-byte body, written as fast as the client takes it."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        block = b"\0" * 65536
        sent = 0
        try:
            while sent < total:
                sent += conn.send(block)
        finally:
            server.sent.append(sent)

    return behaviour


def answer(status: int, *headers: str) -> Callable[[socket.socket, RawServer], None]:
    """Answers ``status`` with ``headers`` and an empty body."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        head = "".join(f"{h}\r\n" for h in headers)
        conn.sendall(f"HTTP/1.1 {status} X\r\n{head}Content-Length: 0\r\n\r\n".encode())

    return behaviour


def undecodable(status: int, encoding: str = "gzip") -> Callable[[socket.socket, RawServer], None]:
    """Answers ``status`` with ``Content-Encoding: gzip`` (``encoding``), ``Retry-After: 7``, a
    webhook's ``Location`` and a body that is not gzip (nor JSON)."""
    body = b"this is not gzip"

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: {encoding}\r\nRetry-After: 7\r\n"
            "Location: https://x.test/v1/pipelines/p-1/actions/a-1\r\n"
            # one answer per connection: said, so the client never reuses one being closed
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        conn.sendall(head.encode() + body)

    return behaviour


class RecordingBackend(httpcore.MockBackend):
    """Answers from ``buffer`` without any socket, and records where it was asked to connect."""

    def __init__(
        self, buffer: Iterable[bytes] = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",)
    ):
        super().__init__(list(buffer))
        self.connects: list[tuple[str, int]] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        return super().connect_tcp(host, port, timeout, local_address, socket_options)


@dataclass
class FakeResolver:
    """Resolves names from a table (there is no DNS here) and counts the questions."""

    table: dict[str, list[str]]
    asked: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        try:
            return list(self.table[host])
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def self_signed(name: str, directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for ``name``: (the server's context, a client context trusting only it)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
