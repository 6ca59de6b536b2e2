"""Our own storage failing in a sync action is a 503 ``storage-unavailable`` with
``Retry-After``, logged as a warning naming the operation, never a 500 ``internal`` (a bug)
with a traceback.

Storage is made unreachable for real: every endpoint of the connection string points at
``127.0.0.1:1``, where nothing listens (the SDK's ``ServiceRequestError``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.actions import ActionRequest, handle
from shared.settings import get_settings, reset_settings_cache

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
UNREACHABLE = (
    f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
    f"BlobEndpoint=http://127.0.0.1:1/{ACCOUNT};QueueEndpoint=http://127.0.0.1:1/{ACCOUNT};"
    f"TableEndpoint=http://127.0.0.1:1/{ACCOUNT};"
)
PHONE = {"Service": "s1", "Phone": "+358401234567"}
RULE = {
    "Id": "rule-1",
    "Match": {"EventType": "t"},
    "Message": {"Sender": "Ops", "Content": "hi"},
    "Recipients": {"Numbers": ["+358401234567"]},
}
BATCH = "0f8fad5b-d9cb-469f-a165-70867728950e"
QUESTION = "q" + "0" * 32 + "-" + "1" * 32
SMS = {"Sender": "Ops", "Protocol": "SMS", "Content": "hi",
       "Recipients": [{"Address": "+358401234567"}]}  # fmt: skip


@pytest.fixture
def storage_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AzureWebJobsStorage", UNREACHABLE)
    monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", "t")
    monkeypatch.setenv("SMARTDIALOG_CUSTOMER_ID", "1001")
    monkeypatch.setenv("SMARTDIALOG_CALLBACK_SECRETS", "k1:" + "a" * 48)
    monkeypatch.setenv("SMARTDIALOG_PUBLIC_BASE_URL", "https://app.example.net")
    reset_settings_cache()
    yield
    reset_settings_cache()


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def _requests() -> list[tuple[str, ActionRequest]]:
    from shared.outbound._bulk import BulkService
    from shared.outbound._service import send_service

    settings = get_settings()
    message = _token(send_service(settings).status_url("m-1"))
    batch = _token(BulkService(settings).status_url(BATCH))
    question = _token(send_service(settings).status_url(QUESTION))  # a question's subject: its id

    def get(route: dict[str, str], **query: str) -> ActionRequest:
        return ActionRequest("GET", route_params=route, query=query)

    def body(
        method: str, data: Any, route: dict[str, str] | None = None, **headers: str
    ) -> ActionRequest:
        raw = json.dumps(data).encode()
        return ActionRequest(method, route_params=route or {}, headers=headers, body=raw)

    return [
        ("GetSuppression", get(PHONE)),
        ("AddSuppression", ActionRequest("PUT", route_params=PHONE)),
        ("RemoveSuppression", ActionRequest("DELETE", route_params=PHONE)),
        ("GetMessageStatus", get({"MessageId": "m-1"}, token=message)),
        ("CancelMessage", ActionRequest("DELETE", route_params={"MessageId": "m-1"})),
        ("GetBulkStatus", get({"BatchId": BATCH}, token=batch)),
        ("GetQuestionStatus", get({"QuestionId": QUESTION}, token=question)),
        ("SendMessage", body("POST", SMS, None, **{"Service-Id": "s1"})),
        ("ListDeadLetters", get({})),
        ("ListNotificationRules", get({})),
        ("GetNotificationRule", get({"RuleId": "rule-1"})),
        ("CreateNotificationRule", body("POST", RULE)),
        ("DeleteNotificationRule", ActionRequest("DELETE", route_params={"RuleId": "rule-1"})),
        ("GetRecipientList", get({"ListName": "list-1"})),
        ("PutRecipientList", body("PUT", {"Numbers": ["+358401234567"]}, {"ListName": "l-1"})),
        (
            "UnregisterInboundWebhook",
            ActionRequest("DELETE", route_params={"Service": "s1", "ActionId": "a-1"}),
        ),
    ]


def test_every_action_on_unreachable_storage_answers_503_storage_unavailable(
    storage_down: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smartdialog")
    wrong: dict[str, Any] = {}
    for operation, request in _requests():
        caplog.clear()
        response = handle(operation, request)
        answer = (response.status, response.body.get("type", "").rsplit(":", 1)[-1])
        if answer != (503, "storage-unavailable") or response.all_headers.get("Retry-After") != "5":
            wrong[operation] = (*answer, response.all_headers.get("Retry-After"))
            continue
        assert response.body["detail"] == "Our storage failed; try again later."
        lines = [r for r in caplog.records if r.name.startswith("smartdialog")]
        assert not [r for r in lines if r.levelno >= logging.ERROR], operation
        assert not [r for r in lines if "Traceback" in r.getMessage()], operation
        answered = [r for r in lines if f"{operation} answered 503" in r.getMessage()]
        assert [r.levelno for r in answered] == [logging.WARNING], operation
    assert wrong == {}


def test_storage_refusing_the_apps_key_is_a_503_without_retry_after_saying_an_admin_must_act(
    azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong or rotated account key (403) is not mended by repeating the request: it was
    answered 'try again later' with Retry-After 5, so flows retried for ever. (The quota
    store's lasting failures already said so.)"""
    import re

    from shared import storage

    # Its 403s on create-if-missing count as "exists" for the process: keep them to this test.
    monkeypatch.setattr(storage, "_ready", set())
    wrong = re.sub(r"AccountKey=[^;]+", "AccountKey=" + "A" * 86 + "==", azurite.connection_string)
    monkeypatch.setenv("AzureWebJobsStorage", wrong)
    monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", "t")
    reset_settings_cache()
    try:
        for operation, request in [
            ("GetSuppression", ActionRequest("GET", route_params=PHONE)),
            ("ListNotificationRules", ActionRequest("GET")),
        ]:
            response = handle(operation, request)
            assert (response.status, response.body["type"].rsplit(":", 1)[-1]) == (
                503, "storage-unavailable"
            ), operation  # fmt: skip
            assert "Retry-After" not in response.all_headers, operation
            assert response.body["detail"] == (
                "Our storage refused the app (AuthorizationFailure); an administrator must act."
            ), operation
    finally:
        reset_settings_cache()
