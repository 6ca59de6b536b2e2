"""What we registered and who subscribed: ``SmartDialogWebhooks`` and
``SmartDialogSubscriptions`` (PartitionKey = service id in both), the self-authenticating URLs we
hand out for them, and ``SmartDialogRevokedTokens``, the webhook URLs that no longer open.

Every registration and subscription gets its own nonce (:func:`shared.signing.new_nonce`),
stored with it and signed into its URL's token, so each URL can be revoked alone:

- A webhook URL stops working when its registration is removed (UnregisterInboundWebhook): its
  nonce is written to ``SmartDialogRevokedTokens`` first, and the webhook refuses it from then on.
- A subscription's URL (its ``Location``, which a flow DELETEs) opens only the subscription that
  holds the same nonce.
- Registrations made before nonces share one URL per service (a ``v1`` token, no nonce). It
  keeps working while the service still has such a registration on record; once the last one is
  unregistered (re-register: register anew, then unregister the old ActionId), it opens nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from shared.clock import current
from shared.clock import utcnow as _now
from shared.names import REVOKED_TOKENS_TABLE, SUBSCRIPTIONS_TABLE, WEBHOOKS_TABLE
from shared.signing import (
    TOKEN_QUERY_PARAMETER,
    TokenPurpose,
    VerifiedToken,
    new_nonce,
    sign,
    verified,
)
from shared.storage import ensure_table, ensured_table, plain_datetime, safe_key, table_client, utc
from shared.triggers import DEFAULT_CONNECTION, REPLACED_BY, SubscriberEntry, TriggerKind

if TYPE_CHECKING:
    from collections.abc import Sequence

    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "CONNECTION_QUERY_PARAMETER",
    "SUBSCRIPTION_ROUTES",
    "Subscription",
    "SubscriptionStore",
    "WebhookRegistration",
    "WebhookRegistry",
    "new_nonce",
    "subscription_url",
    "verify_subscription_token",
    "verify_webhook_token",
    "webhook_url",
]

# Token subjects: one purpose (webhook) for both kinds of URL SmartDialog or a flow holds, told
# apart by the subject's namespace, so a webhook token never opens an unsubscribe URL.
_SERVICE_SUBJECT = "service/{}"
_CONNECTION_SUBJECT = "service/{}/connection/{}"
#: The webhook URL's query parameter naming its SmartDialog connection (signed into its token;
#: a URL made before connections has none and belongs to the default connection).
CONNECTION_QUERY_PARAMETER = "connection"
_SUBSCRIPTION_SUBJECT = "subscription/{}/{}"

#: The route (below ``/api``) of each trigger's subscriptions; a subscription's ``Location`` is
#: its route + ``/{Service}/{SubscriptionId}``.
SUBSCRIPTION_ROUTES: dict[TriggerKind, str] = {
    TriggerKind.NEW_MESSAGE: "inbound/subscriptions",
    TriggerKind.DELIVERY_REPORT: "triggers/delivery-reports",
    TriggerKind.OPT_OUT: "triggers/opt-outs",
    TriggerKind.SEND_FAILED: "triggers/send-failures",
}


def _ambiguous(*parts: str | None) -> bool:
    """Whether a part of a token's subject holds its separator: ``service/a/connection/b``
    would read as service ``a`` on connection ``b``, or as service ``a/connection/b``. No
    SmartDialog service or id of ours has one (a route value with a decoded ``%2F`` might)."""
    return any(part is not None and "/" in part for part in parts)


def _webhook_subject(service: str, connection: str | None) -> str:
    if connection is None:  # a URL made before connections
        return _SERVICE_SUBJECT.format(service)
    return _CONNECTION_SUBJECT.format(service, connection)


def webhook_url(
    settings: Settings, service: str, nonce: str, *, connection: str = DEFAULT_CONNECTION
) -> str:
    """Our inbound webhook for ``service`` on ``connection`` and the registration of ``nonce``,
    carrying a token signed with the newest secret over both. It never expires: it works until
    that registration is removed (its nonce is then revoked)."""
    token = sign(
        TokenPurpose.WEBHOOK,
        _webhook_subject(service, connection),
        nonce=nonce,
        secrets=settings.callback_secret_list,
    )
    return (
        f"{settings.api_base_url}/callbacks/inbound/{quote(service, safe='')}"
        f"?{TOKEN_QUERY_PARAMETER}={token}"
        f"&{CONNECTION_QUERY_PARAMETER}={quote(connection, safe='')}"
    )


def verify_webhook_token(
    settings: Settings, service: str, token: str | None, connection: str | None = None
) -> VerifiedToken | None:
    """The token, if it was signed for the webhook of ``service`` on ``connection`` (the URL's
    parameter; None: the URL has none, as before connections). The signature only: whether its
    registration was revoked is :meth:`WebhookRegistry.revoked`."""
    if _ambiguous(service, connection):
        return None
    return verified(
        token,
        TokenPurpose.WEBHOOK,
        _webhook_subject(service, connection),
        secrets=settings.callback_secret_list,
    )


def subscription_url(
    settings: Settings,
    service: str,
    subscription_id: str,
    nonce: str,
    kind: TriggerKind = TriggerKind.NEW_MESSAGE,
) -> str:
    """The ``Location`` of a trigger subscription: DELETE it to unsubscribe."""
    token = sign(
        TokenPurpose.WEBHOOK,
        _SUBSCRIPTION_SUBJECT.format(service, subscription_id),
        nonce=nonce,
        secrets=settings.callback_secret_list,
    )
    return (
        f"{settings.api_base_url}/{SUBSCRIPTION_ROUTES[kind]}/{quote(service, safe='')}/"
        f"{quote(subscription_id, safe='')}?{TOKEN_QUERY_PARAMETER}={token}"
    )


def verify_subscription_token(
    settings: Settings, service: str, subscription_id: str, token: str | None
) -> VerifiedToken | None:
    """The token, if it was signed for this subscription's URL (see
    :meth:`Subscription.opened_by` for the nonce)."""
    if _ambiguous(service, subscription_id):
        return None
    return verified(
        token,
        TokenPurpose.WEBHOOK,
        _SUBSCRIPTION_SUBJECT.format(service, subscription_id),
        secrets=settings.callback_secret_list,
    )


@dataclass(frozen=True)
class WebhookRegistration:
    """One pipeline action we registered with SmartDialog for a service."""

    service: str
    action_id: str
    pipeline_id: str | None
    customer_id: str
    created_at: dt.datetime
    nonce: str | None = None
    """The nonce its webhook URL carries; None for a registration made before nonces."""
    connection: str = DEFAULT_CONNECTION
    """The SmartDialog connection it was registered with (its URL names it)."""


#: How long an instance trusts that a webhook nonce is not revoked: the webhook then makes one
#: storage call (its intake message) instead of two. The instance that unregisters a URL refuses
#: it at once; the others within this many seconds (docs/inbound.md).
REVOCATION_CACHE_SECONDS = 30.0
_NOT_REVOKED_MAX = 10_000
_NOT_REVOKED: dict[tuple[str, str], float] = {}
_NOT_REVOKED_LOCK = threading.Lock()


class WebhookRegistry:
    """``SmartDialogWebhooks``: one entity per registered action (RowKey = action id), and
    ``SmartDialogRevokedTokens``: one entity per revoked nonce (PartitionKey = service, RowKey =
    nonce). The webhook URL itself is not stored: it carries a credential and can be re-made."""

    def __init__(self, table: TableClient, revoked: TableClient) -> None:
        self._table = table
        self._revoked = revoked

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> WebhookRegistry:
        # The revocations table is created on the first revocation: until then, none is revoked,
        # and the webhook's check costs one read, never a create.
        return cls(
            ensured_table(WEBHOOKS_TABLE, settings), table_client(REVOKED_TOKENS_TABLE, settings)
        )

    @classmethod
    def for_webhook(cls, settings: Settings | None = None) -> WebhookRegistry:
        """A registry for the webhook's revocation check only: it creates no table (a missing
        one holds nothing), so a webhook request makes no call but its check."""
        return cls(
            table_client(WEBHOOKS_TABLE, settings), table_client(REVOKED_TOKENS_TABLE, settings)
        )

    def add(self, registration: WebhookRegistration) -> None:
        self._table.upsert_entity(
            {
                "PartitionKey": safe_key(registration.service),
                "RowKey": safe_key(registration.action_id),
                "Service": registration.service,
                "ActionId": registration.action_id,
                "PipelineId": registration.pipeline_id,
                "CustomerId": registration.customer_id,
                "CreatedAt": plain_datetime(registration.created_at),
                "Nonce": registration.nonce,
                "Connection": registration.connection,
            }
        )

    def revoked(self, service: str, token: VerifiedToken) -> bool:
        """Whether a webhook token of ``service`` no longer opens it: its nonce was revoked, or,
        for a token made before nonces, the service has no such registration left. One storage
        read."""
        from azure.core.exceptions import ResourceNotFoundError

        if token.nonce is None:
            try:
                return not any(r.nonce is None for r in self.list(service))
            except ResourceNotFoundError:  # no table: nothing was ever registered
                return True
        key = (service, token.nonce)
        now = current().now()
        if _NOT_REVOKED.get(key, 0.0) > now:
            return False
        try:
            self._revoked.get_entity(safe_key(service), token.nonce, select=["RowKey"])
        except ResourceNotFoundError:
            with _NOT_REVOKED_LOCK:
                if len(_NOT_REVOKED) >= _NOT_REVOKED_MAX:
                    _NOT_REVOKED.clear()
                _NOT_REVOKED[key] = now + REVOCATION_CACHE_SECONDS
            return False
        return True

    def get(self, service: str, action_id: str) -> WebhookRegistration | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(safe_key(service), safe_key(action_id))
        except ResourceNotFoundError:
            return None
        return _registration(entity)

    def list(self, service: str) -> list[WebhookRegistration]:
        key = safe_key(service).replace("'", "''")
        entities = self._table.query_entities(f"PartitionKey eq '{key}'")
        return sorted((_registration(e) for e in entities), key=lambda r: r.created_at)

    def remove(self, service: str, action_id: str) -> None:
        """Forget a registration and revoke its webhook URL (the revocation is written first, so
        a crash in between leaves a revoked registration that a second call removes)."""
        registration = self.get(service, action_id)
        if registration is not None and registration.nonce is not None:
            _NOT_REVOKED.pop((service, registration.nonce), None)  # this instance: at once
            ensure_table(self._revoked).upsert_entity(
                {
                    "PartitionKey": safe_key(service),
                    "RowKey": registration.nonce,
                    "Service": service,
                    "ActionId": action_id,
                    "RevokedAt": plain_datetime(_now()),
                }
            )
        self._table.delete_entity(safe_key(service), safe_key(action_id))

    def every(self, limit: int = 1000) -> Sequence[WebhookRegistration]:
        """Up to ``limit`` registrations of every service (the operations page)."""
        entities = self._table.query_entities("PartitionKey ne ''", results_per_page=limit)
        return [_registration(e) for _, e in zip(range(limit), entities, strict=False)]


def _registration(entity: dict[str, object]) -> WebhookRegistration:
    created = utc(entity.get("CreatedAt"))
    assert created is not None
    pipeline = entity.get("PipelineId")
    nonce = entity.get("Nonce")
    return WebhookRegistration(
        service=str(entity["Service"]),
        action_id=str(entity["ActionId"]),
        pipeline_id=str(pipeline) if pipeline else None,
        customer_id=str(entity.get("CustomerId", "")),
        created_at=created,
        nonce=str(nonce) if nonce else None,
        connection=str(entity.get("Connection") or DEFAULT_CONNECTION),
    )


@dataclass(frozen=True)
class Subscription:
    """A trigger: POST what happens on the service (its ``kind``) to ``callback_url``."""

    service: str
    subscription_id: str
    callback_url: str
    customer_id: str
    created_at: dt.datetime
    nonce: str | None = None
    """The nonce its URL's token carries; None for a subscription made before nonces."""
    kind: TriggerKind = TriggerKind.NEW_MESSAGE
    """Which trigger (rows written before there were others have none: New Message)."""
    states: Literal["final", "all"] | None = None
    """Delivery reports only: the final states only, or every state."""
    connection: str = DEFAULT_CONNECTION
    """The SmartDialog connection whose events it gets (rows made before connections: the
    default one)."""

    def opened_by(self, token: VerifiedToken) -> bool:
        """Whether ``token`` (verified for this subscription's URL) was made for this very
        subscription: the same nonce, or none on both sides for one made before nonces."""
        return token.nonce == self.nonce


