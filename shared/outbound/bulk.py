"""SendBulkMessages and GetBulkStatus: one template to up to 10,000 recipients, as JSON
(``Recipients``) or CSV text (``RecipientsCsv``). See docs/sending.md, "Bulk sends"."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, model_validator

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
)
from shared.actions.fields import CustomerIdHeader, StatusToken, labelled
from shared.outbound._bulk import MAX_BULK_RECIPIENTS, BulkRecipient
from shared.outbound._bulk_members import MAX_ROW
from shared.outbound._fields import (
    MAX_CONTENT_CHARS,
    AdMessageField,
    AttachmentUriField,
    DlrUrlField,
    IdempotencyKeyHeader,
    MessageCustomerDataField,
    PersonalizationField,
    ProtocolField,
    SendDateTimeField,
    SenderField,
    ServiceIdHeader,
    StrictBody,
    TemplateContentField,
    TransactionalField,
    filled_too_long,
)
from shared.problems import FieldError, Problem, validation_problem
from shared.sms import PLACEHOLDER

if TYPE_CHECKING:
    from shared.outbound._bulk import BulkService
    from shared.settings import Settings

__all__ = ["SPECS"]

TAG = "Messages"
#: Most characters of RecipientsCsv, JSON or a raw text/csv body (whose limit, 5 MiB, is higher).
MAX_CSV_CHARS = 4_000_000


class BulkRecipientIn(StrictBody):
    # A plain string: numbers are checked row by row, so one bad row does not refuse the rest.
    Address: str = labelled("Address", "The recipient's phone number.", ..., max_length=64)
    Personalization: PersonalizationField


class BulkBody(StrictBody):
    """The template and its recipients."""

    Sender: SenderField
    Content: TemplateContentField
    Protocol: ProtocolField
    SendDateTime: SendDateTimeField = None
    AttachmentUri: AttachmentUriField
    CustomerData: MessageCustomerDataField
    AdMessage: AdMessageField
    DlrUrl: DlrUrlField = None
    Transactional: TransactionalField = False
    Recipients: list[BulkRecipientIn] | None = labelled(
        "Recipients",
        "Who gets it (or give RecipientsCsv).",
        visibility="important",
        max_length=MAX_BULK_RECIPIENTS,
    )
    RecipientsCsv: str | None = labelled(
        "Recipients (CSV)",
        "The recipients as CSV text (instead of Recipients): a header row with Address and one "
        f"column per placeholder, then one row per recipient; at most {MAX_CSV_CHARS:,} "
        "characters.",
        visibility="advanced",
        max_length=MAX_CSV_CHARS,
    )
    AllOrNothing: bool = labelled(
        "All or nothing",
        "Yes: send nothing if any recipient is refused. No: send to the valid ones.",
        False,
        visibility="advanced",
    )

    @model_validator(mode="after")
    def _one_recipient_list(self) -> BulkBody:
        if (self.Recipients is None) == (self.RecipientsCsv is None):
            raise ValueError("Give either Recipients or RecipientsCsv.")
        return self


class SendBulkInput(ActionInput):
    customer_id: CustomerIdHeader
    service_id: ServiceIdHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        BulkBody,
        Body(raw={"text/csv": "RecipientsCsv"}),
        labelled(
            "Bulk message", "The message template and its recipients.", ..., visibility="important"
        ),
    ]


class BulkStatusInput(ActionInput):
    batch_id: Annotated[
        str,
        Param("path", "BatchId"),
        labelled(
            "Batch Id",
            "The Id from the bulk send's answer.",
            ...,
            visibility="important",
            pattern="^[0-9a-f-]{36}$",
        ),
    ]
    token: StatusToken = None
    details: Annotated[
        bool,
        Param("query", "details"),
        labelled(
            "Details",
            "Yes: list every recipient with its state and SmartDialog's ids.",
            False,
            visibility="advanced",
        ),
    ] = False


class BulkCountsDoc(BaseModel):
    accepted: int = labelled("accepted", "Recorded, not yet queued.", 0)
    queued: int = labelled("queued", "Waiting for the sender.", 0)
    sending: int = labelled("sending", "Being sent.", 0)
    sent: int = labelled("sent", "Accepted by SmartDialog.", 0)
    failed: int = labelled("failed", "Failed for good.", 0)
    cancelled: int = labelled("cancelled", "Cancelled.", 0)


class BulkDeliveryCountsDoc(BaseModel):
    pending: int = labelled("pending", "Not sent yet.", 0)
    sent: int = labelled("sent", "Sent; no delivery report yet.", 0)
    delivered: int = labelled("delivered", "Delivered.", 0)
    undelivered: int = labelled("undelivered", "Reported undelivered.", 0)
    failed: int = labelled("failed", "Failed for good.", 0)
    cancelled: int = labelled("cancelled", "Cancelled.", 0)


class BulkMemberDoc(BaseModel):
    Row: int = labelled("Row", "The recipient's row.", ...)
    Id: str = labelled("Id", "Our message id of this recipient.", ...)
    Address: str | None = labelled("Address", "The phone number.")
    Status: str = labelled(
        "Status",
        "Its message's state, as Counts tells it (queued once its batch's packs are all on the "
        "queue, where the member's own status says accepted).",
        ...,
    )
    Delivery: str = labelled(
        "Delivery",
        "Its delivery state: pending, sent, delivered, undelivered (delivery reports), failed or "
        "cancelled.",
        ...,
    )
    MessageId: str | None = labelled("MessageId", "SmartDialog's MessageId.")
    RecipientId: str | None = labelled("RecipientId", "SmartDialog's recipient id (DLRs).")
    Error: str | None = labelled("Error", "Why it failed.")


class BulkRefusedDoc(BaseModel):
    row: int = labelled("row", "The refused row.", ...)
    field: str = labelled("field", "The offending field.", ...)
    message: str = labelled("message", "What is wrong.", ...)


class BulkStatusDoc(BaseModel):
    """A batch: counts per state, refused rows and (with details) every recipient."""

    Id: str = labelled("Batch Id", "The batch id.", ...)
    Status: str = labelled(
        "Status",
        "pending, done, or incomplete (its request stopped before every recipient was recorded: "
        "nothing of it is sent; the same request with the same Idempotency-Key finishes it).",
        ...,
    )
    Total: int = labelled("Total", "Recipients given.", ...)
    Accepted: int = labelled("Accepted", "Recipients accepted.", ...)
    RefusedCount: int = labelled("Refused", "Rows refused.", ...)
    Counts: BulkCountsDoc = labelled("Counts", "Accepted recipients per state.", ...)
    DeliveryCounts: BulkDeliveryCountsDoc = labelled(
        "Delivery counts", "Accepted recipients per delivery state.", ...
    )
    StatusUrl: str = labelled(
        "StatusUrl",
        "The batch status URL (carries its own token: renewed while pending; once the batch is "
        "finished, the URL it was polled with).",
        ...,
    )
    Refused: list[BulkRefusedDoc] | None = labelled(
        "Refused",
        "Refused rows: the first that fit 30,000 characters (by reason about 150 to 440 rows, "
        "e.g. 200 invalid numbers); RefusedCount counts them all.",
    )
    Recipients: list[BulkMemberDoc] | None = labelled(
        "Recipients",
        "Each recipient's state and ids: only with details=true (StatusUrl with &details=true); "
        "the Location a flow step follows has none.",
    )
    Detail: str | None = labelled("Detail", "Why a batch is incomplete.")


@lru_cache(maxsize=4)
def _service(settings: Settings) -> BulkService:
    from shared.outbound._bulk import BulkService

    return BulkService(settings)


#: Delimiters of spreadsheets' CSV exports: ',', ';' (Excel with a decimal comma), tab.
CSV_DELIMITERS = ",;\t"


def csv_delimiter(text: str) -> str:
    """The delimiter of ``text``: the one of :data:`CSV_DELIMITERS` found most often in its
    header row (its first line as the reader sees it: ended by \\r\\n, \\r or \\n) outside
    quotes (',' if none is)."""
    header = next(io.StringIO(text, newline=""), "")
    outside, quoted = [], False
    for char in header:
        if char == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(char)
    counts = {d: outside.count(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _placeholders_have_columns(content: str, columns: list[str]) -> None:
    """400 listing the placeholders of ``content`` that none of the value ``columns`` fills
    (their names must match exactly), each with the column that differs only in case."""
    have = set(columns)  # a header may hold millions of columns: a list scan was quadratic
    missing = [name for name in dict.fromkeys(PLACEHOLDER.findall(content)) if name not in have]
    if not missing:
        return
    like = {column.casefold(): column for column in columns}
    named = ", ".join(
        f"$({name})" + (f" ({like[name.casefold()]}?)" if name.casefold() in like else "")
        for name in missing
    )
    raise _csv(f"No column for {named} of Content: a placeholder is filled from the column of "
               "exactly its name, other than Address.")  # fmt: skip


def _csv_recipients(text: str, content: str = "") -> list[BulkRecipient]:
    """The recipients of CSV ``text``, each with its CSV line (a quoted field may span lines).
    A quote never closed is refused: the reader would take the rest of the file as its field;
    so is a placeholder of ``content`` no column fills. A row with more cells than the header
    (empty ones past it aside) is refused as read: its cells would fill the wrong columns."""
    text = text.lstrip("\ufeff")
    ended: list[bool] = []  # the reader asked for a line past the last one

    def lines() -> Iterator[str]:
        # Every line ends in a line break: a row ending with the text, not a break, is in quotes.
        whole = text + "\n" if text and not text.endswith(("\n", "\r")) else text
        yield from io.StringIO(whole, newline="")
        ended.append(True)

    def unclosed(line: int) -> Problem:
        return _csv(f"Line {line}: a quoted field is never closed.")

    reader = csv.reader(lines(), delimiter=csv_delimiter(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise _csv("The CSV is empty.") from None
    except csv.Error as exc:
        raise _csv(f"Line 1: {exc}.") from None
    if ended:
        raise unclosed(1)
    lowered = [h.lower() for h in header]
    if "address" not in lowered:
        raise _csv("The header row needs an Address column.")
    at = lowered.index("address")
    named = Counter(["Address" if h.lower() == "address" else h for h in header if h])
    if twice := [h for h, n in named.items() if n > 1]:  # a later one would hide the first
        raise _csv(f"The header row names {', '.join(twice)} more than once.")
    width = len(header)  # an unnamed column (Excel's "Address;Name;") is a column too
    out: list[BulkRecipient] = []
    line = reader.line_num + 1
    blank = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _csv(f"Line {line}: {exc}.") from None
        start, line = line, reader.line_num + 1
        if ended:
            raise unclosed(start)
        if not any(cell.strip() for cell in row):
            blank += 1
            if blank > MAX_BULK_RECIPIENTS:  # reading stops here too: blank rows cost as much
                raise _csv(f"More than {MAX_BULK_RECIPIENTS} blank rows.")
            continue
        if len(out) == MAX_BULK_RECIPIENTS:  # one row too many: stop reading here
            raise _csv(f"At most {MAX_BULK_RECIPIENTS} recipients.")
        if start > MAX_ROW:
            raise _csv(f"Line {start}: a recipient must start on a line up to {MAX_ROW:,} (line "
                       "breaks in quotes count).")  # fmt: skip
        values = {
            header[i]: row[i] for i in range(min(len(header), len(row))) if i != at and header[i]
        }
        cells = max(i + 1 for i, cell in enumerate(row) if cell.strip())
        refusal: tuple[str, ...] = ()
        if cells > width:  # a delimiter in an unquoted value shifts every later cell
            refusal = ("RecipientsCsv", f"{cells} cells, the header has {width} (a delimiter "
                       "in an unquoted value?).")  # fmt: skip
        address = row[at].strip() if at < len(row) else ""
        out.append(BulkRecipient(start, address, values or None, refusal))
    if not out:
        raise _csv("The CSV has no recipient rows.")
    _placeholders_have_columns(content, [h for i, h in enumerate(header) if i != at and h])
    return out


def _csv(message: str) -> Problem:
    """400: the RecipientsCsv is refused for ``message``."""
    return validation_problem([FieldError("RecipientsCsv", message)])


def _fits_filled_in(content: str, recipients: list[BulkRecipient], *, csv: bool) -> None:
    """400 naming each recipient whose values (a CSV's: each at most MAX_CONTENT_CHARS too)
    make Content too long once filled in: the JSON's Recipients[i], or the CSV's line."""
    errors = [
        FieldError("RecipientsCsv", f"Line {r.row}, column {name}: at most "
                   f"{MAX_CONTENT_CHARS:,} characters.")
        for r in recipients if csv
        for name, value in (r.personalization or {}).items() if len(value) > MAX_CONTENT_CHARS
    ]  # fmt: skip
    for index, why in filled_too_long(content, (r.personalization for r in recipients)):
        at = recipients[index].row
        if csv:
            errors.append(FieldError("RecipientsCsv", f"Line {at}: {why}"))
        else:
            errors.append(FieldError(f"Recipients[{at - 1}].Personalization", why))
    if errors:
        raise validation_problem(errors)


def send_bulk(ctx: ActionContext, inp: SendBulkInput) -> ActionResponse:
    body = inp.body
    if body.Recipients is not None:
        recipients = [
            BulkRecipient(i, r.Address, r.Personalization)
            for i, r in enumerate(body.Recipients, start=1)
        ]
    else:
        recipients = _csv_recipients(body.RecipientsCsv or "", body.Content)
    _fits_filled_in(body.Content, recipients, csv=body.Recipients is None)
    template: dict[str, Any] = body.model_dump(
        mode="json",
        exclude_none=True,
        exclude={"Recipients", "RecipientsCsv", "AllOrNothing", "Transactional"},
    )
    status, doc, headers = _service(ctx.settings).submit(
        template,
        recipients,
        customer_id=inp.customer_id,
        service_id=inp.service_id,
        transactional=body.Transactional,
        all_or_nothing=body.AllOrNothing,
        idempotency_key=inp.idempotency_key,
    )
    return ActionResponse.json(doc, status=status, headers=headers)


def get_bulk_status(ctx: ActionContext, inp: BulkStatusInput) -> ActionResponse:
    status, doc, headers = _service(ctx.settings).status(
        inp.batch_id, details=inp.details, token=inp.token
    )
    return ActionResponse.json(doc, status=status, headers=headers)


#: The headers of a pending batch's answer.
_POLL_HEADERS = {
    "Location": "The batch status URL (carries its own token).",
    "Retry-After": "Seconds to wait before polling.",
}

SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="SendBulkMessages",
        method="POST",
        route="messages/bulk",
        input=SendBulkInput,
        handler=send_bulk,
        summary="Send a bulk message",
        description=(
            "Queues one message template to up to 10,000 recipients (JSON list or CSV text), "
            "each with its own personalization, and answers 202 with a batch status URL. "
            "Refused rows are listed by row number; the rest are sent unless AllOrNothing. "
            "Recipients are packed into as few SmartDialog calls as the quota needs."
        ),
        responses=(
            # What the flow step outputs: Location's final answer (its dynamic content: the 200).
            ResponseDoc(
                200, "Every recipient final (the final answer of Location).", BulkStatusDoc
            ),
            ResponseDoc(202, "Accepted and queued; poll Location.", BulkStatusDoc, _POLL_HEADERS),
        ),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetBulkStatus",
        lenient=True,  # only the settings it reads must validate
        method="GET",
        route="messages/bulk/{BatchId}",
        input=BulkStatusInput,
        handler=get_bulk_status,
        summary="Get a bulk send's status",
        description=(
            "Counts of the batch's recipients per state (202 while any is pending, 200 when all "
            "are final); with details=true each recipient's state and SmartDialog's ids. Needs "
            "the token of the batch status URL, not a function key."
        ),
        responses=(
            ResponseDoc(200, "All recipients final.", BulkStatusDoc),
            ResponseDoc(202, "Some still pending.", BulkStatusDoc, _POLL_HEADERS),
        ),
        visibility="internal",
        routed=False,
        tags=(TAG,),
    ),
)
