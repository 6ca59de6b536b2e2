"""Reusable field types for action inputs, and the connector metadata they carry.

Types (use them in :class:`~shared.actions.ActionInput` and body models)::

    PhoneNumber       any phone number -> E.164 (regions: the input's phone_regions_from field)
    RegionCode        a phone-number region, e.g. "FI" (upper-cased, checked)
    HttpUrl           an absolute http(s) URL of at most 2000 characters
    LanguageCode      a 2-letter language code (lower-cased)
    CustomerDataText  free text of at most 255 characters (SmartDialog's limit; also CustomerData)
    NonEmptyStr       a string with at least one non-blank character
    HeaderText        a NonEmptyStr of printable ASCII (it goes into an upstream header)
    UpstreamId        a HeaderText of at most 200 characters that is not ``.`` or ``..`` (a
                      customer or service id: it goes into headers, paths and one column)
    CustomerIdHeader  the optional ``Customer-Id`` header, defaulting to SMARTDIALOG_CUSTOMER_ID

Connector metadata goes into ``Field(json_schema_extra=ui(...))``: :func:`ui` writes
``x-ms-summary``, ``x-ms-visibility`` and ``x-ms-dynamic-values``; the ``*_DROPDOWN`` constants
and :func:`service_dropdown` / :func:`template_dropdown` wire a field to our look-up actions.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import idna
from pydantic import AfterValidator, Field, ValidationInfo

from shared.actions._spec import Param, SettingDefault
from shared.phone import normalize_region, parse_phone_number

__all__ = [
    "CATEGORY_DROPDOWN",
    "CUSTOMER_DROPDOWN",
    "IDENTITY_DROPDOWN",
    "MAX_URL_LENGTH",
    "PHONE_REGIONS_CONTEXT",
    "REGION_DROPDOWN",
    "UPSTREAM_ID_MAX_LENGTH",
    "CustomerData",
    "CustomerDataText",
    "CustomerIdHeader",
    "EmailAddress",
    "HeaderText",
    "HttpUrl",
    "LanguageCode",
    "NonEmptyStr",
    "PhoneNumber",
    "RegionCode",
    "StatusToken",
    "UpstreamId",
    "labelled",
    "require_http_url",
    "service_dropdown",
    "template_dropdown",
    "ui",
]

#: The validation-context key the pipeline puts the caller's phone regions under.
PHONE_REGIONS_CONTEXT = "phone_regions"
#: SmartDialog's limit for URL button data (and a sane one for any URL we accept).
MAX_URL_LENGTH = 2000
#: The longest customer or service id we take (SmartDialog's are far shorter): a send command's
#: ``customerId``/``serviceId`` goes into one column of its record, which holds 32K characters.
UPSTREAM_ID_MAX_LENGTH = 200
#: SmartDialog's limit for ``CustomerData``.
MAX_CUSTOMER_DATA_LENGTH = 255

Visibility = Literal["important", "advanced", "internal"]


def ui(
    summary: str,
    *,
    visibility: Visibility | None = None,
    dynamic_values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Connector metadata for one field: its label, visibility and dropdown source."""
    extra: dict[str, Any] = {"x-ms-summary": summary}
    if visibility is not None:
        extra["x-ms-visibility"] = visibility
    if dynamic_values is not None:
        extra["x-ms-dynamic-values"] = dict(dynamic_values)
    return extra


def labelled(
    label: str,
    description: str,
    default: Any = None,
    *,
    visibility: Visibility | None = None,
    dynamic_values: Mapping[str, Any] | None = None,
    schema: Mapping[str, Any] | None = None,
    **field: Any,
) -> Any:
    """A documented field (``default`` ``...``: required): ``label`` its ``x-ms-summary``,
    ``visibility`` and ``dynamic_values`` as :func:`ui`'s, ``schema`` more schema keys (e.g.
    ``format``), ``field`` ``Field``'s own arguments (``default_factory``, constraints)."""
    extra = ui(label, visibility=visibility, dynamic_values=dynamic_values) | dict(schema or {})
    if "default_factory" in field:
        return Field(description=description, json_schema_extra=extra, **field)
    return Field(default, description=description, json_schema_extra=extra, **field)


