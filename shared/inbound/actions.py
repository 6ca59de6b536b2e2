"""The inbound actions: webhook registration, the New Message trigger, suppressions.

All run through the shared action pipeline. RegisterInboundWebhook, UnregisterInboundWebhook,
NewMessage and the suppression actions need the function key; DeleteNewMessageTrigger (the
``Location`` a flow DELETEs to unsubscribe) is anonymous at the Functions level and checks the
token its URL carries.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
)
from shared.actions.fields import (
    CustomerIdHeader,
    HttpUrl,
    NonEmptyStr,
    PhoneNumber,
    service_dropdown,
    ui,
)
from shared.clock import utcnow
from shared.inbound._notification import notification_schema
from shared.inbound._registry import (
    Subscription,
    SubscriptionStore,
    WebhookRegistration,
    WebhookRegistry,
    new_nonce,
    subscription_url,
    verify_subscription_token,
    webhook_url,
)
from shared.logs import loggable_text
from shared.problems import Problem, ProblemType
from shared.suppressions import ALL_SERVICES, Suppression, SuppressionStore
from shared.triggers import TriggerKind, TriggerNotifier

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "ALL_SERVICES",
    "SPECS",
    "notification_schema",
    "register_webhook",
    "registered_on",
]

TAG = "Inbound"

# --- parameters -----------------------------------------------------------------------------------

TwoWayServicePath = Annotated[
    NonEmptyStr,
    Param("path", "Service"),
    Field(
        max_length=200,
        description="The 2-way service whose inbound messages to receive.",
        json_schema_extra=ui(
            "Service", visibility="important", dynamic_values=service_dropdown("TwoWay")
        ),
    ),
]
ActionIdPath = Annotated[
    NonEmptyStr,
    Param("path", "ActionId"),
    Field(
        max_length=200,
        description="The ActionId RegisterInboundWebhook answered.",
        json_schema_extra=ui("Action Id", visibility="important"),
    ),
]
SuppressionServicePath = Annotated[
    NonEmptyStr,
    Param("path", "Service"),
    Field(
        max_length=200,
        description="The service the opt-out applies to; * for every service.",
        json_schema_extra=ui("Service", visibility="important"),
    ),
]
PhonePath = Annotated[
    PhoneNumber,
    Param("path", "Phone"),
    Field(
        description="The recipient's phone number (E.164, or national Finnish).",
        json_schema_extra=ui("Phone", visibility="important"),
    ),
]

# --- inputs and documents -------------------------------------------------------------------------

log = logging.getLogger("shared.inbound.actions")
_AFTER = dt.timedelta(microseconds=1)  # a stored CreatedAt's resolution


class RegisterInput(ActionInput):
    customer_id: CustomerIdHeader
    service: TwoWayServicePath


class UnregisterInput(ActionInput):
    service: TwoWayServicePath
    action_id: ActionIdPath
    pipeline_id: Annotated[
        str | None,
        Param("query", "PipelineId"),
        Field(
            None,
            max_length=200,
            description="For a webhook this app did not record, or recorded without it.",
            json_schema_extra=ui("Pipeline Id", visibility="advanced"),
        ),
    ] = None


class WebhookRegistrationDoc(BaseModel):
    Service: str = Field(description="The 2-way service.", json_schema_extra=ui("Service"))
    CustomerId: str = Field(
        description="The customer it belongs to.", json_schema_extra=ui("Customer Id")
    )
    ActionId: str = Field(
        description="SmartDialog's pipeline action id: unregister with it.",
        json_schema_extra=ui("Action Id"),
    )
    PipelineId: str | None = Field(
        None, description="SmartDialog's pipeline id.", json_schema_extra=ui("Pipeline Id")
    )
    CreatedAt: str = Field(
        description="When it was registered.", json_schema_extra=ui("Registered at")
    )


def _callable_url(value: str) -> str:
    """Refuse at subscription time what the guarded client would refuse without DNS."""
    from shared.guarded_http import check_callback_url
    from shared.settings import get_settings

    return check_callback_url(value, get_settings())


class SubscribeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callbackUrl: Annotated[HttpUrl, AfterValidator(_callable_url)] = Field(
        description="Where to POST each new message (filled in by Power Automate).",
        json_schema_extra={
            **ui("Callback URL", visibility="internal"),
            "x-ms-notification-url": True,
        },
    )


class SubscribeInput(ActionInput):
    customer_id: CustomerIdHeader
    service: TwoWayServicePath
    body: Annotated[
        SubscribeBody,
        Body(),
        Field(
            description="The flow's callback, filled in by Power Automate when the flow is saved.",
            json_schema_extra=ui("Subscription", visibility="internal"),
        ),
    ]


#: The DELETE of every trigger's Location: its subscription id and the token it carries.
SubscriptionIdPath = Annotated[
    NonEmptyStr,
    Param("path", "SubscriptionId"),
    Field(
        max_length=64,
        description="The subscription to end (the last segment of the trigger's Location).",
        json_schema_extra=ui("Subscription Id", visibility="internal"),
    ),
]
SubscriptionTokenQuery = Annotated[
    str | None,
    Param("query", "token"),
    Field(
        None,
        max_length=200,
        description="The token of the trigger's Location URL, which authorizes the DELETE.",
        json_schema_extra=ui("Token", visibility="internal"),
    ),
]


class UnsubscribeInput(ActionInput):
    service: TwoWayServicePath
    subscription_id: SubscriptionIdPath
    token: SubscriptionTokenQuery = None


class SubscriptionDoc(BaseModel):
    id: str = Field(description="The subscription id.", json_schema_extra=ui("Subscription Id"))
    service: str = Field(
        description="The 2-way service whose messages start the flow.",
        json_schema_extra=ui("Service"),
    )


class SuppressionInput(ActionInput):
    service: SuppressionServicePath
    phone: PhonePath


class SuppressionDoc(BaseModel):
    Service: str = Field(
        description="The service (* for every service).", json_schema_extra=ui("Service")
    )
    Phone: str = Field(description="The recipient, E.164.", json_schema_extra=ui("Phone"))
    Suppressed: bool = Field(
        description="True while sends to this recipient are refused.",
        json_schema_extra=ui("Suppressed"),
    )
    Keyword: str | None = Field(
        None, description="The stop keyword the recipient sent.", json_schema_extra=ui("Keyword")
    )
    Source: str | None = Field(
        None,
        description="inbound (the recipient sent a stop keyword) or action (added by a flow).",
        json_schema_extra=ui("Source"),
    )
    Since: str | None = Field(
        None,
        description="When the latest stop keyword or AddSuppression for it was received.",
        json_schema_extra=ui("Since"),
    )


# --- handlers -------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _registry(settings: Settings) -> WebhookRegistry:
    return WebhookRegistry.from_settings(settings)


@lru_cache(maxsize=4)
def _subscriptions(settings: Settings) -> SubscriptionStore:
    return SubscriptionStore.from_settings(settings)


@lru_cache(maxsize=4)
def _suppressions(settings: Settings) -> SuppressionStore:
    return SuppressionStore.from_settings(settings)


def _registration_doc(registration: WebhookRegistration) -> dict[str, Any]:
    return WebhookRegistrationDoc(
        Service=registration.service,
        CustomerId=registration.customer_id,
        ActionId=registration.action_id,
        PipelineId=registration.pipeline_id,
        CreatedAt=registration.created_at.isoformat(),
    ).model_dump(exclude_none=True)


def registered_on(ctx: ActionContext, service: str) -> list[WebhookRegistration]:
    """The webhook registrations of ``service`` on the request's connection."""
    return [r for r in _registry(ctx.settings).list(service) if r.connection == ctx.connection]


