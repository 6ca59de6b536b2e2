"""From a send command to its status record and its upstream request: normalization, phone
numbers in E.164 (the form every comparison of addresses and the upstream request use), part
estimates, recipient slots, the pack key, our delivery-report URL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from shared.callback_urls import delivery_report_url
from shared.clock import SystemClock, utcnow
from shared.messages import (
    FailureInfo,
    MessageRecord,
    MessageStatus,
    Operation,
    RecipientSlot,
    in_lane,
)
from shared.outbound._models import (
    OutboundMessage,
    OutboundMessageAdapter,
    SendDiscussionReplyMessageCommand,
    SendMessageCommand,
    SendReplyMessageCommand,
    SendWhatsappTemplateMessageCommand,
    StoredCommand,
    command_origin,
    named_command,
    parse_outbound_message,
    request_fingerprint,
)
from shared.payloads import fits_queue
from shared.sms import estimate, personalize
from shared.telemetry import current_traceparent

if TYPE_CHECKING:
    from shared.payloads import PayloadStore
    from shared.settings import Settings
    from shared.suppressions import SuppressionStore

__all__ = [
    "LaneTriggers",
    "address_key",
    "backstop_seconds",
    "command_addresses",
    "command_text",
    "is_recorded_as",
    "new_record",
    "normalize",
    "opted_out",
    "pack_key",
    "queued_text",
    "recipient_slots",
    "repeats_rule_send",
    "suppressions_of",
    "unreadable_address",
    "with_delivery_report_url",
]

# Body fields that differ between members of one pack: everything else must be equal.
_PER_MEMBER_FIELDS = frozenset({"Recipients", "RequestId"})


def normalize(
    command: OutboundMessage,
    *,
    message_id: str,
    customer_id: str | None,
    service_id: str | None,
) -> OutboundMessage:
    """``command`` with every id and default filled in, so it is sent the same way every time:
    ``messageId``, ``customerId``/``serviceId`` (from the given defaults when absent), the
    upstream ``RequestId`` (the caller's, else our message id). Addresses stay as written (a
    previous release still draining matches its copies by them); they are compared, recorded
    and sent in E.164. Raises ``ValueError`` when a customer or service is neither in the
    command nor configured."""
    update: dict[str, object] = {"messageId": message_id}
    update["traceparent"] = command.traceparent or current_traceparent()
    customer = command.customerId or customer_id
    if not customer:
        raise ValueError("customerId is missing and SMARTDIALOG_CUSTOMER_ID is not set")
    update["customerId"] = customer
    if not isinstance(command, SendDiscussionReplyMessageCommand):
        service = command.serviceId or service_id
        if not service:
            raise ValueError("serviceId is missing and SMARTDIALOG_SERVICE_ID is not set")
        update["serviceId"] = service
        if not command.body.RequestId:
            update["body"] = command.body.model_copy(update={"RequestId": message_id})
    normalized = command.model_copy(update=update)
    if "body" in update:  # ours, not the caller's (pack_key)
        normalized._request_id_filled = True
    return normalized


def command_text(command: OutboundMessage) -> str:
    """The queue-message JSON of ``command`` (what goes on ``smartdialog-outbound``)."""
    return OutboundMessageAdapter.dump_json(command, by_alias=True, exclude_none=True).decode()


def queued_text(
    text: str,
    *,
    message_id: str,
    payloads: PayloadStore | None,
    attempts: int = 0,
    deferrals: int = 0,
) -> str:
    """What goes on ``smartdialog-outbound`` for the command ``text``: itself when it fits a
    queue message, else a :class:`StoredCommand` naming the blob that holds it."""
    if fits_queue(text):
        return text
    if payloads is None:
        raise RuntimeError("a command too large for a queue message needs the payload store")
    name = payloads.put(text, kind="command")
    stored = StoredCommand(
        messageId=message_id, payload=name, attempts=attempts, deferrals=deferrals
    )
    return stored.model_dump_json()


def held_copy(text: str, queue_message_id: str | None) -> str:
    """What goes back on the queue for queue message ``text`` while the app's settings do not
    validate (:mod:`shared.unconfigured`): :func:`named_command`'s copy (by reference when it no
    longer fits a queue message: only the storage settings are read), else ``text``."""
    from shared.names import PAYLOADS_CONTAINER
    from shared.payloads import PayloadStore
    from shared.settings import StorageSettings
    from shared.storage import blob_service

    if (named := named_command(text, queue_message_id)) is None:
        return text
    mid, written = named
    if fits_queue(written):
        return written
    payloads = PayloadStore(
        blob_service(StorageSettings()).get_container_client(PAYLOADS_CONTAINER)
    )
    counts = {k: v for k, v in json.loads(written).items() if k in ("attempts", "deferrals")}
    return queued_text(written, message_id=mid, payloads=payloads, **counts)


def _part_counts(command: OutboundMessage) -> list[int]:
    """Estimated SMS parts per recipient (one entry per recipient, in order)."""
    if isinstance(command, SendMessageCommand | SendReplyMessageCommand):
        body = command.body
        if body.Protocol != "SMS":
            return [1 for _ in body.Recipients]
        return [
            estimate(personalize(body.Content, r.Personalization)).parts for r in body.Recipients
        ]
    if isinstance(command, SendWhatsappTemplateMessageCommand):
        return [1 for _ in command.body.Recipients]
    return []


def recipient_slots(command: OutboundMessage, *, now: dt.datetime) -> list[RecipientSlot]:
    """One pending slot per recipient of a normalized command."""
    assert command.messageId is not None
    return [
        RecipientSlot(command.messageId, index, address, parts, updated_at=now)
        for index, (address, parts) in enumerate(
            zip(command_addresses(command), _part_counts(command), strict=True)
        )
    ]


def new_record(
    command: OutboundMessage,
    *,
    now: dt.datetime,
    validity: dt.timedelta,
    status: MessageStatus = MessageStatus.ACCEPTED,
    idempotency_key_hash: str | None = None,
    batch_id: str | None = None,
) -> tuple[MessageRecord, list[RecipientSlot]]:
    """The status record and recipient slots of a normalized command."""
    assert command.messageId is not None
    assert command.customerId is not None
    slots = recipient_slots(command, now=now)
    if isinstance(command, SendDiscussionReplyMessageCommand):
        part_count = estimate(command.body.Content).parts
        service_id = None
        request_id = None
    else:
        part_count = max((s.part_count for s in slots), default=1)
        service_id = command.serviceId
        request_id = command.body.RequestId
    record = MessageRecord(
        message_id=command.messageId,
        status=status,
        operation=Operation(command.operation),
        customer_id=command.customerId,
        service_id=service_id,
        request_id=request_id,
        command=command_text(command),
        fingerprint=request_fingerprint(command),
        idempotency_key_hash=idempotency_key_hash,
        created_at=now,
        updated_at=now,
        valid_until=command.validUntil or now + validity,
        recipient_count=len(slots),
        part_count=part_count,
        pack_key=pack_key(command),
        batch_id=batch_id,
        traceparent=command.traceparent,
    )
    return record, slots


def address_key(address: str) -> str:
    """An address as every comparison of addresses takes it (the pack key's repeats, a pack's
    members, upstream's answer, blame in a refusal): E.164 where it parses, read in FI as the
    send actions read one, else trimmed (:func:`shared.suppressions.recipient_key`, cached)."""
    from shared.suppressions import recipient_key

    return recipient_key(address)


def _e164(command: OutboundMessage) -> OutboundMessage:
    """``command`` with each recipient's address in E.164, read in FI as the send actions read
    one (:func:`address_key`; one that is no phone number only trimmed: the sender refuses it
    when it first sees the command, :func:`unreadable_address`)."""
    if isinstance(command, SendDiscussionReplyMessageCommand):
        return command
    body = command.body
    written = [r.model_copy(update={"Address": address_key(r.Address)}) for r in body.Recipients]
    if [r.Address for r in written] == [r.Address for r in body.Recipients]:
        return command
    return command.model_copy(update={"body": body.model_copy(update={"Recipients": written})})


def unreadable_address(command: OutboundMessage) -> ValueError | None:
    """Why ``command`` may not be recorded: a recipient address that is no phone number (what
    the send actions answer 400), or None."""
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    for index, address in enumerate(command_addresses(command)):
        try:
            parse_phone_number(address)
        except InvalidPhoneNumber:  # (its text quotes an example number: not for a log)
            return FieldValueError(
                f"body.Recipients.{index}.Address",
                "not a valid phone number: write it in E.164, or as a number of region FI",
            )
    return None


class FieldValueError(ValueError):
    """A command's ``field`` (dotted, as a validation error's) holds a value it may not."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")  # (a message may be a sentence of its own)
        self.field, self.message = field, message


