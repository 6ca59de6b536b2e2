"""What :class:`SmartDialogClient` does for every operation: the quota hook, the bearer token,
retries, logging and error mapping. The client itself adds one method per operation."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from shared.deadline import keep_deadline, left, within

from ._auth import AuthProvider, TokenUnavailable
from ._exceptions import (
    NOT_SENT_ERRORS,
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    DuplicateRequestError,
    IdentityProviderError,
    InvalidParameterError,
    RateLimitError,
    SmartDialogError,
    answered_error,
    decode_body,
    display_path,
    error_message,
    mask_phone_numbers,
    mask_phone_numbers_in_id,
    read_answer,
    status_error_class,
)
from ._models import Message, WhatsAppTemplateMessage, to_wire
from ._operations import Operation, header_problem, text_problem
from ._retry import DEFAULT_MAX_RETRIES, parse_retry_after, retry_delay, should_retry

__all__ = ["DEFAULT_TIMEOUT", "USER_AGENT", "BaseClient"]

log = logging.getLogger("smartdialog.client")

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Connect within 5 s, then allow 30 s for each read, write and pool wait."""
USER_AGENT = "smartdialog-functions/0.1 (+httpx)"

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
SendBody = TypeVar("SendBody", Message, WhatsAppTemplateMessage)


