"""The request pipeline every action runs through: parse, validate, call, map errors, log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from shared import telemetry
from shared.actions._reading import (
    body_query_names,
    error_field,
    error_message,
    param_problem,
    present,
    raw_body_field,
    read_body,
    read_raw_body,
    stripped,
    unread_input,
)
from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionRequest,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    SettingDefault,
)
from shared.actions.fields import PHONE_REGIONS_CONTEXT
from shared.deadline import within
from shared.logs import cut_secrets, loggable_id, loggable_text, redacted, redacted_traceback
from shared.problems import (
    PROBLEM_CONTENT_TYPE,
    FieldError,
    Problem,
    ProblemType,
    internal_error,
    rate_limited,
    request_instance,
    retry_after_header,
    storage_unavailable,
    too_large,
    validation_problem,
)
from shared.settings_leniency import leniently

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.smartdialog import SmartDialogClient, SmartDialogError

__all__ = [
    "ClientFactory",
    "parse_input",
    "run_action",
    "shared_client",
    "unexpected_failure_response",
    "unknown_action_response",
    "upstream_problem",
]

log = logging.getLogger("smartdialog.actions")

ClientFactory = Callable[["Settings"], "SmartDialogClient"]
#: Seconds we advise waiting after a 429 or an identity provider's failure not saying how long.
DEFAULT_UPSTREAM_RETRY_AFTER = 5.0
SYNC_MAX_RETRIES = 0  #: retries of a failed upstream call in an action (the caller's do the rest)
#: Seconds an action's upstream calls take in all (tokens, quota waits, answers), then 504: well
#: before Azure ends an HTTP function at 230 s (a bare 5xx); a quota wait takes half at most.
SYNC_DEADLINE_SECONDS = 120.0
#: Seconds we advise waiting when the quota store cannot be reached.
QUOTA_STORE_RETRY_AFTER = 5.0
_CHECK = "Check before repeating a change."
_AFTER = "try again after Retry-After seconds."
_MAYBE = f"the request may or may not have taken effect. {_CHECK}"


# --- the shared upstream client ------------------------------------------------------------------


class _ClientCache:
    """One client per settings object, for the life of the process; never evicts.

    A process sees one settings object in practice (``get_settings`` is cached), so nothing is
    bounded: an evicted client would leak its connection pool (and a bounded cache could close a
    client another thread is still using). :meth:`cache_clear` closes every client it drops.
    Settings objects are frozen, hence hashable. Thread-safe: one client per key, ever."""

    def __init__(self, factory: Callable[[Settings], SmartDialogClient]) -> None:
        self._factory = factory
        self._clients: dict[Settings, SmartDialogClient] = {}
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        self.__doc__ = factory.__doc__

    def __call__(self, settings: Settings) -> SmartDialogClient:
        with self._lock:
            client = self._clients.get(settings)
            if client is None:
                self._misses += 1
                client = self._clients[settings] = self._factory(settings)
            else:
                self._hits += 1
            return client

    def cache_info(self) -> _CacheInfo:
        """Hits, misses and size, like ``functools.lru_cache``'s (``maxsize`` is None)."""
        with self._lock:
            return _CacheInfo(self._hits, self._misses, None, len(self._clients))

    def cache_clear(self) -> None:
        """Forget every client and close its connections (tests, settings reloads)."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            self._hits = self._misses = 0
        for client in clients:
            client.close()


class _CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int | None
    currsize: int


def _new_shared_client(settings: Settings) -> SmartDialogClient:
    """The process-wide client of the sync actions for ``settings``, cached per settings object.
    Every attempt takes a token from the cluster-wide quota (:func:`shared.quota.from_settings`),
    waiting at most ``SMARTDIALOG_QUOTA_WAIT_SECONDS`` before ``QuotaExceeded``; it must still be
    fresh when its request leaves (a slow connect): a stale one is replaced once within that
    wait, else ``StaleGrant`` (both 429). :data:`SYNC_MAX_RETRIES` retries (a 401 still renews
    the token once): a prompt 429/502 with ``Retry-After``, which Power Automate's and Logic
    Apps' retry policies honour, serves a flow better than a function sleeping out the advice."""
    from shared import quota
    from shared.smartdialog import SmartDialogClient, auth_from_settings

    gate = quota.from_settings(settings).gate(
        min(settings.quota_wait_seconds, SYNC_DEADLINE_SECONDS / 2), renew=True)  # fmt: skip
    return SmartDialogClient(
        settings.base_url,
        auth_from_settings(settings),
        before_attempt=gate,
        before_send=gate.before_send,
        max_retries=SYNC_MAX_RETRIES,
        deadline=SYNC_DEADLINE_SECONDS,
    )