#: The ``token`` query parameter of a status URL (its ``Location`` carries it).
StatusToken = Annotated[
    str | None,
    Param("query", "token"),
    labelled(
        "Token",
        "The token of the status URL (the Location carries it).",
        visibility="internal",
        max_length=200,
    ),
]


CUSTOMER_DROPDOWN: Mapping[str, Any] = {
    "operationId": "GetUserCustomers",
    "value-collection": "customerUsers",
    "value-path": "customerId",
    "value-title": "customerName",
}
REGION_DROPDOWN: Mapping[str, Any] = {
    "operationId": "GetPhoneNumberRegions",
    "value-path": "value",
    "value-title": "name",
}
CATEGORY_DROPDOWN: Mapping[str, Any] = {"operationId": "GetWhatsappTemplateCategories"}
IDENTITY_DROPDOWN: Mapping[str, Any] = {
    "operationId": "GetCustomerWhatsappIdentities",
    "value-path": "inputSource/address",
    "value-title": "inputSource/address",
    "parameters": {"Customer-Id": {"parameter": "Customer-Id"}},
}


def service_dropdown(
    service_type: str, customer_param: str = "Customer-Id", *, allow_reply: bool | None = None
) -> dict[str, Any]:
    """A dropdown of the customer's services of ``service_type`` (OneWay, TwoWay, Group, ...);
    ``allow_reply`` is passed as ``AllowReplyMessage`` when given (the certified connector's
    sends pass it: true for SendReplyMessage, false for the others)."""
    parameters: dict[str, Any] = {
        "Customer-Id": {"parameter": customer_param},
        "ServiceType": service_type,
    }
    if allow_reply is not None:
        parameters["AllowReplyMessage"] = allow_reply
    return {
        "operationId": "GetCustomerServices",
        "value-path": "id",
        "value-title": "name",
        "parameters": parameters,
    }


def template_dropdown(customer_param: str = "Customer-Id") -> dict[str, Any]:
    """A dropdown of the customer's WhatsApp templates (value: the template name; shown: its
    content, as in the certified connector)."""
    return {
        "operationId": "GetCustomerWhatsAppTemplates",
        "value-path": "id",
        "value-title": "extensionParameters/rawContent",
        "parameters": {"Customer-Id": {"parameter": customer_param}},
    }


# --- validators -----------------------------------------------------------------------------------


def _phone(value: str, info: ValidationInfo) -> str:
    regions = (info.context or {}).get(PHONE_REGIONS_CONTEXT, ())
    return parse_phone_number(value, regions)


def _region(value: str) -> str:
    return normalize_region(value)


#: Blanks and invisible characters: no URL holds them unencoded (percent-encode them).
_NOT_IN_URL = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def require_http_url(value: str) -> str:
    """``value`` stripped, if it is an absolute http(s) URL; else ``ValueError``.

    Percent-encoded and non-ASCII characters (an IRI) are taken as given; a blank, control or
    format character anywhere, a host that is neither a host name (IDNA) nor an IP literal, or
    a port out of range is refused."""
    url, why = value.strip(), ""
    try:
        why = "a port out of range or not digits, or a broken [IPv6] address"
        parts = urlsplit(url)  # raises on a broken [IPv6] literal
        host, _ = parts.hostname, parts.port  # .port raises when out of range or not digits
        why = "it holds a blank or an invisible character (percent-encode a space as %20)"
        if any(unicodedata.category(c) in _NOT_IN_URL for c in url):
            raise ValueError(why)
        why = ""
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise ValueError("no http(s) scheme or no host")
        why = "its host is not a host name"  # not quoted: it may be a phone number
        _host_name_or_ip(host)
    except ValueError as exc:  # idna.IDNAError is one too
        message = "Must be an absolute http or https URL, e.g. https://example.com/page"
        raise ValueError(f"{message}: {why}." if why else f"{message}.") from exc
    return url