class _MaskPhoneNumbers(logging.Filter):
    """Masks phone numbers in httpx's own request log lines (its URLs carry them in paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = mask_phone_numbers(text)
        if masked != text:
            record.msg, record.args = masked, ()
        return True


def _mask_httpx_logs() -> None:
    """Install the masking filter on the ``httpx`` logger once per process."""
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _MaskPhoneNumbers) for f in httpx_log.filters):
        httpx_log.addFilter(_MaskPhoneNumbers())


class BaseClient:
    """Sends one :class:`Operation` and maps its outcome; see :class:`SmartDialogClient` for
    the constructor's arguments and the retry rules."""

    def __init__(
        self,
        base_url: str,
        auth: AuthProvider,
        *,
        before_attempt: Callable[[], None] | None = None,
        before_send: Callable[[], None] | None = None,
        http_client: httpx.Client | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.max_retries = max_retries
        self.deadline = deadline
        self._before_attempt = before_attempt
        self._before_send = before_send
        self._sleep = sleep
        self._clock = clock
        _mask_httpx_logs()
        self._owns_http = http_client is None
        # Our own httpx client calls ``before_send`` from its request hook (after httpx's own
        # preparation, right before the transport); an injected one is left untouched and
        # ``before_send`` is called right before ``send`` instead.
        self._hooked = http_client is None and before_send is not None
        self._http = (
            http_client
            if http_client is not None
            else httpx.Client(
                timeout=timeout,
                event_hooks={"request": [self._request_hook]} if self._hooked else None,
            )
        )
        if deadline is not None and self._owns_http:
            keep_deadline(self._http)

    def _request_hook(self, request: httpx.Request) -> None:
        if self._before_send is not None:
            self._before_send()
        left(None, httpx.ConnectTimeout)  # only now: a stale grant is found first (no attempt)

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace callback: ``before_send`` right before the headers are written."""
        if event.endswith(".send_request_headers.started") and self._before_send is not None:
            self._before_send()

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections this client opened (and those of its msal provider)."""
        if self._owns_http:
            self._http.close()
        close_auth = getattr(self.auth, "close", None)
        if callable(close_auth):
            close_auth()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- one operation -------------------------------------------------------------------------

    def _send(
        self,
        op: Operation,
        message: SendBody,
        result: type[R],
        *,
        headers: Mapping[str, str],
        path_params: Mapping[str, str] | None = None,
    ) -> R:
        if message.RequestId is None:
            # One id per logical call, reused by every retry below.
            message = message.model_copy(update={"RequestId": str(uuid.uuid4())})
        response = self._request(
            op,
            path_params=path_params,
            headers=headers,
            body=to_wire(message),
            request_id=message.RequestId,
            original=result,
        )
        return self._parse(op, response, result.model_validate)

    def _request(
        self,
        op: Operation,
        *,
        path_params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        original: type[BaseModel] | None = None,
    ) -> httpx.Response:
        """Send ``op`` with quota hook, auth, retries and error mapping; the successful response."""
        # Checked before any attempt: a value that cannot be sent takes no quota token.
        path = op.expand(path_params or {})
        url = self.base_url + path
        _check_values(op, headers, "header", header_problem)
        _check_values(op, query, "query", text_problem)
        try:
            content = (
                json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
                if body is not None
                else None
            )
        except (UnicodeEncodeError, ValueError) as exc:  # a lone surrogate, NaN
            raise InvalidParameterError(
                operation_id=op.operation_id,
                parameter="body",
                location="body",
                reason=f"cannot be encoded as JSON ({type(exc).__name__})",
            ) from None
        base_headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if content is not None:
            base_headers["Content-Type"] = "application/json"
        base_headers.update(headers or {})
        where = {
            "operation_id": op.operation_id,
            "method": op.method,
            "path": display_path(path),
            "request_id": request_id and mask_phone_numbers_in_id(request_id),
        }
        with within(self.deadline):  # one deadline for every request of the operation
            return self._attempts(
                op,
                path=path,
                url=url,
                query=query,
                content=content,
                base_headers=base_headers,
                where=where,
                request_id=request_id,
                original=original,
            )

    def _attempts(
        self,
        op: Operation,
        *,
        path: str,
        url: str,
        query: Mapping[str, str] | None,
        content: bytes | None,
        base_headers: dict[str, str],
        where: dict[str, Any],
        request_id: str | None,
        original: type[BaseModel] | None,
    ) -> httpx.Response:
        """Send ``op`` until it succeeds or may not be sent again (``_request``'s loop: token,
        quota hook, attempt, retry or renewal, error mapping); the successful response."""
        retries_taken = 0
        refreshed = False
        reached = False  # an earlier try may have reached SmartDialog (its 409 is then ours)
        attempt = 0
        while True:
            attempt += 1
            # The token first: a slow identity provider must not age the quota slot taken next.
            token = self._token(op, path)
            if self._before_attempt is not None:
                self._before_attempt()
            request = self._http.build_request(
                op.method,
                url,
                params=query,
                content=content,
                headers={**base_headers, "Authorization": f"Bearer {token}"},
                extensions={"trace": self._trace} if self._before_send is not None else None,
            )
            if self._before_send is not None and not self._hooked:
                self._before_send()
            started = time.perf_counter()
            try:
                if not self._hooked:  # past the deadline (a slow token): not sent; hooked: there
                    left(None, httpx.ConnectTimeout)  # after ``before_send``, as here
                response = self._http.send(request, stream=True)
                try:
                    read_answer(response)
                finally:
                    response.close()  # a body cut short: its connection is not reused
            except httpx.HTTPError as exc:
                elapsed_ms = round((time.perf_counter() - started) * 1000)
                retry = retries_taken < self.max_retries and should_retry(
                    exc, replayable=op.replayable
                )
                delay = retry_delay(retries_taken, now=self._clock) if retry else None
                log.warning(
                    "SmartDialog %s attempt %d failed after %d ms: %s%s",
                    op.operation_id,
                    attempt,
                    elapsed_ms,
                    type(exc).__name__,
                    f"; retrying in {delay:.2f} s" if delay is not None else "",
                    extra={
                        **where,
                        "attempt": attempt,
                        "elapsed_ms": elapsed_ms,
                        "error": type(exc).__name__,
                        "retry_in": delay,
                    },
                )
                if delay is None:
                    raise self._connection_error(op, path, exc) from exc
                reached = reached or not isinstance(exc, NOT_SENT_ERRORS)
                self._sleep(delay)
                retries_taken += 1
                continue

            elapsed_ms = round((time.perf_counter() - started) * 1000)
            status = response.status_code
            if response.is_success:
                log.info(
                    "SmartDialog %s -> %d in %d ms (attempt %d)",
                    op.operation_id,
                    status,
                    elapsed_ms,
                    attempt,
                    extra={
                        **where,
                        "status": status,
                        "attempt": attempt,
                        "elapsed_ms": elapsed_ms,
                    },
                )
                return response
            if status == 401 and not refreshed:
                # One renewal and one more attempt, outside the retry budget.
                refreshed = True
                delay = 0.0
                self.auth.invalidate(token)
            elif retries_taken < self.max_retries and should_retry(
                response, replayable=op.replayable
            ):
                # None: the advised wait is longer than we sleep out; the error carries it.
                delay = retry_delay(retries_taken, response.headers, now=self._clock)
                retries_taken += 1
            else:
                delay = None
            log.warning(
                "SmartDialog %s -> %d in %d ms (attempt %d)%s",
                op.operation_id,
                status,
                elapsed_ms,
                attempt,
                f"; retrying in {delay:.2f} s" if delay is not None else "",
                extra={
                    **where,
                    "status": status,
                    "attempt": attempt,
                    "elapsed_ms": elapsed_ms,
                    "retry_in": delay,
                },
            )
            if delay is None:
                raise self._status_error(op, path, response, request_id, original, reached)
            reached = reached or status == 408 or status >= 500
            if delay > 0:
                self._sleep(delay)

    def _parse(self, op: Operation, response: httpx.Response, parse: Callable[[Any], T]) -> T:
        """``parse`` of the body, else :class:`APIResponseValidationError` (``replayable`` False
        for a create: SmartDialog said it did it). What an empty answer means is ``parse``'s to
        say (CreateGroupContact's id ``""``, NewMessage's ids from ``Location``): a body of
        another shape is never read as an empty one, which told the caller of a success with no
        id. A body carrying an error (:func:`answered_error`) is never a success."""
        body = decode_body(response)
        if (said := answered_error(response, body)) is not None:
            raise APIResponseValidationError(
                f"the {response.status_code} answer to {op.operation_id} carries an error: {said}",
                body=body,
                said=said,
                **_where(op, response.request.url.path),
            )
        try:
            return parse(body)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"the {response.status_code} body does not fit {op.operation_id}'s response: "
                f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}",
                body=body,
                **_where(op, response.request.url.path),
            ) from None

    def ready(self) -> None:
        """Have a valid bearer token in hand (fetched now unless cached), within ``deadline`` (an
        enclosing :func:`shared.deadline.within` still holds); the next operation's attempt then
        finds it cached. A caller that takes its quota grant before the call (the queue sender)
        calls this first, so no token fetch ages the grant. Raises what an attempt's token fetch
        raises (``CredentialsError``, ``IdentityProviderError`` naming no operation)."""
        with within(self.deadline):
            self._token(None, "")

    def _token(self, op: Operation | None, path: str) -> str:
        """The bearer token; an identity provider that fails (unreachable, timed out, an answer
        msal cannot read) raises :class:`IdentityProviderError`: nothing was sent."""
        try:
            return self.auth.token()
        except SmartDialogError:  # no credentials, or refused: CredentialsError
            raise
        except Exception as exc:
            raise IdentityProviderError(
                f"no token: the identity provider {_token_failure(exc)}",
                operation_id=op.operation_id if op else "token",
                method=op.method if op else "POST",
                path=path,
            ) from exc

    def _connection_error(
        self, op: Operation, path: str, exc: httpx.HTTPError
    ) -> APIConnectionError:
        where = _where(op, path)
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"request timed out ({type(exc).__name__})", **where)
        return APIConnectionError(f"connection error: {type(exc).__name__}: {exc}", **where)

    def _status_error(
        self,
        op: Operation,
        path: str,
        response: httpx.Response,
        request_id: str | None,
        original: type[BaseModel] | None,
        reached: bool = False,
    ) -> APIStatusError:
        """The error of ``response``. A send's 409 is a :class:`DuplicateRequestError` only
        with evidence that it answers this RequestId's earlier request: its body carries the
        original answer or its message says so (:data:`_DUPLICATE_REQUEST`), or an earlier try
        may have reached SmartDialog (``reached``: a 5xx, a 408, a timeout). The Swagger
        documents no 409; any other is a plain :class:`ConflictError`, nothing sent."""
        body = decode_body(response)
        status = response.status_code
        common: dict[str, Any] = {
            "status_code": status,
            "body": body,
            "headers": response.headers,
            **_where(op, path),
            "retry_after": parse_retry_after(response.headers, now=self._clock),
        }
        message = error_message(response, body)
        if status == 429:
            return RateLimitError(message, **common)
        result = _original_result(body, original) if status == 409 else None
        named = _DUPLICATE_REQUEST.search(message) is not None
        if request_id is not None and status == 409 and (result or named or reached):
            return DuplicateRequestError(message, request_id=request_id, original=result, **common)
        return status_error_class(status)(message, **common)


