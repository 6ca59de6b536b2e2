"""The Table store against a real Azurite: the entity, sharing, compare-and-swap, failures."""

from __future__ import annotations

import pytest
from azure.data.tables import TableClient, TableServiceClient

from devhost.azurite import Azurite
from shared.quota import (
    CAS_MAX_ATTEMPTS,
    GRANTS_PROPERTY,
    ROW_KEY,
    DenialReason,
    QuotaDenied,
    QuotaGrant,
    QuotaStoreError,
    TableQuotaStore,
    connection_key,
    from_settings,
)
from shared.quota._log import decode
from shared.settings import Settings
from tests.quota.conftest import T0, ManualClock, RacingClock, StoreFactory


def stored_log(azurite: Azurite, table: str, connection: str = "test-connection") -> str:
    client = TableClient.from_connection_string(azurite.connection_string, table)
    return str(client.get_entity(connection, ROW_KEY)[GRANTS_PROPERTY])


def test_first_grant_creates_the_table_and_the_entity(
    table_store: StoreFactory, azurite: Azurite, unique_name: str
) -> None:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    assert unique_name not in {t.name for t in service.list_tables()}

    store = table_store(calls=5, period=60, clock=ManualClock())
    granted = store.try_acquire()

    assert isinstance(granted, QuotaGrant)
    assert granted.attempts == 1
    assert stored_log(azurite, unique_name) == str(int(T0 * 1000))


def test_every_write_prunes_the_log_to_the_window(
    table_store: StoreFactory, azurite: Azurite, unique_name: str
) -> None:
    clock = ManualClock()
    store = table_store(calls=4, period=1.0, margin=0.25, clock=clock)
    for _ in range(40):  # ten windows' worth, one try every 0.25 s
        store.try_acquire()
        clock.time += 0.25

    text = stored_log(azurite, unique_name)
    grants = decode(text)
    assert len(grants) <= 4
    assert all(g > (clock.time - 1.25) * 1000 - 250 for g in grants)
    assert len(text) < 40  # "first,delta,delta,delta": a few short numbers


def test_two_instances_sharing_the_table_see_each_others_grants(table_store: StoreFactory) -> None:
    first = table_store(calls=3, period=60, clock=ManualClock())
    second = table_store(calls=3, period=60, clock=ManualClock().at(0.5))

    assert isinstance(first.try_acquire(), QuotaGrant)
    assert isinstance(first.try_acquire(), QuotaGrant)
    third = second.try_acquire()
    assert isinstance(third, QuotaGrant)
    assert third.in_window == 3

    assert isinstance(second.try_acquire(), QuotaDenied)
    assert isinstance(first.try_acquire(), QuotaDenied)
    assert first.used() == second.used() == 3


def test_a_write_lost_to_another_instance_is_reread_and_decided_again(
    table_store: StoreFactory,
) -> None:
    rival = table_store(calls=5, period=60, clock=ManualClock())
    rival.try_acquire()  # the entity exists: the lost write is a 412 on replace
    store = table_store(calls=5, period=60, clock=RacingClock(rival.try_acquire))

    granted = store.try_acquire()

    assert isinstance(granted, QuotaGrant)
    assert granted.attempts == 2
    assert granted.in_window == 3
    assert store.stats().cas_conflicts == 1


def test_a_lost_race_to_create_the_entity_is_reread_and_decided_again(
    table_store: StoreFactory,
) -> None:
    rival = table_store(calls=5, period=60, clock=ManualClock())
    store = table_store(calls=5, period=60, clock=RacingClock(rival.try_acquire))

    granted = store.try_acquire()  # its create meets the rival's entity: 409

    assert isinstance(granted, QuotaGrant)
    assert (granted.attempts, granted.in_window) == (2, 2)


def test_losing_the_last_slot_to_another_instance_ends_in_a_denial(
    table_store: StoreFactory,
) -> None:
    rival = table_store(calls=2, period=60, clock=ManualClock())
    rival.try_acquire()
    store = table_store(calls=2, period=60, clock=RacingClock(rival.try_acquire))

    result = store.try_acquire()

    assert isinstance(result, QuotaDenied)
    assert result.reason is DenialReason.FULL
    # 60 s from the rival's first grant, less the few ms of backoff after the lost write.
    assert result.retry_after == pytest.approx(60, abs=0.01)
    assert store.used() == 2


def test_endless_contention_gives_up_with_a_short_retry_after(table_store: StoreFactory) -> None:
    rival = table_store(calls=100, period=60, clock=ManualClock())
    clock = RacingClock(rival.try_acquire, races=1000)
    store = table_store(calls=100, period=60, clock=clock)

    result = store.try_acquire()

    assert isinstance(result, QuotaDenied)
    assert result.reason is DenialReason.CONTENDED
    assert 0.05 <= result.retry_after <= 0.25
    assert result.retry_after_whole_seconds == 1
    assert store.stats().cas_conflicts == CAS_MAX_ATTEMPTS
    assert len(clock.slept) == CAS_MAX_ATTEMPTS - 1  # jittered backoff between rounds
    assert sum(clock.slept) < 1.0
    assert rival.used() == CAS_MAX_ATTEMPTS  # the rival's grants all landed


