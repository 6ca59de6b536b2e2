"""Questions of "Send a message and wait for a reply" (``SmartDialogQuestions``): the typed record,
its transition table and its one writer. One partition per service + recipient: RowKey
``<question id>`` is the record (kept after it ends), RowKey ``open`` a copy of the open question,
replaced on its ETag at every change, so each change is one atomic transaction."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from shared.messages._models import IllegalTransition, MessageStatus
from shared.messages._records import MessageRecord, odata_quote
from shared.messages._table import TableStore
from shared.names import QUESTIONS_TABLE
from shared.storage import plain_datetime, utc

__all__ = [
    "ANSWER_GRACE",
    "QUESTION_TRANSITIONS",
    "UNSENT",
    "QuestionConflict",
    "QuestionRecord",
    "QuestionStatus",
    "QuestionStore",
    "check_question_transition",
    "match_answer",
    "new_question_id",
    "normalize_answer",
    "normalize_reply",
    "question_partition",
    "reprompt_message_id",
    "reprompted_question",
    "send_ended_unsent",
    "send_may_have_gone_out",
]

OPEN_ROW = "open"
#: How often a write that lost a race re-reads and tries again.
_ATTEMPTS = 5
#: The most of a reply a question keeps (16,000 characters fit a Table string, whatever they are).
REPLY_CHARS = 16_000
#: The least time a recipient has to reply (:meth:`QuestionRecord.send_by`).
REPLY_WINDOW = dt.timedelta(minutes=5)
#: How long past its timeout a question stays open for a reply still in the intake queue.
ANSWER_GRACE = dt.timedelta(seconds=60)
_REPROMPT_NAMESPACE = uuid.UUID("5b0f7c1e-3f4a-4d8e-9a51-2f6c1d7e8a90")


class QuestionStatus(enum.StrEnum):
    """A question's lifecycle; :data:`QUESTION_TRANSITIONS` says which changes are allowed."""

    OPEN = "open"
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"
    OPTED_OUT = "opted_out"
    FAILED = "failed"
    REPLACED = "replaced"

    @property
    def is_final(self) -> bool:
        return self is not QuestionStatus.OPEN


_Q = QuestionStatus
#: Allowed status changes (keeping the status always is): an open question ends exactly once.
QUESTION_TRANSITIONS: Final[dict[QuestionStatus, frozenset[QuestionStatus]]] = {
    _Q.OPEN: frozenset({_Q.ANSWERED, _Q.TIMED_OUT, _Q.OPTED_OUT, _Q.FAILED, _Q.REPLACED}),
    _Q.ANSWERED: frozenset(),
    _Q.TIMED_OUT: frozenset(),
    _Q.OPTED_OUT: frozenset(),
    _Q.FAILED: frozenset(),
    _Q.REPLACED: frozenset(),
}


def check_question_transition(before: QuestionStatus, after: QuestionStatus) -> None:
    """Raise :class:`IllegalTransition` unless a question may go from ``before`` to ``after``."""
    if before is after or after in QUESTION_TRANSITIONS[before]:
        return
    raise IllegalTransition(f"question status {before} -> {after} is not allowed")


def normalize_reply(text: str) -> str:
    """``text`` as a short reply is compared with words (opt-out keywords, accepted answers):
    NFKC, without invisible characters (:func:`_invisible`: "❤️" == "❤"), blanks and punctuation
    trimmed from both ends ("Stop!", «STOP»), inner blanks single, case folded."""
    kept = [c for c in unicodedata.normalize("NFKC", text) if not _invisible(c)]
    while kept and _edge(kept[-1]):
        kept.pop()
    first = next((i for i, c in enumerate(kept) if not _edge(c)), len(kept))
    return " ".join("".join(kept[first:]).split()).casefold()


def _invisible(char: str) -> bool:
    """A format character (Cf: zero-width space or joiner, BOM), a control character but a blank
    (Cc: NUL, ESC; a gateway's padding) or a variation selector (text or emoji style)."""
    kind = unicodedata.category(char)
    return _selector(char) or kind == "Cf" or (kind == "Cc" and not char.isspace())


def _selector(char: str) -> bool:
    """A variation selector (U+FE00-FE0F, U+E0100-E01EF): text or emoji style of one character."""
    return 0xFE00 <= ord(char) <= 0xFE0F or 0xE0100 <= ord(char) <= 0xE01EF


