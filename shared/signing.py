"""HMAC tokens for URLs that carry their own credential.

SmartDialog signs nothing it sends us, and a status URL handed to a poller must work without a
function key, so such URLs carry a token, in one of two forms:

- ``v1.<expiry>.<signature>``: status and delivery-report URLs, and webhook and subscription
  URLs handed out before registrations had a nonce (still accepted, see below);
- ``v2.<expiry>.<nonce>.<signature>``: webhook and subscription URLs. The nonce is made for one
  registration (:func:`new_nonce`) and stored with it, so that registration can be revoked
  without touching the others (``shared.inbound``'s registry keeps the revocation records).

``expiry`` is a Unix time in whole seconds (``0``: never expires) and ``signature`` the unpadded
base64url HMAC-SHA256 of the version, ``purpose``, ``expiry``, the nonce and ``subject`` under a
callback secret.

- *Purpose-bound*: a status token never opens a delivery-report or webhook URL (and back).
- *Subject-bound*: a token signs one thing, e.g. one message id; it opens nothing else.
- *Rotation*: :func:`sign` uses the first of ``SMARTDIALOG_CALLBACK_SECRETS``; :func:`verify`
  accepts any of them, so a new secret goes first and the old one stays until its URLs are gone.
- *Strength*: every secret must be at least :data:`MIN_SECRET_BYTES` bytes; otherwise signing
  and verifying raise :class:`SigningNotConfigured`, a 503 problem (a configuration error,
  reported on first use, never at import).
- Comparison is constant-time (``hmac.compare_digest``); a verification failure says nothing
  about which part was wrong. Expiry is judged by the app's clock (:mod:`shared.clock`).
"""

from __future__ import annotations

import base64
import enum
import hmac
import re
import secrets as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared import clock
from shared.problems import FieldError, Problem, ProblemType

__all__ = [
    "CALLBACK_SECRETS_SETTING",
    "MIN_SECRET_BYTES",
    "TOKEN_QUERY_PARAMETER",
    "SigningNotConfigured",
    "TokenPurpose",
    "VerifiedToken",
    "new_nonce",
    "secrets_problem",
    "sign",
    "verified",
    "verify",
]

#: The query parameter that carries a token in every URL we hand out.
TOKEN_QUERY_PARAMETER = "token"  # noqa: S105 - a parameter name, not a secret
#: The setting that holds the secrets (named in every configuration error).
CALLBACK_SECRETS_SETTING = "SMARTDIALOG_CALLBACK_SECRETS"
#: The shortest secret accepted: as many bytes as the HMAC-SHA256 key it becomes (RFC 2104).
MIN_SECRET_BYTES = 32
_VERSION = "v1"
_NONCE_VERSION = "v2"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


class TokenPurpose(enum.StrEnum):
    """What a token may open. Add a member for each new kind of self-authenticating URL."""

    STATUS = "status"
    """GetMessageStatus: the ``Location`` of a send."""
    DLR = "dlr"
    """The delivery-report callback put in a send's ``DlrUrl``."""
    WEBHOOK = "webhook"
    """The inbound-message webhook registered with SmartDialog."""
    DEAD_LETTERS = "deadletters"
    """A bulk re-drive or purge's ``continuationToken``: its loop's filter, start and place."""


