"""Answers the Swagger does not document, from a real HTTP server the sender calls over a socket:
an odd 409, a redirect, a 2xx that is no send's answer. None may record a message `sent` nor
fail it for good as refused when nothing refused it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.outbound._attempt import kept
from shared.outbound._service import sent_document
from tests.outbound.conftest import DELIVERED, Outbound, sms


class Upstream:
    """An upstream that answers every call with ``status``, ``body`` and ``headers``."""

    def __init__(self) -> None:
        self.status = 200
        self.body: Any = None
        self.headers: dict[str, str] = {}
        self.calls: list[dict[str, Any]] = []
        self.first: list[tuple[int, Any]] = []  # answers for the next calls, before the rest
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                upstream.calls.append(json.loads(self.rfile.read(length) or b"null"))
                status, body = upstream.first.pop(0) if upstream.first else (0, upstream.body)
                raw = isinstance(body, bytes)  # as is (a page, cut-off JSON), else as JSON
                content = b"" if body is None else body if raw else json.dumps(body).encode()
                self.send_response(status or upstream.status)
                for name, value in upstream.headers.items():
                    self.send_header(name, value)
                if content and not raw:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api-integrations/v1"

    def answer(self, status: int, body: Any = None, **headers: str) -> None:
        self.status, self.body, self.headers = status, body, headers


def _queued_and_drained(outbound: Outbound, prefix: str) -> MessageRecord:
    """A send to DELIVERED put on the queue and drained: its record."""
    message_id = f"{prefix}-{uuid.uuid4()}"
    outbound.enqueue({"operation": "SendMessage", "messageId": message_id, "body": sms(DELIVERED)})
    outbound.drain()
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    return record


@pytest.fixture
def odd(outbound: Outbound) -> Iterator[Upstream]:
    upstream = Upstream()
    thread = threading.Thread(target=upstream.server.serve_forever, daemon=True)
    thread.start()
    outbound.configure(BASE_URL=upstream.url)
    yield upstream
    upstream.server.shutdown()
    upstream.server.server_close()


@pytest.mark.parametrize(
    "answer",
    [{"errorMessage": "Service s-1001-oneway is suspended"}, None],
    ids=["another-conflict", "empty"],
)
def test_a_409_that_is_no_duplicate_fails_the_message_with_its_reason(
    outbound: Outbound, odd: Upstream, answer: Any
) -> None:
    """A first attempt with a fresh RequestId answered 409 without the original answer and
    without naming a duplicate: nothing went out, so the message fails with upstream's reason
    and its event, never `sent` duplicate."""
    odd.answer(409, answer)
    message_id = f"m-409-{uuid.uuid4()}"
    outbound.enqueue({"operation": "SendMessage", "messageId": message_id, "body": sms(DELIVERED)})
    outbound.drain()

    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert not record.duplicate
    assert record.failure is not None
    assert (record.failure.code, record.failure.upstreamStatus) == ("upstream-rejected", 409)
    if answer is not None:
        assert record.failure.detail == "Service s-1001-oneway is suspended"
    assert len(odd.calls) == 1
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.failed"]


def test_a_bare_409_to_the_repeat_of_an_attempt_that_may_have_gone_through_is_its_duplicate(
    outbound: Outbound, odd: Upstream
) -> None:
    """The sender's client makes no retries of its own: after a 503 (SmartDialog may have taken
    the message) the queue's next attempt repeats the caller's RequestId, and a bare 409 to it
    is the duplicate suppression the RequestId asked for: sent, duplicate, not failed. A
    message that may go in a pack is not judged so: its doubtful attempt may have carried a
    pack's RequestId (it fails outcome-unknown, may have been sent)."""
    for packable in (False, True):
        odd.first.append((503, None))
        odd.answer(409, None)
        message_id = f"m-409-repeat-{uuid.uuid4()}"
        body = sms(DELIVERED) | ({} if packable else {"RequestId": f"caller-{message_id}"})
        outbound.enqueue({"operation": "SendMessage", "messageId": message_id, "body": body})
        outbound.drain()

        record = MessageStore.from_settings().get(message_id)
        assert record is not None
        calls, odd.calls = odd.calls, []
        assert len(calls) == 2
        assert calls[0]["RequestId"] == calls[1]["RequestId"]
        if packable:
            assert record.status is MessageStatus.FAILED
            assert record.failure is not None
            assert record.failure.code == "outcome-unknown"
        else:
            assert (record.status, record.duplicate) == (MessageStatus.SENT, True)


@pytest.mark.parametrize("status", [301, 307])
def test_a_redirect_is_retried_as_upstream_unavailable_never_a_refusal(
    outbound: Outbound, odd: Upstream, status: int
) -> None:
    """httpx follows no redirect: a 3xx means the request was not processed there (a 301 from
    an http:// base URL, a 307 from a proxy). It is retried under the sender's one backoff and
    ends `attempts-exhausted`, never `upstream-rejected` at once."""
    odd.answer(status, None, Location="https://elsewhere.invalid/api-integrations/v1/messages")
    message_id = f"m-{status}-{uuid.uuid4()}"
    outbound.enqueue({"operation": "SendMessage", "messageId": message_id, "body": sms(DELIVERED)})
    outbound.drain()

    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert record.failure.code == "attempts-exhausted"
    assert record.failure.upstreamStatus == status
    assert "elsewhere.invalid" in (record.failure.detail or "")
    assert len(odd.calls) == 4  # SEND_MAX_ATTEMPTS of the fixture