class SubscriptionStore:
    """``SmartDialogSubscriptions``: one entity per subscription (RowKey = subscription id),
    of every trigger; ``Kind`` tells them apart (absent: New Message), ``Connection`` names the
    connection whose events it gets (absent: the default one), and
    :class:`shared.triggers.TriggerNotifier` indexes them."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SubscriptionStore:
        return cls(ensured_table(SUBSCRIPTIONS_TABLE, settings))

    def add(self, subscription: Subscription) -> None:
        self._table.create_entity(_row(subscription))

    def get(
        self, service: str, subscription_id: str, *, replaced: bool = False
    ) -> Subscription | None:
        """The subscription; ``replaced``: also one replaced by another (what its DELETE ends)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(safe_key(service), safe_key(subscription_id))
        except ResourceNotFoundError:
            return None
        if _is_subscription(entity) or (replaced and _is_row_of_one(entity)):
            return _subscription(entity)
        return None

    def list(
        self, service: str, kind: TriggerKind = TriggerKind.NEW_MESSAGE
    ) -> Sequence[Subscription]:
        """The subscriptions of ``service`` to one trigger (by default New Message)."""
        key = safe_key(service).replace("'", "''")
        query = f"PartitionKey eq '{key}'"
        if kind is not TriggerKind.NEW_MESSAGE:  # New Message rows may have no Kind
            query += f" and Kind eq '{kind}'"
        # Filtered before parsing: a row of a kind this release does not know is not listed.
        entities = self._table.query_entities(query)
        return [_subscription(e) for e in entities if _is_subscription(e) and _kind_of(e) == kind]

    def every(self, limit: int = 1000) -> Sequence[Subscription]:
        """Up to ``limit`` subscriptions of every service (the operations page)."""
        entities = self._table.query_entities("PartitionKey ne ''", results_per_page=limit)
        subscriptions = (_subscription(e) for e in entities if _is_subscription(e))
        return [s for _, s in zip(range(limit), subscriptions, strict=False)]

    def remove(self, service: str, subscription_id: str, kind: TriggerKind | None = None) -> bool:
        """Delete a subscription (or what is left of a replaced one), only of trigger ``kind``
        when given; True if it existed."""
        from azure.core.exceptions import ResourceNotFoundError

        keys = safe_key(service), safe_key(subscription_id)
        try:
            entity = self._table.get_entity(*keys)
        except ResourceNotFoundError:
            return False
        if not _is_subscription(entity) and not entity.get(REPLACED_BY):
            return False  # another row of the table (the subscriber index's)
        if kind is not None and _kind_of(entity) != kind:
            return False  # another trigger's subscription: not this route's to end
        self._table.delete_entity(*keys)
        return True

    def replace(self, earlier: Subscription, successor: str) -> None:
        """Mark ``earlier`` replaced by ``successor`` (the same trigger subscribed again): no
        longer a subscriber here, and a delivery made for it by an instance whose index has not
        seen the change yet goes to ``successor``. The row keeps the rest, so that an instance
        of the previous release (def6ed5, which knows no ``ReplacedBy``) running alongside
        during a deploy still delivers what is made for it: maybe twice, never lost."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        with contextlib.suppress(ResourceNotFoundError):  # its DELETE came first: gone already
            self._table.update_entity(
                {**_row(earlier), REPLACED_BY: successor}, mode=UpdateMode.REPLACE
            )

    def keep_newest(self, service: str, kind: TriggerKind, callback_url: str) -> None:
        """Mark every live subscription of ``kind`` to ``callback_url`` but the newest (by
        created_at, id) replaced by it, so subscribes at once agree. If then none is live (an
        ec7daff instance marks what it listed replaced by its own, older one, which a newer
        subscribe had marked replaced: a cycle, and no index lists either), the one
        :meth:`live` follows the newest to is live again, unless its row changed since read."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        same = [s for s in self.list(service, kind) if s.callback_url == callback_url]
        if not same:
            return  # its DELETE came already
        newest = max(same, key=_age)
        for replaced in same:
            if replaced != newest:
                self.replace(replaced, newest.subscription_id)
        if any(s.callback_url == callback_url for s in self.list(service, kind)):
            return
        kept = self.live(service, newest.subscription_id)
        if kept is None:
            return  # what replaced it is gone: its trigger was deleted
        with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
            entity = self._table.get_entity(safe_key(service), safe_key(kept.subscription_id))
            if entity.get(REPLACED_BY):
                self._table.update_entity(
                    {k: v for k, v in entity.items() if k != REPLACED_BY},
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )

    def live(
        self, service: str, subscription_id: str, event: Mapping[str, object] | None = None
    ) -> Subscription | None:
        """The subscription a delivery made for ``subscription_id`` goes to: that one, or the
        one that replaced it (and so on, a few times) if it takes the delivery's ``event``
        (:func:`_takes`), or the newest of a cycle of replaced ones (:meth:`keep_newest`);
        None when it is gone."""
        from azure.core.exceptions import ResourceNotFoundError

        data = event.get("data") if event is not None else None
        first: Mapping[str, object] | None = None
        seen: dict[str, Subscription] = {}
        for _ in range(5):
            try:
                entity = self._table.get_entity(safe_key(service), safe_key(subscription_id))
            except ResourceNotFoundError:
                return None
            if first is not None and not _takes(entity, first, data):
                return None  # the edited trigger takes other events: not this one
            first = first or entity
            if _is_subscription(entity):
                return _subscription(entity)
            seen[subscription_id] = _subscription(entity)
            successor = entity.get(REPLACED_BY)
            if not isinstance(successor, str) or not successor:
                return None
            if successor in seen:  # a cycle: from the successor on
                return max(list(seen.values())[list(seen).index(successor) :], key=_age)
            subscription_id = successor
        return None


