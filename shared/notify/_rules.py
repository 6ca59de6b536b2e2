"""Notification rules: what an operator writes (the model, validated when saved), whether an
event matches, and the message it renders.

A rule matches on the event's ``type`` (exact, or a prefix), ``source`` (exact; an Azure
resource id, ``/subscriptions/...``, in any letter case), ``subject`` (a glob: ``*``, ``?``,
``[...]``; a prefix is ``abc*``; letter case ignored, as Azure resource ids ignore it) and an
optional JMESPath ``Condition`` over the event document (:meth:`IncomingEvent.document`), which
must be truthy (one that fails on the event raises :class:`ExpressionFailed`). Placeholders in
the message are SmartDialog's ``$(...)`` syntax holding a JMESPath expression over the same
document (``$(data.alertContext.condition.name)``); a missing value renders empty and is logged.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.actions.fields import ui
from shared.names import DEFAULT_CONNECTION
from shared.notify._intake import IncomingEvent
from shared.outbound import SenderText
from shared.problems import FieldError
from shared.settings import error_message
from shared.storage import utf16_units

__all__ = [
    "CONTENT_CHARS",
    "DEFAULT_CONNECTION",
    "PARAMETER_CHARS",
    "ExpressionFailed",
    "Rule",
    "RuleDefinition",
    "RuleMatch",
    "RuleMessage",
    "RuleRecipients",
    "compile_expression",
    "evaluate",
    "invalid_fields",
    "render",
    "rule_errors",
    "search",
    "split_placeholders",
]

log = logging.getLogger("shared.notify")

RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
LIST_NAME_PATTERN = RULE_ID_PATTERN
#: The largest rule stored (UTF-16 units of its JSON; a Table entity holds 1 MiB).
RULE_UNITS = 400_000
#: The longest ``Content`` and template parameter, in characters: of a rule, and as rendered
#: (placeholder values are cut to fit: what bounds a forged event's message).
CONTENT_CHARS, PARAMETER_CHARS = 2000, 1000

_Text = Annotated[str, Field(min_length=1, max_length=1000)]


def _f(label: str, description: str, default: Any = None, **kw: Any) -> Any:
    """A field with its connector label and description."""
    return Field(default, description=description, json_schema_extra=ui(label), **kw)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleMatch(_Strict):
    """Which events the rule takes; every field given must hold."""

    EventType: _Text | None = _f("Event Type", "The event type, exactly.")
    EventTypePrefix: _Text | None = _f(
        "Event Type Prefix", "Or the start of the event type, e.g. Microsoft.Storage."
    )
    Source: _Text | None = _f(
        "Source",
        "The event source (Event Grid: the topic), exactly; an Azure resource id "
        "(/subscriptions/...) in any letter case.",
    )
    Subject: _Text | None = _f(
        "Subject",
        "A glob over the subject, letter case ignored: * any text, ? one character (abc* is a "
        "prefix).",
    )
    Condition: _Text | None = _f(
        "Condition", "A JMESPath expression over the event; the rule matches when it is truthy."
    )

    @model_validator(mode="after")
    def _one_type(self) -> RuleMatch:
        if self.EventType and self.EventTypePrefix:
            raise ValueError("give EventType or EventTypePrefix, not both")
        return self


_Param = Annotated[str, Field(max_length=PARAMETER_CHARS)]


class RuleMessage(_Strict):
    """An SMS (``Content``) or a WhatsApp template (``TemplateName`` and its parameters)."""

    Protocol: Literal["SMS", "WhatsApp"] = _f("Protocol", "SMS or WhatsApp (for Content).", "SMS")
    # Bounded as before when stored (a release's rows must still read); a text rule's sender is
    # held to a send's bounds when saved (rule_errors) and when rendered.
    Sender: str | None = _f(
        "Sender",
        "The sender name or number of a text message (as a send's: 1 to 20 characters).",
        max_length=100,
    )
    Content: str | None = _f(
        "Content",
        "The text, with $(data.path) placeholders read from the event.",
        min_length=1,
        max_length=CONTENT_CHARS,
    )
    TemplateName: str | None = _f(
        "Template Name", "Or a WhatsApp template to send.", min_length=1, max_length=512
    )
    BodyParameters: list[_Param] | None = _f(
        "Body Parameters", "The template's body parameters (placeholders allowed)."
    )  # (at most TEMPLATE_PARAMETERS when saved: a stored one of more still reads)
    HeaderParameters: list[_Param] | None = _f(
        "Header Parameters", "The template's header parameters (placeholders allowed)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> RuleMessage:
        if (self.Content is None) == (self.TemplateName is None):
            raise ValueError("give Content (a text message) or TemplateName (a template)")
        if self.Content is not None and self.Sender is None:
            raise ValueError("a text message needs a Sender")
        return self

    def texts(self) -> dict[str, str]:
        """Every text that may hold placeholders, by its field name in the rule."""
        found: dict[str, str] = {}
        if self.Content is not None:
            found["Message.Content"] = self.Content
        for name in ("BodyParameters", "HeaderParameters"):
            for index, value in enumerate(getattr(self, name) or []):
                found[f"Message.{name}[{index}]"] = value
        return found


class RuleRecipients(_Strict):
    """Fixed numbers, a recipient list of ours, and/or numbers read from the event."""

    Numbers: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=list,
        max_length=100,
        description="Phone numbers that always get the message.",
        json_schema_extra=ui("Numbers"),
    )
    List: str | None = _f(
        "Recipient List", "The name of a recipient list.", pattern=LIST_NAME_PATTERN
    )
    FromEvent: _Text | None = _f(
        "From Event", "A JMESPath expression giving a number or a list of numbers."
    )
    AllowedCountryCodes: list[Annotated[int, Field(ge=1, le=999)]] = Field(
        default_factory=list,
        max_length=50,
        description="Country calling codes numbers from the event may have, e.g. 358.",
        json_schema_extra=ui("Allowed Country Codes"),
    )
    MaxPerEvent: int = _f("Max per Event", "Most numbers taken from one event.", 5, ge=1, le=100)
    MaxPerHour: int = _f(
        "Max per Hour", "Most numbers taken from events in an hour.", 30, ge=1, le=10_000
    )

    @model_validator(mode="after")
    def _someone(self) -> RuleRecipients:
        if not (self.Numbers or self.List or self.FromEvent):
            raise ValueError("give Numbers, a List or FromEvent")
        if self.FromEvent and not self.AllowedCountryCodes:
            raise ValueError("numbers from the event need AllowedCountryCodes")
        return self


class RuleDefinition(_Strict):
    """A notification rule without its id (the body of UpdateNotificationRule)."""

    Description: str | None = _f("Description", "What the rule is for.", max_length=500)
    Enabled: bool = _f("Enabled", "False keeps the rule but matches nothing.", True)
    Match: RuleMatch = Field(
        description="Which events the rule takes.", json_schema_extra=ui("Match")
    )
    Message: RuleMessage = Field(
        description="The message to send.", json_schema_extra=ui("Message")
    )
    Recipients: RuleRecipients = Field(
        description="Who gets it.", json_schema_extra=ui("Recipients")
    )
    Connection: str = Field(  # no schema default: a designer would pre-fill it
        default_factory=lambda: DEFAULT_CONNECTION,
        description="The connection (SmartDialog account) to send through (see ListConnections); "
        "the connection the request was routed to when left out.",
        json_schema_extra=ui("Connection"),
        min_length=1,
        max_length=100,
    )
    ServiceId: str | None = _f(
        "Service Id", "The SmartDialog service; default the app's.", min_length=1, max_length=200
    )
    ValiditySeconds: int | None = _f(
        "Validity Seconds", "Give up sending after this many seconds.", ge=60, le=7 * 86400
    )
    QuietMinutes: int = _f(
        "Quiet Minutes",
        "Send the same rule, subject and recipient at most once in this many minutes.",
        0,
        ge=0,
        le=7 * 24 * 60,
    )
    SampleEvent: dict[str, Any] | None = _f(
        "Sample Event", "An example event: every placeholder must find a value in it."
    )


class Rule(RuleDefinition):
    """One notification rule (stored in ``SmartDialogNotificationRules``)."""

    Id: str = Field(
        pattern=RULE_ID_PATTERN,
        description="The rule's id: letters, digits, dot, dash, underscore.",
        json_schema_extra=ui("Rule Id"),
    )

    def unsendable(self) -> FieldError | None:
        """The setting its sends need and its connection lacks: they name no customer (nor a
        service unless the rule has one), which the connection's sender fills in."""
        from shared.connections import missing_account_default

        return missing_account_default(self.Connection, service=self.ServiceId is None)

    def matches(self, event: IncomingEvent, document: dict[str, Any]) -> bool:
        """Whether ``event`` is one this rule takes (enabled, every match field holds); raises
        :class:`ExpressionFailed` when its ``Condition`` fails on the event."""
        match = self.Match
        if not self.Enabled:
            return False
        if match.EventType is not None and event.type != match.EventType:
            return False
        if match.EventTypePrefix is not None and not event.type.startswith(match.EventTypePrefix):
            return False
        if match.Source is not None and not _same_source(event.source, match.Source):
            return False
        subject = (event.subject or "").lower()
        if match.Subject is not None and not fnmatch.fnmatchcase(subject, match.Subject.lower()):
            return False
        return match.Condition is None or bool(evaluate(match.Condition, document))


