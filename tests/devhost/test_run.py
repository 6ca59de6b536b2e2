"""`make run` (python -m devhost.run) as a newcomer meets it: start, try-it block, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devhost.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTDIALOG_")}
    env.pop("AzureWebJobsStorage", None)
    return subprocess.Popen(
        [sys.executable, "-m", "devhost.run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_taken_port_is_a_clear_error_and_a_non_zero_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _run("--port", str(port), "--sandbox-port", str(free_port()))
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in output
    # make passes no --port on: the way that works through make is the variable before it.
    assert "DEVHOST_PORT=N make run" in output


@pytest.mark.slow
def test_it_starts_everything_the_first_try_it_command_works_and_ctrl_c_stops_all() -> None:
    port, sandbox_port = free_port(), free_port()
    process = _run("--port", str(port), "--sandbox-port", str(sandbox_port))
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("Press Ctrl-C to stop everything" in line for line in lines):
            line = process.stdout.readline()
            assert line or process.poll() is None, "make run exited early:\n" + "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "make run did not start:\n" + "".join(lines)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/api/" in banner
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").json() == {"status": "ok"}

        # The first try-it command, pasted as printed: a send and its status URL.
        commands = re.findall(r"^1\. .*\n\s+(.+)$", banner, flags=re.MULTILINE)
        assert commands, banner
        result = subprocess.run(  # noqa: S602 - the command is the one the banner prints
            commands[0],
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "status URL: http://127.0.0.1" in result.stdout, result.stdout + result.stderr
        assert re.search(r"\[HTTP 20[02]\]", result.stdout), result.stdout
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "All stopped." in rest
    with socket.socket() as probe:  # everything it started has let go of its port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind(("127.0.0.1", port))


def test_the_second_connection_is_configured_and_has_try_it_lines(tmp_path: Path) -> None:
    from devhost.run import SAMPLE, SECOND_CONNECTION, try_it_block
    from devhost.stack import write_local_settings

    assert SECOND_CONNECTION == {
        "SMARTDIALOG_CONNECTIONS__SECOND__ACCESS_TOKEN": "sandbox-token-2",
        "SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMERS": "2001",
        "SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMER_ID": "2001",
        "SMARTDIALOG_CONNECTIONS__SECOND__SERVICE_ID": "s-2001-oneway",
    }
    written = write_local_settings(
        SAMPLE, tmp_path / "local.settings.json", {**SECOND_CONNECTION, "X": "wired"}
    )["Values"]
    assert {k: written[k] for k in SECOND_CONNECTION} == SECOND_CONNECTION
    block = try_it_block("http://h/api", "http://s", "http://peek")
    second = [line for line in block.splitlines() if "X-SmartDialog-Connection: second" in line]
    assert len(second) == 1
    assert "-X POST 'http://h/api/messages'" in second[0]
    assert "Customer-Id" not in second[0]  # the connection's defaults pick customer and service
    assert "curl -s 'http://h/api/connections'" in block
