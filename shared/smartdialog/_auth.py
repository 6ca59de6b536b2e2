"""Bearer tokens for SmartDialog: a static token, or msal against the B2C authority.

msal is imported on first use, never at module import (cold start). Each provider caches its token
in memory for the life of the instance (so, per process) and renews it shortly before it expires
or when the client reports a 401 through :meth:`AuthProvider.invalidate` (naming the refused token,
so a late 401 of another thread does not throw away the token fetched since).

Scopes are passed to msal as given (``Settings.scope_list``). Client credentials against a B2C
tenant normally need the API's ``<app id URI>/.default`` scope rather than the delegated scopes
the certified connector asks for; set ``SMARTDIALOG_SCOPES`` accordingly.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import httpx

from shared.deadline import keep_deadline
from shared.settings import BEARER_TOKEN

from ._exceptions import CredentialsError, answer_text, read_answer

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "AuthProvider",
    "ClientCredentialsAuth",
    "MsalHttpClient",
    "RefreshTokenAuth",
    "StaticTokenAuth",
    "TokenUnavailable",
    "auth_from_settings",
]

EXPIRY_MARGIN_SECONDS = 60.0
"""A cached token is renewed this long before it expires, so it never expires in flight."""
DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0
"""Assumed lifetime when the identity provider does not say (``expires_in`` missing)."""
TOKEN_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Timeouts of the HTTP client msal uses (when this module creates it)."""
TEMPORARY_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
"""OAuth ``error`` codes of an identity provider failing for now (:class:`TokenUnavailable`)."""
_THROTTLED = re.compile(r"\b(?:AADB2C90229|(?:AADSTS)?50196)\b")
"""Codes in an error's description or ``error_codes`` that say the client is throttled."""


def _fails_for_now(result: Mapping[str, Any], status: int | None) -> bool:
    """Whether msal's ``result`` without a token (answered HTTP ``status``, if known) is the
    identity provider failing for now: a 429 or a 5xx, a code of :data:`TEMPORARY_ERRORS`, a
    throttling code (B2C's ``AADB2C90229``), whatever ``error`` it names (B2C throttles with
    ``invalid_request``). Any other error answer, one with no ``error`` at all too, refuses the
    credentials or the request the settings make (``invalid_client``, ``invalid_grant``,
    ``invalid_scope``, ...): only a change of the settings helps."""
    said = f"{result.get('error_description', '')} {result.get('error_codes', '')}"
    throttled = status is not None and (status == 429 or status >= 500)
    return throttled or result.get("error") in TEMPORARY_ERRORS or bool(_THROTTLED.search(said))


class TokenUnavailable(Exception):
    """The identity provider answered an OAuth error that says it fails for now
    (:func:`_fails_for_now`; the client raises ``IdentityProviderError``: nothing sent). ``error``
    is its code, cut to letters, digits and ``_`` (its description may quote the tenant)."""

    def __init__(self, error: object, status: int | None = None) -> None:
        code = "".join(c for c in str(error or "") if c.isalnum() or c == "_")[:60]
        self.error = code or (f"HTTP {status}" if status else "an error")
        super().__init__(f"answered {self.error}")


@runtime_checkable
class AuthProvider(Protocol):
    """Supplies the bearer token for every SmartDialog request."""

    def token(self) -> str:
        """A currently valid access token (cached; fetched when missing or about to expire)."""
        ...

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token: the API refused ``token`` (None: whichever is cached), so
        the next :meth:`token` fetches anew. A token fetched since ``token`` is kept: a late
        refusal of an old one must not throw away another thread's renewal."""
        ...


