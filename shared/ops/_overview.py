"""What the operations page shows, read cheaply and bounded: quota, queues, sends, registrations.

Each figure is one or a few storage round trips, and none grows without bound with the data:

- quota: each connection's sliding log (one read each; it only ever holds the current window);
- queues: each queue's approximate depth and its first visible message's age (two round trips
  per queue; a delayed message, e.g. a send waiting out its backoff, is not visible);
- recent sends: the final states of the last hour from the message table, reading only
  ``Status`` of records finished since then. ``FinishedAt`` is no key (the keys are message
  ids, in no time order), so the service scans the table for them: at most
  :data:`SENDS_PAGES` pages of :data:`SENDS_PAGE_ROWS` are read, and when the scan was not
  done by then the counts are lower bounds and say so;
- webhooks and subscriptions: up to :data:`REGISTRY_LIMIT` of each (never a callback URL: it
  carries a credential; only its host).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.clock import utcnow
from shared.inbound import SubscriptionStore, WebhookRegistry
from shared.names import MESSAGES_TABLE, QUEUES
from shared.ops._poison import POISON_QUEUES
from shared.storage import plain_datetime, queue_client, table_client

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["Overview", "QueueFigures", "QuotaFigures", "SendFigures", "overview"]

#: Pages (round trips, each the service's scan of part of the table) and the rows per page
#: read at most for the recent-sends counts.
SENDS_PAGES = 5
SENDS_PAGE_ROWS = 1000
SENDS_WINDOW = dt.timedelta(hours=1)
REGISTRY_LIMIT = 200


@dataclass(frozen=True)
class QuotaFigures:
    connection: str
    key: str
    used: int | None
    calls: int
    period_seconds: float
    error: str | None = None

    @property
    def percent(self) -> int:
        return 0 if not self.used else min(100, round(100 * self.used / self.calls))


@dataclass(frozen=True)
class QueueFigures:
    name: str
    depth: int | None
    oldest_age_seconds: int | None
    exists: bool = True

    @property
    def is_poison(self) -> bool:
        return self.name.endswith("-poison")


@dataclass(frozen=True)
class SendFigures:
    since: dt.datetime
    by_status: dict[str, int]
    truncated: bool


@dataclass(frozen=True)
class Registration:
    kind: str  # webhook or subscription
    service: str
    id: str
    where: str
    created_at: dt.datetime


@dataclass
class Overview:
    quotas: list[QuotaFigures]
    queues: list[QueueFigures]
    sends: SendFigures
    registrations: list[Registration] = field(default_factory=list)


def named_connections() -> list[Settings]:
    """The settings of every named connection that is configured (the broken ones show on
    ``/api/health``)."""
    from shared.connections import DEFAULT_CONNECTION, connections

    return [
        c.settings
        for c in connections().by_name.values()
        if c.name != DEFAULT_CONNECTION and c.settings is not None and not c.errors
    ]


def quota_figures(settings: Settings) -> QuotaFigures:
    """The quota use of the connection of ``settings`` in the current window."""
    from shared import quota
    from shared.settings import SettingsInvalid

    try:
        store, calls = quota.from_settings(settings), settings.quota_calls
    except SettingsInvalid as problem:  # a quota setting that does not validate: named here
        return QuotaFigures(settings.connection, "", None, 0, 0.0, problem.detail)
    try:
        used: int | None = store.used()
        error = None
    except quota.QuotaStoreError as exc:
        used, error = None, str(exc)
    return QuotaFigures(
        settings.connection,
        store.connection,
        used,
        calls,
        store.window_seconds,
        error,
    )


def queue_figures(settings: Settings, name: str, now: dt.datetime) -> QueueFigures:
    """Depth and oldest visible message's age of one queue."""
    from azure.core.exceptions import ResourceNotFoundError

    client = queue_client(name, settings)
    try:
        depth = client.get_queue_properties().approximate_message_count
        first = client.peek_messages(max_messages=1)
    except ResourceNotFoundError:
        return QueueFigures(name, 0, None, exists=False)
    age = None
    if first and first[0].inserted_on is not None:
        inserted = first[0].inserted_on
        inserted = inserted if inserted.tzinfo else inserted.replace(tzinfo=dt.UTC)
        age = max(0, int((now - inserted).total_seconds()))
    return QueueFigures(name, depth, age)


def send_figures(settings: Settings, now: dt.datetime) -> SendFigures:
    """Messages finished (sent, failed, cancelled) in the last hour, by status: those the
    first :data:`SENDS_PAGES` pages of the table's scan found (``truncated``: it went on)."""
    from azure.core.exceptions import ResourceNotFoundError

    since = now - SENDS_WINDOW
    stamp = plain_datetime(since)
    assert stamp is not None
    where = f"FinishedAt ge datetime'{stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"
    counts: Counter[str] = Counter()
    try:
        pages = (
            table_client(MESSAGES_TABLE, settings)
            .query_entities(where, select=["Status"], results_per_page=SENDS_PAGE_ROWS)
            .by_page()
        )
        for _, page in zip(range(SENDS_PAGES), pages, strict=False):
            counts.update(str(row.get("Status") or "unknown") for row in page)
    except ResourceNotFoundError:
        return SendFigures(since, {}, truncated=False)
    more = getattr(pages, "continuation_token", None) is not None
    return SendFigures(since, dict(counts), truncated=more)


def registrations(settings: Settings) -> list[Registration]:
    """Webhooks registered with SmartDialog and New Message subscriptions."""
    found = [
        Registration("webhook", r.service, r.action_id, r.pipeline_id or "", r.created_at)
        for r in WebhookRegistry.from_settings(settings).every(REGISTRY_LIMIT)
    ]
    found += [
        Registration(
            "subscription",
            s.service,
            s.subscription_id,
            urlsplit(s.callback_url).hostname or "",
            s.created_at,
        )
        for s in SubscriptionStore.from_settings(settings).every(REGISTRY_LIMIT)
    ]
    return found


def overview(settings: Settings) -> Overview:
    """Everything the page shows except the dead letters."""
    now = utcnow()
    names = [*QUEUES, *POISON_QUEUES]
    return Overview(
        quotas=[quota_figures(settings), *(quota_figures(c) for c in named_connections())],
        queues=[queue_figures(settings, name, now) for name in names],
        sends=send_figures(settings, now),
        registrations=registrations(settings),
    )
