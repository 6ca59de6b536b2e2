"""Tokens: static, msal client credentials and refresh token, against the sandbox's B2C."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import SecretStr

from sandbox.server import SandboxServer
from shared.settings import Settings
from shared.smartdialog import (
    AuthenticationError,
    ClientCredentialsAuth,
    CredentialsError,
    MsalHttpClient,
    RefreshTokenAuth,
    SmartDialogClient,
    StaticTokenAuth,
    auth_from_settings,
)
from tests.client.conftest import sandbox_requests

CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
SEED_REFRESH_TOKEN = "sandbox-refresh-token"
SCOPES = ["https://arenafi.onmicrosoft.com/smartdialog-integrations-api/.default"]
FAKE_HOST = "https://login.sandbox.test"


def token_calls(server: SandboxServer) -> int:
    return sum(r["path"].endswith("/oauth2/v2.0/token") for r in sandbox_requests(server))


def api_statuses(server: SandboxServer, path: str) -> list[int]:
    # By path: a request refused with 401 is logged before it is matched to an operation.
    return [r["status"] for r in sandbox_requests(server) if r["path"] == server_path(path)]


def server_path(path: str) -> str:
    return "/api-integrations/v1" + path


@pytest.fixture
def msal_http(sd: SandboxServer) -> Iterator[MsalHttpClient]:
    """msal's HTTP client: a fake https authority host rewritten to the sandbox."""
    http = MsalHttpClient(rewrite={FAKE_HOST: sd.url})
    yield http
    http.close()


def fake_authority(sd: SandboxServer) -> str:
    return FAKE_HOST + sd.authority.removeprefix(sd.url)


def test_client_credentials_through_an_injected_http_client(
    sd: SandboxServer, msal_http: MsalHttpClient, make_client: Callable[..., SmartDialogClient]
) -> None:
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
    )
    client = make_client(auth=auth)
    assert client.get_user_customers().customerUsers
    assert client.get_phone_number_regions()
    assert token_calls(sd) == 1  # cached for the second call
    assert auth.token().startswith("sbx_at_")


def test_http_authority_is_presented_to_msal_as_https(sd: SandboxServer) -> None:
    assert sd.authority.startswith("http://")
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, authority=sd.authority, scopes=SCOPES
    )
    try:
        assert auth.token().startswith("sbx_at_")
    finally:
        auth.close()


def test_refused_token_is_renewed_once_and_the_call_retried(
    sd: SandboxServer, msal_http: MsalHttpClient, make_client: Callable[..., SmartDialogClient]
) -> None:
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
    )
    hook_calls: list[int] = []
    client = make_client(auth=auth, before_attempt=lambda: hook_calls.append(1))
    client.get_user_customers()
    httpx.post(sd.url + "/sandbox/revoke-tokens").raise_for_status()
    assert client.get_user_customers().customerUsers
    assert api_statuses(sd, "/customers") == [200, 401, 200]
    assert token_calls(sd) == 2
    assert len(hook_calls) == 3  # the renewed attempt takes a quota token too


class CountingAuth:
    def __init__(self, token: str) -> None:
        self._token = token
        self.invalidated: list[str | None] = []

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str | None = None) -> None:
        self.invalidated.append(token)


def test_a_late_refusal_of_an_old_token_keeps_the_token_fetched_since(
    sd: SandboxServer, msal_http: MsalHttpClient, make_client: Callable[..., SmartDialogClient]
) -> None:
    """One thread renewed after a 401; another's 401 for the old token, handled later, threw
    the fresh token away (one more fetch per straggler)."""
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
    )
    old = auth.token()
    httpx.post(sd.url + "/sandbox/revoke-tokens").raise_for_status()
    assert make_client(auth=auth).get_user_customers().customerUsers  # 401, renewed, retried
    fresh = auth.token()
    assert fresh != old

    auth.invalidate(old)  # the late 401 of a call that went out with the old token

    assert auth.token() == fresh
    assert token_calls(sd) == 2
    auth.invalidate(fresh)  # a refusal of the current token still renews it
    assert auth.token() not in (old, fresh)


def test_second_401_is_an_authentication_error(
    sd: SandboxServer, make_client: Callable[..., SmartDialogClient], sleeps: list[float]
) -> None:
    auth = CountingAuth("revoked")
    with pytest.raises(AuthenticationError):
        make_client(auth=auth).get_user_customers()
    assert auth.invalidated == ["revoked"]  # the refused token, named
    assert api_statuses(sd, "/customers") == [401, 401]
    assert sleeps == []  # the renewal is not a backoff retry