shared_client = _ClientCache(_new_shared_client)


# --- parsing ------------------------------------------------------------------------------------


def _marker(info: FieldInfo) -> Param | Body | None:
    return next((m for m in info.metadata if isinstance(m, Param | Body)), None)


def _setting_default(info: FieldInfo) -> SettingDefault | None:
    return next((m for m in info.metadata if isinstance(m, SettingDefault)), None)


def _body_defaults(model: Any, body: dict[str, Any], settings: Settings) -> None:
    """Fill omitted top-level body fields that have a :class:`SettingDefault` from settings."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return
    for name, info in model.model_fields.items():
        default = _setting_default(info)
        key = info.alias or name
        if default is not None and not present(body.get(key)):
            value = getattr(settings, default.attribute, None)
            if present(value):
                body[key] = value


def _regions(value: Any) -> list[str]:
    from shared.phone import MAX_REGIONS, is_region

    listed = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [r for r in listed[:MAX_REGIONS] if isinstance(r, str) and is_region(r)]


def _refused(fields: list[str], status: int) -> str:
    """A problem's outcome in the log line: the fields it names, else its status."""
    named = ", ".join(dict.fromkeys(fields))
    # A field name can be a caller's key (an unknown field), even a phone number.
    return "invalid fields: " + loggable_text(named) if named else f"problem {status}"


def parse_input(
    model: type[ActionInput], request: ActionRequest, settings: Settings
) -> ActionInput:
    """The validated input, or :class:`Problem` 400 naming every offending field at once.

    Parameters are read from where their :class:`Param` says and stripped of surrounding
    blanks. An empty value counts as absent (omitted ones with a :class:`SettingDefault` come
    from settings); a blank one (``"   "``) is passed on as ``""`` for the field's validation to
    refuse, never replaced by a default. A given value with control characters, ``.`` or
    ``..``, or non-ASCII in a header, is refused whatever its field (:mod:`._reading`). The
    :class:`Body` field from the JSON body, read strictly (non-finite numbers, huge integers,
    lone surrogates, deep nesting: 400 naming their path). Phone numbers are read in the
    regions named by the model's ``phone_regions_from`` field (default FI). Input the model
    does not read is refused, never dropped (:func:`._reading.unread_input`)."""
    raw: dict[str, Any] = {}
    names: dict[str, str] = {}
    settings_hints: dict[str, SettingDefault] = {}
    errors: list[FieldError] = []
    body_field: str | None = None
    body_broken = False
    refused_params: set[str] = set()
    declared = dict.fromkeys(model.ignored_query, "query")  # wire name -> where: may be given
    for name, info in model.model_fields.items():
        marker = _marker(info)
        if isinstance(marker, Body):
            body_field = name
            raw_field = raw_body_field(marker, request)
            if raw_field is not None:
                data, problems = read_raw_body(request, info.annotation, raw_field)
                declared |= dict.fromkeys(body_query_names(info.annotation, raw_field), "query")
            else:
                data, problems = read_body(request)
            errors.extend(problems)
            body_broken = bool(problems)
            if data is not None:  # None with problems
                _body_defaults(info.annotation, data, settings)
                raw[name] = data
            continue
        if marker is None:
            continue
        names[name] = marker.name
        declared[marker.name] = marker.location
        if marker.location == "path":
            value: Any = request.route_params.get(marker.name)
        elif marker.location == "query":
            value = request.query.get(marker.name)
        else:
            value = request.header(marker.name)
        if present(value):
            # Given but blank ("   ") stays given, as "": the field's own validation refuses
            # it. Falling back to a default here could act for the wrong customer.
            value = stripped(value)
            refused = param_problem(marker, value)
            if refused is not None:
                errors.append(FieldError(marker.name, refused))
                refused_params.add(name)
            else:
                raw[name] = value
            continue
        if marker.default is not None:
            settings_hints[name] = marker.default
            value = stripped(getattr(settings, marker.default.attribute, None))
            if present(value):
                raw[name] = value
    errors.extend(unread_input(request, declared, body_field is not None))
    context = {PHONE_REGIONS_CONTEXT: _regions(_find(model, raw, names, body_field))}
    try:
        parsed = model.model_validate(raw, context=context)
        if not errors:
            return parsed
    except ValidationError as exc:
        named: set[str] = set()
        for error in exc.errors(include_url=False):  # (the input: a text over its length)
            loc = error["loc"]
            head = loc[0] if loc else None
            if (body_broken and head == body_field) or head in refused_params:
                continue
            field = error_field(loc, names, body_field, raw, error["type"] == "missing")
            hint = settings_hints.get(str(loc[0])) if len(loc) == 1 else None
            if field not in named:  # one error a field: a union's branches name it once each
                named.add(field)
                errors.append(FieldError(field, error_message(error, hint, field)))
    raise validation_problem(errors)


