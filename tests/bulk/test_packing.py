"""Coalescing in the sender: which sends share one upstream call, and the guarantees of a pack."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore, PackStore
from shared.names import DELIVERY_REPORTS_TABLE
from shared.outbound import parse_outbound_message
from shared.outbound._records import normalize, pack_key
from shared.storage import table_client
from tests.crash import LEASE, Died, crash_once
from tests.outbound.conftest import (
    REJECTED,
    Outbound,
    call_http,
    fresh_number,
    opt_out,
    padding,
    sms,
    status_of,
)
from tests.waiting import wait_for

NUMBERS = [f"+35840100{i:04d}" for i in range(40)]


def command(**changes: Any) -> Any:
    """A normalized SendMessage command, with envelope or body fields changed."""
    body = sms(NUMBERS[0])
    envelope: dict[str, Any] = {
        "operation": "SendMessage",
        "messageId": "m",
        "customerId": "1001",
        "serviceId": "s-1001-oneway",
    }
    for name, value in changes.items():
        if name in body or name[0].isupper():
            body[name] = value
        else:
            envelope[name] = value
    return parse_outbound_message(json.dumps({**envelope, "body": body}))


BASE = pack_key(command())

MUST_NEVER_PACK: list[tuple[str, dict[str, Any]]] = [
    ("another customer", {"customerId": "1002"}),
    ("another service", {"serviceId": "s-1001-reply"}),
    ("another sender", {"Sender": "Other"}),
    ("other content", {"Content": "Bye $(name)"}),
    ("another protocol", {"Protocol": "WhatsApp"}),
    ("a schedule", {"SendDateTime": "2030-01-01T10:00:00Z"}),
    ("an ad", {"AdMessage": True}),
    ("customer data", {"CustomerData": "invoice 7"}),
    ("the caller's DLR URL", {"DlrUrl": "https://example.com/dlr"}),
    ("transactional", {"transactional": True}),
]


@pytest.mark.parametrize(("what", "changes"), MUST_NEVER_PACK, ids=[w for w, _ in MUST_NEVER_PACK])
def test_sends_that_differ_in_anything_but_recipients_never_share_a_pack_key(
    what: str, changes: dict[str, Any]
) -> None:
    assert pack_key(command(**changes)) != BASE


def test_recipients_personalization_request_id_and_validity_do_not_split_packs() -> None:
    other = command(
        Recipients=[{"Address": NUMBERS[5], "Personalization": {"name": "Bob"}}],
        messageId="m-2",
        validUntil="2031-01-01T00:00:00Z",
    )
    filled = normalize(other, message_id="m-2", customer_id=None, service_id=None)
    assert filled.body.RequestId == "m-2"  # ours: its message id, as normalize fills it in
    assert pack_key(filled) == BASE


def test_a_send_carrying_the_callers_request_id_never_packs() -> None:
    """A pack's call carries the pack's RequestId: the caller's would never reach SmartDialog,
    which could then not refuse its repeat (docs/sending.md, "Idempotency")."""
    assert pack_key(command(RequestId="order-7", messageId="m-2")) is None
    assert pack_key(command(RequestId="order-7", messageId=None)) is None  # as accepted
    assert pack_key(command(RequestId="order-7", messageId="order-7")) is None  # a producer's
    assert pack_key(command(messageId=None)) == BASE  # none: ours is filled in


def test_a_reply_packs_only_with_replies_to_the_same_parent() -> None:
    def reply(parent: str) -> Any:
        return parse_outbound_message(
            json.dumps(
                {"operation": "SendReplyMessage", "messageId": "r", "customerId": "1001",
                 "serviceId": "s-1001-reply", "parentMessageId": parent, "body": sms(NUMBERS[0])}
            )
        )  # fmt: skip

    assert pack_key(reply("p1")) == pack_key(reply("p1"))
    assert pack_key(reply("p1")) != pack_key(reply("p2"))
    assert pack_key(reply("p1")) != pack_key(command(serviceId="s-1001-reply"))


def test_template_sends_pack_only_with_identical_parameters() -> None:
    def template(*params: str) -> Any:
        return parse_outbound_message(
            json.dumps(
                {"operation": "SendWhatsappTemplateMessage", "messageId": "t",
                 "customerId": "1001", "serviceId": "s-1001-oneway",
                 "body": {"TemplateName": "welcome", "Recipients": [{"Address": NUMBERS[0]}],
                          "BodyParameters": list(params)}}
            )
        )  # fmt: skip

    assert pack_key(template("a")) == pack_key(template("a"))
    assert pack_key(template("a")) != pack_key(template("b"))


def test_discussion_replies_and_repeated_addresses_never_pack() -> None:
    reply = parse_outbound_message(
        json.dumps(
            {"operation": "SendDiscussionReplyMessage", "messageId": "d", "customerId": "1001",
             "body": {"ThreadId": "t-1", "Content": "hi"}}
        )
    )  # fmt: skip
    assert pack_key(reply) is None
    twice = command(Recipients=[{"Address": NUMBERS[0]}, {"Address": NUMBERS[0]}])
    assert pack_key(twice) is None


# --- the sender against Azurite and the sandbox ------------------------------------------------


def waiting_for_a_slot(outbound: Outbound, *, period: int = 2) -> None:
    """Use up the quota (one call in ``period`` s, no in-process wait): sends accepted now wait
    for a slot, and packs form while they wait (the quota is the batching window; with room,
    each send goes at once, alone)."""
    from shared import quota
    from shared.quota import DenialReason, QuotaDenied
    from shared.settings import get_settings

    outbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=period, SEND_QUOTA_WAIT_SECONDS=0)
    store = quota.from_settings(get_settings())
    for _ in range(10):  # until told it is full: a grant recorded late (a slow Azurite) is
        decision = store.try_acquire()  # withdrawn and denied LATE, the quota not full
        if isinstance(decision, QuotaDenied) and decision.reason is DenialReason.FULL:
            return
    raise AssertionError("the quota could not be filled")


def park(outbound: Outbound, *, room: bool = False) -> None:
    """Let every queued send meet the full quota once (deferred and indexed), then wait in the
    invocation for a slot from now on. With ``room``, the quota then has room: a grant that went
    stale on a loaded machine is replaced in the invocation, so the pack's call still goes."""
    outbound.run_once()
    outbound.configure(SEND_QUOTA_WAIT_SECONDS=3, **({"QUOTA_CALLS": 2000} if room else {}))


