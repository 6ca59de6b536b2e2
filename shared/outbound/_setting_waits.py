"""Waits for a broken setting met at the call (the token, the quota store): the claim is handed
back, nothing sent, no attempt counted, while the records' validity still runs out."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, NamedTuple

from shared.logs import loggable_text
from shared.messages import FailureInfo
from shared.outbound._giving_up import CONFIGURATION, waiting_error
from shared.outbound._models import PackDriver
from shared.outbound._outcomes import held

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shared.messages import MessageRecord
    from shared.outbound._models import OutboundMessage
    from shared.outbound._outcomes import Outcomes

__all__ = ["Wait", "quota_store_wait", "token_wait"]

log = logging.getLogger("shared.outbound.sender")


class Wait(NamedTuple):
    """A claim handed back to wait: nothing sent, no attempt counted. Its copy comes back in
    ``delay`` s, at ``due`` (recorded as ``waits_until``, for its status only); ``reason`` the
    deferral's; ``error`` the records' ``LastError`` meanwhile (None: unchanged)."""

    delay: float
    reason: str
    error: FailureInfo | None
    due: dt.datetime


def token_wait(
    outcomes: Outcomes, message: OutboundMessage | PackDriver, records: Sequence[MessageRecord]
) -> Wait | None:
    """Has the token of the call of ``message`` (its claimed ``records``) in hand before the
    caller takes its grant: None, or how long the call waits (never past the records' validity)
    and why: refused credentials as a broken setting, a failed identity provider its backoff."""
    from shared.connections import credentials_refused
    from shared.smartdialog import CredentialsError, backoff_delay

    if (failed := outcomes.ports.upstream.ready()) is None:
        return None
    until, what = min(r.valid_until for r in records), _what(message, records)
    said = loggable_text(str(failed))
    if isinstance(failed, CredentialsError):
        setting = credentials_refused(outcomes.ports.upstream.settings).errors[0].field
        problem = f"{setting} could not be used: {said}"
        advice = "/api/health checks only that they are set"
        return _broken(outcomes, what, until, problem, "credentials", advice)
    policy = outcomes.ports.policy
    wait = backoff_delay(message.deferrals + 1, base=policy.retry_base, cap=policy.retry_max)
    wait = max(0.0, min(wait, (until - outcomes.ports.now()).total_seconds()))
    log.debug("%s not sent: %s; trying again in %.0f s", what, said, wait)
    where = f"the identity provider of connection {policy.connection}"
    held.wait(where, said, "each send tries again after its backoff")
    return Wait(wait, "identity-provider", None, _due(outcomes, wait))


def quota_store_wait(
    outcomes: Outcomes,
    message: OutboundMessage | PackDriver,
    records: Sequence[MessageRecord],
    failed: BaseException,
) -> Wait | None:
    """A lasting quota-store error met taking the slot of the call of ``message`` (its claimed
    ``records``), waited out as refused credentials are (:func:`token_wait`); None for any other
    error (our storage failing for now: the host retries the queue message)."""
    from shared.quota import QuotaStoreError

    if not isinstance(failed, QuotaStoreError) or not failed.lasting:
        return None
    problem = f"the quota store failed: {loggable_text(str(failed))}"
    advice = "the operations page's Quota shows it; /api/health does not read the quota store"
    until = min(r.valid_until for r in records)
    return _broken(outcomes, _what(message, records), until, problem, "quota store", advice)


def _broken(outcomes: Outcomes, what: str, until: dt.datetime, problem: str, reason: str,
            advice: str) -> Wait:  # fmt: skip
    """How long ``what`` waits for ``problem`` to be fixed, why, and its ``LastError`` meanwhile."""
    wait = outcomes.misconfigured(what, until, problem, reason, advice) or 0.0
    return Wait(wait, CONFIGURATION, waiting_error(problem), _due(outcomes, wait))


def _due(outcomes: Outcomes, wait: float) -> dt.datetime:
    return outcomes.ports.now() + dt.timedelta(seconds=wait)


def _what(message: OutboundMessage | PackDriver, records: Sequence[MessageRecord]) -> str:
    """A call's name in the logs: its pack's, else its message's."""
    pack = message.packId if isinstance(message, PackDriver) else None
    return f"pack {pack}" if pack else f"message {records[0].message_id}"
