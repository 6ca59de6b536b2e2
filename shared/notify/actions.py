"""The notification-rule actions: rules (create, get, list, update, delete), the dry run, and
recipient lists (put, get, delete). All need the function key.

A rule is validated when saved (400 naming the field): unknown fields, bad numbers, a bad
JMESPath, a connection the app does not have (see ``shared.connections``), a recipient list
that does not exist, and, against the ``SampleEvent`` the rule may carry, a ``Condition`` or
``FromEvent`` that fails on it and placeholders that find nothing in it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
)
from shared.actions.fields import NonEmptyStr, ui
from shared.notify._rules import (
    LIST_NAME_PATTERN,
    RULE_ID_PATTERN,
    Rule,
    RuleDefinition,
    rule_errors,
)
from shared.problems import FieldError, Problem, ProblemType, validation_problem

if TYPE_CHECKING:
    from shared.notify._store import RuleStore, UnreadableRow
    from shared.settings import Settings

__all__ = ["SPECS"]

TAG = "Notification rules"
#: Most numbers in one recipient list (one table entity holds them).
MAX_LIST_NUMBERS = 1000

RuleIdPath = Annotated[
    NonEmptyStr,
    Param("path", "RuleId"),
    Field(
        pattern=RULE_ID_PATTERN,
        description="The rule's id.",
        json_schema_extra=ui("Rule Id", visibility="important"),
    ),
]
ListNamePath = Annotated[
    NonEmptyStr,
    Param("path", "ListName"),
    Field(
        pattern=LIST_NAME_PATTERN,
        description="The recipient list's name.",
        json_schema_extra=ui("List Name", visibility="important"),
    ),
]


class CreateRuleInput(ActionInput):
    body: Annotated[
        Rule,
        Body(),
        Field(description="The rule.", json_schema_extra=ui("Rule", visibility="important")),
    ]


class RuleIdInput(ActionInput):
    rule_id: RuleIdPath


class UpdateRuleInput(ActionInput):
    rule_id: RuleIdPath
    body: Annotated[
        RuleDefinition,
        Body(),
        Field(description="The rule.", json_schema_extra=ui("Rule", visibility="important")),
    ]


class ListRulesInput(ActionInput):
    pass


class DryRunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    Event: dict[str, Any] = Field(
        description="A CloudEvents 1.0 or Event Grid event.", json_schema_extra=ui("Event")
    )
    RuleId: str | None = Field(
        None,
        pattern=RULE_ID_PATTERN,
        description="Only this stored rule; default every rule.",
        json_schema_extra=ui("Rule Id"),
    )


class DryRunInput(ActionInput):
    body: Annotated[
        DryRunBody,
        Body(),
        Field(
            description="The event to try.", json_schema_extra=ui("Dry Run", visibility="important")
        ),
    ]


class RecipientListBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    Numbers: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        max_length=MAX_LIST_NUMBERS,
        description="The phone numbers (E.164, or national Finnish).",
        json_schema_extra=ui("Numbers"),
    )


class PutListInput(ActionInput):
    list_name: ListNamePath
    body: Annotated[
        RecipientListBody,
        Body(),
        Field(description="The list.", json_schema_extra=ui("List", visibility="important")),
    ]


class ListNameInput(ActionInput):
    list_name: ListNamePath


# --- documents --------------------------------------------------------------------------------


class RuleListDoc(BaseModel):
    value: list[Rule] = Field(description="Every rule.", json_schema_extra=ui("Rules"))
    Unreadable: list[str] = Field(
        description=(
            "Ids of stored rules that no longer read as a rule (e.g. saved by an earlier "
            "release that allowed what this one refuses): they match nothing; update or "
            "delete them."
        ),
        json_schema_extra=ui("Unreadable rules"),
    )


class PlannedSendDoc(BaseModel):
    RuleId: str = Field(description="The rule that made it.", json_schema_extra=ui("Rule Id"))
    MessageId: str = Field(
        description="The id the send would have (poll its status by it).",
        json_schema_extra=ui("Message Id"),
    )
    Command: dict[str, Any] = Field(
        description="The send command that would be queued.", json_schema_extra=ui("Command")
    )


class DryRunDoc(BaseModel):
    Rules: list[str] = Field(description="The rules that match.", json_schema_extra=ui("Rules"))
    Sends: list[PlannedSendDoc] = Field(
        description="The sends they would make.", json_schema_extra=ui("Sends")
    )
    Skipped: list[dict[str, str]] = Field(
        description="Recipients left out, with the reason.", json_schema_extra=ui("Skipped")
    )


class RecipientListDoc(BaseModel):
    Name: str = Field(description="The list's name.", json_schema_extra=ui("Name"))
    Numbers: list[str] = Field(description="The phone numbers.", json_schema_extra=ui("Numbers"))


# --- handlers ---------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _store(settings: Settings) -> RuleStore:
    from shared.notify._store import RuleStore

    return RuleStore.from_settings(settings)


def _not_found(what: str, name: str) -> Problem:
    return Problem(
        404, f"No such {what}", f"There is no {what} {name}.", type=ProblemType.NOT_FOUND
    )


def _unreadable(exc: UnreadableRow) -> Problem:
    """409 for a stored row that no longer reads, saying what to do."""
    example, replace = (
        ("a Sender over 100 characters", "UpdateNotificationRule")
        if exc.what == "Rule"
        else ("numbers that are not a JSON array of texts", "PutRecipientList")
    )
    return Problem(
        409,
        f"{exc.what} unreadable",
        f"{exc} is stored in a form this release cannot read (the log says why; e.g. a torn "
        f"row, or {example}): replace it with {replace}, or delete it.",
        type=ProblemType.CONFLICT,
    )


def _stored_rule(store: RuleStore, rule_id: str) -> Rule:
    """The stored rule; 404 if there is none, 409 if its row no longer reads as a rule."""
    from shared.notify._store import UnreadableRow

    try:
        rule = store.get(rule_id)
    except UnreadableRow as exc:
        raise _unreadable(exc) from exc
    if rule is None:
        raise _not_found("rule", rule_id)
    return rule


def _checked(rule: Rule, store: RuleStore) -> Rule:
    errors = rule_errors(rule)
    from shared.notify._store import UnreadableRow

    named = rule.Recipients.List
    try:
        if named is not None and store.get_list(named) is None:
            errors.append(
                ("Recipients.List", f"No recipient list is named {named!r}: put it first.")
            )
    except UnreadableRow:
        errors.append(("Recipients.List", f"Recipient list {named!r} does not read: put it again."))
    if errors:
        # Named as the pipeline names a body's fields (no ``body.``), the whole body ``body``.
        raise validation_problem([FieldError(field, msg) for field, msg in errors])
    return rule


def _routed(body: RuleDefinition, ctx: ActionContext) -> dict[str, Any]:
    """The rule's ``Connection``: the body's (a rule may send through another account than the
    request's), else the connection the request was routed to (the connector names it)."""
    return {} if "Connection" in body.model_fields_set else {"Connection": ctx.connection}


def _rule_doc(rule: Rule) -> dict[str, Any]:
    return rule.model_dump(mode="json", exclude_none=True)


def create_rule(ctx: ActionContext, inp: CreateRuleInput) -> ActionResponse:
    store = _store(ctx.settings)
    rule = _checked(inp.body.model_copy(update=_routed(inp.body, ctx)), store)
    if not store.create(rule):
        raise Problem(
            409,
            "The rule exists",
            f"A rule {rule.Id} exists already: update it, or choose another id.",
            type=ProblemType.CONFLICT,
        )
    return ActionResponse.json(_rule_doc(rule), status=201)


def get_rule(ctx: ActionContext, inp: RuleIdInput) -> ActionResponse:
    return ActionResponse.json(_rule_doc(_stored_rule(_store(ctx.settings), inp.rule_id)))


def list_rules(ctx: ActionContext, inp: ListRulesInput) -> ActionResponse:
    rules, unreadable = _store(ctx.settings).list_rules()
    return ActionResponse.json({"value": [_rule_doc(r) for r in rules], "Unreadable": unreadable})


def update_rule(ctx: ActionContext, inp: UpdateRuleInput) -> ActionResponse:
    store = _store(ctx.settings)
    routed = _routed(inp.body, ctx)
    rule = _checked(Rule(Id=inp.rule_id, **{**dict(inp.body), **routed}), store)
    if not store.replace(rule):
        raise _not_found("rule", inp.rule_id)
    return ActionResponse.json(_rule_doc(rule))


def delete_rule(ctx: ActionContext, inp: RuleIdInput) -> ActionResponse:
    if not _store(ctx.settings).delete(inp.rule_id):
        raise _not_found("rule", inp.rule_id)
    return ActionResponse.empty()


def dry_run(ctx: ActionContext, inp: DryRunInput) -> ActionResponse:
    from shared.notify._doors import notifier
    from shared.notify._intake import InvalidEvent, parse_object
    from shared.notify._notify import MAX_SENDS

    try:
        event = parse_object(inp.body.Event)
    except InvalidEvent as exc:
        field = "Event" if exc.field == "body" else f"Event.{exc.field}"
        raise validation_problem([FieldError(field, str(exc))]) from exc
    store = _store(ctx.settings)
    rules = None
    if inp.body.RuleId is not None:
        rule = _stored_rule(store, inp.body.RuleId)
        rules = [rule.model_copy(update={"Enabled": True})]
    result = notifier(ctx.settings).plan(event, book=store.book(), dry_run=True, rules=rules)
    if len(result.sends) > MAX_SENDS:  # what every door would refuse
        why = f"The rules make {len(result.sends):,} sends of it, more than the {MAX_SENDS:,} one "
        why += "delivery may: every door would refuse it, nothing sent. Give them fewer recipients."
        raise validation_problem([FieldError("Event", why)])
    return ActionResponse.json(
        {
            "Rules": result.rules,
            "Sends": [
                {
                    "RuleId": s.rule_id,
                    "MessageId": s.message_id,
                    "Command": s.command.model_dump(mode="json", exclude_none=True),
                }
                for s in result.sends
            ],
            "Skipped": [{"RuleId": s.rule_id, "Reason": s.reason} for s in result.skipped],
        }
    )


def put_list(ctx: ActionContext, inp: PutListInput) -> ActionResponse:
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    numbers: list[str] = []
    errors: list[FieldError] = []
    for index, number in enumerate(inp.body.Numbers):
        try:
            numbers.append(parse_phone_number(number))
        except InvalidPhoneNumber as exc:
            errors.append(FieldError(f"Numbers[{index}]", str(exc)))
    if errors:
        raise validation_problem(errors)
    numbers = list(dict.fromkeys(numbers))
    _store(ctx.settings).put_list(inp.list_name, numbers)
    return ActionResponse.json({"Name": inp.list_name, "Numbers": numbers})


def get_list(ctx: ActionContext, inp: ListNameInput) -> ActionResponse:
    from shared.notify._store import UnreadableRow

    try:
        numbers = _store(ctx.settings).get_list(inp.list_name)
    except UnreadableRow as exc:
        raise _unreadable(exc) from exc
    if numbers is None:
        raise _not_found("recipient list", inp.list_name)
    return ActionResponse.json({"Name": inp.list_name, "Numbers": list(numbers)})


def delete_list(ctx: ActionContext, inp: ListNameInput) -> ActionResponse:
    if not _store(ctx.settings).delete_list(inp.list_name):
        raise _not_found("recipient list", inp.list_name)
    return ActionResponse.empty()


def _spec(
    operation_id: str,
    method: str,
    route: str,
    input: Any,
    handler: Any,
    summary: str,
    description: str,
    responses: tuple[ResponseDoc, ...],
) -> ActionSpec[Any]:
    return ActionSpec(
        operation_id=operation_id,
        method=method,
        route=route,
        input=input,
        handler=handler,
        summary=summary,
        description=description,
        responses=responses,
        visibility="advanced",
        tags=(TAG,),
    )


_RULE_ROUTE = "notification-rules/{RuleId}"
_LIST_ROUTE = "recipient-lists/{ListName}"

SPECS: tuple[ActionSpec[Any], ...] = (
    _spec(
        "CreateNotificationRule",
        "POST",
        "notification-rules",
        CreateRuleInput,
        create_rule,
        "Create a notification rule",
        "Saves a rule that turns matching events into messages; 409 if its id is taken.",
        (ResponseDoc(201, "Created.", Rule),),
    ),
    _spec(
        "ListNotificationRules",
        "GET",
        "notification-rules",
        ListRulesInput,
        list_rules,
        "List notification rules",
        "Every notification rule.",
        (ResponseDoc(200, "The rules.", RuleListDoc),),
    ),
    _spec(
        "GetNotificationRule",
        "GET",
        _RULE_ROUTE,
        RuleIdInput,
        get_rule,
        "Get a notification rule",
        "One notification rule.",
        (ResponseDoc(200, "The rule.", Rule),),
    ),
    _spec(
        "UpdateNotificationRule",
        "PUT",
        _RULE_ROUTE,
        UpdateRuleInput,
        update_rule,
        "Update a notification rule",
        "Replaces a rule; sends already queued keep what they had.",
        (ResponseDoc(200, "Updated.", Rule),),
    ),
    _spec(
        "DeleteNotificationRule",
        "DELETE",
        _RULE_ROUTE,
        RuleIdInput,
        delete_rule,
        "Delete a notification rule",
        "Deletes a rule; sends already queued still go.",
        (ResponseDoc(204, "Deleted."),),
    ),
    _spec(
        "DryRunNotificationRules",
        "POST",
        "notification-rules/dry-run",
        DryRunInput,
        dry_run,
        "Try an event against the rules",
        "Shows the sends an event would make, without sending (quiet periods and hourly caps "
        "are not applied).",
        (ResponseDoc(200, "What the event would produce.", DryRunDoc),),
    ),
    _spec(
        "PutRecipientList",
        "PUT",
        _LIST_ROUTE,
        PutListInput,
        put_list,
        "Create or replace a recipient list",
        "Saves a named list of phone numbers for rules.",
        (ResponseDoc(200, "Saved.", RecipientListDoc),),
    ),
    _spec(
        "GetRecipientList",
        "GET",
        _LIST_ROUTE,
        ListNameInput,
        get_list,
        "Get a recipient list",
        "One recipient list.",
        (ResponseDoc(200, "The list.", RecipientListDoc),),
    ),
    _spec(
        "DeleteRecipientList",
        "DELETE",
        _LIST_ROUTE,
        ListNameInput,
        delete_list,
        "Delete a recipient list",
        "Deletes a recipient list; a rule naming it then reports it in Skipped.",
        (ResponseDoc(204, "Deleted."),),
    ),
)
