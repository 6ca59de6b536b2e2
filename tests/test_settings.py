"""Settings are read from the environment on first use, with the documented defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.settings import (
    DEFAULT_BASE_URL,
    Settings,
    SettingsInvalid,
    get_settings,
    reset_settings_cache,
)


def test_defaults_match_the_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SMARTDIALOG_BASE_URL", "SMARTDIALOG_QUOTA_CALLS", "SMARTDIALOG_AUTHORITY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.base_url == DEFAULT_BASE_URL == "https://api.arena.fi/api-integrations/v1"
    # The connector's tokenUrl is this authority + /oauth2/v2.0/token.
    assert settings.authority == (
        "https://arenafi.b2clogin.com/arenafi.onmicrosoft.com/B2C_1A_SmartDialog_Integrations"
    )
    assert (settings.quota_calls, settings.quota_period_seconds) == (100, 60.0)


def test_environment_overrides_and_trailing_slash_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMARTDIALOG_BASE_URL", "http://127.0.0.1:9/api-integrations/v1/")
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "20")
    monkeypatch.setenv("SMARTDIALOG_CALLBACK_SECRETS", " new-secret , old-secret ,")
    settings = Settings()
    assert settings.base_url == "http://127.0.0.1:9/api-integrations/v1"
    assert settings.quota_calls == 20
    assert settings.callback_secret_list == ["new-secret", "old-secret"]


def test_secrets_do_not_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTDIALOG_CLIENT_SECRET", "very-secret-value")
    assert "very-secret-value" not in repr(Settings())


def test_invalid_quota_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "0")
    with pytest.raises(ValueError, match="SMARTDIALOG_QUOTA_CALLS"):
        Settings()


def test_scope_list_drops_reserved_scopes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTDIALOG_SCOPES", "offline_access api://x/Send, api://x/Read")
    assert Settings().scope_list == ["api://x/Send", "api://x/Read"]


def test_empty_settings_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "")
    monkeypatch.setenv("SMARTDIALOG_CUSTOMER_ID", "")
    settings = Settings()
    assert settings.quota_calls == 100
    assert settings.customer_id is None


@pytest.mark.parametrize(
    "field",
    [f for f, info in Settings.model_fields.items() if str(info.alias).upper() != f.upper()],
)
def test_a_variable_named_after_the_field_is_not_a_setting(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shell's ACCESS_TOKEN, BASE_URL or STORAGE is not ours: only the documented names are.
    monkeypatch.setenv(str(Settings.model_fields[field].alias), "")
    monkeypatch.setenv(field.upper(), "1")
    assert getattr(Settings(), field) == Settings.model_fields[field].default


def test_a_shell_access_token_does_not_replace_client_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", "")
    monkeypatch.setenv("SMARTDIALOG_CLIENT_ID", "cid")
    monkeypatch.setenv("SMARTDIALOG_CLIENT_SECRET", "sec")
    monkeypatch.setenv("ACCESS_TOKEN", "a-token-of-another-service")
    settings = Settings()
    assert settings.credentials == "client-credentials"
    assert settings.access_token is None


def test_unresolved_key_vault_reference_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SMARTDIALOG_CALLBACK_SECRETS", "@Microsoft.KeyVault(SecretUri=https://kv/secrets/x)"
    )
    with pytest.raises(ValueError, match="SMARTDIALOG_CALLBACK_SECRETS"):
        Settings()


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("alias", [f.alias for f in Settings.model_fields.values()])
def test_every_setting_is_documented_and_in_the_sample(alias: str) -> None:
    readme = (ROOT / "README.md").read_text()
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert f"`{alias}`" in readme, f"README.md's settings table lacks {alias}"
    assert alias in sample, f"local.settings.sample.json lacks {alias}"


@pytest.mark.parametrize(
    ("lease", "timeout", "wait"),
    [
        ("30", "30", "1"),  # as long as the call alone
        ("31", "30", "1"),  # exactly the attempt, no margin for clock skew
        ("31.5", "30", "1"),  # less than the 1 s margin
        ("0.3", "0.2", "0.1"),  # sub-second: a quarter of the attempt is the margin
    ],
)
def test_a_send_lease_not_outlasting_an_attempt_is_refused(
    monkeypatch: pytest.MonkeyPatch, lease: str, timeout: str, wait: str
) -> None:
    monkeypatch.setenv("SMARTDIALOG_SEND_LEASE_SECONDS", lease)
    monkeypatch.setenv("SMARTDIALOG_SEND_TIMEOUT_SECONDS", timeout)
    monkeypatch.setenv("SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS", wait)
    with pytest.raises(ValueError, match="SMARTDIALOG_SEND_LEASE_SECONDS"):
        Settings()


@pytest.mark.parametrize(
    ("lease", "timeout", "wait"),
    [("120", "30", "1"), ("32.5", "30", "1"), ("0.5", "0.2", "0.1"), ("1", "0.3", "0.1")],
)
def test_a_send_lease_outlasting_an_attempt_is_accepted(
    monkeypatch: pytest.MonkeyPatch, lease: str, timeout: str, wait: str
) -> None:
    monkeypatch.setenv("SMARTDIALOG_SEND_LEASE_SECONDS", lease)
    monkeypatch.setenv("SMARTDIALOG_SEND_TIMEOUT_SECONDS", timeout)
    monkeypatch.setenv("SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS", wait)
    assert Settings().send_lease_seconds == float(lease)


@pytest.mark.parametrize("margin", ["0", "0.05", "0.25", "2"])
def test_a_quota_margin_of_0_or_at_least_50_ms_is_accepted(
    monkeypatch: pytest.MonkeyPatch, margin: str
) -> None:
    monkeypatch.setenv("SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", margin)
    assert Settings().quota_safety_margin_seconds == float(margin)


def test_default_send_lease_outlasts_an_attempt_by_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LEASE", "TIMEOUT", "QUOTA_WAIT"):
        monkeypatch.delenv(f"SMARTDIALOG_SEND_{name}_SECONDS", raising=False)
    settings = Settings()
    assert settings.send_lease_margin_seconds == 1.0
    assert settings.send_lease_seconds > (
        settings.send_timeout_seconds + settings.send_quota_wait_seconds + 1.0
    )


@pytest.mark.parametrize(
    ("alias", "value"),
    [
        ("SMARTDIALOG_QUOTA_CALLS", "2001"),  # past what one quota log holds
        ("SMARTDIALOG_SEND_VALIDITY_SECONDS", "inf"),  # a time plus it overflows
        ("SMARTDIALOG_SEND_VALIDITY_SECONDS", "1e12"),
        ("SMARTDIALOG_SEND_LEASE_SECONDS", "1e20"),
        ("SMARTDIALOG_QUOTA_PERIOD_SECONDS", "nan"),
        ("SMARTDIALOG_PUBLIC_BASE_URL", "https://app.azurewebsites.net/api"),  # /api/api/...
        ("SMARTDIALOG_PUBLIC_BASE_URL", "app.azurewebsites.net"),  # no scheme
        ("SMARTDIALOG_PUBLIC_BASE_URL", "https://app.example/?x=1"),
        ("SMARTDIALOG_BASE_URL", "not a url"),
        ("SMARTDIALOG_BASE_URL", "ftp://files.example/v1"),
        ("SMARTDIALOG_AUTHORITY", "https://"),
        ("SMARTDIALOG_BASE_URL", "https://api.example:notaport/v1"),
        ("SMARTDIALOG_PUBLIC_BASE_URL", "https://app.example/?"),
        # Found in review: each passed, then failed on every use.
        ("SMARTDIALOG_AUTHORITY", "https://login.example"),  # msal needs a tenant or policy
        ("SMARTDIALOG_BASE_URL", "https://someone:pa55word@api.example/v1"),  # Basic auth
        ("SMARTDIALOG_PUBLIC_BASE_URL", "https://user@app.example"),
        ("SMARTDIALOG_PUBLIC_BASE_URL", "https://例え.jp"),  # a Location header of "??.jp"
        ("SMARTDIALOG_STATUS_TOKEN_TTL_SECONDS", "30"),  # a question's poll comes after 60 s
        # Every grant late (recorded after half the margin), withdrawn: nothing was ever sent.
        ("SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", "0.01"),
    ],
)
def test_a_value_that_cannot_work_is_a_configuration_problem_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, alias: str, value: str
) -> None:
    """Refused on first use (a 503 problem, health names it), never accepted to fail later:
    a 500 at the first send, URLs that 404, or attempts burned on a URL that cannot work."""
    from shared.health import configuration_problem
    from shared.settings import SettingsInvalid, get_settings, reset_settings_cache

    monkeypatch.setenv(alias, value)
    reset_settings_cache()
    with pytest.raises(SettingsInvalid) as caught:
        get_settings()
    problem = configuration_problem()
    reset_settings_cache()
    assert caught.value.status == 503
    assert [e.field for e in caught.value.errors] == [alias]
    assert problem is not None
    fields = [e.field for e in problem.errors]  # first, then what else is unset here
    assert fields[0] == alias, fields
    assert fields.count(alias) == 1, fields
    # Our validators' words, without pydantic's "Value error, " before them.
    assert not [e.message for e in problem.errors if "Value error" in e.message]


@pytest.mark.parametrize(
    ("alias", "value", "read"),
    [
        (
            "SMARTDIALOG_PUBLIC_BASE_URL",
            "https://gw.example/smartdialog/",
            "https://gw.example/smartdialog",
        ),
        (
            "SMARTDIALOG_BASE_URL",
            "http://127.0.0.1:9/api-integrations/v1",
            "http://127.0.0.1:9/api-integrations/v1",
        ),
        # Entra External ID: msal reads its tenant from the host (found in a second read)
        ("SMARTDIALOG_AUTHORITY", "https://contoso.ciamlogin.com", "https://contoso.ciamlogin.com"),
        (
            "SMARTDIALOG_AUTHORITY",
            "https://login.microsoftonline.com/t/v2.0",
            "https://login.microsoftonline.com/t/v2.0",
        ),
    ],
)
def test_a_url_behind_a_path_prefix_or_plain_http_locally_is_accepted(
    monkeypatch: pytest.MonkeyPatch, alias: str, value: str, read: str
) -> None:
    monkeypatch.setenv(alias, value)
    settings = Settings()
    assert read in (settings.public_base_url_setting, settings.base_url, settings.authority)


def test_a_rule_across_settings_names_the_setting_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SMARTDIALOG_SEND_LEASE_SECONDS", raising=False)
    monkeypatch.setenv("SMARTDIALOG_SEND_TIMEOUT_SECONDS", "200")  # longer than the lease
    reset_settings_cache()
    try:
        with pytest.raises(SettingsInvalid) as raised:
            get_settings()
    finally:
        reset_settings_cache()
    assert [e.field for e in raised.value.errors] == ["SMARTDIALOG_SEND_LEASE_SECONDS"]
    assert "SMARTDIALOG_SEND_TIMEOUT_SECONDS" in raised.value.errors[0].message
