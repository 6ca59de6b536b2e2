"""Start and stop a throw-away Azurite (queues and tables) on free ports.

Used by the test suite, ``make run`` and ``make bench``. Azurite comes from the
npm-pinned ``node_modules`` (``npm ci``); it keeps everything in memory, so each run
starts clean. Ports are chosen by Azurite itself (``0``) and read back from its
start-up lines, so a busy 10000-10002 never matters.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCOUNT = "devstoreaccount1"
#: Azurite's published development key (not a secret: it is the same everywhere).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (\S+)")


class AzuriteError(RuntimeError):
    """Azurite is missing or did not come up."""


@dataclass
class Azurite:
    """A running Azurite process and the endpoints it listens on."""

    process: subprocess.Popen[str]
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def connection_string(self) -> str:
        """A connection string for the Azure SDKs and ``AzureWebJobsStorage``."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoints['Blob']}/{ACCOUNT};"
            f"QueueEndpoint={self.endpoints['Queue']}/{ACCOUNT};"
            f"TableEndpoint={self.endpoints['Table']}/{ACCOUNT};"
        )

    def stop(self) -> None:
        """Stop Azurite (and anything it spawned); safe to call twice."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def azurite_executable() -> str:
    """The pinned Azurite from ``node_modules``; never a global one of another version."""
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    raise AzuriteError(
        f"Azurite is not installed in {local.parent}: run `npm ci` (make does it for you)."
    )


def start_azurite(
    *, host: str = "127.0.0.1", ports: tuple[int, int, int] = (0, 0, 0), timeout: float = 60.0
) -> Azurite:
    """Start Azurite and wait until all three services listen.

    ``ports`` are (blob, queue, table); ``0`` lets Azurite pick a free one. Raises
    :class:`AzuriteError` with Azurite's own output when it fails to start.
    """
    if shutil.which("node") is None:
        raise AzuriteError("Node.js is needed for Azurite; install Node 20 or newer.")
    blob, queue, table = ports
    cmd = [
        azurite_executable(),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
        "--silent",
        "--blobHost", host, "--blobPort", str(blob),
        "--queueHost", host, "--queuePort", str(queue),
        "--tableHost", host, "--tablePort", str(table),
    ]  # fmt: skip
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so stop() takes its children too
        cwd=REPO_ROOT,
    )
    azurite = Azurite(process)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                azurite.endpoints[match.group(1)] = match.group(2).rstrip("/")
                if len(azurite.endpoints) == 3:
                    ready.set()

    threading.Thread(target=read, name="azurite-output", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            azurite.stop()
            tail = "\n".join(output[-20:]) or "(no output)"
            raise AzuriteError(f"Azurite did not start:\n{tail}")
    return azurite
