"""What every store of the message core has: its table (created on first use) and point reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

from shared.storage import ensure_table

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableEntity

    from shared.settings import Settings


class TableStore:
    """A store of the table :attr:`TABLE` (one client per store)."""

    TABLE: ClassVar[str]

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Self:
        from shared.storage import table_client

        return cls(table_client(cls.TABLE, settings))

    @property
    def table(self) -> TableClient:
        return ensure_table(self._table)

    def read(self, partition: str, row: str, **options: Any) -> TableEntity | None:
        """The entity at (``partition``, ``row``), or None if there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.table.get_entity(partition, row, **options)
        except ResourceNotFoundError:
            return None