NO_SEND_ANSWERS = [
    (200, {"errorMessage": "Invalid sender: not allowed for service s-1001-oneway"}),
    (200, {"MessageId": "m-up-1", "error": "Gateway: upstream refused"}),
    (200, {}),
    (200, None),
    (202, None),
    (204, None),
    (200, b"<html><body>Sign in</body></html>"),
    (200, b'{"MessageId": "m-up-1", "Recipients": [{"Addr'),
]
NO_SEND_IDS = ["error", "id-and-error", "empty-object", "empty", "202", "204", "page", "cut-off"]


@pytest.mark.parametrize(("status", "answer"), NO_SEND_ANSWERS, ids=NO_SEND_IDS)
def test_a_2xx_that_is_no_send_answer_is_never_sent_and_ends_outcome_unknown(
    outbound: Outbound, odd: Upstream, status: int, answer: Any
) -> None:
    """A 2xx proves the send went out only as a send's answer (its MessageId or recipients)
    with no error field: a proxy or gateway answering 200 with an error, or an answer of no
    shape, may or may not have passed the call on. It is retried under the same RequestId, as
    after a connection broken mid-call, and ends `outcome-unknown` with its event, never
    `sent` with no MessageId."""
    odd.answer(status, answer)

    record = _queued_and_drained(outbound, "m-2xx")

    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert record.failure.code == "outcome-unknown"
    assert record.upstream_message_id is None
    assert len(odd.calls) == 4  # SEND_MAX_ATTEMPTS of the fixture, all with one RequestId
    assert len({c["RequestId"] for c in odd.calls}) == 1
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.failed"]


def test_a_2xx_with_an_error_is_settled_by_the_repeat_under_its_request_id(
    outbound: Outbound, odd: Upstream
) -> None:
    """After a 200 carrying an error the repeat carries the same RequestId: a proper answer to
    it records the message sent, with SmartDialog's MessageId, once."""
    odd.first.append((200, {"errorMessage": "Invalid sender: not allowed"}))
    odd.answer(200, {"MessageId": "m-up-2", "Recipients": [{"Address": DELIVERED, "Id": "r-1"}]})
    message_id = f"m-2xx-then-ok-{uuid.uuid4()}"
    body = sms(DELIVERED) | {"RequestId": f"caller-{message_id}"}
    outbound.enqueue({"operation": "SendMessage", "messageId": message_id, "body": body})
    outbound.drain()

    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert (record.status, record.upstream_message_id) == (MessageStatus.SENT, "m-up-2")
    assert [c["RequestId"] for c in odd.calls] == [f"caller-{message_id}"] * 2
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.sent"]


@pytest.mark.parametrize(
    "said",
    [
        {"Error": "recipient rejected: +358400000002"},
        {"error": {"code": "BadRequest", "message": "recipient rejected: +358400000002"}},
    ],
    ids=["Error", "gateway-object"],
)
def test_a_refusal_in_a_gateways_shape_still_names_its_recipient(said: dict[str, Any]) -> None:
    """Only the text of errorMessage, message or error was read on a 4xx (a 2xx's error was read
    in every shape): a refusal naming its recipient in these shapes named nobody, so a pack was
    split and its members sent again one by one. A mock transport: the sandbox answers only
    SmartDialog's own shape."""
    import httpx

    from shared.outbound._attempt import Refused, classify
    from shared.smartdialog import APIStatusError, SmartDialogClient, StaticTokenAuth
    from shared.smartdialog._models import Message

    transport = httpx.MockTransport(lambda request: httpx.Response(400, json=said))
    client = SmartDialogClient(
        "https://smartdialog.invalid/api-integrations/v1",
        StaticTokenAuth("t"),
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )
    message = Message.model_validate(
        {"Sender": "X", "Content": "hi", "Recipients": [{"Address": "+358400000002"}]}
    )
    with pytest.raises(APIStatusError) as raised:
        client.send_message(message, customer_id="1001", service_id="s-1001-oneway")

    refused = classify(raised.value)

    assert isinstance(refused, Refused)
    assert (refused.message, refused.culprit) == (
        "recipient rejected: +358400000002",
        "+358400000002",
    )


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (400, b'{"errorMessage": "Content rejected: \\ud83d"}'),
        (
            200,
            b'{"MessageId": "up-s1", "Recipients": [{"Address": "'
            + DELIVERED.encode()
            + b'", "Id": "r-1"}], "Extra": {"\\udc00": 1}}',
        ),
    ],
    ids=["refusal", "sent"],
)
def test_a_lone_surrogate_in_an_answer_still_ends_the_send_after_one_call(
    outbound: Outbound, odd: Upstream, status: int, answer: bytes
) -> None:
    """Valid JSON, but no text holding it can be encoded: recording the refusal (its reason) or
    the sent answer raised as if our storage failed; the record stayed ``sending`` and every
    redelivery called SmartDialog again, until the poison queue (found in review)."""
    odd.answer(status, answer)

    record = _queued_and_drained(outbound, "m-surrogate")

    assert len(odd.calls) == 1
    if status == 200:
        assert (record.status, record.upstream_message_id) == (MessageStatus.SENT, "up-s1")
    else:
        assert record.status is MessageStatus.FAILED
        assert record.failure is not None
        assert record.failure.detail == "Content rejected: \ufffd"


