"""The one place that reads settings.

Settings come from the environment (app settings in Azure, ``local.settings.json``
locally, or ``.env`` never: the host injects them). They are read and validated on
first use through :func:`get_settings`, never at import time, so a missing setting
fails the call that needs it with a clear message instead of the whole app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.names import DEFAULT_CONNECTION, QUOTA_MAX_CALLS, named_connection
from shared.problems import FieldError, Problem, ProblemType

DEFAULT_BASE_URL = "https://api.arena.fi/api-integrations/v1"
DEFAULT_AUTHORITY = (
    "https://arenafi.b2clogin.com/arenafi.onmicrosoft.com/B2C_1A_SmartDialog_Integrations"
)
_API = "https://arenafi.onmicrosoft.com/smartdialog-integrations-api"
#: The scopes the certified connector asks for (minus ``offline_access``, which msal adds).
DEFAULT_SCOPES = " ".join(
    f"{_API}/{scope}"
    for scope in (
        "Gateway.Send",
        "Customer.Services",
        "User.Customers",
        "TwoWay.Management",
        "WhatsApp",
        "Discussion.Reply",
        "Group.Management",
    )
)
#: The send lease must outlast a whole attempt (the in-process quota wait plus the upstream
#: call's timeout) by a margin for clock skew between instances: 1 s, or a quarter of the
#: attempt when that is shorter (the sub-second leases of tests).
LEASE_MARGIN_SECONDS = 1.0
LEASE_MARGIN_SHARE = 0.25
#: The longest duration any ``*_SECONDS`` setting may give (ten years): a time plus it must
#: stay a valid time.
LONGEST_SECONDS = 10 * 365 * 86400
#: The smallest SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS but 0 (a grant must be recorded within
#: half of it, quota.LATE_GRANT_SHARE, to be used).
MIN_QUOTA_SAFETY_MARGIN = 0.05
#: ``AZURE_FUNCTIONS_ENVIRONMENT`` of local development: Core Tools and the dev host set it.
LOCAL_DEVELOPMENT = "Development"
#: Where ``func start`` and the dev host serve, the public base URL of local development.
LOCAL_PUBLIC_BASE_URL = "http://localhost:7071"
#: The app's host.json, whose ``extensions.http.routePrefix`` is in every URL of ours.
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
#: How an app setting whose Key Vault reference did not resolve reaches the app: its literal text.
_KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("
_UNRESOLVED = "is an unresolved Key Vault reference: check the app's identity"
#: An account's secrets (attributes; the setting is the name in upper case): an unresolved one is
#: its connection's error.
_ACCOUNT_SECRETS = ("access_token", "client_secret", "refresh_token")
#: What an ``Authorization: Bearer`` header carries (RFC 6750's b64token): a static token and
#: one an identity provider answers must be of it (shared.smartdialog's auth checks the latter).
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class PublicUrlNotConfigured(Problem):
    """No public base URL can be told: the URLs we hand out would point nowhere. A 503 problem
    (a configuration error); ``/api/health`` answers 503 with the same reason."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "The app's public URL is not configured",
            "SMARTDIALOG_PUBLIC_BASE_URL is not set, WEBSITE_HOSTNAME is not set (the app does not "
            "run in Azure App Service) and AZURE_FUNCTIONS_ENVIRONMENT is not Development (it is "
            "not local development), so status, delivery-report and webhook URLs would point at "
            "localhost. Set SMARTDIALOG_PUBLIC_BASE_URL to the app's public origin, e.g. "
            "https://<app>.azurewebsites.net.",
            type=ProblemType.CONFIGURATION,
        )