def accept(*addresses: str, content: str = "Hello $(name)", pad: str = "") -> list[str]:
    """POST one SendMessage per address (``pad`` in values no placeholder uses); their ids."""
    ids = []
    for address in addresses:
        body = sms(address, content=content)
        body["Recipients"][0]["Personalization"].update(padding(pad))
        answer = call_http("SendMessage", "POST", body=body)
        assert answer.status == 202, answer.body
        ids.append(answer.body["Id"])
    return ids


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_single_sends_queued_together_go_upstream_in_one_call_each_with_its_own_result(
    outbound: Outbound,
) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:5])

    outbound.drain()

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200]
    sent = calls[0]["body"]["Recipients"]
    assert sorted(r["Address"] for r in sent) == NUMBERS[:5]
    assert all(r["Personalization"] == {"name": "Ada"} for r in sent)
    upstream_id = calls[0]["response"]["MessageId"]
    for message_id, address in zip(ids, NUMBERS, strict=False):
        done = record(message_id)
        assert done.status is MessageStatus.SENT
        assert done.upstream_message_id == upstream_id
        assert done.pack_id is not None
        result = json.loads(done.result or "{}")
        assert [r["Address"] for r in result["Recipients"]] == [address]
    events = [e for e in outbound.events() if e["type"] == "fi.arena.smartdialog.message.sent"]
    assert sorted(e["subject"] for e in events) == sorted(ids)
    assert {e["data"]["requestId"] for e in events} == {calls[0]["body"]["RequestId"]}
    status = call_http(
        "GetMessageStatus", "GET", route_params={"MessageId": ids[2]},
        params={"token": dict(parse_qsl(urlsplit(
            json.loads(json.dumps(status_url(ids[2])))).query))["token"]},
    )  # fmt: skip
    assert status.status == 200
    assert [r["Address"] for r in status.body["Recipients"]] == [NUMBERS[2]]
    assert status.body["RequestId"] == calls[0]["body"]["RequestId"]  # the pack's, as sent


def test_a_members_part_count_is_its_own_not_that_of_the_packs_longest_personalization(
    outbound: Outbound,
) -> None:
    """Upstream's MessagePartCount is the call's (the most of any recipient's): a member of a
    pack records its own estimate when another member's explains upstream's count; the member
    that needs the most keeps upstream's."""
    ids = accept_personalized(outbound, "Ada", "B" * 300)

    outbound.drain()

    calls = outbound.upstream()
    assert [len(c["body"]["Recipients"]) for c in calls] == [2]
    assert calls[0]["response"]["MessagePartCount"] == 2
    short, long = record(ids[0]), record(ids[1])
    assert (short.part_count, long.part_count) == (1, 2)
    assert json.loads(short.result or "{}")["MessagePartCount"] == 1
    assert json.loads(long.result or "{}")["MessagePartCount"] == 2
    parts = {e["subject"]: e["data"]["messagePartCount"] for e in outbound.events()}
    assert parts == {ids[0]: 1, ids[1]: 2}
    status = call_http("GetMessageStatus", "GET", route_params={"MessageId": ids[0]},
                       params=dict(parse_qsl(urlsplit(status_url(ids[0])).query)))  # fmt: skip
    assert status.body["MessagePartCount"] == 1


