"""The SmartDialog client: one method per operation of the published API definition."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from ._auth import AuthProvider, auth_from_settings
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    DuplicateRequestError,
    RateLimitError,
    decode_body,
    display_path,
    error_message,
    mask_phone_numbers,
    status_error_class,
)
from ._models import (
    DiscussionReply,
    DiscussionReplyResult,
    GroupContact,
    GroupContactUpdate,
    Message,
    MessageResult,
    NewGroupContact,
    NewMessageResult,
    NewWhatsAppTemplate,
    PhoneNumberRegion,
    PipelineAction,
    Service,
    TemplateMessageResult,
    UserCustomers,
    WebhookAction,
    WhatsAppIdentity,
    WhatsAppTemplate,
    WhatsAppTemplateMessage,
    to_wire,
)
from ._retry import DEFAULT_MAX_RETRIES, parse_retry_after, retry_delay, should_retry

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["DEFAULT_TIMEOUT", "SmartDialogClient"]

log = logging.getLogger("smartdialog.client")

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Connect within 5 s, then allow 30 s for each read, write and pool wait."""
USER_AGENT = "smartdialog-functions/0.1 (+httpx)"

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
SendBody = TypeVar("SendBody", Message, WhatsAppTemplateMessage)


@dataclass(frozen=True)
class _Operation:
    """One operation of the definition; ``replayable``: repeating it is harmless."""

    operation_id: str
    method: str
    path: str
    replayable: bool
    sends: bool = False  # its body carries RequestId


def _op(operation_id: str, method: str, path: str, *, sends: bool = False) -> _Operation:
    return _Operation(operation_id, method, path, replayable=method != "POST" or sends, sends=sends)


GET_USER_CUSTOMERS = _op("GetUserCustomers", "GET", "/customers")
SEND_MESSAGE = _op("SendMessage", "POST", "/messages", sends=True)
SEND_REPLY_MESSAGE = _op(
    "SendReplyMessage", "POST", "/messages/reply/{ParentMessageId}", sends=True
)
SEND_DISCUSSION_REPLY_MESSAGE = _op(
    "SendDiscussionReplyMessage", "POST", "/messages/discussion/reply"
)
NEW_MESSAGE = _op("NewMessage", "POST", "/service/{Service}/pipelines/actions")
GET_CUSTOMER_SERVICES = _op("GetCustomerServices", "GET", "/services/{Customer-Id}")
DELETE_TRIGGER = _op("DeleteTrigger", "DELETE", "/pipelines/{Pipeline-Id}/actions/{Action-Id}")
GET_CUSTOMER_WHATS_APP_TEMPLATES = _op(
    "GetCustomerWhatsAppTemplates", "GET", "/whatsapp/templates/{Customer-Id}"
)
CREATE_WHATSAPP_TEMPLATE = _op(
    "CreateWhatsappTemplate", "POST", "/whatsapp/templates/{Customer-Id}/{IdentityNumber}"
)
GET_WHATSAPP_TEMPLATE_CATEGORIES = _op(
    "GetWhatsappTemplateCategories", "GET", "/whatsapp/templates/categories"
)
SEND_WHATSAPP_TEMPLATE_MESSAGE = _op(
    "SendWhatsappTemplateMessage", "POST", "/messages/templates/whatsapp", sends=True
)
GET_CUSTOMER_WHATSAPP_IDENTITIES = _op(
    "GetCustomerWhatsappIdentities", "GET", "/whatsapp/identities/{Customer-Id}"
)
_OPT_IN_PATH = "/whatsapp/opt-in/sender/{Sender}/recipient/{Recipient}"
WHATS_APP_OPT_OUT = _op("WhatsAppOptOut", "DELETE", _OPT_IN_PATH)
WHATS_APP_OPT_IN = _op("WhatsAppOptIn", "POST", _OPT_IN_PATH)
_CONTACT_PATH = "/groupcontact/{Customer}/{Group Service}/{Phone}"
_GROUP_PATH = "/groupcontact/{Customer}/{Group Service}"
GET_GROUP_CONTACT = _op("GetGroupContact", "GET", _CONTACT_PATH)
DELETE_GROUP_CONTACT = _op("DeleteGroupContact", "DELETE", _CONTACT_PATH)
UPDATE_GROUP_CONTACT = _op("UpdateGroupContact", "PUT", _CONTACT_PATH)
DELETE_ALL_GROUP_CONTACTS = _op("DeleteAllGroupContacts", "DELETE", _GROUP_PATH)
CREATE_GROUP_CONTACT = _op("CreateGroupContact", "POST", _GROUP_PATH)
GET_PHONE_NUMBER_REGIONS = _op("GetPhoneNumberRegions", "GET", "/phonenumberregions")

