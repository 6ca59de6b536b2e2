"""The rules' storage against Azurite: the per-instance cache of the rules, quiet periods and
hourly caps (with the manual clock, no sleeping)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from azure.data.tables import TableClient

from shared.clock import ManualClock
from shared.notify._rules import Rule
from shared.notify._store import RULES_TTL_SECONDS, NotifyState, RuleStore
from shared.storage import ensure_table

NOW = dt.datetime(2026, 12, 3, 21, 0, tzinfo=dt.UTC)


def _table(connection: str, name: str) -> TableClient:
    return ensure_table(TableClient.from_connection_string(connection, name))


def _rule(rule_id: str) -> Rule:
    return Rule.model_validate(
        {
            "Id": rule_id,
            "Match": {"EventType": "t"},
            "Message": {"Sender": "Ops", "Content": "hi"},
            "Recipients": {"Numbers": ["+358400000001"]},
        }
    )


def test_another_instances_edit_is_seen_once_the_cached_rules_are_older_than_the_ttl(
    storage_env: str, unique_name: str, manual_clock: ManualClock
) -> None:
    table = _table(storage_env, unique_name.replace("-", ""))
    store = RuleStore(table)
    assert store.book().rules == ()
    # Another instance saves a rule: this one's cache does not know.
    table.create_entity(
        {"PartitionKey": "rule", "RowKey": "r1", "Document": _rule("r1").model_dump_json()}
    )
    assert store.book().rules == ()
    manual_clock.advance(RULES_TTL_SECONDS)
    assert [r.Id for r in store.book().rules] == ["r1"]
    # A save in this instance is seen at once.
    assert store.create(_rule("r2"))
    assert [r.Id for r in store.book().rules] == ["r1", "r2"]


def test_a_rule_larger_than_a_table_string_is_stored_and_read_and_an_older_row_still_reads(
    storage_env: str, unique_name: str, manual_clock: ManualClock
) -> None:
    """A rule's JSON with a large SampleEvent passes a Table string's 32K: it is kept over as
    many properties as it takes (it was refused by the service: a 500); a rule row of the
    previous release (one Document property) still reads."""
    from shared.notify._rules import RULE_UNITS, rule_errors

    table = _table(storage_env, unique_name.replace("-", ""))
    store = RuleStore(table)
    sample = {"specversion": "1.0", "id": "1", "source": "s", "type": "t",
              "data": {"note": "x" * 40_000}}  # fmt: skip
    big = _rule("big").model_copy(update={"SampleEvent": sample})
    assert rule_errors(big) == []
    assert store.create(big)
    table.create_entity(
        {"PartitionKey": "rule", "RowKey": "old", "Document": _rule("old").model_dump_json()}
    )
    manual_clock.advance(RULES_TTL_SECONDS)

    assert {r.Id: r for r in store.book().rules}["big"] == big
    assert [r.Id for r in store.book().rules] == ["big", "old"]
    huge = big.model_copy(update={"SampleEvent": {**sample, "data": {"n": "x" * RULE_UNITS}}})
    assert [field for field, _ in rule_errors(huge)] == ["body"]


def test_a_quiet_period_lets_the_same_event_again_and_another_only_after_it_ends(
    storage_env: str, unique_name: str
) -> None:
    state = NotifyState(_table(storage_env, unique_name))

    def claim(event: str, at: dt.datetime) -> bool:
        return state.quiet_claim("r", "vm-1", "+358400000001", event, minutes=15, now=at)

    assert claim("e1", NOW)
    assert claim("e1", NOW + dt.timedelta(minutes=1))  # a redelivery
    assert not claim("e2", NOW + dt.timedelta(minutes=14))
    assert claim("e3", NOW + dt.timedelta(minutes=15))
    assert state.quiet_claim("r", "vm-2", "+358400000001", "e4", minutes=15, now=NOW)


class _SweptBetween(NotifyState):
    """A store whose rows the sweeper deletes right after they were read (once each)."""

    def __init__(self, table: TableClient) -> None:
        super().__init__(table)
        self.swept: list[str] = []

    def _read(self, partition: str, row: str) -> Any:
        entity = super()._read(partition, row)
        if entity is not None and partition not in self.swept:
            self._table.delete_entity(partition, row)
            self.swept.append(partition)
        return entity


def test_a_row_the_sweeper_deletes_between_read_and_write_is_a_lost_race_not_an_error(
    storage_env: str, unique_name: str, manual_clock: ManualClock
) -> None:
    """NotificationStateSweeper deletes ended quiet periods (and past hours' caps): one gone
    between our read and our conditional update made the update a 404, which escaped (the
    HTTP door answered 500). It is read again and the row created."""
    table = _table(storage_env, unique_name)
    NotifyState(table).quiet_claim("r", "vm-1", "+358400000001", "e1", minutes=15, now=NOW)
    NotifyState(table).cap_take("r", "e1", 1, per_hour=4, now=NOW)
    state = _SweptBetween(table)

    later = NOW + dt.timedelta(minutes=20)  # e1's quiet period has ended: the sweeper's
    assert state.quiet_claim("r", "vm-1", "+358400000001", "e2", minutes=15, now=later)
    assert state.cap_take("r", "e2", 1, per_hour=4, now=NOW) == 1
    assert state.swept == ["quiet-r", "cap-r"]
    assert not NotifyState(table).quiet_claim(
        "r", "vm-1", "+358400000001", "e3", minutes=15, now=later
    )  # e2's claim was written


def test_the_hourly_cap_grants_up_to_its_limit_and_repeats_an_events_grant(
    storage_env: str, unique_name: str
) -> None:
    state = NotifyState(_table(storage_env, unique_name))
    assert state.cap_take("r", "e1", 3, per_hour=4, now=NOW) == 3
    assert state.cap_take("r", "e2", 3, per_hour=4, now=NOW) == 1
    assert state.cap_take("r", "e1", 3, per_hour=4, now=NOW) == 3
    assert state.cap_take("r", "e3", 1, per_hour=4, now=NOW) == 0
    assert state.cap_take("r", "e3", 1, per_hour=4, now=NOW + dt.timedelta(hours=1)) == 1


def test_caps_and_quiet_periods_hold_events_of_any_id_length_and_more_than_fit_one_property(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CloudEvent's id and source have no length limit, and a cap of up to 10,000 numbers an
    hour remembers as many events: the rows keep a fixed-length hash of each, split over as
    many properties as it takes (a Table string holds 32K characters)."""
    from shared import storage

    monkeypatch.setattr(storage, "CHUNK_CHARS", 200)  # a few events fill a property
    state = NotifyState(_table(storage_env, unique_name))
    long_key = "https://example.com/" + "x" * 40_000 + "\n" + "y" * 40_000
    assert state.quiet_claim("r", "vm-1", "+358400000001", long_key, minutes=15, now=NOW)
    assert state.quiet_claim("r", "vm-1", "+358400000001", long_key, minutes=15, now=NOW)
    assert state.cap_take("r", long_key, 2, per_hour=600, now=NOW) == 2
    for index in range(598):  # more than the 500 events a row used to remember
        assert state.cap_take("r", f"e{index}", 1, per_hour=600, now=NOW) == 1
    assert state.cap_take("r", long_key, 2, per_hour=600, now=NOW) == 2  # a redelivery
    assert state.cap_take("r", "e0", 1, per_hour=600, now=NOW) == 1
    assert state.cap_take("r", "one-too-many", 1, per_hour=600, now=NOW) == 0


def test_rows_of_the_previous_release_still_recognise_their_events(
    storage_env: str, unique_name: str
) -> None:
    """Those rows kept the event's key itself, in one property."""
    table = _table(storage_env, unique_name)
    table.create_entity({"PartitionKey": "cap-r", "RowKey": NOW.strftime("%Y%m%d%H"),
                         "Events": '{"src\\ne1": 2}'})  # fmt: skip
    state = NotifyState(table)
    assert state.cap_take("r", "src\ne1", 2, per_hour=3, now=NOW) == 2  # not counted again
    assert state.cap_take("r", "src\ne2", 2, per_hour=3, now=NOW) == 1


def test_a_cap_row_that_keeps_changing_fails_the_event_rather_than_refuse_its_numbers(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """Every compare-and-swap lost (other events keep taking the cap): the event is retried
    (it raises), not told its numbers are over MaxPerHour."""
    state = NotifyState(_table(storage_env, unique_name))
    monkeypatch.setattr(NotifyState, "_write", lambda self, entity, previous: False)
    with pytest.raises(RuntimeError, match="kept changing"):
        state.cap_take("r", "e1", 1, per_hour=4, now=NOW)


def test_a_message_that_cannot_be_made_starts_no_quiet_period(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event whose message the rule cannot make (the send command is not valid; a rule
    saved and checked today makes none such, so the test's contract refuses one) sends
    nothing, so the next event about the same subject is not held back by a quiet period it
    started."""
    from azure.storage.queue import QueueClient

    from shared.notify import _notify
    from shared.notify._intake import parse_object
    from shared.settings import get_settings

    adapter = _notify.OutboundMessageAdapter

    class Refusing:
        @staticmethod
        def validate_python(command: dict[str, Any]) -> Any:
            if command["body"]["Content"] == "unmakeable":
                raise ValueError("not a send command")
            return adapter.validate_python(command)

    rules = RuleStore(_table(storage_env, unique_name.replace("-", "") + "rules"))
    queue = QueueClient.from_connection_string(storage_env, unique_name)
    queue.create_queue()
    notifier = _notify.Notifier(get_settings(), rules=rules, queue=queue,
                                state=NotifyState(_table(storage_env, unique_name)))  # fmt: skip
    rule = _rule("quiet").model_copy(update={"QuietMinutes": 30})
    rule = rule.model_copy(update={"Message": rule.Message.model_copy(
        update={"Content": "$(data.text)"})})  # fmt: skip
    assert rules.create(rule)

    def event(event_id: str, text: str) -> Any:
        return parse_object({"specversion": "1.0", "id": event_id, "source": "s", "type": "t",
                             "subject": "vm-1", "data": {"text": text}})  # fmt: skip

    with monkeypatch.context() as patch:
        patch.setattr(_notify, "OutboundMessageAdapter", Refusing)
        [unsendable, sendable] = notifier.handle(
            [event("e1", "unmakeable"), event("e2", "disk full")]
        )

    assert [s.reason for s in unsendable.skipped] == ["message not valid: not a send command"]
    assert [s.address for s in sendable.sends] == ["+358400000001"]


def test_the_sweep_deletes_ended_quiet_periods_and_past_hours_caps_only(
    storage_env: str, unique_name: str
) -> None:
    table = _table(storage_env, unique_name)
    state = NotifyState(table)
    assert state.quiet_claim("r", "vm-1", "+358400000001", "e1", minutes=15, now=NOW)
    assert state.quiet_claim("r", "vm-2", "+358400000001", "e2", minutes=90, now=NOW)
    assert state.cap_take("r", "e1", 1, per_hour=4, now=NOW) == 1

    # Within the quiet periods and the cap's hour: nothing may go.
    assert state.sweep(now=NOW + dt.timedelta(minutes=10)) == 0
    # vm-1's period ended; the cap's hour is over but still the last one; vm-2 still quiet.
    assert state.sweep(now=NOW + dt.timedelta(minutes=61)) == 1
    assert not state.quiet_claim(
        "r", "vm-2", "+358400000001", "e3", minutes=15, now=NOW + dt.timedelta(minutes=61)
    )
    # Two hours on, the rest has ended too.
    assert state.sweep(now=NOW + dt.timedelta(hours=2, minutes=1)) == 2
    assert list(table.list_entities()) == []
    assert state.sweep(now=NOW + dt.timedelta(hours=3)) == 0