def _find(
    model: type[ActionInput], raw: Mapping[str, Any], names: Mapping[str, str], body: str | None
) -> Any:
    """The raw value of the field named by ``model.phone_regions_from`` (param or body field)."""
    wanted = model.phone_regions_from
    if wanted is None:
        return None
    if (name := next((n for n, wire in names.items() if wire == wanted), None)) is not None:
        return raw.get(name)
    if body is not None and isinstance(raw.get(body), dict):
        return raw[body].get(wanted)
    return None


def routed_settings(
    model: type[ActionInput], request: ActionRequest, settings: Settings
) -> Settings:
    """The settings of the request's connection (``settings`` when it is the default): the one
    its ``X-SmartDialog-Connection`` header names, else the one serving its customer. Raises
    the 400/503 problems of :func:`shared.connections.route`; nothing is parsed or done yet."""
    from shared.connections import CONNECTION_HEADER, connection_settings, is_default, route

    customer: str | None = None
    field = "CustomerId"
    marker = _customer_param(model)
    if marker is not None and marker.location == "header":
        value = request.header(marker.name)
        if present(value):
            customer, field = stripped(value), marker.name
    name = route(request.header(CONNECTION_HEADER), customer, customer_field=field)
    return settings if is_default(name) else connection_settings(name)


def _customer_param(model: type[ActionInput]) -> Param | None:
    """The parameter naming the customer (the one defaulting to ``SMARTDIALOG_CUSTOMER_ID``)."""
    for info in model.model_fields.values():
        marker = _marker(info)
        if isinstance(marker, Param) and (d := marker.default) and d.attribute == "customer_id":
            return marker
    return None


# --- error mapping -------------------------------------------------------------------------------


