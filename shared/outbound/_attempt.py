"""One upstream attempt and what its outcome means: a call built with :meth:`Upstream.prepare`
before its quota grant, made with :meth:`Upstream.attempt`, one :data:`AttemptResult`.
See docs/sending.md, "Statuses and the sender" (the outcome table)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from shared import telemetry
from shared.messages import RESULT_CHARS, UPSTREAM_ID_CHARS, FailureInfo
from shared.outbound._models import (
    OutboundMessage,
    SendDiscussionReplyMessageCommand,
    SendMessageCommand,
    SendReplyMessageCommand,
)
from shared.outbound._records import address_key
from shared.quota import AttemptGate, StaleGrant
from shared.storage import utf16_units
from shared.suppressions import reported_keys

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from opentelemetry.trace import Span

    from shared.quota import QuotaDenied, QuotaGrant
    from shared.settings import Settings
    from shared.smartdialog import SmartDialogClient

__all__ = [
    "AttemptGate",
    "AttemptResult",
    "Call",
    "QuotaPort",
    "Refused",
    "Sent",
    "SplitAnswer",
    "StaleGrant",
    "Transient",
    "Upstream",
    "answer_message_id",
    "answer_recipients",
    "classify",
    "kept",
    "kept_id",
    "packed_command",
    "placed",
    "recipient_ids",
    "split_answer",
]

#: How the sandbox names the recipient a refusal is for (the real service's wording is unknown).
_REJECTED_RECIPIENT = re.compile(r"recipient rejected:\s*(\S+)", re.IGNORECASE)

log = logging.getLogger(__name__)
#: The most fields kept of an answer too long to keep whole (:func:`kept`).
KEPT_FIELDS = 50


class QuotaPort(Protocol):
    """What the send paths need of :mod:`shared.quota`."""

    def try_acquire(self) -> QuotaGrant | QuotaDenied: ...

    def gate(self, timeout: float = 0.0, *, renew: bool = False) -> AttemptGate: ...


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """Upstream took the call: its answer (upstream casing); ``duplicate`` when a 409 said an
    earlier attempt with this ``RequestId`` got through (the answer is that attempt's)."""

    body: dict[str, Any]
    duplicate: bool = False

    def answers_another(self, addresses: Iterable[str]) -> bool:
        """Whether this is a 409's original answer for another message than one to
        ``addresses``: it lists recipients, none of them one of these numbers."""
        listed = {k for r in answer_recipients(self.body) for k in _listed(r)}
        return self.duplicate and bool(listed) and not listed & {address_key(a) for a in addresses}


def answer_message_id(body: Mapping[str, Any]) -> str | None:
    """SmartDialog's MessageId in an answer (or a member's share of one), in either casing."""
    found = body.get("MessageId") or body.get("messageId")
    return str(found) if found else None


def kept_id(found: object) -> str | None:
    """An upstream id as a row keeps it: None when there is none, or it is too long to be one."""
    text = str(found) if found else None
    return text if text and utf16_units(text) <= UPSTREAM_ID_CHARS else None


def kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a record keeps of upstream's answer ``body``: its MessageId and the answer as JSON,
    whole, or past :data:`~shared.messages.RESULT_CHARS` only its first short fields."""
    text = json.dumps(body, ensure_ascii=False)
    if utf16_units(text) > RESULT_CHARS:
        log.warning("an answer of %d characters kept without its recipients", len(text))
        short = ((k, v) for k, v in body.items() if k not in ("Recipients", "recipients")
                 and _fits(k) and _fits(v))  # fmt: skip
        text = json.dumps(dict(islice(short, KEPT_FIELDS)), ensure_ascii=False)
    return {"result": text, "upstream_message_id": kept_id(answer_message_id(body))}


def _fits(value: object) -> bool:
    """Whether a field's name or value is as short as an id may be (text by its characters)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return utf16_units(text) <= UPSTREAM_ID_CHARS


@dataclass(frozen=True)
class Transient:
    """The call may succeed later. ``certainly_not_sent``: the failure proves nothing reached
    upstream (a repeat is safe even without a ``RequestId``)."""

    code: str
    title: str
    detail: str | None
    advised: float | None = None
    upstream_status: int | None = None
    certainly_not_sent: bool = False

    def error(self, attempts: int) -> FailureInfo:
        """The failure as recorded on a message after ``attempts`` attempts."""
        return FailureInfo(
            code=self.code,
            title=self.title,
            detail=self.detail,
            upstreamStatus=self.upstream_status,
            attempts=attempts,
        )


@dataclass(frozen=True)
class Refused:
    """Upstream refused the whole call; ``culprit`` is the recipient it names (as it wrote it),
    if any."""

    status: int
    message: str | None
    culprit: str | None = None

    def blamed(self, members: Mapping[str, Iterable[str]]) -> set[str]:
        """The members (id -> addresses) with the number upstream named (its likeliest reading
        that is any member's)."""
        keys = {
            member: {address_key(a) for a in addresses} for member, addresses in members.items()
        }
        for reading in reported_keys(self.culprit) if self.culprit else ():
            if found := {member for member, mine in keys.items() if reading in mine}:
                return found
        return set()

    @property
    def about_the_request(self) -> bool:
        """Whether the refusal naming no recipient is about the request itself, not one
        recipient's (a 400 or a 413, which a smaller call may get past)."""
        return self.status not in (400, 413)

    def failure(self, attempts: int) -> FailureInfo:
        """Why a member of the refused call failed for good."""
        return FailureInfo(
            code="upstream-rejected",
            title=f"SmartDialog rejected the message ({self.status})",
            detail=self.message,
            upstreamStatus=self.status,
            attempts=attempts,
        )


AttemptResult = Sent | Transient | Refused


@dataclass(frozen=True)
class Call:
    """An upstream call ready to leave (:meth:`Upstream.prepare`): the command as sent, and
    the id its delivery reports carry (a pack's; None: the message's own)."""

    request: OutboundMessage
    report_id: str | None = None


class Upstream:
    """SmartDialog's send operations as the send paths use them: one port, so a test can make
    upstream fail (or a worker die mid-call) by wrapping :meth:`send`."""

    def __init__(self, client: SmartDialogClient, gate: AttemptGate, settings: Settings) -> None:
        self.client = client
        self.gate = gate
        self.settings = settings
        #: Why this process last failed to get a token (None: it got one, or never tried).
        self.unready: Exception | None = None

    def ready(self) -> Exception | None:
        """A valid token in hand before the caller takes its grant (so a fetch never ages it):
        None, or why none could be had, nothing sent."""
        from shared.smartdialog import SmartDialogError

        try:
            self.client.ready()
        except SmartDialogError as exc:
            self.unready = exc
            return exc
        self.unready = None
        return None

    def prepare(
        self,
        commands: Sequence[OutboundMessage],
        *,
        request_id: str | None = None,
        report_id: str | None = None,
    ) -> Call:
        """The call of ``commands`` as it is to leave, built *before* its grant is taken: one
        command, or with ``request_id`` a pack's led by the first (our ``DlrUrl`` put in here)."""
        from shared.outbound._records import with_delivery_report_url

        command = commands[0]
        if request_id is not None:
            command = packed_command(command, commands, request_id)
        return Call(
            with_delivery_report_url(command, self.settings, report_id=report_id), report_id
        )

    def attempt(
        self,
        grant: QuotaGrant,
        call: Call,
        *,
        links: Sequence[str | None] = (),
        repeat: bool = False,
    ) -> AttemptResult:
        """One upstream call with ``grant``, in a client span linked to ``links``. Raises
        :class:`StaleGrant` (nothing sent) if the grant went stale before the request left.
        ``repeat``: an earlier attempt with this RequestId may have reached upstream, so a 409
        naming no recipient is its duplicate."""
        from shared.quota import QuotaExceeded
        from shared.smartdialog import SmartDialogError

        self.gate.hold(grant)
        try:
            with _call_span(call.request, call.report_id, links) as current:
                try:
                    body = self.send(call.request)
                except (SmartDialogError, QuotaExceeded) as exc:
                    result: AttemptResult = classify(exc)
                else:  # a 2xx proves a send only as a send's answer (else perhaps a proxy's)
                    proven = answer_message_id(body) or answer_recipients(body)
                    said = "the 2xx answer names no MessageId and no recipients"
                    result = Sent(body) if proven else _unproven(said)
                if repeat and isinstance(result, Refused) and result.status == 409:
                    result = Sent({}, duplicate=True) if result.culprit is None else result
                _describe(current, result)
            return result
        finally:
            self.gate.clear()

    def send(self, command: OutboundMessage) -> dict[str, Any]:
        """Send ``command``'s body as its operation; upstream's answer in upstream casing."""
        client, customer = self.client, command.customerId
        assert customer
        result: BaseModel
        if isinstance(command, SendDiscussionReplyMessageCommand):  # the one without a service
            result = client.send_discussion_reply_message(command.body, customer_id=customer)
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)
        service = command.serviceId
        assert service
        if isinstance(command, SendMessageCommand):
            result = client.send_message(command.body, customer_id=customer, service_id=service)
        elif isinstance(command, SendReplyMessageCommand):
            parent = command.parentMessageId
            result = client.send_reply_message(
                command.body, parent_message_id=parent, customer_id=customer, service_id=service
            )
        else:
            result = client.send_whatsapp_template_message(
                command.body, customer_id=customer, service_id=service
            )
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def _call_span(
    request: OutboundMessage, report_id: str | None, links: Sequence[str | None]
) -> AbstractContextManager[Span]:
    """The span of one upstream call: ids and the recipient count, never an address."""
    recipients = getattr(request.body, "Recipients", None)
    return telemetry.span(
        f"SmartDialog {request.operation}",
        kind="client",
        links=links,
        attributes={
            "smartdialog.operation": request.operation,
            "smartdialog.message_id": report_id or request.messageId,
            "smartdialog.request_id": getattr(request.body, "RequestId", None),
            "smartdialog.recipients": None if recipients is None else len(recipients),
            "smartdialog.pack_members": len(links) or None,
        },
    )