def _same_source(source: str, wanted: str) -> bool:
    """Whether ``source`` is ``wanted``: letter case ignored for an Azure resource id (a system
    topic's source; Azure writes one id in more than one case), exact for any other URI."""
    if wanted[:15].lower() == "/subscriptions/":
        return source.lower() == wanted.lower()
    return source == wanted


@functools.lru_cache(maxsize=1024)
def compile_expression(expression: str) -> Any:
    """The compiled JMESPath expression; raises ``ValueError`` with the parser's reason."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"not a JMESPath expression: {exc}") from exc
    except RecursionError as exc:  # the parser recurses per nesting level
        raise ValueError("not a JMESPath expression: nested too deeply") from exc


#: Why an expression that asks for more work than its budget (shared.notify._budget) fails.
TOO_MUCH_WORK = "it asks for more work than a rule may (its values grow with each step)"


class ExpressionFailed(ValueError):
    """A rule's JMESPath expression that fails on an event; the message names what failed, never
    a value of the event (it goes into answers and logs)."""


def evaluate(expression: str, document: dict[str, Any]) -> Any:
    """``expression`` applied to ``document`` (None when it finds nothing); raises
    :class:`ExpressionFailed` when it fails: a function given a value of the wrong type, one it
    does not know, too deep to apply, or asking for more work than its budget."""
    from jmespath.exceptions import JMESPathError, JMESPathTypeError

    from shared.notify._budget import OverBudget, search_within_budget

    try:
        compiled = compile_expression(expression)
    except ValueError as exc:  # a stored rule no release would save
        raise ExpressionFailed("not a JMESPath expression") from exc
    try:
        return search_within_budget(compiled, document)
    except OverBudget as exc:
        raise ExpressionFailed(TOO_MUCH_WORK) from exc
    except JMESPathTypeError as exc:  # its own message quotes the value
        expected = " or ".join(map(str, exc.expected_types))
        raise ExpressionFailed(
            f"{exc.function_name}() was given a {exc.actual_type}, not a {expected}"
        ) from exc
    except RecursionError as exc:
        raise ExpressionFailed("nested too deeply to apply") from exc
    except JMESPathError as exc:  # arity, unknown function: the expression's own words
        raise ExpressionFailed(" ".join(str(exc).split())[:300]) from exc
    except (OverflowError, ValueError, ArithmeticError) as exc:  # floor(1e999), floor(NaN)
        raise ExpressionFailed(f"a number it cannot use ({type(exc).__name__})") from exc
    except TypeError as exc:  # "97" > `90`, 'a' in {...}: its message quotes no value
        raise ExpressionFailed(f"values it cannot compare or combine ({exc})") from exc


def search(expression: str, document: dict[str, Any]) -> Any:
    """``expression`` applied to ``document`` (None when it finds nothing or fails: a
    placeholder renders empty then, and is logged)."""
    try:
        return evaluate(expression, document)
    except ExpressionFailed:
        return None


def _closing(text: str, start: int) -> int | None:
    """Where the ``)`` closing the ``(`` before ``start`` is: parentheses nest, and JMESPath's
    quoted text (``'raw'``, ```literal```, ``"identifier"``, each with its backslash escapes)
    holds none; None when no ``)`` closes it."""
    depth, quote, index = 1, "", start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'`\"":
            quote = char
        elif char in "()":
            depth += 1 if char == "(" else -1
            if not depth:
                return index
        index += 1
    return None


@functools.lru_cache(maxsize=1024)
def split_placeholders(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``text`` as text, expression, text, ... (each ``$(expression)`` runs to the ``)`` that
    closes it), and where each ``$(`` is that nothing closes (it stays text). Each is looked for
    to the end of the text, so after :data:`UNCLOSED_MOST` of them the rest stays text (a rule
    with one is refused when saved; an ec7daff rule may have one or two)."""
    pieces: list[str] = []
    unclosed: list[int] = []
    start, at = 0, text.find("$(")
    while at >= 0:
        end = _closing(text, at + 2)
        if end is None:
            unclosed.append(at)
            at = -1 if len(unclosed) >= UNCLOSED_MOST else text.find("$(", at + 2)
            continue
        pieces += [text[start:at], text[at + 2 : end]]
        start = end + 1
        at = text.find("$(", start)
    return (*pieces, text[start:]), tuple(unclosed)


