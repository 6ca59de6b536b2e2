"""The typed SmartDialog client: the only code in the product that talks to SmartDialog.

Usage::

    from shared.smartdialog import Message, Recipient, SmartDialogClient

    with SmartDialogClient.from_settings(before_attempt=quota.take) as client:
        result = client.send_message(
            Message(Sender="Sandbox", Content="Hi", Recipients=[Recipient(Address=number)]),
            customer_id="1001",
            service_id="s-1001-oneway",
        )

:class:`SmartDialogClient` has one method per operation of SmartDialog's published definition,
named after the operationId in snake_case; bodies and results are the pydantic models below, with
the upstream's field names. Auth providers (:func:`auth_from_settings`) supply bearer tokens;
the retry policy lives in :func:`should_retry` and :func:`retry_delay`, whose backoff,
:func:`backoff_delay`, other components call with their own settings.

Retries: GET, PUT and DELETE, and sends (their ``RequestId`` is the same on every attempt), are
retried after 408, 429, 5xx and transport errors. Deliberately, a POST *without* a stable
``RequestId`` is also retried, but only after a 429 or a failure to connect, when it certainly did
not take effect; never after a timeout or a 5xx. ``Retry-After`` advice above
:data:`MAX_RETRY_AFTER` (60 s) is not waited out: the error is raised at once and
``RateLimitError.retry_after`` carries the full advice, so callers can re-schedule.

Errors (catch the meaning, not the status number)::

    SmartDialogError
     ├── CredentialsError         none configured, or the identity provider refused them
     ├── InvalidParameterError    a value that cannot be sent (``..`` segment, non-ASCII header,
     │                            control character, lone surrogate); nothing sent, no retry
     └── APIError                 a call failed: .operation_id, .method, .path (numbers masked)
          ├── APIConnectionError  no response: DNS, refused or reset connection
          │    ├── APITimeoutError        connect, read, write or pool timeout
          │    └── IdentityProviderError  no token: the identity provider failed; nothing sent
          ├── APIResponseValidationError  a 2xx body not of the documented shape, or with an error
          └── APIStatusError      4xx/5xx: .status_code, .message, .body, .headers
               ├── BadRequestError          400
               ├── AuthenticationError      401 (after one token renewal)
               ├── PermissionDeniedError    403
               ├── NotFoundError            404
               ├── ConflictError            409
               │    └── DuplicateRequestError  RequestId already used: .request_id, .original
               ├── RateLimitError           429: .retry_after (seconds or None)
               └── InternalServerError      >= 500

``.message`` is the upstream ``errorMessage`` when the body has one.

Importing this package loads neither msal nor any other heavy dependency; msal loads when an msal
provider first needs a token.
"""

from ._auth import (
    AuthProvider,
    ClientCredentialsAuth,
    MsalHttpClient,
    RefreshTokenAuth,
    StaticTokenAuth,
    auth_from_settings,
)
from ._base_client import DEFAULT_TIMEOUT
from ._client import SmartDialogClient
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    CredentialsError,
    DuplicateRequestError,
    IdentityProviderError,
    InternalServerError,
    InvalidParameterError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SmartDialogError,
    has_id_shape,
    mask_phone_number,
    mask_phone_numbers,
    mask_phone_numbers_in_id,
)
from ._models import (
    BlankIsAbsent,
    ContactProperty,
    CustomerUser,
    DiscussionReply,
    DiscussionReplyResult,
    GroupContact,
    GroupContactUpdate,
    InboundAttachment,
    InboundMessage,
    IsoDateTime,
    Message,
    MessageResult,
    NewGroupContact,
    NewMessageResult,
    NewWhatsAppTemplate,
    PersonalizationValue,
    PhoneNumberRegion,
    PipelineAction,
    Recipient,
    RecipientResult,
    Service,
    TemplateButton,
    TemplateExtensionParameters,
    TemplateMessageButton,
    TemplateMessageRecipientResult,
    TemplateMessageResult,
    TemplateRecipient,
    UserCustomers,
    WebhookAction,
    WebhookOptions,
    WhatsAppIdentity,
    WhatsAppInputSource,
    WhatsAppTemplate,
    WhatsAppTemplateMessage,
)
from ._retry import (
    DEFAULT_MAX_RETRIES,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    backoff_delay,
    parse_retry_after,
    retry_delay,
    should_retry,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthProvider",
    "AuthenticationError",
    "BadRequestError",
    "BlankIsAbsent",
    "ClientCredentialsAuth",
    "ConflictError",
    "ContactProperty",
    "CredentialsError",
    "CustomerUser",
    "DiscussionReply",
    "DiscussionReplyResult",
    "DuplicateRequestError",
    "GroupContact",
    "GroupContactUpdate",
    "IdentityProviderError",
    "InboundAttachment",
    "InboundMessage",
    "InternalServerError",
    "InvalidParameterError",
    "IsoDateTime",
    "Message",
    "MessageResult",
    "MsalHttpClient",
    "NewGroupContact",
    "NewMessageResult",
    "NewWhatsAppTemplate",
    "NotFoundError",
    "PermissionDeniedError",
    "PersonalizationValue",
    "PhoneNumberRegion",
    "PipelineAction",
    "RateLimitError",
    "Recipient",
    "RecipientResult",
    "RefreshTokenAuth",
    "Service",
    "SmartDialogClient",
    "SmartDialogError",
    "StaticTokenAuth",
    "TemplateButton",
    "TemplateExtensionParameters",
    "TemplateMessageButton",
    "TemplateMessageRecipientResult",
    "TemplateMessageResult",
    "TemplateRecipient",
    "UserCustomers",
    "WebhookAction",
    "WebhookOptions",
    "WhatsAppIdentity",
    "WhatsAppInputSource",
    "WhatsAppTemplate",
    "WhatsAppTemplateMessage",
    "auth_from_settings",
    "backoff_delay",
    "has_id_shape",
    "mask_phone_number",
    "mask_phone_numbers",
    "mask_phone_numbers_in_id",
    "parse_retry_after",
    "retry_delay",
    "should_retry",
]
