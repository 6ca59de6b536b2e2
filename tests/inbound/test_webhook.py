"""The inbound webhook and its intake processor: two storage calls per webhook request, one
CloudEvent per message (de-duplicated behind the queue), unforgeable, crash-safe."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import names
from shared.clock import ManualClock
from shared.inbound import (
    MESSAGE_RECEIVED,
    MalformedIntake,
    new_nonce,
    webhook_url,
)
from shared.settings import get_settings
from shared.signing import TokenPurpose, sign
from shared.storage import queue_client
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import OLD_SECRET, SECRET, TWO_WAY, Inbound


def payload(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sender": "+358401234567",
        "recipient": "+358501234567",
        "content": "Hello there",
        "timestamp": "2026-01-31T12:00:00.123Z",
        "protocol": "SMS",
        "attachments": [],
        "messageId": str(uuid.uuid4()),
    }
    body.update(changes)
    return body


def token_for(service: str = TWO_WAY) -> str:
    query = dict(parse_qsl(urlsplit(webhook_url(get_settings(), service, new_nonce())).query))
    return query["token"]


def post(
    env: Inbound,
    body: Any,
    *,
    token: str | None,
    service: str = TWO_WAY,
    connection: str | None = "default",
) -> Any:
    """POST ``body`` to the webhook of ``service`` with ``token`` and the URL's ``connection``
    parameter (None: a URL made before connections, without one)."""
    params = {"token": token} if token is not None else {}
    if connection is not None:
        params["connection"] = connection
    return env.call(
        "InboundWebhook", "POST", route_params={"Service": service}, params=params, body=body
    )


def assert_no_trace(env: Inbound) -> None:
    assert env.count(names.INBOUND_INTAKE_QUEUE) == 0
    assert env.count(names.INBOUND_QUEUE) == 0
    assert env.count(names.INBOUND_DELIVERIES_QUEUE) == 0
    assert env.rows(names.INBOUND_SEEN_TABLE) == []
    assert env.rows(names.SUPPRESSIONS_TABLE) == []


def take_intake(env: Inbound) -> list[tuple[str, str]]:
    """(queue message id, text) of every intake message, removed from the queue, so a test can
    deliver them to the processor itself (twice, out of order, ...)."""
    client = queue_client(names.INBOUND_INTAKE_QUEUE)
    taken = []
    for message in client.receive_messages(messages_per_page=32, visibility_timeout=30):
        taken.append((str(message.id), str(message.content)))
        client.delete_message(message)
    return taken


@pytest.fixture
def storage_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP request the storage SDKs make in this process, as ``METHOD path``."""
    from azure.core.pipeline.transport import RequestsTransport

    seen: list[str] = []
    real = RequestsTransport.send

    def counting(self: Any, request: Any, **kwargs: Any) -> Any:
        seen.append(f"{request.method} {urlsplit(request.url).path}")
        return real(self, request, **kwargs)

    monkeypatch.setattr(RequestsTransport, "send", counting)
    return seen


# --- the webhook: two storage calls, 202 ---------------------------------------------------------


def test_inbound_message_becomes_one_cloudevent_on_the_inbound_queue(inbound: Inbound) -> None:
    body = payload(
        attachments=[{"name": "a.jpg", "mimeType": "image/jpeg", "resourceLocation": "x"}]
    )
    answer = post(inbound, body, token=token_for())
    assert answer.status == 202
    assert answer.body == {"status": "accepted", "id": f"{TWO_WAY}:{body['messageId']}"}
    assert inbound.count(names.INBOUND_INTAKE_QUEUE) == 1
    assert inbound.count(names.INBOUND_QUEUE) == 0  # the processor publishes, not the webhook

    assert inbound.process_intake() == 1
    [event] = inbound.read(names.INBOUND_QUEUE)
    assert event["specversion"] == "1.0"
    assert event["type"] == MESSAGE_RECEIVED
    assert event["id"] == answer.body["id"]
    assert event["subject"] == body["messageId"]
    data = event["data"]
    for field in ("sender", "recipient", "content", "protocol", "messageId", "attachments"):
        assert data[field] == body[field]
    assert data["service"] == TWO_WAY
    assert "optOut" not in data
    assert data["connection"] == "default"
    assert inbound.rows(names.INBOUND_SEEN_TABLE) == []  # the processor keeps no claim row
    assert inbound.count(names.INBOUND_INTAKE_QUEUE) == 0