def upstream_problem(
    exc: SmartDialogError, settings: Settings | None = None, *, customer_field: str | None = None
) -> Problem:
    """The answer for a failed SmartDialog call (see ``docs/actions.md``, "Errors").

    A value that cannot be sent -> 400 naming it; 400 and any other 4xx not below -> 422 with
    SmartDialog's message; 403 -> 403 naming ``customer_field`` (the action's customer field,
    if any); 404 -> 404; 409 -> 409; 429 -> 429 with ``Retry-After``; credentials refused (a 401
    after the token was renewed) -> the 503 configuration problem naming the setting of
    ``settings`` (default: the app's) that holds them; 503 -> 503, other 5xx, connection errors
    and unexpected bodies (a 2xx carrying an error: quoted) -> 502, with SmartDialog's
    ``Retry-After`` when it gave one (a 5xx or odd 2xx body to a create, which may not be
    repeated, says it may have taken effect); timeouts, 408 and 504 -> 504."""
    from shared import smartdialog as sd

    if isinstance(exc, sd.InvalidParameterError):  # a value no field type caught: never sent
        reason = exc.reason[:1].upper() + exc.reason[1:]
        return validation_problem([FieldError(exc.parameter, f"{reason} (SmartDialog's rule).")])
    if isinstance(exc, sd.RateLimitError):
        return rate_limited(
            exc.retry_after if exc.retry_after is not None else DEFAULT_UPSTREAM_RETRY_AFTER,
            "SmartDialog's rate limit was reached; try again after Retry-After seconds.",
        )
    said = cut_secrets(exc.message) if isinstance(exc, sd.APIStatusError) else ""
    if isinstance(exc, sd.NotFoundError):
        return Problem(404, "Not found", said, type=ProblemType.NOT_FOUND)
    if isinstance(exc, sd.ConflictError):
        return Problem(409, "Conflict", said, type=ProblemType.CONFLICT)
    if isinstance(exc, sd.AuthenticationError | sd.CredentialsError):
        from shared.connections import credentials_refused
        from shared.settings import get_settings

        return credentials_refused(settings or get_settings())
    if isinstance(exc, sd.PermissionDeniedError):
        refused = "The app's SmartDialog account may not use this customer (or its service)"
        return Problem(
            403,
            "SmartDialog refused access",
            f"SmartDialog answered 403 ({said}): the app's SmartDialog account may not use "
            "this customer, service or operation. Choose another, or ask SmartDialog to grant "
            "access; repeating the request will not help.",
            type=ProblemType.UPSTREAM_FORBIDDEN,
            errors=[FieldError(customer_field, refused + ".")] if customer_field else (),
        )
    status = exc.status_code if isinstance(exc, sd.APIStatusError) else None
    if status in (408, 504) or isinstance(exc, sd.APITimeoutError):
        what = f"SmartDialog answered {status}" if status else "The call to SmartDialog timed out"
        return Problem(
            504,
            "SmartDialog did not answer in time",
            f"{what}; it may or may not have taken effect. {_CHECK}",
            type=ProblemType.UPSTREAM_TIMEOUT,
        )
    if isinstance(exc, sd.APIStatusError) and 400 <= exc.status_code < 500:
        # 400 or any other refusal (410, 413, 415, 422, ...): repeating it will not help.
        rejected = "SmartDialog rejected the request"
        return Problem(422, rejected, said, type=ProblemType.UPSTREAM_REJECTED)
    advice = None
    if isinstance(exc, sd.IdentityProviderError):  # a throttling 429 too: nothing was sent
        advice = retry_after_header(DEFAULT_UPSTREAM_RETRY_AFTER)
        detail = "No token: the identity provider (SMARTDIALOG_AUTHORITY) failed; " + _AFTER
    elif isinstance(exc, sd.APIConnectionError) and not exc.certainly_not_sent:
        # A create may exist now: repeated blindly, "already exists", or a second one.
        detail = f"The connection to SmartDialog broke before its answer; {_MAYBE}"
    elif isinstance(exc, sd.APIConnectionError):
        detail = "SmartDialog could not be reached; try again later."
    elif isinstance(exc, sd.APIStatusError):  # 5xx, or a status not 2xx/4xx (3xx)
        advice = None if exc.retry_after is None else retry_after_header(exc.retry_after)
        later = _AFTER if advice else "try again later."
        detail = f"SmartDialog failed with status {status}; " + (
            _MAYBE if status and status >= 500 and not exc.replayable else later
        )
    elif isinstance(exc, sd.APIResponseValidationError) and exc.said is not None:  # not done
        after = "" if exc.replayable else f"; {_MAYBE}"
        detail = f"SmartDialog answered 2xx with an error: {cut_secrets(exc.said)}{after}"
    elif isinstance(exc, sd.APIResponseValidationError):  # a create's: done, or the id is lost
        detail = "SmartDialog reported success (2xx) in an unexpected shape" + (
            "." if exc.replayable else f", so the change probably took effect. {_CHECK}"
        )
    else:
        detail = "The call to SmartDialog failed."
    return Problem(  # 503: SmartDialog is unavailable for a while, as it says
        503 if status == 503 else 502,
        "SmartDialog failed",
        detail,
        type=ProblemType.UPSTREAM_UNAVAILABLE,
        headers=advice,
    )


