"""From events to queued sends: match the rules, pick the recipients, render, enqueue.

Every send a rule makes is an ordinary send command on ``smartdialog-outbound`` (the public
queue contract; the sender checks opt-outs, takes the quota, records and sends it), one per
recipient, whose ``messageId`` and ``RequestId`` are derived from rule + event source + event id
+ recipient. A re-delivered event therefore queues the same commands again and the sender sends
each once (it finds the record of the first copy; a copy the rule's edit changed meanwhile it
acknowledges as a repeat). Storage round trips per matched event: the rules (one query per
instance every few seconds), one enqueue per recipient (``shared.storage.put_message``, as the
webhook's, and a blob for a command too large for a queue message: it goes by reference, as a
send action's does), plus two per recipient with a
quiet period (three for a number from the event: it is read before the cap is taken) and two per
event with numbers taken from the event (their cap).

Every recipient a matched rule leaves out is in the event's ``Skipped`` with the reason (and in
its log line): not a phone number, list not found or unreadable, message not valid, quiet
period, over MaxPerEvent / MaxPerHour, country code not allowed, premium-rate / shared-cost
number; a rule whose ``Condition`` or ``FromEvent`` fails on the event is there too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared import telemetry
from shared.clock import utcnow
from shared.connections import DEFAULT_CONNECTION, connection_name
from shared.logs import loggable_text
from shared.names import OUTBOUND_QUEUE
from shared.notify._budget import allowance, one_budget
from shared.notify._intake import IncomingEvent, InvalidEvent
from shared.notify._rules import (
    CONTENT_CHARS,
    PARAMETER_CHARS,
    ExpressionFailed,
    Rule,
    evaluate,
    invalid_fields,
    render,
)
from shared.notify._store import NotifyState, RuleBook, RuleStore
from shared.outbound import (
    MessageBody,
    OutboundMessage,
    OutboundMessageAdapter,
    SendOrigin,
    TemplateMessageBody,
    queued_text,
)
from shared.payloads import PayloadStore
from shared.settings import SettingsInvalid
from shared.storage import put_message

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.storage import QueueLike

__all__ = ["MAX_SENDS", "EventResult", "Notifier", "PlannedSend", "Skipped"]

#: The most values a rule's FromEvent is read for (each parsed as a phone number): far more than
#: any MaxPerEvent (at most 100) and the refused numbers beside them.
FROM_EVENT_READ = 1000

log = logging.getLogger("shared.notify")

#: The most sends one delivery (a request, a queue message, an Event Grid event) may make, all
#: its events' rules together: more is refused whole, before anything is queued (queued one by
#: one, a delivery of 5,000 events to a rule of 100 numbers would outlast any HTTP timeout).
MAX_SENDS = 2_000
#: Threads putting one event's sends on the queue side by side.
_PUT_THREADS = 8


@dataclass(frozen=True)
class PlannedSend:
    """One send a rule makes for one event and one recipient."""

    rule_id: str
    address: str
    command: OutboundMessage

    @property
    def message_id(self) -> str:
        assert self.command.messageId is not None
        return self.command.messageId


@dataclass(frozen=True)
class Skipped:
    """A recipient a rule would have had, and why it was left out."""

    rule_id: str
    address: str
    reason: str


@dataclass
class EventResult:
    """What one event produced."""

    event: IncomingEvent
    rules: list[str] = field(default_factory=list)
    sends: list[PlannedSend] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Each matched rule's sends (with whether the number came from the event) not yet through
    # the quiet period and the hourly cap (Notifier.limit), which write.
    pending: list[tuple[Rule, list[tuple[PlannedSend, bool]]]] = field(
        default_factory=list, repr=False
    )

    def summary(self) -> dict[str, Any]:
        """For answers: ids, matched rules, message ids (no phone numbers)."""
        return {
            "Id": self.event.id,
            "Type": self.event.type,
            "Rules": self.rules,
            "MessageIds": [s.message_id for s in self.sends],
            "Skipped": [{"RuleId": s.rule_id, "Reason": s.reason} for s in self.skipped],
        }


def _event_key(event: IncomingEvent) -> str:
    return f"{event.source}\n{event.id}"


def _masked(address: str) -> str:
    from shared.phone import mask_phone_number

    return mask_phone_number(address)


def _kind(value: Any) -> str:
    """A JSON value's kind (what a log line may say of it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    kinds = {dict: "object", list: "array", float: "number"}
    return kinds.get(type(value), type(value).__name__)