def _edge(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """``text`` as answers are compared: :func:`normalize_reply` ("Yes." == "yes"; one of
    punctuation alone, such as "?", as written), then as :func:`_as_written`."""
    return _as_written(normalize_reply(text) or text)


def _as_written(text: str) -> str:
    """``text`` without accents or variation selectors, case folded, inner whitespace single,
    ends trimmed (" Kyllä " == "KYLLA"); other format characters stay (they tell emoji apart)."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not (unicodedata.combining(c) or _selector(c)))
    return " ".join(bare.casefold().split())


def match_answer(options: Sequence[str], reply: str) -> tuple[bool, str | None]:
    """Whether ``reply`` answers a question with ``options``, and the option it matched (as the
    caller wrote it); without options any non-empty reply answers, matching none. An option the
    reply is as written (:func:`_as_written`) wins over those it is only once edge punctuation
    is trimmed (:func:`normalize_answer`: "1" is not "#1"); a reply that is several of those
    matches none. Options the same as written are one answer: the first listed is matched."""
    said = normalize_answer(reply)
    if not options:
        return bool(said), None
    written = _as_written(reply)
    exact = [o for o in options if _as_written(o) == written][:1]
    found = exact or [o for o in options if normalize_answer(o) == said]
    return (True, found[0]) if len({_as_written(o) for o in found}) == 1 else (False, None)


#: A question's send ended so did not go out (but see :func:`send_ended_unsent`): it fails.
UNSENT: Final = (MessageStatus.FAILED, MessageStatus.CANCELLED)


def send_may_have_gone_out(send: MessageRecord | None) -> bool:
    """Whether a question's ``send`` may have reached its recipient, so a reply may answer the
    question: sent, being sent, or after an attempt that may have reached upstream (queued again
    or failed: :attr:`~shared.messages.MessageRecord.in_doubt`). Not one never tried, failed
    otherwise, cancelled or not recorded yet."""
    if send is None:
        return False
    return send.status in (MessageStatus.SENT, MessageStatus.SENDING) or send.in_doubt


def send_ended_unsent(send: MessageRecord | None, question: QuestionRecord) -> bool:
    """Whether ``question``'s ``send`` ended without its text going out (cancelled, or failed
    with no attempt that may have reached upstream): its question fails, no reply answers it.
    One cancelled :data:`ANSWER_GRACE` or more past ExpiresAt is not (the timing-out poll cancels
    it before ending the question: a crash in between must not make the question fail)."""
    if send is None or send.status not in UNSENT or send_may_have_gone_out(send):
        return False
    late = send.finished_at is not None and send.finished_at >= question.expires_at + ANSWER_GRACE
    return not (send.status is MessageStatus.CANCELLED and late)


def question_partition(service: str, address: str) -> str:
    """The partition of the questions to ``address`` on ``service`` (no number in the key)."""
    digest = hashlib.sha256(f"{service}\n{address}".encode()).hexdigest()
    return "q" + digest[:32]


def new_question_id(service: str, address: str) -> str:
    """A new question id; it carries its partition, so its status URL finds it in one read."""
    return f"{question_partition(service, address)}-{uuid.uuid4().hex}"


def reprompt_message_id(question_id: str) -> str:
    """The message id (and RequestId) of a question's re-prompt: always the same."""
    return str(uuid.uuid5(_REPROMPT_NAMESPACE, f"reprompt\n{question_id}"))


def reprompted_question(
    message_id: str | None, question_id: str | None, customer_data: str | None
) -> str | None:
    """The question whose re-prompt the send ``message_id`` is (:func:`reprompt_message_id`):
    its command's ``questionId``, else (an older release's) ``customer_data`` ``question=<id>``."""
    if question_id is None and (customer_data or "").startswith("question="):
        question_id = (customer_data or "").removeprefix("question=")
    return question_id if question_id and message_id == reprompt_message_id(question_id) else None


def _partition_of(question_id: str) -> str:
    return question_id.split("-", 1)[0]


class QuestionConflict(RuntimeError):
    """Another question to the same recipient on the same service is open."""

    def __init__(self, open_question: QuestionRecord) -> None:
        super().__init__(f"question {open_question.question_id} is open")
        self.open_question = open_question


