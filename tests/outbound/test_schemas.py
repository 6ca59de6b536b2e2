"""The published JSON Schemas: fresh, and true to what we actually put on the queues."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from tests.outbound.conftest import DELIVERED, REJECTED, Outbound, call_http, sms
from tools.generate_schemas import SCHEMAS_DIR, schemas, stale


def load(name: str) -> dict[str, object]:
    return json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))


def test_schemas_match_the_models() -> None:
    assert stale() == [], "run: python -m tools.generate_schemas"


def test_every_schema_is_a_valid_json_schema() -> None:
    for name in schemas():
        jsonschema.Draft202012Validator.check_schema(load(name))


def test_documented_example_message_is_valid_and_a_broken_one_is_not() -> None:
    validator = jsonschema.Draft202012Validator(load("outbound-message.json"))
    good = {"operation": "SendMessage", "body": sms(DELIVERED)}
    bad = {"operation": "SendMessage", "body": {"Sender": "x"}}
    assert validator.is_valid(good)
    assert not validator.is_valid(bad)


def test_queued_messages_events_and_dead_letters_match_their_schemas(outbound: Outbound) -> None:
    call_http("SendMessage", "POST", body=sms(DELIVERED))
    [queued] = outbound.read("smartdialog-outbound")
    jsonschema.validate(queued, load("outbound-message.json"))
    call_http("SendMessage", "POST", body=sms(REJECTED))
    outbound.drain()

    by_type = {e["type"]: e for e in outbound.events()}
    jsonschema.validate(by_type["fi.arena.smartdialog.message.sent"],
                        load("events/message.sent.json"))  # fmt: skip
    jsonschema.validate(by_type["fi.arena.smartdialog.message.failed"],
                        load("events/message.failed.json"))  # fmt: skip
    for letter in outbound.dead_letters():
        jsonschema.validate(letter, load("outbound-dead-letter.json"))


def test_schema_files_are_utf8_json_with_trailing_newline() -> None:
    for path in Path(SCHEMAS_DIR).rglob("*.json"):
        assert path.read_text(encoding="utf-8").endswith("}\n")


def test_inbound_queue_messages_and_events_are_published() -> None:
    from shared.inbound import SCHEMA_MODELS

    published = schemas()
    assert set(SCHEMA_MODELS) <= set(published)
    # The whole CloudEvent of each inbound event type too (what Parse JSON reads off a queue).
    assert {"events/message.received.json", "events/message.delivery.json"} <= set(published)
    assert load("events/message.received.json")["properties"]["type"]["const"] == (
        "fi.arena.smartdialog.message.received"
    )


def test_every_schema_file_is_generated_and_every_one_the_docs_name_exists() -> None:
    import re

    on_disk = {p.relative_to(SCHEMAS_DIR).as_posix() for p in Path(SCHEMAS_DIR).rglob("*.json")}
    assert on_disk == set(schemas()), "an orphaned or missing schema file"
    repo = Path(SCHEMAS_DIR).parent
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        for name in re.findall(r"schemas/([\w./-]+\.json)", doc.read_text(encoding="utf-8")):
            assert name in on_disk, f"{doc.name} names schemas/{name}, which does not exist"


def test_the_connection_fields_pattern_is_the_rule_the_sender_reads_by() -> None:
    """``Connection`` (a send command's, a pack driver's): the schema's pattern and length
    accept exactly the values the sender takes, padded names and whitespace alone (the
    default) included, so a producer validating against the schema is never dead-lettered."""
    from pydantic import ValidationError

    from shared.outbound._models import PackDriver

    validator = jsonschema.Draft202012Validator(load("pack-driver.json"))
    names = ["second", " Sec_ond\n", "a" * 64, " ", "\t\r\n", "a" * 65, "", "-x", "_x",
             "sec ond", "second\u00a0", "\u212a", "s\u00e9cond", "x;y", " " * 65]  # fmt: skip
    for name in names:
        driver = {"kind": "pack", "packId": "pack-" + "0" * 32, "Connection": name}
        try:
            PackDriver.model_validate(driver)
            read = True
        except ValidationError:
            read = False
        assert validator.is_valid(driver) is read, repr(name)