def accept_personalized(outbound: Outbound, *names: str) -> list[str]:
    """One SendMessage "Hi $(name)" per name, to NUMBERS in order, waiting to pack."""
    waiting_for_a_slot(outbound)
    ids = []
    for address, name in zip(NUMBERS, names, strict=False):
        body = sms(address, content="Hi $(name)")
        body["Recipients"][0]["Personalization"] = {"name": name}
        answer = call_http("SendMessage", "POST", body=body)
        assert answer.status == 202, answer.body
        ids.append(answer.body["Id"])
    return ids


def test_a_part_count_no_members_estimate_explains_is_every_members(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream counts more parts than any member's estimate (it fills a placeholder itself,
    which an estimate cannot know): nobody's estimate explains it, so every member keeps it."""
    from shared.outbound._attempt import Upstream

    real = Upstream.send

    def counting_more(self: Upstream, command: Any) -> dict[str, Any]:
        answer = real(self, command)
        answer["MessagePartCount"] += 1  # one more than the longest text's
        return answer

    monkeypatch.setattr(Upstream, "send", counting_more)
    ids = accept_personalized(outbound, "Ada", "B" * 300)  # estimates 1 and 2

    outbound.drain()

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [2]
    assert [record(i).part_count for i in ids] == [3, 3]
    assert [json.loads(record(i).result or "{}")["MessagePartCount"] for i in ids] == [3, 3]
    parts = {e["subject"]: e["data"]["messagePartCount"] for e in outbound.events()}
    assert parts == {ids[0]: 3, ids[1]: 3}


def status_url(message_id: str) -> str:
    from shared.outbound._service import SendService
    from shared.settings import get_settings

    return SendService(get_settings()).status_url(message_id)


def test_different_contents_are_never_packed_together(outbound: Outbound) -> None:
    waiting_for_a_slot(outbound)
    accept(NUMBERS[0], NUMBERS[1], content="One $(name)")
    accept(NUMBERS[2], content="Two $(name)")

    outbound.drain()

    calls = outbound.upstream()
    assert sorted(len(c["body"]["Recipients"]) for c in calls) == [1, 2]


def test_pack_size_is_capped_by_the_setting(outbound: Outbound) -> None:
    waiting_for_a_slot(outbound)
    outbound.configure(PACK_MAX_RECIPIENTS=3)
    accept(*NUMBERS[:7])

    outbound.drain()

    sizes = sorted(len(c["body"]["Recipients"]) for c in outbound.upstream())
    assert sum(sizes) == 7
    assert max(sizes) <= 3


