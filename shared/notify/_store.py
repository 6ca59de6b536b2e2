"""Where rules, recipient lists and the rules' memory live (Table storage).

``SmartDialogNotificationRules``: PartitionKey ``rule`` (RowKey the rule id, ``Document`` the
rule's JSON, in as many properties as it takes: ``shared.storage.chunked``) and ``list``
(RowKey the list name, ``Numbers`` a JSON array of E.164 numbers). A row that does not read
(a torn row, one written by hand) is logged and skipped, never failing every event: a rule's
list that does not read is in the event's ``Skipped``, and reading it answers 409.
Matching reads the whole table at most once per :data:`RULES_TTL_SECONDS` per process (one
query); a write in this process is seen at once, one in another instance within that time.

``SmartDialogNotificationState``: quiet periods (PartitionKey ``quiet-<rule>``, RowKey a hash of
subject and recipient) and hourly caps on numbers taken from events (PartitionKey
``cap-<rule>``, RowKey the hour). Both remember which event used them, so a re-delivered event
is let through again (its sends are de-duplicated by their ids) and not counted twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from shared.clock import current
from shared.names import NOTIFICATION_RULES_TABLE, NOTIFICATION_STATE_TABLE
from shared.notify._rules import Rule, invalid_fields
from shared.storage import chunked, ensured_table, joined

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = ["RULES_TTL_SECONDS", "NotifyState", "RuleBook", "RuleStore", "UnreadableRow"]

log = logging.getLogger("shared.notify")
_R = TypeVar("_R")

#: How long one instance uses the rules it read before it reads them again.
RULES_TTL_SECONDS = 10.0
_RULE = "rule"
_LIST = "list"
#: Most events one hourly cap row remembers: as many as the largest MaxPerHour lets send (each
#: takes one number at least). Each is a 16-hex hash and its count, about 21 characters, over
#: as many properties as it takes (shared.storage.chunked): about 0.4 MiB at most.
_CAP_EVENTS = 10_000
#: Compare-and-swap rounds on a contended cap row before the event fails (and is retried).
_CAP_ROUNDS = 20


def _stored_key(event_key: str) -> str:
    """An event's key as the state rows keep it: a fixed-length hash, whatever the length of
    the event's source and id (rows of the previous release kept the key itself)."""
    return _hash("event", event_key)[:16]


def _known_key(keys: Container[str], event_key: str) -> str | None:
    """How ``keys`` has the event: its stored key, else its raw key (a previous release's
    row), else None."""
    return next((k for k in (_stored_key(event_key), event_key) if k in keys), None)


def _quiet_ours(entity: Any, event_key: str) -> bool:
    """Whether a quiet-period row was claimed by this event."""
    return _known_key((entity["Event"],), event_key) is not None


def _quiet_holds(entity: Any, now: dt.datetime) -> bool:
    """Whether a quiet-period row's period has not ended at ``now``."""
    return now < dt.datetime.fromisoformat(entity["Until"])


def _document(entity: Any) -> str:
    """A rule row's JSON (a previous release's row: one ``Document`` property)."""
    return joined(entity, "Document") or str(entity["Document"])


def _cap_events(entity: Any) -> dict[str, int]:
    """The events a cap row counts (a previous release's row: one ``Events`` property)."""
    if entity is None:
        return {}
    return dict(json.loads(joined(entity, "Events") or entity.get("Events") or "{}"))


@dataclass(frozen=True)
class RuleBook:
    """Every rule and recipient list, as read at one moment (and the lists that do not read)."""

    rules: tuple[Rule, ...]
    lists: dict[str, tuple[str, ...]]
    unreadable_lists: frozenset[str] = frozenset()


