"""The delivery-report, opt-out and send-failed triggers: subscribe and unsubscribe.

Each is a webhook trigger like New Message: Power Automate POSTs the flow's callback when the
flow is saved (function key) and DELETEs the answered ``Location`` (anonymous at the Functions
level, opened by the token it carries) when it is turned off or deleted. What each delivers
and how it gets there: :mod:`shared.triggers` and :mod:`shared.inbound._triggers`.

A subscription names a service the customer has: a send's (OneWay or TwoWay) for delivery
reports and failures, a TwoWay one for opt-outs (only inbound messages carry keywords; the
app's webhook is registered for it if it has none, as New Message does). Any other service is a
400 naming it, and nothing is stored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

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
from shared.actions.fields import CustomerIdHeader, HttpUrl, NonEmptyStr, service_dropdown, ui
from shared.inbound._registry import (
    SUBSCRIPTION_ROUTES,
)
from shared.inbound.actions import (
    SubscriptionIdPath,
    SubscriptionTokenQuery,
    _callable_url,
    open_subscription,
    register_webhook,
    registered_on,
    subscription_to_end,
)
from shared.problems import FieldError, Problem, ProblemType
from shared.triggers import (
    DeliveryReportTriggerData,
    OptOutTriggerData,
    SendFailedTriggerData,
    TriggerKind,
    TriggerNotifier,
)

__all__ = ["SPECS"]

TAG = "Triggers"
#: The service types of a send (GetCustomerServices' ServiceType): what delivery-report and
#: send-failed subscriptions accept and their dropdown lists.
SEND_SERVICE_TYPES = ("OneWay", "TwoWay")


SendServicePath = Annotated[
    NonEmptyStr,
    Param("path", "Service"),
    Field(
        max_length=200,
        description="The service the messages are sent through (1-way or 2-way).",
        json_schema_extra=ui(
            "Service",
            visibility="important",
            dynamic_values=service_dropdown(",".join(SEND_SERVICE_TYPES)),
        ),
    ),
]
TwoWayServicePath = Annotated[
    NonEmptyStr,
    Param("path", "Service"),
    Field(
        max_length=200,
        description="The 2-way service whose recipients opt out.",
        json_schema_extra=ui(
            "Service", visibility="important", dynamic_values=service_dropdown("TwoWay")
        ),
    ),
]


class TriggerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callbackUrl: Annotated[HttpUrl, AfterValidator(_callable_url)] = Field(
        description="Where to POST each event (filled in by Power Automate).",
        json_schema_extra={
            **ui("Callback URL", visibility="internal"),
            "x-ms-notification-url": True,
        },
    )


_BodyField = Annotated[
    TriggerBody,
    Body(),
    Field(
        description="The flow's callback, filled in by Power Automate when the flow is saved.",
        json_schema_extra=ui("Subscription", visibility="internal"),
    ),
]


class DeliveryReportSubscribeInput(ActionInput):
    customer_id: CustomerIdHeader
    service: SendServicePath
    states: Annotated[
        Literal["final", "all"],
        Param("query", "States"),
        Field(
            "final",
            description=(
                "final: a recipient's first delivered or undelivered; all: also sent (the "
                "operator took it) and any later state."
            ),
            json_schema_extra=ui("Report States", visibility="important"),
        ),
    ] = "final"
    body: _BodyField


class SendSubscribeInput(ActionInput):
    customer_id: CustomerIdHeader
    service: SendServicePath
    body: _BodyField


class OptOutSubscribeInput(ActionInput):
    customer_id: CustomerIdHeader
    service: TwoWayServicePath
    body: _BodyField


class TriggerUnsubscribeInput(ActionInput):
    service: Annotated[
        NonEmptyStr,
        Param("path", "Service"),
        Field(
            max_length=200,
            description="The subscription's service.",
            json_schema_extra=ui("Service", visibility="internal"),
        ),
    ]
    subscription_id: SubscriptionIdPath
    token: SubscriptionTokenQuery = None


class TriggerSubscriptionDoc(BaseModel):
    id: str = Field(description="The subscription id.", json_schema_extra=ui("Subscription Id"))
    service: str = Field(description="The service it watches.", json_schema_extra=ui("Service"))
    kind: str = Field(
        description="delivery-report, opt-out or send-failed.", json_schema_extra=ui("Kind")
    )


# --- handlers -------------------------------------------------------------------------------------

#: The service types a trigger accepts.
_SERVICE_TYPES: dict[TriggerKind, tuple[str, ...]] = {
    TriggerKind.DELIVERY_REPORT: SEND_SERVICE_TYPES,
    TriggerKind.SEND_FAILED: SEND_SERVICE_TYPES,
    TriggerKind.OPT_OUT: ("TwoWay",),
}


def _check_service(ctx: ActionContext, kind: TriggerKind, customer_id: str, service: str) -> None:
    """400 naming ``service`` unless the customer has it among the kind's service types."""
    types = _SERVICE_TYPES[kind]
    for service_type in types:
        found = ctx.client.get_customer_services(customer_id=customer_id, service_type=service_type)
        if any(s.id == service for s in found):
            return
    wanted = " or ".join(types)
    raise Problem(
        400,
        "No such service",
        f"Customer {customer_id} has no {wanted} service {service}.",
        type=ProblemType.VALIDATION,
        errors=[FieldError("Service", f"{service} is not one of the customer's {wanted} services")],
    )


