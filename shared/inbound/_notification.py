"""The Swagger schema of what a New Message trigger subscriber receives (the connector's
``x-ms-notification-content`` of NewMessage): :class:`InboundMessageData` with the certified
connector's titles for its fields, and as visible as there."""

from __future__ import annotations

from typing import Any

from shared.inbound._models import InboundMessageData

__all__ = ["notification_schema"]

_TITLES = {
    "sender": "Message Sender",
    "recipient": "Message Recipient",
    "content": "Message Content",
    "timestamp": "Message Timestamp",
    "protocol": "Message Protocol",
    "attachments": "Attachments",
    "messageId": "Message Id",
    "service": "Service",
    "connection": "Connection",
    "receivedAt": "Received at",
    "optOut": "Opt-out keyword",
    "part": "Message Part",
    "parts": "Message Parts",
}
#: What a subscriber gets differs from the queue's event: the whole message, never in parts.
_DESCRIPTIONS = {
    "part": "Always 1: a flow gets the whole message in one event, however large.",
    "parts": "Always 1 (see Message Part).",
}
#: The fields the certified connector shows among the important ones; the rest are advanced.
_IMPORTANT = frozenset({"sender", "recipient", "content", "timestamp", "protocol", "messageId"})
_ATTACHMENT = {
    "name": ("Attachment Filename", "The filename of the attachment."),
    "mimeType": ("Attachment Mime Type", "The mime type of the attachment."),
    "resourceLocation": ("Attachment Resource Location", "Where SmartDialog keeps the file."),
}


def notification_schema() -> dict[str, Any]:
    """The Swagger schema of what a New Message subscriber receives (:class:`InboundMessageData`,
    with the certified connector's titles and visibility for its fields)."""
    properties: dict[str, Any] = {}
    for name, info in InboundMessageData.model_fields.items():
        prop: dict[str, Any] = {
            "type": "string",
            "description": _DESCRIPTIONS.get(name) or info.description or name,
            "title": _TITLES[name],
            "x-ms-visibility": "important" if name in _IMPORTANT else "advanced",
        }
        if name in ("timestamp", "receivedAt"):
            prop["format"] = "date-time"
        if name == "optOut":
            prop["enum"] = ["stop", "start"]
        if name in ("part", "parts"):
            prop["type"] = "integer"
        if name == "attachments":
            del prop["x-ms-visibility"]
            prop["type"] = "array"
            prop["items"] = {
                "type": "object",
                "properties": {
                    key: {
                        "type": "string",
                        "title": title,
                        "description": text,
                        "x-ms-visibility": "important",
                    }
                    for key, (title, text) in _ATTACHMENT.items()
                },
            }
        properties[name] = prop
    return {"type": "object", "properties": properties}
