"""Sends: validation, part counts, RequestId duplicates, magic numbers and delivery reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sandbox.server import SandboxServer
from tests.fixtures.sandbox import CallbackReceiver
from tests.sandbox.helpers import (
    DELIVERED,
    ERROR,
    REJECTED,
    SEND_HEADERS,
    SLOW,
    TEMPORARY,
    THROTTLED,
    UNDELIVERABLE,
    client,
    http,
    sms,
    template_message,
)
from tests.waiting import wait_for


@pytest.fixture
def api(sandbox_server: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox_server) as c:
        yield c


# --- contract validation over the wire ------------------------------------------------------------


def test_missing_header_is_400_naming_it(api: httpx.Client) -> None:
    response = api.post("/messages", headers={"Customer-Id": "1001"}, json=sms(DELIVERED))
    assert response.status_code == 400
    assert "Service-Id" in response.json()["errorMessage"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"AdMessage": "yes"}, "AdMessage"),
        ({"Protocol": "Pigeon"}, "Protocol"),
        ({"CustomerData": "x" * 256}, "CustomerData"),
        ({"Recipients": "+358401234567"}, "Recipients"),
    ],
)
def test_body_violations_are_400_naming_the_field(
    api: httpx.Client, change: dict[str, object], named: str
) -> None:
    response = api.post("/messages", headers=SEND_HEADERS, json={**sms(DELIVERED), **change})
    assert response.status_code == 400
    assert named in response.json()["errorMessage"]


def test_invalid_json_and_wrong_method(api: httpx.Client) -> None:
    broken = api.post(
        "/messages",
        headers=SEND_HEADERS,
        content=b"{",
    )
    assert broken.status_code == 400
    assert "JSON" in broken.json()["errorMessage"]
    assert api.get("/messages").status_code == 405
    assert api.get("/nothing-here").status_code == 404


def test_empty_recipients_and_bad_addresses_are_rejected(api: httpx.Client) -> None:
    assert api.post("/messages", headers=SEND_HEADERS, json=sms()).status_code == 400
    bad = api.post("/messages", headers=SEND_HEADERS, json=sms("hello"))
    assert bad.status_code == 400
    assert "hello" in bad.json()["errorMessage"]


# --- part counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "personalization", "parts"),
    [
        ("a" * 160, None, 1),
        ("a" * 161, None, 2),
        ("€" * 80, None, 1),
        ("€" * 81, None, 2),
        ("ő" * 70, None, 1),
        ("ő" * 71, None, 2),
        ("Hi $(name)", {"name": "x" * 200}, 2),
    ],
)
def test_message_part_count_is_computed_after_personalization(
    api: httpx.Client, content: str, personalization: dict[str, str] | None, parts: int
) -> None:
    body = sms(content=content)
    body["Recipients"] = [{"Address": DELIVERED, "Personalization": personalization or {}}]
    response = api.post("/messages", headers=SEND_HEADERS, json=body)
    assert response.json()["MessagePartCount"] == parts


def test_part_count_is_the_maximum_across_recipients(api: httpx.Client) -> None:
    body = sms(content="Hi $(name)")
    body["Recipients"] = [
        {"Address": "+358401234567", "Personalization": {"name": "Al"}},
        {"Address": "+358407654321", "Personalization": {"name": "x" * 400}},
    ]
    assert api.post("/messages", headers=SEND_HEADERS, json=body).json()["MessagePartCount"] == 3


# --- RequestId ------------------------------------------------------------------------------------


def test_duplicate_request_id_is_409_with_the_first_answer_and_sends_nothing(
    api: httpx.Client, sandbox_server: SandboxServer
) -> None:
    first = api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="req-1"))
    assert first.status_code == 200
    second = api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="req-1"))
    assert second.status_code == 409
    body = second.json()
    assert body["errorMessage"].startswith("Duplicate RequestId")
    assert {k: v for k, v in body.items() if k != "errorMessage"} == first.json()
    assert len(sandbox_server.state.snapshot("messages")) == 1


def test_request_ids_are_remembered_per_connection(
    api: httpx.Client, sandbox_server: SandboxServer
) -> None:
    assert (
        api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="r")).status_code
        == 200
    )
    tokens = http.post(
        f"{sandbox_server.authority}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
        },
    ).json()
    with client(sandbox_server, tokens["access_token"]) as other:
        assert (
            other.post(
                "/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="r")
            ).status_code
            == 200
        )


def test_duplicate_template_send_repeats_the_camel_case_answer(api: httpx.Client) -> None:
    body = template_message(DELIVERED, RequestId="wa-1")
    first = api.post("/messages/templates/whatsapp", headers=SEND_HEADERS, json=body)
    second = api.post("/messages/templates/whatsapp", headers=SEND_HEADERS, json=body)
    assert second.status_code == 409
    assert second.json()["messageId"] == first.json()["messageId"]


# --- magic numbers --------------------------------------------------------------------------------


def test_delivered_number_is_accepted(api: httpx.Client) -> None:
    assert api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED)).status_code == 200


@pytest.mark.parametrize(
    "path", ["/messages", "/messages/templates/whatsapp", "/messages/reply/p-1"]
)
def test_permanent_failure_is_400_recipient_rejected(api: httpx.Client, path: str) -> None:
    body = template_message(REJECTED) if "whatsapp" in path else sms(REJECTED)
    headers = {**SEND_HEADERS, "Service-Id": "s-1001-reply"} if "reply" in path else SEND_HEADERS
    response = api.post(path, headers=headers, json=body)
    assert response.status_code == 400
    assert "recipient rejected" in response.json()["errorMessage"]


def test_temporary_failure_is_503_twice_then_accepted(
    api: httpx.Client, sandbox_server: SandboxServer
) -> None:
    body = sms(TEMPORARY, RequestId="tmp-1")
    statuses = [
        api.post("/messages", headers=SEND_HEADERS, json=body).status_code for _ in range(4)
    ]
    assert statuses == [503, 503, 200, 409]
    assert len(sandbox_server.state.snapshot("messages")) == 1


def test_temporary_failure_without_request_id_counts_identical_requests(api: httpx.Client) -> None:
    body = sms(TEMPORARY, content="same")
    statuses = [
        api.post("/messages", headers=SEND_HEADERS, json=body).status_code for _ in range(3)
    ]
    assert statuses == [503, 503, 200]


def test_throttled_number_is_429_retry_after_1_every_time(api: httpx.Client) -> None:
    for _ in range(3):
        response = api.post("/messages", headers=SEND_HEADERS, json=sms(THROTTLED, RequestId="t"))
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json()["errorMessage"]


def test_error_number_is_500_every_time(api: httpx.Client) -> None:
    for _ in range(2):
        response = api.post(
            "/messages/templates/whatsapp", headers=SEND_HEADERS, json=template_message(ERROR)
        )
        assert response.status_code == 500
        assert "errorMessage" in response.json()


def test_slow_number_answers_after_slow_seconds(api: httpx.Client) -> None:
    started = time.monotonic()
    response = api.post("/messages", headers=SEND_HEADERS, json=sms(SLOW))
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3  # the fixture's slow_seconds


def test_failed_magic_sends_are_not_recorded(
    api: httpx.Client, sandbox_server: SandboxServer
) -> None:
    for number in (REJECTED, THROTTLED, ERROR):
        api.post("/messages", headers=SEND_HEADERS, json=sms(number))
    assert sandbox_server.state.snapshot("messages") == []


# --- delivery reports -----------------------------------------------------------------------------


def test_dlr_is_a_get_per_recipient_keeping_the_query_string(
    api: httpx.Client, callback_receiver: CallbackReceiver
) -> None:
    dlr_url = f"{callback_receiver.url}/dlr?token=abc&x=1"
    answer = api.post(
        "/messages", headers=SEND_HEADERS, json=sms(DELIVERED, UNDELIVERABLE, DlrUrl=dlr_url)
    ).json()
    calls = callback_receiver.wait_for(2)
    assert {c.method for c in calls} == {"GET"}
    assert {c.path for c in calls} == {"/dlr"}
    by_recipient = {c.query["recipient"]: c.query for c in calls}
    delivered, failed = by_recipient[DELIVERED], by_recipient[UNDELIVERABLE]
    assert delivered["token"] == "abc"
    assert delivered["x"] == "1"
    assert delivered["messageId"] == answer["MessageId"]
    assert delivered["recipientId"] == answer["Recipients"][0]["Id"]
    assert (delivered["status"], delivered["statusCode"]) == ("delivered", "1")
    assert (failed["status"], failed["statusCode"]) == ("failed", "2")
    assert failed["recipientId"] == answer["Recipients"][1]["Id"]
    assert delivered["timestamp"].endswith("Z")


def test_dlr_is_sent_for_template_messages_and_recorded(
    api: httpx.Client, sandbox_server: SandboxServer, callback_receiver: CallbackReceiver
) -> None:
    body = template_message(DELIVERED, DlrUrl=f"{callback_receiver.url}/wa")
    answer = api.post("/messages/templates/whatsapp", headers=SEND_HEADERS, json=body).json()
    (call,) = callback_receiver.wait_for(1)
    assert call.query["messageId"] == answer["messageId"]
    wait_for(lambda: sandbox_server.state.snapshot("delivery_reports"), what="its report")
    (report,) = sandbox_server.state.snapshot("delivery_reports")
    assert report["httpStatus"] == 200


def test_duplicate_send_sends_no_second_dlr(
    api: httpx.Client, sandbox_server: SandboxServer, callback_receiver: CallbackReceiver
) -> None:
    body = sms(DELIVERED, RequestId="once", DlrUrl=f"{callback_receiver.url}/dlr")
    assert api.post("/messages", headers=SEND_HEADERS, json=body).status_code == 200
    assert api.post("/messages", headers=SEND_HEADERS, json=body).status_code == 409
    callback_receiver.wait_for(1)
    # a marker send: its DLR arrives after any second DLR of the first send would have
    api.post(
        "/messages", headers=SEND_HEADERS, json=sms(DELIVERED, DlrUrl=f"{callback_receiver.url}/m")
    )
    calls = callback_receiver.wait_for(2)
    assert [c.path for c in calls].count("/dlr") == 1


def test_unreachable_dlr_url_is_logged_not_raised(
    sandbox_factory: Callable[..., SandboxServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = sandbox_factory(dlr_delay=0.0)
    with client(server) as api:
        response = api.post(
            "/messages", headers=SEND_HEADERS, json=sms(DELIVERED, DlrUrl="http://127.0.0.1:9/x")
        )
    assert response.status_code == 200
    wait_for(lambda: server.state.snapshot("delivery_reports"), what="its report")
    (report,) = server.state.snapshot("delivery_reports")
    assert report["httpStatus"] is None
    assert report["error"]


def test_dlr_url_must_be_http(api: httpx.Client) -> None:
    response = api.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, DlrUrl="ftp://x/y"))
    assert response.status_code == 400
    assert "DlrUrl" in response.json()["errorMessage"]


def test_concurrent_duplicates_are_accepted_exactly_once(sandbox_server: SandboxServer) -> None:
    body = sms(DELIVERED, RequestId="race")

    def send(_: int) -> int:
        with client(sandbox_server) as api:
            return api.post("/messages", headers=SEND_HEADERS, json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(send, range(8)))
    assert statuses == [200] + [409] * 7
    assert len(sandbox_server.state.snapshot("messages")) == 1


def test_a_slow_send_does_not_hold_up_other_requests(sandbox_server: SandboxServer) -> None:
    def slow_send() -> int:
        with client(sandbox_server) as api:
            return api.post("/messages", headers=SEND_HEADERS, json=sms(SLOW)).status_code

    with ThreadPoolExecutor(max_workers=1) as pool, client(sandbox_server) as api:
        slow = pool.submit(slow_send)
        started = time.monotonic()
        assert api.get("/phonenumberregions").status_code == 200
        assert time.monotonic() - started < 0.25
        assert slow.result() == 200


def test_latency_option_delays_every_api_answer(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(latency_ms=200)
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.api_url, headers=headers, timeout=5) as http:
        started = time.monotonic()
        assert http.get("/customers").status_code == 200
        assert time.monotonic() - started >= 0.2
