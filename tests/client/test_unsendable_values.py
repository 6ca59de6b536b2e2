"""Values that would change or break the upstream request are refused by the client before any
attempt: a typed, non-retryable error, no quota token, nothing on the wire."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandbox.server import SandboxServer
from shared.smartdialog import InvalidParameterError, Message, Recipient, SmartDialogClient
from shared.smartdialog._operations import (
    DELETE_ALL_GROUP_CONTACTS,
    GET_CUSTOMER_WHATS_APP_TEMPLATES,
)
from tests.client.conftest import SentRequest, sandbox_requests


@pytest.mark.parametrize("value", ["..", ".", "", " ", "a\nb", "a\x00", "\ud800"])
def test_a_path_value_that_is_a_dot_segment_or_unsendable_is_refused(value: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        DELETE_ALL_GROUP_CONTACTS.expand({"Customer": value, "Group Service": "messages"})
    assert caught.value.parameter == "Customer"
    assert caught.value.location == "path"


@pytest.mark.parametrize("customer", ["categories", "Categories", " CATEGORIES"])
def test_a_customer_that_would_make_the_templates_path_the_categories_one_is_refused(
    customer: str,
) -> None:
    """/whatsapp/templates/categories is GetWhatsappTemplateCategories: its list of strings
    failed as templates (502), and named no field."""
    with pytest.raises(InvalidParameterError) as caught:
        GET_CUSTOMER_WHATS_APP_TEMPLATES.expand({"Customer-Id": customer})
    assert (caught.value.parameter, caught.value.location) == ("Customer-Id", "path")
    assert "GetWhatsappTemplateCategories" in caught.value.reason
    path = GET_CUSTOMER_WHATS_APP_TEMPLATES.expand({"Customer-Id": "categories-1"})
    assert path == "/whatsapp/templates/categories-1"


def test_ordinary_path_values_are_still_percent_encoded() -> None:
    path = DELETE_ALL_GROUP_CONTACTS.expand({"Customer": "a..b", "Group Service": "ä/+ x"})
    assert path == "/groupcontact/a..b/%C3%A4%2F%2B%20x"


def test_customer_dot_dot_never_reaches_delete_messages(
    make_client: Callable[..., SmartDialogClient],
    captured: list[SentRequest],
    sd: SandboxServer,
) -> None:
    attempts: list[int] = []
    client = make_client(before_attempt=lambda: attempts.append(1))

    with pytest.raises(InvalidParameterError):
        client.delete_all_group_contacts(customer="..", group_service="messages")

    assert attempts == []  # no quota token taken
    assert captured == []
    assert sandbox_requests(sd, "DeleteAllGroupContacts") == []


@pytest.mark.parametrize("service", ["s-1001-öneway", "s-1001\r\nX-Evil: 1", "s\x7f"])
def test_a_header_value_that_is_not_printable_ascii_is_refused_before_the_quota(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest], service: str
) -> None:
    attempts: list[int] = []
    client = make_client(before_attempt=lambda: attempts.append(1))
    message = Message(Sender="Sandbox", Content="Hi", Recipients=[Recipient(Address="+358401")])

    with pytest.raises(InvalidParameterError) as caught:
        client.send_message(message, customer_id="1001", service_id=service)

    assert (caught.value.parameter, caught.value.location) == ("Service-Id", "header")
    assert attempts == []
    assert captured == []


def test_a_non_ascii_service_type_is_refused_before_the_quota(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    attempts: list[int] = []
    client = make_client(before_attempt=lambda: attempts.append(1))

    with pytest.raises(InvalidParameterError) as caught:
        client.get_customer_services(customer_id="1001", service_type="TwoWäy")

    assert caught.value.parameter == "ServiceType"
    assert attempts == []
    assert captured == []


def test_a_body_that_cannot_be_encoded_is_refused_before_the_quota(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> None:
    attempts: list[int] = []
    client = make_client(before_attempt=lambda: attempts.append(1))
    message = Message(
        Sender="Sandbox", Content="Hi \ud800", Recipients=[Recipient(Address="+358401234567")]
    )

    with pytest.raises(InvalidParameterError) as caught:
        client.send_message(message, customer_id="1001", service_id="s-1001-oneway")

    assert caught.value.location == "body"
    assert attempts == []
    assert captured == []
