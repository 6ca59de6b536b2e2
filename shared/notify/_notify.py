"""From events to queued sends: match the rules, pick the recipients, render, enqueue.

Every send a rule makes is an ordinary send command on ``smartdialog-outbound`` (the public
queue contract; the sender checks opt-outs, takes the quota, records and sends it), one per
recipient, whose ``messageId`` and ``RequestId`` are derived from rule + event source + event id
+ recipient. A re-delivered event therefore queues the same commands again and the sender sends
each once (it finds the record of the first copy). Storage round trips per matched event: the
rules (one query per instance every few seconds), one enqueue per recipient (and a blob for a
command too large for a queue message: it goes by reference, as a send action's does), plus two
per recipient with a quiet period and two per event with numbers taken from the event (their
cap).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.clock import utcnow
from shared.connections import DEFAULT_CONNECTION, connection_name
from shared.names import OUTBOUND_QUEUE
from shared.notify._intake import IncomingEvent
from shared.notify._rules import Rule, render, search
from shared.notify._store import NotifyState, RuleBook, RuleStore
from shared.outbound import (
    OutboundMessage,
    OutboundMessageAdapter,
    derive_message_id,
    queued_text,
)
from shared.payloads import PayloadStore

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.storage import QueueLike

__all__ = ["EventResult", "Notifier", "PlannedSend", "Skipped"]

log = logging.getLogger("shared.notify")

#: The scope of derived message ids: changing it would make re-deliveries send again.
ID_SCOPE = "notification-rule"


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

    def summary(self) -> dict[str, Any]:
        """For answers: ids, matched rules, message ids (no phone numbers)."""
        return {
            "Id": self.event.id,
            "Type": self.event.type,
            "Rules": self.rules,
            "MessageIds": [s.message_id for s in self.sends],
            "Skipped": len(self.skipped),
        }


def _event_key(event: IncomingEvent) -> str:
    return f"{event.source}\n{event.id}"


def _masked(address: str) -> str:
    from shared.phone import mask_phone_number

    return mask_phone_number(address)


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
        caller then answers 5xx or lets the host retry: re-running is harmless)."""
        book = self.rules.book()
        results: list[EventResult] = []
        for event in events:
            result = self.plan(event, book=book)
            for send in result.sends:
                self.queue.send_message(self._queued(send))
            if not result.rules:
                log.info("event matched no rule: type %s, id %s", event.type, event.id)
            else:
                log.info(
                    "event type %s, id %s: rules %s queued %d send(s), skipped %d",
                    event.type,
                    event.id,
                    ",".join(result.rules),
                    len(result.sends),
                    len(result.skipped),
                )
            results.append(result)
        return results

    def _queued(self, send: PlannedSend) -> str:
        """The queue message of ``send``: its command, or, when that is too large for a queue
        message (a long placeholder value), one naming the blob that holds it, as the send
        actions queue one (docs/sending.md, "Sizes")."""
        text = send.command.model_dump_json(by_alias=True, exclude_none=True)
        return queued_text(text, message_id=send.message_id, payloads=self._payloads)

    def plan(
        self,
        event: IncomingEvent,
        *,
        book: RuleBook | None = None,
        dry_run: bool = False,
        rules: Iterable[Rule] | None = None,
    ) -> EventResult:
        """The sends ``event`` makes. ``dry_run`` reads and writes no quiet period or hourly cap
        (it shows what the rules make of the event, before those limits)."""
        book = book or self.rules.book()
        document = event.document()
        result = EventResult(event)
        now = utcnow()
        for rule in book.rules if rules is None else rules:
            if not rule.matches(event, document):
                continue
            result.rules.append(rule.Id)
            for address in self._recipients(rule, event, document, book, result, dry_run, now):
                try:  # made first: a message that cannot be made starts no quiet period
                    planned = self._send(rule, event, document, address, now)
                except ValueError as exc:  # pydantic's ValidationError is one too
                    log.warning("rule %s: no message for event %s: %s", rule.Id, event.id, exc)
                    result.skipped.append(Skipped(rule.Id, address, "message not valid"))
                    continue
                if (
                    rule.QuietMinutes
                    and not dry_run
                    and not self.state.quiet_claim(
                        rule.Id,
                        event.subject or "",
                        address,
                        _event_key(event),
                        minutes=rule.QuietMinutes,
                        now=now,
                    )
                ):
                    result.skipped.append(Skipped(rule.Id, address, "quiet period"))
                    continue
                result.sends.append(planned)
        return result

    def _recipients(
        self,
        rule: Rule,
        event: IncomingEvent,
        document: dict[str, Any],
        book: RuleBook,
        result: EventResult,
        dry_run: bool,
        now: dt.datetime,
    ) -> list[str]:
        from shared.phone import InvalidPhoneNumber, InvalidRegion, parse_phone_number

        spec = rule.Recipients
        chosen: list[str] = []
        fixed = list(spec.Numbers)
        if spec.List is not None:
            listed = book.lists.get(spec.List)
            if listed is None:
                log.warning("rule %s: recipient list %s does not exist", rule.Id, spec.List)
            fixed.extend(listed or ())
        for number in fixed:
            try:
                chosen.append(parse_phone_number(number))
            except (InvalidPhoneNumber, InvalidRegion):
                log.warning("rule %s: %s is not a phone number", rule.Id, _masked(number))
        if spec.FromEvent is not None:
            chosen.extend(self._from_event(rule, event, document, result, dry_run, now))
        return list(dict.fromkeys(chosen))

    def _from_event(
        self,
        rule: Rule,
        event: IncomingEvent,
        document: dict[str, Any],
        result: EventResult,
        dry_run: bool,
        now: dt.datetime,
    ) -> list[str]:
        """Numbers read from the event: allowed country codes only, capped per event and per
        hour, so a forged event cannot pump messages to premium numbers."""
        from shared.phone import InvalidPhoneNumber, parse_phone_number

        spec = rule.Recipients
        assert spec.FromEvent is not None
        found = search(spec.FromEvent, document)
        values = found if isinstance(found, list) else ([] if found is None else [found])
        allowed = tuple(f"+{code}" for code in spec.AllowedCountryCodes)
        numbers: list[str] = []
        for value in values:
            if not isinstance(value, str):
                continue
            try:
                number = parse_phone_number(value)
            except InvalidPhoneNumber:
                result.skipped.append(Skipped(rule.Id, value[:4], "not a phone number"))
                continue
            if not number.startswith(allowed):  # country codes are prefix-free
                result.skipped.append(Skipped(rule.Id, number, "country code not allowed"))
                continue
            if number not in numbers:
                numbers.append(number)
        for number in numbers[spec.MaxPerEvent :]:
            result.skipped.append(Skipped(rule.Id, number, "over MaxPerEvent"))
        numbers = numbers[: spec.MaxPerEvent]
        if numbers and not dry_run:
            granted = self.state.cap_take(
                rule.Id, _event_key(event), len(numbers), per_hour=spec.MaxPerHour, now=now
            )
            for number in numbers[granted:]:
                result.skipped.append(Skipped(rule.Id, number, "over MaxPerHour"))
            numbers = numbers[:granted]
        return numbers

    def _send(
        self,
        rule: Rule,
        event: IncomingEvent,
        document: dict[str, Any],
        address: str,
        now: dt.datetime,
    ) -> PlannedSend:
        message_id = derive_message_id(
            ID_SCOPE, f"{rule.Id}\n{event.source}\n{event.id}\n{address}"
        )
        message = rule.Message

        def text(value: str) -> str:
            return render(value, document, rule_id=rule.Id, event_id=event.id)

        body: dict[str, Any] = {
            "RequestId": message_id,
            "CustomerData": f"rule={rule.Id};event={event.id}"[:255],
        }
        if message.TemplateName is not None:
            operation = "SendWhatsappTemplateMessage"
            body.update(
                TemplateName=message.TemplateName,
                Recipients=[{"Address": address}],
                BodyParameters=[text(p) for p in message.BodyParameters or []] or None,
                HeaderParameters=[text(p) for p in message.HeaderParameters or []] or None,
            )
        else:
            operation = "SendMessage"
            body.update(
                Sender=message.Sender,
                Content=text(message.Content or ""),
                Protocol=message.Protocol,
                Recipients=[{"Address": address}],
            )
        command: dict[str, Any] = {
            "operation": operation,
            "messageId": message_id,
            "serviceId": rule.ServiceId,
            "origin": {"ruleId": rule.Id, "eventId": event.id, "eventSource": event.source},
            "body": {k: v for k, v in body.items() if v is not None},
        }
        if connection_name(rule.Connection) != DEFAULT_CONNECTION:
            command["Connection"] = connection_name(rule.Connection)
        if rule.ValiditySeconds is not None:
            command["validUntil"] = now + dt.timedelta(seconds=rule.ValiditySeconds)
        parsed = OutboundMessageAdapter.validate_python(
            {k: v for k, v in command.items() if v is not None}
        )
        return PlannedSend(rule.Id, address, parsed)
