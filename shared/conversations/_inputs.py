"""SendMessageAndWaitForReply's input and GetQuestionStatus's answers, as the connector shows
them (the service behind them: :mod:`shared.conversations._ask`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from shared.actions._spec import ActionInput, Body, Param
from shared.actions.fields import (
    CustomerIdHeader,
    NonEmptyStr,
    PhoneNumber,
    StatusToken,
    UpstreamId,
    service_dropdown,
    ui,
)
from shared.messages import QUESTION_ID_PATTERN
from shared.outbound import (
    IdempotencyKeyHeader,
    MessageCustomerDataField,
    ProtocolField,
    RequestIdField,
    SenderField,
    TemplateContentField,
)
from shared.smartdialog import BlankIsAbsent

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "AskBody",
    "AskInput",
    "QuestionAcceptedDoc",
    "QuestionAnswerDoc",
    "QuestionStatusInput",
]

#: The default wait for a reply (24 h) and the longest (the platform's 30-day async limit).
DEFAULT_TIMEOUT_SECONDS = 86_400
MAX_TIMEOUT_SECONDS = 2_592_000
MAX_OPTIONS = 20


class AskBody(BaseModel):
    """The question: a message to one recipient, the accepted answers and how long to wait."""

    model_config = {"extra": "forbid"}

    Sender: SenderField
    Content: TemplateContentField
    Protocol: ProtocolField
    Recipient: PhoneNumber = Field(
        description="The phone number that is asked and whose reply is awaited.",
        json_schema_extra=ui("Recipient", visibility="important"),
    )
    Options: list[Annotated[NonEmptyStr, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list,
        max_length=MAX_OPTIONS,
        description="The accepted answers, e.g. YES and NO (compared without case, accents, or "
        "spaces and punctuation at the ends), none blank. Leave empty to accept any reply.",
        json_schema_extra=ui("Accepted answers", visibility="important"),
    )
    RepromptContent: Annotated[str | None, BlankIsAbsent] = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Sent once when a reply is not an accepted answer (e.g. Reply YES or NO); "
        "leave empty for none.",
        json_schema_extra=ui("Re-prompt text"),
    )
    TimeoutSeconds: int = Field(
        DEFAULT_TIMEOUT_SECONDS,
        ge=60,
        le=MAX_TIMEOUT_SECONDS,
        description="How long to wait for a reply: 60 seconds to 30 days (default 24 hours).",
        json_schema_extra=ui("Timeout in seconds"),
    )
    ReplaceOpenQuestion: bool = Field(
        False,
        description="Replace a question to this recipient on this service that is still open (it "
        "ends as replaced); otherwise such a question makes this one answer 409.",
        json_schema_extra=ui("Replace open question", visibility="advanced"),
    )
    CustomerData: MessageCustomerDataField
    RequestId: RequestIdField


TwoWayServiceHeader = Annotated[
    UpstreamId,
    Param("header", "Service-Id"),
    Field(
        description="The 2-way SmartDialog service to send with and receive the reply on.",
        json_schema_extra=ui(
            "Service", visibility="important", dynamic_values=service_dropdown("TwoWay")
        ),
    ),
]


class AskInput(ActionInput):
    customer_id: CustomerIdHeader
    service_id: TwoWayServiceHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        AskBody,
        Body(),
        Field(
            description="The question, its accepted answers and how long to wait.",
            json_schema_extra=ui("Question", visibility="important"),
        ),
    ]


class QuestionStatusInput(ActionInput):
    question_id: Annotated[
        NonEmptyStr,
        Param("path", "QuestionId"),
        Field(
            max_length=100,
            pattern=QUESTION_ID_PATTERN,
            description="Our id of the question.",
            json_schema_extra=ui("Question Id", visibility="important"),
        ),
    ]
    token: StatusToken = None


class QuestionAcceptedDoc(BaseModel):
    """202: sent (or being sent), waiting for the reply; poll ``Location``."""

    QuestionId: str = Field(description="Our id of the question.", json_schema_extra=ui("Id"))
    MessageId: str = Field(description="Our id of the send.", json_schema_extra=ui("Message Id"))
    Status: str = Field(description="open while waiting.", json_schema_extra=ui("Status"))
    ExpiresAt: str | None = Field(
        None, description="When it times out.", json_schema_extra=ui("Expires at")
    )
    StatusUrl: str | None = Field(
        None, description="Where to poll (carries its own token).", json_schema_extra=ui("URL")
    )


class QuestionAnswerDoc(BaseModel):
    """200: the question ended: answered, timed out, opted out, replaced, or failed (a send
    re-driven since it failed)."""

    QuestionId: str = Field(description="Our id of the question.", json_schema_extra=ui("Id"))
    MessageId: str | None = Field(
        None, description="Our id of the send.", json_schema_extra=ui("Message Id")
    )
    Status: str = Field(
        description="answered, timed_out, opted_out, replaced, or failed (its send failed and was "
        "re-driven since; until then the status URL answers the send's problem).",
        json_schema_extra=ui("Status"),
    )
    Reply: str | None = Field(
        None, description="The recipient's reply, as written.", json_schema_extra=ui("Reply")
    )
    MatchedOption: str | None = Field(
        None,
        description="The accepted answer it matched, as you wrote it.",
        json_schema_extra=ui("Matched answer"),
    )
    RepliedAt: str | None = Field(
        None, description="When the reply arrived.", json_schema_extra=ui("Replied at")
    )
    TimedOut: bool = Field(
        False, description="True when no answer came in time.", json_schema_extra=ui("Timed out")
    )
    OptedOut: bool = Field(
        False,
        description="True when the recipient answered STOP.",
        json_schema_extra=ui("Opted out"),
    )
    ReplacedBy: str | None = Field(
        None, description="The question that replaced it.", json_schema_extra=ui("Replaced by")
    )