class RuleStore:
    """Reads and writes rules and recipient lists; :meth:`book` serves matching from a cache."""

    _cache: ClassVar[dict[str, tuple[float, RuleBook]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._key = f"{table.url}|{table.table_name}"

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RuleStore:
        return cls(ensured_table(NOTIFICATION_RULES_TABLE, settings))

    # --- matching ---

    def book(self) -> RuleBook:
        """Every rule and list (one query, then cached for :data:`RULES_TTL_SECONDS`)."""
        now = current().now()
        cached = self._cache.get(self._key)
        if cached is not None and now - cached[0] < RULES_TTL_SECONDS:
            return cached[1]
        rules: list[Rule] = []
        lists: dict[str, tuple[str, ...]] = {}
        unreadable: set[str] = set()
        for entity in self._table.list_entities():
            if entity["PartitionKey"] == _RULE:
                rule = _readable(entity)
                if rule is not None:
                    rules.append(rule)
            elif entity["PartitionKey"] == _LIST:
                numbers = _numbers(entity)
                if numbers is None:
                    unreadable.add(entity["RowKey"])
                else:
                    lists[entity["RowKey"]] = numbers
        book = RuleBook(tuple(sorted(rules, key=lambda r: r.Id)), lists, frozenset(unreadable))
        with self._lock:
            self._cache[self._key] = (now, book)
        return book

    def _forget(self) -> None:
        with self._lock:
            self._cache.pop(self._key, None)

    # --- rules ---

    def get(self, rule_id: str) -> Rule | None:
        """The rule; None if there is none; :class:`UnreadableRow` if its row no longer reads
        as one."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(_RULE, rule_id)
        except ResourceNotFoundError:
            return None
        rule = _readable(entity)
        if rule is None:
            raise UnreadableRow("Rule", rule_id)
        return rule

    def list_rules(self) -> tuple[list[Rule], list[str]]:
        """Every rule, and the ids of stored rows that no longer read as one (skipped)."""
        rows = self._table.query_entities("PartitionKey eq @p", parameters={"p": _RULE})
        rules: list[Rule] = []
        unreadable: list[str] = []
        for entity in rows:
            rule = _readable(entity)
            if rule is None:
                unreadable.append(entity["RowKey"])
            else:
                rules.append(rule)
        return sorted(rules, key=lambda r: r.Id), sorted(unreadable)

    def create(self, rule: Rule) -> bool:
        """Store a new rule; False if one with its id exists."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._table.create_entity(self._rule_entity(rule))
        except ResourceExistsError:
            return False
        self._forget()
        return True

    def replace(self, rule: Rule) -> bool:
        """Replace an existing rule; False if there is none."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            self._table.update_entity(self._rule_entity(rule), mode=UpdateMode.REPLACE)
        except ResourceNotFoundError:
            return False
        self._forget()
        return True

    def delete(self, rule_id: str) -> bool:
        """Delete a rule (also one that no longer reads); False if there was none."""
        return self._delete(_RULE, rule_id)

    def _delete(self, partition: str, name: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._table.get_entity(partition, name, select=["RowKey"])
        except ResourceNotFoundError:
            return False
        self._table.delete_entity(partition, name)
        self._forget()
        return True

    @staticmethod
    def _rule_entity(rule: Rule) -> dict[str, Any]:
        document = rule.model_dump_json(exclude_none=True)
        return {"PartitionKey": _RULE, "RowKey": rule.Id, **chunked("Document", document)}

    # --- recipient lists ---

    def get_list(self, name: str) -> tuple[str, ...] | None:
        """The list's numbers; None if there is none; :class:`UnreadableRow` if its row does
        not read as one."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(_LIST, name)
        except ResourceNotFoundError:
            return None
        numbers = _numbers(entity)
        if numbers is None:
            raise UnreadableRow("Recipient list", name)
        return numbers

    def put_list(self, name: str, numbers: list[str]) -> None:
        """Create or replace a recipient list."""
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": _LIST, "RowKey": name, "Numbers": json.dumps(numbers)}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        self._forget()

    def delete_list(self, name: str) -> bool:
        """Delete a list (also one that no longer reads); False if there was none."""
        return self._delete(_LIST, name)


class UnreadableRow(LookupError):
    """A stored rule or list row that no longer reads as one (:func:`_readable`,
    :func:`_numbers`); ``what`` is ``Rule`` or ``Recipient list``."""

    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"{what} {name}")
        self.what, self.name = what, name


def _numbers(entity: Any) -> tuple[str, ...] | None:
    """A stored list row's numbers; None, logged as an error, when they do not read as a JSON
    array of texts: one such row must not fail every event."""
    try:  # ValueError: not JSON, not UTF-8; TypeError: not text; RecursionError: nested deep
        numbers = json.loads(entity["Numbers"])
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        numbers = exc
    if isinstance(numbers, list) and all(isinstance(n, str) for n in numbers):
        return tuple(numbers)
    why = type(numbers).__name__ if isinstance(numbers, Exception) else "not an array of texts"
    log.error("recipient list %s is skipped: its stored row does not read (%s)",
              entity.get("RowKey"), why)  # fmt: skip
    return None


def _readable(entity: Any) -> Rule | None:
    """A stored rule row as a rule; None, logged as an error, when it no longer reads as one
    (e.g. saved by a release that allowed what this one refuses): one such row must not fail
    every event. Update or delete it (ListNotificationRules names it)."""
    from pydantic import ValidationError

    try:
        return Rule.model_validate_json(_document(entity))
    except ValidationError as exc:
        why = invalid_fields(exc)
    except (KeyError, TypeError, ValueError) as exc:  # no Document at all, or a torn count
        why = f"no rule document ({type(exc).__name__})"
    log.error(
        "notification rule %s is skipped: its stored row does not read as a rule (%s)",
        entity.get("RowKey"),
        why,
    )
    return None


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:40]


#: Rows one sweep deletes at most (one delete per row; the next run takes the rest).
SWEEP_LIMIT = 5000


