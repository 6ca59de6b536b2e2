"""What an action is: its request and response envelopes, its input model and its spec."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.connections import CONNECTION_HEADER, NAME_MAX_LENGTH
from shared.logs import loggable_id
from shared.problems import PROBLEM_CONTENT_TYPE, Problem

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.smartdialog import SmartDialogClient

__all__ = [
    "JSON_CONTENT_TYPE",
    "ActionContext",
    "ActionInput",
    "ActionRequest",
    "ActionResponse",
    "ActionSpec",
    "Body",
    "Param",
    "ResponseDoc",
    "SettingDefault",
]

JSON_CONTENT_TYPE = "application/json"
#: Headers whose value names the caller's own tracking id (Logic Apps, Power Automate, others).
TRACKING_HEADERS = ("x-ms-client-tracking-id", "x-ms-workflow-run-id", "x-request-id")
_SAFE_TRACKING_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# --- envelopes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionRequest:
    """An HTTP request as the pipeline sees it, independent of the Functions host.

    ``headers`` keys are matched case-insensitively (they are stored lower-cased);
    ``route_params`` are the decoded route segments; ``query`` holds one value per name.
    """

    method: str
    route_params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: The caller's tracking id when it sent a usable one, else a fresh UUID. Set on creation:
    #: every action reads it, and Python 3.11's ``cached_property`` takes one lock shared by
    #: every request of every thread.
    tracking_id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "tracking_id", _tracking_id(headers))

    def header(self, name: str) -> str | None:
        """One header's value, or None (case-insensitive)."""
        return self.headers.get(name.lower())


def _tracking_id(headers: Mapping[str, str]) -> str:
    for name in TRACKING_HEADERS:
        value = headers.get(name, "").strip()
        if _SAFE_TRACKING_ID.match(value):
            return value
    return str(uuid.uuid4())