class StaticTokenAuth:
    """A fixed bearer token (``SMARTDIALOG_ACCESS_TOKEN``), e.g. the sandbox's ``sandbox-token``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise CredentialsError("the static access token is empty")
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str | None = None) -> None:
        """Nothing to renew: a refused static token stays refused."""

    def __repr__(self) -> str:
        return "StaticTokenAuth(token=***)"


class _MsalResponse:
    """The slice of a ``requests.Response`` that msal reads."""

    def __init__(self, response: httpx.Response, text: str) -> None:
        self._response = response
        self.status_code = response.status_code
        self.text = text
        self.headers = dict(response.headers)

    def raise_for_status(self) -> None:
        self._response.raise_for_status()


class MsalHttpClient:
    """An httpx-backed HTTP client in the shape msal expects (``get``/``post``/``close``).

    msal only accepts ``https`` authorities. ``rewrite`` maps URL prefixes msal sees (e.g.
    ``https://login.sandbox.test``) to the ones actually called (``http://127.0.0.1:8081``); the
    reverse substitution (of the real prefix, or of its https twin) is applied to response bodies,
    so the endpoints the discovery document advertises stay on the prefix msal accepts. Its own
    httpx client (no ``client`` given) keeps the deadline of the SmartDialog operation it fetches
    a token for (:func:`shared.deadline.keep_deadline`): each step gets only the time left.
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        rewrite: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = TOKEN_TIMEOUT,
    ) -> None:
        self._owns_client = client is None
        self._client = (
            client if client is not None else keep_deadline(httpx.Client(timeout=timeout))
        )
        self._rewrite = {k.rstrip("/"): v.rstrip("/") for k, v in (rewrite or {}).items()}
        self.last_status: int | None = None

    def _outbound(self, url: str) -> str:
        for seen, real in self._rewrite.items():
            if url == seen or url.startswith(seen + "/"):
                return real + url[len(seen) :]
        return url

    def _inbound(self, text: str) -> str:
        for seen, real in self._rewrite.items():
            text = text.replace(real, seen)
            # A server that assumes it sits behind TLS advertises https on its real host.
            twin = "https" + real[len("http") :] if real.startswith("http://") else None
            if twin and twin != seen:
                text = text.replace(twin, seen)
        return text

    def _send(self, method: str, url: str, **kwargs: Any) -> _MsalResponse:
        data = kwargs.get("data")
        self.last_status = None  # this request's alone, never an earlier one's
        request = self._client.build_request(
            method,
            self._outbound(url),
            params=kwargs.get("params"),
            headers=kwargs.get("headers"),
            data=data if isinstance(data, Mapping) else None,
            content=data if isinstance(data, str | bytes) else None,
            timeout=kwargs.get("timeout") or self._client.timeout,
        )
        response = self._client.send(request, stream=True)
        try:  # read as SmartDialog's answers are: at most 8 MiB, no lone surrogate
            read_answer(response)
        finally:
            response.close()
        self.last_status = response.status_code  # the token request's, read with its result
        return _MsalResponse(response, self._inbound(answer_text(response)))

    def get(self, url: str, **kwargs: Any) -> _MsalResponse:
        return self._send("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> _MsalResponse:
        return self._send("POST", url, **kwargs)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def msal_authority(authority: str, http_client: Any | None) -> tuple[str, Any]:
    """The https authority msal will accept, and the http client to give msal for it: the
    ``http_client`` supplied, else a :class:`MsalHttpClient` (httpx, :data:`TOKEN_TIMEOUT`;
    msal's own client waits forever). An ``http://`` authority (a local sandbox) is presented to
    msal as ``https://`` on the same host and rewritten back by that client.
    """
    parts = urlsplit(authority.rstrip("/"))
    if http_client is not None:
        return authority, http_client
    if parts.scheme != "http":  # httpx with TOKEN_TIMEOUT (msal's own client has none)
        return authority, MsalHttpClient()
    seen = urlunsplit(("https", parts.netloc, "", "", ""))
    real = urlunsplit(("http", parts.netloc, "", "", ""))
    return urlunsplit(("https", *parts[1:])), MsalHttpClient(rewrite={seen: real})


class _MsalAuth:
    """Token caching shared by the msal providers; subclasses acquire."""

    def __init__(
        self,
        *,
        client_id: str,
        authority: str,
        scopes: list[str],
        http_client: Any | None,
        clock: Callable[[], float],
    ) -> None:
        if not client_id:
            raise CredentialsError("SMARTDIALOG_CLIENT_ID is required for msal authentication")
        self._client_id = client_id
        self._authority, self._http_client = msal_authority(authority, http_client)
        self._scopes = list(scopes)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._app: Any = None

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - EXPIRY_MARGIN_SECONDS:
                result = self._acquire()
                status = getattr(self._http_client, "last_status", None)
                if "access_token" not in result and _fails_for_now(result, status):
                    raise TokenUnavailable(result.get("error"), status)
                if "access_token" not in result:
                    raise CredentialsError(
                        "the identity provider refused the credentials: "
                        f"{result.get('error', 'unknown error')}: "
                        f"{str(result.get('error_description', ''))[:300]}"
                    )
                token = result["access_token"]
                if not isinstance(token, str) or not BEARER_TOKEN.fullmatch(token):
                    # No header can carry it (a non-ASCII one raised a bare 500): unreadable.
                    raise TokenUnavailable("unreadable_token", status)
                lifetime = float(result.get("expires_in") or DEFAULT_TOKEN_LIFETIME_SECONDS)
                self._token = token
                self._expires_at = self._clock() + lifetime
            return self._token

    def invalidate(self, token: str | None = None) -> None:
        with self._lock:
            if token is not None and token != self._token:
                return  # already renewed since that token was refused
            self._token = None
            self._forget()

    def close(self) -> None:
        """Close the HTTP client msal uses, if this provider created it."""
        if isinstance(self._http_client, MsalHttpClient):
            self._http_client.close()

    def _acquire(self) -> dict[str, Any]:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop tokens msal itself cached (called under the lock)."""

    def _msal_options(self) -> dict[str, Any]:
        # instance_discovery=False: B2C and sandbox authorities are not in Microsoft's instance
        # discovery; msal reads the tenant's OpenID configuration directly.
        options: dict[str, Any] = {"authority": self._authority, "instance_discovery": False}
        if self._http_client is not None:
            options["http_client"] = self._http_client
        return options

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(client_id={self._client_id!r}, authority={self._authority!r})"
        )


class ClientCredentialsAuth(_MsalAuth):
    """App-only tokens: msal ``ConfidentialClientApplication.acquire_token_for_client``."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        authority: str,
        scopes: list[str],
        http_client: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_secret:
            raise CredentialsError("SMARTDIALOG_CLIENT_SECRET is required for client credentials")
        super().__init__(
            client_id=client_id,
            authority=authority,
            scopes=scopes,
            http_client=http_client,
            clock=clock,
        )
        self._client_secret = client_secret

    def _acquire(self) -> dict[str, Any]:
        if self._app is None:
            import msal

            self._app = msal.ConfidentialClientApplication(
                self._client_id, client_credential=self._client_secret, **self._msal_options()
            )
        result: dict[str, Any] = self._app.acquire_token_for_client(scopes=self._scopes)
        return result

    def _forget(self) -> None:
        if self._app is not None:
            self._app.remove_tokens_for_client()


class RefreshTokenAuth(_MsalAuth):
    """Delegated tokens: msal ``acquire_token_by_refresh_token``.

    The identity provider may rotate the refresh token; the newest one is kept in memory (it is
    not written back to the settings, so a restarted process starts again from the configured one).
    With a client secret the app is confidential, without one public.
    """

    def __init__(
        self,
        *,
        client_id: str,
        refresh_token: str,
        authority: str,
        scopes: list[str],
        client_secret: str | None = None,
        http_client: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not refresh_token:
            raise CredentialsError("the refresh token is empty")
        super().__init__(
            client_id=client_id,
            authority=authority,
            scopes=scopes,
            http_client=http_client,
            clock=clock,
        )
        self._refresh_token = refresh_token
        self._client_secret = client_secret

    def _acquire(self) -> dict[str, Any]:
        if self._app is None:
            import msal

            if self._client_secret:
                self._app = msal.ConfidentialClientApplication(
                    self._client_id, client_credential=self._client_secret, **self._msal_options()
                )
            else:
                self._app = msal.PublicClientApplication(self._client_id, **self._msal_options())
        result: dict[str, Any] = self._app.acquire_token_by_refresh_token(
            self._refresh_token, scopes=self._scopes
        )
        rotated = result.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = rotated
        return result


def auth_from_settings(settings: Settings, *, http_client: Any | None = None) -> AuthProvider:
    """The provider the settings ask for.

    ``SMARTDIALOG_ACCESS_TOKEN`` set: :class:`StaticTokenAuth`. Else ``SMARTDIALOG_REFRESH_TOKEN``
    set: :class:`RefreshTokenAuth` (needs ``SMARTDIALOG_CLIENT_ID``; the secret is optional).
    Else :class:`ClientCredentialsAuth` (needs ``SMARTDIALOG_CLIENT_ID`` and
    ``SMARTDIALOG_CLIENT_SECRET``). ``http_client`` is handed to msal (see :class:`MsalHttpClient`).
    Raises :class:`CredentialsError` when nothing usable is configured.
    """
    kind = settings.credentials  # the one rule of which credentials win (shared.settings)
    secret = settings.client_secret.get_secret_value() if settings.client_secret else None
    if kind == "access-token":
        assert settings.access_token is not None
        return StaticTokenAuth(settings.access_token.get_secret_value())
    if kind == "refresh-token":
        assert settings.client_id
        assert settings.refresh_token is not None
        return RefreshTokenAuth(
            client_id=settings.client_id,
            refresh_token=settings.refresh_token.get_secret_value(),
            client_secret=secret,
            authority=settings.authority,
            scopes=settings.scope_list,
            http_client=http_client,
        )
    if settings.refresh_token is not None and settings.refresh_token.get_secret_value():
        raise CredentialsError("SMARTDIALOG_REFRESH_TOKEN needs SMARTDIALOG_CLIENT_ID as well")
    if kind == "client-credentials":
        assert settings.client_id
        assert secret
        return ClientCredentialsAuth(
            client_id=settings.client_id,
            client_secret=secret,
            authority=settings.authority,
            scopes=settings.scope_list,
            http_client=http_client,
        )
    raise CredentialsError(
        "no SmartDialog credentials configured: set SMARTDIALOG_ACCESS_TOKEN, or "
        "SMARTDIALOG_CLIENT_ID with SMARTDIALOG_CLIENT_SECRET (client credentials) or "
        "SMARTDIALOG_REFRESH_TOKEN (delegated)"
    )
