"""The real app loads and serves through the dev host; the CLI starts and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devhost import DevHost, load_app
from shared.settings import reset_settings_cache

REPO = Path(__file__).resolve().parents[2]
#: What health needs: credentials, a callback secret of 32 bytes, a public URL (local
#: development) and a storage setting (read, not called: Azurite need not run).
CONFIGURED = {
    "SMARTDIALOG_CALLBACK_SECRETS": "devhost-test-callback-secret-0123456789",
    "SMARTDIALOG_ACCESS_TOKEN": "devhost-test-token",
    "AZURE_FUNCTIONS_ENVIRONMENT": "Development",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def test_product_app_health_answers_through_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CONFIGURED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SMARTDIALOG_PUBLIC_BASE_URL", raising=False)
    reset_settings_cache()
    app = load_app("function_app:app", REPO)
    with DevHost(app, REPO / "host.json", port=0, queues=False) as host:
        response = httpx.get(f"{host.url}/api/health", timeout=5)
    reset_settings_cache()
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_product_host_json_is_read_not_hard_coded() -> None:
    app = load_app("function_app:app", REPO)
    host = DevHost(app, REPO / "host.json", port=0, queues=False)
    try:
        queues = host.options.queues
        assert (queues.batch_size, queues.new_batch_threshold) == (16, 8)
        assert (queues.max_dequeue_count, queues.message_encoding) == (5, "none")
        assert (queues.visibility_timeout, queues.max_polling_interval) == (10.0, 1.0)
        assert host.options.route_prefix == "api"
    finally:
        host.stop()


def _start_cli(
    *args: str, queues: bool = False, storage: str | None = None, account: str | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if k != "DEVHOST_PORT" and not k.startswith("AzureWebJobsStorage")}  # fmt: skip
    env["SMARTDIALOG_CALLBACK_SECRETS"] = CONFIGURED["SMARTDIALOG_CALLBACK_SECRETS"]
    env["SMARTDIALOG_ACCESS_TOKEN"] = CONFIGURED["SMARTDIALOG_ACCESS_TOKEN"]
    if storage is not None:
        env["AzureWebJobsStorage"] = storage
    if account is not None:
        env["AzureWebJobsStorage__accountName"] = account
    # The dev host says it is local development itself, as Core Tools does (health needs it).
    for name in ("AZURE_FUNCTIONS_ENVIRONMENT", "SMARTDIALOG_PUBLIC_BASE_URL", "WEBSITE_HOSTNAME"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "devhost", *([] if queues else ["--no-queues"]), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_serves_then_exits_zero_on_sigterm() -> None:
    process = _start_cli("--port", "0", storage=CONFIGURED["AzureWebJobsStorage"])
    assert process.stdout is not None
    url = None
    for line in process.stdout:
        if match := re.search(r"Listening on (http://\S+?)\.? ", line):
            url = match.group(1)
            break
    assert url, "the CLI never said where it listens"
    assert httpx.get(f"{url}/api/health", timeout=5).status_code == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_cli_reports_a_busy_port_and_exits_non_zero() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _start_cli("--port", str(port), storage=CONFIGURED["AzureWebJobsStorage"])
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 2
    assert f"port {port}" in output
    assert "already in use" in output


@pytest.mark.parametrize(
    ("storage", "named"),
    [("not a connection string", "AzureWebJobsStorage"), (None, "AzureWebJobsStorage"),
     ("x!", "AzureWebJobsStorage__accountName")],
    ids=["malformed", "none", "account-name"],
)  # fmt: skip
def test_cli_with_storage_it_cannot_use_still_serves_health_naming_the_setting(
    storage: str | None, named: str, tmp_path: Path
) -> None:
    """As ``make run`` starts it (queue triggers on): a malformed AzureWebJobsStorage crashed it
    with a traceback and none made it exit 2, so /api/health never answered the 503 naming the
    setting that the README promises (dev-host review). Now each queue trigger that cannot
    listen is named, and HTTP goes on, as the Functions host does with a listener."""
    settings = tmp_path / "local.settings.json"
    settings.write_text('{"IsEncrypted": false, "Values": {}}')
    given = {"account": storage} if named.endswith("accountName") else {"storage": storage}
    process = _start_cli("--port", "0", "--settings", str(settings), queues=True, **given)
    assert process.stdout is not None
    said: list[str] = []
    url = None
    for line in process.stdout:
        said.append(line)
        if match := re.search(r"Listening on (http://\S+?)\.? ", line):
            url = match.group(1)
            break
    try:
        assert url, "".join(said)
        health = httpx.get(f"{url}/api/health", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    assert health.status_code == 503
    assert named in health.text
    assert any("queue trigger OutboundSender is not listening" in line for line in said)
