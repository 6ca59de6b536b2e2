"""Upstream's answer lists a send's recipients in another order than sent, or leaves one out:
each of our recipients gets its upstream id by number, never by position, for a single send
and for a pack's members; delivery reports, their events and the status answer follow."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

import sandbox.app as sandbox_app
from shared.messages import MessageStatus, MessageStore
from tests.outbound.conftest import Outbound, call_http, sms, status_of

A, B = "+358401234567", "+358401234568"
C = "+358401234569"


def answering(monkeypatch: pytest.MonkeyPatch, change: Callable[[list[Any]], list[Any]]) -> None:
    """The sandbox's send answers list its recipients as ``change`` makes them."""
    original = sandbox_app.Sandbox._send

    def send(self: Any, call: Any, parts: int, pascal_case: bool) -> Any:
        response = original(self, call, parts, pascal_case)
        key = "Recipients" if pascal_case else "recipients"
        response.body[key] = change(response.body[key])
        return response

    monkeypatch.setattr(sandbox_app.Sandbox, "_send", send)


def report(dlr_url: str, **params: str) -> dict[str, Any]:
    """Replay a delivery report to our DLR URL ``dlr_url`` (what SmartDialog calls)."""
    parts = urlsplit(dlr_url)
    token = dict(parse_qsl(parts.query))["token"]
    answer = call_http("DeliveryReport", "GET", route_params={"MessageId": parts.path.rsplit(
        "/", 1)[-1]}, params={"token": token, **params})  # fmt: skip
    assert answer.status == 200, answer.body
    return dict(answer.body)


def slot_ids(message_id: str) -> dict[str, str | None]:
    _, slots = MessageStore.from_settings().get_with_slots(message_id)
    return {s.address: s.upstream_recipient_id for s in slots}


def statuses(location: str) -> dict[str, str | None]:
    """Each recipient's status in the status answer, by address (a template's: camelCase)."""
    body = status_of(location).body
    listed = body.get("recipients") or body.get("Recipients")
    return {r.get("address") or r["Address"]: r.get("status") or r.get("Status") for r in listed}