def test_refresh_token_flow_keeps_the_rotated_refresh_token(
    sd: SandboxServer, msal_http: MsalHttpClient, make_client: Callable[..., SmartDialogClient]
) -> None:
    auth = RefreshTokenAuth(
        client_id=CLIENT_ID,
        refresh_token=SEED_REFRESH_TOKEN,
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
    )
    first = auth.token()
    assert first.startswith("sbx_at_")
    assert auth._refresh_token.startswith("sbx_rt_")  # rotated, kept in memory
    rotated = auth._refresh_token
    auth.invalidate()
    second = auth.token()  # works only if the rotated (single-use) token was used
    assert second != first
    assert auth._refresh_token not in (rotated, SEED_REFRESH_TOKEN)
    assert make_client(auth=auth).get_user_customers().customerUsers


def test_refresh_token_flow_with_a_confidential_client(
    sd: SandboxServer, msal_http: MsalHttpClient
) -> None:
    auth = RefreshTokenAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=SEED_REFRESH_TOKEN,
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
    )
    assert auth.token().startswith("sbx_at_")


def test_tokens_are_renewed_shortly_before_they_expire(
    sd: SandboxServer, msal_http: MsalHttpClient
) -> None:
    now = [1_000.0]
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
        clock=lambda: now[0],
    )
    first = auth.token()
    now[0] += 3600 - 30  # the sandbox's tokens live 3600 s; the margin is 60 s
    second = auth.token()
    assert token_calls(sd) == 2
    assert first != second


def test_wrong_client_secret_is_a_credentials_error(
    sd: SandboxServer, msal_http: MsalHttpClient
) -> None:
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret="wrong",
        authority=fake_authority(sd),
        scopes=SCOPES,
        http_client=msal_http,
    )
    with pytest.raises(CredentialsError, match="invalid_client") as caught:
        auth.token()
    assert "wrong" not in str(caught.value)


def test_static_token_auth_hides_its_token() -> None:
    assert "sandbox-token" not in repr(StaticTokenAuth("sandbox-token"))


# --- auth_from_settings and from_settings ------------------------------------------------------


def settings(**values: str | None) -> Settings:
    defaults: dict[str, str | None] = {
        "SMARTDIALOG_ACCESS_TOKEN": None,
        "SMARTDIALOG_REFRESH_TOKEN": None,
        "SMARTDIALOG_CLIENT_ID": None,
        "SMARTDIALOG_CLIENT_SECRET": None,
    }
    return Settings(**{**defaults, **values})  # type: ignore[arg-type]


def test_static_token_wins_when_set() -> None:
    chosen = auth_from_settings(
        settings(SMARTDIALOG_ACCESS_TOKEN="t", SMARTDIALOG_REFRESH_TOKEN="r")
    )
    assert isinstance(chosen, StaticTokenAuth)
    assert chosen.token() == "t"


def test_refresh_token_comes_next() -> None:
    chosen = auth_from_settings(
        settings(
            SMARTDIALOG_REFRESH_TOKEN="r", SMARTDIALOG_CLIENT_ID="c", SMARTDIALOG_CLIENT_SECRET="s"
        )
    )
    assert isinstance(chosen, RefreshTokenAuth)


def test_client_credentials_last() -> None:
    chosen = auth_from_settings(settings(SMARTDIALOG_CLIENT_ID="c", SMARTDIALOG_CLIENT_SECRET="s"))
    assert isinstance(chosen, ClientCredentialsAuth)


@pytest.mark.parametrize(
    "values",
    [{}, {"SMARTDIALOG_CLIENT_ID": "c"}, {"SMARTDIALOG_REFRESH_TOKEN": "r"}],
)
def test_missing_credentials_are_a_clear_error(values: dict[str, str]) -> None:
    with pytest.raises(CredentialsError, match="SMARTDIALOG_"):
        auth_from_settings(settings(**values))


def test_from_settings_talks_to_the_configured_base_url(sd: SandboxServer) -> None:
    configured = settings(SMARTDIALOG_BASE_URL=sd.api_url, SMARTDIALOG_ACCESS_TOKEN=sd.token)
    with SmartDialogClient.from_settings(configured) as client:
        assert client.get_user_customers().customerUsers