def _age(subscription: Subscription) -> tuple[dt.datetime, str]:
    """Which of one trigger's subscriptions is newest: the greatest (created_at, id)."""
    return subscription.created_at, subscription.subscription_id


def _takes(entity: Mapping[str, object], first: Mapping[str, object], data: object) -> bool:
    """Whether a successor's row takes a delivery made for ``first`` (its event's ``data``):
    the same connection, and the same States or, of a delivery report, ones that want the event
    (an "all" successor of a "final" one takes its final reports)."""
    if (entity.get("Connection") or DEFAULT_CONNECTION) != (
        first.get("Connection") or DEFAULT_CONNECTION
    ):
        return False
    states = entity.get("States") or None
    if states == (first.get("States") or None):
        return True
    if _kind_of(entity) != TriggerKind.DELIVERY_REPORT or not isinstance(data, dict):
        return False
    state, final = data.get("state"), data.get("final")
    entry = SubscriberEntry("", TriggerKind.DELIVERY_REPORT, states=str(states or "final"))
    return entry.wants(
        state if isinstance(state, str) else None, final if isinstance(final, bool) else None
    )


#: The subscription kinds this release knows.
_KINDS = frozenset(TriggerKind)


def _kind_of(entity: Mapping[str, object]) -> str:
    """A row's trigger kind as stored (a row without one: New Message)."""
    return str(entity.get("Kind") or TriggerKind.NEW_MESSAGE)