@dataclass
class ActionResponse:
    """What an action answers: status, headers and a JSON body (or no body).

    ``body`` is any JSON-serialisable value; ``None`` with :attr:`has_body` False means an empty
    body (204). Build one with :meth:`json`, :meth:`empty` or :meth:`problem`.
    """

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    has_body: bool = True
    content_type: str = JSON_CONTENT_TYPE

    @classmethod
    def json(
        cls, body: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> ActionResponse:
        """A JSON answer (``body`` may be a pydantic model: dumped with wire names, no nulls)."""
        if isinstance(body, BaseModel):
            body = body.model_dump(mode="json", by_alias=True, exclude_none=True)
        return cls(status, body, dict(headers or {}))

    @classmethod
    def empty(cls, status: int = 204, headers: Mapping[str, str] | None = None) -> ActionResponse:
        """An answer without a body."""
        return cls(status, None, dict(headers or {}), has_body=False)

    @classmethod
    def problem(cls, problem: Problem) -> ActionResponse:
        """An ``application/problem+json`` answer carrying ``problem`` and its headers."""
        return cls(
            problem.status,
            problem.to_dict(),
            dict(problem.headers),
            content_type=PROBLEM_CONTENT_TYPE,
        )

    @property
    def body_bytes(self) -> bytes:
        """The body as sent on the wire (UTF-8 JSON, or empty)."""
        if not self.has_body:
            return b""
        # A lone surrogate (echoed input) becomes its \uXXXX escape: still valid JSON.
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8", "backslashreplace")

    @property
    def all_headers(self) -> dict[str, str]:
        """:attr:`headers` plus ``Content-Type`` when there is a body."""
        headers = dict(self.headers)
        if self.has_body:
            headers.setdefault("Content-Type", self.content_type)
        return headers

    def logged_ids(self) -> list[str]:
        """What a 202 answer's log line names (an accepted send, a pending status), so that an
        operator can go from a flow's answer to the logs: its ``Id`` (a send's message id, a
        batch's id), ``QuestionId`` and ``MessageId``, and how many a batch ``Accepted`` (not
        every member's id)."""
        body = self.body if self.status == 202 and isinstance(self.body, dict) else {}
        names = [f"{key} {loggable_id(value)}" for key in ("Id", "QuestionId", "MessageId")
                 if isinstance(value := body.get(key), str)]  # fmt: skip
        accepted = body.get("Accepted")
        return names + ([f"{accepted} accepted"] if isinstance(accepted, int) else [])


# --- where input fields come from ---------------------------------------------------------------

Location = Literal["path", "query", "header"]


@dataclass(frozen=True)
class SettingDefault:
    """A field that may be omitted: the app setting ``env`` (``Settings.<attribute>``) fills it."""

    attribute: str
    env: str


@dataclass(frozen=True)
class Param:
    """Marks an :class:`ActionInput` field as a path, query or header parameter named ``name``.

    ``default`` names the app setting used when the caller leaves it out (the connector then
    lists the parameter as optional).
    """

    location: Location
    name: str
    default: SettingDefault | None = None


@dataclass(frozen=True)
class Body:
    """Marks the :class:`ActionInput` field holding the JSON body (a pydantic model).

    ``raw`` maps other media types the action also takes (e.g. ``{"text/csv": "RecipientsCsv"}``)
    to the body field that receives such a body as text; the body's other fields then come from
    query parameters of the same names (``?Sender=Acme&Content=Hi``). The body is decoded by
    its ``charset`` (UTF-8 if none; a byte-order mark is dropped). The connector describes the
    JSON body only: raw bodies are for HTTP callers (curl, scripts).
    """

    raw: Mapping[str, str] = field(default_factory=dict)


class ActionInput(BaseModel):
    """Base of every action's input model.

    Each field is annotated with :class:`Param` or :class:`Body` (``Annotated[str, Param(...)]``),
    which says where the pipeline reads it from. ``phone_regions_from`` names the parameter or
    top-level body field whose region code(s) phone-number fields are read in (see
    :mod:`shared.actions.fields`).
    """

    model_config = ConfigDict(frozen=True)

    phone_regions_from: ClassVar[str | None] = None
    #: Query parameters the action takes and does not read (not in the connector): a URL we
    #: hand out may carry them (a send's Location, its ``token``, is also where it is cancelled).
    ignored_query: ClassVar[tuple[str, ...]] = ()

    #: Every action's connection (SmartDialog account): the connector's policy sets it from
    #: the Power Automate connection; the pipeline routes by it before parsing the rest.
    Connection: Annotated[
        str | None,
        Param("header", CONNECTION_HEADER),
        Field(
            None,
            min_length=1,
            max_length=NAME_MAX_LENGTH,
            description=(
                "The named connection (SmartDialog account) to act through. Leave empty to use "
                "the connection that serves the customer, else the default."
            ),
            json_schema_extra={"x-ms-summary": "Connection", "x-ms-visibility": "internal"},
        ),
    ] = None


InputT = TypeVar("InputT", bound=ActionInput)


@dataclass(frozen=True)
class ResponseDoc:
    """One documented answer of an action (for the connector): status, text and schema.

    ``model`` is a pydantic model or any type ``TypeAdapter`` understands (``list[X]``,
    ``bool``, ``str``); None for an answer without a body. ``headers`` maps header names to
    their descriptions (e.g. ``Location``).
    """

    status: int
    description: str
    model: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


# --- the action ----------------------------------------------------------------------------------


class ActionContext:
    """What a handler may use besides its input: settings, the upstream client, the tracking id.

    The client is created on first use (so validation failures never build one) and shared
    per process; every upstream attempt it makes takes a quota token first.
    """

    def __init__(
        self,
        settings: Settings,
        tracking_id: str,
        client_factory: Callable[[Settings], SmartDialogClient],
    ) -> None:
        self.settings = settings
        self.tracking_id = tracking_id
        #: The connection the request was routed to (``settings`` are that connection's).
        self.connection = settings.connection
        self._client_factory = client_factory
        self._client: SmartDialogClient | None = None

    def reroute(self, settings: Settings) -> None:
        """Act through ``settings``' connection from here on (a record names the connection
        that made it); the pipeline maps the handler's failures with them too."""
        self.settings, self.connection, self._client = settings, settings.connection, None

    @property
    def client(self) -> SmartDialogClient:
        """The SmartDialog client (quota-gated)."""
        if self._client is None:
            self._client = self._client_factory(self.settings)
        return self._client


@dataclass(frozen=True)
class ActionSpec(Generic[InputT]):
    """One HTTP action: how it is routed, what it accepts, what it does, how it is documented.

    ``route`` is the Functions route below ``/api`` with ``{Name}`` segments for path
    parameters; ``handler(context, input)`` returns the :class:`ActionResponse` for a valid
    input and may raise :class:`~shared.problems.Problem` or the client's errors (the pipeline
    maps them). ``summary``/``description``/``visibility``/``deprecated`` go to the connector,
    as do ``responses`` (the first is the success answer) and ``connector_extensions`` (extra
    members merged into the Swagger operation, e.g. ``x-ms-trigger``) and
    ``path_extensions`` (merged into the Swagger path item, e.g.
    ``x-ms-notification-content``). ``routed`` False: the action needs only the app-wide
    settings (a status URL, our own records), so the pipeline does not route it and a routing
    error, or a broken or removed connection its request names, does not stop it there; one
    whose handler routes itself (``UnregisterInboundWebhook``) answers as routing does: a
    routing error or a broken connection named in its header is a 503.
    """

    operation_id: str
    method: str
    route: str
    input: type[InputT]
    handler: Callable[[ActionContext, InputT], ActionResponse]
    summary: str
    description: str
    responses: tuple[ResponseDoc, ...]
    visibility: Literal["important", "advanced", "internal"] | None = None
    deprecated: bool = False
    tags: tuple[str, ...] = ()
    connector_extensions: Mapping[str, Any] = field(default_factory=dict)
    path_extensions: Mapping[str, Any] = field(default_factory=dict)
    routed: bool = True
    #: It needs only the settings it reads: one that does not validate answers 503 only if read
    #: (:mod:`shared.settings_leniency`; else every such action answers it, before it starts).
    lenient: bool = False

    @property
    def path_params(self) -> tuple[str, ...]:
        """The names of the ``{Name}`` segments of :attr:`route`, in order."""
        return tuple(re.findall(r"\{([^}:]+)", self.route))
