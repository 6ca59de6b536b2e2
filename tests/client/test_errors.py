"""Each failure reaches the caller as the error class that names its meaning."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from sandbox.server import SandboxServer
from shared.smartdialog import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DuplicateRequestError,
    InternalServerError,
    Message,
    MessageResult,
    NewGroupContact,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Recipient,
    SmartDialogClient,
    SmartDialogError,
    StaticTokenAuth,
    WebhookAction,
    WebhookOptions,
    mask_phone_number,
    mask_phone_numbers,
)
from tests.guard.servers import raw_server, undecodable

CUSTOMER, ONE_WAY, GROUP = "1001", "s-1001-oneway", "s-1001-group"


def sms(address: str, request_id: str | None = None) -> Message:
    return Message(
        Sender="Sandbox",
        Content="Hi",
        Recipients=[Recipient(Address=address)],
        RequestId=request_id,
    )


def answering(response: httpx.Response | Exception) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    return httpx.MockTransport(handle)


def test_rejected_recipient_is_a_bad_request_with_the_upstream_message(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    with pytest.raises(BadRequestError) as caught:
        make_client().send_message(sms("+358400000002"), customer_id=CUSTOMER, service_id=ONE_WAY)
    error = caught.value
    assert error.status_code == 400
    assert error.message == "recipient rejected: +358400000002"
    assert error.body == {"errorMessage": "recipient rejected: +358400000002"}
    assert (error.operation_id, error.method, error.path) == ("SendMessage", "POST", "/messages")
    assert "+358400000002" not in str(error)  # safe to log
    assert str(error).startswith("400 from SendMessage (POST /messages): recipient rejected: ***")


def test_contract_violation_is_a_bad_request(make_client: Callable[..., SmartDialogClient]) -> None:
    with pytest.raises(BadRequestError, match="ServiceType"):
        make_client().get_customer_services(customer_id=CUSTOMER, service_type="")


def test_refused_token_is_an_authentication_error(
    make_client: Callable[..., SmartDialogClient], sd: SandboxServer
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        make_client(auth=StaticTokenAuth("not-the-token")).get_user_customers()
    assert "not-the-token" not in repr(vars(caught.value))
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_forbidden_customer_is_permission_denied(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    with pytest.raises(PermissionDeniedError):
        make_client().get_customer_services(customer_id="forbidden", service_type="OneWay")


def test_unknown_contact_is_not_found_and_its_phone_is_masked(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    with pytest.raises(NotFoundError) as caught:
        make_client().get_group_contact(
            customer=CUSTOMER, group_service=GROUP, phone="+358409998877"
        )
    assert caught.value.path == "/groupcontact/1001/s-1001-group/***8877"
    assert "409998877" not in str(caught.value)


def test_reused_request_id_is_a_duplicate_carrying_the_first_result(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    client = make_client()
    first = client.send_message(
        sms("+358400000001", "order-1"), customer_id=CUSTOMER, service_id=ONE_WAY
    )
    with pytest.raises(DuplicateRequestError) as caught:
        client.send_message(
            sms("+358400000001", "order-1"), customer_id=CUSTOMER, service_id=ONE_WAY
        )
    error = caught.value
    assert isinstance(error, ConflictError)
    assert error.request_id == "order-1"
    assert isinstance(error.original, MessageResult)
    assert error.original.MessageId == first.MessageId


@pytest.mark.parametrize(
    "answer",
    [
        {"errorMessage": "Service s-1001-oneway is suspended"},
        {"type": "about:blank", "title": "Conflict", "status": 409},
        None,
        {"title": "Conflict", "errors": {"Recipients[1].Address": ["Duplicate recipient address"]}},
        {"errorMessage": "Service fresh-10 is suspended: ask e.g. support"},
        {"errorMessage": "Request id r-1 rejected: duplicate recipient +358400000001"},
        {"errorMessage": "Request id r-1 rejected, recipient +358400000001 is a duplicate"},
        {"errorMessage": "duplicate requests for recipient +358400000001 not allowed"},
        {"errorMessage": "Request fresh-1 refused: the sender is not allowed"},
        {"errorMessage": "request id fresh-1 for the contact already exists"},
        {"errorMessage": "Conflict: request id fresh-1 invalid contact already exists"},
        {"errorMessage": "request id fresh-1 was sent to a blocked number"},
        {"errorMessage": "Duplicate request body for contact 7"},
        {"errorMessage": "RequestId dup-1 was used"},
        {"errorMessage": "Not a duplicate request; the sender is suspended"},
        {"errorMessage": "RequestId hasn't been processed: service suspended"},
        {"errorMessage": "Request id contact already exists"},
        {"errorMessage": "The request ID field already in use by the template"},
    ],
    ids=[
        "another-conflict",
        "problem",
        "empty",
        "duplicate-recipient",
        "id-inside-a-word",
        "request-id-then-a-duplicate-recipient",
        "request-id-then-a-duplicate-recipient-after-a-comma",
        "duplicate-requests-for-a-recipient",
        "the-request-id-echoed",
        "a-contact-that-already-exists",
        "a-contact-that-already-exists-no-comma",
        "was-sent-to-a-blocked-number",
        "a-duplicate-request-body",
        "was-used-ambiguous",
        "not-a-duplicate-request",
        "a-negation-in-the-ids-place",
        "a-noun-in-the-ids-place",
        "a-field-in-use",
    ],
)
def test_a_409_to_a_first_send_saying_nothing_of_a_duplicate_is_a_plain_conflict(
    make_client: Callable[..., SmartDialogClient], answer: object
) -> None:
    """The Swagger documents no 409: one that carries no original answer and names neither a
    duplicate nor the RequestId, to a send's only try, is not evidence the message went out."""
    reply = httpx.Response(409) if answer is None else httpx.Response(409, json=answer)
    client = make_client(transport=answering(reply), max_retries=0)
    with pytest.raises(ConflictError) as caught:
        client.send_message(
            sms("+358400000001", "fresh-1"), customer_id=CUSTOMER, service_id=ONE_WAY
        )
    assert type(caught.value) is ConflictError
    assert caught.value.status_code == 409


