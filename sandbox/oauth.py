"""Tokens for the sandbox, shaped like Azure AD B2C's OAuth 2.0 endpoints so that msal can use it.

- ``client_credentials``: ``client_id``/``client_secret`` from the seed (form fields or HTTP
  Basic); a bad secret is ``400 invalid_client``. No refresh token is issued (RFC 6749 section
  4.4.3).
- ``refresh_token``: accepts the seed's static refresh token (reusable, so a configured one
  survives restarts) or one the sandbox issued; issued refresh tokens are single use and rotate:
  every refresh answers a new one.
- ``authorization_code``: codes come from ``/authorize``, which signs the seed's first user in
  without a page.

Access tokens are opaque (``sbx_at_...``), valid ``ttl`` seconds;
:meth:`TokenStore.revoke_access_tokens` drops every issued access token (refresh tokens stay valid,
so a client can recover by refreshing).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from sandbox.quota import Clock

__all__ = ["Principal", "TokenStore", "discovery_document"]


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to; ``subject`` names the connection (quota and RequestId memory are kept
    per subject).
    """

    subject: str
    kind: str  # "static", "client" or "user"


class TokenStore:
    """Issued tokens and the seed's OAuth clients and users."""

    def __init__(
        self,
        oauth_seed: Mapping[str, Any],
        static_token: str | None,
        ttl: int,
        clock: Clock = time.time,
    ) -> None:
        self.clients = {c["clientId"]: c["clientSecret"] for c in oauth_seed.get("clients", [])}
        self.static_refresh = {u["refreshToken"]: u["userId"] for u in oauth_seed.get("users", [])}
        self.default_user = next(iter(self.static_refresh.values()), "sandbox-user")
        self.static_token = static_token or None
        self.ttl = ttl
        self.clock = clock
        self._access: dict[str, tuple[Principal, float]] = {}
        self._refresh: dict[str, str] = {}
        self._codes: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- bearer tokens on API calls ---

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal behind an ``Authorization: Bearer ...`` header, or None."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        if self.static_token is not None and secrets.compare_digest(token, self.static_token):
            return Principal(subject="static", kind="static")
        with self._lock:
            found = self._access.get(token)
            if found is None:
                return None
            principal, expires = found
            if expires <= self.clock():
                del self._access[token]
                return None
            return principal

    def revoke_access_tokens(self) -> int:
        with self._lock:
            count = len(self._access)
            self._access.clear()
            return count

    def issue_code(self) -> str:
        code = "sbx_code_" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = self.default_user
        return code

    # --- the token endpoint ---

    def token_response(
        self, form: Mapping[str, str], authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Answer a token request: ``(status, JSON body)`` per RFC 6749 section 5."""
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = _basic_credentials(authorization)
        if basic is not None:
            client_id, client_secret = basic
        grant = form.get("grant_type")
        if not client_id or client_id not in self.clients:
            return _error("invalid_client", "unknown client_id")
        if client_secret is not None and not secrets.compare_digest(
            client_secret, self.clients[client_id]
        ):
            return _error("invalid_client", "client authentication failed")
        if grant == "client_credentials":
            if client_secret is None:
                return _error("invalid_client", "client_secret is required for client_credentials")
            return 200, self._tokens(
                Principal(subject=client_id, kind="client"), with_refresh=False
            )
        if grant == "refresh_token":
            refresh = form.get("refresh_token", "")
            with self._lock:
                user = self.static_refresh.get(refresh) or self._refresh.pop(refresh, None)
            if user is None:
                return _error("invalid_grant", "refresh token is invalid, expired or already used")
            return 200, self._tokens(Principal(subject=user, kind="user"), with_refresh=True)
        if grant == "authorization_code":
            with self._lock:
                user = self._codes.pop(form.get("code", ""), None)
            if user is None:
                return _error("invalid_grant", "authorization code is invalid or already used")
            return 200, self._tokens(Principal(subject=user, kind="user"), with_refresh=True)
        return _error("unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def _tokens(self, principal: Principal, with_refresh: bool) -> dict[str, Any]:
        access = "sbx_at_" + secrets.token_urlsafe(24)
        now = self.clock()
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.ttl,
            "expires_on": int(now + self.ttl),
            "not_before": int(now),
            "scope": "",
        }
        with self._lock:
            self._access[access] = (principal, now + self.ttl)
            if with_refresh:
                refresh = "sbx_rt_" + secrets.token_urlsafe(24)
                self._refresh[refresh] = principal.subject
                body["refresh_token"] = refresh
                body["refresh_token_expires_in"] = 14 * 24 * 3600
        return body


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id), unquote(secret)


def _error(code: str, description: str) -> tuple[int, dict[str, Any]]:
    return 400, {"error": code, "error_description": description}


def discovery_document(base: str, tenant: str, policy: str) -> dict[str, Any]:
    """OpenID discovery document for ``{base}/{tenant}/{policy}``, like B2C's ``v2.0/.well-known``
    answer.
    """
    root = f"{base}/{tenant}/{policy}"
    return {
        "issuer": f"{root}/v2.0/",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "response_types_supported": ["code", "code id_token", "token", "id_token"],
        "scopes_supported": ["openid", "offline_access"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf"],
    }