def register_webhook(ctx: ActionContext, customer_id: str, service: str) -> WebhookRegistration:
    """Register our webhook (URL signed with the newest secret, naming the request's
    connection) for ``service`` upstream and record it. Each call registers a new pipeline
    action (that is how secrets rotate)."""
    from shared.smartdialog import WebhookAction, WebhookOptions

    nonce = new_nonce()  # this registration's own URL: unregistering it revokes only it
    url = webhook_url(ctx.settings, service, nonce, connection=ctx.connection)
    result = ctx.client.new_message(
        WebhookAction(options=WebhookOptions(endpointUrl=url)),
        customer=customer_id,
        service=service,
    )
    if not result.action_id:
        raise Problem(
            502,
            "SmartDialog did not say which action it created",
            "The registration answer had no action id, so it could not be recorded; check the "
            "service's pipelines in SmartDialog.",
            type=ProblemType.UPSTREAM_UNAVAILABLE,
        )
    registration = WebhookRegistration(
        service=service,
        action_id=result.action_id,
        pipeline_id=result.pipeline_id,
        customer_id=customer_id,
        created_at=utcnow(),
        nonce=nonce,
        connection=ctx.connection,
    )
    try:
        _registry(ctx.settings).add(registration)
    except Exception:
        _withdraw(ctx, registration)
        raise
    return registration