#: An ASCII label of a host name as DNS and browsers take it: letters, digits, "-" and "_", in
#: any order (S3's "ab--cd", a CDN's "r3---sn-x", "my_host"; IDNA's hyphen rules are its own).
_ASCII_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _host_name_or_ip(host: str) -> None:
    """Raises ``ValueError`` unless ``host`` is an IP literal (urlsplit has taken off an IPv6's
    brackets) or a host name: its ASCII labels as DNS takes them, any other by IDNA."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    for label in host.removesuffix(".").split("."):
        if label.isascii() and not _ASCII_LABEL.fullmatch(label):
            raise ValueError(f"not a host name: {host}")
        if not label.isascii():
            idna.encode(label, uts46=True)  # IDNAError is a ValueError
        elif label[:4].lower() == "xn--":  # an A-label: Punycode of printable non-ASCII
            decoded = label[4:].encode("ascii").decode("punycode")  # UnicodeError: ValueError
            if decoded.isascii() or any(unicodedata.category(c) in _NOT_IN_URL for c in decoded):
                raise ValueError(f"not a host name: {host}")


def _email(value: str) -> str:
    address = value.strip()
    local, at, domain = address.rpartition("@")
    blank = any(c.isspace() or not c.isprintable() for c in address)  # controls too
    if not at or not local or "." not in domain or domain.startswith(".") or blank:
        raise ValueError("Must be an e-mail address, e.g. name@example.com.")
    return address


def _language(value: str) -> str:
    if len(value) != 2 or not value.isascii() or not value.isalpha():
        raise ValueError("Must be a 2-letter language code, e.g. en or fi.")
    return value.lower()


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("Must not be empty or blank.")
    return value


def _ascii_text(value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise ValueError("Must be printable ASCII text (it is sent as a header).")
    return value


def _upstream_id(value: str) -> str:
    if value.strip() in (".", ".."):
        raise ValueError("Must not be . or .. (it is sent in a path).")
    return _ascii_text(value)


PhoneNumber = Annotated[str, AfterValidator(_phone)]
RegionCode = Annotated[str, AfterValidator(_region)]
HttpUrl = Annotated[str, Field(max_length=MAX_URL_LENGTH), AfterValidator(require_http_url)]
LanguageCode = Annotated[
    str,
    AfterValidator(_language),
    Field(json_schema_extra={"pattern": "^[A-Za-z]{2}$", "minLength": 2, "maxLength": 2}),
]
CustomerDataText = Annotated[str, Field(max_length=MAX_CUSTOMER_DATA_LENGTH)]
#: Same as :data:`CustomerDataText`. In a model with a field named ``CustomerData`` use
#: ``CustomerDataText``: the field name would shadow this alias when annotations are evaluated.
CustomerData = CustomerDataText
NonEmptyStr = Annotated[str, AfterValidator(_not_blank)]
HeaderText = Annotated[NonEmptyStr, AfterValidator(_ascii_text)]
UpstreamId = Annotated[
    str,
    Field(max_length=UPSTREAM_ID_MAX_LENGTH),
    AfterValidator(_not_blank),
    AfterValidator(_upstream_id),
]
EmailAddress = Annotated[str, Field(max_length=254), AfterValidator(_email)]

CustomerIdHeader = Annotated[
    UpstreamId,
    Param("header", "Customer-Id", SettingDefault("customer_id", "SMARTDIALOG_CUSTOMER_ID")),
    Field(
        description=(
            "The SmartDialog customer to act for (the certified connector's Customer). Leave "
            "empty to use the app setting SMARTDIALOG_CUSTOMER_ID."
        ),
        json_schema_extra=ui("Customer", visibility="important", dynamic_values=CUSTOMER_DROPDOWN),
    ),
]
