"""The send paths' ports and their one composition root: every send path reaches storage, queues,
upstream, the quota and the clock only through a :class:`SendPorts` from :func:`send_ports`.
See docs/architecture.md, "Ports"."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from shared.clock import Clock, utcnow
from shared.messages import MessageStore, PackStore, QuestionStore
from shared.names import (
    DEFAULT_CONNECTION,
    EVENTS_QUEUE,
    OUTBOUND_DEAD_LETTER_QUEUE,
    OUTBOUND_QUEUE,
)
from shared.outbound._attempt import Upstream
from shared.outbound._quota_wait import QuotaWait, quota_wait
from shared.outbound._records import backstop_seconds

if TYPE_CHECKING:
    from shared.messages import MessageRecord
    from shared.outbound._models import OutboundMessage, PackDriver
    from shared.payloads import PayloadStore
    from shared.settings import Settings
    from shared.smartdialog import AuthProvider
    from shared.storage import QueueLike
    from shared.suppressions import SuppressionStore

__all__ = [
    "SendPolicy",
    "SendPorts",
    "held_settings",
    "record_held",
    "reset_send_ports",
    "send_ports",
]


@dataclass(frozen=True)
class SendPolicy:
    """The send settings every path follows (read once from the settings)."""

    max_attempts: int
    validity: dt.timedelta
    retry_base: float
    retry_max: float
    lease: dt.timedelta
    quota_wait: float
    #: The most a call may take once started (timeout + lease margin): a claim needs this left.
    call_seconds: float
    customer_id: str | None
    service_id: str | None
    pack_max_recipients: int
    #: How long after its accept a lane member's backstop copy comes (0: every copy at once).
    lane_backstop: dt.timedelta
    #: The broken settings a send needs (names only): while any is, sends are deferred.
    broken_settings: tuple[str, ...] = ()
    #: The connection (SmartDialog account) these ports send through.
    connection: str = DEFAULT_CONNECTION

    @property
    def unconfigured(self) -> str:
        """The broken settings as a log's words ('' when none)."""
        names = ", ".join(self.broken_settings)
        if len(self.broken_settings) > 1:
            return f"settings {names} are not configured"
        return f"setting {names} is not configured" if names else ""

    @classmethod
    def from_settings(cls, settings: Settings) -> SendPolicy:
        from shared.health import send_blockers

        broken = send_blockers(settings)
        return cls(
            max_attempts=settings.send_max_attempts,
            validity=dt.timedelta(seconds=settings.send_validity_seconds),
            retry_base=settings.send_retry_base_seconds,
            retry_max=settings.send_retry_max_seconds,
            lease=dt.timedelta(seconds=settings.send_lease_seconds),
            quota_wait=settings.send_quota_wait_seconds,
            call_seconds=settings.send_timeout_seconds + settings.send_lease_margin_seconds,
            customer_id=settings.customer_id,
            service_id=settings.service_id,
            pack_max_recipients=settings.pack_max_recipients,
            lane_backstop=dt.timedelta(seconds=backstop_seconds(settings)),
            broken_settings=tuple(dict.fromkeys(e.field for e in broken)),
            connection=settings.connection,
        )


def held_settings(connection: str | None, settings: Settings) -> tuple[Settings, bool]:
    """The settings connection ``connection``'s sends go by (``settings``, the app's, while it
    is misconfigured or removed), and whether a broken setting holds them now: the sender then
    defers them (:meth:`~shared.outbound._outcomes.Outcomes.misconfigured`); a removed
    connection's it fails (``connection-removed``)."""
    from shared.connections import UnknownConnection, connection_settings, routing_errors
    from shared.problems import Problem
    from shared.settings_leniency import PartlySettings

    try:
        mine = connection_settings(connection)
    except UnknownConnection:  # removed; while the routing errs, a mistyped key may be its
        return settings, bool(routing_errors())
    except Problem:  # misconfigured
        return settings, True
    if isinstance(mine, PartlySettings):  # (read leniently: a setting that does not validate)
        return mine, True
    return mine, bool(SendPolicy.from_settings(mine).broken_settings)