def command_addresses(command: OutboundMessage) -> list[str]:
    """The recipient addresses of a command, in order, each as every comparison of addresses
    takes it (:func:`address_key`: E.164, however the command writes it); none for a
    discussion reply."""
    if isinstance(command, SendDiscussionReplyMessageCommand):
        return []
    return [address_key(r.Address) for r in command.body.Recipients]


def pack_key(command: OutboundMessage) -> str | None:
    """The key shared by every command that may go upstream in the same call as this one, or None if
    it must always go alone: a discussion reply, a question's re-prompt, one naming a number twice,
    and one whose body carries the caller's ``RequestId`` (even one equal to its ``messageId``: a
    pack's call carries the pack's). Ours (the message id :func:`normalize` filled in, or a lane
    member's) does not count. See docs/sending.md, "Packing and bulk sends"."""
    if isinstance(command, SendDiscussionReplyMessageCommand):
        return None
    if getattr(command, "questionId", None):  # a re-prompt
        return None
    if (request_id := command.body.RequestId) and not (
        command._request_id_filled or (request_id == command.messageId and in_lane(request_id))
    ):
        return None
    addresses = command_addresses(command)
    if not addresses or len(set(addresses)) != len(addresses):
        return None
    body = command.body.model_dump(mode="json", by_alias=True, exclude_none=True)
    material = {
        "operation": command.operation,
        "customerId": command.customerId,
        "serviceId": command.serviceId,
        "parentMessageId": getattr(command, "parentMessageId", None),
        "transactional": command.transactional,
        "body": {k: v for k, v in body.items() if k not in _PER_MEMBER_FIELDS},
    }
    if command.Connection:  # only a named one: the default's keys predate connections
        material["connection"] = command.Connection
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]


