"""RFC 9457 problem documents: the one error shape of every HTTP answer we give.

A :class:`Problem` is both an exception (raise it anywhere below an HTTP entry point) and the
document itself (:meth:`Problem.to_dict`). Its members are the RFC's ``type``, ``title``,
``status``, ``detail`` and ``instance``, plus one extension member, ``errors``: the offending
request fields, each ``{"field": ..., "message": ...}``. ``field`` is the name the caller used:
a path, query or header parameter as named in the route (``Phone``, ``Customer-Id``) or a body
field as a JSON path (``phone``, ``Buttons[1].Data``).

``type`` is one of the URNs in :class:`ProblemType`; ``docs/actions.md`` lists them with their
meaning. ``detail`` and ``errors`` are written for the flow author and never carry a stack trace,
a token or a secret. Constructors for the answers every entry point needs:

- :func:`validation_problem` (400, every offending field at once)
- :func:`rate_limited` (429 with ``Retry-After``)
- :func:`too_large` (413, the body is over a limit)
- :func:`internal_error` (500, nothing about the cause)

Upstream failures are mapped in :mod:`shared.actions` (``upstream_problem``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "FieldError",
    "Problem",
    "ProblemType",
    "internal_error",
    "rate_limited",
    "request_instance",
    "retry_after_header",
    "storage_unavailable",
    "too_large",
    "validation_problem",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemType(StrEnum):
    """The ``type`` URIs we use (URNs: stable identifiers, not web pages)."""

    VALIDATION = "urn:smartdialog-functions:problem:validation"
    UPSTREAM_REJECTED = "urn:smartdialog-functions:problem:upstream-rejected"
    NOT_FOUND = "urn:smartdialog-functions:problem:not-found"
    CONFLICT = "urn:smartdialog-functions:problem:conflict"
    RATE_LIMITED = "urn:smartdialog-functions:problem:rate-limited"
    TOO_LARGE = "urn:smartdialog-functions:problem:too-large"
    UPSTREAM_FORBIDDEN = "urn:smartdialog-functions:problem:upstream-forbidden"
    UPSTREAM_UNAVAILABLE = "urn:smartdialog-functions:problem:upstream-unavailable"
    UPSTREAM_TIMEOUT = "urn:smartdialog-functions:problem:upstream-timeout"
    QUOTA_UNAVAILABLE = "urn:smartdialog-functions:problem:quota-unavailable"
    STORAGE_UNAVAILABLE = "urn:smartdialog-functions:problem:storage-unavailable"
    CONFIGURATION = "urn:smartdialog-functions:problem:configuration"
    INTERNAL = "urn:smartdialog-functions:problem:internal"
    UNAUTHORIZED = "urn:smartdialog-functions:problem:unauthorized"
    FORBIDDEN = "urn:smartdialog-functions:problem:forbidden"


@dataclass(frozen=True)
class FieldError:
    """One offending request field: its caller-facing name and what is wrong with it."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class Problem(Exception):
    """An RFC 9457 problem document, raisable.

    ``headers`` are extra response headers (``Retry-After``); ``instance`` identifies this
    occurrence (we use the request's tracking id as a URN) and may be filled in late by the
    entry point with :meth:`with_instance`.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: ProblemType = ProblemType.INTERNAL,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        instance: str | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors: tuple[FieldError, ...] = tuple(errors)
        self.headers: dict[str, str] = dict(headers or {})
        self.instance = instance

    def with_instance(self, instance: str) -> Problem:
        """This problem with ``instance`` set (unless it already has one)."""
        if self.instance is None:
            self.instance = instance
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; ``detail``, ``instance`` and ``errors`` only when present."""
        doc: dict[str, Any] = {"type": str(self.type), "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if self.instance:
            doc["instance"] = self.instance
        if self.errors:
            doc["errors"] = [e.to_dict() for e in self.errors]
        return doc

    def to_json(self) -> bytes:
        """The document as UTF-8 JSON bytes, ready for an ``application/problem+json`` body."""
        return json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")

    def __repr__(self) -> str:
        return f"Problem({self.status}, {self.title!r}, type={str(self.type)!r})"


def validation_problem(errors: Iterable[FieldError]) -> Problem:
    """400: the request is invalid; ``errors`` names every offending field."""
    listed = tuple(errors)
    fields = ", ".join(dict.fromkeys(e.field for e in listed))
    return Problem(
        400,
        "The request is not valid",
        f"Correct these fields and send the request again: {fields}." if fields else None,
        type=ProblemType.VALIDATION,
        errors=listed,
    )


#: The longest ``Retry-After`` we answer: advice passed on from SmartDialog is cut to it (a
#: caller that honours years of advice would never retry; a retry an hour on is told again).
RETRY_AFTER_MAX_SECONDS = 3600


def retry_after_header(seconds: float | None, default: int = 1) -> dict[str, str]:
    """``{"Retry-After": n}`` with ``n`` whole seconds, rounded up, from 1 to
    :data:`RETRY_AFTER_MAX_SECONDS`."""
    value = default if seconds is None or seconds <= 0 else min(seconds, RETRY_AFTER_MAX_SECONDS)
    return {"Retry-After": str(max(1, math.ceil(value)))}


def rate_limited(retry_after: float | None, detail: str) -> Problem:
    """429 with ``Retry-After``: too many calls; try again after the given seconds."""
    return Problem(
        429,
        "Too many requests",
        detail,
        type=ProblemType.RATE_LIMITED,
        headers=retry_after_header(retry_after),
    )


def storage_unavailable(
    title: str, retry_after: float = 5, cause: BaseException | None = None
) -> Problem:
    """503 with ``Retry-After``: our storage (Table, queue, blob) failed; repeating the request
    does it again (a status poll, what it had not brought up to date). Without ``Retry-After``
    when ``cause`` (the storage SDK's error) is one no retry mends: the account refused the app
    (401/403: its key, identity or role). A sign-in that could not be had (no token from the
    managed identity's endpoint) has no status: it may pass, so it is retried."""
    if getattr(cause, "status_code", None) in (401, 403):
        code = getattr(cause, "error_code", None) or getattr(cause, "status_code", "")
        code = getattr(code, "value", code)  # the SDKs' error codes are enums
        detail = f"Our storage refused the app ({code}); an administrator must act."
        return Problem(503, title, detail, type=ProblemType.STORAGE_UNAVAILABLE)
    detail = "Our storage failed; try again later."
    headers = retry_after_header(retry_after)
    return Problem(503, title, detail, type=ProblemType.STORAGE_UNAVAILABLE, headers=headers)


def too_large(size: int, limit: int, *, setting: str | None = None) -> Problem:
    """413: the body (``size`` bytes) is over ``limit`` bytes; nothing of it was read."""
    where = f" (the app setting {setting})" if setting else ""
    return Problem(
        413,
        "The request is too large",
        f"The body has {size:,} bytes; this app takes at most {limit:,}{where}. Send less, "
        "e.g. split a bulk send into several.",
        type=ProblemType.TOO_LARGE,
    )


def request_instance(tracking_id: str) -> str:
    """A problem's ``instance``: the request it answers, by its tracking id (as logged)."""
    return f"urn:smartdialog-functions:request:{tracking_id}"


def internal_error() -> Problem:
    """500 for a failure we did not foresee: says nothing about the cause (the log does)."""
    return Problem(
        500,
        "Internal error",
        "The request failed unexpectedly. Quote the instance when you report it.",
        type=ProblemType.INTERNAL,
    )