def _withdraw(ctx: ActionContext, registration: WebhookRegistration) -> None:
    """Remove upstream an action whose registration could not be recorded (its URL could never
    be revoked; the caller's retry registers another). Best effort: what remains is logged."""
    try:
        if (pipeline := registration.pipeline_id) is None:
            raise LookupError("the registration answer had no pipeline id")
        ctx.client.delete_trigger(pipeline_id=pipeline, action_id=registration.action_id)
    except Exception as exc:
        log.error(
            "webhook action %s of service %s was registered with SmartDialog but could not be "
            "recorded nor removed (%s): remove it from the service's pipelines",
            registration.action_id,
            loggable_text(registration.service),
            type(exc).__name__,
        )


def register(ctx: ActionContext, inp: RegisterInput) -> ActionResponse:
    registration = register_webhook(ctx, inp.customer_id, inp.service)
    return ActionResponse.json(_registration_doc(registration), status=201)


def unregister(ctx: ActionContext, inp: UnregisterInput) -> ActionResponse:
    from shared.connections import UnknownConnection, connection_settings, route
    from shared.smartdialog import NotFoundError

    registry = _registry(ctx.settings)
    known = registry.get(inp.service, inp.action_id)
    name = route(inp.Connection, None)  # 503 while the connections' settings are in doubt
    if known is not None and not (inp.Connection or "").strip():
        name = known.connection  # no Customer-Id to route by: the connection that registered it
    elif known is not None and known.connection != name:
        known = None  # another connection's: not the named connection's to remove
    try:
        ctx.reroute(connection_settings(name))
    except UnknownConnection:  # route() checked a named one: the recorded one is gone
        detail = f"Connection {name}, which registered it, is gone: configure it again first."
        raise Problem(409, "Its connection is gone", detail, type=ProblemType.CONFLICT) from None
    pipeline_id = (known.pipeline_id if known else None) or inp.pipeline_id
    action = f"action {inp.action_id} for service {inp.service}"
    if pipeline_id is None and known is not None:  # SmartDialog's answer named no pipeline
        detail = f"This app registered {action}, but SmartDialog's answer named no pipeline id, "
        detail += "which its removal needs: pass PipelineId."
        raise Problem(409, "Its pipeline id is unknown", detail, type=ProblemType.CONFLICT)
    if pipeline_id is None:
        detail = f"This app registered no {action}; pass PipelineId to remove one made elsewhere."
        raise Problem(404, "No such webhook", detail, type=ProblemType.NOT_FOUND)
    try:
        ctx.client.delete_trigger(pipeline_id=pipeline_id, action_id=inp.action_id)
    except NotFoundError:  # gone upstream (removed by hand), or the caller's PipelineId wrong
        if known is None:
            raise
        if not known.pipeline_id:  # forgotten either way: no dead end
            registry.remove(inp.service, inp.action_id)
            detail = f"SmartDialog has no {action} in pipeline {pipeline_id} (connection "
            detail += f"{known.connection}); this app forgot it: if it is still there, remove it."
            raise Problem(404, "Not in that pipeline", detail, type=ProblemType.NOT_FOUND) from None
    if known is not None:
        registry.remove(inp.service, inp.action_id)
    return ActionResponse.empty(204)