def _quota_problem(exc: Exception, settings: Settings) -> Problem | None:
    from shared.quota import QuotaExceeded, QuotaStoreError, StaleGrant

    if isinstance(exc, QuotaExceeded | StaleGrant):  # stale: no fresh slot in time, nothing sent
        return rate_limited(
            exc.retry_after if isinstance(exc, QuotaExceeded) else None,
            f"The SmartDialog call quota ({settings.quota_calls} calls per "
            f"{settings.quota_period_seconds:g} s) is used up; {_AFTER}",
        )
    if not isinstance(exc, QuotaStoreError):
        return None
    if exc.lasting:  # its text names the table and the fix, no secret; retrying will not help
        detail, advice = f"SmartDialog was not called: {exc}. An administrator must act.", {}
    else:
        detail = "The quota store is unavailable, so SmartDialog was not called; try again later."
        advice = retry_after_header(QUOTA_STORE_RETRY_AFTER)
    title = "The call quota cannot be checked"
    return Problem(503, title, detail, type=ProblemType.QUOTA_UNAVAILABLE, headers=advice)


# --- running an action ---------------------------------------------------------------------------


def run_action(
    spec: ActionSpec[Any],
    request: ActionRequest,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> ActionResponse:
    """Run one action for one request in a server span (continuing the caller's W3C
    ``traceparent`` header, if any); see :func:`_run_action`."""
    with (
        telemetry.span(
            spec.operation_id,
            parent=request.header(telemetry.TRACEPARENT),
            kind="server",
            attributes={"smartdialog.tracking_id": loggable_id(request.tracking_id)},
        ) as current,
        leniently() if spec.lenient else nullcontext(),
    ):
        response = _run_action(spec, request, settings=settings, client_factory=client_factory)
        current.set_attribute("http.response.status_code", response.status)
    return response


def _run_action(
    spec: ActionSpec[Any],
    request: ActionRequest,
    *,
    settings: Settings | None,
    client_factory: ClientFactory | None,
) -> ActionResponse:
    """Run one action for one request; always returns an answer, never raises.

    Order: parse and validate (400 problem, no upstream call, no quota token), run the handler
    (its client takes a quota token per attempt), map failures to problem documents (with the
    settings it acted through). Logs one line per request with ``operationId``, ``status``,
    ``durationMs``, ``trackingId`` and a 202's ids; never a phone number, token or secret."""
    started = time.perf_counter()
    tracking_id = request.tracking_id
    extra: dict[str, Any] = {"operationId": spec.operation_id,
                             "trackingId": loggable_id(tracking_id)}  # fmt: skip
    response: ActionResponse
    context: ActionContext | None = None
    outcome = "ok"
    try:
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        _check_size(request, settings.max_request_bytes)
        if spec.routed:  # a status URL is answered whatever the connections' state
            settings = routed_settings(spec.input, request, settings)
        parsed = parse_input(spec.input, request, settings)
        context = ActionContext(settings, tracking_id, client_factory or shared_client)
        with within(SYNC_DEADLINE_SECONDS):  # for the action: each call gets what is left
            response = spec.handler(context, parsed)
        if response.content_type == PROBLEM_CONTENT_TYPE and isinstance(response.body, dict):
            # A problem answered, not raised (a status URL's failed send, an ask's refusal).
            response.body.setdefault("instance", request_instance(tracking_id))
            errors = response.body.get("errors")
            listed = errors if isinstance(errors, list) else []
            fields = [str(e.get("field")) for e in listed if isinstance(e, dict)]
            outcome = _refused(fields, response.status)
        else:
            outcome = ", ".join(["ok", *response.logged_ids()])  # 202: what it accepted, by id
    except Problem as problem:
        outcome = _refused([e.field for e in problem.errors], problem.status)
        response = ActionResponse.problem(problem.with_instance(request_instance(tracking_id)))
    except Exception as exc:
        mapped, outcome = _map_failure(exc, context.settings if context else settings, spec, extra)
        response = ActionResponse.problem(mapped.with_instance(request_instance(tracking_id)))
    duration_ms = round((time.perf_counter() - started) * 1000)
    extra.update(status=response.status, durationMs=duration_ms)
    # The tracking id in the text too: the Python worker forwards a record's text, not ``extra``.
    log.log(
        logging.INFO if response.status < 500 else logging.WARNING,
        "%s answered %d in %d ms (%s), request %s",
        spec.operation_id, response.status, duration_ms, outcome, extra["trackingId"],
        extra=extra,
    )  # fmt: skip
    return response


def _check_size(request: ActionRequest, limit: int) -> None:
    """413 before any parsing when the body, or its announced length, is over ``limit`` bytes."""
    announced = (request.header("Content-Length") or "").strip()
    # isascii(): isdigit() takes '²', which int() refuses; a 20-digit length is past any limit.
    readable = announced.isascii() and announced.isdigit()
    size = max(len(request.body), int(announced[:20]) if readable else 0)
    if size > limit:
        raise too_large(size, limit, setting="SMARTDIALOG_MAX_REQUEST_BYTES")


def _map_failure(
    exc: Exception, settings: Settings | None, spec: ActionSpec[Any], extra: dict[str, Any]
) -> tuple[Problem, str]:
    from azure.core.exceptions import AzureError

    from shared.settings import SettingsInvalid, missing_credentials
    from shared.smartdialog import APIStatusError, CredentialsError, SmartDialogError

    if settings is not None:
        quota_problem = _quota_problem(exc, settings)
        if quota_problem is not None:
            return quota_problem, f"quota: {type(exc).__name__}: {redacted(str(exc))}"
        missing = missing_credentials(settings) if isinstance(exc, CredentialsError) else None
        if missing is not None:  # none set: /api/health's 503, not "refused" (502)
            return SettingsInvalid([missing]), "not configured: no SmartDialog credentials"
    if isinstance(exc, SmartDialogError):
        extra["upstreamStatus"] = exc.status_code if isinstance(exc, APIStatusError) else None
        customer = _customer_param(spec.input)
        field = customer.name if customer else None
        problem = upstream_problem(exc, settings, customer_field=field)
        return problem, f"upstream {type(exc).__name__}: {redacted(str(exc))}"
    if isinstance(cause := exc if isinstance(exc, AzureError) else exc.__cause__, AzureError):
        problem = storage_unavailable("Our storage is unavailable", cause=cause)  # our own's
        return problem, f"storage {type(cause).__name__}: {redacted(str(cause).split(chr(10))[0])}"
    log.error(
        "%s failed unexpectedly, request %s: %s",
        spec.operation_id, extra["trackingId"], redacted_traceback(exc),
        extra=dict(extra),
    )  # fmt: skip
    return internal_error(), f"unexpected {type(exc).__name__}"


def unknown_action_response(operation_id: str, request: ActionRequest) -> ActionResponse:
    """404 problem for an operationId no action is registered under (a wiring mistake)."""
    logged = loggable_id(request.tracking_id)
    log.warning(
        "no action is registered as %s, request %s", operation_id, logged,
        extra={"operationId": operation_id, "trackingId": logged, "status": 404},
    )  # fmt: skip
    problem = Problem(404, "Not found", "This app has no such action.", type=ProblemType.NOT_FOUND)
    return ActionResponse.problem(problem.with_instance(request_instance(request.tracking_id)))


def unexpected_failure_response(
    operation_id: str, request: ActionRequest, exc: BaseException
) -> ActionResponse:
    """500 problem without details for a failure outside an action (logged, redacted)."""
    logged = loggable_id(request.tracking_id)
    log.error(
        "%s failed unexpectedly, request %s: %s",
        operation_id, logged, redacted_traceback(exc),
        extra={"operationId": operation_id, "trackingId": logged, "status": 500},
    )  # fmt: skip
    problem = internal_error().with_instance(request_instance(request.tracking_id))
    return ActionResponse.problem(problem)