def with_delivery_report_url(
    command: OutboundMessage, settings: Settings, *, report_id: str | None = None
) -> OutboundMessage:
    """``command`` as it must be sent: its numbers in E.164 and its body's ``DlrUrl`` ours, for
    ``report_id`` (a pack's call: the pack id) or else the message (discussion replies, which
    have none, unchanged). Only for the call: the stored command keeps the caller's URL and
    numbers (the DLR function calls the caller's URL after ours)."""
    command = _e164(command)
    body = command.body
    if command.messageId is None or "DlrUrl" not in type(body).model_fields:
        return command
    ours = delivery_report_url(
        settings,
        report_id or command.messageId,
        valid_until=command.validUntil,
        sends_at=getattr(body, "SendDateTime", None),  # a scheduled send reports after it
    )
    return command.model_copy(update={"body": body.model_copy(update={"DlrUrl": ours})})


# --- lane triggers (docs/sending.md, "Lanes") -----------------------------------------------------

#: At most one trigger a second per lane and process; a send relies on a trigger that becomes
#: visible at least this much later than it is accepted (its record is written by then).
TRIGGER_SPACING = dt.timedelta(seconds=1)
TRIGGER_AHEAD = dt.timedelta(seconds=0.5)


def backstop_seconds(settings: Settings) -> int:
    """How long a lane member's queue message stays invisible when it is not its lane's trigger:
    ``SMARTDIALOG_LANE_BACKSTOP_SECONDS``, at most half the send's validity (0: never)."""
    return int(min(settings.lane_backstop_seconds, settings.send_validity_seconds / 2))


class LaneTriggers:
    """Which new lane members' queue messages lead their lane (one process's plan): a send accepted
    while a trigger of its lane is planned at least :data:`TRIGGER_AHEAD` later relies on it, and
    its own message (its backstop) becomes visible only after the backstop delay. See
    docs/sending.md, "Lanes" (triggers and backstops)."""

    def __init__(self) -> None:
        self._due: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()

    def plan(self, lane: str, now: dt.datetime) -> tuple[int, dt.datetime | None]:
        """(the visibility delay of the new message in whole seconds, or -1 when it relies on
        the trigger due at the second value; that time for a new trigger is planned here)."""
        with self._lock:
            due = self._due.get(lane)
            if due is not None and due >= now + TRIGGER_AHEAD:
                return -1, due
            at = now if due is None else max(now, due + TRIGGER_SPACING)
            delay = math.ceil((at - now).total_seconds())  # the queue counts whole seconds
            if len(self._due) > 4096:  # lanes of minutes long past
                self._due = {k: v for k, v in self._due.items() if v > now - TRIGGER_SPACING}
            self._due[lane] = now + dt.timedelta(seconds=delay)
            return delay, None

    def coming(self, lane: str, at: dt.datetime) -> bool:
        """Whether a trigger of ``lane`` is planned to become visible after ``at`` (a record
        written at ``at`` is read by it)."""
        with self._lock:
            due = self._due.get(lane)
            return due is not None and due > at

    def forget(self, lane: str) -> None:
        """The planned trigger of ``lane`` was not enqueued after all."""
        with self._lock:
            self._due.pop(lane, None)