def _huge_answers() -> list[Any]:
    ours = {"Address": DELIVERED, "Id": "r-ours"}
    others = [{"Address": f"+35840{i:07d}", "Id": str(uuid.uuid4())} for i in range(20_000)]
    return [
        {"MessageId": "up-1", "Recipients": [ours, *others]},  # past an entity's 1 MiB
        {"MessageId": "u" * 70_000, "Recipients": [ours]},  # past a property's 32K units
        {"MessageId": "up-2", "Recipients": [{**ours, "Id": "r" * 70_000}]},
        {"MessageId": "up-3", "Recipients": [{**ours, "Id": "r" * 101}]},  # 1,000 in a pack row
        {"MessageId": "up-4", "Recipients": [ours], "ThreadId": "t" * 70_000},  # message.sent
        {"MessageId": "up-5", "Recipients": [ours], **{f"F{i}": "x" * 99 for i in range(3_000)}},
    ]


@pytest.mark.parametrize(
    "answer",
    _huge_answers(),
    ids=["recipients", "message-id", "recipient-id", "id-past-100", "thread-id", "fields"],
)
def test_an_answer_too_large_to_keep_still_ends_the_send_sent_after_one_call(
    outbound: Outbound, odd: Upstream, answer: dict[str, Any]
) -> None:
    """A 2xx whose answer no row can hold (20,000 recipients; an id of 70,000 characters): the
    record stayed ``sending``, every redelivery repeated the call, and the poison queue ended it
    ``outcome-unknown``. What is kept of an answer is bounded: its recipient list goes when the
    answer is too long (and of the rest its first 50 short fields), an id too long to be one
    (over 100 characters) is not kept, nor put in ``message.sent`` (found in review)."""
    odd.answer(200, answer)

    record = _queued_and_drained(outbound, "m-huge")

    assert len(odd.calls) == 1
    assert record.status is MessageStatus.SENT
    short = len(answer["MessageId"]) <= 100
    assert record.upstream_message_id == (answer["MessageId"] if short else None)
    assert len(record.result or "") <= 200_000  # Azurite takes an entity past Azure's 1 MiB
    _, slots = MessageStore.from_settings().get_with_slots(record.message_id)
    ours = answer["Recipients"][0]["Id"]
    assert [s.upstream_recipient_id for s in slots] == [ours if len(ours) <= 100 else None]
    [sent] = [e["data"] for e in outbound.events() if e["type"].endswith(".sent")]
    assert sent.get("threadId") is None


@pytest.mark.parametrize(
    ("count", "kept"),
    [
        (1.5, 1),
        ("2", 2),
        (2.0, 2),
        ({"n": 1}, 1),
        ("²", 1),
        (2**31, 1),
        (3e9, 1),
        (10**20, 1),
        (-3, 1),
    ],
)
def test_a_send_answer_with_an_odd_part_count_is_still_its_answer(
    outbound: Outbound, odd: Upstream, count: Any, kept: int
) -> None:
    """``MessagePartCount: 1.5`` made the whole answer no send's answer: the send was repeated
    under its RequestId and ended ``outcome-unknown`` though it went out (found in review). A
    count that is no integer reads as absent: the record keeps its own estimate (1)."""
    odd.answer(200, {"MessageId": "up-odd", "MessagePartCount": count,
                     "Recipients": [{"Address": DELIVERED, "Id": "r-1"}]})  # fmt: skip

    record = _queued_and_drained(outbound, "m-odd-count")

    assert len(odd.calls) == 1
    assert (record.status, record.upstream_message_id) == (MessageStatus.SENT, "up-odd")
    assert record.part_count == kept
    _, slots = MessageStore.from_settings().get_with_slots(record.message_id)
    assert sent_document(record, slots)["MessagePartCount"] == kept  # as its status shows it


def test_a_field_kept_of_an_answer_too_long_is_measured_in_characters_not_escapes() -> None:
    """A 20-character Cyrillic note counted as 120 (its JSON escapes) and was dropped, while
    90 ASCII characters were kept (second read)."""
    body = {"MessageId": "up-6", "Note": "Сообщение доставлено", "Done": "✅" * 20,
            **{f"F{i}": "x" * 99 for i in range(3_000)}}  # fmt: skip

    result = json.loads(kept(body)["result"])

    assert (result["Note"], result["Done"]) == (body["Note"], body["Done"])
    assert len(result) == 50