def open_subscription(
    ctx: ActionContext,
    service: str,
    customer_id: str,
    callback_url: str,
    *,
    kind: TriggerKind = TriggerKind.NEW_MESSAGE,
    states: Literal["final", "all"] | None = None,
) -> tuple[Subscription, str]:
    """Store a trigger subscription with its own nonce, and its ``Location`` (made first: a URL
    that cannot be made stores nothing). Every earlier one of this kind and service to the same
    ``callback_url`` (one flow trigger, subscribed again after an edit, a lost answer, a slow
    subscribe retried on another instance) would deliver each event twice: once stored, all but
    the newest (it is after every row it saw) are replaced by it (``SubscriptionStore.
    keep_newest``), so subscribes at once agree. A replaced one's deliveries go to its
    successor; its Location's DELETE ends what is left of it."""
    store, nonce = _subscriptions(ctx.settings), new_nonce()
    earlier = [s for s in store.list(service, kind) if s.callback_url == callback_url]
    subscription = Subscription(
        service=service,
        subscription_id=str(uuid.uuid4()),
        callback_url=callback_url,
        customer_id=customer_id,
        created_at=max([utcnow(), *(s.created_at + _AFTER for s in earlier)]),
        nonce=nonce,
        kind=kind,
        states=states,
        connection=ctx.connection,
    )
    location = subscription_url(ctx.settings, service, subscription.subscription_id, nonce, kind)
    store.add(subscription)  # first: the trigger is never without one
    store.keep_newest(service, kind, callback_url)
    TriggerNotifier.for_settings(ctx.settings).forget(service)  # this instance: at once
    return subscription, location


def subscription_to_end(
    ctx: ActionContext, service: str, subscription_id: str, token: str | None
) -> SubscriptionStore:
    """The store, once the token of the subscription (or what is left of it) a trigger's DELETE
    ends checks out; 401 without a valid token, 403 for one made for another of the same id."""
    verified = verify_subscription_token(ctx.settings, service, subscription_id, token)
    if verified is None:
        raise Problem(
            401,
            "Invalid or missing token",
            "Use the Location the subscription answered; it carries its token.",
            type=ProblemType.UNAUTHORIZED,
        )
    store = _subscriptions(ctx.settings)
    subscription = store.get(service, subscription_id, replaced=True)
    if subscription is not None and not subscription.opened_by(verified):
        raise Problem(
            403,
            "Invalid token",
            "This token was made for another subscription of the same id.",
            type=ProblemType.FORBIDDEN,
        )
    return store


def subscribe(ctx: ActionContext, inp: SubscribeInput) -> ActionResponse:
    if not registered_on(ctx, inp.service):
        register_webhook(ctx, inp.customer_id, inp.service)
    subscription, location = open_subscription(
        ctx, inp.service, inp.customer_id, inp.body.callbackUrl
    )
    return ActionResponse.json(
        {"id": subscription.subscription_id, "service": inp.service},
        status=201,
        headers={"Location": location},
    )


def unsubscribe(ctx: ActionContext, inp: UnsubscribeInput) -> ActionResponse:
    store = subscription_to_end(ctx, inp.service, inp.subscription_id, inp.token)
    # Unsubscribing twice is fine (Power Automate may repeat it); another trigger's subscription
    # is not this route's to end.
    if store.remove(inp.service, inp.subscription_id, TriggerKind.NEW_MESSAGE):
        TriggerNotifier.for_settings(ctx.settings).forget(inp.service)
    return ActionResponse.json(SubscriptionDoc(id=inp.subscription_id, service=inp.service))


def _suppression_doc(service: str, phone: str, hit: Suppression | None) -> dict[str, Any]:
    return SuppressionDoc(
        Service=hit.service if hit else service,
        Phone=phone,
        Suppressed=hit is not None,
        Keyword=hit.keyword if hit else None,
        Source=hit.source if hit else None,
        Since=hit.since.isoformat() if hit else None,
    ).model_dump(exclude_none=True)


