"""Queue and table clients for the app's storage account.

Locally (and in tests) ``AzureWebJobsStorage`` is a connection string, Azurite's or a
real account's. In Azure the app uses identity-based settings
(``AzureWebJobsStorage__accountName`` or the service URIs, and ``__clientId`` for a
user-assigned identity) and authenticates with ``DefaultAzureCredential``. The Azure
SDKs are imported here, on first use, never when ``function_app`` is imported.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.queue import QueueClient, QueueServiceClient


class StorageNotConfigured(RuntimeError):
    """Neither a connection string nor an identity-based storage setting is present."""


def _credential(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id)


def _service_uri(settings: Settings, kind: str) -> str:
    explicit = settings.storage_queue_uri if kind == "queue" else settings.storage_table_uri
    if explicit:
        return explicit
    if settings.storage_account_name:
        return f"https://{settings.storage_account_name}.{kind}.core.windows.net"
    raise StorageNotConfigured(
        "Set AzureWebJobsStorage (a connection string) or AzureWebJobsStorage__accountName "
        "(identity-based access) so the app can reach its queues and tables."
    )


def _connection_string(settings: Settings) -> str | None:
    value = settings.storage
    if value and value.strip() == "UseDevelopmentStorage=true":
        # Azurite on its default ports, as the Functions tooling understands it.
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
            "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
        )
    return value or None


@lru_cache(maxsize=4)
def queue_service(settings: Settings | None = None) -> QueueServiceClient:
    """The queue service client; cached per settings object."""
    from azure.storage.queue import QueueServiceClient

    settings = settings or get_settings()
    conn = _connection_string(settings)
    if conn:
        return QueueServiceClient.from_connection_string(conn)
    return QueueServiceClient(_service_uri(settings, "queue"), credential=_credential(settings))


@lru_cache(maxsize=4)
def table_service(settings: Settings | None = None) -> TableServiceClient:
    """The table service client; cached per settings object."""
    from azure.data.tables import TableServiceClient

    settings = settings or get_settings()
    conn = _connection_string(settings)
    if conn:
        return TableServiceClient.from_connection_string(conn)
    return TableServiceClient(
        endpoint=_service_uri(settings, "table"), credential=_credential(settings)
    )


def queue_client(name: str, settings: Settings | None = None) -> QueueClient:
    """A client for one queue. Messages are plain text (host.json: messageEncoding none)."""
    return queue_service(settings).get_queue_client(name)


def table_client(name: str, settings: Settings | None = None) -> TableClient:
    """A client for one table."""
    return table_service(settings).get_table_client(name)
