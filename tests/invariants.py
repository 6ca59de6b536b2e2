"""Issue 13's invariant, checked from the outside: whatever was accepted ends final, with its event,
sent upstream at most once, and nothing is lost.

Given the messages a test was told were accepted (their ids), what storage holds (Azurite's
``SmartDialogMessages``, the outbound ``-poison`` queue), the events the app emitted
(``smartdialog-events``, drained with :class:`QueueDrain`), its dead letters and what the upstream
accepted (the sandbox's ``messages`` log: ``server.state.snapshot("messages")`` or
``GET /sandbox/messages``), :func:`check_invariants` answers an :class:`InvariantReport` whose
``problems`` say exactly what differs, one line each:

- ``lost``: an accepted message with no record, or a send command in the host's poison queue;
- ``stuck``: a record not ``sent``, ``failed`` (expiry is ``failed`` with code ``expired``) or
  ``cancelled``;
- ``event``: a final record without its event (``message.sent``, ``message.failed`` with the
  record's failure code, ``message.cancelled``), or with an event of another outcome;
- ``dead-letter``: a failed message without its dead letter (when dead letters are given);
- ``upstream``: a message recorded sent whose upstream message, or one of its recipients, the
  upstream never accepted; a recipient the record does not list;
- ``outcome``: a message recorded ``failed`` or ``cancelled`` whose recipient the upstream
  accepted anyway (it was sent; we say it was not). A failure with code ``outcome-unknown`` says
  it may have been sent, so an acceptance upstream is not held against it;
- ``duplicate``: an address the upstream accepted more often than our messages were sent to it,
  or an upstream acceptance no record claims (a send the app does not know it made).

The upstream log must be of the run's own sandbox (or the checked messages' addresses unique to
them): every acceptance of one of their addresses is counted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from shared.events import MESSAGE_CANCELLED, MESSAGE_FAILED, MESSAGE_SENT
from shared.messages import MessageRecord, MessageStatus
from shared.names import MESSAGES_TABLE, OUTBOUND_QUEUE, poison_queue
from shared.suppressions import recipient_key

__all__ = ["InvariantReport", "QueueDrain", "check_invariants", "read_records"]

_EVENT_OF = {
    MessageStatus.SENT: MESSAGE_SENT,
    MessageStatus.FAILED: MESSAGE_FAILED,
    MessageStatus.CANCELLED: MESSAGE_CANCELLED,
}
_LIFECYCLE = frozenset(_EVENT_OF.values())


class QueueDrain:
    """Reads a queue to the end, deleting what it read (the test is the consumer), and keeps
    every text read so far: call :meth:`drain` as often as needed."""

    def __init__(self, connection_string: str, name: str) -> None:
        self.queue = QueueClient.from_connection_string(connection_string, name)
        self.texts: list[str] = []

    def drain(self) -> list[str]:
        """Every text read so far, the queue's current content included."""
        try:
            while True:
                batch = list(self.queue.receive_messages(messages_per_page=32, max_messages=32))
                if not batch:
                    return self.texts
                for message in batch:
                    self.texts.append(message.content)
                    self.queue.delete_message(message)
        except ResourceNotFoundError:
            return self.texts

    def json(self) -> list[dict[str, Any]]:
        """:meth:`drain`, each text parsed (texts that are not JSON objects are skipped)."""
        out = []
        for text in self.drain():
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out


def read_records(connection_string: str, message_ids: Iterable[str]) -> dict[str, MessageRecord]:
    """The records of ``message_ids`` found in ``SmartDialogMessages`` (one scan of the table)."""
    wanted = set(message_ids)
    table = TableClient.from_connection_string(connection_string, MESSAGES_TABLE)
    found: dict[str, MessageRecord] = {}
    try:
        for entity in table.list_entities():
            row = str(entity.get("RowKey", ""))
            if (row == "message" or row.endswith(".message")) and entity.get("MessageId") in wanted:
                record = MessageRecord.from_entity(entity)
                found[record.message_id] = record
    except ResourceNotFoundError:
        pass
    return found


