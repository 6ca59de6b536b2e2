"""What /api/health reports (shared/health.py): every configuration error, each naming its
setting, never a secret; nothing when the app is configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.health import configuration_problem
from shared.settings import StorageSettings, reset_settings_cache
from tests.fixtures.leaks import watch_secret

SECRET = "health-test-callback-secret-0123456789"
#: A storage account key, in a connection string the storage SDK cannot read.
STORAGE_KEY = "aGVhbHRoLXRlc3Qtc3RvcmFnZS1rZXk="
STORAGE = "AzureWebJobsStorage"


@pytest.fixture(autouse=True)
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SMARTDIALOG_PUBLIC_BASE_URL", "WEBSITE_HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    for info in StorageSettings.model_fields.values():
        monkeypatch.delenv(str(info.alias), raising=False)
    # Azurite's: health reads the storage setting, it never calls the account.
    monkeypatch.setenv(STORAGE, "UseDevelopmentStorage=true")
    monkeypatch.setenv("SMARTDIALOG_CALLBACK_SECRETS", SECRET)
    monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", "health-test-token")
    monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Development")
    reset_settings_cache()
    yield
    reset_settings_cache()


def test_a_configured_app_has_no_configuration_problem() -> None:
    assert configuration_problem() is None


def test_a_setting_that_does_not_validate_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "0")
    problem = configuration_problem()
    assert problem is not None
    assert problem.status == 503
    assert [e.field for e in problem.errors] == ["SMARTDIALOG_QUOTA_CALLS"]


def test_a_bad_allowed_host_is_named_by_its_place_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/api/health is anonymous: the entry's text (an internal host name) stays out of it."""
    monkeypatch.setenv(
        "SMARTDIALOG_CALLBACK_ALLOWED_HOSTS", "10.20.0.0/16, , bad..internal.example"
    )
    problem = configuration_problem()
    assert problem is not None
    [error] = problem.errors
    assert error.field == "SMARTDIALOG_CALLBACK_ALLOWED_HOSTS"
    assert "entry 3 of 3" in error.message
    assert "internal.example" not in str(problem.to_dict())


def test_every_callback_problem_is_listed_at_once_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMARTDIALOG_CALLBACK_SECRETS", f"{SECRET},old-and-short")
    monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Production")
    problem = configuration_problem()
    assert problem is not None
    assert [e.field for e in problem.errors] == [
        "SMARTDIALOG_CALLBACK_SECRETS",
        "SMARTDIALOG_PUBLIC_BASE_URL",
    ]
    assert "secret 2 of 2" in problem.errors[0].message
    assert "old-and-short" not in str(problem.to_dict())
    assert SECRET not in str(problem.to_dict())


def test_no_callback_secret_at_all_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SMARTDIALOG_CALLBACK_SECRETS")
    problem = configuration_problem()
    assert problem is not None
    assert [e.field for e in problem.errors] == ["SMARTDIALOG_CALLBACK_SECRETS"]


def only_credentials(monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]) -> None:
    """The SmartDialog credentials set are exactly ``credentials``."""
    for name in ("ACCESS_TOKEN", "REFRESH_TOKEN", "CLIENT_ID", "CLIENT_SECRET"):
        monkeypatch.delenv("SMARTDIALOG_" + name, raising=False)
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"SMARTDIALOG_REFRESH_TOKEN": "refresh"},  # needs the client id as well
        {"SMARTDIALOG_CLIENT_ID": "app-1"},  # needs a secret or a refresh token
    ],
)
def test_no_usable_smartdialog_credentials_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]
) -> None:
    only_credentials(monkeypatch, credentials)
    problem = configuration_problem()
    assert problem is not None
    assert problem.status == 503
    assert [e.field for e in problem.errors] == ["SMARTDIALOG_ACCESS_TOKEN"]
    assert "SMARTDIALOG_CLIENT_ID" in problem.errors[0].message


@pytest.mark.parametrize("token", ["sandbox-tok\u00e9n", "abc\u2026def", "two\u00a0words"])
def test_an_access_token_no_header_can_carry_is_named(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """Taken as it was, it raised building the Authorization header: every SmartDialog action
    answered a bare 500 and health said ok (a second read, stop 44). It is a credentials
    error of its connection (tests/connections: the others keep working)."""
    monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", token)
    watch_secret(token)

    problem = configuration_problem()

    assert problem is not None
    assert [e.field for e in problem.errors] == ["SMARTDIALOG_ACCESS_TOKEN"]
    assert "Authorization header" in problem.errors[0].message
    assert token not in str(problem.to_dict())


@pytest.mark.parametrize(
    "credentials",
    [
        {"SMARTDIALOG_ACCESS_TOKEN": "token"},
        {"SMARTDIALOG_CLIENT_ID": "app-1", "SMARTDIALOG_CLIENT_SECRET": "secret"},
        {"SMARTDIALOG_CLIENT_ID": "app-1", "SMARTDIALOG_REFRESH_TOKEN": "refresh"},
    ],
)
def test_any_complete_credentials_are_enough(
    monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]
) -> None:
    only_credentials(monkeypatch, credentials)
    assert configuration_problem() is None


