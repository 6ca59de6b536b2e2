"""The one place that reads settings.

Settings come from the environment (app settings in Azure, ``local.settings.json``
locally, or ``.env`` never: the host injects them). They are read and validated on
first use through :func:`get_settings`, never at import time, so a missing setting
fails the call that needs it with a clear message instead of the whole app.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class Settings(BaseSettings):
    """Every setting the app reads. Field aliases are the app-setting names."""

    # Empty app settings mean "use the default", as in local.settings.sample.json.
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, env_ignore_empty=True
    )

    base_url: str = Field(DEFAULT_BASE_URL, alias="SMARTDIALOG_BASE_URL")
    authority: str = Field(DEFAULT_AUTHORITY, alias="SMARTDIALOG_AUTHORITY")
    client_id: str | None = Field(None, alias="SMARTDIALOG_CLIENT_ID")
    client_secret: SecretStr | None = Field(None, alias="SMARTDIALOG_CLIENT_SECRET")
    scopes: str = Field(DEFAULT_SCOPES, alias="SMARTDIALOG_SCOPES")
    refresh_token: SecretStr | None = Field(None, alias="SMARTDIALOG_REFRESH_TOKEN")
    access_token: SecretStr | None = Field(None, alias="SMARTDIALOG_ACCESS_TOKEN")
    customer_id: str | None = Field(None, alias="SMARTDIALOG_CUSTOMER_ID")
    service_id: str | None = Field(None, alias="SMARTDIALOG_SERVICE_ID")
    quota_calls: int = Field(100, alias="SMARTDIALOG_QUOTA_CALLS", gt=0)
    quota_period_seconds: float = Field(60.0, alias="SMARTDIALOG_QUOTA_PERIOD_SECONDS", gt=0)
    quota_safety_margin_seconds: float = Field(
        0.25, alias="SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", ge=0
    )
    quota_wait_seconds: float = Field(5.0, alias="SMARTDIALOG_QUOTA_WAIT_SECONDS", ge=0)
    public_base_url: str = Field("http://localhost:7071", alias="SMARTDIALOG_PUBLIC_BASE_URL")
    callback_secrets: SecretStr | None = Field(None, alias="SMARTDIALOG_CALLBACK_SECRETS")
    # Outbound sends (shared/outbound, docs/sending.md).
    send_max_attempts: int = Field(8, alias="SMARTDIALOG_SEND_MAX_ATTEMPTS", ge=1)
    send_validity_seconds: float = Field(86400.0, alias="SMARTDIALOG_SEND_VALIDITY_SECONDS", gt=0)
    send_retry_base_seconds: float = Field(2.0, alias="SMARTDIALOG_SEND_RETRY_BASE_SECONDS", ge=0)
    send_retry_max_seconds: float = Field(300.0, alias="SMARTDIALOG_SEND_RETRY_MAX_SECONDS", ge=0)
    send_lease_seconds: float = Field(120.0, alias="SMARTDIALOG_SEND_LEASE_SECONDS", gt=0)
    send_timeout_seconds: float = Field(30.0, alias="SMARTDIALOG_SEND_TIMEOUT_SECONDS", gt=0)
    send_quota_wait_seconds: float = Field(
        1.0, alias="SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS", ge=0, le=10
    )
    # At most 1,000: a pack's record (members, recipient ids) must fit in one Table entity.
    pack_max_recipients: int = Field(500, alias="SMARTDIALOG_PACK_MAX_RECIPIENTS", ge=1, le=1000)
    # The longest Retry-After of a pending status; the answer is the sender's estimate.
    send_status_retry_after_seconds: int = Field(
        30, alias="SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS", ge=1
    )
    status_token_ttl_seconds: float = Field(
        2592000.0, alias="SMARTDIALOG_STATUS_TOKEN_TTL_SECONDS", ge=0
    )
    idempotency_ttl_seconds: float = Field(
        604800.0, alias="SMARTDIALOG_IDEMPOTENCY_TTL_SECONDS", gt=0
    )
    # Inbound messages, subscriptions, opt-out (shared/inbound, docs/inbound.md).
    stop_keywords: str = Field(
        "STOP,LOPETA,SEIS,STOPPA,AVSLUTA,AVBRYT", alias="SMARTDIALOG_STOP_KEYWORDS"
    )
    start_keywords: str = Field("START,ALOITA,STARTA", alias="SMARTDIALOG_START_KEYWORDS")
    dispatch_max_attempts: int = Field(8, alias="SMARTDIALOG_DISPATCH_MAX_ATTEMPTS", ge=1)
    dispatch_retry_base_seconds: float = Field(
        5.0, alias="SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS", ge=0
    )
    # Storage: a connection string locally; in Azure, identity-based settings
    # (AzureWebJobsStorage__accountName or __queueServiceUri/__tableServiceUri,
    # plus __clientId for a user-assigned managed identity).
    storage: str | None = Field(None, alias="AzureWebJobsStorage")
    storage_account_name: str | None = Field(None, alias="AzureWebJobsStorage__accountName")
    storage_queue_uri: str | None = Field(None, alias="AzureWebJobsStorage__queueServiceUri")
    storage_table_uri: str | None = Field(None, alias="AzureWebJobsStorage__tableServiceUri")
    storage_client_id: str | None = Field(None, alias="AzureWebJobsStorage__clientId")
    # Traces and metrics (shared/telemetry.py): off when unset. Not a secret: with local auth
    # off (the Bicep's), ingestion needs the app's Entra identity.
    applicationinsights_connection_string: str | None = Field(
        None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING"
    )

    @field_validator("client_secret", "refresh_token", "access_token", "callback_secrets")
    @classmethod
    def _refuse_unresolved_key_vault_reference(cls, value: SecretStr | None) -> SecretStr | None:
        # An unresolvable reference reaches the app as its literal text; using that as a
        # secret would turn a readable string into a credential.
        if value is not None and value.get_secret_value().startswith("@Microsoft.KeyVault("):
            raise ValueError("is an unresolved Key Vault reference: check the app's identity")
        return value

    @field_validator("base_url", "public_base_url", "authority")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        # A re-delivered copy takes a claim over once its lease has ended; if that can happen
        # while the claim's quota wait and upstream call are still running, it may be sent twice
        # (RequestId de-duplication upstream is only best effort).
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

    @property
    def send_lease_margin_seconds(self) -> float:
        """How much longer the send lease must be than an attempt (clock skew between instances)."""
        return min(
            LEASE_MARGIN_SECONDS,
            LEASE_MARGIN_SHARE * (self.send_timeout_seconds + self.send_quota_wait_seconds),
        )

    @property
    def scope_list(self) -> list[str]:
        """Scopes as msal wants them: a list, without the reserved OIDC scopes."""
        reserved = {"offline_access", "openid", "profile"}
        return [s for s in self.scopes.replace(",", " ").split() if s not in reserved]

    @property
    def stop_keyword_set(self) -> frozenset[str]:
        """Stop keywords, upper-cased (an inbound message that is exactly one opts out)."""
        return _keywords(self.stop_keywords)

    @property
    def start_keyword_set(self) -> frozenset[str]:
        """Start keywords, upper-cased (an inbound message that is exactly one opts back in)."""
        return _keywords(self.start_keywords)

    @property
    def callback_secret_list(self) -> list[str]:
        """Callback secrets, newest first: the first signs, every one verifies."""
        if self.callback_secrets is None:
            return []
        raw = self.callback_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]


def _keywords(raw: str) -> frozenset[str]:
    return frozenset(word.strip().upper() for word in raw.split(",") if word.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The validated settings, read from the environment once per process."""
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
