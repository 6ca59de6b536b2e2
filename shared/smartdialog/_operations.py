"""The operations of SmartDialog's published definition: id, method, path and whether a repeat is
harmless. The client's methods and its retry policy read them; nothing here does I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from ._exceptions import InvalidParameterError

__all__ = [
    "CREATE_GROUP_CONTACT",
    "CREATE_WHATSAPP_TEMPLATE",
    "DELETE_ALL_GROUP_CONTACTS",
    "DELETE_GROUP_CONTACT",
    "DELETE_TRIGGER",
    "GET_CUSTOMER_SERVICES",
    "GET_CUSTOMER_WHATSAPP_IDENTITIES",
    "GET_CUSTOMER_WHATS_APP_TEMPLATES",
    "GET_GROUP_CONTACT",
    "GET_PHONE_NUMBER_REGIONS",
    "GET_USER_CUSTOMERS",
    "GET_WHATSAPP_TEMPLATE_CATEGORIES",
    "NEW_MESSAGE",
    "SEND_DISCUSSION_REPLY_MESSAGE",
    "SEND_MESSAGE",
    "SEND_REPLY_MESSAGE",
    "SEND_WHATSAPP_TEMPLATE_MESSAGE",
    "UPDATE_GROUP_CONTACT",
    "WHATS_APP_OPT_IN",
    "WHATS_APP_OPT_OUT",
    "Operation",
    "header_problem",
    "segment_problem",
    "text_problem",
]

#: C0 and C1 control characters and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Operation:
    """One operation of the definition; ``replayable``: repeating it is harmless."""

    operation_id: str
    method: str
    path: str
    replayable: bool
    sends: bool = False  # its body carries RequestId
    #: Values (any case) of its path parameter that would make the path another operation's,
    #: each with that operation: ``(value, operation_id)``.
    taken: tuple[tuple[str, str], ...] = ()

    def expand(self, params: Mapping[str, str]) -> str:
        """This path, each ``{name}`` replaced by its percent-encoded value (``+`` is ``%2B``).

        Raises :class:`InvalidParameterError` for a value that is empty, ``.`` or ``..``
        (percent-encoding leaves dots alone, so the URL would climb out of the operation's
        path), has control characters or is not valid Unicode, or is :attr:`taken`.
        """
        path = self.path
        for name, value in params.items():
            text = str(value)
            reason = segment_problem(text)
            for taken, other in self.taken:
                if text.strip().lower() == taken:
                    reason = f"must not be {taken}: the path would be {other}'s"
            if reason is not None:
                raise InvalidParameterError(
                    operation_id=self.operation_id, parameter=name, location="path", reason=reason
                )
            path = path.replace("{" + name + "}", quote(text, safe=""))
        return path


def segment_problem(text: str) -> str | None:
    """Why ``text`` cannot be one path segment, or None."""
    if text.strip() in ("", ".", ".."):
        return "must not be empty, . or .."
    return text_problem(text)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be sent in a path, query or body, or None."""
    if _CONTROL.search(text):
        return "must not contain control characters"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text"
    return None


def header_problem(text: str) -> str | None:
    """Why ``text`` cannot be a header value, or None (printable ASCII only)."""
    if not text.isascii():
        return "must be ASCII text"
    return text_problem(text)


def _op(
    operation_id: str,
    method: str,
    path: str,
    *,
    sends: bool = False,
    taken: tuple[str, str] | None = None,
) -> Operation:
    replayable = method != "POST" or sends
    return Operation(operation_id, method, path, replayable, sends, (taken,) if taken else ())


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
    "GetCustomerWhatsAppTemplates",
    "GET",
    "/whatsapp/templates/{Customer-Id}",
    taken=("categories", "GetWhatsappTemplateCategories"),
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