@pytest.mark.parametrize(
    "value",
    [
        "InstrumentationKey=not-a-guid;IngestionEndpoint=https://x.in.applicationinsights.azure.com/",
        "IngestionEndpoint=https://x.in.applicationinsights.azure.com/",
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;",  # a trailing ';' (docs)
        # forms uuid.UUID reads and the exporter refuses (found in a second read)
        "InstrumentationKey=0000000A-0000-0000-0000-000000000000",
        "InstrumentationKey=00000000000000000000000000000000",
        "InstrumentationKey={00000000-0000-0000-0000-000000000000}",
    ],
)
def test_a_connection_string_the_exporter_refuses_is_named_and_sends_still_work(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Found in review: health answered 200 while tracing turned itself off with one error."""
    from shared.health import settings_errors
    from shared.settings import get_settings

    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", value)
    problem = configuration_problem()
    assert problem is not None
    assert [e.field for e in problem.errors] == ["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    assert value not in problem.to_json().decode()
    assert settings_errors(get_settings()) == []  # what the senders check: they go on


def test_a_connection_string_with_a_guid_key_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "InstrumentationKey=00000000-0000-0000-0000-000000000000"
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", f"{key};LiveEndpoint=https://l/")
    assert configuration_problem() is None


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("__accountName", "a b"),
        ("__accountName", "https://acct.blob.core.windows.net"),
        ("__queueServiceUri", "acct"),
        ("__queueServiceUri", "ftp://acct.queue.core.windows.net"),
        ("__queueServiceUri", "https://[bad"),  # urlsplit raised: health answered 500 (docs read)
    ],
)
def test_an_identity_based_storage_setting_that_is_no_name_or_url_is_named(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str
) -> None:
    """Found in review: health answered 200 and storage-backed actions a 503 'our storage
    failed, try again' (after their retries) without naming the setting."""
    monkeypatch.delenv(STORAGE)
    monkeypatch.setenv(f"{STORAGE}__accountName", "healthacct")
    monkeypatch.setenv(f"{STORAGE}{setting}", value)
    problem = configuration_problem()
    assert problem is not None
    assert [e.field for e in problem.errors] == [f"{STORAGE}{setting}"]


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "AccountName=acct",  # no key nor SAS: the queue and table SDKs refuse it
        f"AccountName=acct;AccountKey={STORAGE_KEY};broken",  # a part without '='
        f"AccountKey={STORAGE_KEY};DefaultEndpointsProtocol=https",  # no account
    ],
)
def test_a_storage_setting_the_sdk_cannot_read_is_named_never_shown(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """It answered 200 here while every storage-backed function failed with a 500."""
    watch_secret(STORAGE_KEY)
    monkeypatch.setenv(STORAGE, value)
    problem = configuration_problem()
    assert problem is not None
    assert problem.status == 503
    assert [e.field for e in problem.errors] == [STORAGE]
    assert STORAGE_KEY not in problem.to_json().decode()


def test_no_storage_setting_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE)
    problem = configuration_problem()
    assert problem is not None
    assert [e.field for e in problem.errors] == [STORAGE]


def test_identity_based_storage_needs_each_service_the_app_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STORAGE)
    for service in ("queue", "table"):
        monkeypatch.setenv(f"{STORAGE}__{service}ServiceUri", f"https://a.{service}.example")
    problem = configuration_problem()
    assert problem is not None
    [error] = problem.errors
    assert (error.field, "blobServiceUri" in error.message) == (STORAGE, True)
    monkeypatch.setenv(f"{STORAGE}__blobServiceUri", "https://a.blob.example")
    reset_settings_cache()
    assert configuration_problem() is None


def test_storage_clients_that_cannot_be_built_are_named_not_a_500(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Identity-based storage builds a DefaultAzureCredential, which reads the AZURE_* settings:
    a certificate path that is no file raised out of health (a 500) instead of its 503."""
    monkeypatch.delenv(STORAGE)
    monkeypatch.setenv(f"{STORAGE}__accountName", "healthcertmissing")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", f"{tmp_path}/no-such.pem")
    problem = configuration_problem()
    assert problem is not None
    [error] = problem.errors
    assert error.field == f"{STORAGE}__accountName"  # the setting the clients were built from
    assert "AZURE_" in error.message


def test_a_setting_that_does_not_validate_is_named_with_every_other_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fixing one setting never just reveals the next: the checks of the rest run too."""
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "abc")
    monkeypatch.setenv("SMARTDIALOG_CALLBACK_SECRETS", "short")
    monkeypatch.setenv("SMARTDIALOG_ACCESS_TOKEN", "")
    monkeypatch.setenv(STORAGE, "garbage")
    monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SECOND__QUOTA_CALLS", "0")
    problem = configuration_problem()
    assert problem is not None
    fields = [e.field for e in problem.errors]
    assert fields[0] == "SMARTDIALOG_QUOTA_CALLS"
    for field in (
        "SMARTDIALOG_CALLBACK_SECRETS",
        "SMARTDIALOG_ACCESS_TOKEN",
        STORAGE,
        "SMARTDIALOG_CONNECTIONS__SECOND__QUOTA_CALLS",
    ):
        assert field in fields
