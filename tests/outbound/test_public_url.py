"""The public URL our status, delivery-report and webhook URLs start with: the setting, else
``https://$WEBSITE_HOSTNAME`` plus host.json's routePrefix in Azure, else localhost in local
development only; with neither, health and sends answer 503 instead of handing out localhost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import settings as settings_module
from shared.callback_urls import delivery_report_url
from shared.settings import PublicUrlNotConfigured, Settings, http_route_prefix
from tests.outbound.conftest import Outbound, call_http, sms, status_of

AZURE_HOST = "smartdialog-func-abc123.azurewebsites.net"


@pytest.fixture
def no_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SMARTDIALOG_PUBLIC_BASE_URL", "WEBSITE_HOSTNAME", "AZURE_FUNCTIONS_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def route_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A host.json of the test's own (write it), read afresh."""
    host_json = tmp_path / "host.json"
    monkeypatch.setattr(settings_module, "HOST_JSON", host_json)
    http_route_prefix.cache_clear()
    yield host_json
    http_route_prefix.cache_clear()


def test_in_azure_without_the_setting_urls_use_the_app_host_name_over_https(
    no_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSITE_HOSTNAME", AZURE_HOST)
    monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Production")
    settings = Settings(SMARTDIALOG_CALLBACK_SECRETS="s" * 32)
    assert settings.public_base_url == f"https://{AZURE_HOST}"
    assert settings.api_base_url == f"https://{AZURE_HOST}/api"
    url = delivery_report_url(settings, "m-1")
    assert url.startswith(f"https://{AZURE_HOST}/api/callbacks/dlr/m-1?token=")


def test_the_setting_wins_over_the_host_name(
    no_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSITE_HOSTNAME", AZURE_HOST)
    monkeypatch.setenv("SMARTDIALOG_PUBLIC_BASE_URL", "https://sms.example.com/")
    assert Settings().api_base_url == "https://sms.example.com/api"


def test_the_route_prefix_comes_from_host_json(
    no_platform: None, monkeypatch: pytest.MonkeyPatch, route_prefix: Path
) -> None:
    monkeypatch.setenv("WEBSITE_HOSTNAME", AZURE_HOST)
    route_prefix.write_text(json.dumps({"extensions": {"http": {"routePrefix": "/sd/v1/"}}}))
    assert Settings().api_base_url == f"https://{AZURE_HOST}/sd/v1"
    http_route_prefix.cache_clear()
    route_prefix.write_text(json.dumps({"extensions": {"http": {"routePrefix": ""}}}))
    assert Settings().api_base_url == f"https://{AZURE_HOST}"


def test_the_apps_own_host_json_gives_api() -> None:
    assert http_route_prefix() == "api"


def test_local_development_may_use_localhost(
    no_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Development")
    assert Settings().api_base_url == "http://localhost:7071/api"


def test_outside_local_development_without_either_there_is_no_public_url(no_platform: None) -> None:
    with pytest.raises(PublicUrlNotConfigured) as raised:
        Settings().api_base_url  # noqa: B018
    assert raised.value.status == 503
    assert "SMARTDIALOG_PUBLIC_BASE_URL" in (raised.value.detail or "")


def test_without_a_public_url_health_and_sends_answer_503_and_nothing_is_queued(
    outbound: Outbound, no_platform: None
) -> None:
    outbound.configure()  # forget the settings read with the fixture's public URL

    health = call_http("Health", "GET")
    assert health.status == 503
    assert [e["field"] for e in health.body["errors"]] == ["SMARTDIALOG_PUBLIC_BASE_URL"]
    assert "localhost" in health.body["errors"][0]["message"]  # it says why

    send = call_http("SendMessage", "POST", body=sms("+358401234567"))
    assert send.status == 503
    assert send.body["type"] == "urn:smartdialog-functions:problem:configuration"
    assert outbound.queued() == 0
    assert outbound.upstream() == []


def test_a_send_in_azure_hands_out_a_status_url_on_the_app_host_name(
    outbound: Outbound, no_platform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSITE_HOSTNAME", AZURE_HOST)
    outbound.configure()
    send = call_http("SendMessage", "POST", body=sms("+358401234567"))
    assert send.status == 202, send.body
    assert send.headers["Location"].startswith(f"https://{AZURE_HOST}/api/messages/")
    assert call_http("Health", "GET").status == 200


@pytest.mark.parametrize("public_url", ["https://app.example/api", None])
def test_a_status_poll_while_the_public_url_is_broken_answers_without_a_new_location(
    outbound: Outbound, no_platform: None, monkeypatch: pytest.MonkeyPatch, public_url: str | None
) -> None:
    """A status poll re-signs its Location on the public URL: while that setting was broken
    (or gone), every poll of a send accepted before answered 503 and the flow step failed. The
    poll answers its status without a new Location now (a poller polls the URL it has)."""
    monkeypatch.setenv("SMARTDIALOG_PUBLIC_BASE_URL", "https://app.example")
    outbound.configure()
    send = call_http("SendMessage", "POST", body=sms("+358401234567"))
    assert send.status == 202, send.body
    if public_url is None:
        monkeypatch.delenv("SMARTDIALOG_PUBLIC_BASE_URL")
    else:
        monkeypatch.setenv("SMARTDIALOG_PUBLIC_BASE_URL", public_url)
    outbound.configure()

    poll = status_of(send.headers["Location"])

    assert poll.status == 202, poll.body
    assert "Location" not in poll.headers
    assert "StatusUrl" not in poll.body
    assert int(poll.headers["Retry-After"]) >= 1
    assert poll.body["Status"] == "queued"