@dataclass(frozen=True)
class QuestionRecord:
    """One question: what was asked, how it may be answered, and how it ended."""

    question_id: str
    service_id: str
    address: str
    message_id: str
    created_at: dt.datetime
    expires_at: dt.datetime
    status: QuestionStatus = QuestionStatus.OPEN
    options: tuple[str, ...] = ()
    reprompt: str | None = None
    reprompted: bool = False
    sender: str | None = None
    protocol: str | None = None
    customer_id: str | None = None
    customer_data: str | None = None  # its text's CustomerData, which its re-prompt carries too
    #: Its named connection, its re-prompt's too (None: default, or an old row: by its customer).
    connection: str | None = None
    reply: str | None = None
    matched_option: str | None = None
    replied_at: dt.datetime | None = None
    #: The inbound message key of the reply (or STOP) that ended it.
    reply_key: str | None = None
    ended_at: dt.datetime | None = None
    replaced_by: str | None = None
    #: Why its send failed (the send's failure code), when it ended ``failed``.
    failure_code: str | None = None
    #: The asking request's idempotency key hash: a replay finds its question by it.
    request_key: str | None = None
    etag: str | None = field(default=None, compare=False)

    @property
    def partition(self) -> str:
        return _partition_of(self.question_id)

    def expired(self, now: dt.datetime) -> bool:
        return self.status is QuestionStatus.OPEN and now >= self.expires_at

    def send_by(self, start: dt.datetime) -> dt.datetime:
        """The ``validUntil`` of this question's message (text, re-prompt) sent from ``start``:
        :data:`REPLY_WINDOW` before it expires, or half the time left if that is shorter."""
        left = max(self.expires_at - start, dt.timedelta(0))
        return self.expires_at - min(REPLY_WINDOW, left / 2)

    def to_entity(self, row_key: str | None = None) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": self.partition,
            "RowKey": row_key or self.question_id,
            "QuestionId": self.question_id,
            "Status": str(self.status),
            "ServiceId": self.service_id,
            "Address": self.address,
            "MessageId": self.message_id,
            "CreatedAt": plain_datetime(self.created_at),
            "ExpiresAt": plain_datetime(self.expires_at),
            "Options": json.dumps(list(self.options), ensure_ascii=False),
            "Reprompt": self.reprompt,
            "Reprompted": self.reprompted,
            "Sender": self.sender,
            "Protocol": self.protocol,
            "CustomerId": self.customer_id,
            "CustomerData": self.customer_data,
            "Connection": self.connection,
            "Reply": self.reply,
            "MatchedOption": self.matched_option,
            "RepliedAt": plain_datetime(self.replied_at),
            "ReplyKey": self.reply_key,
            "EndedAt": plain_datetime(self.ended_at),
            "ReplacedBy": self.replaced_by,
            "FailureCode": self.failure_code,
            "RequestKey": self.request_key,
        }
        return {k: v for k, v in entity.items() if v is not None}

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> QuestionRecord:
        created = utc(entity.get("CreatedAt")) or dt.datetime.fromtimestamp(0, dt.UTC)
        metadata = getattr(entity, "metadata", None) or {}
        return cls(
            question_id=str(entity["QuestionId"]),
            service_id=str(entity.get("ServiceId") or ""),
            address=str(entity.get("Address") or ""),
            message_id=str(entity.get("MessageId") or ""),
            created_at=created,
            expires_at=utc(entity.get("ExpiresAt")) or created,
            status=QuestionStatus(entity.get("Status") or QuestionStatus.OPEN),
            options=tuple(json.loads(entity.get("Options") or "[]")),
            reprompt=entity.get("Reprompt"),
            reprompted=bool(entity.get("Reprompted")),
            sender=entity.get("Sender"),
            protocol=entity.get("Protocol"),
            customer_id=entity.get("CustomerId"),
            customer_data=entity.get("CustomerData"),
            connection=entity.get("Connection"),
            reply=entity.get("Reply"),
            matched_option=entity.get("MatchedOption"),
            replied_at=utc(entity.get("RepliedAt")),
            reply_key=entity.get("ReplyKey"),
            ended_at=utc(entity.get("EndedAt")),
            replaced_by=entity.get("ReplacedBy"),
            failure_code=entity.get("FailureCode"),
            request_key=entity.get("RequestKey"),
            etag=metadata.get("etag"),
        )


