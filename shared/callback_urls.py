"""The URLs we hand out that carry their own credential: status links and delivery-report URLs.

Both sides use them: the send path puts our delivery-report URL in every send and answers with
status links; the delivery-report function and the status actions check their tokens
(:mod:`shared.signing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from shared.problems import Problem, ProblemType
from shared.signing import TOKEN_QUERY_PARAMETER, TokenPurpose, sign, verify

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["delivery_report_url", "require_status_token", "status_link"]


def delivery_report_url(settings: Settings, message_id: str) -> str:
    """The DLR URL of our message ``message_id``: token-bearing, no expiry (reports may come
    days later; rotating the secrets revokes it). SmartDialog appends its parameters."""
    token = sign(TokenPurpose.DLR, message_id, secrets=settings.callback_secret_list)
    return (
        f"{settings.public_base_url}/api/callbacks/dlr/{quote(message_id, safe='')}"
        f"?{TOKEN_QUERY_PARAMETER}={token}"
    )


def status_link(settings: Settings, route: str, key: str, subject: str) -> str:
    """``<public base>/api/<route>/<key>?token=…``: a status URL carrying a status token for
    ``subject`` (a message id, or a batch's subject)."""
    token = sign(
        TokenPurpose.STATUS,
        subject,
        ttl_seconds=settings.status_token_ttl_seconds,
        secrets=settings.callback_secret_list,
    )
    base = settings.public_base_url
    return f"{base}/api/{route}/{quote(key, safe='')}?{TOKEN_QUERY_PARAMETER}={token}"


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
            type=ProblemType.VALIDATION,
            headers={"WWW-Authenticate": 'Bearer realm="smartdialog-status"'},
        )
    if not verify(token, TokenPurpose.STATUS, subject, secrets=settings.callback_secret_list):
        raise Problem(403, "Invalid token", denied, type=ProblemType.VALIDATION)
