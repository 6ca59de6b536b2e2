"""When a message stops retrying, and what its failure says: one whose attempt may have reached
upstream (``maybe_sent``) fails ``outcome-unknown``, never as if it certainly was not sent.
See docs/architecture.md, "State machines"."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from shared.messages import FailureInfo, MessageRecord, MessageStatus
from shared.outbound._attempt import Refused

__all__ = [
    "CONFIGURATION",
    "expired",
    "give_up",
    "handed_back",
    "in_doubt",
    "may_have_been_sent",
    "not_repeated",
    "noted",
    "poisoned",
    "poisoned_command_doubt",
    "redrive_doubt",
    "refusal_failure",
    "remember_interrupted",
    "request_id_taken",
    "waited",
    "waiting_error",
]

#: The ``LastError`` code of a send waiting for a broken setting or refused credentials.
CONFIGURATION = "configuration"


def remember_interrupted(record: MessageRecord, now: dt.datetime) -> dict[str, Any]:
    """What a claim of ``record`` at ``now`` remembers of the claims before: one still
    ``sending`` (its worker stopped, perhaps mid-call) may have been sent; and when it was first
    claimed (``claimed_at``; an older row already tried: its creation)."""
    tried = record.attempts or record.may_have_reached
    first = record.claimed_at or (record.created_at if tried else now)
    interrupted = {"maybe_sent": True} if record.status is MessageStatus.SENDING else {}
    return {**interrupted, "claimed_at": first}


def handed_back(record: MessageRecord) -> dict[str, Any]:
    """The changes that hand ``record``'s claim back, no call made: the attempt not counted, no
    lease, and no ``claimed_at`` when none may have gone."""
    attempts = max(0, record.attempts - 1)  # a re-driven one in doubt (attempts 0) keeps its time
    gone = attempts or record.maybe_sent
    return {"attempts": attempts, "lease_until": None, **({} if gone else {"claimed_at": None})}


def given_back(
    record: MessageRecord,
    now: dt.datetime,
    error: FailureInfo | None = None,
    status: MessageStatus = MessageStatus.QUEUED,
    **extra: Any,
) -> dict[str, Any]:
    """The changes that hand ``record``'s claim back as ``status`` at ``now`` (:func:`handed_back`);
    ``error`` its LastError where no failed attempt's stands (:func:`noted`), then ``extra``."""
    back = {"status": status, **handed_back(record), "updated_at": now}
    return back | noted(record, error) | extra


def waiting_error(problem: str) -> FailureInfo:
    """A pending send's ``LastError`` while ``problem`` (naming a setting, never its value)
    holds its connection's sends."""
    title = "Waiting for a setting to be fixed"
    return FailureInfo(code=CONFIGURATION, title=title, detail=problem)


def noted(record: MessageRecord, error: FailureInfo | None) -> dict[str, Any]:
    """The change that makes ``error`` (:func:`waiting_error`) ``record``'s ``LastError``: none
    where it is already, or where a failed attempt's (more specific) stands."""
    last = record.last_error
    if error is None or last == error or (last is not None and last.code != CONFIGURATION):
        return {}
    return {"last_error": error}


def waited(record: MessageRecord) -> dict[str, Any]:
    """The claim change for ``record``: the wait for a setting it recorded (its ``LastError``,
    :func:`waiting_error`) is over."""
    last = record.last_error
    return {"last_error": None} if last is not None and last.code == CONFIGURATION else {}


def may_have_been_sent(detail: str | None) -> str:
    """A failure's detail, told that an attempt may have reached upstream."""
    note = (
        "An attempt failed in a way that does not prove SmartDialog did not accept it "
        "(a timeout, a lost answer, a 5xx), so the message may have been sent."
    )
    return f"{note} {detail}" if detail else note


def refusal_failure(refused: Refused, record: MessageRecord, *, named: bool) -> FailureInfo:
    """Why ``record`` failed when upstream refused its call: ``outcome-unknown`` when an earlier
    attempt may have reached upstream and the refusal names none of its recipients (``named``),
    as it may be the answer to a repeat of that RequestId; else ``upstream-rejected``."""
    failure = refused.failure(record.attempts)
    if not record.maybe_sent or named:
        return failure
    title = f"SmartDialog refused a repeat ({refused.status}); it may have been sent"
    return _unknown(failure, title, may_have_been_sent(refused.message))


def request_id_taken(record: MessageRecord) -> FailureInfo:
    """Why ``record`` failed when upstream answered 409 with another message's original
    (:meth:`Sent.answers_another`): it was not sent, and a repeat with that RequestId never is."""
    return FailureInfo(
        code="duplicate-request-id",
        title="SmartDialog already has another message with this RequestId in this account",
        detail=(
            f"RequestId {record.request_id!r} was used first by a message to other recipients "
            "(perhaps another customer's of the same connection: SmartDialog remembers a "
            "RequestId per account, for 7 days), so this one was not sent. Send it again with "
            "another RequestId."
        ),
        upstreamStatus=409,
        attempts=record.attempts,
    )


