"""A bulk pack's driver whose write covering several members lands only in part.

Found in review: ``swap_many`` writes 100 members a transaction, in parallel, so a storage
error on one transaction leaves the others written. Three such windows broke a promise:
- a back-off written in part after an ambiguous answer: the members still ``sending``
  repeated the call (409: sent), which cleared the call's membership, so the members whose
  back-off had landed later went in a new call under a new RequestId, sent twice;
- a refused repeat of an ambiguous call: the membership was cleared before the members were
  failed ``outcome-unknown``, so when failing them did not land, the host's retry sent them
  all again under a new RequestId;
- claims that landed in part were never handed back, so members never sent waited a lease
  and then passed for an interrupted call (``maybe_sent``, ``outcome-unknown`` at the end).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest

from shared.clock import ManualClock
from shared.messages import MessageStatus, MessageStore, PackStore
from shared.outbound._attempt import Upstream
from shared.smartdialog import BadRequestError, InternalServerError, RateLimitError
from tests.bulk.test_batch_packs import accepted_batch, drivers, member_ids, record
from tests.crash import LEASE, crash_once
from tests.outbound.conftest import Outbound


def _answer(cls: type, status: int, said: str, **headers: str) -> Exception:
    """An upstream error answer (through the client's exception types)."""
    retry = float(headers["Retry-After"]) if "Retry-After" in headers else None
    return cls(said, status_code=status, body={"errorMessage": said},  # type: ignore[no-any-return]
               headers=httpx.Headers(headers), operation_id="SendMessage", method="POST",
               path="/messages", **({"retry_after": retry} if retry else {}))  # fmt: skip


def _first_transaction_only(real: Any, store: MessageStore, items: Any, **kw: Any) -> None:
    real(store, items[:100], **kw)  # the first 100 rows landed; the next transaction failed


def _back_off_lands_in_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next back-off write lands for the first 100 members; its next transaction fails."""
    crash_once(
        monkeypatch,
        MessageStore,
        "swap_many",
        "table storage failed on the 2nd transaction",
        when=lambda items, **_: any(c.get("next_attempt_at") for _, c in items),  # the back-off
        first=_first_transaction_only,
    )


def _taken_then_refused(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[str]:
    """Upstream takes the first call and a gateway answers ``error``; every repeat is refused
    naming nobody. The RequestIds called, in order."""
    real_send, calls = Upstream.send, []

    def send(self: Upstream, command: Any) -> Any:
        if not calls:
            real_send(self, command)  # upstream accepted it (a stale grant raises: no call)...
            calls.append(command.body.RequestId)
            raise error  # ...and a gateway answered
        calls.append(command.body.RequestId)
        raise _answer(BadRequestError, 400, "The request was not valid")  # every repeat

    monkeypatch.setattr(Upstream, "send", send)
    return calls


def _sent_twice(outbound: Outbound) -> list[str]:
    accepted = Counter(r["Address"] for c in outbound.upstream() if c["status"] == 200
                       for r in c["body"]["Recipients"])  # fmt: skip
    return sorted(a for a, n in accepted.items() if n > 1)


def test_a_back_off_written_in_part_repeats_the_whole_call_under_its_request_id(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    numbers = [f"+35840555{i:04d}" for i in range(150)]
    ids = member_ids(accepted_batch(*numbers))
    [driver] = drivers(outbound)
    text = json.dumps(driver)
    real_send, calls = Upstream.send, []

    def send(self: Upstream, command: Any) -> Any:
        answer = real_send(self, command)  # upstream accepted it (a stale grant raises: no call)...
        calls.append(command.body.RequestId)
        if len(calls) == 1:  # ...and a gateway answered 503 with a Retry-After past the lease
            raise _answer(InternalServerError, 503, "Service Unavailable", **{"Retry-After": "300"})
        return answer

    monkeypatch.setattr(Upstream, "send", send)
    _back_off_lands_in_part(monkeypatch)
    with pytest.raises(RuntimeError):
        outbound.invoke(text)  # the host retries the driver
    assert Counter(record(i).status for i in ids) == {
        MessageStatus.QUEUED: 100, MessageStatus.SENDING: 50
    }  # fmt: skip

    manual_clock.advance(LEASE + 1)  # the 50 claims left `sending` ran out
    outbound.invoke(text, dequeue_count=2)  # they repeat the call: 409, sent
    manual_clock.advance(300)  # the others' back-off is over
    outbound.invoke(text, dequeue_count=3)
    outbound.invoke(text, dequeue_count=4)

    assert _sent_twice(outbound) == []
    assert len(set(calls)) == 1  # every call of those members under the first's RequestId
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_a_refused_repeat_whose_failures_did_not_land_is_never_sent_under_a_new_request_id(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    ids = member_ids(accepted_batch(*(f"+35840556{i:04d}" for i in range(5))))
    [driver] = drivers(outbound)
    text = json.dumps(driver)
    calls = _taken_then_refused(monkeypatch, _answer(InternalServerError, 502, "Bad Gateway"))
    outbound.invoke(text)  # 502: every member backs off, maybe sent
    crash_once(
        monkeypatch,
        MessageStore,
        "swap_many",
        "table storage failed while failing them",
        when=lambda items, **_: any(c.get("status") is MessageStatus.FAILED for _, c in items),
    )
    with pytest.raises(RuntimeError):
        outbound.invoke(text, dequeue_count=2)  # the repeat, refused: failing them fails
    pack = PackStore.from_settings().get(driver["packId"])
    assert pack is not None
    assert sorted(pack.attempt) == sorted(ids)  # the call is still on record

    manual_clock.advance(LEASE + 1)
    outbound.invoke(text, dequeue_count=3)  # the host's retry of the driver

    assert len(set(calls)) == 1
    assert _sent_twice(outbound) == []
    failed = [record(i) for i in ids]
    assert {(r.status, r.failure.code if r.failure else None) for r in failed} == {
        (MessageStatus.FAILED, "outcome-unknown")
    }


def test_claims_that_landed_in_part_go_back_uncounted(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    ids = member_ids(accepted_batch(*(f"+35840557{i:04d}" for i in range(150))))
    [driver] = drivers(outbound)
    text = json.dumps(driver)
    crash_once(
        monkeypatch,
        MessageStore,
        "swap_many",
        "table storage failed on the 2nd claim write",
        when=lambda items, **_: any(c.get("status") is MessageStatus.SENDING for _, c in items),
        first=_first_transaction_only,
    )
    with pytest.raises(RuntimeError):
        outbound.invoke(text)

    assert outbound.upstream() == []
    after = [record(i) for i in ids]
    assert {r.status for r in after} <= {MessageStatus.ACCEPTED, MessageStatus.QUEUED}
    assert {(r.attempts, r.maybe_sent) for r in after} == {(0, False)}
    outbound.invoke(text, dequeue_count=2)  # the host's retry goes at once, nothing held
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_a_refused_repeat_of_a_call_written_in_part_leaves_its_other_members_on_the_call(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """Found in a second read of the fixes above: after a back-off written in part, the
    members still ``sending`` repeated the call and SmartDialog refused the repeat; rejected()
    failed them ``outcome-unknown`` and cleared the whole call, so the members whose back-off
    had landed (in the call too, maybe sent) went in a new call under a new RequestId."""
    ids = member_ids(accepted_batch(*(f"+35840558{i:04d}" for i in range(150))))
    [driver] = drivers(outbound)
    text = json.dumps(driver)
    unavailable = _answer(InternalServerError, 503, "Service Unavailable", **{"Retry-After": "300"})
    calls = _taken_then_refused(monkeypatch, unavailable)
    _back_off_lands_in_part(monkeypatch)
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    manual_clock.advance(LEASE + 1)
    outbound.invoke(text, dequeue_count=2)  # the 50 repeat the call: refused, failed
    manual_clock.advance(300)
    for count in range(3, 6):
        outbound.invoke(text, dequeue_count=count)

    assert len(set(calls)) == 1  # never a new RequestId for members of that call
    assert _sent_twice(outbound) == []
    assert Counter((record(i).status, record(i).failure.code if record(i).failure else None)
                   for i in ids) == {(MessageStatus.FAILED, "outcome-unknown"): 150}  # fmt: skip


def test_a_refused_run_that_is_no_repeat_leaves_the_calls_other_members_on_it(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """Found in a third read: the call got a 429 (nothing sent) and its back-off was written in
    part; its members still ``sending`` (B) repeated it (taken, answer lost: maybe sent), then
    the others (A, never maybe sent) repeated it and were refused naming nobody. That counted
    as no repeat, and rejected() cleared the whole call, B included: B went again under a new
    RequestId."""
    ids = member_ids(accepted_batch(*(f"+35840559{i:04d}" for i in range(150))))
    [driver] = drivers(outbound)
    text = json.dumps(driver)
    real_send, calls = Upstream.send, []

    def send(self: Upstream, command: Any) -> Any:
        if len(calls) == 1:  # B's repeat: taken upstream (a stale grant raises: no call)...
            real_send(self, command)
        calls.append((command.body.RequestId, len(command.body.Recipients)))
        if len(calls) == 1:  # the whole call: 429, nothing sent
            raise _answer(RateLimitError, 429, "Too many requests", **{"Retry-After": "300"})
        if len(calls) == 2:  # ...the answer lost
            raise _answer(InternalServerError, 503, "Service Unavailable", **{"Retry-After": "600"})
        if len(calls) == 3:  # A's repeat: refused naming nobody
            raise _answer(BadRequestError, 400, "The request was refused")
        return real_send(self, command)

    monkeypatch.setattr(Upstream, "send", send)
    _back_off_lands_in_part(monkeypatch)
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    b = ids[100:]
    manual_clock.advance(LEASE + 1)
    outbound.invoke(text, dequeue_count=2)  # B repeats the call
    manual_clock.advance(300 - LEASE)
    outbound.invoke(text, dequeue_count=3)  # A repeats it: refused (split)
    manual_clock.advance(400)  # B's back-off is over
    for count in range(4, 7):
        outbound.invoke(text, dequeue_count=count)

    assert _sent_twice(outbound) == []
    assert len({rid for rid, n in calls if n == 50}) == 1  # B never under a new RequestId
    assert {(record(i).status, record(i).duplicate) for i in b} == {(MessageStatus.SENT, True)}


@pytest.mark.parametrize("reread", ["works", "fails"])
def test_a_stop_is_kept_for_members_whose_claim_landed_and_was_not_handed_back(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock, reread: str
) -> None:
    """Found in a third read: when the claims landed in part and the re-read meant to hand
    them back failed too, they passed for an interrupted call once their lease ran out
    (maybe sent), and a STOP that came meanwhile was not honoured. A member ``sending`` that
    is not on the pack's call never went: its claim keeps what it knew."""
    import datetime as dt

    from shared.suppressions import SuppressionStore
    from tests.outbound.conftest import SERVICE

    numbers = [f"+3584056{'01'[reread == 'fails']}{i:04d}" for i in range(150)]
    ids = member_ids(accepted_batch(*numbers))
    [driver] = drivers(outbound)
    text = json.dumps(driver)
    armed: list[int] = []

    def first(real: Any, store: MessageStore, items: Any, **kw: Any) -> None:
        real(store, items[:100], **kw)  # the first transaction landed
        armed.append(1)

    crash_once(monkeypatch, MessageStore, "swap_many", "storage failed on the 2nd claim write",
               when=lambda items, **_: any(c.get("status") is MessageStatus.SENDING
                                           for _, c in items), first=first)  # fmt: skip
    if reread == "fails":
        crash_once(monkeypatch, MessageStore, "get_many", "storage still failing",
                   when=lambda *a, **k: bool(armed))  # fmt: skip
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    SuppressionStore.from_settings().add(SERVICE, numbers[5], keyword="STOP", source="inbound",
                                         now=dt.datetime.now(dt.UTC))  # fmt: skip
    manual_clock.advance(LEASE + 1)
    for count in range(2, 5):
        outbound.invoke(text, dequeue_count=count)

    sent_to = {r["Address"] for c in outbound.upstream() if c["status"] == 200
               for r in c["body"]["Recipients"]}  # fmt: skip
    assert numbers[5] not in sent_to
    assert {record(i).maybe_sent for i in ids} == {False}
