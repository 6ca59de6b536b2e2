"""The message core's transition tables: every status change is an arrow of its table."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest

from shared.messages import (
    BATCH_TRANSITIONS,
    MESSAGE_TRANSITIONS,
    BatchStatus,
    IllegalTransition,
    MessageStatus,
    MessageStore,
    RecipientStatus,
    check_batch_transition,
    check_transition,
)
from shared.outbound import new_record, normalize, parse_outbound_message
from tests.outbound.conftest import CUSTOMER, DELIVERED, SERVICE, Outbound, sms

S = MessageStatus
#: Every arrow a message may take (besides keeping its status), as the state machine draws it.
ARROWS = {
    (S.ACCEPTED, S.QUEUED),
    (S.ACCEPTED, S.SENDING),
    (S.ACCEPTED, S.FAILED),
    (S.ACCEPTED, S.CANCELLED),
    (S.QUEUED, S.SENDING),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.CANCELLED),
    (S.SENDING, S.SENT),
    (S.SENDING, S.FAILED),
    (S.SENDING, S.QUEUED),
    (S.SENDING, S.ACCEPTED),
}


@pytest.mark.parametrize(("before", "after"), list(itertools.product(S, S)))
def test_a_status_change_is_allowed_exactly_when_the_table_has_its_arrow(
    before: MessageStatus, after: MessageStatus
) -> None:
    if before is after or (before, after) in ARROWS:
        check_transition(before, after)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(before, after)


def test_the_table_has_exactly_the_drawn_arrows_and_final_states_have_none() -> None:
    table = {(b, a) for b, targets in MESSAGE_TRANSITIONS.items() for a in targets}
    assert table == ARROWS
    assert all(not MESSAGE_TRANSITIONS[s] for s in S if s.is_final)


def test_re_drive_is_the_one_way_back_and_only_from_failed() -> None:
    check_transition(S.FAILED, S.QUEUED, redrive=True)
    for before in (S.SENT, S.CANCELLED):
        with pytest.raises(IllegalTransition):
            check_transition(before, S.QUEUED, redrive=True)
    with pytest.raises(IllegalTransition):
        check_transition(S.FAILED, S.SENDING, redrive=True)


def test_a_batch_moves_only_forward() -> None:
    for before, after in itertools.product(BatchStatus, BatchStatus):
        if before is after or after in BATCH_TRANSITIONS[before]:
            check_batch_transition(before, after)
        else:
            with pytest.raises(IllegalTransition):
                check_batch_transition(before, after)
    assert BatchStatus.ACCEPTING in {b for b, t in BATCH_TRANSITIONS.items() if t}


def test_a_stale_copy_of_a_batch_moves_the_row_only_along_an_arrow_from_where_it_is_now(
    outbound: Outbound,
) -> None:
    """A status poll read the batch ``accepting`` and, before it marked it ``incomplete``, a
    replay finished it (``queued``): the poll's write leaves ``queued`` (no arrow back). The
    other way round, a replay's ``queued`` after the poll's ``incomplete`` is an arrow: it lands."""
    from shared.clock import utcnow
    from shared.messages import BatchRecord, BatchStore

    store = BatchStore.from_settings()

    def new_batch(batch_id: str) -> BatchRecord:
        now = utcnow()
        store.save(BatchRecord(batch_id=batch_id, status=BatchStatus.ACCEPTING,
                               customer_id=CUSTOMER, service_id=SERVICE, total=1, accepted=1,
                               created_at=now, formed_at=now.isoformat(), pack_ids=()))  # fmt: skip
        found = store.get(batch_id)
        assert found is not None
        return found

    polled = new_batch("b-stale-poll")
    store.mark(new_batch("b-stale-poll"), BatchStatus.QUEUED)  # the replay, meanwhile
    assert store.mark(polled, BatchStatus.INCOMPLETE).status is BatchStatus.QUEUED
    assert store.get("b-stale-poll").status is BatchStatus.QUEUED  # type: ignore[union-attr]

    replayed = new_batch("b-stale-replay")
    store.mark(new_batch("b-stale-replay"), BatchStatus.INCOMPLETE)  # the poll, meanwhile
    assert store.mark(replayed, BatchStatus.QUEUED).status is BatchStatus.QUEUED
    assert store.get("b-stale-replay").status is BatchStatus.QUEUED  # type: ignore[union-attr]


def test_a_recipient_never_moves_to_a_lower_rank() -> None:
    order = [
        RecipientStatus.PENDING,
        RecipientStatus.FAILED,
        RecipientStatus.SENT,
        RecipientStatus.UNDELIVERED,
        RecipientStatus.DELIVERED,
    ]
    assert [s.rank for s in order] == sorted(s.rank for s in order)
    assert RecipientStatus.CANCELLED.rank == RecipientStatus.FAILED.rank
    assert RecipientStatus.of_message(S.SENDING) is RecipientStatus.PENDING


# --- the store: the only writer, and it goes through the table ----------------------------------


def _stored(status: MessageStatus, message_id: str) -> tuple[MessageStore, object]:
    command = normalize(
        parse_outbound_message(json.dumps({"operation": "SendMessage", "body": sms(DELIVERED)})),
        message_id=message_id,
        customer_id=CUSTOMER,
        service_id=SERVICE,
    )
    record, slots = new_record(
        command, now=dt.datetime.now(dt.UTC), validity=dt.timedelta(days=1), status=status
    )
    store = MessageStore.from_settings()
    created = store.create(record, slots)
    assert created is not None
    return store, created


def test_the_store_refuses_an_illegal_write_and_changes_nothing(outbound: Outbound) -> None:
    store, sent = _stored(S.SENT, "m-final")
    with pytest.raises(IllegalTransition):
        store.swap(sent, status=S.SENDING)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition):
        store.swap_many([(sent, {"status": S.QUEUED})])  # type: ignore[list-item]
    again = store.get("m-final")
    assert again is not None
    assert again.status is S.SENT
    assert again.etag == sent.etag  # type: ignore[attr-defined]


def test_a_retrys_claim_of_a_large_message_leaves_its_delivered_slots_delivered(
    outbound: Outbound,
) -> None:
    """The sender writes slots past the first transaction again when it claims a message of 99
    recipients or more (its create may not have finished them). A retry's claim comes after
    delivery reports may have moved some on: those stay where they are."""
    numbers = [f"+35840500{i:04d}" for i in range(150)]
    command = normalize(
        parse_outbound_message(json.dumps({"operation": "SendMessage", "body": sms(*numbers)})),
        message_id="m-large", customer_id=CUSTOMER, service_id=SERVICE,
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    record, slots = new_record(command, now=now, validity=dt.timedelta(days=1), status=S.QUEUED)
    store = MessageStore.from_settings()
    assert store.create(record, slots) is not None
    _, stored = store.get_with_slots("m-large")
    moved, advanced = store.advance_slot(stored[120], RecipientStatus.DELIVERED, now=now)
    assert (moved.status, moved.previous, advanced) == (
        RecipientStatus.DELIVERED, RecipientStatus.PENDING, True,
    )  # fmt: skip

    store.ensure_slots(slots)

    _, after = store.get_with_slots("m-large")
    assert len(after) == 150
    assert after[120].status is RecipientStatus.DELIVERED
    assert {s.status for i, s in enumerate(after) if i != 120} == {RecipientStatus.PENDING}


def test_a_failed_message_is_re_driven_with_its_attempts_and_failure_cleared(
    outbound: Outbound,
) -> None:
    store, queued = _stored(S.QUEUED, "m-redrive")
    from shared.messages import FailureInfo

    failure = FailureInfo(code="upstream-unavailable", title="down", attempts=3)
    failed = store.swap(queued, status=S.FAILED, failure=failure, attempts=3, announced=True)  # type: ignore[arg-type]
    assert failed is not None
    with pytest.raises(IllegalTransition):
        store.swap(failed, status=S.QUEUED)  # only through the re-drive

    now = dt.datetime.now(dt.UTC)
    redriven = store.redrive(failed, now=now, valid_until=now + dt.timedelta(hours=1))

    assert redriven is not None
    assert (redriven.status, redriven.attempts, redriven.failure) == (S.QUEUED, 0, None)
    assert redriven.valid_until == now + dt.timedelta(hours=1)
    assert not redriven.announced
    _, sent = _stored(S.SENT, "m-not-failed")
    with pytest.raises(IllegalTransition):
        store.redrive(sent, now=now, valid_until=now)  # type: ignore[arg-type]
