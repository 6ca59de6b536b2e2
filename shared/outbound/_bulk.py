"""Bulk sends: one template, up to 10,000 recipients, one member message per recipient.

Owns the batch (``SmartDialogBatches``): accepting it (batch row, packs, members, then one
:class:`~shared.outbound.PackDriver` per pack), its status, and finishing a request that stopped
part-way. See docs/sending.md, "Bulk sends" and "Bulk sends: batch packs" (layout, the write
order and why a request answers 202 once one driver is out)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import compress
from typing import TYPE_CHECKING, Any

from shared.callback_urls import (
    poll_link,
    require_callback_settings,
    require_status_token,
    status_link,
)
from shared.clock import utcnow
from shared.logs import redacted, redacted_traceback
from shared.messages import (
    BatchRecord,
    BatchStatus,
    BatchStore,
    IdempotencyStore,
    MessageRecord,
    MessageStatus,
    MessageStore,
    Pack,
    PackStore,
    RecipientSlot,
    RecipientStatus,
    batch_filter,
    effective_status,
    idempotency_key_hash,
)
from shared.messages._records import RECIPIENT_ROW_PREFIX, RECORD_ROW_KEY
from shared.names import DEFAULT_CONNECTION, named_connection
from shared.outbound._bulk_members import BulkRecipient, Members, bulk_fingerprint, bulk_members
from shared.outbound._models import PackDriver
from shared.outbound._quota_wait import poll_after
from shared.outbound._service import key_reused, outbound_queue
from shared.problems import FieldError, Problem, ProblemType, validation_problem
from shared.storage import already_exists
from shared.telemetry import current_traceparent

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["MAX_BULK_RECIPIENTS", "BulkRecipient", "BulkService"]

log = logging.getLogger("shared.outbound.bulk")

#: Most recipients of one bulk request.
MAX_BULK_RECIPIENTS = 10_000
#: A batch ``accepting`` this long with every member recorded gets its drivers from a poll.
STUCK_ACCEPTING_AFTER = dt.timedelta(seconds=30)
#: A batch's status is worth polling about this often (a pack goes in about a second).
BATCH_POLL_SECONDS = 5
#: A batch ``accepting`` this long with members missing is ``incomplete`` (HTTP ends at 230 s).
INCOMPLETE_AFTER = dt.timedelta(minutes=5)
_OPTED_OUT = "This recipient opted out of service %s."
#: Storage threads of one request: the SDK's pool keeps 10 connections per client.
_THREADS = 10


def _batch_subject(batch_id: str) -> str:
    return f"batch:{batch_id}"


def _row(member: MessageRecord) -> int:
    """A member's row, from its id (``<batch id>.<row>``)."""
    return int(member.message_id.rsplit(".", 1)[1])


def _tally(states: Iterable[object], values: Iterable[object]) -> dict[str, int]:
    """How many of ``values`` are each of ``states``, every state listed (0 included)."""
    counted = Counter(map(str, values))
    return {str(state): counted[str(state)] for state in states}


def _connection(batch: BatchRecord, records: Sequence[MessageRecord]) -> str:
    """The batch's connection: on its row, else (a row of ec7daff) its members' (one kept in a
    blob names it only once claimed; if none does, the sender sends a driver stamped ``default``
    on, :mod:`shared.outbound._drive`)."""
    members = (r.connection for r in records if r.command_blob is None or r.sent_through)
    return batch.connection or next(members, DEFAULT_CONNECTION)