def _subscribe(
    ctx: ActionContext,
    kind: TriggerKind,
    customer_id: str,
    service: str,
    callback: str,
    states: Literal["final", "all"] | None = None,
) -> ActionResponse:
    _check_service(ctx, kind, customer_id, service)
    if kind is TriggerKind.OPT_OUT and not registered_on(ctx, service):
        register_webhook(ctx, customer_id, service)  # keywords arrive through the webhook
    subscription, location = open_subscription(
        ctx, service, customer_id, callback, kind=kind, states=states
    )
    doc = TriggerSubscriptionDoc(id=subscription.subscription_id, service=service, kind=kind)
    return ActionResponse.json(doc.model_dump(), status=201, headers={"Location": location})


def subscribe_reports(ctx: ActionContext, inp: DeliveryReportSubscribeInput) -> ActionResponse:
    kind = TriggerKind.DELIVERY_REPORT
    return _subscribe(ctx, kind, inp.customer_id, inp.service, inp.body.callbackUrl, inp.states)


def subscribe_opt_outs(ctx: ActionContext, inp: OptOutSubscribeInput) -> ActionResponse:
    return _subscribe(ctx, TriggerKind.OPT_OUT, inp.customer_id, inp.service, inp.body.callbackUrl)


def subscribe_failures(ctx: ActionContext, inp: SendSubscribeInput) -> ActionResponse:
    kind = TriggerKind.SEND_FAILED
    return _subscribe(ctx, kind, inp.customer_id, inp.service, inp.body.callbackUrl)


def _unsubscribe(kind: TriggerKind, ctx: ActionContext, inp: TriggerUnsubscribeInput) -> Any:
    store = subscription_to_end(ctx, inp.service, inp.subscription_id, inp.token)
    # Unsubscribing twice is fine (Power Automate may repeat it); what is left of a replaced one
    # goes too; another trigger's subscription is not this route's to end.
    if store.remove(inp.service, inp.subscription_id, kind):
        TriggerNotifier.for_settings(ctx.settings).forget(inp.service)
    doc = TriggerSubscriptionDoc(id=inp.subscription_id, service=inp.service, kind=kind)
    return ActionResponse.json(doc.model_dump())


def unsubscribe_reports(ctx: ActionContext, inp: TriggerUnsubscribeInput) -> ActionResponse:
    return _unsubscribe(TriggerKind.DELIVERY_REPORT, ctx, inp)  # type: ignore[no-any-return]


def unsubscribe_opt_outs(ctx: ActionContext, inp: TriggerUnsubscribeInput) -> ActionResponse:
    return _unsubscribe(TriggerKind.OPT_OUT, ctx, inp)  # type: ignore[no-any-return]


def unsubscribe_failures(ctx: ActionContext, inp: TriggerUnsubscribeInput) -> ActionResponse:
    return _unsubscribe(TriggerKind.SEND_FAILED, ctx, inp)  # type: ignore[no-any-return]


# --- what each trigger's flow receives ------------------------------------------------------------

_TITLES: dict[str, str] = {
    "messageId": "Message Id",
    "recipient": "Recipient",
    "state": "Delivery State",
    "final": "Final State",
    "statusCode": "Status Code",
    "reportedAt": "Reported At",
    "customerData": "Customer Data",
    "service": "Service",
    "connection": "Connection",
    "phone": "Phone",
    "keyword": "Keyword",
    "direction": "Direction",
    "occurredAt": "Occurred At",
    "reason": "Failure Reason",
    "code": "Failure Code",
    "detail": "Failure Detail",
    "upstreamStatus": "Upstream Status",
    "fieldErrors": "Field Errors",
    "failedAt": "Failed At",
}
_IMPORTANT = frozenset({"messageId", "recipient", "state", "customerData", "phone", "direction"})


