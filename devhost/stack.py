"""Start the local pieces as child processes and wait until they answer.

Shared by ``make run`` (:mod:`devhost.run`) and ``make bench``: the sandbox and the dev host each
run in their own interpreter, as they would in real use (and so they never share a GIL with a
benchmark client). Every child gets its own process group, so a terminal's Ctrl-C reaches only the
parent, which stops the children in order.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "REPO_ROOT",
    "Child",
    "StartError",
    "check_port_free",
    "start_devhost",
    "start_sandbox",
    "write_local_settings",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StartError(RuntimeError):
    """A piece did not start; the message says which and why."""


def check_port_free(host: str, port: int, what: str, hint: str) -> None:
    """Raise :class:`StartError` if ``port`` cannot be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(
                    f"port {port} on {host} is already in use, so the {what} cannot start. "
                    f"Stop whatever uses it, or {hint}."
                ) from exc
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_ports(count: int, *, besides: set[int], host: str = "127.0.0.1") -> tuple[int, ...]:
    """``count`` distinct ports that were free a moment ago, none of ``besides`` (ports a later
    step binds: the system could hand one of them to a listener that asks for any port)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in besides and port not in ports:
            ports.append(port)
    return tuple(ports)


@dataclass
class Child:
    """A started child process and the URL it serves."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log file, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``timeout``; safe to call twice."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def _spawn(
    name: str, args: list[str], url: str, log_path: Path | None, env: dict[str, str] | None
) -> Child:
    output: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output = log_path.open("wb")
    try:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
        )
    finally:
        if output is not None:
            output.close()  # the child has its own copy
    return Child(name, process, url, log_path)


def wait_until_answering(child: Child, path: str, timeout: float = 30.0) -> None:
    """Poll ``child.url + path`` until it answers 2xx; raise :class:`StartError` if it dies."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            tail = child.log_tail()
            raise StartError(
                f"the {child.name} exited with status {child.process.returncode} while starting"
                + (f":\n{tail}" if tail else "")
            )
        try:
            with _NO_PROXY.open(child.url + path, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    child.stop()
    raise StartError(f"the {child.name} did not answer at {child.url}{path}: {last_error}")


def start_sandbox(
    *,
    host: str = "127.0.0.1",
    port: int,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> Child:
    """``python -m sandbox`` on ``port``, answering ``/sandbox/health``."""
    try:
        import sandbox.server  # noqa: F401 - only to fail early and clearly
    except ImportError as exc:
        raise StartError(f"the SmartDialog sandbox is not importable yet ({exc})") from exc
    args = ["-m", "sandbox", "--host", host, "--port", str(port), *extra_args]
    child = _spawn("sandbox", args, f"http://{host}:{port}", log_path, None)
    wait_until_answering(child, "/sandbox/health", timeout)
    return child


def start_devhost(
    *,
    host: str = "127.0.0.1",
    port: int,
    settings_path: Path | None = None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> Child:
    """``python -m devhost`` on ``port``; ready once its root page answers."""
    args = ["-m", "devhost", "--host", host, "--port", str(port), *extra_args]
    if settings_path is not None:
        args += ["--settings", str(settings_path)]
    child = _spawn("dev host", args, f"http://{host}:{port}", log_path, env)
    wait_until_answering(child, "/", timeout)
    return child


def write_local_settings(sample: Path, target: Path, overrides: dict[str, str]) -> dict[str, Any]:
    """Write ``target`` = ``sample`` with ``overrides`` in ``Values``; returns the document."""
    doc: dict[str, Any] = {"IsEncrypted": False, "Values": {}}
    if sample.exists():
        doc = json.loads(sample.read_text(encoding="utf-8"))
    values = dict(doc.get("Values") or {})
    values.update(overrides)
    doc["Values"] = values
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    with contextlib.suppress(OSError):
        target.chmod(0o600)  # it may hold secrets
    return doc