class StorageSettings(BaseSettings):
    """The storage account's settings alone: what a queue trigger needs to put its message
    back while the other settings do not validate (:mod:`shared.unconfigured`)."""

    # Empty app settings mean "use the default", as in local.settings.sample.json.
    # No NaN or infinity: a number of seconds is added to a time, and inf overflows it.
    # Only the aliases (the documented names) are read, never the field names: a shell's
    # ACCESS_TOKEN or BASE_URL is no setting of ours.
    model_config = SettingsConfigDict(
        extra="ignore",
        frozen=True,
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    # A connection string locally; in Azure, identity-based settings
    # (AzureWebJobsStorage__accountName or __queueServiceUri/__tableServiceUri,
    # plus __clientId for a user-assigned managed identity).
    storage: str | None = Field(None, alias="AzureWebJobsStorage")
    storage_account_name: str | None = Field(None, alias="AzureWebJobsStorage__accountName")
    storage_queue_uri: str | None = Field(None, alias="AzureWebJobsStorage__queueServiceUri")
    storage_table_uri: str | None = Field(None, alias="AzureWebJobsStorage__tableServiceUri")
    storage_blob_uri: str | None = Field(None, alias="AzureWebJobsStorage__blobServiceUri")
    storage_client_id: str | None = Field(None, alias="AzureWebJobsStorage__clientId")


class Settings(StorageSettings):
    """Every setting the app reads. Field aliases are the app-setting names."""

    base_url: str = Field(DEFAULT_BASE_URL, alias="SMARTDIALOG_BASE_URL")
    authority: str = Field(DEFAULT_AUTHORITY, alias="SMARTDIALOG_AUTHORITY")
    client_id: str | None = Field(None, alias="SMARTDIALOG_CLIENT_ID")
    client_secret: SecretStr | None = Field(None, alias="SMARTDIALOG_CLIENT_SECRET")
    scopes: str = Field(DEFAULT_SCOPES, alias="SMARTDIALOG_SCOPES")
    refresh_token: SecretStr | None = Field(None, alias="SMARTDIALOG_REFRESH_TOKEN")
    access_token: SecretStr | None = Field(None, alias="SMARTDIALOG_ACCESS_TOKEN")
    customer_id: str | None = Field(None, alias="SMARTDIALOG_CUSTOMER_ID")
    service_id: str | None = Field(None, alias="SMARTDIALOG_SERVICE_ID")
    quota_calls: int = Field(100, alias="SMARTDIALOG_QUOTA_CALLS", gt=0, le=QUOTA_MAX_CALLS)
    quota_period_seconds: float = Field(
        60.0, alias="SMARTDIALOG_QUOTA_PERIOD_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    quota_safety_margin_seconds: float = Field(
        0.25, alias="SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", ge=0, le=LONGEST_SECONDS
    )
    quota_wait_seconds: float = Field(
        5.0, alias="SMARTDIALOG_QUOTA_WAIT_SECONDS", ge=0, le=LONGEST_SECONDS
    )
    # The origin of the URLs we hand out; see public_base_url for the fallbacks.
    public_base_url_setting: str | None = Field(None, alias="SMARTDIALOG_PUBLIC_BASE_URL")
    # Set by the platform: App Service's host name, and "Development" under Core Tools/dev host.
    website_hostname: str | None = Field(None, alias="WEBSITE_HOSTNAME")
    functions_environment: str | None = Field(None, alias="AZURE_FUNCTIONS_ENVIRONMENT")
    callback_secrets: SecretStr | None = Field(None, alias="SMARTDIALOG_CALLBACK_SECRETS")
    # Outbound sends (shared/outbound, docs/sending.md).
    send_max_attempts: int = Field(8, alias="SMARTDIALOG_SEND_MAX_ATTEMPTS", ge=1)
    send_validity_seconds: float = Field(
        86400.0, alias="SMARTDIALOG_SEND_VALIDITY_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    send_retry_base_seconds: float = Field(
        2.0, alias="SMARTDIALOG_SEND_RETRY_BASE_SECONDS", ge=0, le=LONGEST_SECONDS
    )
    send_retry_max_seconds: float = Field(
        300.0, alias="SMARTDIALOG_SEND_RETRY_MAX_SECONDS", ge=0, le=LONGEST_SECONDS
    )
    send_lease_seconds: float = Field(
        120.0, alias="SMARTDIALOG_SEND_LEASE_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    send_timeout_seconds: float = Field(
        30.0, alias="SMARTDIALOG_SEND_TIMEOUT_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    send_quota_wait_seconds: float = Field(
        1.0, alias="SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS", ge=0, le=10
    )
    # How long a lane member's queue message waits, invisible, behind its lane's trigger.
    lane_backstop_seconds: int = Field(
        300, alias="SMARTDIALOG_LANE_BACKSTOP_SECONDS", ge=0, le=3600
    )
    # At most 1,000: a pack's record (members, recipient ids) must fit in one Table entity.
    pack_max_recipients: int = Field(500, alias="SMARTDIALOG_PACK_MAX_RECIPIENTS", ge=1, le=1000)
    # The longest Retry-After of a pending status; the answer is the sender's estimate.
    send_status_retry_after_seconds: int = Field(
        30, alias="SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS", ge=1, le=LONGEST_SECONDS
    )
    # Retry-After of an open question's status URL (SendMessageAndWaitForReply waits for days).
    question_poll_seconds: int = Field(
        60, alias="SMARTDIALOG_QUESTION_POLL_SECONDS", ge=1, le=LONGEST_SECONDS
    )
    status_token_ttl_seconds: float = Field(
        2592000.0, alias="SMARTDIALOG_STATUS_TOKEN_TTL_SECONDS", ge=0, le=LONGEST_SECONDS
    )
    # A DLR URL's token lives the send's validity plus this (reports after delivery attempts).
    dlr_reporting_window_seconds: float = Field(
        604800.0, alias="SMARTDIALOG_DLR_REPORTING_WINDOW_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    idempotency_ttl_seconds: float = Field(
        604800.0, alias="SMARTDIALOG_IDEMPOTENCY_TTL_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    # Inbound messages, subscriptions, opt-out (shared/inbound, docs/inbound.md).
    stop_keywords: str = Field(
        "STOP,LOPETA,SEIS,STOPPA,AVSLUTA,AVBRYT", alias="SMARTDIALOG_STOP_KEYWORDS"
    )
    start_keywords: str = Field("START,ALOITA,STARTA", alias="SMARTDIALOG_START_KEYWORDS")
    dispatch_max_attempts: int = Field(8, alias="SMARTDIALOG_DISPATCH_MAX_ATTEMPTS", ge=1)
    dispatch_retry_base_seconds: float = Field(
        5.0, alias="SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS", ge=0, le=LONGEST_SECONDS
    )
    # URLs we are given and call (shared/guarded_http.py, docs/inbound.md).
    callback_allowed_hosts: str = Field("", alias="SMARTDIALOG_CALLBACK_ALLOWED_HOSTS")
    callback_timeout_seconds: float = Field(
        10.0, alias="SMARTDIALOG_CALLBACK_TIMEOUT_SECONDS", gt=0, le=LONGEST_SECONDS
    )
    # The operations page (shared/ops, docs/operations.md): who may use it in Azure.
    ops_allowed_groups: str = Field("", alias="SMARTDIALOG_OPS_ALLOWED_GROUPS")
    ops_allowed_roles: str = Field("", alias="SMARTDIALOG_OPS_ALLOWED_ROLES")
    max_request_bytes: int = Field(5_242_880, alias="SMARTDIALOG_MAX_REQUEST_BYTES", ge=1024)
    # Traces and metrics (shared/telemetry.py): off when unset. Not a secret: with local auth
    # off (the Bicep's), ingestion needs the app's Entra identity.
    applicationinsights_connection_string: str | None = Field(
        None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING"
    )
    # The share of traces exported, each whole (every hop decides by the trace id alone).
    trace_sampling_ratio: float = Field(1.0, alias="SMARTDIALOG_TRACE_SAMPLING_RATIO", ge=0, le=1)

    # Not a setting: which connection these settings are (shared.connections sets it).
    _connection: str = PrivateAttr(DEFAULT_CONNECTION)

    @property
    def connection(self) -> str:
        """The connection these settings belong to: ``default`` for the plain settings."""
        return self._connection

    @property
    def named_connection(self) -> str | None:
        """:attr:`connection` as written on commands and keys: None for the default."""
        return named_connection(self._connection)

    @property
    def credentials(self) -> Literal["access-token", "refresh-token", "client-credentials"] | None:
        """Which SmartDialog credentials these settings give, by the one rule: a static access
        token wins; else a refresh token (with its client id); else a client id with its
        secret. None when none of them is complete, or one is an unresolved Key Vault reference
        (:func:`missing_credentials` names it)."""
        if any(_unresolved(getattr(self, attribute)) for attribute in _ACCOUNT_SECRETS):
            return None
        if _unsendable(self.access_token):  # its connection's error, not the app's
            return None
        if _given(self.access_token):
            return "access-token"
        if _given(self.refresh_token):
            return "refresh-token" if self.client_id else None
        return "client-credentials" if self.client_id and _given(self.client_secret) else None

    @field_validator("client_secret", "refresh_token", "access_token", "callback_secrets")
    @classmethod
    def _refuse_unresolved_key_vault_reference(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        # An unresolvable reference reaches the app as its literal text; using that as a
        # secret would turn a readable string into a credential. In an account's secret it is
        # that connection's error (no credentials: missing_credentials), so the other
        # connections keep working; the callback secrets are the app's. Surrounding whitespace
        # (a pasted secret's newline) is no part of a token or secret: the same token with or
        # without it is one credential (and one upstream identity, shared.connections).
        if value is None:
            return None
        secret = value.get_secret_value().strip()
        if info.field_name not in _ACCOUNT_SECRETS and _unresolved(secret):
            raise ValueError(_UNRESOLVED)
        return SecretStr(secret) if secret != value.get_secret_value() else value

    @field_validator("callback_allowed_hosts")
    @classmethod
    def _allowed_hosts_parse(cls, value: str) -> str:
        from shared.guarded_http import parse_allowed_hosts

        parse_allowed_hosts(value)  # ValueError names the entry by its place, not its value
        return value

    @field_validator("quota_safety_margin_seconds")
    @classmethod
    def _margin_outlasts_a_write(cls, value: float) -> float:
        """A grant recorded later than half the margin is withdrawn (late: it may be stale when
        its call leaves); a margin below a table write's time withdraws them all, so nothing
        is sent. 0 checks no lateness."""
        if 0 < value < MIN_QUOTA_SAFETY_MARGIN:
            raise ValueError(
                f"must be 0 or at least {MIN_QUOTA_SAFETY_MARGIN} s (a quota grant recorded "
                "later than half of it is not used; a table write takes tens of milliseconds)"
            )
        return value

    @field_validator("base_url", "public_base_url_setting", "authority")
    @classmethod
    def _absolute_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        """An absolute http(s) URL without query or fragment, its trailing slash dropped; the
        public base URL without host.json's route prefix (it is added to every URL)."""
        if value is None:
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL, e.g. https://host")
        if "?" in value or "#" in value or any(c.isspace() for c in value):
            raise ValueError("must not have a query, a fragment or spaces")
        if not value.isascii():  # it goes into headers: a host in its xn-- form
            raise ValueError("must be ASCII (an internationalised host in its xn-- form)")
        if "@" in parts.netloc:  # httpx would send it as Basic auth, in place of our token
            raise ValueError("must not carry a user name or password (user:password@)")
        ciam = parts.hostname.endswith(".ciamlogin.com")  # msal finds its tenant without a path
        if info.field_name == "authority" and not (parts.path.strip("/") or ciam):
            raise ValueError("must name the tenant (or B2C tenant and policy) in its path")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        prefix = http_route_prefix()
        public = info.field_name == "public_base_url_setting"
        if public and prefix and parts.path.lower().endswith("/" + prefix.lower()):
            raise ValueError(f"is the app's origin without /{prefix} (it is added)")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        # A re-delivered copy takes a claim over once its lease has ended; if that can happen
        # while the claim's quota wait and upstream call are still running, it may be sent twice
        # (RequestId de-duplication upstream is only best effort). The send timeout bounds the
        # whole upstream call: the client keeps it as one deadline (shared.deadline).
        needed = (
            self.send_timeout_seconds
            + self.send_quota_wait_seconds
            + self.send_lease_margin_seconds
        )
        if self.send_lease_seconds <= needed:
            raise ValueError(
                f"SMARTDIALOG_SEND_LEASE_SECONDS ({self.send_lease_seconds:g}) must be longer "
                f"than SMARTDIALOG_SEND_TIMEOUT_SECONDS ({self.send_timeout_seconds:g}) + "
                f"SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS ({self.send_quota_wait_seconds:g}) + "
                f"{self.send_lease_margin_seconds:g} s margin = {needed:g} s: otherwise another "
                "worker could take over a claim whose upstream call is still in flight"
            )
        return self

    @model_validator(mode="after")
    def _status_token_outlasts_a_poll(self) -> Settings:
        # A pending status hands out a fresh status URL that the flow polls after Retry-After
        # (or later): a token ending sooner fails every wait with a 403.
        longest = max(self.question_poll_seconds, self.send_status_retry_after_seconds)
        if 0 < self.status_token_ttl_seconds < 2 * longest:
            raise ValueError(
                f"SMARTDIALOG_STATUS_TOKEN_TTL_SECONDS ({self.status_token_ttl_seconds:g}) must "
                f"be 0 or at least twice the longest Retry-After of a status ({longest} s, "
                "SMARTDIALOG_QUESTION_POLL_SECONDS or SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS)"
                ": a flow polls its status URL that long after it was handed out"
            )
        return self

    @property
    def send_lease_margin_seconds(self) -> float:
        """How much longer the send lease must be than an attempt (clock skew between instances)."""
        return min(
            LEASE_MARGIN_SECONDS,
            LEASE_MARGIN_SHARE * (self.send_timeout_seconds + self.send_quota_wait_seconds),
        )

    @property
    def local_development(self) -> bool:
        """Whether the app runs under Core Tools or the dev host (``AZURE_FUNCTIONS_ENVIRONMENT``
        is ``Development``), not in Azure, where the platform sets ``Production``."""
        return (self.functions_environment or "").strip().lower() == LOCAL_DEVELOPMENT.lower()

    @property
    def public_base_url(self) -> str:
        """The origin of every URL we hand out (no trailing slash, no route prefix):
        ``SMARTDIALOG_PUBLIC_BASE_URL``; else, in local development, ``http://`` and the local
        host; else, in Azure, ``https://$WEBSITE_HOSTNAME``. Raises
        :class:`PublicUrlNotConfigured` (503) when none applies."""
        if self.public_base_url_setting:
            return self.public_base_url_setting
        host = (self.website_hostname or "").strip().rstrip("/")
        if self.local_development:
            return f"http://{host}" if host else LOCAL_PUBLIC_BASE_URL
        if host:
            return f"https://{host}"
        raise PublicUrlNotConfigured

    @property
    def api_base_url(self) -> str:
        """:attr:`public_base_url` plus host.json's route prefix: where our HTTP routes live."""
        prefix = http_route_prefix()
        return f"{self.public_base_url}/{prefix}" if prefix else self.public_base_url

    @property
    def scope_list(self) -> list[str]:
        """Scopes as msal wants them: a list, without the reserved OIDC scopes."""
        reserved = {"offline_access", "openid", "profile"}
        return [s for s in self.scopes.replace(",", " ").split() if s not in reserved]

    @property
    def stop_keyword_set(self) -> frozenset[str]:
        """Stop keywords, upper-cased (an inbound message that is exactly one opts out)."""
        return keyword_set(self.stop_keywords)

    @property
    def start_keyword_set(self) -> frozenset[str]:
        """Start keywords, upper-cased (an inbound message that is exactly one opts back in)."""
        return keyword_set(self.start_keywords)

    @property
    def callback_secret_list(self) -> list[str]:
        """Callback secrets, newest first: the first signs, every one verifies."""
        if self.callback_secrets is None:
            return []
        raw = self.callback_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]


def _host_extensions() -> dict[str, Any]:
    """host.json's ``extensions`` (none without the file); its readers below cache theirs."""
    try:
        doc = json.loads(HOST_JSON.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return dict(doc.get("extensions") or {})


@lru_cache(maxsize=1)
def http_route_prefix() -> str:
    """host.json's ``extensions.http.routePrefix`` without slashes (``api`` when unset, as the
    Functions host has it)."""
    prefix = (_host_extensions().get("http") or {}).get("routePrefix", "api")
    return str(prefix).strip("/")


@lru_cache(maxsize=1)
def host_max_dequeue_count() -> int:
    """host.json's ``extensions.queues.maxDequeueCount`` (5 when unset, as the host has it):
    how many deliveries a queue message had when the host moved it to its poison queue (the
    poison copy itself starts again from 0)."""
    value = (_host_extensions().get("queues") or {}).get("maxDequeueCount", 5)
    return value if isinstance(value, int) and not isinstance(value, bool) else 5


def identity_storage_problem(uri: str | None, account: str | None) -> str | None:
    """What makes an identity-based storage setting unusable, ``None`` if nothing does: the
    service URI (``<setting>__<kind>ServiceUri``) when given, else the account name
    (``<setting>__accountName``). One rule for the app (:mod:`shared.storage`) and the dev host,
    checked before any client is built: the SDK would only fail at its first request."""
    if uri:
        try:
            parts = urlsplit(uri)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
        except ValueError:  # "https://[bad"
            usable = False
        return None if usable else "is not an absolute http(s):// URL."
    if account and not re.fullmatch(r"[A-Za-z0-9]{3,24}", account):
        return "must be 3 to 24 letters and digits."
    return None


def keyword_set(raw: str) -> frozenset[str]:
    """Comma-separated opt-out keywords, upper-cased (``SMARTDIALOG_STOP_KEYWORDS``, ...)."""
    return frozenset(word.strip().upper() for word in raw.split(",") if word.strip())


_NAMED_SETTING = re.compile(r"SMARTDIALOG_[A-Z0-9_]+")


def error_setting(error: Mapping[str, Any]) -> str:
    """The setting a pydantic error of :class:`Settings` is about: its location, or for a rule
    across settings (no location) the first setting its message names."""
    where = ".".join(str(p) for p in error["loc"])
    named = _NAMED_SETTING.search(str(error.get("msg", "")))
    return where or (named.group(0) if named else "settings")


def error_message(error: Mapping[str, Any]) -> str:
    """A pydantic error of :class:`Settings` in our validator's words: without the
    ``Value error, `` pydantic puts before a ``ValueError``'s message."""
    return str(error["msg"]).removeprefix("Value error, ")


def missing_credentials(
    settings: Settings, prefix: str = "SMARTDIALOG_", who: str = ""
) -> FieldError | None:
    """The error of settings that give no usable SmartDialog credentials (``prefix``: how their
    setting names start; ``who``: whose they are, for a named connection), else None: one an
    unresolved Key Vault reference names that setting."""
    for attribute in _ACCOUNT_SECRETS:
        if _unresolved(getattr(settings, attribute)):
            setting = attribute.upper()
            return FieldError(f"{prefix}{setting}", f"{who}{setting} {_UNRESOLVED}.")
    if _unsendable(settings.access_token):  # a pasted no-break space, an accent
        return FieldError(
            f"{prefix}ACCESS_TOKEN",
            f"{who}ACCESS_TOKEN holds a character no Authorization header can carry "
            "(RFC 6750: letters, digits, -._~+/ and trailing =).",
        )
    if settings.credentials is not None:
        return None
    return FieldError(
        f"{prefix}ACCESS_TOKEN",
        f"{who}no credentials: set {prefix}ACCESS_TOKEN, or {prefix}CLIENT_ID with "
        f"{prefix}CLIENT_SECRET or {prefix}REFRESH_TOKEN.",
    )


def refused_credentials(
    settings: Settings, prefix: str = "SMARTDIALOG_", who: str = ""
) -> FieldError:
    """The error of credentials SmartDialog or its identity provider refused (a 401 after the
    token was renewed), naming the setting that holds them (``prefix`` and ``who`` as in
    :func:`missing_credentials`)."""
    if settings.credentials == "access-token":
        return FieldError(
            f"{prefix}ACCESS_TOKEN",
            f"{who}SmartDialog refused this token (expired or revoked): replace it; retrying "
            "will not help until then.",
        )
    setting = "REFRESH_TOKEN" if settings.credentials == "refresh-token" else "CLIENT_SECRET"
    return FieldError(
        f"{prefix}{setting}",
        f"{who}SmartDialog or its identity provider refused these credentials (expired, "
        f"revoked, or not for SmartDialog: check {prefix}CLIENT_ID and {prefix}SCOPES too); "
        "retrying will not help until they are fixed.",
    )


class SettingsInvalid(Problem):
    """Settings that do not validate, or another configuration error (``errors``: each
    setting and what is wrong, never its value): a 503 problem. ``/api/health`` answers it, the
    HTTP functions answer it, and the queue triggers put their message back until the settings
    are fixed (:mod:`shared.unconfigured`)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(
            503,
            "The app is not configured",
            "Fix these settings: " + ", ".join(dict.fromkeys(e.field for e in errors)) + ".",
            type=ProblemType.CONFIGURATION,
            errors=errors,
        )

    @classmethod
    def of(cls, exc: ValidationError) -> SettingsInvalid:
        """The problem of a pydantic validation error (``loc``: the setting's name)."""
        return cls(
            [
                FieldError(error_setting(e), error_message(e))
                for e in exc.errors(include_url=False, include_input=False)
            ]
        )


#: The settings a function that runs leniently gets while some do not validate: those hold their
#: defaults and raise when read (:mod:`shared.settings_leniency`).
HELD_SETTINGS: ContextVar[Settings | None] = ContextVar("smartdialog_held_settings", default=None)


def get_settings() -> Settings:
    """The validated settings, read from the environment once per process; raises
    :class:`SettingsInvalid` (not cached: the next call reads again) when they do not validate,
    but in a function that runs leniently (:data:`HELD_SETTINGS`)."""
    try:
        return _validated()
    except ValidationError as exc:
        if (held := HELD_SETTINGS.get()) is not None:
            return held
        raise SettingsInvalid.of(exc) from None


@lru_cache(maxsize=1)
def _validated() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    _validated.cache_clear()


def _given(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value())


def _unsendable(token: SecretStr | None) -> bool:
    """Whether a given static token is none a bearer header can carry (:data:`BEARER_TOKEN`)."""
    text = token.get_secret_value() if token is not None else ""
    return bool(text) and not _unresolved(text) and not BEARER_TOKEN.fullmatch(text)


def _unresolved(secret: SecretStr | str | None) -> bool:
    text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret or ""
    return text.startswith(_KEY_VAULT_REFERENCE)
