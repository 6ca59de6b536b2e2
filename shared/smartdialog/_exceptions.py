"""Errors raised by the SmartDialog client (the hierarchy is drawn in the package docstring)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import httpx

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "CredentialsError",
    "DuplicateRequestError",
    "InternalServerError",
    "InvalidParameterError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SmartDialogError",
    "answer_text",
    "has_id_shape",
    "mask_phone_number",
    "mask_phone_numbers",
    "mask_phone_numbers_in_id",
    "read_answer",
]

#: Fewest digits a run must have to be treated as a phone number (short national numbers).
MIN_PHONE_DIGITS = 7
#: From this many digits on, the last four are kept; shorter numbers keep only their last two.
_KEEP_FOUR_FROM = 10
# A run of >= 7 digits, optionally led by "+" (or its percent-encoding, as in httpx's URLs) and
# separated by spaces or dashes, or in three or more groups by dots (+358.40.123.4567: not a
# decimal, 1234.5678, nor a time's seconds, 12.345678); not part of a longer word, id or dashed
# token; not a date (2024-01-15, 15-01-2024). Dotted: see :func:`_masked`.
_SEPARATED_DIGITS = r"(?:\d(?:(?: +|-)?\d){" + str(MIN_PHONE_DIGITS - 1) + r",}|\d+(?:\.\d+){2,})"
_MONTH, _DAY = r"(?:0[1-9]|1[0-2])", r"(?:0[1-9]|[12]\d|3[01])"
_DATE = rf"(?:\d{{4}}([-.]){_MONTH}\1{_DAY}|{_DAY}([-.]){_MONTH}\2\d{{4}})(?![\d.-])"
_PHONE_LIKE = re.compile(rf"(?<![\w-])(?!{_DATE})(?:\+|%2[Bb])?" + _SEPARATED_DIGITS + r"(?!\w)")


def mask_phone_number(number: str) -> str:
    """One phone number for logs: ``***`` and its last four digits (last two if it is short).

    ``+358 40 123 4567`` gives ``***4567``, ``1234567`` gives ``***67``; fewer than
    :data:`MIN_PHONE_DIGITS` digits give ``***``. The one masking style of the product
    (``shared.phone.mask_phone_number`` is this function).
    """
    digits = "".join(c for c in number if c.isdigit())
    if len(digits) < MIN_PHONE_DIGITS:
        return "***"
    return "***" + digits[-4 if len(digits) >= _KEEP_FOUR_FROM else -2 :]


def mask_phone_numbers(text: str) -> str:
    """``text`` with every phone-number-like run masked as :func:`mask_phone_number` does.

    A run is at least :data:`MIN_PHONE_DIGITS` digits, optionally after ``+`` (or ``%2B``), with
    spaces or a dash between digits (``040-123 4567``), or dots between three or more groups
    (``040.123.4567``; not an IPv4 address, a version or a date, ``05.01.2024``). Our ids (a
    UUID's groups may be all digits) are left whole.
    """
    return _outside_ids(_PHONE_LIKE, text)


def _outside_ids(pattern: re.Pattern[str], text: str) -> str:
    """``text`` with ``pattern``'s runs masked (:func:`_masked`) outside our ids."""
    kept, at = [], 0
    for found in _ID_SHAPE.finditer(text):
        kept += [pattern.sub(_masked, text[at : found.start()]), found.group(0)]
        at = found.end()
    return "".join(kept) + pattern.sub(_masked, text[at:])


def _masked(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(c.isdigit() for c in found)
    if digits < MIN_PHONE_DIGITS:
        return found
    if "." in found:  # a number from + or 0 on, or of 9 digits or more in groups of 2 to 4
        first, *rest = found.removeprefix("+").split(".")  # (a %2B one starts "%": a number)
        grouped = len(first) <= 4 and all(2 <= len(g) <= 4 for g in rest)  # 1.555.123.4567
        if (found[0] not in "+%0" and not (digits >= 9 and grouped)) or _IPV4.fullmatch(found):
            # 1.234.567 bytes, 10.0.19041.1: but a group that is a number alone is one
            return _LONG_GROUP.sub(lambda g: mask_phone_number(g.group(0)), found)
    return mask_phone_number(found)


_LONG_GROUP = re.compile(r"\d{" + str(MIN_PHONE_DIGITS) + ",}")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


#: An id of ours (or a caller's UUID): 32 hex digits in five groups, whose digit groups would read
#: as a phone number (about 2 % of generated ids), no phone number's; perhaps a lane member's
#: (``.l``, 17 digits of its time, 8 hex digits) or a bulk member's (``.``, 5 or 6 digits: its row).
_ID_SHAPE = re.compile(
    r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}(?:\.l[0-9]{17}[0-9a-f]{8}|\.[0-9]{5,6})?"
    r"(?![0-9A-Za-z]|[ -][0-9])"  # (its end: <uuid>.0401234567 is an id and a number)
)


def has_id_shape(value: str) -> bool:
    """Whether ``value`` has the shape of one of our ids (:data:`_ID_SHAPE`): no phone number."""
    return _ID_SHAPE.fullmatch(value) is not None


#: In an id not of ours, also a run of digits joined to the rest by ``-``, ``_`` or another
#: separator (``run-358401234567-x``), which :func:`mask_phone_numbers` leaves (a dashed token's
#: digits); not one between letters: a hex id's (``...a3fbb044644756d9``, half of them).
_DIGITS_IN_ID = re.compile(
    r"(?<![0-9A-Za-z])(?:\+|%2[Bb])?\d{" + str(MIN_PHONE_DIGITS) + r",}(?![0-9A-Za-z])"
)


def mask_phone_numbers_in_id(value: str) -> str:
    """An id for logs and spans (a RequestId, a message id: a caller's may hold a phone number),
    found whole by a search when it has an id's shape (:func:`has_id_shape`), else masked: every
    run of at least :data:`MIN_PHONE_DIGITS` digits that no letter or digit adjoins."""
    if has_id_shape(value):
        return value
    masked = mask_phone_numbers(value)
    return _outside_ids(_DIGITS_IN_ID, masked)


def display_path(path: str) -> str:
    """A request path fit for logs and errors: percent-decoded, phone numbers masked."""
    return mask_phone_numbers(unquote(path))


class SmartDialogError(Exception):
    """Base of every error this package raises."""


class CredentialsError(SmartDialogError):
    """No usable upstream credentials: none configured, or the identity provider refused them."""


class InvalidParameterError(SmartDialogError):
    """A value that cannot go into the request as given: a path segment that is empty, ``.``
    or ``..``, or has control characters; a header value that is not printable ASCII; text
    that is not valid Unicode. Raised before any attempt: nothing was sent and no quota token
    was taken. Never worth retrying: the same value fails the same way.

    ``parameter`` is the upstream name (``Customer-Id``, ``Group Service``, ``body``);
    ``location`` is ``path``, ``header``, ``query`` or ``body``; ``reason`` says what is wrong.
    """

    def __init__(self, *, operation_id: str, parameter: str, location: str, reason: str) -> None:
        super().__init__(f"{operation_id}: {parameter} ({location}) {reason}")
        self.operation_id = operation_id
        self.parameter = parameter
        self.location = location
        self.reason = reason


class APIError(SmartDialogError):
    """A call to one SmartDialog operation failed.

    ``operation_id``, ``method`` and ``path`` name the request (phone numbers in the path are
    masked); the request itself is not kept, so the bearer token never travels with the error.
    ``replayable``: the operation's (``Operation.replayable``): repeating it is harmless even if
    this attempt took effect; False for a POST without ``RequestId`` (a create, a registration).
    """

    def __init__(
        self, message: str, *, operation_id: str, method: str, path: str, replayable: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation_id = operation_id
        self.method = method
        self.path = display_path(path)
        self.replayable = replayable


#: Transport failures that prove the request never reached SmartDialog (it never left us).
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class APIConnectionError(APIError):
    """No HTTP response was received (DNS failure, refused or reset connection, protocol error)."""

    @property
    def certainly_not_sent(self) -> bool:
        """Whether the failure proves the request never reached SmartDialog; otherwise (a
        reset, a read timeout) it may have taken effect."""
        return isinstance(self.__cause__, NOT_SENT_ERRORS)


class APITimeoutError(APIConnectionError):
    """The request timed out (connecting, writing, reading or waiting for a pooled connection)."""


class IdentityProviderError(APIConnectionError):
    """No token for the request: the identity provider could not be reached, timed out or
    answered with something msal could not read. Nothing was sent to SmartDialog."""

    @property
    def certainly_not_sent(self) -> bool:
        return True


class APIResponseValidationError(APIError):
    """A successful response whose body does not fit the documented shape. ``said``: the error
    the body names (an :data:`ERROR_FIELDS` field: a proxy's or gateway's 2xx carrying an
    error), else None."""

    def __init__(
        self,
        message: str,
        *,
        operation_id: str,
        method: str,
        path: str,
        body: object,
        replayable: bool = True,
        said: str | None = None,
    ) -> None:
        super().__init__(
            message, operation_id=operation_id, method=method, path=path, replayable=replayable
        )
        self.body = body
        self.said = said


class APIStatusError(APIError):
    """SmartDialog answered with a 4xx or 5xx status.

    ``message`` is the upstream ``errorMessage`` when the body has one; ``body`` is the decoded
    JSON body (or the raw text, or None when empty); ``headers`` are the response headers;
    ``retry_after`` is the wait they advise in seconds (``Retry-After``, ``retry-after-ms``;
    uncapped), if any. ``str(error)`` masks phone numbers quoted in the message; ``message`` and
    ``body`` do not.
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: object,
        headers: httpx.Headers,
        operation_id: str,
        method: str,
        path: str,
        retry_after: float | None = None,
        replayable: bool = True,
    ) -> None:
        super().__init__(
            message, operation_id=operation_id, method=method, path=path, replayable=replayable
        )
        self.status_code = status_code
        self.body = body
        self.headers = headers
        self.retry_after = retry_after

    def __str__(self) -> str:
        # Upstream messages may quote a recipient; str() is what ends up in logs.
        where = f"{self.operation_id} ({self.method} {self.path})"
        return f"{self.status_code} from {where}: {mask_phone_numbers(self.message)}"


class BadRequestError(APIStatusError):
    """400: the request broke the contract (missing field, bad value, unknown recipient format)."""


class AuthenticationError(APIStatusError):
    """401: the token was refused, even after one refresh."""


class PermissionDeniedError(APIStatusError):
    """403: the credentials may not use this customer, service or operation."""


class NotFoundError(APIStatusError):
    """404: the customer, service, contact, template or pipeline action does not exist."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the current state upstream."""


class DuplicateRequestError(ConflictError):
    """409 for a send whose ``RequestId`` was already used: the message was *not* sent again.

    ``request_id`` is the duplicate id; ``original`` is the first send's result parsed into the
    operation's response model when the body carries it (else None; ``body`` has the raw body).
    Raised only with evidence (the body carries the original or names a duplicate or the
    RequestId, or an earlier try of the call may have reached SmartDialog); any other 409 to a
    send is a plain :class:`ConflictError`: the Swagger documents none.
    """

    def __init__(
        self, message: str, *, request_id: str | None, original: Any, **status: Any
    ) -> None:
        super().__init__(message, **status)
        self.request_id = request_id
        self.original = original


class RateLimitError(APIStatusError):
    """429: over SmartDialog's quota. ``retry_after`` is the advised wait in seconds, if given."""


class InternalServerError(APIStatusError):
    """5xx: SmartDialog failed; for sends, whether the message went out is unknown.
    ``retry_after``: how long SmartDialog asked to wait (a 503's ``Retry-After``), if it did."""


_BY_STATUS: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def decode_body(response: httpx.Response) -> object:
    """The response body as JSON when it parses, else the text, else None. A lone UTF-16
    surrogate's escape (``"\\ud800"``: valid JSON, as an upstream writes text cut between
    the halves of an emoji) reads as U+FFFD: no such text can be stored, logged or answered."""
    if not response.content:
        return None
    try:
        body = json.loads(response.content)
        return _no_lone_surrogates(body) if _SURROGATE_ESCAPE.search(response.content) else body
    except (ValueError, RecursionError):  # nested past the parser's depth: text too
        return response.text


#: The JSON escape of a UTF-16 surrogate (a pair's halves are joined by the parser: a lone one
#: is what stays a surrogate).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_lone_surrogates(value: object) -> object:
    """``value`` (parsed JSON) with every lone surrogate in its texts and keys as U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_no_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    return value


#: What a 2xx body its Content-Encoding does not decode reads as: text no parser takes.
_UNDECODABLE = b"(an answer whose Content-Encoding could not be decoded)"
#: The most of an answer read, decoded: SmartDialog's longest (its regions, a customer's
#: templates) and an identity provider's are kilobytes. A longer one is not read on (a proxy's
#: page, a body without end, a compressed bomb would hold the worker's memory); it reads as
#: :data:`_TOO_LONG`.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_TOO_LONG = b"(an answer longer than 8 MiB: not read)"


def read_answer(response: httpx.Response) -> None:
    """Read the body of ``response`` (sent with ``stream=True``), up to
    :data:`MAX_ANSWER_BYTES`. A body its Content-Encoding does not decode is unreadable, not a
    lost answer, so its status decides: empty for an error (as an empty body is read),
    :data:`_UNDECODABLE` for a 2xx (as an unparseable one)."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                response._content = _TOO_LONG
                return
            chunks.append(chunk)
    except httpx.DecodingError:
        response._content = _UNDECODABLE if response.is_success else b""
        return
    response._content = b"".join(chunks)


def answer_text(response: httpx.Response) -> str:
    """``response``'s text for a parser of its own (msal's): a JSON answer holding a lone
    surrogate's escape written again as :func:`decode_body` reads it (U+FFFD)."""
    if not _SURROGATE_ESCAPE.search(response.content):
        return response.text
    body = decode_body(response)
    return body if isinstance(body, str) else json.dumps(body)


#: The fields an answer names an error in (SmartDialog's ``errorMessage``, a gateway's
#: ``error``): no documented 2xx answer has one, so a 2xx carrying one is not a success.
ERROR_FIELDS = ("errorMessage", "ErrorMessage", "error", "Error")


def answered_error(response: httpx.Response, body: object) -> str | None:
    """What an answer's :data:`ERROR_FIELDS` say, if it has one: its text, a gateway's
    ``{"error": {"message": ...}}``, else the field as JSON (``{"error": true}``) cut short;
    never the status's reason phrase ("OK") in place of the error."""
    if not isinstance(body, Mapping):
        return None
    for key in ERROR_FIELDS:
        if not (value := _message_of(body.get(key))):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return text if len(text) <= _QUOTED else text[:_QUOTED] + "..."
    return None


def _message_of(value: object) -> object:
    """An error field's value: a gateway's ``{"error": {"message": ...}}`` as its message."""
    if isinstance(value, Mapping):
        return value.get("message") or value.get("Message") or value
    return value


def error_message(response: httpx.Response, body: object) -> str:
    """What SmartDialog said: the text of its ``errorMessage`` (or ``message``, ``error``, any
    casing; a gateway's ``{"error": {"message": ...}}`` too, as :func:`answered_error` reads a
    2xx's); an RFC 7807 problem's ``detail`` or else ``title``, with its ``errors`` when they
    are short (an ASP.NET validation problem); plain text, up to its first :data:`_QUOTED`
    characters (then ``...``). An HTML page (``text/html``, or text opening with ``<``) is not
    quoted: it says nothing to the caller, and only its status is given."""
    if isinstance(body, Mapping):
        for key in ("errorMessage", "ErrorMessage", "message", "Message", "error", "Error"):
            value = _message_of(body.get(key))
            if isinstance(value, str) and value:
                return value
        said = next((v for k in ("detail", "title") if isinstance(v := body.get(k), str) and v), "")
        errors = _problem_errors(body.get("errors"))
        if said and errors and len(errors) <= _SHORT:
            return f"{said.rstrip('.')}: {errors}"
        if said or errors:
            return said or errors[:_SHORT]
    if isinstance(body, str) and body.strip():
        text = body.strip()
        if "html" not in response.headers.get("Content-Type", "") and not text.startswith("<"):
            return text if len(text) <= _QUOTED else text[:_QUOTED] + "..."
        return f"SmartDialog answered {response.status_code} with a non-JSON page."
    return response.reason_phrase or f"HTTP {response.status_code}"


#: The longest list of a problem's ``errors`` quoted from an error answer.
_SHORT = 300
#: The most of an error answer's plain text quoted, then "..." (not shared.logs.cut_text:
#: shared.logs imports this package).
_QUOTED = 1000


def _problem_errors(errors: object) -> str:
    """A problem's ``errors`` (``{"field": ["message", ...]}``, or a list) as one line."""
    if isinstance(errors, Mapping):
        parts = [
            f"{field}: {' '.join(map(str, said if isinstance(said, list) else [said]))}"
            for field, said in errors.items()
        ]
        return "; ".join(parts)
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors if isinstance(e, str | int | float))
    return ""


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The error class for a status without extra fields (not 429, not a duplicate 409)."""
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIStatusError)