def routed_by_claim(
    message: OutboundMessage | PackDriver, store: MessageStore
) -> OutboundMessage | PackDriver:
    """``message`` routed to the connection claiming its customer, unless that moves a recorded
    send an attempt through another connection may have sent: that goes on through that one,
    whose account alone knows its RequestId (a record read only when a claim re-routes)."""
    from shared.connections import is_default
    from shared.outbound._models import PackDriver, with_claimed_connection

    routed = with_claimed_connection(message)
    if routed is message or isinstance(routed, PackDriver) or not routed.messageId:
        return routed
    record = store.get(routed.messageId)
    through = record.sent_through if record is not None and record.may_have_reached else None
    if through is None or through == routed.Connection:
        return routed
    return message.model_copy(update={"Connection": None if is_default(through) else through})


def record_held(record: MessageRecord, settings: Settings) -> bool:
    """Whether a broken setting holds ``record``'s sends now (:func:`held_settings`) on the
    connection its sender routes it through (:func:`routed_by_claim`); while the claims are
    uncertain, every send is held."""
    from shared.connections import ConnectionNotConfigured
    from shared.outbound._models import parse_outbound_message, with_claimed_connection

    if record.may_have_reached and record.sent_through:  # it goes on through that one
        return held_settings(record.sent_through, settings)[1]
    try:
        connection = with_claimed_connection(parse_outbound_message(record.command)).Connection
    except ConnectionNotConfigured:
        return True
    except ValueError:  # unreadable (the sender dead-letters it): as recorded
        connection = record.connection
    return held_settings(connection, settings)[1]


@dataclass(frozen=True)
class SendPorts:
    """What a send path may touch."""

    store: MessageStore
    packs: PackStore
    quota_wait: QuotaWait
    upstream: Upstream
    outbound: QueueLike
    dead_letters: QueueLike
    events: QueueLike
    clock: Clock
    policy: SendPolicy
    suppressions: SuppressionStore
    #: Large parts by reference (commands too large to queue, dead letters' originals).
    payloads: PayloadStore
    #: Questions' re-prompts are sent only while their question is open.
    questions: QuestionStore

    def now(self) -> dt.datetime:
        """The ports' clock as an aware UTC datetime."""
        return utcnow(self.clock)


@lru_cache(maxsize=32)
def send_ports(settings: Settings) -> SendPorts:
    """The composition root: the ports of ``settings``, built once per settings object (shared
    by invocations and threads); each connection's settings are their own object, so each
    connection has its own client, token cache and quota."""
    import httpx

    from shared import clock
    from shared.payloads import PayloadStore
    from shared.smartdialog import SmartDialogClient
    from shared.storage import ensured_queue, queue_client
    from shared.suppressions import SuppressionStore

    waits = quota_wait(settings)
    gate = waits.quota.gate()  # the sender takes each call's grant; a re-try takes its own
    # No client-side retries: every retry is a re-enqueued copy, so no invocation sleeps.
    client = SmartDialogClient(
        settings.base_url,
        _auth(settings),
        before_attempt=gate,
        before_send=gate.before_send,
        max_retries=0,
        timeout=httpx.Timeout(
            settings.send_timeout_seconds, connect=min(5.0, settings.send_timeout_seconds)
        ),
        # One attempt, token and the re-try after a renewed one included: within the timeout.
        deadline=settings.send_timeout_seconds,
    )
    return SendPorts(
        store=MessageStore.from_settings(settings),
        packs=PackStore.from_settings(settings),
        quota_wait=waits,
        upstream=Upstream(client, gate, settings),
        outbound=queue_client(OUTBOUND_QUEUE, settings),
        dead_letters=ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE, settings),
        events=ensured_queue(EVENTS_QUEUE, settings),
        clock=clock.current(),
        policy=SendPolicy.from_settings(settings),
        suppressions=SuppressionStore.from_settings(settings),
        payloads=PayloadStore.from_settings(settings),
        questions=QuestionStore.from_settings(settings),
    )


class _NoCredentials:
    """The auth of a connection without usable credentials: every attempt fails with the reason
    (retried as a configuration problem), while the sender still routes other connections'."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def token(self) -> str:
        from shared.smartdialog import CredentialsError

        raise CredentialsError(self.reason)

    def invalidate(self, token: str | None = None) -> None:
        """Nothing cached."""


def _auth(settings: Settings) -> AuthProvider:
    from shared.smartdialog import CredentialsError, auth_from_settings

    try:
        return auth_from_settings(settings)
    except CredentialsError as exc:
        return _NoCredentials(str(exc))


def reset_send_ports() -> None:
    """Forget the built ports (tests change settings between cases)."""
    send_ports.cache_clear()
    quota_wait.cache_clear()
