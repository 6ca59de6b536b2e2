"""HMAC tokens for URLs that carry their own credential.

SmartDialog signs nothing it sends us, and a status URL handed to a poller must work without a
function key, so such URLs carry a token: ``v1.<expiry>.<signature>``, where ``expiry`` is a
Unix time in whole seconds (``0``: never expires) and ``signature`` is the unpadded base64url
HMAC-SHA256 of ``purpose``, ``subject`` and ``expiry`` under a callback secret.

- *Purpose-bound*: a status token never opens a delivery-report or webhook URL (and back).
- *Subject-bound*: a token signs one thing, e.g. one message id; it opens nothing else.
- *Rotation*: :func:`sign` uses the first of ``SMARTDIALOG_CALLBACK_SECRETS``; :func:`verify`
  accepts any of them, so a new secret goes first and the old one stays until its URLs are gone.
- Comparison is constant-time (``hmac.compare_digest``); a verification failure says nothing
  about which part was wrong.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

__all__ = [
    "TOKEN_QUERY_PARAMETER",
    "SigningNotConfigured",
    "TokenPurpose",
    "sign",
    "verify",
]

#: The query parameter that carries a token in every URL we hand out.
TOKEN_QUERY_PARAMETER = "token"  # noqa: S105 - a parameter name, not a secret
_VERSION = "v1"


class TokenPurpose(enum.StrEnum):
    """What a token may open. Add a member for each new kind of self-authenticating URL."""

    STATUS = "status"
    """GetMessageStatus: the ``Location`` of a send."""
    DLR = "dlr"
    """The delivery-report callback put in a send's ``DlrUrl``."""
    WEBHOOK = "webhook"
    """The inbound-message webhook registered with SmartDialog."""


class SigningNotConfigured(RuntimeError):
    """``SMARTDIALOG_CALLBACK_SECRETS`` is empty: no token can be made or checked."""


def _secrets(secrets: Sequence[str] | None) -> Sequence[str]:
    if secrets is None:
        from shared.settings import get_settings

        secrets = get_settings().callback_secret_list
    if not secrets:
        raise SigningNotConfigured(
            "Set SMARTDIALOG_CALLBACK_SECRETS (comma-separated, newest first) to sign callback "
            "and status URLs."
        )
    return secrets


def _mac(secret: str, purpose: str, subject: str, expiry: int) -> str:
    message = f"{_VERSION}\n{purpose}\n{expiry}\n{subject}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(
    purpose: TokenPurpose,
    subject: str,
    *,
    ttl_seconds: float | None = None,
    secrets: Sequence[str] | None = None,
    now: Callable[[], float] = time.time,
) -> str:
    """A token for ``subject`` and ``purpose``, signed with the first secret.

    ``ttl_seconds`` (None or <= 0: no expiry) bounds its life. ``secrets`` defaults to the
    settings' callback secrets; raises :class:`SigningNotConfigured` if there are none.
    """
    expiry = int(now() + ttl_seconds) + 1 if ttl_seconds and ttl_seconds > 0 else 0
    return f"{_VERSION}.{expiry}.{_mac(_secrets(secrets)[0], purpose, subject, expiry)}"


def verify(
    token: str | None,
    purpose: TokenPurpose,
    subject: str,
    *,
    secrets: Sequence[str] | None = None,
    now: Callable[[], float] = time.time,
) -> bool:
    """Whether ``token`` was signed by one of ``secrets`` for exactly this purpose and subject
    and has not expired. Never raises for a bad token (only for missing secrets)."""
    keys = _secrets(secrets)
    if not token:
        return False
    parts = token.split(".")
    # isascii(): str.isdigit() also accepts digits such as '²' that int() refuses.
    if len(parts) != 3 or parts[0] != _VERSION or not (parts[1].isascii() and parts[1].isdigit()):
        return False
    expiry = int(parts[1])
    if expiry and now() >= expiry:
        return False
    given = parts[2].encode("ascii", "replace")
    matched = False
    for secret in keys:
        # Check every secret (no early exit) so timing does not tell which one matched.
        expected = _mac(secret, purpose, subject, expiry).encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    return matched
