"""Queue message sizes, and the large parts of queue messages kept by reference in blobs.

A Storage queue message holds 64 KiB of the XML request that carries it; what is larger goes by
reference: a blob in ``smartdialog-payloads`` that the message names (docs/sending.md, "Sizes").
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from shared.storage import blob_service, create_once, xml_safe

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from shared.settings import Settings

__all__ = [
    "QUEUE_MESSAGE_BUDGET",
    "QUEUE_MESSAGE_LIMIT",
    "PayloadStore",
    "fits_queue",
    "queue_message_bytes",
]

#: The most a Storage queue message holds (the service's limit, 64 KiB).
QUEUE_MESSAGE_LIMIT = 64 * 1024
#: What we fill one up to: the limit less a margin, should the service count a little more.
QUEUE_MESSAGE_BUDGET = QUEUE_MESSAGE_LIMIT - 512


def queue_message_bytes(text: str) -> int:
    """The size of ``text`` as a queue message: its UTF-8 bytes as the request carries it
    (:func:`xml_safe`, then XML-escaped; ``messageEncoding`` is ``none``: no base64)."""
    from xml.sax.saxutils import escape

    return len(escape(xml_safe(text)).encode("utf-8"))


def fits_queue(text: str, *, headroom: int = 0) -> bool:
    """Whether ``text`` fits our budget of a queue message with ``headroom`` bytes to spare."""
    return queue_message_bytes(text) + headroom <= QUEUE_MESSAGE_BUDGET


class PayloadStore:
    """Large parts of queue messages and dead letters, kept by reference: one blob each in
    ``smartdialog-payloads``, named ``<kind>/<sha256 of the text>`` (the same text is the same
    blob, so writing it again is harmless). The queue message carries the name."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PayloadStore:
        from shared.names import PAYLOADS_CONTAINER

        return cls(blob_service(settings).get_container_client(PAYLOADS_CONTAINER))

    def put(self, text: str, *, kind: str) -> str:
        """Store ``text``; its blob's name (the container is created once if missing)."""
        data = text.encode("utf-8")
        name = f"{kind}/{hashlib.sha256(data).hexdigest()}"
        container = self._container
        create_once(f"blob|{container.url}", container.create_container)
        container.upload_blob(name, data, overwrite=True, content_settings=_json_content_settings())
        return name

    def get(self, name: str) -> str | None:
        """The text stored as ``name``, or None if there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None
        return bytes(data).decode("utf-8")


def _json_content_settings() -> Any:
    from azure.storage.blob import ContentSettings

    return ContentSettings(content_type="application/json; charset=utf-8")
