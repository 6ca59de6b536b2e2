"""Write the JSON Schemas of our queue messages and events to ``schemas/`` (from the models).

    python -m tools.generate_schemas           # (re)write them
    python -m tools.generate_schemas --check   # exit 1 if any is missing or stale

``tests/outbound/test_schemas.py`` runs the check, so a model change without regenerated
schemas fails the build.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_BASE_ID = "urn:smartdialog-functions:schema:"


def _outbound_message() -> dict[str, Any]:
    from shared.outbound import OutboundMessageAdapter

    return OutboundMessageAdapter.json_schema(by_alias=True)


def _model(model: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    return lambda: model.model_json_schema(by_alias=True)


def _event(event_type: str, data: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        from shared.events import CloudEvent

        schema = TypeAdapter(CloudEvent[data]).json_schema(by_alias=True)  # type: ignore[valid-type]
        schema["properties"]["type"]["const"] = event_type
        schema["description"] = f"CloudEvents 1.0 (JSON) event {event_type}."
        return schema

    return build


def schemas() -> dict[str, tuple[str, Callable[[], dict[str, Any]]]]:
    """File name -> (title, builder), for every schema we publish: the outbound pipeline's, and
    the inbound package's (its ``SCHEMA_MODELS``, plus the whole CloudEvent of each of its
    event types, which is what a Logic App's *Parse JSON* reads off the queue)."""
    from shared.events import MESSAGE_CANCELLED, MESSAGE_FAILED, MESSAGE_REDRIVEN, MESSAGE_SENT
    from shared.inbound import (
        DELIVERY_REPORTED,
        MESSAGE_RECEIVED,
        SCHEMA_MODELS,
        DeliveryReportData,
        InboundMessageData,
    )
    from shared.notify import SCHEMA_MODELS as NOTIFY_MODELS
    from shared.outbound import (
        DeadLetter,
        MessageCancelledData,
        MessageFailedData,
        MessageRedrivenData,
        MessageSentData,
        PackDriver,
        StoredCommand,
    )

    return {
        "outbound-message.json": (
            "A send command on the smartdialog-outbound queue",
            _outbound_message,
        ),
        "pack-driver.json": (
            "A bulk pack's driver on the smartdialog-outbound queue (internal)",
            _model(PackDriver),
        ),
        "stored-command.json": (
            "A send command too large for a queue message, by reference, on the "
            "smartdialog-outbound queue (internal)",
            _model(StoredCommand),
        ),
        "outbound-dead-letter.json": (
            "A message on the smartdialog-outbound-deadletter queue",
            _model(DeadLetter),
        ),
        "events/message.sent.json": (MESSAGE_SENT, _event(MESSAGE_SENT, MessageSentData)),
        "events/message.failed.json": (MESSAGE_FAILED, _event(MESSAGE_FAILED, MessageFailedData)),
        "events/message.cancelled.json": (
            MESSAGE_CANCELLED,
            _event(MESSAGE_CANCELLED, MessageCancelledData),
        ),
        "events/message.redriven.json": (
            MESSAGE_REDRIVEN,
            _event(MESSAGE_REDRIVEN, MessageRedrivenData),
        ),
        "events/message.received.json": (
            MESSAGE_RECEIVED,
            _event(MESSAGE_RECEIVED, InboundMessageData),
        ),
        "events/message.delivery.json": (
            DELIVERY_REPORTED,
            _event(DELIVERY_REPORTED, DeliveryReportData),
        ),
        **{name: (_title(name, model), _model(model)) for name, model in SCHEMA_MODELS.items()},
        **{name: (_title(name, model), _model(model)) for name, model in NOTIFY_MODELS.items()},
    }


#: Titles of the inbound package's schemas (others: the first paragraph of the model's docstring).
_INBOUND_TITLES = {
    "events/message-received.data.json": "data of fi.arena.smartdialog.message.received",
    "events/message-delivery.data.json": "data of fi.arena.smartdialog.message.delivery",
    "inbound-delivery.json": "A message on the smartdialog-inbound-deliveries queue",
    "inbound-dead-letter.json": "A message on the smartdialog-inbound-deadletter queue",
    "inbound-intake.json": "A message on the internal smartdialog-inbound-intake queue",
}


def _title(name: str, model: type[BaseModel]) -> str:
    if name in _INBOUND_TITLES:
        return _INBOUND_TITLES[name]
    paragraph = (model.__doc__ or model.__name__).strip().split("\n\n", 1)[0]
    return " ".join(paragraph.replace("``", "").split())


def render(name: str) -> str:
    """The text of one schema file."""
    title, build = schemas()[name]
    body = build()
    document = {"$schema": _DRAFT, "$id": _BASE_ID + name.removesuffix(".json"), "title": title}
    document.update({k: v for k, v in body.items() if k != "title"})
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def stale() -> list[str]:
    """Schema files that are missing or differ from what the models produce."""
    out = []
    for name in schemas():
        path = SCHEMAS_DIR / name
        if not path.exists() or path.read_text(encoding="utf-8") != render(name):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.generate_schemas")
    parser.add_argument("--check", action="store_true", help="fail if a schema is stale")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for name in outdated:
            print(f"stale: schemas/{name} (run python -m tools.generate_schemas)")
        return 1 if outdated else 0
    for name in schemas():
        path = SCHEMAS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(name), encoding="utf-8")
        print(f"wrote schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