def add_suppression(ctx: ActionContext, inp: SuppressionInput) -> ActionResponse:
    hit = _suppressions(ctx.settings).add(
        inp.service, inp.phone, keyword=None, source="action", now=utcnow()
    )
    return ActionResponse.json(_suppression_doc(inp.service, inp.phone, hit))


def remove_suppression(ctx: ActionContext, inp: SuppressionInput) -> ActionResponse:
    _suppressions(ctx.settings).remove(inp.service, inp.phone)
    return get_suppression(ctx, inp)  # a * one may still refuse its sends


def get_suppression(ctx: ActionContext, inp: SuppressionInput) -> ActionResponse:
    # As a send's check finds it: the service's own, else a * one.
    hit = _suppressions(ctx.settings).for_recipient(inp.service, inp.phone)
    return ActionResponse.json(_suppression_doc(inp.service, inp.phone, hit))


SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="NewMessage",
        method="POST",
        route="inbound/subscriptions/{Service}",
        input=SubscribeInput,
        handler=subscribe,
        summary="New Message",
        description=(
            "Triggers when a new message arrives to a 2-way service. Registers the app's webhook "
            "with SmartDialog for the service if it has none."
        ),
        responses=(
            ResponseDoc(
                201,
                "Subscribed; DELETE Location to unsubscribe.",
                SubscriptionDoc,
                {"Location": "The subscription's URL (carries its own token)."},
            ),
        ),
        tags=(TAG,),
        connector_extensions={"x-ms-trigger": "single"},
        path_extensions={
            "x-ms-notification-content": {
                "description": "The new message.",
                "schema": notification_schema(),
            }
        },
    ),
    ActionSpec(
        operation_id="DeleteNewMessageTrigger",
        method="DELETE",
        route="inbound/subscriptions/{Service}/{SubscriptionId}",
        input=UnsubscribeInput,
        handler=unsubscribe,
        summary="Remove a New Message subscription",
        description="Called by Power Automate on the subscription's Location to unsubscribe.",
        responses=(
            ResponseDoc(200, "Unsubscribed (also when it was already gone).", SubscriptionDoc),
        ),
        visibility="internal",
        routed=False,  # as the trigger DELETEs: it ends our row only, nothing upstream
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="RegisterInboundWebhook",
        method="POST",
        route="inbound/webhooks/{Service}",
        input=RegisterInput,
        handler=register,
        summary="Register the inbound webhook",
        description=(
            "Asks SmartDialog to forward the 2-way service's inbound messages to this app, which "
            "puts each on the smartdialog-inbound queue as a CloudEvent."
        ),
        responses=(ResponseDoc(201, "Registered.", WebhookRegistrationDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="UnregisterInboundWebhook",
        method="DELETE",
        route="inbound/webhooks/{Service}/{ActionId}",
        input=UnregisterInput,
        handler=unregister,
        summary="Unregister the inbound webhook",
        description="Removes a webhook registration from SmartDialog and from the app's records.",
        responses=(ResponseDoc(204, "Removed."),),
        visibility="advanced",
        routed=False,  # through the connection that registered it, unless a header names one
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="AddSuppression",
        method="PUT",
        route="suppressions/{Service}/{Phone}",
        input=SuppressionInput,
        handler=add_suppression,
        summary="Suppress a recipient",
        description=(
            "Refuses further sends to the recipient through the service (* for all) unless a "
            "send is marked transactional. Inbound stop keywords do the same."
        ),
        responses=(ResponseDoc(200, "Suppressed.", SuppressionDoc),),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="RemoveSuppression",
        method="DELETE",
        route="suppressions/{Service}/{Phone}",
        input=SuppressionInput,
        handler=remove_suppression,
        summary="Lift a suppression",
        description="Allows sends to the recipient again (as an inbound start keyword does).",
        responses=(ResponseDoc(200, "Not suppressed.", SuppressionDoc),),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetSuppression",
        method="GET",
        route="suppressions/{Service}/{Phone}",
        input=SuppressionInput,
        handler=get_suppression,
        summary="Check a suppression",
        description="Whether sends to the recipient through the service (or all: *) are refused.",
        responses=(ResponseDoc(200, "The recipient's state.", SuppressionDoc),),
        tags=(TAG,),
    ),
)
