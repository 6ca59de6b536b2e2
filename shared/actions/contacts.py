"""Group-contact actions: read, create, update and delete the contacts of a group service.

Phone numbers are read in the caller's regions (``Region`` or ``phoneNumberRegions``, default
FI) and passed to SmartDialog in E.164, so the contact SmartDialog stores is unambiguous.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

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
    REGION_DROPDOWN,
    CustomerIdHeader,
    EmailAddress,
    NonEmptyStr,
    PhoneNumber,
    RegionCode,
    UpstreamId,
    service_dropdown,
    ui,
)
from shared.clock import utcnow
from shared.phone import MAX_REGIONS

__all__ = ["SPECS", "GroupContactChanges", "NewGroupContactBody"]

TAG = "Group contacts"
EARLIEST_BIRTH_YEAR = 1900


def _plausible_birth_year(year: int | None) -> int | None:
    this_year = utcnow().year  # UTC, as every time of ours
    if year is not None and not EARLIEST_BIRTH_YEAR <= year <= this_year:
        raise ValueError(f"Must be a year between {EARLIEST_BIRTH_YEAR} and {this_year}.")
    return year


# --- body fields (shared by create and update, declared once) -------------------------------

Active = Annotated[
    bool | None,
    Field(
        description="Whether the contact receives the group's messages.",
        json_schema_extra={**ui("Active"), "enum": [True, False]},  # a Yes/No list, as certified
    ),
]
Email = Annotated[
    EmailAddress | None,
    Field(description="The contact's e-mail address.", json_schema_extra=ui("Email")),
]
FirstName = Annotated[
    str | None,
    Field(
        max_length=200, description="The contact's first name.", json_schema_extra=ui("Firstname")
    ),
]
LastName = Annotated[
    str | None,
    Field(max_length=200, description="The contact's last name.", json_schema_extra=ui("Lastname")),
]
Gender = Annotated[
    Literal["Male", "Female", "Other"] | None,
    Field(description="The contact's gender.", json_schema_extra=ui("Gender")),
]
BirthYear = Annotated[
    int | None,
    AfterValidator(_plausible_birth_year),
    Field(
        description="The year the contact was born (four digits).",
        json_schema_extra=ui("Birth Year") | {"format": "int32", "minimum": EARLIEST_BIRTH_YEAR},
    ),
]
StreetAddress = Annotated[
    str | None,
    Field(description="The contact's street address.", json_schema_extra=ui("Street Address")),
]
ZipCode = Annotated[
    str | None, Field(description="The contact's postal code.", json_schema_extra=ui("Zip Code"))
]
City = Annotated[str | None, Field(description="The contact's city.", json_schema_extra=ui("City"))]


def _country_code(value: str | None) -> str | None:
    if value is not None and not (len(value) == 3 and value.isascii() and value.isalpha()):
        raise ValueError("Must be a 3-letter ISO 3166 country code, e.g. FIN.")
    return value.upper() if value is not None else None


CountryCode = Annotated[
    str | None,
    AfterValidator(_country_code),
    Field(
        description="The contact's country as a 3-letter ISO 3166 code, e.g. FIN.",
        json_schema_extra=ui("Country Code") | {"pattern": "^[A-Za-z]{3}$"},
    ),
]


class ContactProperty(BaseModel):
    """A custom property of a contact."""

    model_config = ConfigDict(extra="forbid")

    name: NonEmptyStr = Field(
        description="Name of the custom property.", json_schema_extra=ui("Name")
    )
    value: str | None = Field(
        None, description="Value of the custom property.", json_schema_extra=ui("Value")
    )


CustomProperties = Annotated[
    list[ContactProperty] | None,
    Field(
        description="Custom properties stored with the contact.",
        json_schema_extra=ui("Custom Properties"),
    ),
]
_REGION_ITEM = ui("Region", dynamic_values=REGION_DROPDOWN)


def _distinct(codes: list[str] | None) -> list[str] | None:
    """``codes`` without repeats, in order: ``["FI", "fi"]`` is tried and sent as ``["FI"]``."""
    return list(dict.fromkeys(codes)) if codes else codes


PhoneRegions = Annotated[
    Annotated[
        list[Annotated[RegionCode, Field(json_schema_extra=_REGION_ITEM)]],
        Field(max_length=MAX_REGIONS),
    ]
    | None,
    AfterValidator(_distinct),
    Field(
        description=(
            f"Regions to read phone numbers without a country code in, tried in order; at most "
            f"{MAX_REGIONS}. Finland (FI) when empty."
        ),
        json_schema_extra=ui("Phonenumber Regions"),
    ),
]


class NewGroupContactBody(BaseModel):
    """Body of CreateGroupContact (the certified connector's field names)."""

    model_config = ConfigDict(extra="forbid")

    active: Active = True
    phone: PhoneNumber = Field(
        description="The contact's phone number; stored in international (E.164) form.",
        json_schema_extra=ui("Phone", visibility="important"),
    )
    email: Email = None
    firstName: FirstName = None
    lastName: LastName = None
    gender: Gender = None
    birthYear: BirthYear = None
    streetAddress: StreetAddress = None
    zipCode: ZipCode = None
    city: City = None
    countryCode: CountryCode = None
    customContactProperties: CustomProperties = None
    phoneNumberRegions: PhoneRegions = None


class GroupContactChanges(BaseModel):
    """Body of UpdateGroupContact: the fields to change (the phone number is in the route).

    At least one field other than ``phoneNumberRegions`` must be given: an update that changes
    nothing is refused before SmartDialog is called.
    """

    model_config = ConfigDict(extra="forbid")

    active: Active = None
    email: Email = None
    firstName: FirstName = None
    lastName: LastName = None
    gender: Gender = None
    birthYear: BirthYear = None
    streetAddress: StreetAddress = None
    zipCode: ZipCode = None
    city: City = None
    countryCode: CountryCode = None
    customContactProperties: CustomProperties = None
    phoneNumberRegions: PhoneRegions = None

    @model_validator(mode="after")
    def _changes_something(self) -> GroupContactChanges:
        given = self.model_dump(exclude_none=True, exclude={"phoneNumberRegions"})
        if not given:
            raise ValueError(
                "Give at least one field to change (phoneNumberRegions alone changes nothing)."
            )
        return self


class ContactPropertyDoc(BaseModel):
    """A custom property as SmartDialog returns it: its name may be missing (unlike a request's)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(
        None, description="Name of the custom property.", json_schema_extra=ui("Name")
    )
    value: str | None = Field(
        None, description="Value of the custom property.", json_schema_extra=ui("Value")
    )


class GroupContactDoc(BaseModel):
    """A group contact as SmartDialog returns it (documentation of GetGroupContact's answer)."""

    model_config = ConfigDict(extra="allow")

    phone: str | None = Field(
        None, description="The contact's phone number.", json_schema_extra=ui("Phone")
    )
    email: str | None = Field(
        None, description="The contact's e-mail address.", json_schema_extra=ui("Email")
    )
    firstName: str | None = Field(
        None, description="The contact's first name.", json_schema_extra=ui("Firstname")
    )
    lastName: str | None = Field(
        None, description="The contact's last name.", json_schema_extra=ui("Lastname")
    )
    gender: Literal["Male", "Female", "Other"] | None = Field(
        None, description="The contact's gender.", json_schema_extra=ui("Gender")
    )
    birthYear: int | None = Field(
        None,
        description="The year the contact was born.",
        json_schema_extra=ui("Birth Year") | {"format": "int32"},
    )
    streetAddress: str | None = Field(
        None, description="The contact's street address.", json_schema_extra=ui("Street Address")
    )
    zipCode: str | None = Field(
        None, description="The contact's postal code.", json_schema_extra=ui("Zip Code")
    )
    city: str | None = Field(None, description="The contact's city.", json_schema_extra=ui("City"))
    countryCode: str | None = Field(
        None, description="The contact's country code.", json_schema_extra=ui("Country Code")
    )
    failedMessages: int | None = Field(
        None,
        description="How many messages to the contact have failed.",
        json_schema_extra=ui("Failed messages") | {"format": "int32"},
    )
    customContactProperties: list[ContactPropertyDoc] | None = Field(
        None,
        description="Custom properties stored with the contact.",
        json_schema_extra=ui("Custom Properties"),
    )


# --- inputs ---------------------------------------------------------------------------------------

GroupService = Annotated[
    UpstreamId,
    Param("path", "GroupService"),
    Field(
        description="The group service whose contacts to use.",
        json_schema_extra=ui(
            "Group Service", visibility="important", dynamic_values=service_dropdown("Group")
        ),
    ),
]
ContactPhone = Annotated[
    PhoneNumber,
    Param("path", "Phone"),
    Field(
        description="The contact's phone number, in international form or local to the region.",
        json_schema_extra=ui("Phone", visibility="important"),
    ),
]
Region = Annotated[
    RegionCode | None,
    Param("query", "Region"),
    Field(
        description="Region to read a phone number without a country code in (default FI).",
        json_schema_extra=ui("Region", dynamic_values=REGION_DROPDOWN),
    ),
]


class GroupInput(ActionInput):
    customer_id: CustomerIdHeader
    group_service: GroupService


class ContactInput(ActionInput):
    phone_regions_from = "Region"

    customer_id: CustomerIdHeader
    group_service: GroupService
    phone: ContactPhone
    region: Region = None


class CreateContactInput(ActionInput):
    phone_regions_from = "phoneNumberRegions"

    customer_id: CustomerIdHeader
    group_service: GroupService
    body: Annotated[
        NewGroupContactBody,
        Body(),
        Field(
            description="The new contact: its phone number and any other details to store.",
            json_schema_extra=ui("Contact", visibility="important"),
        ),
    ]


class UpdateContactInput(ActionInput):
    phone_regions_from = "phoneNumberRegions"

    customer_id: CustomerIdHeader
    group_service: GroupService
    phone: ContactPhone
    body: Annotated[
        GroupContactChanges,
        Body(),
        Field(
            description="The contact's fields to change; fields left out stay as they are.",
            json_schema_extra=ui("Changes", visibility="important"),
        ),
    ]


# --- handlers -------------------------------------------------------------------------------------


def _wire(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_none=True)


def get_group_contact(ctx: ActionContext, inp: ContactInput) -> ActionResponse:
    contact = ctx.client.get_group_contact(
        customer=inp.customer_id,
        group_service=inp.group_service,
        phone=inp.phone,
        region=inp.region,
    )
    return ActionResponse.json(contact)


def create_group_contact(ctx: ActionContext, inp: CreateContactInput) -> ActionResponse:
    from shared.smartdialog import NewGroupContact

    contact_id = ctx.client.create_group_contact(
        NewGroupContact.model_validate(_wire(inp.body)),
        customer=inp.customer_id,
        group_service=inp.group_service,
    )
    return ActionResponse.json(contact_id)


def update_group_contact(ctx: ActionContext, inp: UpdateContactInput) -> ActionResponse:
    from shared.smartdialog import GroupContactUpdate

    updated = ctx.client.update_group_contact(
        GroupContactUpdate.model_validate(_wire(inp.body)),
        customer=inp.customer_id,
        group_service=inp.group_service,
        phone=inp.phone,
    )
    return ActionResponse.json(updated)


def delete_group_contact(ctx: ActionContext, inp: ContactInput) -> ActionResponse:
    deleted = ctx.client.delete_group_contact(
        customer=inp.customer_id, group_service=inp.group_service, phone=inp.phone
    )
    return ActionResponse.json(deleted)


def delete_all_group_contacts(ctx: ActionContext, inp: GroupInput) -> ActionResponse:
    deleted = ctx.client.delete_all_group_contacts(
        customer=inp.customer_id, group_service=inp.group_service
    )
    return ActionResponse.json(deleted)


_CONTACT_ROUTE = "groups/{GroupService}/contacts/{Phone}"
_GROUP_ROUTE = "groups/{GroupService}/contacts"

SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="GetGroupContact",
        method="GET",
        route=_CONTACT_ROUTE,
        input=ContactInput,
        handler=get_group_contact,
        summary="Get Group Contact",
        description="Reads one contact of a group service by phone number.",
        responses=(ResponseDoc(200, "The contact.", GroupContactDoc),),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="CreateGroupContact",
        method="POST",
        route=_GROUP_ROUTE,
        input=CreateContactInput,
        handler=create_group_contact,
        summary="Create group contact",
        description="Adds a contact to a group service and returns the new contact's ID.",
        responses=(
            ResponseDoc(
                200,
                "The contact was added.",
                Annotated[
                    uuid.UUID,
                    Field(description="ID of the new contact.", json_schema_extra=ui("Contact Id")),
                ],
            ),
        ),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="UpdateGroupContact",
        method="PUT",
        route=_CONTACT_ROUTE,
        input=UpdateContactInput,
        handler=update_group_contact,
        summary="Update Group Contact",
        description="Changes the given fields of a group contact; others stay as they are.",
        responses=(ResponseDoc(200, "True when the contact changed.", bool),),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="DeleteGroupContact",
        method="DELETE",
        route=_CONTACT_ROUTE,
        input=ContactInput,
        handler=delete_group_contact,
        summary="Delete Group Contact",
        description="Removes one contact, found by phone number, from a group service.",
        responses=(ResponseDoc(200, "True when the contact was removed.", bool),),
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="DeleteAllGroupContacts",
        method="DELETE",
        route=_GROUP_ROUTE,
        input=GroupInput,
        handler=delete_all_group_contacts,
        summary="Delete All Group Contacts",
        description="Removes every contact of a group service. This cannot be undone.",
        responses=(ResponseDoc(200, "True when the group was emptied.", bool),),
        tags=(TAG,),
    ),
)