def _where(op: Operation, path: str) -> dict[str, Any]:
    """What an :class:`APIError` says of the request."""
    return {
        "operation_id": op.operation_id,
        "method": op.method,
        "path": path,
        "replayable": op.replayable,
    }


def _check_values(
    op: Operation,
    values: Mapping[str, str] | None,
    location: str,
    problem: Callable[[str], str | None],
) -> None:
    for name, value in (values or {}).items():
        reason = problem(str(value))
        if reason is not None:
            raise InvalidParameterError(
                operation_id=op.operation_id, parameter=name, location=location, reason=reason
            )


# A 409's words for a repeated RequestId, narrowly: "duplicate request (id)" opening a clause
# (nothing after "request" but "id" or the clause's end), or "request id", perhaps with the id
# (quoted, or a word with a digit), then "already used / exists / in use / processed" or "has
# been used / processed". A reading too wide records sent what never went out (a "not", any
# noun in the id's place); one too narrow only fails a repeat, with its reason.
_DUPLICATE_REQUEST = re.compile(
    r"(?:^|[.!;:]\s*)duplicated?\s*request(?:\s*id\b|\s*(?:$|[.!;]))"
    r"|\brequest\s*id(?:\s+(?:'[^']*'|\"[^\"]*\"|[\w-]*\d[\w-]*))?\s+(?:is\s+|was\s+|has\s+)?"
    r"(?:already\s+(?:been\s+)?(?:used|exists|in\s+use|processed)|been\s+(?:used|processed))\b",
    re.I,
)


def _original_result(body: object, model: type[BaseModel] | None) -> BaseModel | None:
    """The first send's result carried by a duplicate-RequestId 409 body, if it parses and
    names its message or recipients (a problem document's fields would parse too)."""
    if model is None or not isinstance(body, Mapping):
        return None
    fields = {k: v for k, v in body.items() if k not in ("errorMessage", "ErrorMessage")}
    if not fields.keys() & {"MessageId", "messageId", "Recipients", "recipients"}:
        return None
    try:
        return model.model_validate(fields)
    except ValidationError:
        return None


def _token_failure(exc: Exception) -> str:
    """How the identity provider failed, without its URL or answer (they may carry a tenant's
    secrets): timed out, not reached, the HTTP status it answered, or the exception's type."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({name})"
    if isinstance(exc, httpx.TransportError):
        return f"could not be reached ({name})"
    if isinstance(exc, TokenUnavailable):  # an OAuth error code only, never its description
        return f"{exc} ({name})"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"answered HTTP {exc.response.status_code} ({name})"
    if isinstance(exc, ValueError):  # msal's own: an answer it could not read
        return f"gave an answer that could not be read ({name})"
    return f"failed ({name})"
