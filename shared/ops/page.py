"""The operations page, ``GET /api/ops``, and its buttons, ``POST /api/ops/{redrive,purge}``.

Server-rendered HTML (Jinja2, autoescaped; the template is ``templates/ops.html``, no script):
per connection the quota used in the current window, every queue's depth and oldest message's
age, the dead letters with their reasons and a re-drive and a purge button each, the sends
finished in the last hour by outcome, and the registered webhooks and subscriptions. Who may
see it: :mod:`shared.ops._access`. A button posts a form with the dead letter's id and the
page's anti-CSRF token and is answered ``303 See Other`` back to the page, which then says what
happened. While a setting does not validate, the page names it at the top (as ``/api/health``).
Every refusal is a problem document; nothing here answers a bare 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

from shared.actions._spec import ActionRequest
from shared.clock import utcnow
from shared.deadletters import ID_MAX_LENGTH
from shared.health import configuration_problem
from shared.logs import loggable_id, loggable_text, redacted_traceback
from shared.ops._access import (
    Principal,
    authorize,
    form_token,
    notice_token,
    verify_form_token,
    verify_notice,
)
from shared.ops._overview import overview
from shared.ops.actions import desk, letter_doc
from shared.problems import (
    FieldError,
    Problem,
    ProblemType,
    internal_error,
    request_instance,
    validation_problem,
)
from shared.settings_leniency import leniently

if TYPE_CHECKING:
    from jinja2 import Environment

    from shared.settings import Settings

__all__ = ["PageResponse", "handle_page", "handle_page_action"]

log = logging.getLogger("shared.ops")

#: Dead letters the page lists (the actions page through the rest).
PAGE_DEAD_LETTERS = 50
_FORM_TYPE = "application/x-www-form-urlencoded"
_MAX_FORM_BYTES = 8192


@dataclass(frozen=True)
class PageResponse:
    """An HTTP answer of the page: status, body and headers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def problem(cls, problem: Problem) -> PageResponse:
        return cls(
            problem.status,
            problem.to_json(),
            {"Content-Type": "application/problem+json", **problem.headers},
        )


@lru_cache(maxsize=1)
def _templates() -> Environment:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("shared.ops", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _guarded(headers: Mapping[str, str], run: Callable[[], PageResponse]) -> PageResponse:
    """``run``'s answer; a problem names the request (its tracking id, as the actions')."""
    tracking_id = ActionRequest("GET", headers=headers).tracking_id
    try:
        response = run()
    except Problem as problem:
        return PageResponse.problem(problem.with_instance(request_instance(tracking_id)))
    except Exception as exc:
        logged = loggable_id(tracking_id)  # the text is what Azure keeps of a line
        log.error("ops page failed, request %s: %s", logged, redacted_traceback(exc),
                  extra={"trackingId": logged})  # fmt: skip
        return PageResponse.problem(internal_error().with_instance(request_instance(tracking_id)))
    return response


def handle_page(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    path: str,
    settings: Settings | None = None,
) -> PageResponse:
    """``GET /api/ops``: the page, for a principal allowed to see it. ``path`` is the request
    URL's: the buttons post to it plus ``/redrive`` or ``/purge`` (absolute, so the page opened
    as ``/api/ops/`` posts where ``/api/ops`` does, whatever the host's route prefix)."""

    try:  # /api/health's list, read before going lenient
        unconfigured = configuration_problem()
    except Exception as exc:  # the page shows what it can without it
        log.error("ops page: the configuration check failed: %s", redacted_traceback(exc))
        unconfigured = None

    def run() -> PageResponse:
        current = settings or _settings()
        principal = authorize(current, _lower(headers))
        now = utcnow()
        letters, more = desk(current).oldest(PAGE_DEAD_LETTERS)
        html = (
            _templates()
            .get_template("ops.html")
            .render(
                principal=principal,
                figures=overview(current),
                letters=[letter_doc(v, now) for v in letters],
                more_letters=more,
                csrf=form_token(current, principal),
                # No empty segment: "//host/..." would be another site's address.
                buttons="".join("/" + part for part in path.split("/") if part),
                notice=_notice(current, principal, query),
                unconfigured=unconfigured,
                now=now,
            )
        )
        return PageResponse(
            200,
            html.encode("utf-8"),
            {
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "form-action 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    with leniently():  # a broken setting it does not read (a quota's: in its row) does not stop it
        return _guarded(headers, run)


def handle_page_action(
    action: str, headers: Mapping[str, str], body: bytes, settings: Settings | None = None
) -> PageResponse:
    """``POST /api/ops/redrive`` or ``/api/ops/purge``: one dead letter, from the page's form."""

    def run() -> PageResponse:
        if action not in ("redrive", "purge"):
            detail = "The operations page has the buttons redrive and purge."
            raise Problem(404, "No such button", detail, type=ProblemType.NOT_FOUND)
        current = settings or _settings()
        lowered = _lower(headers)
        principal = authorize(current, lowered)
        content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
        if content_type != _FORM_TYPE or len(body) > _MAX_FORM_BYTES:
            raise validation_problem([FieldError("Content-Type", f"send {_FORM_TYPE}")])
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not verify_form_token(current, principal, form.get("csrf")):
            raise Problem(
                403,
                "The form has expired",
                "Reload the operations page and press the button again.",
                type=ProblemType.FORBIDDEN,
            )
        letter_id = form.get("id", "")
        if not letter_id or len(letter_id) > ID_MAX_LENGTH:
            why = f"at most {ID_MAX_LENGTH} characters (no dead letter's id is longer)"
            required = "the dead letter's id is required"
            raise validation_problem([FieldError("id", why if letter_id else required)])
        ops = desk(current)
        view = ops.target(letter_id)
        if view is None:
            notice = f"{letter_id}: already handled"
        else:
            try:
                handled = ops.redrive(view) if action == "redrive" else ops.purge(view)
                notice = f"{handled.id}: {handled.kind}" + (
                    f" ({handled.detail})" if handled.detail else ""
                )
            except Problem as busy:  # nothing done now (busy, original gone): say so on the page
                if busy.status != 409:
                    raise
                notice = f"{letter_id}: not done: {busy.detail or busy.title}"
            log.info("ops page: %s by %s", loggable_text(notice), loggable_id(principal.id))
        # Relative: the page is one segment up, whatever the host's route prefix.
        signed = {"done": notice, "sig": notice_token(current, principal, notice)}
        # At #notice (focusable, role=status): keyboard and screen-reader users land on it.
        return PageResponse(303, b"", {"Location": "../ops?" + urlencode(signed) + "#notice"})

    return _guarded(headers, run)


def _notice(settings: Settings, principal: Principal, query: Mapping[str, str]) -> str | None:
    """A button's outcome, shown only as the button's redirect signed it for this user."""
    notice = query.get("done")
    if notice and verify_notice(settings, principal, notice, query.get("sig")):
        return notice
    return None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _settings() -> Settings:
    from shared.settings import get_settings

    return get_settings()