def _describe(span: Span, result: AttemptResult) -> None:
    if isinstance(result, Sent):
        if upstream_id := answer_message_id(result.body):
            span.set_attribute("smartdialog.upstream_message_id", upstream_id)
        span.set_attribute("smartdialog.duplicate", result.duplicate)
    elif isinstance(result, Transient):
        span.set_attribute("smartdialog.error", result.code)
        if result.upstream_status is not None:
            span.set_attribute("http.response.status_code", result.upstream_status)
    else:
        span.set_attribute("http.response.status_code", result.status)


def _unproven(said: str) -> Transient:
    """A 2xx that proves no send: it may have reached SmartDialog, so never ``sent``."""
    title = "SmartDialog's 2xx answer was no send's answer"
    return Transient("upstream-unavailable", title, said)


def classify(exc: Exception) -> AttemptResult:
    """What a failed call means: the one mapping from the client's errors to outcomes, with
    secrets upstream's message may quote (our DLR URL's token) cut."""
    from shared.logs import cut_secrets
    from shared.quota import QuotaExceeded
    from shared.smartdialog import (
        APIConnectionError,
        APIError,
        APIResponseValidationError,
        APIStatusError,
        CredentialsError,
        DuplicateRequestError,
        InternalServerError,
        InvalidParameterError,
        RateLimitError,
    )

    said = cut_secrets(exc.message) if isinstance(exc, APIError) else ""
    if isinstance(exc, InvalidParameterError):
        # Nothing sent, and it fails the same way again; a body's may be one member's (400).
        return Refused(400 if exc.location == "body" else 422, f"Not sent: {exc}")
    if isinstance(exc, DuplicateRequestError):
        original = exc.original
        body = (
            original.model_dump(mode="json", by_alias=True, exclude_none=True)
            if isinstance(original, BaseModel)
            else {}
        )
        return Sent(body, duplicate=True)
    if isinstance(exc, APIResponseValidationError):  # 2xx, no send's answer: proves nothing
        return _unproven(said)
    if isinstance(exc, RateLimitError):
        return Transient(
            "rate-limited", "SmartDialog answered 429", said, exc.retry_after, 429, True
        )
    if isinstance(exc, InternalServerError):
        title = f"SmartDialog answered {exc.status_code}"
        return Transient("upstream-unavailable", title, said, exc.retry_after, exc.status_code)
    if isinstance(exc, APIStatusError):
        if exc.status_code == 408:
            return Transient("upstream-unavailable", "SmartDialog timed out", said, None, 408)
        if exc.status_code < 400:  # a redirect, not followed: not processed there, no refusal
            where = cut_secrets(exc.headers.get("Location") or "nowhere")
            said = f"redirected to {where} (not followed; check SMARTDIALOG_BASE_URL)"
            title = f"SmartDialog answered {exc.status_code}"
            return Transient("upstream-unavailable", title, said, None, exc.status_code, True)
        match = _REJECTED_RECIPIENT.search(said)
        return Refused(exc.status_code, said, match.group(1) if match else None)
    if isinstance(exc, APIConnectionError):
        not_sent = exc.certainly_not_sent
        title = "SmartDialog could not be reached"
        return Transient("upstream-unavailable", title, said, None, None, not_sent)
    if isinstance(exc, QuotaExceeded):  # our text: exc's names the quota's partition key
        said = f"quota full for a repeated attempt; retry in {exc.retry_after:.2f} s"
        return Transient(
            "rate-limited", "Quota full for a repeat", said, exc.retry_after, None, True
        )
    if isinstance(exc, CredentialsError):
        return Transient(
            "configuration", "No usable SmartDialog credentials", str(exc), None, None, True
        )
    raise exc