class Notifier:
    """Turns events into queued sends by the stored rules (one per settings object)."""

    def __init__(
        self,
        settings: Settings,
        *,
        rules: RuleStore | None = None,
        state: NotifyState | None = None,
        queue: QueueLike | None = None,
        payloads: PayloadStore | None = None,
    ) -> None:
        from shared.storage import ensured_queue

        self.settings = settings
        self.rules = rules or RuleStore.from_settings(settings)
        self.state = state or NotifyState.from_settings(settings)
        self.queue = queue or ensured_queue(OUTBOUND_QUEUE, settings)
        self._payloads = payloads or PayloadStore.from_settings(settings)

    def handle(self, events: Iterable[IncomingEvent]) -> list[EventResult]:
        """Plan and enqueue the sends of each event; raises only when our storage fails (the
        caller then answers 5xx or lets the host retry: re-running is harmless) or when a rule
        would send through a connection lacking a setting (``SettingsInvalid``) or the events make
        more than :data:`MAX_SENDS` sends (:class:`InvalidEvent`): every event is planned before
        any takes a quiet period or cap or queues a send, so then nothing has.
        Each event's limits and sends in a span continuing its own ``traceparent`` (the
        CloudEvents distributed-tracing extension) and linked to the door's (one request may
        bring many traces), else a child of the door's; its sends carry that span's (its
        planning's log lines are the door's)."""
        book = self.rules.book()
        results: list[EventResult] = []
        door = telemetry.current_traceparent()
        for result in self._planned(events, book):
            event = result.event
            parent = event.extensions.get(telemetry.TRACEPARENT)
            with telemetry.span(
                "notification rules",
                parent=parent,
                links=[door] if parent else (),
                kind="consumer",
                attributes={"cloudevents.event_id": event.id, "cloudevents.event_type": event.type},
            ) as current:
                self.limit(result)
                self._put([self._queued(send) for send in result.sends])
                current.set_attribute("smartdialog.sends", len(result.sends))
            # The producer's id and type: escaped, bounded and masked (they may forge a line).
            kind, said = loggable_text(event.type), loggable_text(event.id)
            if not result.rules:
                log.info("event matched no rule: type %s, id %s", kind, said)
            else:
                log.info(
                    "event type %s, id %s: rules %s queued %d send(s), skipped %d",
                    kind,
                    said,
                    ",".join(result.rules),
                    len(result.sends),
                    len(result.skipped),
                )
            if result.skipped:  # reasons name no number and no value of the event
                reasons = Counter(f"{s.rule_id}: {s.reason}" for s in result.skipped)
                log.info(
                    "event %s skipped: %s",
                    said,
                    "; ".join(f"{r} (x{n})" if n > 1 else r for r, n in reasons.items()),
                )
            results.append(result)
        return results

    def _planned(self, events: Iterable[IncomingEvent], book: RuleBook) -> list[EventResult]:
        """Every event planned, nothing limited or queued yet; :class:`InvalidEvent` naming the
        body once their sends pass :data:`MAX_SENDS` (planning stops there)."""
        planned: list[EventResult] = []
        total = 0
        for event in events:
            planned.append(result := self.plan(event, book=book, limit=False))
            total += sum(len(made) for _, made in result.pending)
            if total > MAX_SENDS:
                raise InvalidEvent(
                    f"These events make more than {MAX_SENDS:,} sends ({total:,} by event "
                    f"{len(planned)}): deliver fewer events at a time, or give the rules fewer "
                    "recipients.",
                    field="body",
                )
        return planned

    def _put(self, texts: list[str]) -> None:
        """Queue ``texts``, side by side; raises as ``send_message`` would (the first error,
        once every put has ended: a retry queues them again, which sends nothing twice)."""
        if len(texts) <= 1:
            for text in texts:
                put_message(self.queue, text)
            return
        with ThreadPoolExecutor(min(_PUT_THREADS, len(texts))) as pool:
            puts = [pool.submit(put_message, self.queue, text) for text in texts]
        for put in puts:
            put.result()

    def _queued(self, send: PlannedSend) -> str:
        """The queue message of ``send``: its command, or, when that is too large for a queue
        message (many long template parameters), one naming the blob that holds it, as the send
        actions queue one (docs/sending.md, "Sizes")."""
        command = send.command.model_copy(update={"traceparent": telemetry.current_traceparent()})
        text = command.model_dump_json(by_alias=True, exclude_none=True)
        return queued_text(text, message_id=send.message_id, payloads=self._payloads)

    def plan(
        self,
        event: IncomingEvent,
        *,
        book: RuleBook | None = None,
        dry_run: bool = False,
        rules: Iterable[Rule] | None = None,
        limit: bool = True,
    ) -> EventResult:
        """The sends ``event`` makes. ``dry_run`` reads and writes no quiet period or hourly cap
        (it shows what the rules make of the event, before those limits); without ``limit``
        they are left to :meth:`limit` (its sends ``pending``)."""
        book = book or self.rules.book()
        document = event.document()
        result = EventResult(event)
        now = utcnow()
        units = allowance(document)  # one budget per rule: shared/notify/_budget.py
        for rule in book.rules if rules is None else rules:
            with one_budget(units):
                self._plan_rule(rule, event, document, book, result, now, dry_run=dry_run)
        if limit:
            self.limit(result)
        return result

    def _plan_rule(
        self,
        rule: Rule,
        event: IncomingEvent,
        document: dict[str, Any],
        book: RuleBook,
        result: EventResult,
        now: dt.datetime,
        *,
        dry_run: bool,
    ) -> None:
        """What ``rule`` makes of ``event``, added to ``result``."""
        said = loggable_text(event.id)  # as logged: escaped, bounded, masked
        rendered: dict[tuple[str, int], str] = {}  # a placeholder's text is every recipient's
        try:
            if not rule.matches(event, document):
                return
        except ExpressionFailed as exc:
            log.warning("rule %s: its Condition failed on event %s: %s", rule.Id, said, exc)
            result.skipped.append(Skipped(rule.Id, "", f"condition failed: {exc}"))
            return
        result.rules.append(rule.Id)
        fixed = self._fixed(rule, book, result)
        taken = self._from_event(rule, event, document, result, fixed)
        made: list[tuple[PlannedSend, bool]] = []
        for address in fixed + taken:
            try:  # made first: a message that cannot be made takes no quiet period or cap
                planned = self._send(rule, event, document, address, now, rendered)
                made.append((planned, address in taken))
            except ValueError as exc:  # pydantic's ValidationError is one too
                reason = f"message not valid: {invalid_fields(exc)}"
                log.warning("rule %s: no message for event %s: %s", rule.Id, said, reason)
                result.skipped.append(Skipped(rule.Id, address, reason))
        if made and (unset := rule.unsendable()) is not None:
            if not dry_run:  # nothing queued that its sender could only dead-letter
                raise SettingsInvalid([unset])
            reason = f"not sendable: {unset.message} Set {unset.field}."
            result.skipped.append(Skipped(rule.Id, "", reason))
            return
        if dry_run:
            result.sends.extend(planned for planned, _ in made)
        else:
            result.pending.append((rule, made))

    def limit(self, result: EventResult) -> None:
        """Plan's second half: its pending sends through their rules' quiet periods and caps."""
        now = utcnow()
        for rule, made in result.pending:
            self._limited(rule, result.event, made, result, now)
        result.pending.clear()

    def _limited(
        self,
        rule: Rule,
        event: IncomingEvent,
        made: list[tuple[PlannedSend, bool]],
        result: EventResult,
        now: dt.datetime,
    ) -> None:
        """Add to ``result`` those of ``made`` (each with whether its number came from the
        event) that the quiet period and the hourly cap let go. Only a send that goes counts
        against the cap: a number from the event that the quiet period holds back is left out
        before the cap is taken (read only: its claim is written once the cap granted it, so a
        number the cap refuses starts no quiet period); a claim lost to another event between
        that read and its write leaves the event counted for the messages it sent."""
        key, quiet = _event_key(event), rule.QuietMinutes
        subject = (event.subject or "").lower()  # one resource, as its rule matches it

        def claimed(address: str) -> bool:
            if not quiet:
                return True
            if self.state.quiet_claim(rule.Id, subject, address, key, minutes=quiet, now=now):
                return True
            result.skipped.append(Skipped(rule.Id, address, "quiet period"))
            return False

        capped: list[PlannedSend] = []
        for planned, from_event in made:
            if not from_event:
                if claimed(planned.address):
                    result.sends.append(planned)
            elif quiet and self.state.quiet_held(rule.Id, subject, planned.address, key, now=now):
                result.skipped.append(Skipped(rule.Id, planned.address, "quiet period"))
            else:
                capped.append(planned)
        if not capped:
            return
        per_hour = rule.Recipients.MaxPerHour
        granted = self.state.cap_take(rule.Id, key, len(capped), per_hour=per_hour, now=now)
        for planned in capped[granted:]:
            result.skipped.append(Skipped(rule.Id, planned.address, "over MaxPerHour"))
        going = [planned for planned in capped[:granted] if claimed(planned.address)]
        result.sends.extend(going)
        if len(going) < granted:
            self.state.cap_keep(rule.Id, key, len(going), now=now)

    def _fixed(self, rule: Rule, book: RuleBook, result: EventResult) -> list[str]:
        """The rule's own numbers and those of its list (each once)."""
        from shared.phone import InvalidPhoneNumber, InvalidRegion, parse_phone_number

        spec = rule.Recipients
        fixed = list(spec.Numbers)
        if spec.List is not None:
            listed = book.lists.get(spec.List)
            if listed is None:
                why = "unreadable" if spec.List in book.unreadable_lists else "not found"
                log.warning("rule %s: recipient list %s %s", rule.Id, spec.List, why)
                result.skipped.append(Skipped(rule.Id, "", f"list {spec.List} {why}"))
            fixed.extend(listed or ())
        chosen: list[str] = []
        for number in fixed:
            try:
                chosen.append(parse_phone_number(number))
            except (InvalidPhoneNumber, InvalidRegion):
                log.warning("rule %s: %s is not a phone number", rule.Id, _masked(number))
                result.skipped.append(Skipped(rule.Id, _masked(number), "not a phone number"))
        return list(dict.fromkeys(chosen))

    def _from_event(
        self,
        rule: Rule,
        event: IncomingEvent,
        document: dict[str, Any],
        result: EventResult,
        fixed: list[str],
    ) -> list[str]:
        """Numbers read from the event that are not among ``fixed``: allowed country codes
        only, no premium-rate or shared-cost number, at most ``MaxPerEvent`` (the hourly cap
        is taken once their messages are made), so a forged event cannot pump messages to
        numbers that pay their owner. A JSON integer is read as the text of its digits."""
        from shared.phone import InvalidPhoneNumber, calling_code, extra_charge, parse_phone_number

        spec = rule.Recipients
        if spec.FromEvent is None:
            return []
        try:
            found = evaluate(spec.FromEvent, document)
        except ExpressionFailed as exc:
            log.warning(
                "rule %s: its FromEvent failed on event %s: %s",
                rule.Id,
                loggable_text(event.id),
                exc,
            )
            result.skipped.append(Skipped(rule.Id, "", f"FromEvent failed: {exc}"))
            return []
        values = found if isinstance(found, list) else ([] if found is None else [found])
        if len(values) > FROM_EVENT_READ:  # each is parsed: a forged event's cost
            result.skipped.append(Skipped(rule.Id, "", f"values past the first "
                                          f"{FROM_EVENT_READ:,} not read"))  # fmt: skip
            values = values[:FROM_EVENT_READ]
        numbers: list[str] = []
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value) if value.bit_length() < 64 else None  # no phone number
            if not isinstance(value, str):
                log.warning(
                    "rule %s: FromEvent gave a value of type %s, not a phone number",
                    rule.Id,
                    _kind(value),
                )
                result.skipped.append(Skipped(rule.Id, "", "not a phone number"))
                continue
            try:
                number = parse_phone_number(value)
            except InvalidPhoneNumber:
                result.skipped.append(Skipped(rule.Id, value[:4], "not a phone number"))
                continue
            if calling_code(number) not in spec.AllowedCountryCodes:  # exact: not a prefix
                result.skipped.append(Skipped(rule.Id, number, "country code not allowed"))
                continue
            if charge := extra_charge(number):
                result.skipped.append(Skipped(rule.Id, number, f"{charge} number"))
                continue
            if number not in numbers and number not in fixed:
                numbers.append(number)
        for number in numbers[spec.MaxPerEvent :]:
            result.skipped.append(Skipped(rule.Id, number, "over MaxPerEvent"))
        return numbers[: spec.MaxPerEvent]

    def _send(
        self,
        rule: Rule,
        event: IncomingEvent,
        document: dict[str, Any],
        address: str,
        now: dt.datetime,
        rendered: dict[tuple[str, int], str],
    ) -> PlannedSend:
        """``rule``'s message to ``address``; ``rendered``: its texts made so far (the same for
        every recipient: each placeholder is applied once per event)."""
        origin = SendOrigin(ruleId=rule.Id, eventId=event.id, eventSource=event.source)
        message_id = origin.message_id(address)
        message = rule.Message

        def text(value: str, limit: int = PARAMETER_CHARS) -> str:  # cut: a forged event's cost
            if (value, limit) not in rendered:
                event_id = loggable_text(event.id)
                made = render(value, document, rule_id=rule.Id, event_id=event_id, limit=limit)
                rendered[value, limit] = made
            return rendered[value, limit]

        def texts(name: str) -> list[str] | None:
            return [text(p) for p in getattr(message, name) or []] or None

        body: dict[str, Any] = {  # no RequestId: the sender fills in its message id, ours
            "CustomerData": f"rule={rule.Id};event={event.id}"[:255],
        }
        if message.TemplateName is not None:
            operation = "SendWhatsappTemplateMessage"
            body.update(
                TemplateName=message.TemplateName,
                Recipients=[{"Address": address}],
                BodyParameters=texts("BodyParameters"),
                HeaderParameters=texts("HeaderParameters"),
            )
        else:
            operation = "SendMessage"
            body.update(
                Sender=message.Sender,
                Content=text(message.Content or "", CONTENT_CHARS),
                Protocol=message.Protocol,
                Recipients=[{"Address": address}],
            )
        body = {k: v for k, v in body.items() if v is not None}
        model = MessageBody if operation == "SendMessage" else TemplateMessageBody
        try:  # the send actions' own rules: no blank text or parameter, a sender's bounds
            model.model_validate(body)
        except ValidationError as exc:
            raise ValueError(invalid_fields(exc, "Message")) from exc
        command: dict[str, Any] = {
            "operation": operation,
            "messageId": message_id,
            "serviceId": rule.ServiceId,
            "origin": origin.model_dump(),
            "body": body,
        }
        if connection_name(rule.Connection) != DEFAULT_CONNECTION:
            command["Connection"] = connection_name(rule.Connection)
        if rule.ValiditySeconds is not None:
            command["validUntil"] = now + dt.timedelta(seconds=rule.ValiditySeconds)
        parsed = OutboundMessageAdapter.validate_python(
            {k: v for k, v in command.items() if v is not None}
        )
        return PlannedSend(rule.Id, address, parsed)