class BulkService:
    """Accepts bulk sends and reports their batches (one per settings object)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = MessageStore.from_settings(settings)
        self.idempotency = IdempotencyStore.from_settings(settings)
        self.packs = PackStore.from_settings(settings)
        self.batches = BatchStore.from_settings(settings)

    # --- accept ----------------------------------------------------------------------------

    def submit(
        self,
        template: Mapping[str, Any],
        recipients: Sequence[BulkRecipient],
        *,
        customer_id: str,
        service_id: str,
        transactional: bool = False,
        all_or_nothing: bool = False,
        idempotency_key: str | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Validate, record the batch and its members, enqueue them; (status, body, headers).

        Refused rows (bad number, opted out, a CSV row's cells) are listed by row; the rest are
        accepted unless ``all_or_nothing``. Raises :class:`Problem` (422) when nothing can be
        accepted.
        """
        require_callback_settings(self.settings)  # 503 before anything is stored
        now = utcnow()
        if not 0 < len(recipients) <= MAX_BULK_RECIPIENTS:  # (a CSV's are checked as it is read)
            too_many = f"At most {MAX_BULK_RECIPIENTS} recipients."
            why = too_many if recipients else "Give at least one recipient."
            raise validation_problem([FieldError("Recipients", why)])
        batch_id = str(uuid.uuid4())
        key_hash = None
        resumed = None
        if idempotency_key:  # its fingerprints: numbers as sent, as typed (a release before's)
            request = [template, customer_id, service_id, transactional, all_or_nothing]
            fingerprint, as_typed = bulk_fingerprint(request, recipients)
            key_hash = idempotency_key_hash(
                customer_id, "bulk\n" + idempotency_key, self.settings.named_connection
            )
            entry = self.idempotency.claim(
                key_hash, batch_id, fingerprint, now=now,
                ttl=dt.timedelta(seconds=self.settings.idempotency_ttl_seconds),
            )  # fmt: skip
            if entry.message_id != batch_id:
                if entry.fingerprint not in (fingerprint, as_typed):
                    raise key_reused("This Idempotency-Key was already used for another bulk send.")
                found = self.batches.get(entry.message_id)
                if found is None:
                    # The claimant has no batch yet: on its way, or stopped (the key is ours).
                    if now - entry.created_at < INCOMPLETE_AFTER:  # surely over by then
                        raise _in_progress("its batch")
                    self.idempotency.release(key_hash, entry.message_id)
                    return self.submit(template, recipients, customer_id=customer_id,
                                       service_id=service_id, transactional=transactional,
                                       all_or_nothing=all_or_nothing,
                                       idempotency_key=idempotency_key)  # fmt: skip
                resumed = self._unfinished(found)
                if resumed is None:  # done, or on its way (409 while members are missing)
                    return self.status(entry.message_id, details=False, checked=True,
                                       replay=recipients)  # fmt: skip
                # Its first request stopped part-way: finish it as that batch (same id and time).
                batch_id = entry.message_id
                now = dt.datetime.fromisoformat(resumed.formed_at)
        try:
            return self._record(
                template, recipients, batch_id=batch_id, now=now, resumed=resumed,
                key_hash=key_hash, customer_id=customer_id, service_id=service_id,
                transactional=transactional, all_or_nothing=all_or_nothing,
            )  # fmt: skip
        except BaseException:
            # Before its batch row: give the key up; after it: mark it incomplete for a replay.
            if key_hash is not None and resumed is None:
                with contextlib.suppress(Exception):
                    found = self.batches.get(batch_id)
                    if found is None:
                        self.idempotency.release(key_hash, batch_id)
                    elif found.status is BatchStatus.ACCEPTING:
                        self.batches.mark(found, BatchStatus.INCOMPLETE)
            raise

    def _record(
        self,
        template: Mapping[str, Any],
        recipients: Sequence[BulkRecipient],
        *,
        batch_id: str,
        now: dt.datetime,
        resumed: BatchRecord | None,
        key_hash: str | None,
        customer_id: str,
        service_id: str,
        transactional: bool,
        all_or_nothing: bool,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Validate the rows and record the batch (or finish ``resumed``): the rest of
        :meth:`submit`, with its Idempotency-Key claimed as ``key_hash``."""
        errors, valid = _screen(recipients)
        if valid and not transactional:
            from shared.suppressions import SuppressionStore

            store = SuppressionStore.from_settings(self.settings)
            # The service's list and the all-services list are read once each, not per recipient.
            hits = dict(store.suppressed_many(service_id, [a for _, a in valid]))
            errors += [_refusal(valid[i][0].row, _OPTED_OUT % service_id) for i in sorted(hits)]
            valid = [v for i, v in enumerate(valid) if i not in hits]
        errors.sort(key=lambda e: int(e["row"]))
        if errors and (all_or_nothing or not valid) and resumed is None:  # (its key is freed)
            raise Problem(
                422,
                "Some recipients are not valid" if valid else "No valid recipient",
                f"{len(errors)} row(s) refused"
                + ("; AllOrNothing: nothing was sent." if all_or_nothing else "."),
                type=ProblemType.VALIDATION,
                errors=[FieldError(f"row {e['row']}.{e['field']}", e["message"]) for e in errors],
            )
        records, packs = bulk_members(
            self.settings, template, valid, batch_id=batch_id, now=now, customer_id=customer_id,
            service_id=service_id, transactional=transactional,
        )  # fmt: skip
        if resumed is not None:
            return self._resume(resumed, records, packs, errors, recipients)
        batch = BatchRecord(
            batch_id=batch_id,
            status=BatchStatus.ACCEPTING,
            customer_id=customer_id,
            service_id=service_id,
            total=len(recipients),
            accepted=len(records),
            created_at=now,
            formed_at=now.isoformat(),
            pack_ids=tuple(p.pack_id for p in packs),
            refused=tuple(errors),
            idempotency_key_hash=key_hash,
            connection=self.settings.connection,
        )
        self.batches.save(batch)
        with ThreadPoolExecutor(_THREADS) as pool:
            # The packs first: a member names its pack, which must exist when it is read.
            list(pool.map(self.packs.save, packs))
        self.store.create_many(records)
        # Accepted from its first driver on (a 500 would make a keyless caller send it twice).
        queued = self._drivers_out(batch) is not None
        return self._accepted(batch_id, len(recipients), len(records), errors, queued=queued)

    def _accepted(
        self, batch_id: str, total: int, accepted: int, errors: list[dict[str, Any]], *,
        queued: bool,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        """The 202 of an accepted batch, built from what was just written, not read back
        (5,000 members would be a 5,000-row query); its members are ``queued`` once every
        pack's driver is on the queue."""
        url = self.status_url(batch_id)
        counts = {str(s): 0 for s in MessageStatus}
        counts[str(MessageStatus.QUEUED if queued else MessageStatus.ACCEPTED)] = accepted
        body: dict[str, Any] = {
            "Id": batch_id, "Status": "pending", "Total": total, "Accepted": accepted,
            "RefusedCount": len(errors), "Counts": counts,
            "DeliveryCounts": dict.fromkeys(map(str, RecipientStatus), 0) | {"pending": accepted},
            "StatusUrl": url, "Refused": errors,
        }  # fmt: skip
        return 202, body, self._poll_headers(url)

    def _poll_headers(self, url: str | None) -> dict[str, str]:
        after = {"Retry-After": str(poll_after(self.settings, BATCH_POLL_SECONDS))}
        return after if url is None else {"Location": url, **after}

    # --- a batch whose request stopped part-way --------------------------------------------

    def _unfinished(self, batch: BatchRecord) -> BatchRecord | None:
        """The batch if its request stopped before it finished recording it (``incomplete``,
        or ``accepting`` for longer than a request takes), else None."""
        over = utcnow() - batch.created_at >= INCOMPLETE_AFTER
        accepting = batch.status is BatchStatus.ACCEPTING
        return batch if batch.status is BatchStatus.INCOMPLETE or (accepting and over) else None

    def _members_recorded(self, batch_id: str) -> set[str]:
        return {
            str(e.get("MessageId"))
            for e in self.store.table.query_entities(
                batch_filter(batch_id), select=["RowKey", "MessageId"]
            )
            if str(e["RowKey"]).endswith("." + RECORD_ROW_KEY)
        }

    def _resume(
        self, batch: BatchRecord, records: Members, packs: list[Pack],
        errors: list[dict[str, Any]], recipients: Sequence[BulkRecipient],
    ) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        """Finish recording a batch whose first request stopped part-way (a replay with its
        Idempotency-Key): the packs and members not recorded yet are, then the drivers go out.
        Packs and members already recorded are never written again (a driver may have moved
        them on)."""
        from azure.data.tables import TableTransactionError

        batch_id = batch.batch_id
        recorded = self._members_recorded(batch_id)
        if tuple(p.pack_id for p in packs) != batch.pack_ids:
            if len(recorded) >= batch.accepted:
                self._drivers_out(batch)  # every member is recorded: only the drivers were missing
                return self.status(batch_id, details=False, checked=True, replay=recipients)
            # The recipients changed since (an opt-out): this request is not that one any more.
            raise Problem(409, "The first request with this Idempotency-Key did not finish",
                          "It stopped before all its recipients were recorded, and they are no "
                          "longer the same (an opt-out since?); nothing of it was sent. Send "
                          "the bulk again with a new Idempotency-Key.",
                          type=ProblemType.CONFLICT)  # fmt: skip
        missing = [(r, sl) for r, sl in records if r.message_id not in recorded]
        with ThreadPoolExecutor(_THREADS) as pool:
            # Only the missing packs: drivers may be at the others, whose recorded calls must stay.
            list(pool.map(self.packs.add, packs))
        log.warning("batch %s: finishing the recording of %d member(s) of a request that stopped",
                    batch_id, len(missing))  # fmt: skip
        while missing:  # another replay may be writing them too: those it wrote are recorded
            try:
                self.store.create_many(missing)
                break
            except TableTransactionError as exc:
                if not already_exists(exc):
                    raise
            recorded = self._members_recorded(batch_id)
            missing = [(r, sl) for r, sl in missing if r.message_id not in recorded]
        queued = self._drivers_out(batch) is not None
        return self._accepted(batch_id, len(recipients), len(records), errors, queued=queued)

    def _redrive_stale(self, batch: BatchRecord, records: list[MessageRecord]) -> None:
        """Enqueue again the drivers of packs idle longer than any lease or backoff lasts (a driver
        gone to the poison queue) with members unfinished or events maybe unsent, at most once
        per that period per batch (docs/sending.md, "A driver that is gone")."""
        from shared.outbound._ports import held_settings

        # The batch's connection's lease and backoff, not the poller's (sending.md, "A driver...").
        settings, waiting = held_settings(_connection(batch, records), self.settings)
        now = utcnow()
        quiet = dt.timedelta(
            seconds=settings.send_lease_seconds + settings.send_retry_max_seconds + 60
        )
        if batch.redriven_at is not None and now - batch.redriven_at < quiet:
            return
        stale = sorted({
            r.pack_id for r in records
            if r.pack_id is not None and not r.status.is_final and now - r.updated_at >= quiet
            and (not waiting or now >= r.valid_until)
        })  # fmt: skip
        busy = {r.pack_id for r in records if not r.status.is_final or now - r.updated_at < quiet}
        sent = {p for r in records if (p := r.pack_id) and r.status is MessageStatus.SENT}
        unheard = {p for r in records if (p := r.pack_id) and r.status.is_final and not r.announced}
        stale += sorted(unheard - busy)
        if done := sorted(sent - busy - unheard):  # events of theirs may never have gone out
            with ThreadPoolExecutor(min(_THREADS, len(done))) as pool:
                stale += compress(done, pool.map(self.packs.announcing, done))
        if not stale:
            return
        log.warning("batch %s: %d pack(s) idle for %s; their drivers are enqueued again",
                    batch.batch_id, len(stale), quiet)  # fmt: skip
        self.batches.note_redriven(batch, now)
        self._enqueue_drivers(batch, stale, records)

    def _enqueue_drivers(
        self, batch: BatchRecord, pack_ids: Sequence[str], members: Sequence[MessageRecord] = ()
    ) -> bool:
        """Put the packs' drivers on the queue: True if every one went, False if some did
        (a status poll puts them out again); raises if none did (the SDK retried already).
        Given the batch's ``members`` (a status poll, whoever polls), they go through the
        batch's connection and continue their trace; else the bulk request's."""
        queue, batch_id = outbound_queue(self.settings), batch.batch_id
        connection = named_connection(
            _connection(batch, members) if members else self.settings.connection
        )
        trace = next((r.traceparent for r in members if r.traceparent), current_traceparent())
        texts = [
            PackDriver(packId=p, batchId=batch_id, traceparent=trace, Connection=connection).text()
            for p in pack_ids
        ]
        with ThreadPoolExecutor(min(_THREADS, len(texts))) as pool:
            sends = [pool.submit(queue.send_message, text) for text in texts]
        failed = [e for e in (s.exception() for s in sends) if e is not None]
        if failed and len(failed) == len(texts):
            raise failed[0]
        if failed:
            log.warning("batch %s: %d of %d driver(s) not enqueued (%s); a status poll will",
                        batch_id, len(failed), len(texts), redacted(str(failed[0])))  # fmt: skip
        return not failed

    def _drivers_out(
        self, batch: BatchRecord, members: Sequence[MessageRecord] = ()
    ) -> BatchRecord | None:
        """Every pack's driver on the queue (:meth:`_enqueue_drivers`), then ``batch`` marked
        queued, best effort (a batch left ``accepting`` with every member recorded gets its
        drivers again from a status poll); None if some driver did not go."""
        if not self._enqueue_drivers(batch, batch.pack_ids, members):
            return None
        try:
            return self.batches.mark(batch, BatchStatus.QUEUED)
        except Exception as exc:  # the batch is accepted: a status poll marks it
            log.warning("batch %s: not marked queued: %s", batch.batch_id, redacted_traceback(exc))
            return batch

    # --- status ------------------------------------------------------------------------------

    def status_url(self, batch_id: str, token: str | None = None) -> str:
        subject = _batch_subject(batch_id)
        return status_link(self.settings, "messages/bulk", batch_id, subject, token)

    def check_token(self, batch_id: str, token: str | None) -> None:
        require_status_token(
            self.settings, _batch_subject(batch_id), token,
            missing="Use the batch status URL from the bulk send's Location header.",
            denied="The token does not open this batch's status.",
        )  # fmt: skip

    def status(
        self, batch_id: str, *, details: bool, token: str | None = None, checked: bool = False,
        replay: Sequence[BulkRecipient] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        """Counts per state (and each member with ``details``); 202 while any is pending, or being
        recorded (then a ``replay``, the request's rows, is told 409; else its refused rows too)."""
        if not checked:
            self.check_token(batch_id, token)
        batch = self.batches.get(batch_id)
        if batch is None:
            raise Problem(404, "No such batch", f"There is no batch {batch_id}.",
                          type=ProblemType.NOT_FOUND)  # fmt: skip
        # Every member's record and slot in one range query (delivery reports move the slots).
        records_by_id: dict[str, MessageRecord] = {}
        slots: dict[str, RecipientSlot] = {}
        for entity in self.store.table.query_entities(batch_filter(batch_id)):
            row = str(entity["RowKey"])
            if row.endswith("." + RECORD_ROW_KEY):
                record = MessageRecord.from_entity(entity)
                records_by_id[record.message_id] = record
            elif row.endswith(f".{RECIPIENT_ROW_PREFIX}00000"):
                slot = RecipientSlot.from_entity(entity)
                slots[slot.message_id] = slot
        records = sorted(records_by_id.values(), key=_row)
        delivery = {
            r.message_id: effective_status(
                slots.get(r.message_id) or RecipientSlot(r.message_id, 0, "", 1), r.status
            )
            for r in records
        }
        age = utcnow() - batch.created_at
        recording = batch.status is BatchStatus.ACCEPTING and len(records) < batch.accepted
        if recording and age >= INCOMPLETE_AFTER:
            # Surely over with members missing: none is sent until a replay finishes it.
            batch = self.batches.mark(batch, BatchStatus.INCOMPLETE)
        elif recording:  # its request may still be writing them: nothing goes out yet
            if replay is not None:
                raise _in_progress("every recipient")
        elif (batch.status is BatchStatus.ACCEPTING and age >= STUCK_ACCEPTING_AFTER) or (
            batch.status is BatchStatus.INCOMPLETE and len(records) >= batch.accepted
        ):
            # Every member recorded, but its drivers not all out (or the batch not marked).
            batch = self._drivers_out(batch, records) or batch
        elif batch.status is BatchStatus.QUEUED:
            self._redrive_stale(batch, records)
        queued = batch.status is BatchStatus.QUEUED
        # The batch, not each member, notes the drivers are out: then ``accepted`` is queued.
        shown = {
            r.message_id: MessageStatus.QUEUED
            if queued and r.status is MessageStatus.ACCEPTED
            else r.status
            for r in records
        }
        # Final only while members are missing: with all recorded, drivers may be out.
        incomplete = batch.status is BatchStatus.INCOMPLETE and len(records) < batch.accepted
        # Still being recorded, it is pending whatever its recorded members' states.
        recording &= batch.status is BatchStatus.ACCEPTING
        pending = recording or (not incomplete and any(not r.status.is_final for r in records))
        # Renewed only while pending; none while the public URL cannot be told.
        url = poll_link(lambda: self.status_url(batch_id, None if pending else token))
        body: dict[str, Any] = {
            "Id": batch_id,
            "Status": "incomplete" if incomplete else "pending" if pending else "done",
            "Total": batch.total,
            "Accepted": batch.accepted,
            "RefusedCount": batch.refused_count,
            "Counts": _tally(MessageStatus, shown.values()),
            "DeliveryCounts": _tally(RecipientStatus, delivery.values()),
            **({"StatusUrl": url} if url else {}),
            # In every answer (a flow sees only Location's final one): those the batch row keeps.
            "Refused": list(batch.refused) if replay is None else _refused(batch, records, replay),
        }
        if incomplete:
            body["Detail"] = (
                "The request that sent this batch stopped before every recipient was recorded; "
                "none of it is sent. Send the same request with the same Idempotency-Key to "
                "finish it, or send it again."
            )
        if details:
            body["Recipients"] = [
                _member_view(
                    r, shown[r.message_id], delivery[r.message_id], slots.get(r.message_id)
                )
                for r in records
            ]
        return (202, body, self._poll_headers(url)) if pending else (200, body, {})


def _screen(
    recipients: Sequence[BulkRecipient],
) -> tuple[list[dict[str, Any]], list[tuple[BulkRecipient, str]]]:
    """Rows refused as read or for their address (not a number, repeated); the rest with it."""
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    errors: list[dict[str, Any]] = []
    valid: list[tuple[BulkRecipient, str]] = []
    seen: set[str] = set()
    for recipient in recipients:
        if recipient.refusal:
            field, why = recipient.refusal
            errors.append(_refusal(recipient.row, why, field))
            continue
        try:
            address = parse_phone_number(recipient.address)
        except InvalidPhoneNumber as exc:
            errors.append(_refusal(recipient.row, str(exc)))
            continue
        if address in seen:
            errors.append(_refusal(recipient.row, "Repeated recipient."))
        else:
            seen.add(address)
            valid.append((recipient, address))
    return errors, valid


def _refusal(row: int, message: str, field: str = "Address") -> dict[str, Any]:
    return {"row": row, "field": field, "message": message}


def _refused(
    batch: BatchRecord, members: Sequence[MessageRecord], recipients: Sequence[BulkRecipient]
) -> list[dict[str, Any]]:
    """The refused rows as the batch's request listed them: kept on the batch, or (more than fit)
    found again in a replay's rows, the same by its fingerprint: the non-members, with why."""
    if len(batch.refused) >= batch.refused_count:
        return list(batch.refused)
    errors, valid = _screen(recipients)
    rows = {_row(r) for r in members}
    opted_out = _OPTED_OUT % batch.service_id
    errors += [_refusal(r.row, opted_out) for r, _ in valid if r.row not in rows]
    return sorted(errors, key=lambda e: int(e["row"]))


def _in_progress(what: str) -> Problem:
    return Problem(409, "A bulk send with this Idempotency-Key is in progress",
                   f"Another request with this key has not recorded {what} yet. Send again "
                   "later to get its answer.", type=ProblemType.CONFLICT)  # fmt: skip


def _member_view(
    record: MessageRecord, status: MessageStatus, delivery: str, slot: RecipientSlot | None
) -> dict[str, Any]:
    """A member's line in the details, in its state as the counts tell it; its address from
    its recipient slot (its record's command may be kept in a blob)."""
    result = record.result_json() or {}
    sent = result.get("Recipients") or []
    first = sent[0] if sent and isinstance(sent[0], dict) else {}
    view = {
        "Row": _row(record),
        "Id": record.message_id,
        "Address": slot.address if slot else None,
        "Status": str(status),
        "Delivery": delivery,
        "MessageId": record.upstream_message_id,
        "RecipientId": first.get("Id"),
        "Error": record.failure.title if record.failure else None,
    }
    return {k: v for k, v in view.items() if v is not None}