# --- packs: one request for many members, one answer shared out ----------------------------------


def packed_command(
    leader: OutboundMessage, commands: Sequence[OutboundMessage], request_id: str
) -> OutboundMessage:
    """The leader's command carrying every member's recipients (each with its own
    personalization, in membership order) and the pack's RequestId."""
    recipients = [r for c in commands for r in c.body.Recipients]  # type: ignore[union-attr]
    body = leader.body.model_copy(update={"Recipients": recipients, "RequestId": request_id})
    return leader.model_copy(update={"body": body})


@dataclass(frozen=True)
class SplitAnswer:
    """A packed call's answer shared out: each member's own answer, upstream recipient id ->
    member, and the members the answer does not mention (after a 409)."""

    shares: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipient_ids: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def split_answer(
    body: Mapping[str, Any],
    members: Sequence[tuple[str, Sequence[str]]],
    *,
    duplicate: bool,
    estimates: Mapping[str, int] | None = None,
) -> SplitAnswer:
    """Share ``body`` out among ``members`` ((message id, addresses)) by number. See
    docs/sending.md, "Packing and bulk sends" ("Answer")."""
    camel = "Recipients" not in body and ("recipients" in body or "messageId" in body)
    raw = answer_recipients(body)
    flat = [
        (member, position) for member, addresses in members for position in range(len(addresses))
    ]
    entries: dict[str, dict[int, dict[str, Any]]] = {}
    out = SplitAnswer()
    listed = [a for _, addresses in members for a in addresses]
    for index, entry in placed(body, listed, in_order=not duplicate).items():
        owner, position = flat[index]
        entries.setdefault(owner, {})[position] = entry
        if rid := kept_id(entry.get("Id") or entry.get("id")):
            out.recipient_ids[rid] = owner
    common = {k: v for k, v in body.items() if k not in ("Recipients", "recipients")}
    name = "recipients" if camel else "Recipients"
    need = {m: n for m, n in (estimates or {}).items() if m in entries or not raw}  # in the call
    for member, _ in members:
        mine = entries.get(member, {})
        if raw and not mine and duplicate:
            out.missing.append(member)
            continue
        ordered = [mine[p] for p in sorted(mine)]
        share = out.shares[member] = {**common, name: ordered} if raw else dict(body)
        own = (estimates or {}).get(member, 0)
        for parts in ("MessagePartCount", "messagePartCount"):
            count = share.get(parts)
            others = (n for m, n in need.items() if m != member)
            if isinstance(count, int) and 0 < own < count and any(n >= count for n in others):
                share[parts] = own  # another member's estimate explains upstream's count
    return out