def test_from_settings_with_client_credentials_against_an_http_authority(
    sd: SandboxServer,
) -> None:
    configured = settings(
        SMARTDIALOG_BASE_URL=sd.api_url,
        SMARTDIALOG_AUTHORITY=sd.authority,
        SMARTDIALOG_CLIENT_ID=CLIENT_ID,
        SMARTDIALOG_CLIENT_SECRET=CLIENT_SECRET,
    )
    assert isinstance(configured.client_secret, SecretStr)
    with SmartDialogClient.from_settings(configured) as client:
        assert client.get_phone_number_regions()
    assert token_calls(sd) == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_identity_provider_is_an_identity_provider_error_and_nothing_is_sent(
    make_client: Callable[..., SmartDialogClient], captured: list[object]
) -> None:
    """msal's discovery fails (https, nobody listens): not a bare exception but an
    APIConnectionError that says no token came, before any quota slot was taken."""
    from shared.smartdialog import APIConnectionError, IdentityProviderError

    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority=f"https://127.0.0.1:{_closed_port()}/tenant",
        scopes=SCOPES,
    )
    slots: list[int] = []
    with pytest.raises(IdentityProviderError) as caught:
        make_client(auth=auth, before_attempt=lambda: slots.append(1)).get_user_customers()
    assert isinstance(caught.value, APIConnectionError)
    assert slots == []  # no quota slot for a request that cannot go
    assert captured == []


def test_the_token_is_fetched_before_the_quota_slot(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    """A token fetch can take seconds (a cold msal, its discovery): taken after the slot, the
    request would leave on a grant older than the quota's safety margin."""
    order: list[str] = []

    class SlowAuth(CountingAuth):
        def token(self) -> str:
            order.append("token")
            return super().token()

    make_client(
        auth=SlowAuth("sandbox-token"), before_attempt=lambda: order.append("slot")
    ).get_user_customers()
    assert order == ["token", "slot"]


def test_msal_gets_a_client_with_a_timeout_for_an_https_authority() -> None:
    from shared.smartdialog._auth import msal_authority

    authority, client = msal_authority("https://login.example/tenant", None)
    assert authority == "https://login.example/tenant"
    assert isinstance(client, MsalHttpClient)  # msal's own requests session has no timeout
    client.close()


def token_idp(answer: Callable[[], httpx.Response]) -> MsalHttpClient:
    """An identity provider whose token endpoint gives ``answer()``."""
    root = "https://login.example/tenant/B2C_1A_x"

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            endpoints = {"authorization_endpoint": "/oauth2/v2.0/authorize"}
            endpoints["token_endpoint"] = "/oauth2/v2.0/token"
            document = {k: root + v for k, v in endpoints.items()}
            return httpx.Response(200, json={**document, "issuer": root + "/v2.0/"})
        return answer()

    return MsalHttpClient(httpx.Client(transport=httpx.MockTransport(handle)))


def answering_idp(
    status: int, error: str | None, said: str = "AADB2C90229: tenant-7 over its limit"
) -> MsalHttpClient:
    """An identity provider that answers every token request ``status`` with OAuth ``error`` (None:
    no ``error`` field) described as ``said`` (the sandbox cannot throttle on demand, nor answer
    these codes)."""
    answer = {"error_description": said} | ({} if error is None else {"error": error})
    return token_idp(lambda: httpx.Response(status, headers={"Retry-After": "30"}, json=answer))


def idp_auth(http: MsalHttpClient) -> ClientCredentialsAuth:
    return ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority="https://login.example/tenant/B2C_1A_x",
        scopes=SCOPES,
        http_client=http,
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, "throttled"),
        (429, None),
        (400, "temporarily_unavailable"),
        (400, "server_error"),
        (400, ""),  # said AADB2C90229: B2C's "too many requests"
    ],
)
def test_an_identity_provider_that_fails_for_now_is_not_refused_credentials(
    make_client: Callable[..., SmartDialogClient], status: int, error: str | None
) -> None:
    """A throttling 429 became "fix SMARTDIALOG_CLIENT_SECRET; retrying will not help"."""
    from shared.smartdialog import IdentityProviderError

    client = make_client(auth=idp_auth(answering_idp(status, error)))
    with pytest.raises(IdentityProviderError) as caught:
        client.get_user_customers()
    assert "tenant-7" not in str(caught.value)  # the description may quote the tenant


@pytest.mark.parametrize(
    "error", ["invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope"]
)
def test_an_oauth_error_refusing_the_credentials_is_still_a_credentials_error(error: str) -> None:
    status = 400 if error != "invalid_client" else 401
    with pytest.raises(CredentialsError, match=error):
        idp_auth(answering_idp(status, error, "Not throttled.")).token()


@pytest.mark.parametrize(
    ("status", "error", "said"),
    [
        (400, "invalid_request", "AADB2C90229: tenant-7 over its limit"),
        (400, "invalid_grant", "AADSTS50196: The server terminated a client request loop."),
        (429, "invalid_client", "Not throttled."),
    ],
)
def test_a_throttling_signal_fails_for_now_whatever_refusing_error_it_names(
    status: int, error: str, said: str
) -> None:
    """A refusing code was read first: a throttled identity provider read as refused credentials
    (a 503 naming the secret, sends waiting as configuration), unlike the docs."""
    from shared.smartdialog._auth import TokenUnavailable

    with pytest.raises(TokenUnavailable, match=error):
        idp_auth(answering_idp(status, error, said)).token()


