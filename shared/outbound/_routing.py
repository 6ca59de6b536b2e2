"""A queue message of another connection: sent through that connection's ports, deferred while
the connection is misconfigured, failed (``connection-removed``) once it no longer exists.
Every connection's sends share the one queue and the tables; the upstream client, the quota and
the defaults differ, all in its ports (:func:`send_ports` of the connection's settings)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from shared.logs import loggable_text
from shared.messages import FailureInfo, MessageStatus
from shared.outbound._giving_up import in_doubt, noted, waiting_error
from shared.outbound._models import (
    PackDriver,
    StoredCommand,
    command_connection,
    named_command,
    parse_outbound_message,
    parse_queue_message,
    reprompt_of,
)
from shared.outbound._outcomes import (
    CONFIGURATION_RECHECK_SECONDS,
    OutcomeKind,
    SendOutcome,
    held,
    storage_pool,
)
from shared.outbound._ports import send_ports
from shared.outbound._records import FieldValueError, new_record, normalize, queued_text

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from shared.messages import MessageRecord, Pack
    from shared.outbound._models import OutboundMessage
    from shared.outbound._outcomes import Outcomes, QueueCopy
    from shared.outbound._ports import SendPorts

    MessageIdOf = Callable[[OutboundMessage, str | None], str]

__all__ = [
    "CONNECTION_REMOVED",
    "expire_overdue",
    "note_waiting",
    "sent_elsewhere",
    "through_connection",
    "unreadable_command",
    "unrouted",
    "unserved",
]

log = logging.getLogger("shared.outbound.sender")
#: The failure code of a send whose connection was removed from the settings.
CONNECTION_REMOVED = "connection-removed"


def note_waiting(
    outcomes: Outcomes, records: Sequence[MessageRecord], problem: str | None = None
) -> None:
    """Record on unclaimed ``records`` that they wait for ``problem`` (default: what holds the
    connection, :meth:`Outcomes.holding`) as their ``LastError``, only where it changed and no
    failed attempt's stands (:func:`noted`): one write when a wait starts (100 records a
    transaction), none for each recheck. A lost race is left (the next recheck writes it)."""
    if not (problem := problem or outcomes.holding()):
        return
    error, now = waiting_error(problem), outcomes.ports.now()
    changed: list[tuple[MessageRecord, Mapping[str, Any]]] = [
        (r, {**change, "updated_at": now})
        for r in records
        if (change := noted(r, error)) and not r.held_until(now)
    ]
    if changed:
        outcomes.ports.store.swap_many(changed)


def through_connection(
    outcomes: Outcomes,
    message_id: MessageIdOf,
    message: OutboundMessage | PackDriver,
    got: QueueCopy,
) -> SendPorts | SendOutcome:
    """The ports of the connection of ``message`` (parsed by another connection's sender, whose
    ``outcomes`` and ``message_id`` these are), or what was done instead: deferred while the
    connection is misconfigured, failed once it is removed."""
    from shared.connections import (
        ConnectionNotConfigured,
        UnknownConnection,
        connection_settings,
        routing_errors,
    )

    name = command_connection(message)
    try:
        settings = connection_settings(name)
    except UnknownConnection:
        if errors := routing_errors():  # a mistyped key may be its: it waits, never fails
            problem = ConnectionNotConfigured("Connection routing", errors)
            if not isinstance(message, PackDriver):  # nothing decided yet: not recorded
                return unrouted(outcomes, got, problem)
            return _misconfigured(outcomes, message_id, message, str(name), problem, got)
        return _removed(outcomes, message_id, message, str(name), got)
    except ConnectionNotConfigured as problem:
        return _misconfigured(outcomes, message_id, message, str(name), problem, got)
    return send_ports(settings)


def sent_elsewhere(
    outcomes: Outcomes,
    message_id: MessageIdOf,
    record: MessageRecord,
    message: OutboundMessage,
    got: QueueCopy,
) -> tuple[SendPorts, OutboundMessage] | SendOutcome | None:
    """Where ``record``'s send goes on when an attempt through another connection than this
    sender's may have reached SmartDialog (its customer moved since): that one's ports and
    ``message`` as routed there (its account alone knows the RequestId), or what was done
    instead (:func:`through_connection`). None: it goes on here."""
    from shared.connections import is_default

    through = record.sent_through
    if not record.may_have_reached or through in (None, outcomes.ports.policy.connection):
        return None
    try:  # as recorded: a copy put back by this connection carries its defaults
        held = parse_outbound_message(record.command)
    except ValueError:
        held = message
    there = held.model_copy(
        update={
            "Connection": None if is_default(through) else through,
            "attempts": message.attempts,
            "deferrals": message.deferrals,
        }
    )
    routed = through_connection(outcomes, message_id, there, got)
    return routed if isinstance(routed, SendOutcome) else (routed, there)


def unserved(
    outcomes: Outcomes,
    message_id: MessageIdOf,
    message: OutboundMessage | PackDriver,
    got: QueueCopy,
) -> SendOutcome | None:
    """A command first seen on the queue (no record yet) whose ``Connection`` does not serve its
    ``customerId`` by the send actions' rule (:func:`shared.connections.route`): dead-lettered
    ``malformed`` naming ``customerId``, nothing sent and no quota slot taken. None for any other (a
    recorded one, a pack driver's members, a question's re-prompt; an unknown or misconfigured
    connection is the sender's, uncertain claims :func:`unrouted`'s)."""
    from shared.connections import ConnectionNotConfigured, CustomerNotServed, route
    from shared.names import DEFAULT_CONNECTION
    from shared.problems import Problem

    if isinstance(message, PackDriver) or message.Connection is None or not message.customerId:
        return None  # (one without a customer waits if its defaults are hidden: unreadable)
    if reprompt_of(message):
        return None
    try:
        name = command_connection(message) or DEFAULT_CONNECTION  # only whitespace: default
        route(name, message.customerId, customer_field="customerId")
        return None
    except CustomerNotServed as problem:
        refused = FieldValueError("customerId", problem.errors[0].message)
    except ConnectionNotConfigured as problem:  # the routing is uncertain: it waits, unrecorded
        return unrouted(outcomes, got, problem)
    except Problem:
        return None
    try:
        recorded = outcomes.ports.store.get(message_id(message, got.queue_id))
    except ValueError:  # no id: not recorded
        recorded = None
    if recorded is not None:
        return None
    return outcomes.dead_letter_malformed(got, refused)


def unreadable_command(outcomes: Outcomes, got: QueueCopy, error: ValueError) -> SendOutcome:
    """A command its connection cannot send as it is (no customer or service to fill in):
    dead-lettered ``malformed``, but while the connections' routing errs it waits
    (:func:`unrouted`): a mistyped key may hide the default it needs."""
    from shared.connections import ConnectionNotConfigured, routing_errors

    if errors := routing_errors():
        problem = ConnectionNotConfigured("Connection routing", errors)
        return unrouted(outcomes, got, problem)
    return outcomes.dead_letter_malformed(got, error)


def unrouted(outcomes: Outcomes, got: QueueCopy, problem: Exception) -> SendOutcome:
    """A send command routed by its customer's claim while the claims are uncertain
    (:func:`shared.connections.claimed_by`): its text goes back on the queue as it came, no attempt
    or deferral counted, until the settings are fixed; one whose id would come from its queue
    message gets that id written in, so each copy stays one message. One already recorded still
    fails ``expired``, with its event, once its validity ends."""
    detail = getattr(problem, "detail", "") or str(problem)
    held.wait("the connections' routing", detail, "see /api/health")
    seconds, text = float(CONFIGURATION_RECHECK_SECONDS), got.text
    try:
        message = parse_queue_message(text)
    except ValueError:  # (a ValidationError too) not read above either
        message = None
    mid = None if message is None or isinstance(message, PackDriver) else message.messageId
    named = named_command(text, got.queue_id)
    if named is not None and not isinstance(message, PackDriver | StoredCommand | None):
        # its id is its queue message's, new for each copy put back: written in
        mid, written = named
        text = queued_text(written, message_id=mid, payloads=outcomes.ports.payloads,
                           attempts=message.attempts, deferrals=message.deferrals)  # fmt: skip
    log.debug("message %s waits for the connections' routing: %s", mid or "(no id yet)", detail)
    if mid is not None:  # recorded (accepted over HTTP), also when stored by reference
        record = outcomes.ports.store.get(mid)
        if record is not None and not record.status.is_final:
            left = _expired_or_left(outcomes, record, f"the connections' routing: {detail}")
            if isinstance(left, SendOutcome):
                return left
            seconds = min(seconds, left)
            note_waiting(outcomes, [record], f"the connections' routing: {detail}")
    return outcomes.put_back(text, "message", "", seconds, OutcomeKind.DEFERRED, "configuration")


def _misconfigured(
    outcomes: Outcomes,
    message_id: MessageIdOf,
    message: OutboundMessage | PackDriver,
    name: str,
    problem: Exception,
    got: QueueCopy,
) -> SendOutcome:
    """Wait, unclaimed and without a quota slot, for the connection to be fixed; a recorded
    message's validity still runs out while it waits (it then fails ``expired``, with its event),
    and one that ended meanwhile (e.g. cancelled) is only announced."""
    why = f"the settings of connection {loggable_text(name)}"
    detail = getattr(problem, "detail", "") or str(problem)
    held.wait(why, detail, "see /api/health")
    why, delay = f"{why}: {detail}", CONFIGURATION_RECHECK_SECONDS
    if isinstance(message, PackDriver):
        log.debug("pack %s waits for %s", message.packId, why)
        return _driver_waits(outcomes, message, delay, why)
    # Recorded on its first wait, so its validity counts from when it was first seen.
    record = _record_of(outcomes, message_id, message, name, got)
    if isinstance(record, SendOutcome):
        return record
    log.debug("message %s waits for %s", record.logged_id, why)
    left = _expired_or_left(outcomes, record, why)
    if isinstance(left, SendOutcome):
        return left
    note_waiting(outcomes, [record], why)
    copy = message.model_copy(update={"messageId": record.message_id})
    return outcomes.requeue(
        copy, message.attempts, min(delay, left), OutcomeKind.DEFERRED, "configuration"
    )


def _expired_or_left(outcomes: Outcomes, record: MessageRecord, why: str) -> SendOutcome | float:
    """A recorded message waiting for ``why``: failed ``expired`` (with its event) once its
    validity ended (a claim held when it broke ends first), else the seconds left (at least 1)."""
    now = outcomes.ports.now()
    left = (record.valid_until - now).total_seconds()
    if left <= 0 and not _held_for(record, now):
        return outcomes.fail(record, outcomes.expired(record, waiting=why))
    return max(left, 1.0)


def expire_overdue(record: MessageRecord) -> MessageRecord:
    """A status poll's backstop for a send no queue copy comes for any more: once its validity and a
    claim's lease after it have passed, a record neither final nor held fails ``expired`` as its
    sender would fail it, written failed and unannounced first and announced only if that write won.
    A final record left unannounced for a lease (or expired by a poll, or re-read after losing to
    another poll's expiry) is announced. Any other record is returned as it is.

    Raises a 503 problem with ``Retry-After`` when storage fails meanwhile (the next poll announces
    it: the same event, the letter written once). See docs/sending.md, "Crash windows, and why each
    is safe"."""
    from azure.core.exceptions import AzureError

    from shared.connections import connection_settings
    from shared.outbound._outcomes import Outcomes, failed_changes
    from shared.outbound._packing import IndexPacks
    from shared.problems import Problem, storage_unavailable
    from shared.settings import SettingsInvalid, get_settings

    try:  # its sender's (a broken or removed connection's: the app's; the same tables)
        ports = send_ports(connection_settings(record.connection))
    except Problem:
        try:
            ports = send_ports(get_settings())
        except SettingsInvalid:  # a sender's setting that does not validate (a status URL runs
            return record  # leniently: shared.settings_leniency): nothing expires until fixed
    now, outcomes = ports.now(), Outcomes(ports)
    overdue = now - ports.policy.lease  # not validUntil + lease: it may be 9999-12-31
    try:
        if not record.status.is_final:
            if record.held_until(now) or overdue < record.valid_until:
                return record
            if record.pack_id is not None and record.batch_id is None:
                IndexPacks(ports, outcomes).announce_listed(record.pack_id)
            changes = {**failed_changes(outcomes.expired(record), now),
                       "finished_at": record.valid_until}  # fmt: skip
            if (done := ports.store.swap(record, **changes)) is not None:
                log.warning("message %s failed for good: expired, no queue copy left",
                            record.logged_id)  # fmt: skip
            # Lost to another writer: re-read, it is announced as any final record is here.
            record = done or ports.store.get(record.message_id) or record
        polls = record.finished_at == record.valid_until  # a poll's expiry: no writer left
        if (
            record.status.is_final
            and not record.announced
            and (polls or overdue >= record.updated_at)
        ):
            outcomes.announce([record])
    except AzureError as exc:
        raise storage_unavailable("The message's status cannot be updated", cause=exc) from exc
    return record


def _driver_waits(outcomes: Outcomes, driver: PackDriver, delay: float, why: str) -> SendOutcome:
    """A bulk pack's driver waits for its misconfigured connection as its members would: the
    members whose validity ended fail ``expired`` (with their events; a claim still held ends
    first), and the driver comes back by the next member's validity end, or is acknowledged
    once no member is left open (an all-final pack's events out: :func:`_open_members`)."""
    now = outcomes.ports.now()
    open_, leased = _open_members(outcomes, driver.packId, now)
    held = [r for r in open_ if _held_for(r, now)]
    expired = [r for r in open_ if now >= r.valid_until and r not in held]
    outcomes.fail_many([(r, outcomes.expired(r, waiting=why)) for r in expired])
    left = [r for r in open_ if r not in expired]
    if not left and leased:  # its listed events wait for the lease: come back then
        return outcomes.requeue_driver(driver, leased, OutcomeKind.DEFERRED, "claimed")
    if not left:
        return SendOutcome(OutcomeKind.ACKNOWLEDGED, driver.packId, detail="configuration")
    note_waiting(outcomes, left, why)
    soonest = min((r.valid_until - now).total_seconds() for r in left)
    wait = min(delay, max(soonest, 1.0))
    return outcomes.requeue_driver(driver, wait, OutcomeKind.DEFERRED, "configuration")


def _open_members(
    outcomes: Outcomes, pack_id: str, now: dt.datetime
) -> tuple[list[MessageRecord], float]:
    """The members of a bulk pack that have not ended (none if the pack is unknown), and the seconds
    its lease still holds if that left its ``announcing`` list alone (else 0). The final members
    listed in ``announcing`` have their events sent again (same ids) and leave the list, whatever is
    still open and whatever the connection's state; a lost swap leaves the list to the next run."""
    ports = outcomes.ports
    if (pack := ports.packs.get(pack_id)) is None:
        return [], 0.0
    members = list(ports.store.get_many(pack.member_ids).values())
    open_ = [r for r in members if not r.status.is_final]
    leased = (pack.lease_until - now).total_seconds() if pack.lease_until else 0.0
    if pack.announcing and leased <= 0:
        ports.packs.swap(pack, **listed_again(outcomes, pack, members))
    outcomes.announce([r for r in members if r.status.is_final])
    return open_, leased if pack.announcing and leased > 0 else 0.0  # a run's, or a dead one's


def listed_again(outcomes: Outcomes, pack: Pack, members: list[MessageRecord]) -> dict[str, Any]:
    """Send again (same ids) the events of the ``members`` that ``pack`` lists in
    ``announcing`` and that are recorded final (a run stopped between recording a call and its
    events; one that stopped before step 2 of ``sent`` left them ``sending``); the pack row's
    changes: only the ids whose events went out leave the list (a run whose lease ran out may
    still be writing the others), and the call's membership (``attempt``) stays only while an
    open member is in it (else the next call gets a RequestId of its own)."""
    listed = set(pack.announcing)
    again = [r for r in members if r.message_id in listed and r.status.is_final]
    list(storage_pool().map(outcomes.emit, again))
    emitted = {r.message_id for r in again}
    unfinished = {r.message_id for r in members if not r.status.is_final}
    return {
        "announcing": tuple(i for i in pack.announcing if i not in emitted),
        "attempt": pack.attempt if unfinished.intersection(pack.attempt) else (),
    }


def _removed(
    outcomes: Outcomes,
    message_id: MessageIdOf,
    message: OutboundMessage | PackDriver,
    name: str,
    got: QueueCopy,
) -> SendOutcome:
    """Fail a send whose connection no longer exists, with its failed event and dead letter
    (nothing goes upstream through another connection)."""
    ports = outcomes.ports
    failure = FailureInfo(
        code=CONNECTION_REMOVED,
        title="The message's connection no longer exists",
        detail=(
            f"Connection {name} is not in the app's settings any more; the message is never sent "
            "through another connection's account."
        ),
    )
    now = ports.now()
    # A claim still held is an old-settings instance mid-call (a restart's overlap): it ends first.
    if isinstance(message, PackDriver):
        open_members, leased = _open_members(outcomes, message.packId, now)
        held = [_held_for(r, now) for r in open_members]
        failed = [
            (r, in_doubt(r, failure)) for r, h in zip(open_members, held, strict=True) if not h
        ]
        outcomes.fail_many(failed)
        log.warning("pack %s: connection %s removed; %d member(s) failed",
                    message.packId, loggable_text(name), held.count(0.0))  # fmt: skip
        if any(held) or leased:  # a claim, or listed events left to the lease: after it
            wait = max([*held, leased])
            return outcomes.requeue_driver(message, wait, OutcomeKind.DEFERRED, "claimed")
        return SendOutcome(OutcomeKind.FAILED, message.packId, detail=CONNECTION_REMOVED)
    record = _record_of(outcomes, message_id, message, name, got, removed=True)
    if isinstance(record, SendOutcome):
        return record
    if wait := _held_for(record, now):
        copy = message.model_copy(update={"messageId": record.message_id})
        return outcomes.requeue(copy, message.attempts, wait, OutcomeKind.DEFERRED, "claimed")
    log.warning("message %s: connection %s removed; failed", record.logged_id, loggable_text(name))
    return outcomes.fail(
        record, in_doubt(record, failure.model_copy(update={"attempts": record.attempts}))
    )


def _held_for(record: MessageRecord, now: dt.datetime) -> float:
    """Seconds until another worker's claim of ``record`` ends, and one more (0: not held)."""
    lease = record.held_until(now)
    if lease is None:
        return 0.0
    return (lease - now).total_seconds() + 1


def _record_of(
    outcomes: Outcomes,
    message_id: MessageIdOf,
    message: OutboundMessage,
    name: str,
    got: QueueCopy,
    *,
    removed: bool = False,
) -> MessageRecord | SendOutcome:
    """The open record of a send its connection cannot take (recorded ``queued`` now if it has
    none yet: a queue-only command), or what was done instead: a command that cannot be recorded
    is dead-lettered, one that ended meanwhile (e.g. cancelled) is only announced. A command
    that names no customer or service (a notification rule's) has its connection's, as that
    connection's sender fills them in."""
    from shared.connections import account_defaults

    ports = outcomes.ports
    customer_id, service_id = account_defaults(name)
    # Its id as the connection's sender derives it (from its customer).
    message = message.model_copy(update={"customerId": message.customerId or customer_id})
    try:
        mid = message_id(message, got.queue_id)
        command = _normalized(message, mid, customer_id, service_id, removed=removed)
    except ValueError as exc:
        reason = ValueError(f"connection {name} cannot send it, and {exc}")
        return outcomes.dead_letter_malformed(got, reason)
    assert command.messageId is not None
    record = ports.store.get(command.messageId)
    if record is None:
        fresh, slots = new_record(
            command, now=ports.now(), validity=ports.policy.validity, status=MessageStatus.QUEUED
        )
        record = ports.store.create(fresh, slots) or ports.store.get(command.messageId)
        if record is None:
            raise RuntimeError(f"message {command.messageId} could not be recorded")
    elsewhere = outcomes.someone_elses(record, command, got)
    if elsewhere is not None:
        return elsewhere
    if record.status.is_final:
        outcomes.announce([record])
        return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
    return record


def _normalized(
    message: OutboundMessage,
    message_id: str,
    customer_id: str | None,
    service_id: str | None,
    *,
    removed: bool,
) -> OutboundMessage:
    """``message`` normalized with its connection's defaults; a removed connection's are gone
    with it, so its send is recorded with what it names (no customer: ``""``), to fail."""
    try:
        return normalize(
            message, message_id=message_id, customer_id=customer_id, service_id=service_id
        )
    except ValueError:
        if not removed:
            raise
        update = {"messageId": message_id, "customerId": message.customerId or ""}
        return message.model_copy(update=update)