def placed(
    body: Mapping[str, Any], addresses: Sequence[str], *, in_order: bool = True
) -> dict[int, dict[str, Any]]:
    """Upstream's recipients in its answer ``body`` put on ours, ``addresses``, by number: our
    position -> its recipient; one naming no number goes by position if ``in_order``."""
    listings: dict[str, list[int]] = {}
    for position, address in enumerate(addresses):
        listings.setdefault(address_key(address), []).append(position)
    found: dict[int, dict[str, Any]] = {}
    entries = answer_recipients(body)
    if in_order and len(entries) == len(addresses) and not any(_listed(e) for e in entries):
        return dict(enumerate(entries))  # no numbers to go by (the model allows): by position
    for entry in entries:
        if waiting := next((w for key in _listed(entry) if (w := listings.get(key))), None):
            found[waiting.pop(0)] = entry
    return found


def recipient_ids(body: Mapping[str, Any], addresses: Sequence[str]) -> dict[int, str]:
    """Upstream's recipient ids in its answer ``body`` by our recipient's position."""
    return {i: rid for i, e in placed(body, addresses).items()
            if (rid := kept_id(e.get("Id") or e.get("id")))}  # fmt: skip


def answer_recipients(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recipients an answer lists (``recipients`` in a template send's)."""
    found = body.get("Recipients") or body.get("recipients") or []
    return [r for r in found if isinstance(r, dict)]


def _listed(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The numbers an answer's recipient may be (upstream may write one without its '+')."""
    address = str(entry.get("Address") or entry.get("address") or "")
    return reported_keys(address) if address else ()