def test_the_webhook_makes_one_storage_call_once_its_nonce_is_known_not_revoked(
    inbound: Inbound, storage_requests: list[str], manual_clock: ManualClock
) -> None:
    from shared.inbound import _registry

    _registry._NOT_REVOKED.clear()  # a fresh process
    token = token_for()
    nonce = token.split(".")[2]
    table = names.REVOKED_TOKENS_TABLE
    check = f"GET /devstoreaccount1/{table}(PartitionKey='{TWO_WAY}',RowKey='{nonce}')"
    intake = f"POST /devstoreaccount1/{names.INBOUND_INTAKE_QUEUE}/messages"
    # Whether the ~asks-questions rows are complete (they are not: every message is processed).
    layout = f"GET /devstoreaccount1/{names.SUBSCRIPTIONS_TABLE}(PartitionKey='~layout',RowKey='asks-questions')"  # noqa: E501
    seen = []
    for _ in range(3):
        storage_requests.clear()
        assert post(inbound, payload(), token=token).status == 202
        seen.append(list(storage_requests))
    # The revocation check and the layout, then the intake message; then only the intake message.
    assert seen == [[check, layout, intake], [intake], [intake]]
    manual_clock.advance(_registry.REVOCATION_CACHE_SECONDS + 1)
    storage_requests.clear()
    assert post(inbound, payload(), token=token).status == 202
    assert storage_requests == [check, layout, intake]  # checked again once the trust ran out

    storage_requests.clear()
    forged = post(inbound, payload(), token="v1.0.forged")
    assert (forged.status, forged.body["type"]) == (
        401,
        "urn:smartdialog-functions:problem:unauthorized",
    )
    assert storage_requests == []  # a forged token costs no storage call at all
    _registry._NOT_REVOKED.clear()
    assert post(inbound, b"{not json", token=token).status == 400
    assert [r.split()[0] for r in storage_requests] == ["GET"]  # the revocation check, no write


def test_queue_messages_are_plain_json_text_not_base64(inbound: Inbound) -> None:
    post(inbound, payload(), token=token_for())
    [intake] = queue_client(names.INBOUND_INTAKE_QUEUE).peek_messages()
    assert json.loads(intake.content)["service"] == TWO_WAY
    inbound.process_intake()
    [message] = queue_client(names.INBOUND_QUEUE).peek_messages()
    assert message.content.startswith("{")


def test_upstream_retrying_the_webhook_yields_the_same_event_id(inbound: Inbound) -> None:
    body = payload()
    first = post(inbound, body, token=token_for())
    again = post(inbound, body, token=token_for())
    # Both are acknowledged (the webhook does not look anything up), with the same event id.
    assert (first.status, again.status) == (202, 202)
    assert first.body == again.body
    assert inbound.process_intake() == 2
    events = inbound.read(names.INBOUND_QUEUE)
    assert [e["id"] for e in events] == [first.body["id"]] * 2  # consumers de-dup on the id
    for event in events:
        del event["data"]["receivedAt"]  # when the webhook took each copy
        event.pop("traceparent", None)
    assert events[0] == events[1]


def test_same_message_id_on_another_service_is_not_a_duplicate(inbound: Inbound) -> None:
    body = payload()
    post(inbound, body, token=token_for())
    other = "s-1002-twoway"
    assert post(inbound, body, token=token_for(other), service=other).status == 202
    inbound.process_intake()
    assert inbound.count(names.INBOUND_QUEUE) == 2


def test_message_without_message_id_is_deduplicated_on_its_payload(inbound: Inbound) -> None:
    body = payload()
    del body["messageId"]
    first = post(inbound, body, token=token_for())
    second = post(inbound, body, token=token_for())
    assert first.body["id"] == second.body["id"]
    inbound.process_intake()
    event, repeat = inbound.read(names.INBOUND_QUEUE)
    assert repeat["id"] == event["id"]
    assert event["data"]["messageId"].startswith("sha256-")
    assert event["id"] == first.body["id"]