def test_a_leader_goes_on_to_lead_the_next_packs_of_its_key_in_the_same_invocation(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    outbound.configure(PACK_MAX_RECIPIENTS=3)
    ids = accept(*NUMBERS[:7])

    outbound.invoke(record(ids[0]).command)

    sizes = [len(c["body"]["Recipients"]) for c in outbound.upstream()]
    assert sizes == [3, 3, 1]  # the last one alone ends the sweep (nothing left to pack)
    assert {record(i).status for i in ids} == {MessageStatus.SENT}
    outbound.drain()  # every other copy finds its record final
    assert len(outbound.upstream()) == 3


def test_a_sweep_goes_on_past_a_message_that_ended_between_its_query_and_its_claim(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """The next one the sweep found was cancelled (or sent by another leader) before the sweep
    claimed it: the sweep leads the one after, rather than stop and leave the rest of the lane
    to their backstops (nothing of theirs is back on the queue)."""
    outbound.configure(PACK_MAX_RECIPIENTS=3)
    ids = accept(*NUMBERS[:7])
    real = MessageStore.lane_queued
    cancelled: list[str] = []

    def cancelled_meanwhile(self: MessageStore, partition: str, limit: int) -> Any:
        found = real(self, partition, limit)
        if limit == 1 and found and not cancelled:  # the sweep's look for the next leader
            answer = call_http(
                "CancelMessage", "DELETE", route_params={"MessageId": found[0].message_id}
            )
            assert answer.status == 200, answer.body
            cancelled.append(found[0].message_id)
        return found

    monkeypatch.setattr(MessageStore, "lane_queued", cancelled_meanwhile)
    outbound.invoke(record(ids[0]).command)

    [gone] = cancelled  # one of the lane's, after the first pack (the lane's order is its rows')
    sizes = [len(c["body"]["Recipients"]) for c in outbound.upstream()]
    assert sizes == [3, 3]
    assert record(gone).status is MessageStatus.CANCELLED
    assert {record(i).status for i in ids if i != gone} == {MessageStatus.SENT}


def test_after_a_send_alone_its_leader_sends_the_next_waiting_ones_of_its_key_to_the_same_number(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """The same text to the same number again never shares a call, so each leads itself: while
    the quota has room, the one that was sent leads the next ones waiting in its key's index in
    the same invocation, rather than leave each to its own queue message."""
    waiting_for_a_slot(outbound)
    for index in range(3):
        outbound.enqueue(
            {"operation": "SendMessage", "messageId": f"same-{index}", "body": sms(NUMBERS[0])}
        )
    park(outbound)  # each met the full quota: recorded and indexed under one pack key
    keys = {record(f"same-{i}").pack_key for i in range(3)}
    assert len(keys) == 1
    assert None not in keys
    outbound.configure(QUOTA_CALLS=10)  # room again

    outbound.invoke(record("same-0").command)

    calls = outbound.upstream()
    assert [c["body"]["RequestId"] for c in calls] == ["same-0", "same-1", "same-2"]
    assert {record(f"same-{i}").status for i in range(3)} == {MessageStatus.SENT}


def test_a_queued_send_whose_request_id_is_its_message_id_goes_alone_with_it(
    outbound: Outbound,
) -> None:
    """A producer's RequestId equal to its messageId is still the producer's: packed, it would
    never reach SmartDialog, and the same order put again without a messageId (a derived id,
    alone, with that RequestId) would be sent twice. It goes alone; the repeat is refused."""
    order = f"order-{uuid.uuid4().hex[:8]}"
    waiting_for_a_slot(outbound)
    outbound.enqueue({"operation": "SendMessage", "messageId": "same-text",
                      "body": sms(NUMBERS[1])})  # fmt: skip
    outbound.enqueue({"operation": "SendMessage", "messageId": order,
                      "body": sms(NUMBERS[0], RequestId=order)})  # fmt: skip
    park(outbound)  # both met the full quota: only a packable one is recorded and indexed
    assert MessageStore.from_settings().get(order) is None
    outbound.configure(QUOTA_CALLS=10)

    outbound.drain()
    outbound.enqueue({"operation": "SendMessage", "body": sms(NUMBERS[0], RequestId=order)})
    outbound.drain()

    calls = [(c["body"]["RequestId"], [r["Address"] for r in c["body"]["Recipients"]],
              c["status"]) for c in outbound.upstream()]  # fmt: skip
    assert (order, [NUMBERS[0]], 200) in calls
    assert (order, [NUMBERS[0]], 409) in calls
    assert not [c for c in calls if NUMBERS[0] in c[1] and c[0] != order]
    assert record(order).upstream_request_id == order


def test_packable_sends_share_their_lane_which_is_their_index(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    from shared.messages import in_lane, message_keys

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])  # within one minute (the clock stands still)
    other = accept(NUMBERS[3], content="Another text for $(name)")
    manual_clock.advance(3)  # the quota's window (2 s) ends

    assert all(in_lane(i) for i in ids + other)
    assert len({message_keys(i)[0] for i in ids}) == 1  # one key, one minute: one partition
    assert message_keys(other[0])[0] != message_keys(ids[0])[0]
    key = record(ids[0]).pack_key
    assert key is not None
    assert PackStore.from_settings().candidates(key, limit=10) == []  # no index rows
    outbound.drain()

    calls = outbound.upstream()
    assert sorted(len(c["body"]["Recipients"]) for c in calls) == [1, 3]
    assert {record(i).status for i in ids + other} == {MessageStatus.SENT}


def test_sends_accepted_either_side_of_a_minute_still_go_in_one_pack(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    from shared.messages import message_keys

    manual_clock.advance(60 - manual_clock.now() % 60 - 0.05)  # just before a new minute
    ids = accept(*NUMBERS[:2])
    manual_clock.advance(0.1)
    ids += accept(*NUMBERS[2:4])
    assert len({message_keys(i)[0] for i in ids}) == 2  # two lanes

    outbound.drain()

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [4]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


@pytest.mark.parametrize("seconds_to_next_minute", [30.0, -0.05])
def test_a_lone_send_reads_the_lanes_that_have_opened_not_the_next_minutes_before_it_opens(
    outbound: Outbound,
    manual_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    seconds_to_next_minute: float,
) -> None:
    """Its leader looks for partners in the lanes of the minute before and its own, and in the
    next minute's only once that lane has opened (30 s before it: not read; 0.05 s after: read);
    a lane not open yet holds no send accepted here, and it has its own trigger."""
    from shared.messages import lane_partition

    manual_clock.advance((30 - manual_clock.now() % 60) % 60)  # half a minute into a minute
    [sent] = accept(NUMBERS[0], content=f"Alone {uuid.uuid4().hex} $(name)")
    manual_clock.advance(30 - seconds_to_next_minute)
    real = MessageStore.lane_queued
    read: list[str] = []

    def counted(self: MessageStore, partition: str, limit: int) -> Any:
        read.append(partition)
        return real(self, partition, limit)

    monkeypatch.setattr(MessageStore, "lane_queued", counted)
    outbound.drain()

    assert record(sent).status is MessageStatus.SENT
    key, accepted = record(sent).pack_key, record(sent).created_at
    assert key is not None
    lane = [lane_partition(key, accepted + dt.timedelta(minutes=m)) for m in (-1, 0, 1)]
    opened = seconds_to_next_minute < 0
    assert (lane[2] in read) is opened
    assert set(read) == set(lane if opened else lane[:2])


def test_a_lanes_leader_accepted_by_a_clock_ahead_of_its_senders_still_packs_its_lane(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """The sender's clock two minutes behind the one that accepted the lane (another host's):
    its leader still reads its own lane, which has not opened by this clock: one pack."""
    ids = accept(*NUMBERS[:3], content=f"Ahead {uuid.uuid4().hex} $(name)")
    manual_clock.advance(-120)

    outbound.drain()

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [3]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_each_member_gets_its_own_delivery_reports_through_the_packs_dlr_url(
    outbound: Outbound,
) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    outbound.drain()
    # Reports of earlier tests' sends may still arrive in the sandbox's log: only this pack's.
    upstream_id = record(ids[0]).upstream_message_id

    def this_packs() -> list[dict[str, Any]]:
        log = outbound.sandbox.state.snapshot("delivery_reports")
        return [r for r in log if r["messageId"] == upstream_id]

    wait_for(lambda: len(this_packs()) >= 3, what="the pack's 3 delivery reports")

    for report in this_packs():
        parts = urlsplit(report["url"])  # our DLR URL (localhost:7071 is not up): replay it
        answer = call_http(
            "DeliveryReport", "GET",
            route_params={"MessageId": unquote(parts.path.rsplit("/", 1)[-1])},
            params=dict(parse_qsl(parts.query)),
        )  # fmt: skip
        assert answer.status == 200, answer.body
        assert answer.body["status"] == "recorded"

    for message_id in ids:
        _, slots = MessageStore.from_settings().get_with_slots(message_id)
        assert [s.status for s in slots] == ["delivered"]
    delivered = [e for e in outbound.events() if e["type"].endswith("delivery")]
    assert sorted(e["subject"] for e in delivered) == sorted(ids)

    # A pack's report about none of its members has no message to be kept under: 404, not
    # stored (docs/sending.md, "Delivery reports").
    parts = urlsplit(this_packs()[0]["url"])
    pack_id = unquote(parts.path.rsplit("/", 1)[-1])
    stranger = {**dict(parse_qsl(parts.query)), "recipientId": "r-0", "recipient": "+358409999999"}
    answer = call_http(
        "DeliveryReport", "GET", route_params={"MessageId": pack_id}, params=stranger
    )
    assert answer.status == 404, answer.body
    reports = table_client(DELIVERY_REPORTS_TABLE)
    assert list(reports.query_entities(f"PartitionKey eq '{pack_id}'")) == []


def test_retry_after_a_crash_past_the_call_resends_the_same_pack_and_nothing_twice(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    texts = [record(i).command for i in ids]
    park(outbound, room=True)
    crash_once(
        monkeypatch, PackStore, "save", "worker died after upstream accepted the pack",
        when=lambda pack: bool(pack.recipient_ids),
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        outbound.invoke(texts[0])
    assert {record(i).status for i in ids} == {MessageStatus.SENDING}
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out
    for text in texts:
        outbound.invoke(text, dequeue_count=2)

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200, 409]
    assert calls[0]["body"]["RequestId"] == calls[1]["body"]["RequestId"]
    assert len(outbound.sandbox.state.snapshot("messages")) == 1
    for message_id in ids:
        done = record(message_id)
        assert done.status is MessageStatus.SENT
        assert done.duplicate
        assert done.upstream_message_id == calls[0]["response"]["MessageId"]


def test_a_409_whose_original_lists_the_numbers_as_bare_digits_sends_no_member_again(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """SmartDialog may write a number without its '+' (as in its reports): each member still
    finds its recipient in the 409's original, and none is handed back to go again."""
    numbers = [f"+491511234567{i}" for i in range(3)]  # bare, not read in FI (358... would be)
    waiting_for_a_slot(outbound)
    ids = accept(*numbers)
    texts = [record(i).command for i in ids]
    park(outbound, room=True)
    crash_once(
        monkeypatch, PackStore, "save", "worker died after upstream accepted the pack",
        when=lambda pack: bool(pack.recipient_ids),
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        outbound.invoke(texts[0])
    state = outbound.sandbox.state
    with state.lock:
        for _, answer in state.request_ids.values():
            for recipient in answer["Recipients"]:
                recipient["Address"] = recipient["Address"].lstrip("+")
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out
    for text in texts:
        outbound.invoke(text, dequeue_count=2)

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200, 409]
    assert len(state.snapshot("messages")) == 1
    for message_id, address in zip(ids, numbers, strict=True):
        done = record(message_id)
        assert (done.status, done.duplicate) == (MessageStatus.SENT, True)
        assert [r["Address"] for r in json.loads(done.result or "{}")["Recipients"]] == [
            address.lstrip("+")
        ]


def test_members_of_a_pack_whose_leader_died_before_recording_it_pack_again(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    ids = accept(*NUMBERS[:4])
    texts = [record(i).command for i in ids]
    crash_once(monkeypatch, PackStore, "save", "between the claims and the pack", error=Died)
    with pytest.raises(Died):
        outbound.invoke(texts[0])
    assert {record(i).status for i in ids} == {MessageStatus.SENDING}
    manual_clock.advance(LEASE + 1)  # the crashed worker's claims run out
    for text in texts[1:]:  # the members' copies: no call was made for them, they wait again
        outbound.invoke(text, dequeue_count=2)
    assert {record(i).status for i in ids[1:]} == {MessageStatus.QUEUED}
    outbound.invoke(texts[0], dequeue_count=2)  # the leader's claim: it goes alone
    assert record(ids[0]).maybe_sent  # though it cannot have called: conservatively
    manual_clock.advance(2)
    outbound.drain()  # the members' copies, back a second later: one leads the others

    calls = outbound.upstream()
    assert sorted(len(c["body"]["Recipients"]) for c in calls) == [1, 3]  # packed again
    assert calls[0]["body"]["RequestId"] == ids[0]  # the leader, alone with its own
    assert {record(i).status for i in ids} == {MessageStatus.SENT}
    assert {record(i).attempts for i in ids[1:]} == {1}  # the lost claim was not an attempt


def _crash_before_the_members_events(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str]]:
    """Three packable sends whose leader's worker dies after the pack's call and the members'
    records, before their events; their ids and queue texts."""
    from shared.outbound._ports import send_ports
    from shared.settings import get_settings

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    texts = [record(i).command for i in ids]
    park(outbound, room=True)
    events = send_ports(get_settings()).events
    crash_once(monkeypatch, events, "send_message", "worker died before the events went out")
    with pytest.raises(RuntimeError):
        outbound.invoke(texts[0])
    return ids, texts


def test_a_crash_between_the_members_records_and_their_events_sends_them_on_the_retry(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    ids, texts = _crash_before_the_members_events(outbound, monkeypatch)
    # The members are recorded sent and announced in one write; the leader is not recorded.
    assert [record(i).status for i in ids] == [MessageStatus.SENDING] + [MessageStatus.SENT] * 2
    assert all(record(i).announced for i in ids[1:])
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out
    for text in texts:
        outbound.invoke(text, dequeue_count=2)

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200, 409]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}
    sent = [e for e in outbound.events() if e["type"].endswith(".sent")]
    assert sorted({e["subject"] for e in sent}) == sorted(ids)


def test_a_crashed_leader_that_comes_back_expired_still_announces_the_packs_members(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    from shared.settings import get_settings

    ids, texts = _crash_before_the_members_events(outbound, monkeypatch)
    manual_clock.advance(get_settings().send_validity_seconds + 1)  # its copy comes back late
    outbound.invoke(texts[0], dequeue_count=2)

    assert len(outbound.upstream()) == 1  # not retried: expired
    assert record(ids[0]).status is MessageStatus.FAILED
    sent = [e for e in outbound.events() if e["type"].endswith(".sent")]
    # (an event that went out before the crash goes again, with the same id)
    assert sorted({e["subject"] for e in sent}) == sorted(ids[1:])


@pytest.mark.parametrize("answer", ["refused", "still failing"])
def test_a_crashed_leader_whose_retry_ends_without_a_409_still_announces_the_packs_members(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock, answer: str
) -> None:
    """Only a 409 to the pack's retry used to send the events the crashed run left out: a
    retry that upstream refuses, or whose transient failure is its last attempt, ends the pack
    for good, and its members recorded sent get their events then."""
    import httpx

    from shared.outbound._attempt import Upstream
    from shared.smartdialog import BadRequestError, InternalServerError

    ids, texts = _crash_before_the_members_events(outbound, monkeypatch)
    outbound.configure(SEND_MAX_ATTEMPTS=2)  # the retry is the leader's last attempt
    error, status = (BadRequestError, 400) if answer == "refused" else (InternalServerError, 503)

    def fail(self: Upstream, command: Any) -> Any:
        raise error(
            "upstream said no", status_code=status, body={"errorMessage": "no"},
            headers=httpx.Headers(), operation_id="SendMessage", method="POST", path="/messages",
        )  # fmt: skip

    monkeypatch.setattr(Upstream, "send", fail)
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out
    outbound.invoke(texts[0], dequeue_count=2)

    assert record(ids[0]).status is MessageStatus.FAILED
    assert [record(i).status for i in ids[1:]] == [MessageStatus.SENT] * 2
    sent = [e for e in outbound.events() if e["type"].endswith(".sent")]
    assert sorted({e["subject"] for e in sent}) == sorted(ids[1:])


def test_a_member_upstream_rejects_fails_alone_and_the_rest_go_in_a_new_pack(
    outbound: Outbound,
) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(NUMBERS[0], REJECTED, NUMBERS[1])

    outbound.drain()

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [400, 200]
    assert calls[0]["body"]["RequestId"] != calls[1]["body"]["RequestId"]
    assert sorted(r["Address"] for r in calls[1]["body"]["Recipients"]) == NUMBERS[:2]
    assert record(ids[1]).status is MessageStatus.FAILED
    assert record(ids[1]).failure.code == "upstream-rejected"  # type: ignore[union-attr]
    assert [record(i).status for i in (ids[0], ids[2])] == [MessageStatus.SENT] * 2
    assert [d["messageId"] for d in outbound.dead_letters()] == [ids[1]]


def test_a_refusal_naming_a_member_in_bare_digits_blames_that_member(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream may write the number it refuses without its '+': 4790012345 is +4790012345
    (bare digits read both ways, as in its answers and reports), not a number read in Finland."""
    import sandbox.app as sandbox_app

    norway, original = "+4790012345", sandbox_app.Sandbox._send

    def send(self: Any, call: Any, parts: int, pascal_case: bool) -> Any:
        if norway in [r["Address"] for r in call.body["Recipients"]]:
            raise sandbox_app.ApiError(400, f"recipient rejected: {norway[1:]}")
        return original(self, call, parts, pascal_case)

    monkeypatch.setattr(sandbox_app.Sandbox, "_send", send)
    waiting_for_a_slot(outbound)
    ids = accept(NUMBERS[0], norway, NUMBERS[1])

    outbound.drain()

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [400, 200]  # the others in a new pack, not alone
    assert sorted(r["Address"] for r in calls[1]["body"]["Recipients"]) == NUMBERS[:2]
    assert record(ids[1]).failure.code == "upstream-rejected"  # type: ignore[union-attr]
    assert [record(i).status for i in (ids[0], ids[2])] == [MessageStatus.SENT] * 2


def test_a_member_whose_recipient_opted_out_after_it_was_accepted_leaves_its_pack(
    outbound: Outbound,
) -> None:
    """The STOP came while the sends waited for the quota: that member fails ``suppressed``
    (its event, its dead letter) and never goes upstream; the others go in one call."""
    waiting_for_a_slot(outbound)
    phone = fresh_number()
    ids = accept(NUMBERS[0], phone, NUMBERS[1])
    opt_out(phone)

    outbound.drain()

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200]
    assert sorted(r["Address"] for r in calls[0]["body"]["Recipients"]) == NUMBERS[:2]
    refused = record(ids[1])
    assert (refused.status, refused.attempts) == (MessageStatus.FAILED, 0)
    assert refused.failure is not None
    assert refused.failure.code == "suppressed"
    assert [record(i).status for i in (ids[0], ids[2])] == [MessageStatus.SENT] * 2
    failed = [e for e in outbound.events() if e["type"].endswith(".failed")]
    assert [(e["subject"], e["data"]["error"]["code"]) for e in failed] == [(ids[1], "suppressed")]
    assert [d["messageId"] for d in outbound.dead_letters()] == [ids[1]]


def test_a_member_leaves_its_pack_for_a_stop_after_acceptance_with_a_clock_an_hour_ahead(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """A pack's check reads the opt-outs the storage stamped since its members were recorded:
    a clock an hour ahead of the storage's (a test's, a host's) read none and sent the member."""
    manual_clock.advance(3600)
    waiting_for_a_slot(outbound)
    phone = fresh_number()
    ids = accept(NUMBERS[0], phone, NUMBERS[1])
    opt_out(phone)

    outbound.drain()

    sent = sorted(a["Address"] for c in outbound.upstream() for a in c["body"]["Recipients"])
    assert sent == NUMBERS[:2]
    assert record(ids[1]).failure.code == "suppressed"  # type: ignore[union-attr]


def test_a_queue_only_member_whose_recipient_opted_out_while_indexed_leaves_its_pack(
    outbound: Outbound,
) -> None:
    """Queue-only sends parked for the quota (recorded, indexed: checked then), then a STOP."""
    waiting_for_a_slot(outbound, period=3)
    phone = fresh_number()
    for index, address in enumerate((NUMBERS[0], phone, NUMBERS[1])):
        outbound.enqueue({"operation": "SendMessage", "messageId": f"ix-{index}",
                          "body": sms(address)})  # fmt: skip
    park(outbound)
    opt_out(phone)

    outbound.drain()

    calls = outbound.upstream()
    assert sorted(a["Address"] for c in calls for a in c["body"]["Recipients"]) == NUMBERS[:2]
    assert record("ix-1").status is MessageStatus.FAILED
    assert record("ix-1").failure.code == "suppressed"  # type: ignore[union-attr]
    assert [record(f"ix-{i}").status for i in (0, 2)] == [MessageStatus.SENT] * 2
    assert [d["messageId"] for d in outbound.dead_letters()] == ["ix-1"]


@pytest.mark.parametrize(
    ("status", "said"),
    [(403, "Service is not allowed to send"), (422, "Sender is not allowed")],
)
def test_a_refusal_of_a_packs_request_fails_every_member_in_one_call(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, status: int, said: str
) -> None:
    """A 403 or 422 naming no recipient is about the request (the service, its sender): every
    member fails at once, as a bulk pack's do; each went upstream again alone, refused the
    same way (N+1 calls)."""
    import sandbox.app as sandbox_app

    def refuse(self: Any, call: Any, parts: int, pascal_case: bool) -> Any:
        raise sandbox_app.ApiError(status, said)

    monkeypatch.setattr(sandbox_app.Sandbox, "_send", refuse)
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:6])

    outbound.drain()

    calls = outbound.upstream()
    assert [(c["status"], len(c["body"]["Recipients"])) for c in calls] == [(status, 6)]
    for message_id in ids:
        failed = record(message_id)
        assert failed.status is MessageStatus.FAILED
        assert failed.failure is not None
        assert failed.failure.code == "upstream-rejected"
    events = [e for e in outbound.events() if e["type"].endswith(".failed")]
    assert sorted(e["subject"] for e in events) == sorted(ids)
    assert sorted(d["messageId"] for d in outbound.dead_letters()) == sorted(ids)


def test_a_cancelled_member_stays_out_and_the_others_are_sent(outbound: Outbound) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    cancelled = call_http("CancelMessage", "DELETE", route_params={"MessageId": ids[1]})
    assert cancelled.status == 200

    outbound.drain()

    calls = outbound.upstream()
    assert len(calls) == 1
    assert sorted(r["Address"] for r in calls[0]["body"]["Recipients"]) == [NUMBERS[0], NUMBERS[2]]
    assert record(ids[1]).status is MessageStatus.CANCELLED
    assert status_of(status_url(ids[1])).status == 410


def test_queue_only_sends_waiting_for_the_quota_coalesce_when_a_slot_frees(
    private_outbound: Callable[..., Outbound],
) -> None:
    outbound = private_outbound()
    outbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=1, SEND_QUOTA_WAIT_SECONDS=0)
    for index in range(5):
        outbound.enqueue(
            {"operation": "SendMessage", "messageId": f"q-{index}", "body": sms(NUMBERS[index])}
        )

    outbound.drain(timeout=20)

    calls = outbound.upstream()
    assert sum(len(c["body"]["Recipients"]) for c in calls) == 5
    assert len(calls) <= 3  # the first alone; the others wait for a slot together
    assert all(record(f"q-{i}").status is MessageStatus.SENT for i in range(5))


def test_a_lane_of_sends_of_non_ascii_text_is_claimed_in_transactions_that_fit_and_sent(
    outbound: Outbound,
) -> None:
    """Thirty sends of 30,000 "ä" in values (60 kB as UTF-8, 180 kB as the JSON the Tables SDK
    sends: each "ä" is "\\u00e4") share a lane. Sized by UTF-8, the leader's claim of them all was
    one ~5 MB transaction: refused (413), every member led in turn and was refused again,
    nothing was ever sent."""
    ids = accept(*NUMBERS[:30], pad="ä" * 30_000)

    outbound.drain(timeout=60)

    assert {record(i).status for i in ids} == {MessageStatus.SENT}
    assert sum(len(c["body"]["Recipients"]) for c in outbound.upstream()) == 30


def test_a_queue_only_send_put_back_for_the_quota_is_still_packable_when_read_back(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its copy put back carried the RequestId normalize had filled in, without the mark that
    made it ours: read back, it counted as a caller's (never packed), came back
    SEND_QUOTA_WAIT_SECONDS early and led a call of its own before the slot freed. The copy
    leaves that RequestId out (normalize, and ec7daff's, fill in the same), its fingerprint the
    record's."""
    from shared.outbound._models import request_fingerprint
    from shared.outbound._ports import send_ports
    from shared.settings import get_settings

    waiting_for_a_slot(outbound, period=60)  # full for the whole test, however slow the host
    outbound.enqueue({"operation": "SendMessage", "messageId": "rule-like-1",
                      "body": sms(NUMBERS[0])})  # fmt: skip
    queue = send_ports(get_settings()).outbound  # the sender's port to the outbound queue
    put_back: list[str] = []
    real = queue.send_message

    def kept(text: str, *args: Any, **kwargs: Any) -> Any:
        put_back.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(queue, "send_message", kept)

    outbound.run_once()  # recorded and indexed, put back for the full quota
    outbound.invoke(put_back[-1])  # its copy, read back: put back again, the quota still full

    assert outbound.upstream() == []
    copies = [parse_outbound_message(t) for t in put_back]
    assert [c.messageId for c in copies] == ["rule-like-1", "rule-like-1"]
    assert [c.body.RequestId for c in copies] == [None, None]
    settings = get_settings()
    again = normalize(copies[-1], message_id="rule-like-1", customer_id=settings.customer_id,
                      service_id=settings.service_id)  # fmt: skip
    assert again.body.RequestId == "rule-like-1"
    assert pack_key(again) is not None  # read back, ours: packable
    assert request_fingerprint(again) == record("rule-like-1").fingerprint