def test_a_429_naming_no_error_is_reported_by_its_status() -> None:
    """It read "the identity provider answered None"."""
    from shared.smartdialog._auth import TokenUnavailable

    with pytest.raises(TokenUnavailable, match=r"^answered HTTP 429$"):
        idp_auth(answering_idp(429, None, "Not throttled.")).token()


def test_the_msal_http_client_keeps_no_status_of_an_earlier_request() -> None:
    """A request that got no answer left the previous one's status to be read as its own."""
    answers = iter([httpx.Response(429), httpx.ConnectError("refused")])

    def handle(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    http = MsalHttpClient(httpx.Client(transport=httpx.MockTransport(handle)))
    assert http.post("https://login.example/token").status_code == 429
    with pytest.raises(httpx.ConnectError):
        http.post("https://login.example/token")
    assert http.last_status is None


ENTRA_500011 = "AADSTS500011: The resource principal named api://x was not found in the tenant."


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("invalid_resource", ENTRA_500011),
        ("access_denied", "AADSTS7000112: Application is disabled."),
        ("invalid_target", "The scope is not granted."),
        (None, "AADSTS90002: Tenant not found."),
        ("an_unknown_code", "Not throttled."),
    ],
    ids=["invalid_resource", "access_denied", "invalid_target", "no-error-field", "unknown"],
)
def test_an_oauth_refusal_of_the_settings_is_a_credentials_error_not_a_failure_for_now(
    error: str | None, said: str
) -> None:
    """Wrong SMARTDIALOG_SCOPES (Entra's invalid_resource) looked temporary: sends backed off
    until they expired and the actions answered 502 "try again" instead of naming the setting."""
    with pytest.raises(CredentialsError, match=error or "unknown error"):
        idp_auth(answering_idp(400, error, said)).token()


def test_entras_throttling_code_is_a_failure_for_now() -> None:
    from shared.smartdialog._auth import TokenUnavailable

    said = "AADSTS50196: The server terminated an operation because of a client request loop."
    with pytest.raises(TokenUnavailable):
        idp_auth(answering_idp(400, "invalid_request_loop", said)).token()


def test_an_identity_providers_answer_is_read_up_to_8_mib_like_smartdialogs() -> None:
    """It was read whole (a second read of 16ac1c0): 64 MiB took 384 MiB of memory."""
    pulled: list[int] = []

    def endless() -> Iterator[bytes]:
        for _ in range(64):
            pulled.append(1)
            yield b" " * 1024 * 1024

    with pytest.raises((CredentialsError, ValueError)):  # msal: no JSON in what was read
        idp_auth(token_idp(lambda: httpx.Response(200, content=endless()))).token()
    assert len(pulled) <= 9


def test_a_lone_surrogate_in_an_identity_providers_refusal_reads_as_a_replacement() -> None:
    """Its description went into the 503's log line, which a UTF-8 handler cannot write: the
    one line telling an operator to fix the secret was lost (a second read of 16ac1c0)."""
    said = b'{"error": "invalid_client", "error_description": "AADSTS7000215 Caf\\ud83d"}'
    http = token_idp(lambda: httpx.Response(401, content=said))

    with pytest.raises(CredentialsError) as caught:
        idp_auth(http).token()

    assert "Caf\ufffd" in str(caught.value)
    str(caught.value).encode("utf-8")  # no surrogate left


@pytest.mark.parametrize("token", ["tok\u00e9n", "two words", "", 42])
def test_an_access_token_no_header_can_carry_is_an_unreadable_answer_not_a_500(
    token: object,
) -> None:
    """A non-ASCII token raised UnicodeEncodeError building the Authorization header: a bare
    500 to the action, a storage-like failure to the sender (a second read, stop 44)."""
    from shared.smartdialog._auth import TokenUnavailable

    answer = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
    http = token_idp(lambda: httpx.Response(200, json=answer))

    with pytest.raises(TokenUnavailable, match="unreadable_token"):
        idp_auth(http).token()


def test_a_token_of_the_bearer_alphabet_is_taken() -> None:
    answer = {"access_token": "abc.def-ghi_~+/=", "token_type": "Bearer", "expires_in": 3600}
    assert (
        idp_auth(token_idp(lambda: httpx.Response(200, json=answer))).token()
        == answer["access_token"]
    )
