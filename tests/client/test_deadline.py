"""One deadline for a whole operation (``deadline``): httpx's timeouts bound each network step
on its own, so an answer that trickles in, or the re-try after a renewed token, could take any
number of them."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pytest

from shared.smartdialog import (
    APITimeoutError,
    AuthProvider,
    ClientCredentialsAuth,
    IdentityProviderError,
    Message,
    Recipient,
    SmartDialogClient,
)
from shared.smartdialog import StaticTokenAuth as Static
from tests.guard.servers import RawServer, raw_server, trickle_body

ANSWER = b'{"MessageId": "u-1", "MessagePartCount": 1, "Recipients": []}'


def client(url: str, deadline: float, auth: AuthProvider | None = None) -> SmartDialogClient:
    timeout = httpx.Timeout(deadline)  # every step alone within it
    return SmartDialogClient(
        url, auth or Static("t"), max_retries=0, timeout=timeout, deadline=deadline
    )


def send(sd: SmartDialogClient) -> None:
    message = Message(Sender="Shop", Content="Hi", Recipients=[Recipient(Address="+358401234567")])
    sd.send_message(message, customer_id="1001", service_id="s-1001-oneway")


def slowly(wait: float) -> Callable[[socket.socket, RawServer], None]:
    """Answers the first request 401 (its token refused) and the next 200, each after ``wait``."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        time.sleep(wait)
        if len(server.requests) == 1:
            conn.sendall(b"HTTP/1.1 401 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(ANSWER)}"
        conn.sendall(head.encode() + b"\r\n\r\n" + ANSWER)

    return behaviour


def test_an_answer_trickling_in_is_cut_at_the_deadline() -> None:
    with raw_server(trickle_body(0.1)) as server:  # each byte well within the read timeout
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as caught:
            send(client(server.url, 1.0))
        took = time.monotonic() - started

    assert took < 1.5  # 1,000 bytes at 0.1 s would take 100 s
    assert not caught.value.certainly_not_sent  # the request went out


def test_the_re_try_after_a_renewed_token_counts_against_the_same_deadline() -> None:
    with raw_server(slowly(0.6)) as server:  # each answer within the timeout, both not
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            send(client(server.url, 1.0))
        took = time.monotonic() - started

    assert took < 1.5
    assert len(server.wait_for(2)) == 2  # the re-try left in time; its answer came too late


def test_no_request_leaves_once_a_slow_token_used_up_the_deadline() -> None:
    class SlowToken(Static):
        def token(self) -> str:
            time.sleep(0.6)
            return super().token()

    with raw_server(slowly(0)) as server:
        with pytest.raises(APITimeoutError) as caught:
            send(client(server.url, 0.5, SlowToken("t")))
        time.sleep(0.1)

    assert server.requests == []
    assert caught.value.certainly_not_sent  # so a send is retried as not sent


def test_a_token_endpoint_trickling_its_answer_is_cut_at_the_deadline() -> None:
    with raw_server(trickle_body(0.01)) as idp, raw_server(slowly(0)) as api:
        auth = ClientCredentialsAuth(
            client_id="c", client_secret="s", authority=idp.url + "/tenant/policy", scopes=["x"]
        )  # msal's own HTTP client: its read timeout (30 s) alone would let it trickle 10 s
        started = time.monotonic()
        with pytest.raises(IdentityProviderError) as caught:
            send(client(api.url, 1.0, auth))
        took = time.monotonic() - started
        auth.close()

    assert took < 1.5
    assert api.requests == []
    assert caught.value.certainly_not_sent


def test_a_deadline_that_passes_after_the_connect_but_before_the_first_byte_is_not_sent() -> None:
    checks = 0

    def slow_check() -> None:  # the second check: after the connect, before the headers
        nonlocal checks
        checks += 1
        if checks == 2:
            time.sleep(0.6)

    with raw_server(slowly(0)) as server:
        sd = SmartDialogClient(
            server.url, Static("t"), max_retries=0, deadline=0.5, before_send=slow_check
        )
        with pytest.raises(APITimeoutError) as caught:
            send(sd)
        time.sleep(0.1)

    assert checks == 2
    assert server.requests == []
    assert caught.value.certainly_not_sent  # so a send is retried as not sent