def test_the_same_text_again_without_message_id_or_timestamp_is_another_message(
    inbound: Inbound, callback_receiver: CallbackReceiver, manual_clock: ManualClock
) -> None:
    from tests.inbound.test_subscriptions import subscribe

    subscribe(inbound, callback_receiver.url)
    body = payload(content="YES")
    del body["messageId"], body["timestamp"]  # nothing tells a second "YES" from a retry
    first = post(inbound, body, token=token_for())
    manual_clock.advance(3 * 3600)
    second = post(inbound, body, token=token_for())
    assert first.body["id"] != second.body["id"]
    assert inbound.process_intake() == 2
    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 2
    assert [json.loads(c.body)["content"] for c in callback_receiver.wait_for(2)] == ["YES"] * 2


@pytest.mark.parametrize(
    "changes",
    [
        {"messageId": ""},
        {"timestamp": ""},
        {"timestamp": "15.01.2024 10:30:00"},
        {"timestamp": "0001-01-01T00:00:00+01:00"},  # no time UTC can hold
        # No date-time, though pydantic reads each as one (a midnight, or a Unix time: a reply
        # would be taken as written before its question was asked): as in delivery reports.
        {"timestamp": "2024-01-15"},
        {"timestamp": "20240115"},
        {"timestamp": 1705314600},
        {"protocol": "WhatsApp-Business-Cloud-API-Interactive"},
        {"protocol": ""},
    ],
    ids=["empty-id", "empty-time", "local-time-format", "time-out-of-range", "date-alone",
         "digits", "unix-time", "long-protocol", "empty-protocol"],
)  # fmt: skip
def test_shapes_the_definition_allows_are_accepted(
    inbound: Inbound, changes: dict[str, object]
) -> None:
    body = payload(**changes)
    first = post(inbound, body, token=token_for())
    assert first.status == 202, first.body
    assert post(inbound, body, token=token_for()).body == first.body  # a retry: the same id
    assert inbound.process_intake() == 2
    event, _ = inbound.read(names.INBOUND_QUEUE)
    data = event["data"]
    assert event["id"] == first.body["id"]
    if changes.get("messageId") == "":  # "" is no id: the payload's hash is
        assert data["messageId"].startswith("sha256-")
    if "timestamp" in changes:  # no time we can read: as if absent, the receive time stands in
        assert "timestamp" not in data
        assert event["time"] == data["receivedAt"]
    assert data.get("protocol") == (body["protocol"] or None)


def test_a_protocol_longer_than_any_is_a_400_naming_it(inbound: Inbound) -> None:
    # Every part of a message too large for one queue message repeats it: it stays bounded.
    answer = post(inbound, payload(protocol="x" * 257), token=token_for())
    assert answer.status == 400
    assert [e["field"] for e in answer.body["errors"]] == ["protocol"]
    assert_no_trace(inbound)


@pytest.mark.parametrize(
    ("given", "utc"),
    [
        ("2024-01-15T10:30:00", "2024-01-15T10:30:00Z"),  # no zone: UTC, as in delivery reports
        ("2024-01-15T12:30:00+02:00", "2024-01-15T10:30:00Z"),
        ("2024-01-15T10:30:00.250Z", "2024-01-15T10:30:00.250000Z"),
    ],
)
def test_the_event_time_is_the_messages_timestamp_in_utc_rfc_3339(
    inbound: Inbound, given: str, utc: str
) -> None:
    assert post(inbound, payload(timestamp=given), token=token_for()).status == 202
    inbound.process_intake()
    [event] = inbound.read(names.INBOUND_QUEUE)
    assert event["time"] == event["data"]["timestamp"] == utc


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "v1.0.AAAA",
        "not-a-token",
        sign(TokenPurpose.WEBHOOK, f"service/{TWO_WAY}", secrets=["someone-elses-secret-" * 2]),
        sign(TokenPurpose.DLR, f"service/{TWO_WAY}", secrets=[SECRET]),
        sign(TokenPurpose.WEBHOOK, "service/s-1002-twoway", secrets=[SECRET]),
    ],
    ids=["missing", "empty", "garbage-v1", "garbage", "forged", "dlr-purpose", "other-service"],
)
def test_forged_or_missing_token_gets_401_and_leaves_no_trace(
    inbound: Inbound, token: str | None
) -> None:
    answer = post(inbound, payload(content="STOP"), token=token)
    assert answer.status == 401
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert_no_trace(inbound)


