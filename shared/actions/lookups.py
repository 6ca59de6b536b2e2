"""The look-up actions behind the connector's dropdowns (customers, services, templates, ...).

Hidden in the flow designer (``x-ms-visibility: internal``) as in the certified connector, but
callable like any other action. Answers keep SmartDialog's shapes and field names.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Param,
    ResponseDoc,
)
from shared.actions.fields import (
    UPSTREAM_ID_MAX_LENGTH,
    CustomerIdHeader,
    HeaderText,
    NonEmptyStr,
    ui,
)

__all__ = ["SPECS"]

TAG = "Look-ups"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- answers (documentation models: the wire names SmartDialog uses) --------------------------


class CustomerUserDoc(_Doc):
    customerId: str | None = Field(
        None, description="Identifier of the customer.", json_schema_extra=ui("Customer Id")
    )
    customerName: str | None = Field(
        None, description="Name of the customer.", json_schema_extra=ui("Customer name")
    )


class UserCustomersDoc(_Doc):
    customerUsers: list[CustomerUserDoc] = Field(
        default_factory=list,
        description="The customers the app's SmartDialog account may act for.",
        json_schema_extra=ui("Customers"),
    )


class ServiceDoc(_Doc):
    id: str | None = Field(
        None, description="Identifier of the service.", json_schema_extra=ui("Service Id")
    )
    name: str | None = Field(
        None, description="Name of the service.", json_schema_extra=ui("Service name")
    )


class TemplateContentDoc(_Doc):
    rawContent: str | None = Field(
        None,
        description="The template text with its {{n}} placeholders.",
        json_schema_extra=ui("Template content", visibility="internal"),
    )


class WhatsAppTemplateDoc(_Doc):
    id: str | None = Field(
        None,
        description="The template's name, used to send it.",
        json_schema_extra=ui("Template name", visibility="internal"),
    )
    displayName: str | None = Field(
        None, description="The template's display name.", json_schema_extra=ui("Displayname")
    )
    extensionParameters: TemplateContentDoc | None = Field(
        None, description="Details of the template.", json_schema_extra=ui("Details")
    )


class InputSourceDoc(_Doc):
    address: str | None = Field(
        None,
        description="The WhatsApp sender number.",
        json_schema_extra=ui("Identity number"),
    )


class WhatsAppIdentityDoc(_Doc):
    inputSource: InputSourceDoc | None = Field(
        None, description="Where messages to this identity arrive.", json_schema_extra=ui("Source")
    )


#: One of GetWhatsappTemplateCategories' names, titled as in the certified connector.
CategoryName = Annotated[
    str, Field(description="A template category's name.", json_schema_extra=ui("Category"))
]


class RegionDoc(_Doc):
    value: str | None = Field(
        None,
        description="Two-letter region code, e.g. FI.",
        json_schema_extra=ui("Region Country Code"),
    )
    name: str | None = Field(
        None, description="Name of the region.", json_schema_extra=ui("Region name")
    )


# --- inputs ---------------------------------------------------------------------------------------


class NoInput(ActionInput):
    """An action without parameters."""


class CustomerInput(ActionInput):
    customer_id: CustomerIdHeader


class ServicesInput(ActionInput):
    customer_id: CustomerIdHeader
    service_type: Annotated[
        HeaderText,
        Param("query", "ServiceType"),
        Field(
            max_length=UPSTREAM_ID_MAX_LENGTH,
            description=(
                "The kind of service to list, as SmartDialog names it; default OneWay, as in "
                "the certified connector, which also uses TwoWay and Group. SmartDialog does not "
                "publish the full set, so other values are passed on and SmartDialog decides "
                "(422 if it refuses). Several, comma-separated (OneWay,TwoWay), list each kind "
                "in turn: at most 3, one SmartDialog call each."
            ),
            json_schema_extra=ui("Service Type", visibility="internal"),
        ),
    ] = "OneWay"
    allow_reply_message: Annotated[
        bool | None,
        Param("query", "AllowReplyMessage"),
        Field(
            description="Only services that can (true) or cannot (false) send reply messages.",
            json_schema_extra=ui("Allow Reply Message", visibility="internal"),
        ),
    ] = None

    @field_validator("service_type")
    @classmethod
    def _few_kinds(cls, value: str) -> str:
        if not _kinds(value):  # "," or " , ": no kind to pass on
            raise ValueError("Name a service type, e.g. OneWay.")
        if len(_kinds(value)) > MAX_SERVICE_TYPES:  # each is a call of the shared quota
            raise ValueError(f"At most {MAX_SERVICE_TYPES} service types, comma-separated.")
        return value


#: Most service types one GetCustomerServices lists (a call each).
MAX_SERVICE_TYPES = 3


def _kinds(service_type: str) -> list[str]:
    """The distinct kinds ``service_type`` names, in order."""
    return list(dict.fromkeys(kind.strip() for kind in service_type.split(",") if kind.strip()))


class TemplatesInput(ActionInput):
    customer_id: CustomerIdHeader
    template_id: Annotated[
        NonEmptyStr | None,
        Param("query", "TemplateId"),
        Field(
            max_length=UPSTREAM_ID_MAX_LENGTH,
            description="Return only the template with this name.",
            json_schema_extra=ui("Template name"),
        ),
    ] = None


class ConnectionDoc(_Doc):
    Name: str = Field(description="The connection's name.", json_schema_extra=ui("Name"))
    Customers: list[str] = Field(
        default_factory=list,
        description="The Customer-Ids it serves (the default serves every other one too).",
        json_schema_extra=ui("Customers"),
    )
    CustomerId: str | None = Field(
        None, description="Its default customer.", json_schema_extra=ui("Default customer")
    )
    ServiceId: str | None = Field(
        None, description="Its default service.", json_schema_extra=ui("Default service")
    )
    BrokenSettings: list[str] | None = Field(
        None,
        description="Its settings that are broken (see /api/health): its sends wait meanwhile.",
        json_schema_extra=ui("Broken settings"),
    )


class ConnectionsDoc(_Doc):
    value: list[ConnectionDoc] = Field(
        default_factory=list, description="The connections.", json_schema_extra=ui("Connections")
    )


# --- handlers -------------------------------------------------------------------------------------


def get_user_customers(ctx: ActionContext, _: NoInput) -> ActionResponse:
    return ActionResponse.json(ctx.client.get_user_customers())


def get_customer_services(ctx: ActionContext, inp: ServicesInput) -> ActionResponse:
    services = [
        service
        for kind in _kinds(inp.service_type)
        for service in ctx.client.get_customer_services(
            customer_id=inp.customer_id,
            service_type=kind,
            allow_reply_message=inp.allow_reply_message,
        )
    ]
    return ActionResponse.json([ActionResponse.json(s).body for s in services])


def get_customer_whats_app_templates(ctx: ActionContext, inp: TemplatesInput) -> ActionResponse:
    templates = ctx.client.get_customer_whats_app_templates(
        customer_id=inp.customer_id, template_id=inp.template_id
    )
    return ActionResponse.json([ActionResponse.json(t).body for t in templates])


def get_whatsapp_template_categories(ctx: ActionContext, _: NoInput) -> ActionResponse:
    return ActionResponse.json(ctx.client.get_whatsapp_template_categories())


def get_customer_whatsapp_identities(ctx: ActionContext, inp: CustomerInput) -> ActionResponse:
    identities = ctx.client.get_customer_whatsapp_identities(customer_id=inp.customer_id)
    return ActionResponse.json([ActionResponse.json(i).body for i in identities])


def list_connections(_ctx: ActionContext, _: NoInput) -> ActionResponse:
    from shared.connections import list_connections
    from shared.health import holding

    listed = [{k: v for k, v in c.items() if v is not None} for c in list_connections(holding)]
    return ActionResponse.json({"value": listed})


def get_phone_number_regions(ctx: ActionContext, _: NoInput) -> ActionResponse:
    regions = ctx.client.get_phone_number_regions()
    return ActionResponse.json([ActionResponse.json(r).body for r in regions])


SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="GetUserCustomers",
        method="GET",
        route="customers",
        input=NoInput,
        handler=get_user_customers,
        summary="Get User Customers",
        description="Lists the SmartDialog customers the app's account may act for.",
        responses=(ResponseDoc(200, "The customers.", UserCustomersDoc),),
        visibility="internal",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetCustomerServices",
        method="GET",
        route="services",
        input=ServicesInput,
        handler=get_customer_services,
        summary="Get Customer Services",
        description="Lists a customer's services of one type, such as its group services.",
        responses=(ResponseDoc(200, "The services.", list[ServiceDoc]),),
        visibility="internal",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetCustomerWhatsAppTemplates",
        method="GET",
        route="whatsapp/templates",
        input=TemplatesInput,
        handler=get_customer_whats_app_templates,
        summary="Get Customer WhatsApp Templates",
        description="Lists a customer's WhatsApp templates, or the one with a given name.",
        responses=(ResponseDoc(200, "The templates.", list[WhatsAppTemplateDoc]),),
        visibility="internal",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetWhatsappTemplateCategories",
        method="GET",
        route="whatsapp/template-categories",
        input=NoInput,
        handler=get_whatsapp_template_categories,
        summary="GetWhatsappTemplateCategories",
        description="Lists the categories a new WhatsApp template may be filed under.",
        responses=(ResponseDoc(200, "The category names.", list[CategoryName]),),
        visibility="internal",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetCustomerWhatsappIdentities",
        method="GET",
        route="whatsapp/identities",
        input=CustomerInput,
        handler=get_customer_whatsapp_identities,
        summary="Get Customer WhatsApp Identities",
        description="Lists the WhatsApp numbers a customer can send from.",
        responses=(ResponseDoc(200, "The WhatsApp identities.", list[WhatsAppIdentityDoc]),),
        visibility="internal",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetPhoneNumberRegions",
        method="GET",
        route="phone-number-regions",
        input=NoInput,
        handler=get_phone_number_regions,
        summary="GetPhoneNumberRegions",
        description="Lists the regions phone numbers without a country code can be read in.",
        responses=(ResponseDoc(200, "The regions.", list[RegionDoc]),),
        visibility="internal",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="ListConnections",
        lenient=True,  # only the settings it reads must validate
        method="GET",
        route="connections",
        input=NoInput,
        handler=list_connections,
        summary="List connections",
        description=(
            "Lists the app's connections (SmartDialog accounts): names, the customers each "
            "serves and its default customer and service; never a secret."
        ),
        responses=(ResponseDoc(200, "The connections.", ConnectionsDoc),),
        visibility="internal",
        tags=(TAG,),
    ),
)