def _is_row_of_one(entity: Mapping[str, object]) -> bool:
    """Whether a row of the table is (or was, until replaced) a subscription of a kind this
    release knows (the table also holds the subscriber index's ``~asks-questions`` rows:
    :mod:`shared.triggers`). The previous release takes every such row for a subscriber."""
    return "CallbackUrl" in entity and _kind_of(entity) in _KINDS


def _is_subscription(entity: Mapping[str, object]) -> bool:
    """Whether a row of the table is a live subscription: one not replaced by another."""
    return _is_row_of_one(entity) and not entity.get(REPLACED_BY)


def _row(subscription: Subscription) -> dict[str, object]:
    return {
        "PartitionKey": safe_key(subscription.service),
        "RowKey": subscription.subscription_id,
        "Service": subscription.service,
        "CallbackUrl": subscription.callback_url,
        "CustomerId": subscription.customer_id,
        "CreatedAt": plain_datetime(subscription.created_at),
        "Nonce": subscription.nonce,
        "Kind": str(subscription.kind),
        "States": subscription.states,
        "Connection": subscription.connection,
    }


def _subscription(entity: dict[str, object]) -> Subscription:
    created = utc(entity.get("CreatedAt"))
    assert created is not None
    return Subscription(
        service=str(entity["Service"]),
        subscription_id=str(entity["RowKey"]),
        callback_url=str(entity["CallbackUrl"]),
        customer_id=str(entity.get("CustomerId", "")),
        created_at=created,
        nonce=str(entity["Nonce"]) if entity.get("Nonce") else None,
        kind=TriggerKind(_kind_of(entity)),
        states="all"
        if entity.get("States") == "all"
        else ("final" if entity.get("States") else None),
        connection=str(entity.get("Connection") or DEFAULT_CONNECTION),
    )
