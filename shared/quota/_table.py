"""The production store: one Azure Table entity per connection, updated by ETag."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.clock import Clock
from shared.names import DEFAULT_CONNECTION, QUOTA_TABLE
from shared.quota._store import QuotaStore, QuotaStoreError, StoredLog

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

#: The RowKey of the one entity per connection (the PartitionKey is the connection key).
ROW_KEY = "sliding-log"
#: The entity property holding the encoded log (see ``_log``).
GRANTS_PROPERTY = "Grants"


class TableLog:
    """One connection's log as a Table entity; compare-and-swap through its ETag.

    The table is created on first use, once per process (``shared.storage.ensure_table``: an
    existing one is fine, and so is a 403 from a role scoped to the table; if it is missing
    after all, a write says so as :class:`QuotaStoreError`).
    """

    def __init__(self, table: TableClient, partition_key: str) -> None:
        self._table = table
        self._key = partition_key

    def read(self) -> StoredLog | None:
        """The stored log and its ETag, or None when the connection has none yet."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        from shared.storage import ensure_table

        try:
            ensure_table(self._table)
            try:
                entity = self._table.get_entity(self._key, ROW_KEY)
            except ResourceNotFoundError as exc:
                if _table_missing(exc):
                    ensure_table(self._table, again=True)  # deleted behind our back
                return None
        except AzureError as exc:
            raise self._error("read", exc) from exc
        return StoredLog(str(entity.get(GRANTS_PROPERTY, "")), str(entity.metadata["etag"]))

    def write(self, text: str, etag: str | None) -> str | None:
        """Create the entity (``etag`` None) or replace it if still at ``etag``.

        Returns the entity's new ETag (from the write's own response, so the caller can
        compare-and-swap again without reading first); None when another writer got in
        first (409 on create; 412, or 404 after a delete, on replace). A table missing on
        create (:meth:`read` could not re-create it) is :class:`QuotaStoreError`, no race.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            AzureError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": self._key, "RowKey": ROW_KEY, GRANTS_PROPERTY: text}
        try:
            if etag is None:
                written = self._table.create_entity(entity)
            else:
                written = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except ResourceNotFoundError as exc:
            if etag is None and _table_missing(exc):  # read() re-created it, or could not
                raise self._missing() from exc
            return None  # a replace's: read() re-creates a table deleted since
        except (ResourceExistsError, ResourceModifiedError):
            return None
        except AzureError as exc:
            raise self._error("write", exc) from exc
        return str(written.get("etag") or "")

    def _missing(self) -> QuotaStoreError:
        """The table is missing and could not be made (a role that may not create tables):
        every round would fail, so an error, not a lost race (a 429 with no end)."""
        name = self._table.table_name
        return QuotaStoreError(
            f"the quota table {name} does not exist and could not be created (the app's role "
            f"may not create tables): create it (the Bicep does; az storage table create "
            f"--name {name}) or grant the role table creation",
            lasting=True,
        )

    def _error(self, action: str, exc: Exception) -> QuotaStoreError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return QuotaStoreError(
            f"could not {action} the quota log of connection {self._key} "
            f"in table {self._table.table_name}: {type(exc).__name__}: {reason}"
        )


def _table_missing(error: BaseException) -> bool:
    """Whether a 404 is the table's, not the entity's (a create's has no ``error_code``: the
    code is only in its text)."""
    return getattr(error, "error_code", None) == "TableNotFound" or "TableNotFound" in str(error)


class TableQuotaStore(QuotaStore):
    """The cluster-wide quota: every instance that shares the table shares the limit."""

    def __init__(
        self,
        table: TableClient,
        *,
        connection: str,
        calls: int,
        period: float,
        margin: float = 0.0,
        clock: Clock | None = None,
        name: str = DEFAULT_CONNECTION,
    ) -> None:
        super().__init__(
            TableLog(table, connection),
            connection=connection,
            calls=calls,
            period=period,
            margin=margin,
            clock=clock,
            name=name,
        )


def connection_key(settings: Settings) -> str:
    """The PartitionKey of a connection: upstream host plus a hash of URL and client.

    Never contains a secret. Two configurations that reach the same upstream with
    the same client share a key (and a quota); that may over-limit, never over-admit.
    A named connection's key also has its name (each connection has its own quota).
    The client id is hashed as written: no two connections share a key anyway, and one client
    in two connections (any case) is a configuration error (``shared.connections``), so
    folding its case would only move an existing key at the upgrade, letting old and new
    instances each admit a full quota meanwhile.
    """

    base_url = settings.base_url.lower()
    identity = settings.client_id or ("static-token" if settings.access_token else "")
    if settings.connection != DEFAULT_CONNECTION:  # the default's key predates connections
        identity += f"\nconnection:{settings.connection}"
    digest = hashlib.sha256(f"{base_url}\n{identity}".encode()).hexdigest()[:24]
    # The host and port only: a URL's user:password@ never goes into a key (the same key as
    # before for every URL without one).
    netloc = urlsplit(base_url).netloc.rpartition("@")[2]
    host = "".join(c for c in netloc if c.isalnum() or c in ".-:") or "upstream"
    return f"{host}~{digest}"


@lru_cache(maxsize=8)
def _quota_table(settings: Settings, table: str) -> TableClient:
    from shared.storage import table_client

    return table_client(table, settings)


def from_settings(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    connection: str | None = None,
    table: str = QUOTA_TABLE,
) -> TableQuotaStore:
    """The quota store of the configured connection (SMARTDIALOG_QUOTA_* settings).

    Cheap to call: the table client is cached per process and the table is created
    once, on first use. But each store keeps its own last-seen log for the one-round-trip
    fast path, so keep the store (as the sync actions' shared client and the sender do):
    a new store's first token reads first. ``connection`` overrides the key derived by
    :func:`connection_key`.
    """
    from shared.settings import get_settings

    settings = settings or get_settings()
    return TableQuotaStore(
        _quota_table(settings, table),
        connection=connection or connection_key(settings),
        calls=settings.quota_calls,
        period=settings.quota_period_seconds,
        margin=settings.quota_safety_margin_seconds,
        clock=clock,
        name=settings.connection,
    )
