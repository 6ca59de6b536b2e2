"""``python -m sandbox`` in the foreground."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.__main__ import parse_args
from tests.sandbox.helpers import http

REPO = Path(__file__).resolve().parents[2]


def test_flags_fall_back_to_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_PORT", "9999")
    monkeypatch.setenv("SANDBOX_QUOTA_CALLS", "7")
    monkeypatch.setenv("SANDBOX_STATIC_TOKEN", "t")
    args = parse_args([])
    assert (args.port, args.quota_calls, args.static_token) == (9999, 7, "t")
    assert parse_args(["--port", "1234"]).port == 1234


def test_runs_in_the_foreground_and_exits_cleanly_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--host", "127.0.0.1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("SmartDialog sandbox listening on http://127.0.0.1:")
        url = line.split()[4]
        assert http.get(f"{url}/sandbox/health").json() == {"status": "ok"}
        process.send_signal(signal.SIGINT)
        try:  # within a second; before, never when pytest itself ran with SIGINT ignored
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, said = process.communicate()
            hung = f"still running 30 s after Ctrl-C; stderr: {said[-2000:]}"
            raise AssertionError(hung) from None
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_help_documents_the_environment_variables() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sandbox", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "SANDBOX_PORT",
        "SANDBOX_QUOTA_CALLS",
        "SANDBOX_QUOTA_PERIOD",
        "SANDBOX_DLR_DELAY",
    ):
        assert name in out
