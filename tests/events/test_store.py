"""The rules' storage against Azurite: the per-instance cache of the rules, quiet periods and
hourly caps (with the manual clock, no sleeping)."""

from __future__ import annotations

import datetime as dt

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


def test_the_hourly_cap_grants_up_to_its_limit_and_repeats_an_events_grant(
    storage_env: str, unique_name: str
) -> None:
    state = NotifyState(_table(storage_env, unique_name))
    assert state.cap_take("r", "e1", 3, per_hour=4, now=NOW) == 3
    assert state.cap_take("r", "e2", 3, per_hour=4, now=NOW) == 1
    assert state.cap_take("r", "e1", 3, per_hour=4, now=NOW) == 3
    assert state.cap_take("r", "e3", 1, per_hour=4, now=NOW) == 0
    assert state.cap_take("r", "e3", 1, per_hour=4, now=NOW + dt.timedelta(hours=1)) == 1


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