def is_recorded_as(record: MessageRecord, command: OutboundMessage) -> bool:
    """Whether ``command`` is the message ``record`` holds: its own fingerprint, or, routed by
    the connection whose settings claim its customer, the one it had before (accepted while no
    connection claimed that customer: it goes through the one that does now). One number
    written two ways is one number: failing that, both are matched with their addresses in
    E.164 (:func:`_e164`), the recorded command read and filled by :func:`normalize` as
    ``command`` was (ec7daff kept a blank ``RequestId`` that is now filled with the message
    id)."""
    from shared.connections import claims

    fp = request_fingerprint(command)
    if record.fingerprint == fp:  # the common case: no connection lookup, no second print
        return True
    forms = [command]
    if command.Connection is not None and claims(command.Connection, command.customerId or ""):
        # (a connection named by the command itself is part of what it is; one its claim
        # gave it stays so while an error of the settings holds the routing)
        forms.append(command.model_copy(update={"Connection": None}))
    if record.fingerprint in {request_fingerprint(c) for c in forms}:
        return True
    try:  # read as the command was: a blank RequestId an older release kept is filled
        stored = parse_outbound_message(record.command)
        key = stored.messageId or ""  # the record's, so the command's
        recorded = _e164(normalize(stored, message_id=key, customer_id=None, service_id=None))
    except (ValidationError, ValueError):
        return False
    return request_fingerprint(recorded) in {request_fingerprint(_e164(c)) for c in forms}


def repeats_rule_send(recorded: str, command: OutboundMessage) -> bool:
    """Whether ``command`` is a notification rule's send made again for the rule, event and
    recipient of the recorded command (JSON ``recorded``) of its ``messageId``, which comes
    from those alone: the event delivered again after the rule was edited. A repeat, to
    acknowledge, not a different message that took the id."""
    origin = getattr(command, "origin", None)  # a discussion reply has none
    if origin is None or command_origin(recorded) != origin:
        return False
    addresses = command_addresses(command)  # one, whose id it is: not another's send
    return len(addresses) == 1 and command.messageId == origin.message_id(addresses[0])


#: How long before its record a send's recipients may have been checked against the opt-outs,
#: plus clock skew with storage: :func:`opted_out` reads the suppressions written since.
CHECKED_MARGIN = dt.timedelta(minutes=10)


def suppressions_of(
    commands: Sequence[OutboundMessage],
    suppressions: SuppressionStore,
    since: dt.datetime | None = None,
) -> list[FailureInfo | None]:
    """Why each of ``commands`` may not be sent (recipients who opted out of its service), or
    None: the recipients of those of one service read together
    (:meth:`~shared.suppressions.SuppressionStore.suppressed_many`; ``since``: they were all
    checked then). Transactional sends and discussion replies are not checked."""
    from shared.suppressions import opted_out_problem

    checked: dict[str, list[tuple[int, list[str]]]] = {}
    for index, command in enumerate(commands):
        if getattr(command, "transactional", True):
            continue
        if isinstance(command, SendDiscussionReplyMessageCommand) or not command.serviceId:
            continue  # no recipients, no service
        addresses = [r.Address for r in command.body.Recipients]
        checked.setdefault(command.serviceId, []).append((index, addresses))
    found: list[FailureInfo | None] = [None] * len(commands)
    for service, items in checked.items():
        hits = suppressions.suppressed_many(
            service, [a for _, own in items for a in own], since=since
        )
        start = 0
        for index, own in items:
            mine = {i - start: hits[i] for i in range(start, start + len(own)) if i in hits}
            start += len(own)
            field = "body.Recipients[{index}].Address"
            if (problem := opted_out_problem(service, mine, field)) is not None:
                offenders = "; ".join(f"{e.field}: {e.message}" for e in problem.errors)
                detail = f"{problem.detail} {offenders}".strip()
                found[index] = FailureInfo(code="suppressed", title=problem.title, detail=detail)
    return found


def opted_out(
    members: Sequence[tuple[MessageRecord, OutboundMessage]],
    suppressions: SuppressionStore,
    *,
    checked: bool = False,
) -> list[tuple[MessageRecord, FailureInfo]]:
    """The recorded ``members`` (with their commands) that may not go upstream now, and why:
    recipients who opted out since they were accepted (:func:`suppressions_of`); never one an
    earlier attempt may have sent (its retry under the same RequestId settles it). ``checked``:
    each was checked when recorded, so only suppressions written since (less
    :data:`CHECKED_MARGIN`) are read; a STOP whose by-service row is not yet written stops a lone
    send, not such a member."""
    due = [(r, c) for r, c in members if not (r.may_have_reached or r.status.is_final)]
    since = None
    if checked and due:  # the storage's Timestamps are real time: never past it (a test clock)
        since = min(*(r.created_at for r, _ in due), utcnow(SystemClock())) - CHECKED_MARGIN
    refusals = suppressions_of([c for _, c in due], suppressions, since)
    return [(r, why) for (r, _), why in zip(due, refusals, strict=True) if why is not None]