@pytest.mark.parametrize("shape", ["reversed", "first-left-out"])
def test_a_template_sends_reports_land_on_their_own_recipient_whatever_upstreams_order(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    answering(monkeypatch, lambda listed: listed[::-1] if shape == "reversed" else listed[1:])
    accepted = call_http("SendWhatsappTemplateMessage", "POST", body={
        "TemplateName": "welcome", "Recipients": [{"Address": A}, {"Address": B}]})  # fmt: skip
    assert accepted.status == 202, accepted.body
    outbound.drain()
    [call] = outbound.upstream("SendWhatsappTemplateMessage")
    ids = {r["address"]: r["id"] for r in call["response"]["recipients"]}
    message_id, location = accepted.body["Id"], accepted.headers["Location"]

    assert slot_ids(message_id) == {A: ids.get(A), B: ids[B]}  # A left out: no id
    assert statuses(location) == dict.fromkeys(ids, "sent")

    dlr = call["body"]["DlrUrl"]
    assert report(dlr, recipientId=ids[B], recipient=B, status="read")["recipientStatus"] == (
        "delivered"
    )
    assert report(dlr, recipient=A, status="failed")["recipientStatus"] == "undelivered"
    moved = [(e["data"]["recipient"], e["data"]["status"]) for e in outbound.events()
             if e["type"].endswith("delivery")]  # fmt: skip
    assert sorted(moved) == [(A, "undelivered"), (B, "delivered")]
    now = {A: "undelivered", B: "delivered"}
    assert statuses(location) == {address: now[address] for address in ids}


def test_a_report_on_a_row_whose_ids_an_earlier_release_gave_by_position_finds_its_number(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releases up to ec7daff stored upstream's ids by position: with upstream's answer in
    another order, A's slot holds B's id. A report naming B's id and B's number is B's."""
    answering(monkeypatch, lambda listed: listed[::-1])
    accepted = call_http("SendWhatsappTemplateMessage", "POST", body={
        "TemplateName": "welcome", "Recipients": [{"Address": A}, {"Address": B}]})  # fmt: skip
    outbound.drain()
    [call] = outbound.upstream("SendWhatsappTemplateMessage")
    ids = [r["id"] for r in call["response"]["recipients"]]  # [B's, A's]
    store = MessageStore.from_settings()
    record = store.get(accepted.body["Id"])
    assert record is not None
    assert store.swap(record, recipient_ids=dict(enumerate(ids))) is not None  # as ec7daff wrote
    assert slot_ids(record.message_id) == {A: ids[0], B: ids[1]}

    report(call["body"]["DlrUrl"], recipientId=ids[0], recipient=B, status="delivered")

    _, slots = store.get_with_slots(record.message_id)
    assert {s.address: str(s.status) for s in slots} == {A: "pending", B: "delivered"}


@pytest.mark.parametrize("leader_has_the_gap", [True, False])
def test_a_pack_member_whose_first_recipient_upstream_left_out_gets_no_id_for_it(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, leader_has_the_gap: bool
) -> None:
    """A pack member's share of the answer closes the gap upstream left: its slots still get
    their ids by number (the leader's write and the lane's shared write alike)."""
    from tests.bulk.test_packing import waiting_for_a_slot

    waiting_for_a_slot(outbound)
    answering(monkeypatch, lambda listed: [r for r in listed if r["Address"] != A])
    bodies = [sms(A, B), sms(C)] if leader_has_the_gap else [sms(C), sms(A, B)]
    accepted = [call_http("SendMessage", "POST", body=body) for body in bodies]
    assert [a.status for a in accepted] == [202, 202]
    outbound.drain()
    [call] = outbound.upstream()
    assert len(call["body"]["Recipients"]) == 3  # one pack
    ids = {r["Address"]: r["Id"] for r in call["response"]["Recipients"]}
    gap = accepted[0 if leader_has_the_gap else 1]
    store = MessageStore.from_settings()
    assert store.get(gap.body["Id"]).status is MessageStatus.SENT  # type: ignore[union-attr]

    assert slot_ids(gap.body["Id"]) == {A: None, B: ids[B]}
    pack_dlr = call["body"]["DlrUrl"]
    report(pack_dlr, recipientId=ids[B], recipient=B, status="delivered")
    _, slots = store.get_with_slots(gap.body["Id"])
    assert {s.address: str(s.status) for s in slots} == {A: "pending", B: "delivered"}
    assert statuses(gap.headers["Location"]) == {B: "delivered"}
    result = json.loads(store.get(gap.body["Id"]).result or "{}")  # type: ignore[union-attr]
    assert [r["Address"] for r in result["Recipients"]] == [B]


def test_an_answer_naming_no_numbers_gives_its_ids_in_order(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model lets an answer's recipients carry no Address: matched by number only, no
    recipient got its id, and its status lost its recipients' states."""
    original = sandbox_app.Sandbox._send

    def without_addresses(self: Any, call: Any, parts: Any, pascal_case: bool) -> Any:
        response = original(self, call, parts, pascal_case)
        key = "Recipients" if pascal_case else "recipients"
        response.body[key] = [
            {k: v for k, v in r.items() if k.lower() != "address"} for r in response.body[key]
        ]
        return response

    monkeypatch.setattr(sandbox_app.Sandbox, "_send", without_addresses)
    a, b = "+358401234567", "+358401234568"
    accepted = call_http("SendMessage", "POST", body=sms(a, b))
    assert accepted.status == 202, accepted.body
    outbound.drain()

    [call] = outbound.upstream("SendMessage")
    ids = [r["Id"] for r in call["response"]["Recipients"]]
    _, slots = MessageStore.from_settings().get_with_slots(accepted.body["Id"])
    assert [s.upstream_recipient_id for s in slots] == ids
    assert all(r.get("Status") for r in status_of(accepted.headers["Location"]).body["Recipients"])


def test_a_packs_409_naming_no_numbers_is_not_put_on_its_members_in_order() -> None:
    """A 409's original answer is of the call that got through, whose members may have been
    others: with no numbers to go by, each member is missing (handed back), never given
    another member's recipient because the counts happen to match."""
    from shared.outbound._attempt import split_answer

    body = {"MessageId": "orig", "Recipients": [{"Id": "r1"}, {"Id": "r2"}]}
    members = [("m1", ["+358401234567"]), ("m2", ["+358401234568"])]

    fresh = split_answer(body, members, duplicate=False)
    again = split_answer(body, members, duplicate=True)

    assert fresh.recipient_ids == {"r1": "m1", "r2": "m2"}  # this call's own answer: in order
    assert again.recipient_ids == {}
    assert sorted(again.missing) == ["m1", "m2"]