_SURROGATE = re.compile("[\ud800-\udfff]")
#: The most unclosed ``$(`` a text is read past (each one's end is looked for to the end of the
#: text: 998 of them in 380 texts took 8.9 s); the most parameters a template rule saves.
UNCLOSED_MOST, TEMPLATE_PARAMETERS = 10, 100


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _shortened(value: str, length: int) -> str:
    """``value`` cut to ``length`` characters ending "..." (GSM 7-bit, unlike an ellipsis)."""
    return value[: length - 3] + "..." if length > 2 else ""


def render(
    text: str, document: dict[str, Any], *, rule_id: str, event_id: str, limit: int | None = None
) -> str:
    """``text`` with each ``$(expression)`` replaced by its value in ``document``; a value that
    is missing renders as empty and is logged (rule, event id and expression, no data). A value
    never makes a ``$(``, in it or with what is next to it: SmartDialog would take ``$(C)`` for
    a personalization placeholder and blank it. It becomes ``$ (``.

    With a ``limit``, values that make the whole longer are cut, the longest first, each cut
    ending ``...`` (GSM 7-bit, unlike an ellipsis), so that it is at most ``limit`` characters
    (logged, no data): what bounds a
    forged event's long value, and a long alert still goes out."""

    missing: list[str] = []

    def value(expression: str) -> str:
        found = search(expression.strip(), document)
        try:
            made = None if found is None else _as_text(found)
        except ValueError:  # an integer of more digits than Python writes out
            made = None
        if made is None:
            missing.append(expression.strip())
            return ""
        return _SURROGATE.sub("\ufffd", made).replace("$(", "$ (")  # (from a JSON literal)

    def joined(values: list[str]) -> str:
        rendered = ""
        for index, piece in enumerate(pieces):  # text, expression, text, ...
            piece = values[index // 2] if index % 2 else piece
            if rendered.endswith("$") and piece.startswith("("):  # each seam has a value at it
                piece = " " + piece
            rendered += piece
        return rendered

    pieces = split_placeholders(text)[0]
    values = [value(expression) for expression in pieces[1::2]]
    if missing:  # one line for them all
        more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
        log.warning("rule %s: placeholder %s found nothing in event %s%s",
                    rule_id, missing[0], event_id, more)  # fmt: skip
    rendered = cut = joined(values)
    if limit is None or len(rendered) <= limit:
        return rendered
    budget = limit - len(rendered) + sum(map(len, values))  # what the values may take
    while len(cut) > limit and budget >= 0:  # a seam's space may take one more: again
        low, high = 0, max(map(len, values), default=0)  # the longest a value may stay
        while low < high:
            mid = (low + high + 1) // 2
            if sum(min(len(v), mid) for v in values) <= budget:
                low = mid
            else:
                high = mid - 1
        cut = joined([v if len(v) <= low else _shortened(v, low) for v in values])
        budget -= 1
    log.warning(
        "rule %s: placeholder values cut in event %s: %s characters rendered, at most %s",
        rule_id,
        event_id,
        f"{len(rendered):,}",
        f"{limit:,}",
    )
    return cut


def invalid_fields(exc: ValueError, within: str = "") -> str:
    """What is wrong with a model that did not validate (a message that could not be made, a
    stored rule that no longer reads), naming the fields (under ``within``) and never their
    values."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = within + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        problems.append(f"{where.lstrip('.')}: {error_message(error)}")
    return "; ".join(problems)


def rule_errors(rule: Rule) -> list[tuple[str, str]]:
    """What is wrong with a rule that parsed: (field, message) pairs, empty when it is fine.

    Checks the connection (that the app has it, with the ``CUSTOMER_ID`` and, unless the rule
    has a ``ServiceId``, the ``SERVICE_ID`` its sends take), every JMESPath expression, the
    fixed numbers, that each allowed country code is a real one, and (with a ``SampleEvent``)
    that ``Condition`` and ``FromEvent`` do not fail on it and every placeholder resolves
    against it. (That a named ``List`` exists is the actions' check: it needs the store.)
    """
    from shared.notify._budget import allowance, one_budget
    from shared.notify._intake import InvalidEvent, parse_object
    from shared.phone import InvalidPhoneNumber, is_calling_code, parse_phone_number

    errors: list[tuple[str, str]] = []
    if utf16_units(rule.model_dump_json(exclude_none=True)) > RULE_UNITS:
        errors.append(
            ("body", f"The rule is too large to store (at most {RULE_UNITS:,} characters).")
        )
    from shared.connections import connection_name, connections

    if connection_name(rule.Connection) not in connections().by_name:
        errors.append(("Connection", f"No connection is named {rule.Connection!r}."))
    elif unset := rule.unsendable():
        field, other = "ServiceId", "give the rule a ServiceId"
        if unset.field.endswith("CUSTOMER_ID"):
            field, other = "Connection", "choose another connection"
        errors.append((field, f"{unset.message} Set {unset.field}, or {other}."))
    sender = rule.Message.Sender
    if rule.Message.Content is not None and sender is not None:
        try:
            TypeAdapter(SenderText).validate_python(sender)  # a send's bounds, one home
        except ValidationError:
            errors.append(("Message.Sender", "A text message's sender has 1 to 20 characters."))
    for name in ("BodyParameters", "HeaderParameters"):  # (their placeholders: not read)
        if len(getattr(rule.Message, name) or ()) > TEMPLATE_PARAMETERS:
            return [*errors, (f"Message.{name}", f"At most {TEMPLATE_PARAMETERS} parameters.")]
    expressions = {"Match.Condition": rule.Match.Condition}
    expressions["Recipients.FromEvent"] = rule.Recipients.FromEvent
    for name, text in rule.Message.texts().items():
        pieces, unclosed = split_placeholders(text)
        for index, placeholder in enumerate(pieces[1::2]):
            expressions[f"{name}$({index})"] = placeholder.strip()
        errors.extend(
            (name, f"The $( at character {at + 1} has no ) closing it (text: write $ ( ).")
            for at in unclosed
        )
    with one_budget(allowance({})):  # one budget for them all, as on an event
        errors += _errors_on_nothing(expressions)
    for index, number in enumerate(rule.Recipients.Numbers):
        try:
            parse_phone_number(number)
        except InvalidPhoneNumber as exc:
            errors.append((f"Recipients.Numbers[{index}]", str(exc)))
    for index, code in enumerate(rule.Recipients.AllowedCountryCodes):
        if not is_calling_code(code):  # 35 would have allowed every +351 to +359 number
            errors.append(
                (
                    f"Recipients.AllowedCountryCodes[{index}]",
                    f"{code} is not a country calling code (such as 358).",
                )
            )
    if rule.SampleEvent is not None and not errors:
        try:
            document = parse_object(rule.SampleEvent).document()
        except InvalidEvent as exc:
            return [("SampleEvent", str(exc))]
        with one_budget(allowance(document)):
            errors += _errors_on_sample(rule, expressions, document)
    return errors


def _errors_on_nothing(expressions: dict[str, str | None]) -> list[tuple[str, str]]:
    """What is wrong with each expression (by field) as written, or applied to ``{}``: how it
    fails there (:func:`evaluate`'s words), but for what a function says of the empty
    document's nulls (events will tell)."""
    from jmespath.exceptions import JMESPathError

    from shared.notify._budget import OverBudget

    errors: list[tuple[str, str]] = []
    spent = False  # the budget: the rest are not applied (they would fail for another's work)
    for name, expression in expressions.items():
        if expression is None:
            continue
        field = name.split("$(")[0]
        try:
            compile_expression(expression)
            if not spent:
                evaluate(expression, {})  # applying it recurses per nesting level too
        except ExpressionFailed as exc:
            if not isinstance(exc.__cause__, JMESPathError):  # (join('', [@, @]) 45 times
                errors.append((field, f"{expression!r}: {exc}"))  # over asked for terabytes)
                spent = isinstance(exc.__cause__, OverBudget)
        except ValueError as exc:  # the parser's reason
            errors.append((field, f"{expression!r}: {exc}"))
    return errors


def _errors_on_sample(
    rule: Rule, expressions: dict[str, str | None], document: dict[str, Any]
) -> list[tuple[str, str]]:
    """What fails on, or finds nothing in, the rule's ``SampleEvent`` (``document``)."""
    errors: list[tuple[str, str]] = []
    for name in ("Match.Condition", "Recipients.FromEvent"):
        expression = expressions[name]
        try:
            if expression is not None:
                evaluate(expression, document)
        except ExpressionFailed as exc:
            errors.append((name, f"{expression!r} fails on the SampleEvent: {exc}"))
    for name, text in rule.Message.texts().items():
        for placeholder in split_placeholders(text)[0][1::2]:
            try:
                found = evaluate(placeholder.strip(), document)
            except ExpressionFailed as exc:
                why = f"fails on the SampleEvent: {exc}"
            else:
                why = "" if found is not None else "finds nothing in the SampleEvent."
            if why:
                errors.append((name, f"$({placeholder.strip()}) {why}"))
    return errors
