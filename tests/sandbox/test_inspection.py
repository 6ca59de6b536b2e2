"""The inspection and control API: requests log, messages, reset, inbound messages."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from sandbox.contract import load_contract
from sandbox.server import SandboxServer
from tests.fixtures.sandbox import CallbackReceiver
from tests.sandbox.helpers import (
    CUSTOMER,
    DELIVERED,
    GROUP,
    SEND_HEADERS,
    TWOWAY,
    client,
    http,
    sms,
)


@pytest.fixture
def api(sandbox_server: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox_server) as c:
        yield c


def register(
    api: httpx.Client, endpoint: str, service: str = TWOWAY, customer: str = CUSTOMER
) -> str:
    response = api.post(
        f"/service/{service}/pipelines/actions",
        headers={"Customer": customer},
        json={
            "name": "PowerAutomate (Auto Created Webhook)",
            "actionType": "HttpRequest",
            "description": "test",
            "options": {"endpointUrl": endpoint, "httpVerb": "POST"},
        },
    )
    assert response.status_code == 201
    return str(response.json()["id"])


def test_requests_log_records_api_calls_without_authorization(
    api: httpx.Client, sandbox_server: SandboxServer
) -> None:
    api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED))
    api.get("/groupcontact/1001/s-1001-group/%2B358401234567", params={"Region": "FI"})
    entries = http.get(f"{sandbox_server.url}/sandbox/requests").json()
    send, lookup = entries
    assert send["method"] == "POST"
    assert send["path"] == "/api-integrations/v1/messages"
    assert send["operationId"] == "SendMessage"
    assert send["status"] == 200
    assert send["body"]["Recipients"] == [{"Address": DELIVERED}]
    assert send["response"]["MessagePartCount"] == 1
    assert send["headers"]["Customer-Id"] == "1001"
    assert "authorization" not in {h.lower() for h in send["headers"]}
    assert send["time"].endswith("Z")
    assert lookup["query"] == {"Region": "FI"}
    assert lookup["status"] == 404
    filtered = http.get(
        f"{sandbox_server.url}/sandbox/requests", params={"operationId": "SendMessage"}
    )
    assert len(filtered.json()) == 1


def test_messages_list_what_was_accepted(api: httpx.Client, sandbox_server: SandboxServer) -> None:
    answer = api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, content="Hi")).json()
    (message,) = http.get(f"{sandbox_server.url}/sandbox/messages").json()
    assert message["direction"] == "outbound"
    assert message["messageId"] == answer["MessageId"]
    assert message["recipients"] == [{"id": answer["Recipients"][0]["Id"], "address": DELIVERED}]
    assert message["content"] == "Hi"


def test_reset_restores_the_seed(api: httpx.Client, sandbox_server: SandboxServer) -> None:
    api.post(f"/groupcontact/{CUSTOMER}/{GROUP}", json={"phone": "+358401234567"})
    api.post(
        f"/whatsapp/templates/{CUSTOMER}/%2B358501234567",
        json={"DisplayName": "extra", "RawContent": "x", "Category": "UTILITY", "Language": "en"},
    )
    api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="r-reset"))
    register(api, "http://127.0.0.1:9/hook")

    assert http.post(f"{sandbox_server.url}/sandbox/reset").json() == {"status": "reset"}

    assert http.get(f"{sandbox_server.url}/sandbox/requests").json() == []
    assert http.get(f"{sandbox_server.url}/sandbox/messages").json() == []
    assert http.get(f"{sandbox_server.url}/sandbox/pipelines").json() == []
    assert api.get(f"/groupcontact/{CUSTOMER}/{GROUP}/%2B358401234567").status_code == 404
    assert [t["id"] for t in api.get(f"/whatsapp/templates/{CUSTOMER}").json()] == ["welcome"]
    again = api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="r-reset"))
    assert again.status_code == 200


def test_inbound_message_is_posted_to_the_services_actions(
    api: httpx.Client, sandbox_server: SandboxServer, callback_receiver: CallbackReceiver
) -> None:
    action = register(api, f"{callback_receiver.url}/hook?secret=s3")
    register(api, f"{callback_receiver.url}/other", service="s-1002-twoway", customer="1002")
    response = http.post(
        f"{sandbox_server.url}/sandbox/inbound",
        json={
            "sender": "+358401234567",
            "recipient": "12345",
            "content": "STOP",
            "service": TWOWAY,
            "attachments": [
                {"name": "a.jpg", "mimeType": "image/jpeg", "resourceLocation": "https://x/a.jpg"}
            ],
        },
    )
    assert response.status_code == 200
    body = response.json()
    payload = body["payload"]
    assert set(payload) == {
        "sender",
        "recipient",
        "content",
        "timestamp",
        "protocol",
        "attachments",
        "messageId",
    }
    assert payload["protocol"] == "SMS"
    assert payload["attachments"][0]["mimeType"] == "image/jpeg"
    schema = load_contract().notification_schema("/service/{Service}/pipelines/actions")
    assert load_contract().validator(schema).is_valid(payload)
    assert [(d["actionId"], d["status"]) for d in body["deliveries"]] == [(action, 200)]
    (call,) = callback_receiver.wait_for(1)
    assert call.method == "POST"
    assert call.path == "/hook"
    assert call.query == {"secret": "s3"}
    assert call.headers["Content-Type"] == "application/json"
    assert json.loads(call.body) == payload


def test_inbound_without_service_reaches_every_action_and_reports_failures(
    api: httpx.Client, sandbox_server: SandboxServer, callback_receiver: CallbackReceiver
) -> None:
    register(api, f"{callback_receiver.url}/one")
    register(api, "http://127.0.0.1:9/unreachable", service="s-1002-twoway", customer="1002")
    body = http.post(
        f"{sandbox_server.url}/sandbox/inbound",
        json={
            "sender": "+358401234567",
            "recipient": "12345",
            "content": "hi",
            "protocol": "WhatsApp",
        },
    ).json()
    statuses = sorted((d["status"] or 0) for d in body["deliveries"])
    assert statuses == [0, 200]
    assert body["payload"]["protocol"] == "WhatsApp"
    assert any(d["error"] for d in body["deliveries"])


def test_deleted_action_receives_nothing(
    api: httpx.Client, sandbox_server: SandboxServer, callback_receiver: CallbackReceiver
) -> None:
    created = api.post(
        f"/service/{TWOWAY}/pipelines/actions",
        headers={"Customer": CUSTOMER},
        json={
            "name": "n",
            "actionType": "HttpRequest",
            "description": "d",
            "options": {"endpointUrl": f"{callback_receiver.url}/gone", "httpVerb": "POST"},
        },
    )
    api.delete(created.headers["Location"].removeprefix("/api-integrations/v1"))
    body = http.post(
        f"{sandbox_server.url}/sandbox/inbound",
        json={"sender": "+358401234567", "recipient": "12345", "content": "hi"},
    ).json()
    assert body["deliveries"] == []


def test_inbound_validates_its_input(sandbox_server: SandboxServer) -> None:
    missing = http.post(f"{sandbox_server.url}/sandbox/inbound", json={"sender": "x"})
    assert missing.status_code == 400
    assert "recipient" in missing.json()["errorMessage"]
    unknown = http.post(
        f"{sandbox_server.url}/sandbox/inbound",
        json={"sender": "x", "recipient": "y", "content": "z", "service": "nope"},
    )
    assert unknown.status_code == 404


def test_health_and_unknown_control_routes(sandbox: SandboxServer) -> None:
    assert http.get(f"{sandbox.url}/sandbox/health").json() == {"status": "ok"}
    assert http.get(f"{sandbox.url}/sandbox/nope").status_code == 404
    assert http.get(f"{sandbox.url}/elsewhere").status_code == 404


def test_keep_alive_serves_many_requests_on_one_connection(sandbox_server: SandboxServer) -> None:
    with client(sandbox_server) as api:
        for _ in range(20):
            assert api.get("/phonenumberregions").status_code == 200
    connections = {
        e["headers"].get("Connection") for e in sandbox_server.state.snapshot("requests")
    }
    assert connections <= {"keep-alive", None}


def test_refused_calls_are_logged_without_an_operation(sandbox_server: SandboxServer) -> None:
    http.get(f"{sandbox_server.api_url}/customers", headers={"Authorization": "Bearer wrong"})
    (entry,) = sandbox_server.state.snapshot("requests")
    assert (entry["status"], entry["operationId"]) == (401, None)
    assert "Authorization" not in entry["headers"]
