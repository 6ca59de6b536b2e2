"""The guarded client for URLs we are given: refused targets make no connection, the
connection goes to the address that was checked, one deadline per call, capped answers, no
redirects. Names resolve through an injected resolver (there is no DNS here); traffic only
ever goes to loopback servers of the test, or to no socket at all (a recording backend)."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from shared.guarded_http import (
    MAX_ANSWER_BYTES,
    CallbackFailed,
    CallbackPolicy,
    CallbackRefused,
    GuardedClient,
    check_callback_url,
    parse_allowed_hosts,
)
from shared.settings import Settings
from tests.guard.servers import (
    FakeResolver,
    RecordingBackend,
    answer,
    huge_answer,
    raw_server,
    self_signed,
    trickle_body,
    trickle_headers,
)

PUBLIC = "93.184.215.14"
PRODUCTION = CallbackPolicy()
LOCAL = CallbackPolicy(local=True)


def client(
    policy: CallbackPolicy = PRODUCTION,
    *,
    resolver: FakeResolver | None = None,
    backend: RecordingBackend | None = None,
    deadline: float = 5.0,
) -> GuardedClient:
    return GuardedClient(
        policy,
        deadline_seconds=deadline,
        resolver=resolver or FakeResolver({}),
        network_backend=backend,
    )


# --- judged without DNS (accept time and call time) -----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hook",
        "https://192.168.0.1/",
        "https://100.64.0.1/",
        "https://168.63.129.16/",  # Azure's platform address (WireServer, DNS, probes)
        "https://[::ffff:168.63.129.16]/",
        "https://[64:ff9b::a83f:8110]/",  # NAT64 of 168.63.129.16
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "https://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
        "https://[::1]/",
        "https://[fd00::1]/",
        "https://[fe80::1%25eth0]/",
        "https://2130706433/",  # 127.0.0.1 in decimal
        "https://0x7f000001/",
        "https://0xa9.0xfe.0xa9.0xfe/",
        "https://127.1/",
        "https://0/",
        "https://224.0.0.1/",
        "https://localhost/",
        "https://LOCALHOST./",
        "https://metadata.localhost/",
        "http://example.com/plain",
        "ftp://example.com/",
    ],
)
def test_what_can_be_judged_without_dns_is_refused_without_a_lookup(url: str) -> None:
    resolver, backend = FakeResolver({}), RecordingBackend()
    with pytest.raises(CallbackRefused):
        client(resolver=resolver, backend=backend).get(url)
    assert resolver.asked == []
    assert backend.connects == []
    with pytest.raises(ValueError, match="Refused"):
        check_callback_url(url, Settings(SMARTDIALOG_PUBLIC_BASE_URL="https://app.example.net"))


def test_public_https_names_and_addresses_pass_the_accept_time_check() -> None:
    production = Settings(SMARTDIALOG_PUBLIC_BASE_URL="https://app.example.net")
    for url in (
        "https://flow.example.com/x?sig=1",
        f"https://{PUBLIC}/",
        "https://[2606:4700::1]/",
    ):
        assert check_callback_url(url, production) == url


# --- judged after resolution, and pinned ----------------------------------------------------------


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.5"],
        ["169.254.169.254"],
        ["168.63.129.16"],
        ["127.0.0.1"],
        ["::ffff:10.0.0.1"],
        ["fd12:3456::1"],
        [PUBLIC, "10.0.0.5"],  # a mixed answer: every address must pass
    ],
)
def test_a_name_resolving_to_an_internal_address_is_refused_and_nothing_connects(
    addresses: list[str],
) -> None:
    resolver = FakeResolver({"hooks.example.com": addresses})
    backend = RecordingBackend()
    with pytest.raises(CallbackRefused, match=r"hooks\.example\.com"):
        client(resolver=resolver, backend=backend).post("https://hooks.example.com/x", json={})
    assert resolver.asked == ["hooks.example.com"]
    assert backend.connects == []


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    resolver = FakeResolver({"hooks.example.com": [PUBLIC]})
    backend = RecordingBackend()
    answered = client(resolver=resolver, backend=backend).get("https://hooks.example.com:8443/a")
    assert answered.status == 200
    assert backend.connects == [(PUBLIC, 8443)]  # the checked address, not the name
    assert resolver.asked == ["hooks.example.com"]  # asked once: no second answer to rebind


def test_a_real_call_sends_the_name_as_host_while_connecting_to_the_checked_address() -> None:
    resolver = FakeResolver({"receiver.localhost": ["127.0.0.1"]})
    with raw_server(answer(204)) as server:
        answered = client(LOCAL, resolver=resolver).get(
            f"http://receiver.localhost:{server.port}/dlr?ref=1"
        )
    assert answered.status == 204
    [request] = server.requests
    assert request.startswith(b"GET /dlr?ref=1 HTTP/1.1\r\n")
    assert f"Host: receiver.localhost:{server.port}".encode() in request


def test_a_urls_user_and_password_are_sent_decoded_as_basic_credentials() -> None:
    """The URL's user info is percent-encoded (an '@' or ':' in a password must be): sent as
    written, ``dlr:p%40ss%3Aword`` instead of ``dlr:p@ss:word``, the receiver refused it."""
    with raw_server(answer(204)) as server:
        url = f"http://dlr:p%40ss%3Aword%C3%A4@127.0.0.1:{server.port}/report"
        assert client(LOCAL).get(url).status == 204
    [request] = server.requests
    credentials = base64.b64encode("dlr:p@ss:wordä".encode()).decode()
    assert f"Authorization: Basic {credentials}\r\n".encode() in request


@pytest.mark.parametrize(
    ("written", "password"), [("p%E4ss", b"p\xe4ss"), ("p%C3", b"p\xc3"), ("%FF%00", b"\xff\x00")]
)
def test_a_password_whose_escapes_are_no_utf8_is_sent_as_the_bytes_written(
    written: str, password: bytes
) -> None:
    """httpx decodes the user info as UTF-8 with replacement: a Latin-1 password (p%E4ss) or a
    lone byte went out as U+FFFD, and the receiver refused credentials the URL spelled right."""
    with raw_server(answer(204)) as server:
        url = f"http://dlr:{written}@127.0.0.1:{server.port}/report"
        assert client(LOCAL).get(url).status == 204
    [request] = server.requests
    credentials = base64.b64encode(b"dlr:" + password).decode()
    assert f"Authorization: Basic {credentials}\r\n".encode() in request


@pytest.mark.parametrize(
    "value", ["m-1\nX-Injected: yes", "m-1\r\n", "nul\x00", "m\u00e9t\u00e9", "\U0001f600"]
)
def test_a_header_no_http_request_can_carry_is_refused_and_nothing_connects(value: str) -> None:
    resolver = FakeResolver({"hooks.example.com": [PUBLIC]})
    backend = RecordingBackend()
    with pytest.raises(CallbackRefused, match="header 'ce-subject' is not printable ASCII"):
        client(resolver=resolver, backend=backend).post(
            "https://hooks.example.com/x", json={}, headers={"ce-subject": value}
        )
    assert backend.connects == []


def test_a_name_that_does_not_resolve_fails_and_may_pass_later() -> None:
    with pytest.raises(CallbackFailed) as failed:
        client().get("https://nowhere.example.com/")
    assert not failed.value.timed_out


def test_plain_http_to_a_public_name_is_refused_even_while_running_locally() -> None:
    resolver = FakeResolver({"flow.example.com": [PUBLIC]})
    backend = RecordingBackend()
    with pytest.raises(CallbackRefused, match="https"):
        client(LOCAL, resolver=resolver, backend=backend).get("http://flow.example.com/")
    assert backend.connects == []


def test_plain_http_to_a_name_is_refused_when_it_resolves_beyond_loopback() -> None:
    # A name passes the accept-time check only over https, but a queued command skips it.
    resolver = FakeResolver({"localhost": ["127.0.0.1", PUBLIC]})
    backend = RecordingBackend()
    with pytest.raises(CallbackRefused):
        client(LOCAL, resolver=resolver, backend=backend).get("http://localhost:8080/")
    assert backend.connects == []


def test_loopback_and_plain_http_are_allowed_only_while_the_app_runs_locally() -> None:
    local = CallbackPolicy.from_settings(
        Settings(SMARTDIALOG_PUBLIC_BASE_URL="http://127.0.0.1:7071")
    )
    on_azure = CallbackPolicy.from_settings(
        Settings(SMARTDIALOG_PUBLIC_BASE_URL="http://localhost:7071", WEBSITE_HOSTNAME="app.net")
    )
    public = CallbackPolicy.from_settings(
        Settings(SMARTDIALOG_PUBLIC_BASE_URL="https://app.example.net")
    )
    assert (local.local, on_azure.local, public.local) == (True, False, False)
    with raw_server(answer(200)) as server:
        assert client(local).get(f"{server.url}/ok").status == 200
        for policy in (on_azure, public):
            with pytest.raises(CallbackRefused):
                client(policy).get(f"{server.url}/ok")
        assert len(server.requests) == 1


# --- the allow-list -------------------------------------------------------------------------------


def test_the_allow_list_lets_an_internal_host_through_by_name_range_or_suffix() -> None:
    policy = CallbackPolicy(parse_allowed_hosts("hooks.corp.example, 10.20.0.0/16, *.vnet.example"))
    resolver = FakeResolver(
        {
            "hooks.corp.example": ["10.9.9.9"],
            "a.vnet.example": ["192.168.1.2"],
            "x.com": ["10.20.3.4"],
        }
    )
    for url, expected in [
        ("https://hooks.corp.example/in", ("10.9.9.9", 443)),
        ("https://a.vnet.example/in", ("192.168.1.2", 443)),
        ("https://x.com/in", ("10.20.3.4", 443)),
        ("https://10.20.0.7:8443/in", ("10.20.0.7", 8443)),
    ]:
        backend = RecordingBackend()  # answers without a socket: no traffic to a private range
        assert client(policy, resolver=resolver, backend=backend).get(url).status == 200
        assert backend.connects == [expected]
    with pytest.raises(CallbackRefused):
        client(policy, resolver=resolver, backend=RecordingBackend()).get("https://10.21.0.1/")
    with pytest.raises(CallbackRefused, match="https"):  # the list is about addresses, not scheme
        client(policy, resolver=resolver, backend=RecordingBackend()).get("http://x.com/")


def test_an_allowed_host_is_called_over_tls_verified_against_its_name(tmp_path: Path) -> None:
    server_tls, trusted = self_signed("hooks.corp.example", tmp_path)
    policy = CallbackPolicy(parse_allowed_hosts("hooks.corp.example,impostor.corp.example"))
    resolver = FakeResolver(
        {"hooks.corp.example": ["127.0.0.1"], "impostor.corp.example": ["127.0.0.1"]}
    )
    with raw_server(answer(200), tls=server_tls) as server:
        guarded = GuardedClient(policy, deadline_seconds=5, resolver=resolver, ssl_context=trusted)
        assert guarded.get(f"https://hooks.corp.example:{server.port}/in").status == 200
        with pytest.raises(CallbackFailed, match="CERTIFICATE_VERIFY_FAILED"):
            guarded.get(f"https://impostor.corp.example:{server.port}/in")
    first, second = server.wait_for(2)
    assert first.startswith(b"GET /in HTTP/1.1\r\n")
    assert f"Host: hooks.corp.example:{server.port}".encode() in first
    assert second == b"<handshake failed>"


def test_the_allow_list_setting_is_checked_when_settings_are_read() -> None:
    settings = Settings(SMARTDIALOG_CALLBACK_ALLOWED_HOSTS=" 10.0.0.0/8 ,hooks.corp.example,")
    assert CallbackPolicy.from_settings(settings).allowed.allows_name("HOOKS.corp.example.")
    with pytest.raises(ValueError, match="neither a host name"):
        Settings(SMARTDIALOG_CALLBACK_ALLOWED_HOSTS="10.0.0.0/8, https://x/")


# --- one deadline, a capped answer, no redirects --------------------------------------------------


@pytest.mark.parametrize("behaviour", [trickle_headers, trickle_body], ids=["headers", "body"])
def test_a_server_trickling_one_byte_a_second_is_cut_at_the_deadline(behaviour: object) -> None:
    deadline = 1.5
    with raw_server(behaviour(1.0)) as server:  # type: ignore[operator]
        started = time.monotonic()
        with pytest.raises(CallbackFailed) as failed:
            client(LOCAL, deadline=deadline).get(f"{server.url}/slow")
        took = time.monotonic() - started
    assert failed.value.timed_out
    assert deadline <= took < deadline + 0.5  # per-read timeouts would never fire here


def test_a_resolver_that_hangs_is_cut_at_the_deadline() -> None:
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(10)
        return [PUBLIC]

    backend = RecordingBackend()
    guarded = GuardedClient(
        PRODUCTION, deadline_seconds=0.5, resolver=hanging, network_backend=backend
    )
    started = time.monotonic()
    try:
        with pytest.raises(CallbackFailed) as failed:
            guarded.get("https://slow-dns.example.com/")
        took = time.monotonic() - started
    finally:
        release.set()
    assert failed.value.timed_out
    assert 0.5 <= took < 1.0
    assert backend.connects == []


def test_a_huge_answer_is_not_read_beyond_the_cap() -> None:
    total = 300 * 1024 * 1024
    with raw_server(huge_answer(total)) as server:
        tracemalloc.start()
        try:
            answered = client(LOCAL).get(f"{server.url}/huge")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answered.status == 200
    assert answered.truncated
    assert len(answered.body) == MAX_ANSWER_BYTES
    assert answered.bytes_received < 3 * MAX_ANSWER_BYTES  # headers, the cap, one read
    assert peak < 1024 * 1024


def test_redirects_are_answers_and_are_not_followed() -> None:
    with raw_server(answer(302, "Location: http://127.0.0.1:9/elsewhere")) as server:
        answered = client(LOCAL).get(f"{server.url}/moved")
    assert answered.status == 302
    assert answered.headers["location"] == "http://127.0.0.1:9/elsewhere"
    assert len(server.requests) == 1


def test_names_whose_resolver_hangs_do_not_hold_up_the_names_that_answer(
    tmp_path: Path,
) -> None:
    """Found in review: lookups ran on a pool of 4 threads and one that timed out was left
    queued, so a dozen subscribers whose names hang made every other subscriber's call fail
    "did not resolve in time" for as long as the backlog lasted."""
    release = threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        if host.startswith("slow"):
            release.wait(10)  # a name server that never answers (until the test ends)
        return ["127.0.0.1"]

    server_tls, client_tls = self_signed("good.example", tmp_path)
    client = GuardedClient(
        CallbackPolicy(local=True), deadline_seconds=0.5, resolver=resolver, ssl_context=client_tls
    )
    try:
        with raw_server(answer(200), tls=server_tls) as server:

            def slow_call(i: int) -> None:
                with contextlib.suppress(CallbackFailed):
                    client.get(f"https://slow{i}.example:{server.port}/flow")

            threads = [threading.Thread(target=slow_call, args=(i,)) for i in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()  # each ended at its deadline; their lookups still hang
            good = f"https://good.example:{server.port}/flow"
            assert [client.get(good).status for _ in range(3)] == [200, 200, 200]
    finally:
        release.set()