class SigningNotConfigured(Problem):
    """``SMARTDIALOG_CALLBACK_SECRETS`` is empty or holds a secret shorter than
    :data:`MIN_SECRET_BYTES`: no token can be made or checked. A 503 problem naming the setting
    (never the secrets), so every entry point answers it as a configuration error."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            503,
            "The app's callback secrets are not configured",
            detail,
            type=ProblemType.CONFIGURATION,
            errors=[FieldError(CALLBACK_SECRETS_SETTING, detail)],
        )


@dataclass(frozen=True)
class VerifiedToken:
    """A token that :func:`verified` accepted."""

    expiry: int
    """Unix time in whole seconds; 0: it never expires."""
    nonce: str | None
    """The registration nonce it carries; None for a token made before nonces (``v1``)."""


def secrets_problem(secrets: Sequence[str]) -> SigningNotConfigured | None:
    """What is wrong with ``secrets`` as callback secrets, or None when they may sign."""
    if not secrets:
        return SigningNotConfigured(
            f"Set {CALLBACK_SECRETS_SETTING} (comma-separated, newest first) to sign callback "
            "and status URLs."
        )
    short = [str(i) for i, key in enumerate(secrets, 1) if len(key.encode()) < MIN_SECRET_BYTES]
    if short:
        return SigningNotConfigured(
            f"{CALLBACK_SECRETS_SETTING}: secret {', '.join(short)} of {len(secrets)} is shorter "
            f'than {MIN_SECRET_BYTES} bytes. Make a new one (python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"), put it first and keep the old ones only until '
            "their URLs are gone."
        )
    return None


def _secrets(secrets: Sequence[str] | None) -> Sequence[str]:
    if secrets is None:
        from shared.settings import get_settings

        secrets = get_settings().callback_secret_list
    problem = secrets_problem(secrets)
    if problem is not None:
        raise problem
    return secrets


def new_nonce() -> str:
    """A fresh registration nonce (128 random bits, base64url: fit for a URL and a Table key)."""
    return _random.token_urlsafe(16)


def _mac(secret: str, purpose: str, subject: str, expiry: int, nonce: str | None) -> str:
    if nonce is None:
        message = f"{_VERSION}\n{purpose}\n{expiry}\n{subject}"
    else:
        message = f"{_NONCE_VERSION}\n{purpose}\n{expiry}\n{nonce}\n{subject}"
    digest = hmac.digest(secret.encode(), message.encode(), "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _now() -> float:
    return clock.current().now()


def sign(
    purpose: TokenPurpose,
    subject: str,
    *,
    nonce: str | None = None,
    ttl_seconds: float | None = None,
    secrets: Sequence[str] | None = None,
    now: Callable[[], float] = _now,
) -> str:
    """A token for ``subject`` and ``purpose``, signed with the first secret.

    ``nonce`` (from :func:`new_nonce`) binds it to one registration. ``ttl_seconds`` (None or
    <= 0: no expiry) bounds its life. ``secrets`` defaults to the settings' callback secrets;
    raises :class:`SigningNotConfigured` if there are none or one is too short.
    """
    if nonce is not None and not _NONCE.fullmatch(nonce):
        raise ValueError("a nonce is 16 to 64 base64url characters (see new_nonce)")
    expiry = int(now() + ttl_seconds) + 1 if ttl_seconds and ttl_seconds > 0 else 0
    mac = _mac(_secrets(secrets)[0], purpose, subject, expiry, nonce)
    if nonce is None:
        return f"{_VERSION}.{expiry}.{mac}"
    return f"{_NONCE_VERSION}.{expiry}.{nonce}.{mac}"


def verified(
    token: str | None,
    purpose: TokenPurpose,
    subject: str,
    *,
    secrets: Sequence[str] | None = None,
    now: Callable[[], float] = _now,
) -> VerifiedToken | None:
    """``token`` read, if it was signed by one of ``secrets`` for exactly this purpose and
    subject and has not expired; else None. Never raises for a bad token (only for secrets
    that are missing or too short). Whether its nonce was revoked is the caller's question."""
    keys = _secrets(secrets)
    if not token:
        return None
    parts = token.split(".")
    if len(parts) == 3 and parts[0] == _VERSION:
        nonce: str | None = None
        expiry_text, given_mac = parts[1], parts[2]
    elif len(parts) == 4 and parts[0] == _NONCE_VERSION and _NONCE.fullmatch(parts[2]):
        nonce, expiry_text, given_mac = parts[2], parts[1], parts[3]
    else:
        return None
    # isascii(): str.isdigit() also accepts digits such as '²' that int() refuses; and int()
    # refuses more than 4,300 digits (an expiry in Unix seconds has about 10). As signed, or
    # it is another token: no leading zero (int() ignores them, and so did the signature).
    if not (expiry_text.isascii() and expiry_text.isdigit() and len(expiry_text) <= 20):
        return None
    expiry = int(expiry_text)
    if str(expiry) != expiry_text:
        return None
    if expiry and now() >= expiry:
        return None
    given = given_mac.encode("ascii", "replace")
    matched = False
    for secret in keys:
        # Check every secret (no early exit) so timing does not tell which one matched.
        expected = _mac(secret, purpose, subject, expiry, nonce).encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    return VerifiedToken(expiry, nonce) if matched else None


def verify(
    token: str | None,
    purpose: TokenPurpose,
    subject: str,
    *,
    secrets: Sequence[str] | None = None,
    now: Callable[[], float] = _now,
) -> bool:
    """Whether :func:`verified` accepts ``token`` (for URLs that have no registration)."""
    return verified(token, purpose, subject, secrets=secrets, now=now) is not None