@dataclass
class InvariantReport:
    """What :func:`check_invariants` found; ``problems`` empty means the invariant holds."""

    checked: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failure_codes: Counter[str] = field(default_factory=Counter)
    upstream_recipients: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        self.problems.append(f"{kind}: {text}")

    def by_kind(self) -> Counter[str]:
        return Counter(p.split(":", 1)[0] for p in self.problems)

    def summary(self) -> str:
        return (
            f"{self.checked} message(s): {dict(self.statuses)}; failures "
            f"{dict(self.failure_codes)}; {self.upstream_recipients} recipient(s) accepted "
            f"upstream; problems {dict(self.by_kind()) or 'none'}"
        )

    def assert_holds(self, show: int = 40) -> None:
        """Raise ``AssertionError`` listing the first ``show`` problems (and how many more)."""
        if not self.problems:
            return
        lines = self.problems[:show]
        more = len(self.problems) - len(lines)
        raise AssertionError(
            "the invariant does not hold: "
            + self.summary()
            + "\n  "
            + "\n  ".join(lines)
            + (f"\n  ... and {more} more" if more else "")
        )


def _addresses(record: MessageRecord) -> list[str]:
    try:
        body = json.loads(record.command).get("body") or {}
    except ValueError:
        return []
    return [recipient_key(str(r.get("Address", ""))) for r in body.get("Recipients") or []]


