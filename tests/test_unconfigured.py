"""Settings that do not validate: every HTTP function answers the 503 problem health answers
(never a 500; but those that run leniently, tests/inbound/test_lenient_settings.py) and changes
nothing; every queue trigger puts its message back instead of
spending its dequeue count on the way to the poison queue."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx
import pytest
from azure.storage.queue import QueueClient

from devhost import DevHost, app_functions, load_app
from shared.clock import ManualClock
from shared.settings import reset_settings_cache
from shared.unconfigured import RECHECK_SECONDS

REPO = Path(__file__).resolve().parents[1]
#: A value the settings refuse, and the setting the problem must name.
BROKEN = ("SMARTDIALOG_QUOTA_CALLS", "0")
CONFIGURED = {
    "SMARTDIALOG_CALLBACK_SECRETS": "unconfigured-test-callback-secret-0123456789",
    "AZURE_FUNCTIONS_ENVIRONMENT": "Development",
    "SMARTDIALOG_ACCESS_TOKEN": "unconfigured-token",  # health names every error, not just BROKEN
}


@pytest.fixture
def broken(storage_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in CONFIGURED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(*BROKEN)
    reset_settings_cache()
    return storage_env


def _bindings(kind: str) -> list[tuple[Any, dict[str, Any]]]:
    from function_app import app

    return [
        (function, binding)
        for function in app_functions(app)
        for binding in map(json.loads, function.get_raw_bindings())
        if binding["type"] == kind
    ]


def _path(route: str) -> str:
    return re.sub(r"\{[^}]*\}", "x1", route)


def _count(conn: str, queue: str) -> int:
    client = QueueClient.from_connection_string(conn, queue)
    client.create_queue() if not _exists(client) else None
    return int(client.get_queue_properties().approximate_message_count)


def _exists(client: QueueClient) -> bool:
    try:
        client.get_queue_properties()
    except Exception:
        return False
    return True


def test_every_http_function_answers_the_configuration_problem_not_a_500(broken: str) -> None:
    app = load_app("function_app:app", REPO)
    answers: dict[str, int] = {}
    queued = _count(broken, "smartdialog-outbound")  # what earlier tests left in this account
    with DevHost(app, REPO / "host.json", port=0, queues=False) as host:
        for _function, binding in _bindings("httpTrigger"):
            route = str(binding["route"])
            for method in binding.get("methods") or ["GET"]:
                response = httpx.request(
                    method.upper(),
                    f"{host.url}/api/{_path(route)}?token=v1.1.x",
                    json={},
                    timeout=10,
                )
                answers[f"{method.upper()} {route}"] = response.status_code
                assert response.status_code != 500, (route, response.text)
        health = httpx.get(f"{host.url}/api/health", timeout=5)
        send = httpx.post(
            f"{host.url}/api/messages",
            json={"Sender": "Shop", "Text": "Hi", "Recipients": [{"Address": "+358401234567"}]},
            timeout=10,
        )
    assert health.status_code == 503
    assert [e["field"] for e in health.json()["errors"]] == [BROKEN[0]]
    assert send.status_code == 503, send.text
    assert send.json()["errors"] == health.json()["errors"]
    assert _count(broken, "smartdialog-outbound") == queued  # nothing accepted
    assert list(answers.values()).count(503) >= len(answers) // 2, answers


def test_every_queue_trigger_puts_its_message_back_while_the_settings_do_not_validate(
    broken: str,
) -> None:
    triggers = _bindings("queueTrigger")
    assert len(triggers) >= 6
    for function, binding in triggers:
        queue = str(binding["queueName"])
        before = _count(broken, queue)
        message = func.QueueMessage(id="m1", body=b'{"kind": "anything"}')
        function.get_user_function()(message)  # returns: the host deletes the message
        client = QueueClient.from_connection_string(broken, queue)
        assert _count(broken, queue) == before + 1, function.get_function_name()
        assert [m.content for m in client.peek_messages(max_messages=32)].count(
            '{"kind": "anything"}'
        ) == 0, f"visible before {RECHECK_SECONDS} s"


@pytest.mark.parametrize("storage", ["garbage", "AccountName=acct", None, "no-certificate"])
def test_a_broken_storage_setting_is_the_503_naming_it_where_storage_is_needed(
    storage: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A malformed, incomplete or missing AzureWebJobsStorage made health answer 200 and every
    storage-backed function a 500; the functions that need no storage keep working. So does an
    identity whose certificate file is missing (the SDK raised FileNotFoundError: a 500)."""
    from shared.settings import StorageSettings

    for name, value in CONFIGURED.items():
        monkeypatch.setenv(name, value)
    for info in StorageSettings.model_fields.values():
        monkeypatch.delenv(str(info.alias), raising=False)
    if storage == "no-certificate":
        monkeypatch.setenv("AzureWebJobsStorage__accountName", "unconfiguredcert")
        monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
        monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
        monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(tmp_path / "none.pem"))
    elif storage is not None:
        monkeypatch.setenv("AzureWebJobsStorage", storage)
    reset_settings_cache()
    app = load_app("function_app:app", REPO)
    with DevHost(app, REPO / "host.json", port=0, queues=False) as host:
        for _function, binding in _bindings("httpTrigger"):
            for method in binding.get("methods") or ["GET"]:
                url = f"{host.url}/api/{_path(str(binding['route']))}?token=v1.1.x"
                response = httpx.request(method.upper(), url, json={}, timeout=10)
                assert response.status_code != 500, (binding["route"], response.text)
        health = httpx.get(f"{host.url}/api/health", timeout=5)
        customers = httpx.get(f"{host.url}/api/customers", timeout=10)  # its quota is a table
        listed = httpx.get(f"{host.url}/api/connections", timeout=10)
    reset_settings_cache()
    assert health.status_code == 503
    named = "AzureWebJobsStorage" + ("__accountName" if storage == "no-certificate" else "")
    assert [e["field"] for e in health.json()["errors"]] == [named]
    assert customers.status_code == 503, customers.text
    assert customers.json()["errors"] == health.json()["errors"]
    assert listed.status_code == 200, listed.text


def test_messages_put_back_while_unconfigured_log_one_error_a_minute_per_queue(
    broken: str,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each message put back wrote an error at every recheck (10,000 queued sends: 10,000 lines
    a minute); now each one's line is at DEBUG and one error a minute per queue counts them."""
    import logging

    from shared import unconfigured
    from shared.logs import HeldSends

    monkeypatch.setattr(unconfigured, "held", HeldSends(unconfigured.log, level=logging.ERROR,
                                                        what="queue message"))  # fmt: skip
    [(function, _)] = [
        (f, b) for f, b in _bindings("queueTrigger") if b["queueName"] == "smartdialog-outbound"
    ]
    _count(broken, "smartdialog-outbound")  # (made if none)
    with caplog.at_level(logging.DEBUG, logger="shared.unconfigured"):
        for i in range(5):
            function.get_user_function()(func.QueueMessage(id=f"m{i}", body=b'{"kind": "x"}'))
        manual_clock.advance(RECHECK_SECONDS)
        function.get_user_function()(func.QueueMessage(id="m5", body=b'{"kind": "x"}'))

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert errors[0].startswith("a queue message is waiting for the app's settings (queue "
                                "smartdialog-outbound): ")  # fmt: skip
    assert "SMARTDIALOG_QUOTA_CALLS" in errors[0]
    assert errors[1].startswith("5 queue message(s) waiting for the app's settings")
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 6
