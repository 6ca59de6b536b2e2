"""A call whose build fails (``Upstream.prepare``: recipients joined, numbers in E.164, our DLR
URL signed) before its quota grant: on every path the claims go back untried (not counted, not
marked as maybe sent), nothing reaches upstream, and the host's retry sends it once (b71a101
moved the build before the grant; before, a failing build came after the claim was marked as
possibly sent, and its members waited out their lease as maybe sent)."""

from __future__ import annotations

import json

import pytest

from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, PackStore
from shared.outbound._attempt import Upstream
from tests.bulk.test_batch_packs import accepted_batch, drivers, member_ids
from tests.bulk.test_packing import NUMBERS, accept, park, record, waiting_for_a_slot
from tests.crash import crash_once
from tests.outbound.conftest import DELIVERED, Outbound
from tests.outbound.test_sender import send


def assert_handed_back(records: list[MessageRecord]) -> None:
    for r in records:
        assert r.status is MessageStatus.QUEUED, r
        assert r.attempts == 0, r
        assert not r.maybe_sent, r


def test_a_single_send_whose_build_fails_is_handed_back_then_sent_once(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_once(monkeypatch, Upstream, "prepare", "build failed")
    text = json.dumps(send("m-build", DELIVERED))
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    assert_handed_back([record("m-build")])
    assert record("m-build").lease_until is None
    assert outbound.upstream() == []

    outbound.invoke(text, dequeue_count=2)
    assert record("m-build").status is MessageStatus.SENT
    assert len(outbound.upstream()) == 1


def test_a_lane_pack_whose_build_fails_is_dissolved_then_formed_again_and_sent_once(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    leader = record(ids[0]).command
    park(outbound)
    manual_clock.advance(1)
    crash_once(monkeypatch, Upstream, "prepare", "build failed")
    with pytest.raises(RuntimeError):
        outbound.invoke(leader)
    assert_handed_back([record(i) for i in ids])
    assert [record(i).pack_id for i in ids] == [None] * 3
    assert outbound.upstream() == []

    outbound.invoke(leader, dequeue_count=2)
    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [3]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_a_bulk_pack_whose_build_fails_keeps_its_pack_and_request_id_and_is_sent_once(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = accepted_batch(*NUMBERS[:3])
    ids = member_ids(batch)
    [driver] = drivers(outbound)
    crash_once(monkeypatch, Upstream, "prepare", "build failed")
    with pytest.raises(RuntimeError):
        outbound.invoke(json.dumps(driver))
    assert_handed_back([record(i) for i in ids])
    pack = PackStore.from_settings().get(driver["packId"])
    assert pack is not None
    assert pack.lease_until is None  # its driver's lease given back
    assert outbound.upstream() == []

    outbound.invoke(json.dumps(driver), dequeue_count=2)
    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200]
    assert calls[0]["body"]["RequestId"] == driver["packId"]
    for r in map(record, ids):
        assert r.status is MessageStatus.SENT
        assert not r.maybe_sent