_SERVICES = TypeAdapter(list[Service])
_TEMPLATES = TypeAdapter(list[WhatsAppTemplate])
_CATEGORIES = TypeAdapter(list[str])
_IDENTITIES = TypeAdapter(list[WhatsAppIdentity])
_REGIONS = TypeAdapter(list[PhoneNumberRegion])
_BOOL = TypeAdapter(bool)
_STR = TypeAdapter(str)


class _MaskPhoneNumbers(logging.Filter):
    """Masks phone numbers in httpx's own request log lines (its URLs carry them in paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = mask_phone_numbers(text)
        if masked != text:
            record.msg, record.args = masked, ()
        return True


def _mask_httpx_logs() -> None:
    """Install the masking filter on the ``httpx`` logger once per process."""
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _MaskPhoneNumbers) for f in httpx_log.filters):
        httpx_log.addFilter(_MaskPhoneNumbers())


def _expand(template: str, params: Mapping[str, str]) -> str:
    """The path with every ``{name}`` replaced by its percent-encoded value (``+`` is ``%2B``)."""
    path = template
    for name, value in params.items():
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    return path


def _bool_header(value: bool) -> str:
    return "true" if value else "false"


class SmartDialogClient:
    """A synchronous client for the SmartDialog API (``httpx.Client`` underneath).

    Every method maps to one operation of the published definition, named after its operationId.
    Failures raise the errors of :mod:`shared.smartdialog` (``SmartDialogError`` and below).

    Each attempt, retries included, first calls ``before_attempt`` (the cluster-wide quota takes a
    token there; whatever it raises propagates unchanged and is not retried), then takes a bearer
    token from ``auth``. Transient failures are retried up to ``max_retries`` times, with
    ``sleep`` between attempts; a 401 renews the token once and retries once. ``before_send``
    (optional) is called at the end of each attempt, after the token was fetched and the request
    built: once right before the request is handed to httpx (from an httpx ``request`` event hook
    when the client makes its own ``httpx.Client``, otherwise right before ``send``), and again,
    when the transport reports it (httpx's own transport does, through httpcore's ``trace``
    extension), once a connection is ready, right before the request headers are written: the
    last moment before the bytes go out, after any connection set-up or pool wait. The sender
    checks there that its quota grant is still fresh. Whatever it raises propagates unchanged,
    and no request (or no byte of it) is sent. Sends reuse one
    ``RequestId`` on every attempt, so SmartDialog drops a repeat instead of sending twice; other
    POSTs are retried only after a 429 or a failed connect, when they certainly did not take
    effect (a deliberate refinement, see :mod:`shared.smartdialog._retry`). ``Retry-After``
    advice longer than ``MAX_RETRY_AFTER`` is not slept out: the error is raised at once with
    the full advice in ``RateLimitError.retry_after``.

    ``http_client`` (optional) is used as is and not closed by :meth:`close`; without one the
    client makes its own with ``timeout``. ``clock`` (Unix time) dates ``Retry-After`` HTTP dates.
    """

    def __init__(
        self,
        base_url: str,
        auth: AuthProvider,
        *,
        before_attempt: Callable[[], None] | None = None,
        before_send: Callable[[], None] | None = None,
        http_client: httpx.Client | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.max_retries = max_retries
        self._before_attempt = before_attempt
        self._before_send = before_send
        self._sleep = sleep
        self._clock = clock
        _mask_httpx_logs()
        self._owns_http = http_client is None
        # Our own httpx client calls ``before_send`` from its request hook (after httpx's own
        # preparation, right before the transport); an injected one is left untouched and
        # ``before_send`` is called right before ``send`` instead.
        self._hooked = http_client is None and before_send is not None
        self._http = (
            http_client
            if http_client is not None
            else httpx.Client(
                timeout=timeout,
                event_hooks={"request": [self._request_hook]} if self._hooked else None,
            )
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        before_attempt: Callable[[], None] | None = None,
        http_client: httpx.Client | None = None,
    ) -> SmartDialogClient:
        """A client for ``settings`` (default: :func:`shared.settings.get_settings`).

        The base URL is ``SMARTDIALOG_BASE_URL``; the token comes from
        :func:`auth_from_settings`. Raises ``CredentialsError`` when no credentials are set.
        """
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        auth = auth_from_settings(settings)
        return cls(settings.base_url, auth, before_attempt=before_attempt, http_client=http_client)

    def _request_hook(self, request: httpx.Request) -> None:
        if self._before_send is not None:
            self._before_send()

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace callback: ``before_send`` right before the headers are written."""
        if event.endswith(".send_request_headers.started") and self._before_send is not None:
            self._before_send()

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections this client opened (and those of its msal provider)."""
        if self._owns_http:
            self._http.close()
        close_auth = getattr(self.auth, "close", None)
        if callable(close_auth):
            close_auth()

    def __enter__(self) -> SmartDialogClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- customers and services ----------------------------------------------------------------

    def get_user_customers(self) -> UserCustomers:
        """GetUserCustomers: the customers the caller may act for."""
        response = self._request(GET_USER_CUSTOMERS)
        return self._parse(GET_USER_CUSTOMERS, response, UserCustomers.model_validate)

    def get_customer_services(
        self,
        *,
        customer_id: str,
        service_type: str,
        allow_reply_message: bool | None = None,
    ) -> list[Service]:
        """GetCustomerServices: a customer's services of ``service_type`` (e.g. ``TwoWay``)."""
        headers = {"ServiceType": service_type}
        if allow_reply_message is not None:
            headers["AllowReplyMessage"] = _bool_header(allow_reply_message)
        op = GET_CUSTOMER_SERVICES
        response = self._request(op, path_params={"Customer-Id": customer_id}, headers=headers)
        return self._parse(op, response, _SERVICES.validate_python)

    def get_phone_number_regions(self) -> list[PhoneNumberRegion]:
        """GetPhoneNumberRegions: regions usable for parsing group-contact phone numbers."""
        response = self._request(GET_PHONE_NUMBER_REGIONS)
        return self._parse(GET_PHONE_NUMBER_REGIONS, response, _REGIONS.validate_python)

    # --- messages --------------------------------------------------------------------------------

    def send_message(self, message: Message, *, customer_id: str, service_id: str) -> MessageResult:
        """SendMessage: send an SMS (or WhatsApp) message to one or more recipients.

        Without ``message.RequestId`` one is generated for this call and reused on every retry.
        Raises ``DuplicateRequestError`` when SmartDialog already accepted that ``RequestId``.
        """
        headers = {"Customer-Id": customer_id, "Service-Id": service_id}
        return self._send(SEND_MESSAGE, message, MessageResult, headers=headers)

    def send_reply_message(
        self, message: Message, *, parent_message_id: str, customer_id: str, service_id: str
    ) -> MessageResult:
        """SendReplyMessage: reply to ``parent_message_id`` (otherwise as :meth:`send_message`)."""
        headers = {"Customer-Id": customer_id, "Service-Id": service_id}
        return self._send(
            SEND_REPLY_MESSAGE,
            message,
            MessageResult,
            headers=headers,
            path_params={"ParentMessageId": parent_message_id},
        )

    def send_discussion_reply_message(
        self, reply: DiscussionReply, *, customer_id: str
    ) -> DiscussionReplyResult:
        """SendDiscussionReplyMessage: reply into an existing discussion thread.

        The body has no ``RequestId``, so a failure after the request may have been received (a
        timeout, a 5xx) is raised, not retried: the reply may or may not have gone out.
        """
        op = SEND_DISCUSSION_REPLY_MESSAGE
        response = self._request(op, headers={"CustomerId": customer_id}, body=to_wire(reply))
        return self._parse(op, response, DiscussionReplyResult.model_validate)

    def send_whatsapp_template_message(
        self, message: WhatsAppTemplateMessage, *, customer_id: str, service_id: str
    ) -> TemplateMessageResult:
        """SendWhatsappTemplateMessage: send a WhatsApp template (``RequestId`` as in sends)."""
        headers = {"Customer-Id": customer_id, "Service-Id": service_id}
        return self._send(
            SEND_WHATSAPP_TEMPLATE_MESSAGE, message, TemplateMessageResult, headers=headers
        )

    # --- the New Message trigger ----------------------------------------------------------------

    def new_message(
        self, action: WebhookAction, *, customer: str, service: str
    ) -> NewMessageResult:
        """NewMessage: register a webhook that receives the service's inbound messages.

        Returns the created action with the ``Location`` header; its ``pipeline_id`` and
        ``action_id`` are what :meth:`delete_trigger` needs.
        """
        op = NEW_MESSAGE
        response = self._request(
            op,
            path_params={"Service": service},
            headers={"Customer": customer},
            body=to_wire(action),
        )
        created = self._parse(op, response, PipelineAction.model_validate)
        return NewMessageResult(action=created, location=response.headers.get("Location"))

    def delete_trigger(self, *, pipeline_id: str, action_id: str) -> None:
        """DeleteTrigger: remove a webhook registered by :meth:`new_message`."""
        self._request(
            DELETE_TRIGGER, path_params={"Pipeline-Id": pipeline_id, "Action-Id": action_id}
        )

    # --- WhatsApp --------------------------------------------------------------------------------

    def get_customer_whats_app_templates(
        self, *, customer_id: str, template_id: str | None = None
    ) -> list[WhatsAppTemplate]:
        """GetCustomerWhatsAppTemplates: a customer's templates (or only ``template_id``)."""
        op = GET_CUSTOMER_WHATS_APP_TEMPLATES
        query = {"TemplateId": template_id} if template_id is not None else None
        response = self._request(op, path_params={"Customer-Id": customer_id}, query=query)
        return self._parse(op, response, _TEMPLATES.validate_python)

    def create_whatsapp_template(
        self, template: NewWhatsAppTemplate, *, customer_id: str, identity_number: str
    ) -> None:
        """CreateWhatsappTemplate: submit a template for the sender ``identity_number``.

        Not retried after a failure that may have reached SmartDialog (no ``RequestId``).
        """
        self._request(
            CREATE_WHATSAPP_TEMPLATE,
            path_params={"Customer-Id": customer_id, "IdentityNumber": identity_number},
            body=to_wire(template),
        )

    def get_whatsapp_template_categories(self) -> list[str]:
        """GetWhatsappTemplateCategories: the category names a template may have."""
        op = GET_WHATSAPP_TEMPLATE_CATEGORIES
        return self._parse(op, self._request(op), _CATEGORIES.validate_python)

    def get_customer_whatsapp_identities(self, *, customer_id: str) -> list[WhatsAppIdentity]:
        """GetCustomerWhatsappIdentities: the WhatsApp sender numbers of a customer."""
        op = GET_CUSTOMER_WHATSAPP_IDENTITIES
        response = self._request(op, path_params={"Customer-Id": customer_id})
        return self._parse(op, response, _IDENTITIES.validate_python)

    def whats_app_opt_in(self, *, sender: str, recipient: str) -> None:
        """WhatsAppOptIn: record that ``recipient`` agreed to WhatsApp messages from ``sender``."""
        self._request(WHATS_APP_OPT_IN, path_params={"Sender": sender, "Recipient": recipient})

    def whats_app_opt_out(self, *, sender: str, recipient: str) -> None:
        """WhatsAppOptOut: withdraw ``recipient``'s opt-in for ``sender``."""
        self._request(WHATS_APP_OPT_OUT, path_params={"Sender": sender, "Recipient": recipient})

    # --- group contacts --------------------------------------------------------------------------

    def get_group_contact(
        self, *, customer: str, group_service: str, phone: str, region: str | None = None
    ) -> GroupContact:
        """GetGroupContact: one contact of a group service (``region`` helps parse ``phone``)."""
        op = GET_GROUP_CONTACT
        response = self._request(
            op,
            path_params={"Customer": customer, "Group Service": group_service, "Phone": phone},
            query={"Region": region} if region is not None else None,
        )
        return self._parse(op, response, GroupContact.model_validate)

    def create_group_contact(
        self, contact: NewGroupContact, *, customer: str, group_service: str
    ) -> str:
        """CreateGroupContact: add a contact; returns its id (a UUID string).

        Not retried after a failure that may have reached SmartDialog (no ``RequestId``).
        """
        op = CREATE_GROUP_CONTACT
        response = self._request(
            op,
            path_params={"Customer": customer, "Group Service": group_service},
            body=to_wire(contact),
        )
        return self._parse(op, response, _STR.validate_python)

    def update_group_contact(
        self, contact: GroupContactUpdate, *, customer: str, group_service: str, phone: str
    ) -> bool:
        """UpdateGroupContact: change a contact's fields; returns SmartDialog's boolean answer."""
        op = UPDATE_GROUP_CONTACT
        response = self._request(
            op,
            path_params={"Customer": customer, "Group Service": group_service, "Phone": phone},
            body=to_wire(contact),
        )
        return self._parse(op, response, _BOOL.validate_python)

    def delete_group_contact(self, *, customer: str, group_service: str, phone: str) -> bool:
        """DeleteGroupContact: remove one contact; returns SmartDialog's boolean answer."""
        op = DELETE_GROUP_CONTACT
        response = self._request(
            op, path_params={"Customer": customer, "Group Service": group_service, "Phone": phone}
        )
        return self._parse(op, response, _BOOL.validate_python)

    def delete_all_group_contacts(self, *, customer: str, group_service: str) -> bool:
        """DeleteAllGroupContacts: empty a group service; returns SmartDialog's boolean answer."""
        op = DELETE_ALL_GROUP_CONTACTS
        response = self._request(
            op, path_params={"Customer": customer, "Group Service": group_service}
        )
        return self._parse(op, response, _BOOL.validate_python)

    # --- machinery -------------------------------------------------------------------------------

    def _send(
        self,
        op: _Operation,
        message: SendBody,
        result: type[R],
        *,
        headers: Mapping[str, str],
        path_params: Mapping[str, str] | None = None,
    ) -> R:
        if message.RequestId is None:
            # One id per logical call, reused by every retry below.
            message = message.model_copy(update={"RequestId": str(uuid.uuid4())})
        response = self._request(
            op,
            path_params=path_params,
            headers=headers,
            body=to_wire(message),
            request_id=message.RequestId,
            original=result,
        )
        return self._parse(op, response, result.model_validate)

    def _request(
        self,
        op: _Operation,
        *,
        path_params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        original: type[BaseModel] | None = None,
    ) -> httpx.Response:
        """Send ``op`` with quota hook, auth, retries and error mapping; the successful response."""
        path = _expand(op.path, path_params or {})
        url = self.base_url + path
        content = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        base_headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if content is not None:
            base_headers["Content-Type"] = "application/json"
        base_headers.update(headers or {})
        where = {
            "operation_id": op.operation_id,
            "method": op.method,
            "path": display_path(path),
            "request_id": request_id,
        }
        retries_taken = 0
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if self._before_attempt is not None:
                self._before_attempt()
            request = self._http.build_request(
                op.method,
                url,
                params=query,
                content=content,
                headers={**base_headers, "Authorization": f"Bearer {self.auth.token()}"},
                extensions={"trace": self._trace} if self._before_send is not None else None,
            )
            if self._before_send is not None and not self._hooked:
                self._before_send()
            started = time.perf_counter()
            try:
                response = self._http.send(request)
            except httpx.HTTPError as exc:
                elapsed_ms = round((time.perf_counter() - started) * 1000)
                retry = retries_taken < self.max_retries and should_retry(
                    exc, replayable=op.replayable
                )
                delay = retry_delay(retries_taken, now=self._clock) if retry else None
                log.warning(
                    "SmartDialog %s attempt %d failed after %d ms: %s%s",
                    op.operation_id,
                    attempt,
                    elapsed_ms,
                    type(exc).__name__,
                    f"; retrying in {delay:.2f} s" if delay is not None else "",
                    extra={**where, "attempt": attempt, "elapsed_ms": elapsed_ms,
                           "error": type(exc).__name__, "retry_in": delay},
                )  # fmt: skip
                if delay is None:
                    raise self._connection_error(op, path, exc) from exc
                self._sleep(delay)
                retries_taken += 1
                continue

            elapsed_ms = round((time.perf_counter() - started) * 1000)
            status = response.status_code
            if response.is_success:
                log.info(
                    "SmartDialog %s -> %d in %d ms (attempt %d)",
                    op.operation_id,
                    status,
                    elapsed_ms,
                    attempt,
                    extra={**where, "status": status, "attempt": attempt, "elapsed_ms": elapsed_ms},
                )
                return response
            if status == 401 and not refreshed:
                # One renewal and one more attempt, outside the retry budget.
                refreshed = True
                delay = 0.0
                self.auth.invalidate()
            elif retries_taken < self.max_retries and should_retry(
                response, replayable=op.replayable
            ):
                # None: the advised wait is longer than we sleep out; the error carries it.
                delay = retry_delay(retries_taken, response.headers, now=self._clock)
                retries_taken += 1
            else:
                delay = None
            log.warning(
                "SmartDialog %s -> %d in %d ms (attempt %d)%s",
                op.operation_id,
                status,
                elapsed_ms,
                attempt,
                f"; retrying in {delay:.2f} s" if delay is not None else "",
                extra={**where, "status": status, "attempt": attempt, "elapsed_ms": elapsed_ms,
                       "retry_in": delay},
            )  # fmt: skip
            if delay is None:
                raise self._status_error(op, path, response, request_id, original)
            if delay > 0:
                self._sleep(delay)

    def _parse(self, op: _Operation, response: httpx.Response, parse: Callable[[Any], T]) -> T:
        body = decode_body(response)
        try:
            return parse(body)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"the {response.status_code} body does not fit {op.operation_id}'s response: "
                f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}",
                operation_id=op.operation_id,
                method=op.method,
                path=response.request.url.path,
                body=body,
            ) from None

    def _connection_error(
        self, op: _Operation, path: str, exc: httpx.HTTPError
    ) -> APIConnectionError:
        where = {"operation_id": op.operation_id, "method": op.method, "path": path}
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"request timed out ({type(exc).__name__})", **where)
        return APIConnectionError(f"connection error: {type(exc).__name__}: {exc}", **where)

    def _status_error(
        self,
        op: _Operation,
        path: str,
        response: httpx.Response,
        request_id: str | None,
        original: type[BaseModel] | None,
    ) -> APIStatusError:
        body = decode_body(response)
        status = response.status_code
        common: dict[str, Any] = {
            "status_code": status,
            "body": body,
            "headers": response.headers,
            "operation_id": op.operation_id,
            "method": op.method,
            "path": path,
        }
        message = error_message(response, body)
        if status == 429:
            retry_after = parse_retry_after(response.headers, now=self._clock)
            return RateLimitError(message, retry_after=retry_after, **common)
        if status == 409 and request_id is not None:
            return DuplicateRequestError(
                message,
                request_id=request_id,
                original=_original_result(body, original),
                **common,
            )
        return status_error_class(status)(message, **common)


def _original_result(body: object, model: type[BaseModel] | None) -> BaseModel | None:
    """The first send's result carried by a duplicate-RequestId 409 body, if it parses."""
    if model is None or not isinstance(body, Mapping):
        return None
    fields = {k: v for k, v in body.items() if k not in ("errorMessage", "ErrorMessage")}
    if not fields:
        return None
    try:
        return model.model_validate(fields)
    except ValidationError:
        return None
