"""WhatsApp actions: create a template, and the deprecated opt-in / opt-out pair."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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
    CATEGORY_DROPDOWN,
    IDENTITY_DROPDOWN,
    MAX_URL_LENGTH,
    PHONE_REGIONS_CONTEXT,
    CustomerIdHeader,
    HttpUrl,
    LanguageCode,
    NonEmptyStr,
    PhoneNumber,
    require_http_url,
    ui,
)

__all__ = ["SPECS", "NewTemplateBody", "TemplateButton"]

TAG = "WhatsApp"
#: SmartDialog's limits for button data: a URL, or a phone number / reply text.
MAX_BUTTON_URL_LENGTH = MAX_URL_LENGTH
MAX_BUTTON_TEXT_LENGTH = 20
MAX_DISPLAY_NAME_LENGTH = 100


class TemplateButton(BaseModel):
    """A button of a new WhatsApp template; what ``Data`` holds depends on ``Type``."""

    model_config = ConfigDict(extra="forbid")

    Type: Literal["Call", "QuickReply", "Url"] = Field(
        description="Call dials a number, Url opens a web page, QuickReply sends a reply.",
        json_schema_extra=ui("Button Type"),
    )
    Label: str | None = Field(
        None, description="The text on the button.", json_schema_extra=ui("Button Label")
    )
    Data: str = Field(
        description=(
            "Required. For Url an absolute http(s) URL (at most 2000 characters); for Call a "
            "phone number (sent in international format); for QuickReply the reply text (at "
            "most 20 characters)."
        ),
        json_schema_extra=ui("Button Data"),
    )

    @field_validator("Data")
    @classmethod
    def _data_fits_type(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("Type")  # absent when Type itself is invalid: reported there
        if not value.strip():
            raise ValueError(f"Required for a {kind} button." if kind else "Must not be blank.")
        if kind == "Url":
            if len(value) > MAX_BUTTON_URL_LENGTH:
                raise ValueError(f"A URL may have at most {MAX_BUTTON_URL_LENGTH} characters.")
            return require_http_url(value)
        if kind == "Call":  # the limit is on what is sent: E.164 (at most 16) fits it
            from shared.phone import parse_phone_number

            return parse_phone_number(value, (info.context or {}).get(PHONE_REGIONS_CONTEXT, ()))
        if kind == "QuickReply" and len(value) > MAX_BUTTON_TEXT_LENGTH:
            raise ValueError(f"A reply text may have at most {MAX_BUTTON_TEXT_LENGTH} characters.")
        return value


class NewTemplateBody(BaseModel):
    """Body of CreateWhatsappTemplate (the certified connector's field names)."""

    model_config = ConfigDict(extra="forbid")

    DisplayName: NonEmptyStr = Field(
        max_length=MAX_DISPLAY_NAME_LENGTH,
        description="The template's display name; its name is derived from it.",
        json_schema_extra=ui("Displayname", visibility="important"),
    )
    RawContent: NonEmptyStr = Field(
        description="The template text; write placeholders as {{1}}, {{2}}, ...",
        json_schema_extra=ui("Content", visibility="important"),
    )
    Category: NonEmptyStr = Field(
        description="The WhatsApp category the template is filed under.",
        json_schema_extra=ui(
            "Template Category", visibility="important", dynamic_values=CATEGORY_DROPDOWN
        ),
    )
    Language: LanguageCode = Field(
        description="The template's language as a 2-letter code, e.g. en or fi.",
        json_schema_extra=ui("Template Language", visibility="important"),
    )
    Buttons: list[TemplateButton] | None = Field(
        None, description="Buttons shown under the message.", json_schema_extra=ui("Buttons")
    )
    AttachmentUrl: HttpUrl | None = Field(
        None,
        description="Address of an example attachment (image, video or document).",
        json_schema_extra=ui("Attachment Url"),
    )


# --- inputs ---------------------------------------------------------------------------------------


class CreateTemplateInput(ActionInput):
    customer_id: CustomerIdHeader
    identity_number: Annotated[
        PhoneNumber,
        Param("path", "IdentityNumber"),
        Field(
            description="The customer's WhatsApp sender number the template is for.",
            json_schema_extra=ui(
                "IdentityNumber", visibility="important", dynamic_values=IDENTITY_DROPDOWN
            ),
        ),
    ]
    body: Annotated[
        NewTemplateBody,
        Body(),
        Field(
            description="The new template: its names, text, category, language and buttons.",
            json_schema_extra=ui("Template", visibility="important"),
        ),
    ]


class OptInInput(ActionInput):
    sender: Annotated[
        PhoneNumber,
        Param("path", "Sender"),
        Field(
            description="The registered WhatsApp sender number.",
            json_schema_extra=ui("Sender address", visibility="important"),
        ),
    ]
    recipient: Annotated[
        PhoneNumber,
        Param("path", "Recipient"),
        Field(
            description="The recipient's phone number.",
            json_schema_extra=ui("Recipient address", visibility="important"),
        ),
    ]


# --- handlers -------------------------------------------------------------------------------------


def create_whatsapp_template(ctx: ActionContext, inp: CreateTemplateInput) -> ActionResponse:
    from shared.smartdialog import NewWhatsAppTemplate

    ctx.client.create_whatsapp_template(
        NewWhatsAppTemplate.model_validate(inp.body.model_dump(mode="json", exclude_none=True)),
        customer_id=inp.customer_id,
        identity_number=inp.identity_number,
    )
    return ActionResponse.empty(204)


def whats_app_opt_in(ctx: ActionContext, inp: OptInInput) -> ActionResponse:
    ctx.client.whats_app_opt_in(sender=inp.sender, recipient=inp.recipient)
    return ActionResponse.empty(204)


def whats_app_opt_out(ctx: ActionContext, inp: OptInInput) -> ActionResponse:
    ctx.client.whats_app_opt_out(sender=inp.sender, recipient=inp.recipient)
    return ActionResponse.empty(204)


_OPT_IN_ROUTE = "whatsapp/senders/{Sender}/opt-ins/{Recipient}"

SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="CreateWhatsappTemplate",
        method="POST",
        route="whatsapp/identities/{IdentityNumber}/templates",
        input=CreateTemplateInput,
        handler=create_whatsapp_template,
        summary="Create WhatsApp template",
        description="Submits a new WhatsApp message template for one of the customer's numbers.",
        responses=(ResponseDoc(204, "The template was submitted."),),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="WhatsAppOptIn",
        method="PUT",
        route=_OPT_IN_ROUTE,
        input=OptInInput,
        handler=whats_app_opt_in,
        summary="WhatsApp Opt In (deprecated)",
        description=(
            "Records that a recipient agreed to WhatsApp messages from a sender number. "
            "Deprecated, as in SmartDialog."
        ),
        responses=(ResponseDoc(204, "The opt-in was recorded."),),
        visibility="important",
        deprecated=True,
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="WhatsAppOptOut",
        method="DELETE",
        route=_OPT_IN_ROUTE,
        input=OptInInput,
        handler=whats_app_opt_out,
        summary="WhatsApp Opt Out (deprecated)",
        description=(
            "Removes a recipient's opt-in for a sender number. Deprecated, as in SmartDialog."
        ),
        responses=(ResponseDoc(204, "The opt-in was removed."),),
        visibility="important",
        deprecated=True,
        tags=(TAG,),
    ),
)