def test_a_deleted_table_is_created_again(
    table_store: StoreFactory, azurite: Azurite, unique_name: str
) -> None:
    store = table_store(calls=5, period=60, clock=ManualClock())
    store.try_acquire()
    TableServiceClient.from_connection_string(azurite.connection_string).delete_table(unique_name)

    assert isinstance(store.try_acquire(), QuotaGrant)
    assert store.used() == 1


def test_a_damaged_log_raises_instead_of_starting_afresh(
    table_store: StoreFactory, azurite: Azurite, unique_name: str
) -> None:
    store = table_store(calls=5, period=60, clock=ManualClock())
    store.try_acquire()
    client = TableClient.from_connection_string(azurite.connection_string, unique_name)
    client.upsert_entity(
        {"PartitionKey": "test-connection", "RowKey": ROW_KEY, GRANTS_PROPERTY: "12,x"}
    )

    with pytest.raises(QuotaStoreError, match="not a valid log"):
        store.try_acquire()


def test_a_damaged_log_deleted_as_its_error_says_grants_again_without_a_restart(
    table_store: StoreFactory, azurite: Azurite, unique_name: str
) -> None:
    """The damaged log an instance read first was kept for the fast path: every later decision
    of that instance raised on it, the entity deleted or not, until a restart."""
    table_store(calls=5, period=60, clock=ManualClock()).try_acquire()  # the table, made
    client = TableClient.from_connection_string(azurite.connection_string, unique_name)
    client.upsert_entity(
        {"PartitionKey": "test-connection", "RowKey": ROW_KEY, GRANTS_PROPERTY: "12,x"}
    )
    store = table_store(calls=5, period=60, clock=ManualClock())  # an instance started now
    for _ in range(2):
        with pytest.raises(QuotaStoreError, match="not a valid log"):
            store.try_acquire()

    client.delete_entity("test-connection", ROW_KEY)

    assert isinstance(store.try_acquire(), QuotaGrant)


def test_unreachable_storage_raises_a_quota_store_error(azurite: Azurite) -> None:
    port = azurite.endpoints["Table"].rsplit(":", 1)[1]
    unreachable = azurite.connection_string.replace(f":{port}/", ":1/")
    client = TableClient.from_connection_string(unreachable, "Quota", retry_total=0)
    store = TableQuotaStore(client, connection="test-connection", calls=5, period=60)

    with pytest.raises(QuotaStoreError, match="test-connection") as raised:
        store.try_acquire()
    assert "Quota" in str(raised.value)


def test_from_settings_uses_the_quota_settings_and_the_app_table(
    storage_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "7")
    monkeypatch.setenv("SMARTDIALOG_QUOTA_PERIOD_SECONDS", "30")
    monkeypatch.setenv("SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS", "0.5")
    monkeypatch.setenv("SMARTDIALOG_CLIENT_ID", "from-settings-test")

    store = from_settings()

    assert (store.calls, store.period, store.margin, store.window_seconds) == (7, 30, 0.5, 30.5)
    assert store.connection == connection_key(Settings())
    assert isinstance(store.try_acquire(), QuotaGrant)
    client = TableClient.from_connection_string(storage_env, "SmartDialogQuota")
    assert client.get_entity(store.connection, ROW_KEY)[GRANTS_PROPERTY]


def test_connection_key_names_the_upstream_and_holds_no_secret() -> None:
    settings = Settings(
        SMARTDIALOG_BASE_URL="https://api.arena.fi/api-integrations/v1",
        SMARTDIALOG_CLIENT_ID="client-1",
        SMARTDIALOG_CLIENT_SECRET="s3cret-value",
        SMARTDIALOG_ACCESS_TOKEN="tok-value",
    )
    key = connection_key(settings)

    assert key.startswith("api.arena.fi~")
    assert "s3cret" not in key
    assert "tok-value" not in key
    assert not set(key) & set("/\\#?")  # characters a PartitionKey may not hold
    assert connection_key(settings) == key
    assert connection_key(settings.model_copy(update={"client_id": "client-2"})) != key


def test_connection_key_leaves_out_a_password_in_the_base_url() -> None:
    """The setting refuses a URL with ``user:password@`` (httpx would send it as Basic auth in
    place of our token); the key leaves it out all the same, should one ever get this far."""
    with pytest.raises(ValueError, match="user name or password"):
        Settings(SMARTDIALOG_BASE_URL="https://user:S3cret@api.example:8443/v1")
    settings = Settings.model_construct(base_url="https://user:S3cret@api.example:8443/v1")
    key = connection_key(settings)
    assert key.startswith("api.example:8443~")
    assert "s3cret" not in key.lower()