class QuestionStore(TableStore):
    """The one writer of ``SmartDialogQuestions``; every status change goes through
    :data:`QUESTION_TRANSITIONS`."""

    TABLE = QUESTIONS_TABLE

    # --- reads -----------------------------------------------------------------------------

    def open_question(self, service: str, address: str) -> QuestionRecord | None:
        """The open question to ``address`` on ``service`` (one point read), with the ETag of
        its ``open`` row; None when there is none."""
        entity = self.read(question_partition(service, address), OPEN_ROW)
        return None if entity is None else QuestionRecord.from_entity(entity)

    def for_reply(self, service: str, address: str, reply_key: str) -> QuestionRecord | None:
        """The open question that the inbound message ``reply_key`` from ``address`` may answer
        (with its ``open`` row's ETag): one partition query. None when none is open, or when
        this message already ended a question (a redelivery: it answers nothing again)."""
        found: QuestionRecord | None = None
        for entity in self._open_or(service, address, "ReplyKey", reply_key):
            if entity.get("ReplyKey") == reply_key:
                return None
            found = QuestionRecord.from_entity(entity)
        return found

    def _open_or(self, service: str, address: str, name: str, value: str) -> list[Any]:
        """The rows of the questions to ``address`` on ``service`` that are its ``open`` row
        or have ``name`` equal to ``value``: one partition query (none before the table is)."""
        from azure.core.exceptions import ResourceNotFoundError

        query = (
            f"PartitionKey eq '{question_partition(service, address)}' and "
            f"(RowKey eq '{OPEN_ROW}' or {name} eq '{odata_quote(value)}')"
        )
        try:
            return list(self.table.query_entities(query))
        except ResourceNotFoundError:  # no table yet: no question was ever asked
            return []

    def open_services(self) -> set[str]:
        """The services with an open question: a scan of every ``open`` row (once per upgrade,
        :meth:`shared.triggers.TriggerNotifier.asks_questions`)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            rows = self.table.query_entities(f"RowKey eq '{OPEN_ROW}'", select=["ServiceId"])
            return {str(row["ServiceId"]) for row in rows if row.get("ServiceId")}
        except ResourceNotFoundError:  # no table yet: no question was ever asked
            return set()

    def asked_under(
        self, service: str, address: str, request_key: str
    ) -> tuple[QuestionRecord | None, list[QuestionRecord]]:
        """The open question to ``address`` on ``service`` (with its ``open`` row's ETag; None
        when there is none), and the questions asked under the idempotency key hash
        ``request_key``, first asked first: one partition query."""
        open_one: QuestionRecord | None = None
        asked: list[QuestionRecord] = []
        for entity in self._open_or(service, address, "RequestKey", request_key):
            if entity["RowKey"] == OPEN_ROW:
                open_one = QuestionRecord.from_entity(entity)
            else:
                asked.append(QuestionRecord.from_entity(entity))
        return open_one, sorted(asked, key=lambda question: question.created_at)

    def get(self, question_id: str) -> QuestionRecord | None:
        entity = self.read(_partition_of(question_id), question_id)
        return None if entity is None else QuestionRecord.from_entity(entity)

    def ended_reprompt(self, question_id: str | None) -> bool:
        """Whether question ``question_id``, whose re-prompt a send is (:func:`reprompted_question`;
        None: it is none), has ended (an unknown one has not): the sender then cancels the send."""
        if question_id is None:
            return False
        record = self.get(question_id)
        return record is not None and record.status.is_final

    # --- writes ----------------------------------------------------------------------------

    def create(
        self, record: QuestionRecord, *, replacing: QuestionRecord | None = None
    ) -> QuestionRecord:
        """Store the new open ``record`` and make it the open one. ``replacing``: the open
        question it replaces (ended ``replaced`` in the same transaction, on its ETag). Raises
        :class:`QuestionConflict` naming the open question when another one is (or became)
        open. Creating the same question again (a replayed request) returns it."""
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        check_question_transition(QuestionStatus.OPEN, record.status)
        operations: list[Any] = [("upsert", record.to_entity(), {"mode": UpdateMode.REPLACE})]
        if replacing is None:
            operations.append(("create", record.to_entity(OPEN_ROW)))
        else:
            check_question_transition(replacing.status, QuestionStatus.REPLACED)
            ended = replace(
                replacing,
                status=QuestionStatus.REPLACED,
                ended_at=record.created_at,
                replaced_by=record.question_id,
            )
            operations += [
                ("upsert", ended.to_entity(), {"mode": UpdateMode.REPLACE}),
                (
                    "update",
                    record.to_entity(OPEN_ROW),
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": replacing.etag,
                        "match_condition": MatchConditions.IfNotModified,
                    },
                ),
            ]
        try:
            results = self.table.submit_transaction(operations)
        except TableTransactionError:
            current = self.open_question(record.service_id, record.address)
            if current is not None and current.question_id == record.question_id:
                return current
            if current is not None:
                raise QuestionConflict(current) from None
            if replacing is not None:  # it ended meanwhile (answered, timed out): none to replace
                return self.create(record)
            raise
        return replace(record, etag=str(results[-1].get("etag")))

    def _commit(self, current: QuestionRecord, changed: QuestionRecord) -> bool:
        """Write ``changed`` (a new state of the open ``current``, read with its ``open`` row's
        ETag): the record row, and the ``open`` row replaced (still open) or deleted (ended),
        in one transaction. False when ``open`` changed meanwhile (re-read and decide again)."""
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        condition = {"etag": current.etag, "match_condition": MatchConditions.IfNotModified}
        pointer: tuple[Any, ...]
        if changed.status.is_final:
            pointer = ("delete", {"PartitionKey": current.partition, "RowKey": OPEN_ROW}, condition)
        else:
            pointer = (
                "update",
                changed.to_entity(OPEN_ROW),
                {"mode": UpdateMode.REPLACE, **condition},
            )
        try:
            self.table.submit_transaction(
                [("upsert", changed.to_entity(), {"mode": UpdateMode.REPLACE}), pointer]
            )
        except TableTransactionError:
            return False
        return True

    def _change(self, current: QuestionRecord, **changes: Any) -> QuestionRecord | None:
        """Apply ``changes`` to the open question ``current`` (read via its ``open`` row), on
        its ETag, re-reading after a lost race. The question as written, or None when it is no
        longer open (ended or replaced by another writer)."""
        status = changes.get("status", current.status)
        for _ in range(_ATTEMPTS):
            check_question_transition(current.status, status)
            changed = replace(current, **changes)
            if self._commit(current, changed):
                return changed
            fresh = self.open_question(current.service_id, current.address)
            if fresh is None or fresh.question_id != current.question_id:
                return None
            current = fresh
        return None

    def answer(
        self,
        current: QuestionRecord,
        *,
        reply: str,
        matched_option: str | None,
        replied_at: dt.datetime,
        reply_key: str,
    ) -> QuestionRecord | None:
        """End the open ``current`` with ``reply`` (None: it was ended by another writer)."""
        return self._change(
            current,
            status=QuestionStatus.ANSWERED,
            reply=reply[:REPLY_CHARS],
            matched_option=matched_option,
            replied_at=replied_at,
            reply_key=reply_key,
            ended_at=replied_at,
        )

    def opt_out(
        self, current: QuestionRecord, *, at: dt.datetime, reply_key: str
    ) -> QuestionRecord | None:
        """End the open ``current``: the recipient opted out (STOP)."""
        return self._change(
            current,
            status=QuestionStatus.OPTED_OUT,
            replied_at=at,
            reply_key=reply_key,
            ended_at=at,
        )

    def mark_reprompted(self, current: QuestionRecord) -> QuestionRecord | None:
        """Note that the re-prompt of the open ``current`` was queued (it is sent once)."""
        return self._change(current, reprompted=True)

    def end(
        self,
        question_id: str,
        status: QuestionStatus,
        *,
        at: dt.datetime,
        failure_code: str | None = None,
    ) -> QuestionRecord | None:
        """End the question ``question_id`` (timed out, or its send failed) if it is still
        open; the question as it is afterwards (None: unknown)."""
        for _ in range(_ATTEMPTS):
            record = self.get(question_id)
            if record is None or record.status.is_final:
                return record
            current = self.open_question(record.service_id, record.address)
            if current is None or current.question_id != question_id:
                continue  # ended meanwhile: its row says how
            done = self._change(current, status=status, ended_at=at, failure_code=failure_code)
            if done is not None:
                return done
        return self.get(question_id)
