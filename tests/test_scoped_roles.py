"""In Azure the data roles are scoped to each queue and table (infra/app/rbac.bicep), which may
not cover creating one; the app's create-if-missing must then carry on, since the Bicep made
them. Azurite has no RBAC, so the refusal is a client whose create answers what Azure would."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient

from devhost.azurite import Azurite
from shared.quota import QuotaGrant, TableQuotaStore
from shared.storage import ensure_table

_unique = itertools.count()


def refusal(status: int) -> HttpResponseError:
    error = HttpResponseError(message="This request is not authorized to perform this operation.")
    error.status_code = status
    return error


@dataclass
class RefusingTable:
    """The parts of a ``TableClient`` that ``ensure_table`` uses; its create is refused."""

    status: int
    table_name: str = field(default_factory=lambda: f"Refused{next(_unique)}")
    url: str = "https://account.table.core.windows.net"
    creates: int = 0

    def create_table(self) -> None:
        self.creates += 1
        raise refusal(self.status)


def test_a_create_refused_for_want_of_a_role_leaves_the_table_to_the_bicep() -> None:
    table = RefusingTable(403)

    assert ensure_table(table) is table  # type: ignore[arg-type]
    ensure_table(table)  # type: ignore[arg-type]

    assert table.creates == 1


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_any_other_failure_to_create_still_raises(status: int) -> None:
    table = RefusingTable(status)

    with pytest.raises(HttpResponseError):
        ensure_table(table)  # type: ignore[arg-type]


def test_the_quota_table_is_read_when_creating_it_is_refused(
    azurite: Azurite, unique_name: str
) -> None:
    # The quota's table, made by the Bicep; the role covers its entities, not creating it.
    TableServiceClient.from_connection_string(azurite.connection_string).create_table(unique_name)
    table = TableClient.from_connection_string(azurite.connection_string, unique_name)

    def refused() -> None:
        raise refusal(403)

    table.create_table = refused  # type: ignore[method-assign]
    store = TableQuotaStore(table, connection="scoped", calls=2, period=60)

    assert isinstance(store.try_acquire(), QuotaGrant)
    assert store.used() == 1


def test_a_missing_quota_table_its_role_may_not_create_is_a_store_error_not_contention(
    azurite: Azurite, unique_name: str
) -> None:
    """Never made (or deleted) and not creatable: each create_entity's TableNotFound read as a
    lost race, so every call was denied CONTENDED (a 429 for ever, sends deferred until they
    expired) instead of the 503 quota-unavailable naming the table."""
    from shared.quota import QuotaStoreError

    table = TableClient.from_connection_string(azurite.connection_string, unique_name)

    def refused() -> None:
        raise refusal(403)

    table.create_table = refused  # type: ignore[method-assign]
    store = TableQuotaStore(table, connection="scoped", calls=2, period=60)

    with pytest.raises(QuotaStoreError, match=f"quota table {unique_name} does not exist"):
        store.try_acquire()
    with pytest.raises(QuotaStoreError, match="create it"):
        store.try_acquire()  # and again: no cached 'exists' turns it into contention
