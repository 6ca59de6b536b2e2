"""The SmartDialog client: one method per operation of the published API definition."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated

import httpx
from pydantic import BeforeValidator, TypeAdapter

from ._auth import auth_from_settings
from ._base_client import BaseClient
from ._models import (
    DiscussionReply,
    DiscussionReplyResult,
    GroupContact,
    GroupContactUpdate,
    ListAnswer,
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
from ._operations import (
    CREATE_GROUP_CONTACT,
    CREATE_WHATSAPP_TEMPLATE,
    DELETE_ALL_GROUP_CONTACTS,
    DELETE_GROUP_CONTACT,
    DELETE_TRIGGER,
    GET_CUSTOMER_SERVICES,
    GET_CUSTOMER_WHATS_APP_TEMPLATES,
    GET_CUSTOMER_WHATSAPP_IDENTITIES,
    GET_GROUP_CONTACT,
    GET_PHONE_NUMBER_REGIONS,
    GET_USER_CUSTOMERS,
    GET_WHATSAPP_TEMPLATE_CATEGORIES,
    NEW_MESSAGE,
    SEND_DISCUSSION_REPLY_MESSAGE,
    SEND_MESSAGE,
    SEND_REPLY_MESSAGE,
    SEND_WHATSAPP_TEMPLATE_MESSAGE,
    UPDATE_GROUP_CONTACT,
    WHATS_APP_OPT_IN,
    WHATS_APP_OPT_OUT,
)

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["SmartDialogClient"]

_SERVICES = TypeAdapter(ListAnswer[Service])
_TEMPLATES = TypeAdapter(ListAnswer[WhatsAppTemplate])
_CATEGORIES = TypeAdapter(ListAnswer[str])
_IDENTITIES = TypeAdapter(ListAnswer[WhatsAppIdentity])
_REGIONS = TypeAdapter(ListAnswer[PhoneNumberRegion])
# A 2xx with an empty body (or null) where a boolean or an id is documented: it succeeded (a
# 502 would send the caller into a repeat that fails, the contact being gone or there already).
_BOOL = TypeAdapter(Annotated[bool, BeforeValidator(lambda v: True if v is None else v)])
# NewMessage's answer other than an object: the ids are in its Location header, if anywhere.
_ACTION = TypeAdapter(
    Annotated[PipelineAction, BeforeValidator(lambda v: v if isinstance(v, Mapping) else {})]
)
_ID = re.compile(r"[\w.:{}-]+")


def _contact_id(value: object) -> str:
    """CreateGroupContact's id in what SmartDialog answered: its text, a number's text, an
    object's ``id``/``Id``/``contactId``; no answer at all (``null``, ``""``) is ``""``. Any
    other answer (an error object, a page, a sentence) is no id: raised, it is a 502 saying the
    create probably took effect, never a success with no id."""
    if isinstance(value, Mapping):
        value = next((value[k] for k in ("id", "Id", "contactId") if value.get(k)), {})
    elif value is None or value == "":
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise ValueError(f"not a contact id: {type(value).__name__}")


_CONTACT_ID = TypeAdapter(Annotated[str, BeforeValidator(_contact_id)])


def _bool_header(value: bool) -> str:
    return "true" if value else "false"


class SmartDialogClient(BaseClient):
    """A synchronous client for the SmartDialog API (``httpx.Client`` underneath).

    Every method maps to one operation of the published definition, named after its operationId.
    Failures raise the errors of :mod:`shared.smartdialog` (``SmartDialogError`` and below).

    Each attempt, retries included, first takes a bearer token from ``auth`` (an identity provider
    that fails raises ``IdentityProviderError``: nothing sent), then calls ``before_attempt`` (the
    cluster-wide quota takes a token there; whatever it raises propagates unchanged and is not
    retried): a slow token fetch never ages a grant taken there. A caller that takes its grant
    before the call (the queue sender) calls :meth:`ready` first, for the same. Transient failures
    are retried up to ``max_retries`` times, with ``sleep`` between attempts; a 401 renews the token
    once and retries once. ``before_send`` (optional) is called at the end of each attempt, after
    the token was fetched and the request built: once right before the request is handed to httpx
    (from an httpx ``request`` event hook when the client makes its own ``httpx.Client``, otherwise
    right before ``send``), and again, when the transport reports it (httpx's own transport does,
    through httpcore's ``trace`` extension), once a connection is ready, right before the request
    headers are written: the last moment before the bytes go out, after any connection set-up or
    pool wait. The quota's gate checks there that the attempt's grant is still fresh
    (:class:`shared.quota.AttemptGate`), before the deadline is: a deadline a slow token used up
    finds the grant stale first (not an attempt of the sender's). Whatever it raises propagates
    unchanged, and no request (or no byte of it) is sent. Sends reuse one ``RequestId`` on every
    attempt, so SmartDialog drops a repeat instead of sending twice; other POSTs are retried only
    after a 429 or a failed connect, when they certainly did not take effect (a deliberate
    refinement, see :mod:`shared.smartdialog._retry`). ``Retry-After`` advice longer than
    ``MAX_RETRY_AFTER`` is not slept out: the error is raised at once with the full advice in
    ``RateLimitError.retry_after``.

    ``http_client`` (optional) is used as is and not closed by :meth:`close`; without one the
    client makes its own with ``timeout``. ``timeout`` bounds each network step on its own;
    ``deadline`` (seconds, optional) bounds an operation as a whole, its token fetch and every
    request of it included (the re-try after a renewed token, any retry): no request starts
    after it, and each network step of the client's own httpx client gets only the time left
    (:mod:`shared.deadline`). ``clock`` (Unix time) dates ``Retry-After`` HTTP dates.
    """

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
        Raises ``DuplicateRequestError`` when a 409 shows SmartDialog already accepted that
        ``RequestId`` (any other 409: ``ConflictError``).
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
        created = self._parse(op, response, _ACTION.validate_python)
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
        """CreateGroupContact: add a contact; returns its id (a UUID string; a number's text; an
        object's ``id``; ``""`` when the answer is empty).

        Not retried after a failure that may have reached SmartDialog (no ``RequestId``).
        """
        op = CREATE_GROUP_CONTACT
        response = self._request(
            op,
            path_params={"Customer": customer, "Group Service": group_service},
            body=to_wire(contact),
        )
        return self._parse(op, response, _CONTACT_ID.validate_python)

    def update_group_contact(
        self, contact: GroupContactUpdate, *, customer: str, group_service: str, phone: str
    ) -> bool:
        """UpdateGroupContact: change a contact's fields; returns SmartDialog's boolean answer
        (an empty one is True)."""
        op = UPDATE_GROUP_CONTACT
        response = self._request(
            op,
            path_params={"Customer": customer, "Group Service": group_service, "Phone": phone},
            body=to_wire(contact),
        )
        return self._parse(op, response, _BOOL.validate_python)

    def delete_group_contact(self, *, customer: str, group_service: str, phone: str) -> bool:
        """DeleteGroupContact: remove one contact; returns SmartDialog's boolean answer (an
        empty one is True)."""
        op = DELETE_GROUP_CONTACT
        response = self._request(
            op, path_params={"Customer": customer, "Group Service": group_service, "Phone": phone}
        )
        return self._parse(op, response, _BOOL.validate_python)

    def delete_all_group_contacts(self, *, customer: str, group_service: str) -> bool:
        """DeleteAllGroupContacts: empty a group service; returns SmartDialog's boolean answer
        (an empty one is True)."""
        op = DELETE_ALL_GROUP_CONTACTS
        response = self._request(
            op, path_params={"Customer": customer, "Group Service": group_service}
        )
        return self._parse(op, response, _BOOL.validate_python)
