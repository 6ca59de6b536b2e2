"""Retries: what is repeated, how long the client waits, and that nothing is sent twice."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from sandbox.server import SandboxServer
from shared.smartdialog import (
    APIConnectionError,
    APITimeoutError,
    DiscussionReply,
    InternalServerError,
    Message,
    NewGroupContact,
    RateLimitError,
    Recipient,
    SmartDialogClient,
)
from tests.client.conftest import SentRequest, sandbox_requests
from tests.waiting import wait_for

CUSTOMER, ONE_WAY, GROUP = "1001", "s-1001-oneway", "s-1001-group"
TEMPORARY = "+358400000004"  # 503 on the first two attempts of a RequestId
THROTTLED = "+358400000005"  # 429 Retry-After: 1, always
ERROR = "+358400000006"  # 500, always
SLOW = "+358400000007"  # answers after the sandbox's slow_seconds


def sms(address: str, request_id: str | None = None) -> Message:
    return Message(
        Sender="Sandbox",
        Content="Hi",
        Recipients=[Recipient(Address=address)],
        RequestId=request_id,
    )


def scripted(*answers: httpx.Response | Exception) -> httpx.MockTransport:
    """A transport answering each request with the next scripted response or error."""
    pending = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_is_retried_with_the_same_request_id_until_it_succeeds(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer, sleeps: list[float]
) -> None:
    result = make_client().send_message(sms(TEMPORARY), customer_id=CUSTOMER, service_id=ONE_WAY)
    assert result.MessageId
    attempts = sandbox_requests(sd, "SendMessage")
    assert [a["status"] for a in attempts] == [503, 503, 200]
    assert len({a["body"]["RequestId"] for a in attempts}) == 1
    assert len(sleeps) == 2


def test_retry_after_is_honoured_and_the_last_429_raised(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer, sleeps: list[float]
) -> None:
    with pytest.raises(RateLimitError) as caught:
        make_client().send_message(sms(THROTTLED), customer_id=CUSTOMER, service_id=ONE_WAY)
    assert sleeps == [1.0, 1.0]
    assert caught.value.retry_after == 1.0
    assert len(sandbox_requests(sd, "SendMessage")) == 3


def test_send_failing_with_500_gives_up_after_max_retries(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer, sleeps: list[float]
) -> None:
    with pytest.raises(InternalServerError):
        make_client(max_retries=1).send_message(
            sms(ERROR), customer_id=CUSTOMER, service_id=ONE_WAY
        )
    attempts = sandbox_requests(sd, "SendMessage")
    assert len(attempts) == 2
    assert attempts[0]["body"]["RequestId"] == attempts[1]["body"]["RequestId"]


def test_send_after_read_timeouts_is_sent_once(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer
) -> None:
    client = make_client(timeout=httpx.Timeout(0.1, connect=2.0))
    with pytest.raises(APITimeoutError):
        client.send_message(sms(SLOW), customer_id=CUSTOMER, service_id=ONE_WAY)
    wait_for(lambda: len(sandbox_requests(sd, "SendMessage")) >= 3, what="3 attempts")
    attempts = sandbox_requests(sd, "SendMessage")
    assert len(attempts) == 3
    assert len({a["body"]["RequestId"] for a in attempts}) == 1
    assert sorted(a["status"] for a in attempts) == [200, 409, 409]  # accepted once


def test_get_is_retried_after_a_server_error(
    make_client: Callable[..., SmartDialogClient], sleeps: list[float]
) -> None:
    client = make_client(
        transport=scripted(httpx.Response(500), httpx.Response(200, json=["MARKETING"]))
    )
    assert client.get_whatsapp_template_categories() == ["MARKETING"]
    assert len(sleeps) == 1


def test_post_without_request_id_is_not_retried_after_a_server_error(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    client = make_client(transport=scripted(httpx.Response(503), httpx.Response(200, json="x")))
    with pytest.raises(InternalServerError):
        client.create_group_contact(
            NewGroupContact(phone="+358401234567"), customer=CUSTOMER, group_service=GROUP
        )
    assert len(captured) == 1


def test_post_without_request_id_is_not_retried_after_a_read_timeout(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    client = make_client(transport=scripted(httpx.ReadTimeout("slow"), httpx.Response(200)))
    with pytest.raises(APITimeoutError):
        client.send_discussion_reply_message(
            DiscussionReply(ThreadId="t-1", Content="Hi"), customer_id=CUSTOMER
        )
    assert len(captured) == 1


def test_post_without_request_id_is_retried_after_a_429(
    make_client: Callable[..., SmartDialogClient],
    one_call_sandbox: SandboxServer,
    sleeps: list[float],
) -> None:
    server = one_call_sandbox
    client = make_client(base_url=server.api_url)
    client.get_phone_number_regions()  # uses the only call of the window
    with pytest.raises(RateLimitError) as caught:
        client.create_group_contact(
            NewGroupContact(phone="+358401234567"), customer=CUSTOMER, group_service=GROUP
        )
    assert [r["status"] for r in sandbox_requests(server)] == [200, 429, 429, 429]
    assert len(sleeps) == 2
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0


def test_post_without_request_id_is_retried_when_the_connection_was_refused(
    make_client: Callable[..., SmartDialogClient], sleeps: list[float]
) -> None:
    calls: list[int] = []
    client = make_client(
        base_url=f"http://127.0.0.1:{closed_port()}/api-integrations/v1",
        before_attempt=lambda: calls.append(1),
    )
    with pytest.raises(APIConnectionError) as caught:
        client.whats_app_opt_in(sender="+358501234567", recipient="+358401234567")
    assert not isinstance(caught.value, APITimeoutError)
    assert len(calls) == 3
    assert len(sleeps) == 2


def test_retry_after_ms_is_honoured(
    make_client: Callable[..., SmartDialogClient], sleeps: list[float]
) -> None:
    client = make_client(
        transport=scripted(
            httpx.Response(503, headers={"retry-after-ms": "250"}), httpx.Response(200, json=[])
        )
    )
    client.get_phone_number_regions()
    assert sleeps == [0.25]


def test_retry_after_as_http_date_is_measured_with_the_injected_clock(
    make_client: Callable[..., SmartDialogClient], sleeps: list[float]
) -> None:
    now = 1_900_000_000.0
    later = email.utils.formatdate(now + 4, usegmt=True)
    client = make_client(
        clock=lambda: now,
        transport=scripted(
            httpx.Response(429, headers={"Retry-After": later}), httpx.Response(200, json=[])
        ),
    )
    client.get_phone_number_regions()
    assert sleeps == [4.0]


@pytest.mark.parametrize("advice", ["3600", "61"])
def test_advice_beyond_the_cap_is_raised_at_once_with_the_full_wait(
    make_client: Callable[..., SmartDialogClient],
    captured: list[SentRequest],
    sleeps: list[float],
    advice: str,
) -> None:
    client = make_client(
        transport=scripted(
            httpx.Response(429, headers={"Retry-After": advice}), httpx.Response(200, json=[])
        )
    )
    with pytest.raises(RateLimitError) as caught:
        client.get_phone_number_regions()
    assert caught.value.retry_after == float(advice)  # the caller re-schedules on this
    assert sleeps == []
    assert len(captured) == 1


def test_advice_at_the_cap_is_still_waited_out(
    make_client: Callable[..., SmartDialogClient], sleeps: list[float]
) -> None:
    client = make_client(
        transport=scripted(
            httpx.Response(429, headers={"Retry-After": "60"}), httpx.Response(200, json=[])
        )
    )
    client.get_phone_number_regions()
    assert sleeps == [60.0]


def test_max_retries_zero_means_a_single_attempt(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    client = make_client(max_retries=0, transport=scripted(httpx.Response(500)))
    with pytest.raises(InternalServerError):
        client.get_phone_number_regions()
    assert len(captured) == 1


@pytest.fixture
def one_call_sandbox() -> Iterator[SandboxServer]:
    """A private sandbox that allows one call per 30 s."""
    server = SandboxServer(port=0, quota_calls=1, quota_period=30.0).start()
    yield server
    server.stop()


def test_an_http_date_without_a_zone_is_gmt_whatever_the_local_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """email.utils reads "-0000" as a naive time, which timestamp() took as local time: 14,460 s
    instead of 60 in New York."""
    import time

    from shared.smartdialog import parse_retry_after

    at = 1_900_000_000.0
    date = email.utils.formatdate(at + 60).replace("+0000", "-0000")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after({"Retry-After": date}, now=lambda: at) == 60.0
    finally:
        monkeypatch.undo()
        time.tzset()
