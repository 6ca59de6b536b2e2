"""Tokens for the sandbox, shaped like Azure AD B2C's OAuth 2.0 endpoints so that msal can use it.

- ``client_credentials``: ``client_id``/``client_secret`` from the seed (form fields or HTTP
  Basic); a bad secret is ``400 invalid_client``. No refresh token is issued (RFC 6749 section
  4.4.3).
- ``refresh_token``: accepts the seed's static refresh token (reusable, so a configured one
  survives restarts) or one the sandbox issued; issued refresh tokens are single use and rotate:
  every refresh answers a new one.
- ``authorization_code``: codes come from ``/authorize``, which signs the seed's first user in
  without a page.

Every credential belongs to one account (sandbox/accounts.py); so does every token issued for it.
Access tokens are opaque (``sbx_at_...``), valid ``ttl`` seconds;
:meth:`TokenStore.revoke_access_tokens` drops the issued access tokens (of one account, or all;
refresh tokens stay valid, so a client can recover by refreshing) and can disable an account's
static tokens until :meth:`TokenStore.reset`.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from sandbox.accounts import Account, load_accounts
from sandbox.quota import Clock

__all__ = ["Principal", "TokenStore", "discovery_document"]


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to: the ``account`` and, within it, the ``subject`` naming the connection
    (quota is kept per subject within an account, RequestId memory per account and subject).
    """

    subject: str
    kind: str  # "static", "client" or "user"
    account: str = "1"

    @property
    def key(self) -> str:
        """The subject qualified by its account: unique across accounts."""
        return f"{self.account}/{self.subject}"


class TokenStore:
    """Issued tokens and the accounts' static tokens, OAuth clients and users."""

    def __init__(
        self,
        oauth_seed: Mapping[str, Any],
        static_token: str | None,
        ttl: int,
        clock: Clock = time.time,
        *,
        accounts: Sequence[Account] | None = None,
        refresh_ttl: float = 0,
    ) -> None:
        """Credentials from ``accounts``; without them, one account owning ``oauth_seed``'s
        clients and users and ``static_token``. ``refresh_ttl`` (seconds, 0: for ever): how long
        a refresh token is accepted, the seed's counted from now (a B2C token's lifetime, 14 days
        by default: a configured one stops working), an issued one from its issue."""
        if accounts is None:
            accounts = load_accounts({"customers": [], "oauth": oauth_seed}, static_token)
        self.clients = {cid: (sec, a.id) for a in accounts for cid, sec in a.clients.items()}
        self.static_refresh = {
            r: Principal(subject=u, kind="user", account=a.id)
            for a in accounts
            for r, u in a.users.items()
        }
        self.default_user = next(
            iter(self.static_refresh.values()), Principal("sandbox-user", "user", accounts[0].id)
        )
        self.static_tokens = {t: a.id for a in accounts for t in a.static_tokens}
        self.ttl = ttl
        self.clock = clock
        self.refresh_ttl = refresh_ttl
        self._seed_refresh_until = clock() + refresh_ttl if refresh_ttl else math.inf
        self._access: dict[str, tuple[Principal, float]] = {}
        self._refresh: dict[str, tuple[Principal, float]] = {}
        self._codes: dict[str, Principal] = {}
        self._disabled: set[str] = set()  # accounts whose static tokens are revoked
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Static tokens work again (issued tokens are kept, as before accounts existed)."""
        with self._lock:
            self._disabled.clear()

    # --- bearer tokens on API calls ---

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal behind an ``Authorization: Bearer ...`` header, or None."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        for static, account in self.static_tokens.items():
            if secrets.compare_digest(token, static):
                with self._lock:
                    if account in self._disabled:
                        return None
                return Principal(subject="static", kind="static", account=account)
        with self._lock:
            found = self._access.get(token)
            if found is None:
                return None
            principal, expires = found
            if expires <= self.clock():
                del self._access[token]
                return None
            return principal

    def revoke_access_tokens(self, account: str | None = None, static: bool = False) -> int:
        """Drop the issued access tokens of ``account`` (None: every account); with ``static``,
        also refuse the account's static tokens until reset. Returns how many issued tokens went.
        """
        with self._lock:
            gone = [t for t, (p, _) in self._access.items() if account in (None, p.account)]
            for token in gone:
                del self._access[token]
            if static:
                self._disabled.update(
                    a for a in self.static_tokens.values() if account in (None, a)
                )
            return len(gone)

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
        secret, account = self.clients[client_id]
        if client_secret is not None and not secrets.compare_digest(client_secret, secret):
            return _error("invalid_client", "client authentication failed")
        if grant == "client_credentials":
            if client_secret is None:
                return _error("invalid_client", "client_secret is required for client_credentials")
            return 200, self._tokens(
                Principal(subject=client_id, kind="client", account=account), with_refresh=False
            )
        if grant == "refresh_token":
            refresh = form.get("refresh_token", "")
            with self._lock:
                user, until = self._refresh.pop(refresh, (None, 0.0))
            if refresh in self.static_refresh:
                user, until = self.static_refresh[refresh], self._seed_refresh_until
            if user is None or until <= self.clock():
                return _error("invalid_grant", "refresh token is invalid, expired or already used")
            return 200, self._tokens(user, with_refresh=True)
        if grant == "authorization_code":
            with self._lock:
                user = self._codes.pop(form.get("code", ""), None)
            if user is None:
                return _error("invalid_grant", "authorization code is invalid or already used")
            return 200, self._tokens(user, with_refresh=True)
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
                lifetime = self.refresh_ttl or 14 * 24 * 3600  # what B2C says by default
                until = now + lifetime if self.refresh_ttl else math.inf
                self._refresh[refresh] = (principal, until)
                body["refresh_token"] = refresh
                body["refresh_token_expires_in"] = int(lifetime)
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