class NotifyState:
    """Quiet periods and hourly caps (ETag compare-and-swap; a lost race is read again)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> NotifyState:
        return cls(ensured_table(NOTIFICATION_STATE_TABLE, settings))

    def _read(self, partition: str, row: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None

    def _write(self, entity: dict[str, Any], previous: Any) -> bool:
        """Create ``entity`` or replace ``previous`` unchanged since read; False on a lost race
        (another writer was first, or the sweeper deleted ``previous`` meanwhile: read again)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        try:
            if previous is None:
                self._table.create_entity(entity)
            else:
                self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=previous.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def quiet_claim(
        self,
        rule_id: str,
        subject: str,
        recipient: str,
        event_key: str,
        *,
        minutes: int,
        now: dt.datetime,
    ) -> bool:
        """Whether ``event_key`` may notify ``recipient`` about ``subject`` now: no other event
        did within the last ``minutes`` (the same event again may: its send has the same id)."""
        partition, row = f"quiet-{rule_id}", _hash(subject, recipient)
        for _ in range(5):
            entity = self._read(partition, row)
            if entity is not None:
                if _quiet_ours(entity, event_key):
                    return True
                if _quiet_holds(entity, now):
                    return False
            claim = {
                "PartitionKey": partition,
                "RowKey": row,
                "Event": _stored_key(event_key),
                "Until": (now + dt.timedelta(minutes=minutes)).astimezone(dt.UTC).isoformat(),
            }
            if self._write(claim, entity):
                return True
        return False

    def quiet_held(
        self, rule_id: str, subject: str, recipient: str, event_key: str, *, now: dt.datetime
    ) -> bool:
        """Whether another event's quiet period holds ``recipient`` back now (read only: what
        :meth:`quiet_claim` would refuse, unless the period is claimed or ends meanwhile)."""
        entity = self._read(f"quiet-{rule_id}", _hash(subject, recipient))
        if entity is None or _quiet_ours(entity, event_key):
            return False
        return _quiet_holds(entity, now)

    def sweep(self, *, now: dt.datetime, limit: int = SWEEP_LIMIT) -> int:
        """Delete quiet periods that have ended and hourly caps of past hours (neither can
        affect a send any more); how many rows went. At most ``limit`` per call: a timer calls
        it again (``functions/events.py`` ``NotificationStateSweeper``)."""
        from azure.core.exceptions import ResourceNotFoundError

        ended = now.astimezone(dt.UTC).isoformat()
        last_hour = (now.astimezone(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y%m%d%H")
        stale = (
            f"(PartitionKey ge 'quiet-' and PartitionKey lt 'quiet.' and Until lt '{ended}')"
            f" or (PartitionKey ge 'cap-' and PartitionKey lt 'cap.' and RowKey lt '{last_hour}')"
        )
        gone = 0
        for entity in self._table.query_entities(stale, select=["PartitionKey", "RowKey"]):
            try:
                self._table.delete_entity(entity["PartitionKey"], entity["RowKey"])
            except ResourceNotFoundError:  # another sweeper was first
                continue
            gone += 1
            if gone >= limit:
                break
        return gone

    def cap_take(
        self, rule_id: str, event_key: str, wanted: int, *, per_hour: int, now: dt.datetime
    ) -> int:
        """How many of ``wanted`` numbers from ``event_key`` may be sent this hour (the same
        event again in this hour gets what it got the first time). A row other events keep
        changing is read again (with a short random pause) up to ``_CAP_ROUNDS`` times, then
        this raises: the event is retried, not quietly refused."""

        def take(events: dict[str, int]) -> tuple[int, bool]:
            known = _known_key(events, event_key)
            if known is not None:
                return min(wanted, events[known]), False
            granted = max(0, min(wanted, per_hour - sum(events.values())))
            if granted == 0 or len(events) >= _CAP_EVENTS:
                return 0, False
            events[_stored_key(event_key)] = granted
            return granted, True

        return self._cap_update(rule_id, now, take)

    def cap_keep(self, rule_id: str, event_key: str, kept: int, *, now: dt.datetime) -> None:
        """Count only ``kept`` of what :meth:`cap_take` granted ``event_key`` this hour (the
        sends it made: the others' quiet period was claimed by another event meanwhile). Sets,
        never subtracts, so two copies of one event keeping the same do it once. An event left
        with nothing is forgotten: delivered again, it takes anew."""

        def keep(events: dict[str, int]) -> tuple[None, bool]:
            known = _known_key(events, event_key)
            if known is None:
                return None, False
            events[known] = min(events[known], kept)
            if events[known] <= 0:
                del events[known]
            return None, True

        self._cap_update(rule_id, now, keep)

    def _cap_update(
        self,
        rule_id: str,
        now: dt.datetime,
        change: Callable[[dict[str, int]], tuple[_R, bool]],
    ) -> _R:
        """``change`` applied to the events this hour's cap row of ``rule_id`` counts: it edits
        them and gives its answer and whether they are written back. A row other events keep
        changing is read again (with a short random pause) up to ``_CAP_ROUNDS`` times, then
        this raises."""
        import random

        partition, row = f"cap-{rule_id}", now.strftime("%Y%m%d%H")
        for _ in range(_CAP_ROUNDS):
            entity = self._read(partition, row)
            events = _cap_events(entity)
            answer, write = change(events)
            if not write:
                return answer
            text = json.dumps(events, separators=(",", ":"))
            body = {"PartitionKey": partition, "RowKey": row, **chunked("Events", text)}
            if self._write(body, entity):
                return answer
            current().sleep(random.uniform(0, 0.05))
        raise RuntimeError(f"the hourly cap of rule {rule_id} kept changing under us")