@pytest.mark.parametrize(
    "answer",
    [
        {"errorMessage": "Duplicate request"},
        {"errorMessage": "Request id already used"},
        {"errorMessage": "Duplicate request id dup-1"},
        {"errorMessage": "The request id dup-1 has been used before"},
        {"errorMessage": "Duplicate RequestId"},
        {"errorMessage": "RequestId already exists"},
        {"errorMessage": "A request with the same RequestId was already processed"},
        {"errorMessage": "The RequestId 'dup-1' is already in use"},
    ],
)
def test_a_409_naming_a_duplicate_or_the_request_id_is_a_duplicate(
    make_client: Callable[..., SmartDialogClient], answer: dict[str, str]
) -> None:
    client = make_client(transport=answering(httpx.Response(409, json=answer)), max_retries=0)
    with pytest.raises(DuplicateRequestError) as caught:
        client.send_message(sms("+358400000001", "dup-1"), customer_id=CUSTOMER, service_id=ONE_WAY)
    assert caught.value.original is None


def test_a_bare_409_to_the_retry_of_a_try_that_may_have_arrived_is_a_duplicate(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    """A 503 may have come after SmartDialog took the message: the retry's 409, even a bare
    one, is its duplicate suppression. After a 429 (nothing done) it would not be."""
    answers = iter([httpx.Response(503), httpx.Response(409)])
    client = make_client(transport=httpx.MockTransport(lambda _: next(answers)), max_retries=1)
    with pytest.raises(DuplicateRequestError):
        client.send_message(sms("+358400000001", "r-1"), customer_id=CUSTOMER, service_id=ONE_WAY)
    answers = iter([httpx.Response(429), httpx.Response(409)])
    client = make_client(transport=httpx.MockTransport(lambda _: next(answers)), max_retries=1)
    with pytest.raises(ConflictError) as caught:
        client.send_message(sms("+358400000001", "r-2"), customer_id=CUSTOMER, service_id=ONE_WAY)
    assert type(caught.value) is ConflictError


def test_conflict_outside_a_send_is_a_plain_conflict(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    client = make_client(
        transport=answering(httpx.Response(409, json={"errorMessage": "busy"})), max_retries=0
    )
    with pytest.raises(ConflictError) as caught:
        client.delete_all_group_contacts(customer=CUSTOMER, group_service=GROUP)
    assert type(caught.value) is ConflictError
    assert caught.value.message == "busy"


def test_throttling_is_a_rate_limit_error_with_retry_after(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    with pytest.raises(RateLimitError) as caught:
        make_client(max_retries=0).send_message(
            sms("+358400000005"), customer_id=CUSTOMER, service_id=ONE_WAY
        )
    assert caught.value.retry_after == 1.0


@pytest.mark.parametrize("address", ["+358400000006", "+358400000004"])
def test_server_failures_are_internal_server_errors(
    make_client: Callable[..., SmartDialogClient], address: str
) -> None:
    with pytest.raises(InternalServerError) as caught:
        make_client(max_retries=0).send_message(
            sms(address), customer_id=CUSTOMER, service_id=ONE_WAY
        )
    assert caught.value.status_code in (500, 503)


VALIDATION_PROBLEM = {
    "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    "title": "One or more validation errors occurred.",
    "status": 400,
    "errors": {"phone": ["The phone field is not a valid phone number."]},
}


@pytest.mark.parametrize(
    ("status", "answer", "said"),
    [
        (
            400,
            VALIDATION_PROBLEM,
            "One or more validation errors occurred: phone: The phone field is not a valid "
            "phone number.",
        ),
        (409, {"title": "Contact already exists", "status": 409}, "Contact already exists"),
        (400, {"title": "Bad", "detail": "Contact already exists"}, "Contact already exists"),
        (
            400,
            {**VALIDATION_PROBLEM, "errors": {"phone": ["x" * 400]}},
            "One or more validation errors occurred.",
        ),
    ],
)
def test_an_rfc_7807_problem_says_its_detail_or_title_and_short_errors(
    make_client: Callable[..., SmartDialogClient], status: int, answer: object, said: str
) -> None:
    """An ASP.NET problem's 400 reached the caller as just "Bad Request"."""
    headers = {"Content-Type": "application/problem+json"}
    client = make_client(transport=answering(httpx.Response(status, json=answer, headers=headers)))
    with pytest.raises(APIStatusError) as caught:
        client.get_user_customers()
    assert caught.value.message == said


@pytest.mark.parametrize(
    ("page", "content_type"),
    [
        ("<html><body>" + "x" * 600 + "</body></html>", "text/plain"),
        ("<!DOCTYPE html>", "text/plain"),
        ("Service Unavailable\n\nThe gateway is down.", "text/html; charset=utf-8"),
    ],
)
def test_an_error_page_is_not_quoted_only_its_status_is_given(
    make_client: Callable[..., SmartDialogClient], page: str, content_type: str
) -> None:
    """An HTML page's first 500 characters were the detail a flow showed."""
    answer = httpx.Response(404, text=page, headers={"Content-Type": content_type})
    client = make_client(transport=answering(answer))
    with pytest.raises(APIStatusError) as caught:
        client.get_user_customers()
    assert caught.value.message == "SmartDialog answered 404 with a non-JSON page."


def test_plain_text_on_several_lines_is_smartdialogs_message_not_a_page(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    """A text refusal over 300 characters or with a newline was "a non-JSON page": the 422
    lost SmartDialog's words, and a pack lost the recipient a refusal blamed."""
    said = "recipient rejected: +358400000002\n" + "at Gateway.Validate()\n" * 30
    answer = httpx.Response(400, text=said, headers={"Content-Type": "text/plain"})
    client = make_client(transport=answering(answer))
    with pytest.raises(APIStatusError) as caught:
        client.get_user_customers()
    assert caught.value.message == said.strip()

    from shared.outbound._attempt import Refused, classify

    refused = classify(caught.value)  # how a pack finds the member to blame
    assert isinstance(refused, Refused)
    assert refused.blamed({"m": ["+358400000002"]}) == {"m"}


def test_long_plain_text_is_quoted_cut_to_a_bound(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    said = "Rejected: " + "word " * 400
    client = make_client(transport=answering(httpx.Response(400, text=said)))
    with pytest.raises(APIStatusError) as caught:
        client.get_user_customers()
    assert caught.value.message.startswith("Rejected: word word")
    assert caught.value.message == said.strip()[:1000] + "..."


def test_other_client_errors_are_plain_status_errors(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    client = make_client(transport=answering(httpx.Response(418, text="teapot")))
    with pytest.raises(APIStatusError) as caught:
        client.get_user_customers()
    assert type(caught.value) is APIStatusError
    assert (caught.value.status_code, caught.value.message, caught.value.body) == (
        418,
        "teapot",
        "teapot",
    )


def test_read_timeout_is_a_timeout_error(make_client: Callable[..., SmartDialogClient]) -> None:
    client = make_client(transport=answering(httpx.ReadTimeout("slow")), max_retries=0)
    with pytest.raises(APITimeoutError) as caught:
        client.get_user_customers()
    assert isinstance(caught.value, APIConnectionError)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_body_that_does_not_fit_is_a_validation_error(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    client = make_client(transport=answering(httpx.Response(200, json={"not": "a list"})))
    with pytest.raises(APIResponseValidationError) as caught:
        client.get_phone_number_regions()
    assert caught.value.body == {"not": "a list"}


@pytest.mark.parametrize("content", [b"", b"null"], ids=["empty", "null"])
def test_an_empty_or_null_answer_to_a_list_lookup_is_an_empty_list(
    make_client: Callable[..., SmartDialogClient], content: bytes
) -> None:
    """The definition never promises a list is there: 502 for "none" made a dropdown fail."""
    client = make_client(transport=answering(httpx.Response(200, content=content)))
    assert client.get_customer_services(customer_id=CUSTOMER, service_type="Group") == []
    assert client.get_whatsapp_template_categories() == []


def test_null_lists_inside_an_answer_read_as_empty(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    contact = {"phone": "+358401234567", "customContactProperties": None}
    client = make_client(transport=answering(httpx.Response(200, json=contact)))
    read = client.get_group_contact(customer=CUSTOMER, group_service=GROUP, phone="+358401234567")
    assert read.customContactProperties == []
    client = make_client(transport=answering(httpx.Response(200, json={"customerUsers": None})))
    assert client.get_user_customers().customerUsers == []


@pytest.mark.parametrize("status", [200, 204])
def test_an_empty_success_where_a_boolean_or_id_is_documented_is_success(
    make_client: Callable[..., SmartDialogClient], status: int
) -> None:
    """The delete happened: a 502 sent the caller into a repeat that found nothing (404)."""
    client = make_client(transport=answering(httpx.Response(status)))
    where = {"customer": CUSTOMER, "group_service": GROUP}
    assert client.delete_group_contact(**where, phone="+358401234567") is True
    assert client.delete_all_group_contacts(**where) is True
    assert client.create_group_contact(NewGroupContact(phone="+358401234567"), **where) == ""


@pytest.mark.parametrize("answer", [{"deleted": True}, "maybe", [True]])
def test_an_answer_of_the_wrong_shape_is_still_a_validation_error(
    make_client: Callable[..., SmartDialogClient], answer: object
) -> None:
    client = make_client(transport=answering(httpx.Response(200, json=answer)))
    with pytest.raises(APIResponseValidationError):
        client.delete_all_group_contacts(customer=CUSTOMER, group_service=GROUP)


@pytest.mark.parametrize("content", [b"", b"[]", b'"created"'], ids=["empty", "list", "text"])
def test_a_registration_done_but_answered_in_an_unexpected_shape_reads_the_location(
    make_client: Callable[..., SmartDialogClient], content: bytes
) -> None:
    """The webhook exists (201): a validation error became a 502 that registered a second one."""
    location = "https://x.test/v1/pipelines/p-1/actions/a-1"
    answer = httpx.Response(201, content=content, headers={"Location": location})
    client = make_client(transport=answering(answer))
    hook = WebhookAction(options=WebhookOptions(endpointUrl="https://x.test/hook"))
    created = client.new_message(hook, customer=CUSTOMER, service=ONE_WAY)
    assert (created.pipeline_id, created.action_id) == ("p-1", "a-1")


@pytest.mark.parametrize(
    ("status", "expected", "headers"),
    [
        (400, BadRequestError, {}),
        (401, AuthenticationError, {}),
        (403, PermissionDeniedError, {}),
        (404, NotFoundError, {}),
        (409, ConflictError, {}),
        (429, RateLimitError, {"Retry-After": "7"}),
        (500, InternalServerError, {}),
        (503, InternalServerError, {}),
        (503, InternalServerError, {"Retry-After": "30"}),
    ],
)
def test_each_status_reaches_a_caller_catching_smartdialog_error_as_its_class(
    make_client: Callable[..., SmartDialogClient],
    status: int,
    expected: type[APIStatusError],
    headers: dict[str, str],
) -> None:
    answer = httpx.Response(status, headers=headers, json={"errorMessage": f"said {status}"})
    client = make_client(transport=answering(answer), max_retries=0)
    try:
        client.delete_group_contact(customer=CUSTOMER, group_service=GROUP, phone="+358401234567")
    except SmartDialogError as caught:  # what a caller that only knows the base class writes
        error = caught
    else:
        pytest.fail("no error raised")
    assert type(error) is expected
    assert isinstance(error, APIStatusError)
    assert error.status_code == status
    assert error.message == f"said {status}"
    assert error.body == {"errorMessage": f"said {status}"}
    assert (error.operation_id, error.method) == ("DeleteGroupContact", "DELETE")
    assert error.path == "/groupcontact/1001/s-1001-group/***4567"
    assert error.retry_after == (float(headers["Retry-After"]) if headers else None)


def test_unreachable_server_reaches_a_caller_catching_smartdialog_error(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    client = make_client(transport=answering(httpx.ConnectError("refused")), max_retries=0)
    with pytest.raises(SmartDialogError) as caught:
        client.get_user_customers()
    assert type(caught.value) is APIConnectionError
    assert caught.value.operation_id == "GetUserCustomers"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+358401234567", "***4567"),
        ("/groupcontact/1001/s/0401234567", "/groupcontact/1001/s/***4567"),
        ("customer 1001", "customer 1001"),
        ("+358 40 123 4567", "***4567"),
        ("040-123 4567", "***4567"),  # dashes and spaces between digits
        ("call 040 1234567 now", "call ***4567 now"),
        ("1234567", "***67"),  # 7 digits: a short national number, only two kept
        ("+46 8 123 456", "***56"),
        ("123456", "123456"),  # 6 digits: not treated as a phone number
        # httpx's request log line carries the percent-encoded path
        (
            'GET http://h/x/%2B358401234567 "HTTP/1.1 200 OK"',
            'GET http://h/x/***4567 "HTTP/1.1 200 OK"',
        ),
        ("to 0401234567, 0501234568", "to ***4567, ***4568"),
        ("id 123e4567-e89b-12d3-a456-426614174000", "id 123e4567-e89b-12d3-a456-426614174000"),
        ("s-1001-group", "s-1001-group"),
        # Found by an attacker's look: dots and runs of spaces between the digits.
        ("+358.40.123.4567", "***4567"),
        ("/contacts/040.123.4567", "/contacts/***4567"),
        ("+358 40  123   4567", "***4567"),
        ("version 1.2.3, host 10.0.0.1", "version 1.2.3, host 10.0.0.1"),
        ("took 1234.5678 ms at 20:15:12.345678", "took 1234.5678 ms at 20:15:12.345678"),
        ("15.01.2024 10:30:00 from 192.168.100.200", "15.01.2024 10:30:00 from 192.168.100.200"),
        ("05.01.2024, release 2024.10.15", "05.01.2024, release 2024.10.15"),
        ("358.40.123.4567 or 06.12.34.56.78", "***4567 or ***5678"),
        # Found in a second review: numbers an IPv4 exemption let through, and versions,
        # thousands and dashed dates that were masked.
        ("358.401.234.567, 612.34.56.78", "***4567, ***78"),
        (
            "10.0.19041.1, 1.0.0.12345, 1.234.567 bytes",
            "10.0.19041.1, 1.0.0.12345, 1.234.567 bytes",
        ),
        ("[2024-01-15 10:30:00,123] 15-01-2024", "[2024-01-15 10:30:00,123] 15-01-2024"),
        ("2024-01-15 0401234567", "2024-01-15 ***4567"),
        (
            "event 12345678-f129-48c6-91ca-4dc4edfde416",
            "event 12345678-f129-48c6-91ca-4dc4edfde416",
        ),
        # Found in a third review: a number right after one of our ids, or one group of a
        # dotted run that is no number as a whole, was logged whole.
        (
            "550e8400-e29b-41d4-a716-446655440000.0401234567 or .040123 4567",
            "550e8400-e29b-41d4-a716-446655440000.***4567 or .***4567",
        ),
        ("2024.01.15.0401234567, 1.555.123.4567", "2024.01.15.***4567, ***4567"),
    ],
)
def test_mask_phone_numbers(text: str, masked: str) -> None:
    assert mask_phone_numbers(text) == masked


def test_an_id_with_our_id_in_it_stays_whole_one_with_a_dotted_number_does_not() -> None:
    """Found in review: a dash between digit groups masked a UUID's inside an event id
    (``1001:4d5fb481-4a88-***83-5796a7ae3bb5``), which a search for the id then missed."""
    from shared.smartdialog import mask_phone_numbers_in_id

    for event_id in (
        "s-1001-twoway:4d5fb481-4a88-4798-9983-5796a7ae3bb5",
        "s-1001-twoway:12345678-f129-48c6-91ca-4dc4edfde416",  # (2.8 % of UUIDs: 8 digits)
    ):
        assert mask_phone_numbers_in_id(event_id) == event_id
    assert mask_phone_numbers_in_id("358.40.123.4567") == "***4567"  # an X-Request-Id


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+358401234567", "***4567"),
        ("+358 40 123 4567", "***4567"),
        ("0401234567", "***4567"),
        ("1234567", "***67"),
        ("12345", "***"),
        ("", "***"),
    ],
)
def test_mask_phone_number_is_the_one_style_also_behind_shared_phone(
    number: str, masked: str
) -> None:
    from shared.phone import mask_phone_number as phone_alias

    assert mask_phone_number(number) == masked
    assert phone_alias(number) == masked


# A body its Content-Encoding does not decode, from a real socket (httpx decodes as it reads).


def active_connections(client: SmartDialogClient) -> int:
    """Connections of the client's pool still held by a response nobody closed."""
    pool = client._http._transport._pool  # type: ignore[attr-defined]
    return sum(1 for c in pool.connections if not (c.is_idle() or c.is_closed()))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, NotFoundError),
        (429, RateLimitError),
        (400, BadRequestError),
        (503, InternalServerError),
    ],
)
def test_an_error_whose_body_does_not_decode_keeps_its_status_and_retry_after(
    status: int, expected: type[APIStatusError]
) -> None:
    """httpx's DecodingError while reading the body became "the connection broke before its
    answer": a 404 lost, a 429's Retry-After lost, a refusal reported as maybe sent."""
    from shared.outbound._attempt import Refused, Transient, classify

    with raw_server(undecodable(status)) as server:
        client = SmartDialogClient(server.url, StaticTokenAuth("t"), max_retries=0)
        with pytest.raises(APIStatusError) as read:
            client.get_group_contact(customer=CUSTOMER, group_service=GROUP, phone="+358401234567")
        with pytest.raises(APIStatusError) as sent:
            client.send_message(sms("+358401234567"), customer_id=CUSTOMER, service_id=ONE_WAY)
        assert active_connections(client) == 0  # each streamed answer was closed
        client.close()

    for caught in (read, sent):
        assert type(caught.value) is expected
        assert caught.value.status_code == status
        assert caught.value.retry_after == 7.0
        assert caught.value.body is None  # unreadable, read as an empty body
    result = classify(sent.value)
    if status < 429:
        assert isinstance(result, Refused)  # a certain refusal, not "may have been sent"
    else:
        assert isinstance(result, Transient)
        assert result.upstream_status == status
        assert result.certainly_not_sent is (status == 429)


def test_a_success_whose_body_does_not_decode_is_read_as_an_unparseable_one() -> None:
    """The same outcome, operation by operation, as a 2xx body that is not JSON."""

    def outcome(client: SmartDialogClient, call: Callable[[SmartDialogClient], object]) -> object:
        try:
            return call(client)
        except SmartDialogError as exc:
            return type(exc)

    where = {"customer": CUSTOMER, "group_service": GROUP}
    hook = WebhookAction(options=WebhookOptions(endpointUrl="https://x.test/hook"))
    calls: list[Callable[[SmartDialogClient], object]] = [
        lambda c: c.get_group_contact(**where, phone="+358401234567"),
        lambda c: c.create_group_contact(NewGroupContact(phone="+358401234567"), **where),
        lambda c: c.delete_group_contact(**where, phone="+358401234567"),
        lambda c: c.new_message(hook, customer=CUSTOMER, service=ONE_WAY).action_id,
        lambda c: c.whats_app_opt_in(sender="+358401234567", recipient="+358401234568"),
    ]
    with (
        raw_server(undecodable(201)) as odd,
        raw_server(undecodable(201, encoding="identity")) as text,  # read as is: not JSON
    ):
        seen = []
        for url in (odd.url, text.url):
            client = SmartDialogClient(url, StaticTokenAuth("t"), max_retries=0)
            seen.append([outcome(client, call) for call in calls])
            assert active_connections(client) == 0
            client.close()

    assert seen[0][0] is APIResponseValidationError
    assert seen[0][3] == "a-1"  # the registration read from Location, as for text
    assert seen[0] == seen[1]
