"""A quota setting that does not validate holds a batch's and a question's sends, and their
status URLs still answer: pending, and nothing re-driven until the setting is fixed.

(``tests/inbound/test_lenient_settings.py`` covers a single send's status URL, the callbacks
and the operator's tools.)"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from shared.names import OUTBOUND_QUEUE
from shared.settings import StorageSettings
from shared.storage import queue_client
from tests.bulk.test_batch_packs import drivers, idle_batch_without_its_driver
from tests.bulk.test_bulk_action import batch_status
from tests.outbound.conftest import HttpAnswer, Outbound, call_http

BROKEN = "SMARTDIALOG_QUOTA_CALLS"


def question_status(location: str) -> HttpAnswer:
    """GET a question's status URL (its Location) through GetQuestionStatus."""
    parts = urlsplit(location)
    return call_http(
        "GetQuestionStatus",
        "GET",
        route_params={"QuestionId": unquote(parts.path.rsplit("/", 1)[-1])},
        params=dict(parse_qsl(parts.query)),
    )


def test_a_broken_quota_setting_leaves_a_batchs_status_url_answering_and_its_packs_held(
    outbound: Outbound,
) -> None:
    batch = idle_batch_without_its_driver(outbound)
    outbound.configure(QUOTA_CALLS="lots")

    held = batch_status(batch["Location"])

    assert held.status == 202, held.body  # pending, not a 503: the poll reads no quota
    assert held.body["Counts"]["queued"] == 3, held.body
    # Held by the broken setting, not idle: no driver to hit it (and none on every poll).
    assert queue_client(OUTBOUND_QUEUE, StorageSettings()).peek_messages() == []

    outbound.configure(QUOTA_CALLS="100")  # fixed: the next poll drives the idle pack again
    assert batch_status(batch["Location"]).status == 202
    assert len(drivers(outbound)) == 1
    outbound.drain()
    assert batch_status(batch["Location"]).body["Counts"]["sent"] == 3


def test_a_broken_quota_setting_leaves_a_questions_status_url_answering(
    outbound: Outbound,
) -> None:
    route = {"Service": "s-1001-twoway"}  # its replies come through our webhook
    assert call_http("RegisterInboundWebhook", "POST", route_params=route).status == 201
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": "+358401110001"}
    asked = call_http(
        "SendMessageAndWaitForReply", "POST", body=body, headers={"Service-Id": "s-1001-twoway"}
    )
    assert asked.status == 202, asked.body
    outbound.configure(QUOTA_CALLS="lots")

    refused = call_http(
        "SendMessageAndWaitForReply", "POST", body=body, headers={"Service-Id": "s-1001-twoway"}
    )
    assert refused.status == 503, refused.body  # a new send reads the quota
    assert [e["field"] for e in refused.body["errors"]] == [BROKEN]
    answer = question_status(asked.headers["Location"])
    assert answer.status == 202, answer.body  # waiting, as before the break
    assert answer.headers.get("Retry-After"), answer.headers


def test_a_broken_public_url_leaves_a_batchs_and_a_questions_status_url_answering(
    outbound: Outbound,
) -> None:
    """Their polls re-sign their Location on the public URL: while that setting was broken,
    they answered 503. They answer their status without a new Location now."""
    batch = idle_batch_without_its_driver(outbound)
    route = {"Service": "s-1001-twoway"}
    assert call_http("RegisterInboundWebhook", "POST", route_params=route).status == 201
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": "+358401110002"}
    asked = call_http(
        "SendMessageAndWaitForReply", "POST", body=body, headers={"Service-Id": "s-1001-twoway"}
    )
    assert asked.status == 202, asked.body
    outbound.configure(PUBLIC_BASE_URL="https://app.example/api")  # /api/api/...: refused

    held = batch_status(batch["Location"])
    question = question_status(asked.headers["Location"])

    for answer in (held, question):
        assert answer.status == 202, answer.body
        assert "Location" not in answer.headers
        assert "StatusUrl" not in answer.body
        assert answer.headers["Retry-After"]
    assert held.body["Counts"]["queued"] == 3
    assert question.body["Status"] == "open"
