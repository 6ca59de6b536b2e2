"""What we registered and who subscribed: ``SmartDialogWebhooks`` and
``SmartDialogSubscriptions`` (PartitionKey = service id in both), and the self-authenticating
URLs we hand out for them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from shared.names import SUBSCRIPTIONS_TABLE, WEBHOOKS_TABLE
from shared.signing import TOKEN_QUERY_PARAMETER, TokenPurpose, sign, verify
from shared.storage import ensured_table, plain_datetime, safe_key, utc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "Subscription",
    "SubscriptionStore",
    "WebhookRegistration",
    "WebhookRegistry",
    "subscription_url",
    "verify_subscription_token",
    "verify_webhook_token",
    "webhook_url",
]

# Token subjects: one purpose (webhook) for both kinds of URL SmartDialog or a flow holds, told
# apart by the subject's namespace, so a webhook token never opens an unsubscribe URL.
_SERVICE_SUBJECT = "service/{}"
_SUBSCRIPTION_SUBJECT = "subscription/{}/{}"


def webhook_url(settings: Settings, service: str) -> str:
    """Our inbound webhook for ``service``, carrying a token signed with the newest secret.
    It never expires: SmartDialog keeps it until the registration is removed."""
    token = sign(
        TokenPurpose.WEBHOOK,
        _SERVICE_SUBJECT.format(service),
        secrets=settings.callback_secret_list,
    )
    return (
        f"{settings.public_base_url}/api/callbacks/inbound/{quote(service, safe='')}"
        f"?{TOKEN_QUERY_PARAMETER}={token}"
    )


def verify_webhook_token(settings: Settings, service: str, token: str | None) -> bool:
    return verify(
        token,
        TokenPurpose.WEBHOOK,
        _SERVICE_SUBJECT.format(service),
        secrets=settings.callback_secret_list,
    )


def subscription_url(settings: Settings, service: str, subscription_id: str) -> str:
    """The ``Location`` of a New Message subscription: DELETE it to unsubscribe."""
    token = sign(
        TokenPurpose.WEBHOOK,
        _SUBSCRIPTION_SUBJECT.format(service, subscription_id),
        secrets=settings.callback_secret_list,
    )
    return (
        f"{settings.public_base_url}/api/inbound/subscriptions/{quote(service, safe='')}/"
        f"{quote(subscription_id, safe='')}?{TOKEN_QUERY_PARAMETER}={token}"
    )


def verify_subscription_token(
    settings: Settings, service: str, subscription_id: str, token: str | None
) -> bool:
    return verify(
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


class WebhookRegistry:
    """``SmartDialogWebhooks``: one entity per registered action (RowKey = action id). The
    webhook URL itself is not stored: it carries a credential and can be re-made."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> WebhookRegistry:
        return cls(ensured_table(WEBHOOKS_TABLE, settings))

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
            }
        )

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
        self._table.delete_entity(safe_key(service), safe_key(action_id))

    def every(self, limit: int = 1000) -> Sequence[WebhookRegistration]:
        """Up to ``limit`` registrations of every service (the operations page)."""
        entities = self._table.query_entities("PartitionKey ne ''", results_per_page=limit)
        return [_registration(e) for _, e in zip(range(limit), entities, strict=False)]


def _registration(entity: dict[str, object]) -> WebhookRegistration:
    created = utc(entity.get("CreatedAt"))
    assert created is not None
    pipeline = entity.get("PipelineId")
    return WebhookRegistration(
        service=str(entity["Service"]),
        action_id=str(entity["ActionId"]),
        pipeline_id=str(pipeline) if pipeline else None,
        customer_id=str(entity.get("CustomerId", "")),
        created_at=created,
    )


@dataclass(frozen=True)
class Subscription:
    """A New Message trigger: POST the service's inbound messages to ``callback_url``."""

    service: str
    subscription_id: str
    callback_url: str
    customer_id: str
    created_at: dt.datetime


class SubscriptionStore:
    """``SmartDialogSubscriptions``: one entity per subscription (RowKey = subscription id)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SubscriptionStore:
        return cls(ensured_table(SUBSCRIPTIONS_TABLE, settings))

    def add(self, subscription: Subscription) -> None:
        self._table.create_entity(
            {
                "PartitionKey": safe_key(subscription.service),
                "RowKey": subscription.subscription_id,
                "Service": subscription.service,
                "CallbackUrl": subscription.callback_url,
                "CustomerId": subscription.customer_id,
                "CreatedAt": plain_datetime(subscription.created_at),
            }
        )

    def get(self, service: str, subscription_id: str) -> Subscription | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(safe_key(service), safe_key(subscription_id))
        except ResourceNotFoundError:
            return None
        return _subscription(entity)

    def list(self, service: str) -> Sequence[Subscription]:
        key = safe_key(service).replace("'", "''")
        return [_subscription(e) for e in self._table.query_entities(f"PartitionKey eq '{key}'")]

    def every(self, limit: int = 1000) -> Sequence[Subscription]:
        """Up to ``limit`` subscriptions of every service (the operations page)."""
        entities = self._table.query_entities("PartitionKey ne ''", results_per_page=limit)
        return [_subscription(e) for _, e in zip(range(limit), entities, strict=False)]

    def remove(self, service: str, subscription_id: str) -> bool:
        """Delete a subscription; True if it existed."""
        if self.get(service, subscription_id) is None:
            return False
        self._table.delete_entity(safe_key(service), safe_key(subscription_id))
        return True


def _subscription(entity: dict[str, object]) -> Subscription:
    created = utc(entity.get("CreatedAt"))
    assert created is not None
    return Subscription(
        service=str(entity["Service"]),
        subscription_id=str(entity["RowKey"]),
        callback_url=str(entity["CallbackUrl"]),
        customer_id=str(entity.get("CustomerId", "")),
        created_at=created,
    )
