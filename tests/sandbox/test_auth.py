"""Bearer tokens on the API and the B2C-shaped OAuth endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msal
import pytest
import requests

from sandbox.oauth import TokenStore
from sandbox.server import SandboxServer
from tests.sandbox.helpers import client, http

CLIENT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
B2C_AUTHORITY = (
    "https://arenafi.b2clogin.com/arenafi.onmicrosoft.com/B2C_1A_SmartDialog_Integrations"
)
SCOPES = ["https://arenafi.onmicrosoft.com/smartdialog-integrations-api/Gateway.Send"]


def token(server: SandboxServer, **form: str) -> httpx.Response:
    return http.post(f"{server.authority}/oauth2/v2.0/token", data=form)


def test_api_calls_need_a_bearer_token(sandbox: SandboxServer) -> None:
    missing = http.get(f"{sandbox.api_url}/customers")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "errorMessage" in missing.json()
    wrong = http.get(f"{sandbox.api_url}/customers", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = http.get(f"{sandbox.api_url}/customers", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


def test_client_credentials_token_works_on_the_api(sandbox: SandboxServer) -> None:
    response = token(sandbox, grant_type="client_credentials", **CLIENT)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert "refresh_token" not in body
    with client(sandbox, body["access_token"]) as api:
        assert api.get("/customers").status_code == 200


def test_client_secret_basic_is_accepted(sandbox: SandboxServer) -> None:
    response = http.post(
        f"{sandbox.authority}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials"},
        auth=("sandbox-client", "sandbox-secret"),
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("form", "error"),
    [
        (
            {
                "grant_type": "client_credentials",
                "client_id": "sandbox-client",
                "client_secret": "bad",
            },
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "who", "client_secret": "x"},
            "invalid_client",
        ),
        ({"grant_type": "password", **CLIENT}, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "refresh_token": "nope", **CLIENT}, "invalid_grant"),
    ],
)
def test_token_errors_follow_rfc_6749(
    sandbox: SandboxServer, form: dict[str, str], error: str
) -> None:
    response = token(sandbox, **form)
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_refresh_tokens_rotate_and_issued_ones_are_single_use(sandbox: SandboxServer) -> None:
    first = token(
        sandbox, grant_type="refresh_token", refresh_token="sandbox-refresh-token", **CLIENT
    )
    assert first.status_code == 200
    rotated = first.json()["refresh_token"]
    assert rotated != "sandbox-refresh-token"
    second = token(sandbox, grant_type="refresh_token", refresh_token=rotated, **CLIENT)
    assert second.status_code == 200
    assert second.json()["refresh_token"] != rotated
    reused = token(sandbox, grant_type="refresh_token", refresh_token=rotated, **CLIENT)
    assert reused.json()["error"] == "invalid_grant"
    # the seed's own refresh token stays usable, so a configured one survives restarts
    again = token(
        sandbox, grant_type="refresh_token", refresh_token="sandbox-refresh-token", **CLIENT
    )
    assert again.status_code == 200
    with client(sandbox, second.json()["access_token"]) as api:
        assert api.get("/customers").status_code == 200


def test_authorize_redirects_with_a_code_that_exchanges_once(sandbox: SandboxServer) -> None:
    response = http.get(
        f"{sandbox.authority}/oauth2/v2.0/authorize",
        params={
            "client_id": "sandbox-client",
            "redirect_uri": "http://localhost/cb",
            "state": "s1",
        },
    )
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    query = parse_qs(location.query)
    assert location.path == "/cb"
    assert query["state"] == ["s1"]
    exchange = dict(grant_type="authorization_code", code=query["code"][0], **CLIENT)
    assert "refresh_token" in token(sandbox, **exchange).json()
    assert token(sandbox, **exchange).json()["error"] == "invalid_grant"


def test_revoke_tokens_forces_a_refresh(sandbox_server: SandboxServer) -> None:
    issued = token(sandbox_server, grant_type="client_credentials", **CLIENT).json()["access_token"]
    with client(sandbox_server, issued) as api:
        assert api.get("/customers").status_code == 200
        revoked = http.post(f"{sandbox_server.url}/sandbox/revoke-tokens")
        assert revoked.json()["revoked"] >= 1
        assert api.get("/customers").status_code == 401
    fresh = token(sandbox_server, grant_type="client_credentials", **CLIENT).json()["access_token"]
    with client(sandbox_server, fresh) as api, client(sandbox_server) as static:
        assert api.get("/customers").status_code == 200
        assert static.get("/customers").status_code == 200  # the static token is never revoked


def test_issued_tokens_expire() -> None:
    now = [0.0]
    store = TokenStore(
        {"clients": [{"clientId": "c", "clientSecret": "s"}]}, None, 60, clock=lambda: now[0]
    )
    _, body = store.token_response(
        {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}, None
    )
    header = f"Bearer {body['access_token']}"
    assert store.authenticate(header) is not None
    now[0] = 60.0
    assert store.authenticate(header) is None


@pytest.mark.parametrize("ttl", [0, 600])
def test_refresh_tokens_expire_with_a_refresh_token_ttl_the_seeds_too(ttl: int) -> None:
    """As a B2C refresh token does: the configured one stops working (0: it never does)."""
    now = [0.0]
    seed = {
        "clients": [{"clientId": "c", "clientSecret": "s"}],
        "users": [{"userId": "u", "refreshToken": "seed-rt"}],
    }
    store = TokenStore(seed, None, 60, clock=lambda: now[0], refresh_ttl=ttl)
    form = {"grant_type": "refresh_token", "client_id": "c", "client_secret": "s"}
    status, body = store.token_response({**form, "refresh_token": "seed-rt"}, None)
    assert status == 200
    assert body["refresh_token_expires_in"] == (ttl or 14 * 24 * 3600)
    rotated = body["refresh_token"]
    now[0] = 600.0
    for refresh in ("seed-rt", rotated):
        status, body = store.token_response({**form, "refresh_token": refresh}, None)
        assert (status, body.get("error")) == ((400, "invalid_grant") if ttl else (200, None))


def test_discovery_document_is_b2c_shaped_on_https(sandbox: SandboxServer) -> None:
    response = http.get(f"{sandbox.authority}/v2.0/.well-known/openid-configuration")
    doc = response.json()
    host = sandbox.url.removeprefix("http://")
    root = f"https://{host}/arenafi.onmicrosoft.com/B2C_1A_SmartDialog_Integrations"
    assert doc["token_endpoint"] == f"{root}/oauth2/v2.0/token"
    assert doc["authorization_endpoint"] == f"{root}/oauth2/v2.0/authorize"
    assert doc["issuer"] == f"{root}/v2.0/"
    assert "client_credentials" in doc["grant_types_supported"]
    assert http.get(doc["jwks_uri"].replace("https://", "http://")).json() == {"keys": []}


def test_discovery_document_uses_the_public_url_when_configured(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(public_url="https://login.example.test/")
    doc = http.get(f"{server.url}/t/p/v2.0/.well-known/openid-configuration").json()
    assert doc["token_endpoint"] == "https://login.example.test/t/p/oauth2/v2.0/token"


class Rewriting(requests.Session):
    """What the typed client does: msal talks https to the B2C host, the session sends it to the
    sandbox.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        parts = urlsplit(url)
        return super().request(
            method, self.target + url[len(f"{parts.scheme}://{parts.netloc}") :], *args, **kwargs
        )


def test_msal_acquires_tokens_through_a_rewriting_http_client(
    sandbox_server: SandboxServer,
) -> None:
    with Rewriting(sandbox_server.url) as session:
        app = msal.ConfidentialClientApplication(
            "sandbox-client",
            client_credential="sandbox-secret",
            authority=B2C_AUTHORITY,
            http_client=session,
        )
        result = app.acquire_token_for_client(scopes=SCOPES)
        assert "access_token" in result, result
        with client(sandbox_server, result["access_token"]) as api:
            assert api.get("/customers").status_code == 200
        delegated = app.acquire_token_by_refresh_token("sandbox-refresh-token", scopes=SCOPES)
        assert "access_token" in delegated, delegated
        assert delegated["refresh_token"] != "sandbox-refresh-token"


def test_oauth_traffic_is_logged_without_secrets(sandbox_server: SandboxServer) -> None:
    token(sandbox_server, grant_type="client_credentials", **CLIENT)
    (entry,) = [
        e for e in sandbox_server.state.snapshot("requests") if e["path"].endswith("/token")
    ]
    assert entry["body"]["client_secret"] == "***"
    assert entry["response"] is None