def notification_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Swagger schema of what a trigger's subscriber receives (``model``'s fields, each
    with its Title Case label)."""
    properties: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        prop: dict[str, Any] = {
            "type": "string",
            "description": info.description or name,
            "title": _TITLES[name],
            "x-ms-visibility": "important" if name in _IMPORTANT else "advanced",
        }
        choices = [a for a in get_args(info.annotation) if isinstance(a, str)]
        if choices:
            prop["enum"] = choices
        if "datetime" in annotation:
            prop["format"] = "date-time"
        if "bool" in annotation:
            prop["type"] = "boolean"
        if annotation.startswith("int") or annotation == "int | None":
            prop["type"] = "integer"
        if name == "fieldErrors":
            prop["type"] = "array"
            prop["items"] = {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "title": "Field", "description": "The field."},
                    "message": {
                        "type": "string",
                        "title": "Message",
                        "description": "What is wrong with it.",
                    },
                },
            }
        properties[name] = prop
    return {"type": "object", "properties": properties}


def _trigger(
    operation_id: str,
    kind: TriggerKind,
    input_model: type[ActionInput],
    handler: Any,
    summary: str,
    description: str,
    content: tuple[str, type[BaseModel]],
) -> ActionSpec[Any]:
    return ActionSpec(
        operation_id=operation_id,
        method="POST",
        route=f"{SUBSCRIPTION_ROUTES[kind]}/{{Service}}",
        input=input_model,
        handler=handler,
        summary=summary,
        description=description,
        responses=(
            ResponseDoc(
                201,
                "Subscribed; DELETE Location to unsubscribe.",
                TriggerSubscriptionDoc,
                {"Location": "The subscription's URL (carries its own token)."},
            ),
        ),
        tags=(TAG,),
        connector_extensions={"x-ms-trigger": "single"},
        path_extensions={
            "x-ms-notification-content": {
                "description": content[0],
                "schema": notification_schema(content[1]),
            }
        },
    )


def _delete(operation_id: str, kind: TriggerKind, handler: Any, what: str) -> ActionSpec[Any]:
    return ActionSpec(
        operation_id=operation_id,
        method="DELETE",
        route=f"{SUBSCRIPTION_ROUTES[kind]}/{{Service}}/{{SubscriptionId}}",
        input=TriggerUnsubscribeInput,
        handler=handler,
        summary=f"Remove {what} subscription",
        description="Called by Power Automate on the subscription's Location to unsubscribe.",
        responses=(
            ResponseDoc(
                200, "Unsubscribed (also when it was already gone).", TriggerSubscriptionDoc
            ),
        ),
        visibility="internal",
        routed=False,  # the callback secrets and our table: a connection's state cannot stop it
        tags=(TAG,),
    )


SPECS: tuple[ActionSpec[Any], ...] = (
    _trigger(
        "DeliveryReportArrived",
        TriggerKind.DELIVERY_REPORT,
        DeliveryReportSubscribeInput,
        subscribe_reports,
        "When a delivery report arrives",
        "Triggers when a recipient of a message sent through the service reaches a new "
        "delivery state (by default only its first final one: delivered or undelivered). Carries "
        "the send's CustomerData, so the flow can find its own row.",
        ("The recipient's new delivery state.", DeliveryReportTriggerData),
    ),
    _delete(
        "DeleteDeliveryReportTrigger",
        TriggerKind.DELIVERY_REPORT,
        unsubscribe_reports,
        "a delivery-report",
    ),
    _trigger(
        "RecipientOptedOut",
        TriggerKind.OPT_OUT,
        OptOutSubscribeInput,
        subscribe_opt_outs,
        "When a recipient opts out or back in",
        "Triggers when a recipient sends a stop keyword (sends to them are then refused) or a "
        "start keyword (the service's suppression lifted; a * one stays) to the 2-way service.",
        ("The opt-out or opt-in.", OptOutTriggerData),
    ),
    _delete("DeleteOptOutTrigger", TriggerKind.OPT_OUT, unsubscribe_opt_outs, "an opt-out"),
    _trigger(
        "SendFailed",
        TriggerKind.SEND_FAILED,
        SendSubscribeInput,
        subscribe_failures,
        "When a send fails",
        "Triggers when a message sent through the service fails for good (after its retries).",
        ("The failed send.", SendFailedTriggerData),
    ),
    _delete(
        "DeleteSendFailedTrigger", TriggerKind.SEND_FAILED, unsubscribe_failures, "a send-failed"
    ),
)