def not_repeated(
    record: MessageRecord, title: str, why: str, error: FailureInfo | None = None
) -> FailureInfo:
    """``outcome-unknown`` for ``record``, whose operation carries no RequestId, so an attempt
    that may have reached upstream (``why``; ``error`` its failure, if any) is not repeated."""
    base = error or FailureInfo(code="outcome-unknown", title=title, attempts=record.attempts)
    return _unknown(
        base, title, f"{record.operation} carries no RequestId, and {why}; it is not repeated."
    )


def give_up(
    record: MessageRecord,
    error: FailureInfo,
    title: str,
    next_at: dt.datetime,
    *,
    max_attempts: int,
    maybe_sent: bool = False,
) -> FailureInfo | None:
    """Why a message whose attempt failed transiently (``error``, ``title``) stops now (out of
    attempts, or ``next_at`` past its validity), or None: it retries. ``outcome-unknown`` if
    this attempt (``maybe_sent``) or an earlier one may have reached upstream."""
    maybe_sent = maybe_sent or record.maybe_sent
    if record.attempts >= max_attempts:
        if maybe_sent:
            gave_up = f"Gave up after {record.attempts} attempts; it may have been sent: {title}"
            return _unknown(error, gave_up, may_have_been_sent(error.detail))
        code = "attempts-exhausted" if error.code != "rate-limited" else error.code
        return error.model_copy(
            update={"code": code, "title": f"Gave up after {record.attempts} attempts: {title}"}
        )
    if next_at >= record.valid_until:
        return expired(record, last=error, maybe_sent=maybe_sent)
    return None


def expired(
    record: MessageRecord,
    last: FailureInfo | None = None,
    *,
    maybe_sent: bool = False,
    waiting: str | None = None,
) -> FailureInfo:
    """The failure of a message not sent within its validity; ``outcome-unknown`` if an
    attempt (the record's, or ``maybe_sent``: the one just made) may have reached upstream.
    It quotes ``last`` (default: its ``LastError``) and what it was ``waiting`` for (default:
    the wait its ``LastError`` notes, :func:`waiting_error`, then no last error)."""
    last = last or record.last_error
    if noted := [e for e in (last, record.last_error) if e and e.code == CONFIGURATION]:
        waiting = waiting or noted[0].detail
        last = None if last is noted[0] else last
    detail = (
        f"validUntil {record.valid_until.isoformat()} passed"
        + (f" while it waited for {waiting}" if waiting else "")
        + (f"; last error: {last.title}" if last else "")
    )
    status = last.upstreamStatus if last else None
    if maybe_sent or record.maybe_sent:
        return FailureInfo(
            code="outcome-unknown",
            title="Not confirmed within its validity period; it may have been sent",
            detail=may_have_been_sent(detail),
            upstreamStatus=status,
            attempts=record.attempts,
        )
    return FailureInfo(
        code="expired",
        title="Not sent within its validity period",
        detail=detail,
        upstreamStatus=status,
        attempts=record.attempts,
    )


def poisoned(record: MessageRecord) -> FailureInfo:
    """Why ``record`` fails when the Functions host moved its send command to the poison queue:
    ``poisoned``, or ``outcome-unknown`` if an attempt may have reached upstream."""
    title = "The Functions host gave up on its queued command (moved to the poison queue)"
    detail = "Every delivery failed on our side (storage, or a damaged record); see the logs."
    failure = FailureInfo(code="poisoned", title=title, detail=detail, attempts=record.attempts)
    return in_doubt(record, failure)


def in_doubt(record: MessageRecord, failure: FailureInfo) -> FailureInfo:
    """``failure``, which ends ``record`` before a repeat could settle an attempt that may have
    reached upstream, as ``outcome-unknown`` (re-driven only with ``force``)."""
    if not record.may_have_reached:
        return failure
    title = f"{failure.title}; it may have been sent"
    return _unknown(failure, title, may_have_been_sent(failure.detail))


def _unknown(failure: FailureInfo, title: str, detail: str) -> FailureInfo:
    """``failure`` as ``outcome-unknown``: it may have been sent."""
    return failure.model_copy(update={"code": "outcome-unknown", "title": title, "detail": detail})


def redrive_doubt(failed: MessageRecord) -> str | None:
    """Why a re-drive of ``failed`` needs ``force`` (it failed ``outcome-unknown``), or None."""
    if failed.failure is None or failed.failure.code != "outcome-unknown":
        return None
    if failed.request_id is None:
        why = "it has no RequestId, so SmartDialog cannot tell a repeat"
    elif failed.pack_id is not None:
        why = f"it went in pack {failed.pack_id}, whose RequestId a re-drive does not reuse"
    else:
        why = "SmartDialog tells a repeat of its RequestId only at best effort"
    return (
        f"message {failed.message_id} may have been sent already (outcome-unknown) and {why}: "
        "check its recipients' delivery reports, then re-drive it with force=true"
    )


def poisoned_command_doubt(text: str) -> str | None:
    """Why a re-drive of send command ``text`` from the poison queue needs ``force``: it names
    no message, so its id was its queue message's, which a re-drive would not keep."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "operation" not in value or value.get("messageId"):
        return None
    body = value.get("body")
    if isinstance(body, dict) and body.get("RequestId"):
        return None
    return (
        "the command names no message (no messageId or RequestId), so a re-drive would send it "
        "as a new message: check whether it was sent, then re-drive it with force=true"
    )
