"""The quota hook runs before every attempt; logs say what happened without secrets or numbers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from sandbox.server import SandboxServer
from shared.smartdialog import (
    AuthenticationError,
    Message,
    Recipient,
    SmartDialogClient,
    StaticTokenAuth,
)
from tests.client.conftest import SentRequest, sandbox_requests

CUSTOMER, ONE_WAY, GROUP = "1001", "s-1001-oneway", "s-1001-group"
DELIVERED, TEMPORARY = "+358400000001", "+358400000004"


class QuotaExhausted(Exception):
    """Stands in for the quota store's own refusal."""


def sms(address: str) -> Message:
    return Message(Sender="Sandbox", Content="Hi", Recipients=[Recipient(Address=address)])


def test_quota_hook_is_called_before_every_attempt(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer
) -> None:
    calls: list[int] = []

    def take() -> None:
        calls.append(len(sandbox_requests(sd, "SendMessage")))

    make_client(before_attempt=take).send_message(
        sms(TEMPORARY), customer_id=CUSTOMER, service_id=ONE_WAY
    )
    assert calls == [0, 1, 2]  # each call came before its attempt reached the sandbox


def test_quota_refusal_propagates_unchanged_and_nothing_is_sent(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    refusal = QuotaExhausted("over quota")
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        raise refusal

    with pytest.raises(QuotaExhausted) as caught:
        make_client(before_attempt=refuse).get_user_customers()
    assert caught.value is refusal
    assert calls == [1]
    assert captured == []


def test_quota_refusal_on_a_retry_stops_the_retries(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    calls: list[int] = []

    def second_refused() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise QuotaExhausted

    with pytest.raises(QuotaExhausted):
        make_client(before_attempt=second_refused).send_message(
            sms(TEMPORARY), customer_id=CUSTOMER, service_id=ONE_WAY
        )
    assert len(captured) == 1


class GrantTooOld(Exception):
    """Stands in for the sender's refusal of a quota grant that went stale."""


@pytest.mark.parametrize("own_http_client", [True, False], ids=["request-hook", "injected-http"])
def test_before_send_runs_last_in_every_attempt_before_the_request_leaves(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer, own_http_client: bool
) -> None:
    events: list[str] = []

    def before_attempt() -> None:
        events.append("attempt")

    def before_send() -> None:
        events.append(f"send after {len(sandbox_requests(sd, 'SendMessage'))}")

    class Auth(StaticTokenAuth):
        def token(self) -> str:
            events.append("token")
            return super().token()

    client = (
        SmartDialogClient(
            sd.api_url,
            Auth(sd.token),
            before_attempt=before_attempt,
            before_send=before_send,
            sleep=lambda _: None,
        )
        if own_http_client
        else make_client(
            auth=Auth(sd.token), before_attempt=before_attempt, before_send=before_send
        )
    )
    client.send_message(sms(TEMPORARY), customer_id=CUSTOMER, service_id=ONE_WAY)
    client.close()
    # Called before handing the request to httpx, and (a real transport) again right before the
    # headers are written: after the token and the quota hook (the token first, so a slow one
    # never ages the slot), before the attempt arrived.
    assert events.count("send after 0") == 2
    collapsed = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert collapsed == [e for n in range(3) for e in ("token", "attempt", f"send after {n}")]


@pytest.mark.parametrize("own_http_client", [True, False], ids=["request-hook", "injected-http"])
def test_before_send_refusal_propagates_unchanged_and_nothing_is_sent(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer, own_http_client: bool
) -> None:
    refusal = GrantTooOld("grant too old")

    def refuse() -> None:
        raise refusal

    client = (
        SmartDialogClient(sd.api_url, StaticTokenAuth(sd.token), before_send=refuse)
        if own_http_client
        else make_client(before_send=refuse)
    )
    with pytest.raises(GrantTooOld) as caught:
        client.send_message(sms(DELIVERED), customer_id=CUSTOMER, service_id=ONE_WAY)
    client.close()
    assert caught.value is refusal
    assert sandbox_requests(sd, "SendMessage") == []


def test_logs_are_structured_and_carry_no_token_and_no_whole_number(
    make_client: Callable[..., SmartDialogClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client()
    client.send_message(sms(TEMPORARY), customer_id=CUSTOMER, service_id=ONE_WAY)
    client.whats_app_opt_in(sender="+358501234567", recipient=DELIVERED)
    with pytest.raises(AuthenticationError):
        make_client(auth=StaticTokenAuth("leaky-token")).get_user_customers()

    ours = [r for r in caplog.records if r.name == "smartdialog.client"]
    assert len(ours) == 3 + 1 + 2
    first = ours[0]
    assert (first.operation_id, first.status, first.attempt) == ("SendMessage", 503, 1)  # type: ignore[attr-defined]
    assert isinstance(first.elapsed_ms, int)  # type: ignore[attr-defined]
    assert first.request_id  # type: ignore[attr-defined]
    opt_in = ours[3]
    assert opt_in.path == "/whatsapp/opt-in/sender/***4567/recipient/***0001"  # type: ignore[attr-defined]
    everything = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for secret in ("sandbox-token", "leaky-token", "358400000001", "358501234567"):
        assert secret not in everything
