"""The URLs we hand out that carry their own credential: status links and delivery-report URLs.

Both sides use them: the send path puts our delivery-report URL in every send and answers with
status links; the delivery-report function and the status actions check their tokens
(:mod:`shared.signing`). Every URL starts with ``Settings.api_base_url``: the public base URL
(``SMARTDIALOG_PUBLIC_BASE_URL``, or its fallbacks) plus host.json's route prefix.

Before a send is accepted, :func:`require_callback_settings` makes sure its URLs can be made:
a send whose status and delivery-report URLs could not be signed, or would point at localhost,
is refused with a 503 problem and nothing stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import TYPE_CHECKING
from urllib.parse import quote

from shared import clock
from shared.problems import Problem, ProblemType
from shared.signing import TOKEN_QUERY_PARAMETER, TokenPurpose, secrets_problem, sign, verify

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.settings import Settings

__all__ = [
    "delivery_report_expiry",
    "delivery_report_url",
    "require_callback_settings",
    "require_status_token",
    "status_link",
]


def require_callback_settings(settings: Settings) -> None:
    """Raise the 503 problem of the first callback setting that is wrong: the secrets
    (``SMARTDIALOG_CALLBACK_SECRETS``) or the public base URL. Nothing is read from storage."""
    problem = secrets_problem(settings.callback_secret_list)
    if problem is not None:
        raise problem
    settings.api_base_url  # noqa: B018 - raises PublicUrlNotConfigured


def delivery_report_expiry(
    settings: Settings,
    *,
    valid_until: dt.datetime | None = None,
    sends_at: dt.datetime | None = None,
    now: float | None = None,
) -> float:
    """When a DLR URL made ``now`` stops working: the later of the send's validity
    (``valid_until``, else ``now`` + ``SMARTDIALOG_SEND_VALIDITY_SECONDS``) and the time
    SmartDialog is told to send it (``sends_at``, its ``SendDateTime``), plus
    ``SMARTDIALOG_DLR_REPORTING_WINDOW_SECONDS`` (reports follow the last delivery attempt)."""
    now = clock.current().now() if now is None else now
    end = valid_until.timestamp() if valid_until else now + settings.send_validity_seconds
    scheduled = now
    if sends_at is not None:  # as the caller wrote it: a naive one is UTC, year 1 is no time
        with contextlib.suppress(OverflowError, ValueError, OSError):
            scheduled = (
                sends_at if sends_at.tzinfo else sends_at.replace(tzinfo=dt.UTC)
            ).timestamp()
    return max(end, scheduled, now) + settings.dlr_reporting_window_seconds


def delivery_report_url(
    settings: Settings,
    message_id: str,
    *,
    valid_until: dt.datetime | None = None,
    sends_at: dt.datetime | None = None,
) -> str:
    """The DLR URL of our message ``message_id`` (``valid_until``: the send's own validity;
    ``sends_at``: its ``SendDateTime``). Its token expires at :func:`delivery_report_expiry`;
    rotating the secrets revokes it sooner. SmartDialog appends its parameters."""
    now = clock.current().now()
    expiry = delivery_report_expiry(settings, valid_until=valid_until, sends_at=sends_at, now=now)
    token = sign(
        TokenPurpose.DLR,
        message_id,
        ttl_seconds=expiry - now,
        secrets=settings.callback_secret_list,
        now=lambda: now,
    )
    return (
        f"{settings.api_base_url}/callbacks/dlr/{quote(message_id, safe='')}"
        f"?{TOKEN_QUERY_PARAMETER}={token}"
    )


def status_link(
    settings: Settings, route: str, key: str, subject: str, token: str | None = None
) -> str:
    """``<api base>/<route>/<key>?token=…``: a status URL carrying a fresh status token for
    ``subject`` (a message id, or a batch's subject), or ``token`` (one checked already: a
    finished status gives back the link it was opened with, never a longer-lived one)."""
    token = token or sign(
        TokenPurpose.STATUS,
        subject,
        ttl_seconds=settings.status_token_ttl_seconds,
        secrets=settings.callback_secret_list,
    )
    base = settings.api_base_url
    return f"{base}/{route}/{quote(key, safe='')}?{TOKEN_QUERY_PARAMETER}={token}"


def poll_link(make: Callable[[], str]) -> str | None:
    """The status URL ``make`` makes, or None while the public URL cannot be told (a setting
    broken or gone since the send): a poll then answers without one, polled again as it is."""
    from shared.settings import PublicUrlNotConfigured, SettingsInvalid

    try:
        return make()
    except (SettingsInvalid, PublicUrlNotConfigured):
        return None


def require_status_token(
    settings: Settings, subject: str, token: str | None, *, missing: str, denied: str
) -> None:
    """401 (``missing``) without a token, 403 (``denied``) with one that does not open the
    status of ``subject``."""
    if not token:
        raise Problem(
            401,
            "Missing token",
            missing,
            type=ProblemType.UNAUTHORIZED,
            headers={"WWW-Authenticate": 'Bearer realm="smartdialog-status"'},
        )
    if not verify(token, TokenPurpose.STATUS, subject, secrets=settings.callback_secret_list):
        raise Problem(403, "Invalid token", denied, type=ProblemType.FORBIDDEN)