def _answer_recipients(answer: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(recipient id, address) pairs of an upstream answer, in either casing."""
    raw = answer.get("Recipients") or answer.get("recipients") or []
    return [
        (
            str(r.get("Id") or r.get("id") or ""),
            recipient_key(str(r.get("Address") or r.get("address") or "")),
        )
        for r in raw
        if isinstance(r, dict)
    ]


def check_invariants(
    connection_string: str,
    message_ids: Iterable[str],
    *,
    events: Iterable[Mapping[str, Any]],
    upstream: Iterable[Mapping[str, Any]],
    dead_letters: Iterable[Mapping[str, Any]] | None = None,
    poison: Iterable[str] = (),
    records: Mapping[str, MessageRecord] | None = None,
) -> InvariantReport:
    """Check the invariant for the accepted ``message_ids``; see the module docstring.

    ``events`` are parsed CloudEvents (any type; only message lifecycle events of the checked
    messages count), ``upstream`` the sandbox's ``messages`` log, ``poison`` the texts of
    ``smartdialog-outbound-poison``. ``records`` may be passed when already read.
    """
    ids = list(dict.fromkeys(message_ids))
    report = InvariantReport(checked=len(ids))
    if records is None:
        records = read_records(connection_string, ids)

    # --- lost and stuck ---
    for text in poison:
        report.add("lost", f"in {poison_queue(OUTBOUND_QUEUE)}: {text[:200]}")
    for message_id in ids:
        record = records.get(message_id)
        if record is None:
            report.add("lost", f"{message_id} was accepted but has no record")
            continue
        report.statuses[record.status.value] += 1
        if record.failure is not None and record.status is MessageStatus.FAILED:
            report.failure_codes[record.failure.code] += 1
        if not record.status.is_final:
            last = record.last_error.title if record.last_error else "none"
            report.add(
                "stuck",
                f"{message_id} is {record.status} after {record.attempts} attempt(s) "
                f"(last error: {last})",
            )

    # --- events ---
    seen: dict[str, set[str]] = defaultdict(set)
    failed_codes: dict[str, set[str]] = defaultdict(set)
    wanted = set(ids)
    for event in events:
        kind = event.get("type")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        subject = str(event.get("subject") or data.get("messageId") or "")
        if kind not in _LIFECYCLE or subject not in wanted:
            continue
        seen[subject].add(str(kind))
        if kind == MESSAGE_FAILED:
            failed_codes[subject].add(str((data.get("error") or {}).get("code")))
    for message_id in ids:
        record = records.get(message_id)
        if record is None or not record.status.is_final:
            continue
        expected = _EVENT_OF[record.status]
        kinds = seen.get(message_id, set())
        if expected not in kinds:
            report.add("event", f"{message_id} is {record.status} but has no {expected} event")
        if kinds - {expected}:
            report.add(
                "event",
                f"{message_id} is {record.status} but also has {sorted(kinds - {expected})}",
            )
        if record.status is MessageStatus.FAILED and record.failure is not None:
            codes = failed_codes.get(message_id, set())
            if codes and record.failure.code not in codes:
                report.add(
                    "event",
                    f"{message_id} failed with {record.failure.code}; its event: {sorted(codes)}",
                )

    # --- dead letters ---
    if dead_letters is not None:
        lettered = {str(d.get("messageId")) for d in dead_letters if d.get("reason") == "failed"}
        for message_id in ids:
            record = records.get(message_id)
            failed = record is not None and record.status is MessageStatus.FAILED
            if failed and message_id not in lettered:
                report.add("dead-letter", f"{message_id} failed but has no dead letter")

    # --- upstream: every recorded send is upstream's, and nothing is accepted twice ---
    accepted: dict[str, dict[str, str]] = {}  # upstream message id -> recipient id -> address
    by_address: Counter[str] = Counter()
    request_of: dict[str, str] = {}
    for entry in upstream:
        if entry.get("direction", "outbound") != "outbound" or not entry.get("messageId"):
            continue
        upstream_id = str(entry["messageId"])
        recipients = {
            str(r.get("id")): recipient_key(str(r.get("address")))
            for r in entry.get("recipients") or []
        }
        accepted[upstream_id] = recipients
        by_address.update(recipients.values())
        request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
        request_of[upstream_id] = str(request.get("RequestId") or "")
    expected_sends: Counter[str] = Counter()
    claimed: set[tuple[str, str]] = set()
    ours: set[str] = set()
    unsent: dict[str, str] = {}  # address -> a failed or cancelled message of it, described
    maybe: set[str] = set()  # addresses of messages failed as outcome-unknown
    for message_id in ids:
        record = records.get(message_id)
        if record is None:
            continue
        addresses = _addresses(record)
        ours.update(addresses)
        if record.status is not MessageStatus.SENT:
            code = record.failure.code if record.failure else None
            if code == "outcome-unknown":
                expected_sends.update(addresses)  # may have been sent: once is no problem
                maybe.update(addresses)
            else:
                described = f"{message_id} is {record.status}" + (f" ({code})" if code else "")
                unsent.update(dict.fromkeys(addresses, described))
            continue
        expected_sends.update(addresses)
        answer = record.result_json() or {}
        upstream_id = str(answer.get("MessageId") or answer.get("messageId") or "")
        theirs = accepted.get(upstream_id)
        if theirs is None:
            report.add(
                "upstream",
                f"{message_id} is recorded sent as upstream {upstream_id or '(no id)'}, which the "
                "upstream never accepted",
            )
            continue
        answered = _answer_recipients(answer)
        for recipient_id, address in answered:
            if theirs.get(recipient_id) != address:
                report.add(
                    "upstream",
                    f"{message_id}: recipient {recipient_id} ({address}) is not in upstream "
                    f"message {upstream_id}",
                )
            claimed.add((upstream_id, recipient_id))
        missing = Counter(addresses) - Counter(a for _, a in answered)
        if missing:
            report.add(
                "upstream",
                f"{message_id} is recorded sent without recipient(s) {sorted(missing)}",
            )
    report.upstream_recipients = sum(by_address[a] for a in ours)
    for address in sorted(ours):
        extra = by_address[address] - expected_sends[address]
        if extra > 0 and address in unsent and extra == 1:
            report.add("outcome", f"{unsent[address]} but upstream accepted {address}")
        elif extra > 0:
            report.add(
                "duplicate",
                f"{address} was accepted upstream {by_address[address]} time(s), sent by "
                f"{expected_sends[address]} of our message(s)",
            )
    for upstream_id, recipients in accepted.items():
        for recipient_id, address in recipients.items():
            if address in unsent and by_address[address] - expected_sends[address] == 1:
                continue  # reported as its outcome
            if address in maybe and by_address[address] <= expected_sends[address]:
                continue  # its message says it may have been sent
            if address in ours and (upstream_id, recipient_id) not in claimed:
                report.add(
                    "duplicate",
                    f"upstream accepted {address} in {upstream_id} (RequestId "
                    f"{request_of.get(upstream_id) or '-'}), which no record claims",
                )
    return report