def test_forged_token_with_a_broken_body_is_401_not_400(inbound: Inbound) -> None:
    assert post(inbound, b"{not json", token="v1.0.forged").status == 401
    assert_no_trace(inbound)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b"", json.dumps({"content": "no sender"}).encode(), b'{"sender": 5}'],
    ids=["not-json", "array", "empty", "no-sender", "wrong-type"],
)
def test_malformed_body_gets_400_and_leaves_no_trace(inbound: Inbound, body: bytes) -> None:
    answer = post(inbound, body, token=token_for())
    assert answer.status == 400
    assert answer.body["type"].endswith(":validation")
    assert_no_trace(inbound)


def test_stale_secret_token_is_refused_once_the_secret_is_removed(inbound: Inbound) -> None:
    inbound.configure(CALLBACK_SECRETS=OLD_SECRET)
    stale = token_for()
    inbound.configure(CALLBACK_SECRETS=SECRET)
    assert post(inbound, payload(), token=stale).status == 401
    assert_no_trace(inbound)


def test_rotated_secrets_accept_urls_signed_with_the_previous_one(inbound: Inbound) -> None:
    inbound.configure(CALLBACK_SECRETS=OLD_SECRET)
    old_url_token = token_for()
    inbound.configure(CALLBACK_SECRETS=f"{SECRET},{OLD_SECRET}")
    new_url_token = token_for()
    assert new_url_token != old_url_token
    assert post(inbound, payload(), token=old_url_token).status == 202
    assert post(inbound, payload(), token=new_url_token).status == 202
    # A URL made now is signed with the newest secret: it survives dropping the old one.
    inbound.configure(CALLBACK_SECRETS=SECRET)
    assert post(inbound, payload(), token=new_url_token).status == 202
    assert inbound.process_intake() == 3
    assert inbound.count(names.INBOUND_QUEUE) == 3


def test_a_storage_failure_answers_500_stores_nothing_and_the_retry_publishes(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.inbound import _http

    body = payload()
    receiver = _http._receiver(get_settings())

    class Broken:
        def send_message(self, content: Any, **kwargs: Any) -> Any:
            raise RuntimeError("queue down")

    real = receiver._intake
    monkeypatch.setattr(receiver, "_intake", Broken())
    assert post(inbound, body, token=token_for()).status == 500  # SmartDialog retries
    assert_no_trace(inbound)
    monkeypatch.setattr(receiver, "_intake", real)
    assert post(inbound, body, token=token_for()).status == 202
    inbound.process_intake()
    assert inbound.count(names.INBOUND_QUEUE) == 1


def test_a_500s_traceback_is_logged_with_the_secrets_it_quotes_cut(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The traceback went to the log whole: an error quoting a storage URL logged its sig=."""
    from shared.inbound import _webhook
    from tests.crash import crash_once

    crash_once(
        monkeypatch,
        _webhook,
        "send_creating",
        "queue down: https://q.test/intake?sv=1&sig=SASsignatureQUOTED1",
    )
    with caplog.at_level(logging.ERROR, logger="shared"):
        assert post(inbound, payload(), token=token_for()).status == 500
    assert "queue down: https://q.test/intake?sv=1&sig=***" in caplog.text
    assert "SASsignatureQUOTED1" not in caplog.text


# --- the processor: a repeat is the same event, at-least-once delivery, crashes -----------------


def test_the_same_message_twice_is_the_same_event_and_each_subscriber_gets_it_once(
    served: Inbound, callback_receiver: Any
) -> None:
    from tests.inbound.test_subscriptions import subscribe

    subscribe(served, f"{callback_receiver.url}/a")
    subscribe(served, f"{callback_receiver.url}/b")
    body = payload()
    post(served, body, token=token_for())
    post(served, body, token=token_for())  # SmartDialog retried the call
    [(first_id, first), (second_id, second)] = take_intake(served)
    served.queue_function("InboundProcessor", first, 1, first_id)
    served.queue_function("InboundProcessor", first, 2, first_id)  # at-least-once: again
    served.queue_function("InboundProcessor", second, 1, second_id)
    events = served.read(names.INBOUND_QUEUE)
    assert len(events) == 3
    assert {e["id"] for e in events} == {f"{TWO_WAY}:{body['messageId']}"}  # consumers de-dup
    assert served.count(names.INBOUND_DELIVERIES_QUEUE) == 6
    assert served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 6
    assert sorted(call.path for call in callback_receiver.calls) == ["/a", "/b"]
    assert {call.headers["ce-id"] for call in callback_receiver.calls} == {events[0]["id"]}


def test_a_crash_before_publishing_is_recovered_by_the_redelivery(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.inbound import _http

    processor = _http._processor(get_settings())

    class Broken:
        def send_message(self, content: Any, **kwargs: Any) -> Any:
            raise RuntimeError("queue down")

    real = processor._inbound
    monkeypatch.setattr(processor, "_inbound", Broken())
    post(inbound, payload(), token=token_for())
    [(message_id, text)] = take_intake(inbound)
    with pytest.raises(RuntimeError):  # the host keeps the message and delivers it again
        inbound.queue_function("InboundProcessor", text, 1, message_id)
    assert inbound.count(names.INBOUND_QUEUE) == 0
    monkeypatch.setattr(processor, "_inbound", real)
    inbound.queue_function("InboundProcessor", text, 2, message_id)
    assert inbound.count(names.INBOUND_QUEUE) == 1


def test_a_malformed_intake_message_raises_so_the_host_poisons_it(inbound: Inbound) -> None:
    with pytest.raises(MalformedIntake):
        inbound.queue_function("InboundProcessor", '{"not": "an intake message"}')
    assert inbound.count(names.INBOUND_QUEUE) == 0
    assert inbound.rows(names.INBOUND_SEEN_TABLE) == []


PREVIOUS_RELEASE = Path(__file__).resolve().parent.parent / "fixtures" / "previous_release.json"


def test_a_payload_without_message_id_keeps_the_id_the_previous_release_gave_it() -> None:
    """SmartDialog's retry of a message the previous release took (its answer lost) reaches
    this one during a deploy: the same payload must hash to the same id, whatever the zone of
    its timestamp (none, an offset), or the flow gets the message twice."""
    from shared.inbound._models import NewMessagePayload
    from shared.inbound._webhook import inbound_message_key

    recorded = json.loads(PREVIOUS_RELEASE.read_text())["inbound_message_keys"]
    received = dt.datetime(2024, 1, 15, 10, 31, tzinfo=dt.UTC)
    for case in recorded:
        payload = NewMessagePayload.model_validate(case["payload"])
        assert inbound_message_key(payload, received) == case["messageKey"], case["payload"]


def test_an_unreadable_timestamp_still_tells_retries_from_other_messages() -> None:
    from shared.inbound._models import NewMessagePayload
    from shared.inbound._webhook import inbound_message_key

    def key(timestamp: object, at_minute: int) -> str:
        body = {"sender": "+358401234567", "recipient": "x", "content": "YES"}
        payload = NewMessagePayload.model_validate({**body, "timestamp": timestamp})
        assert payload.timestamp is None  # not a time we can read
        return inbound_message_key(payload, dt.datetime(2024, 1, 15, 10, at_minute, tzinfo=dt.UTC))

    assert key("15.01.2024 10:30:00", 31) == key("15.01.2024 10:30:00", 45)  # its retry
    assert key("15.01.2024 10:30:00", 31) != key("15.01.2024 11:30:00", 31)  # another message
    assert key(1e20, 31) == key(1e20, 45)  # not even text
    assert key(1e20, 31) != key(2e20, 31)


def test_a_message_id_forges_no_log_line_and_shows_no_whole_phone_number(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an attacker's look: the id of an inbound message was logged as given, so one
    holding a line break wrote a line of its own (``ERROR shared.fake: ...``), with a NUL or a
    whole phone number in it."""
    inbound.register_webhook()
    forged = "abc\n20:09:59 ERROR   shared.fake: forged\x00 line +358401234567"
    assert post(inbound, payload(messageId=forged), token=token_for()).status == 202

    with caplog.at_level(logging.DEBUG, logger="shared"):
        assert inbound.process_intake() == 1

    lines = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert lines, caplog.text
    for line in lines:
        assert "\n" not in line
        assert "\x00" not in line
        assert "+358401234567" not in line
        assert "***4567" in line
