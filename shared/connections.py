"""Named connections: several SmartDialog accounts in one app.

A connection is one SmartDialog sign-in with its own credentials, defaults, quota and the
customers it serves. Today's plain ``SMARTDIALOG_*`` settings are the connection ``default``;
others are named by app settings ``SMARTDIALOG_CONNECTIONS__<NAME>__<SETTING>`` (``NAME`` is
case-insensitive; the connection's name is ``NAME`` lower-cased with ``_`` turned into ``-``).
``SETTING`` is any ``SMARTDIALOG_*`` setting without its prefix (it falls back to the app-wide
value; not the app's own, :data:`APP_WIDE`) or ``CUSTOMERS``; credentials,
``CUSTOMER_ID`` and ``SERVICE_ID`` belong to the account and never fall back.

Everything is read on first use (:func:`connections`), never at import. Configuration errors
(a malformed or unknown setting, duplicate names, a customer claimed twice, missing
credentials, two connections with the same upstream identity, ``DEFAULT`` named explicitly) are
reported by ``/api/health`` naming the connection; while any error that makes routing ambiguous
remains (:func:`routing_errors`), routing refuses with a 503 problem and queued sends wait.

Problems: ``UnknownConnection`` (400, ``X-SmartDialog-Connection``), ``CustomerNotServed`` (400,
``CustomerId``), ``ConnectionNotConfigured`` (503, a configuration error of it or of all).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared.names import DEFAULT_CONNECTION
from shared.problems import FieldError, Problem, ProblemType

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "CONNECTION_FIELD",
    "CONNECTION_HEADER",
    "DEFAULT_CONNECTION",
    "FIELD_PATTERN",
    "Connection",
    "ConnectionNotConfigured",
    "Connections",
    "CustomerNotServed",
    "UnknownConnection",
    "account_defaults",
    "claimed_by",
    "claims",
    "connection_errors",
    "connection_name",
    "connection_settings",
    "connections",
    "credentials_refused",
    "is_default",
    "list_connections",
    "missing_account_default",
    "name_error",
    "opt_out_keywords",
    "reset_connections_cache",
    "route",
    "routing_errors",
]

#: The HTTP header naming a request's connection (absent or empty: routed by Customer-Id).
CONNECTION_HEADER = "X-SmartDialog-Connection"
#: The field naming a queued command's connection (absent: routed as ``default``).
CONNECTION_FIELD = "Connection"
PREFIX = "SMARTDIALOG_CONNECTIONS__"
#: Keys read as connection settings: a misspelt one (azd's JSON too) is an error, not ignored.
_NEAR_PREFIX, _SETTING_PREFIX = "SMARTDIALOG_CONNECTION", "SMARTDIALOG_"
#: The account's own settings: never taken from the app-wide values.
OWN_SETTINGS = (
    "CLIENT_ID",
    "CLIENT_SECRET",
    "REFRESH_TOKEN",
    "ACCESS_TOKEN",
    "CUSTOMER_ID",
    "SERVICE_ID",
)
CUSTOMERS = "CUSTOMERS"
#: A connection's name: what the header, the queue field and Key Vault secret names can carry.
NAME_MAX_LENGTH = 64
#: A name as written: letters (either case), digits, '-' or '_' (read as '-'), starting with a
#: letter or digit; surrounding spaces, tabs and line breaks are not part of it.
_SPACE, _WORD = r"[ \t\n\r]*", r"[A-Za-z0-9][A-Za-z0-9_-]*"
_NAME = re.compile(_SPACE + _WORD + _SPACE)
#: The JSON-schema pattern of a queue message's ``Connection``: a name, or only whitespace (the
#: default, as earlier releases read it); with :data:`NAME_MAX_LENGTH`, exactly what is read.
FIELD_PATTERN = f"^(?:{_SPACE}{_WORD})?{_SPACE}$"
#: Settings of the app, not of an account: the URLs and tokens we hand out are checked by
#: functions that do not route (status, delivery-report and webhook URLs), the URLs we are
#: given are called by the app's dispatchers (their retries and timeout too), a body's size is
#: checked before routing, the operations page serves every connection, and a status poll (not
#: routed) re-signs its URL and sets its Retry-After from the app's settings; one tracer (its
#: sampler) serves the process.
APP_WIDE = (
    "CALLBACK_SECRETS",
    "PUBLIC_BASE_URL",
    "CALLBACK_ALLOWED_HOSTS",
    "MAX_REQUEST_BYTES",
    "DISPATCH_MAX_ATTEMPTS",
    "DISPATCH_RETRY_BASE_SECONDS",
    "CALLBACK_TIMEOUT_SECONDS",
    "OPS_ALLOWED_GROUPS",
    "OPS_ALLOWED_ROLES",
    "STATUS_TOKEN_TTL_SECONDS",
    "SEND_STATUS_RETRY_AFTER_SECONDS",
    "QUESTION_POLL_SECONDS",
    "TRACE_SAMPLING_RATIO",
)


class UnknownConnection(Problem):
    """400: the request names a connection this app does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(
            400,
            "The request is not valid",
            f"Correct these fields and send the request again: {CONNECTION_HEADER}.",
            type=ProblemType.VALIDATION,
            errors=[FieldError(CONNECTION_HEADER, f"No connection is named {name!r}.")],
        )


class CustomerNotServed(Problem):
    """400: the named connection does not serve the request's customer."""

    def __init__(self, connection: str, customer_id: str, field: str = "CustomerId") -> None:
        super().__init__(
            400,
            "The request is not valid",
            f"Correct these fields and send the request again: {field}.",
            type=ProblemType.VALIDATION,
            errors=[
                FieldError(
                    field,
                    f"Connection {connection} does not serve customer {customer_id}: name "
                    "another connection, or leave the connection out to route by customer.",
                )
            ],
        )


class ConnectionNotConfigured(Problem):
    """503: a connection (or all) is misconfigured; ``/api/health`` names the settings."""

    def __init__(self, what: str, errors: tuple[FieldError, ...]) -> None:
        super().__init__(
            503,
            "The app is not configured",
            f"{what} is not configured: fix these settings: "
            + ", ".join(dict.fromkeys(e.field for e in errors))
            + ".",
            type=ProblemType.CONFIGURATION,
            errors=errors,
        )


@dataclass(frozen=True)
class Connection:
    """One connection as configured: its settings (None when broken), its customers."""

    name: str
    #: ``SMARTDIALOG`` for the default, ``SMARTDIALOG_CONNECTIONS__<NAME>`` for others.
    setting_prefix: str
    settings: Settings | None
    #: The Customer-Ids it claims (a named connection's CUSTOMERS plus its CUSTOMER_ID).
    customers: tuple[str, ...] = ()
    errors: tuple[FieldError, ...] = ()
    #: Its stop and start keywords (its own or the app-wide), known even while another of its
    #: settings is broken: its inbound messages are read with them all the same.
    keywords: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    #: Its own CUSTOMER_ID and SERVICE_ID, known even while another of its settings is broken:
    #: a send that names neither is recorded with them while it waits for the connection.
    customer_id: str | None = None
    service_id: str | None = None


@dataclass(frozen=True)
class Connections:
    """Every connection, which connection claims each customer, and errors of the whole."""

    by_name: Mapping[str, Connection]
    claims: Mapping[str, str]
    #: Errors that make routing ambiguous (duplicates, double claims, shared identities).
    errors: tuple[FieldError, ...] = field(default=())

    def all_errors(self) -> list[FieldError]:
        """The errors of the whole and of every connection."""
        found = list(self.errors)
        for connection in self.by_name.values():
            found.extend(connection.errors)
        return found


def connection_name(raw: str) -> str:
    """The name of a connection as written in a setting, header or field."""
    return raw.strip().lower().replace("_", "-")


def name_error(raw: str) -> str | None:
    """What is wrong with ``raw`` as a connection's name (None: nothing): the rule of the names
    in settings, for the queue's ``Connection`` field too."""
    if len(raw.strip()) <= NAME_MAX_LENGTH and _NAME.fullmatch(raw):
        return None
    return (
        f"a name is 1-{NAME_MAX_LENGTH} letters, digits, '-' or '_', "
        "starting with a letter or digit"
    )


def is_default(name: str | None) -> bool:
    """Whether ``name`` (None: not given) is the default connection."""
    return name is None or not name.strip() or connection_name(name) == DEFAULT_CONNECTION


def connections() -> Connections:
    """The configured connections, read from the environment on first use and again whenever
    the settings or a connection setting change (raises ``SettingsInvalid``, a 503 problem,
    only when the app-wide settings do not validate)."""
    from shared.settings import get_settings

    near = _NEAR_PREFIX
    given = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(near)))
    return _parsed(get_settings(), given)


@lru_cache(maxsize=4)
def _parsed(base: Settings, given: tuple[tuple[str, str], ...]) -> Connections:
    return _parse(dict(given), base)


def reset_connections_cache() -> None:
    """Forget the parsed connections."""
    _parsed.cache_clear()


def connection_errors() -> list[FieldError]:
    """Every connection configuration error (for ``/api/health``); ``[]`` when all is well."""
    return connections().all_errors()


def routing_errors() -> tuple[FieldError, ...]:
    """The errors of the connections as a whole: while any remains, which account a request
    goes through is uncertain, so every HTTP action refuses (:func:`route`), no customer's
    claim routes a queued command (:func:`claimed_by`) and every queued send waits."""
    return connections().errors


def route(
    connection: str | None, customer_id: str | None, *, customer_field: str = "CustomerId"
) -> str:
    """The connection of a request: the one named (which must serve ``customer_id``, if
    given, else 400 naming ``customer_field``), else the one claiming ``customer_id``, else
    ``default``. Raises
    :class:`UnknownConnection`, :class:`CustomerNotServed` or :class:`ConnectionNotConfigured`."""
    found = connections()
    if found.errors:
        raise ConnectionNotConfigured("Connection routing", found.errors)
    customer = (customer_id or "").strip() or None
    if connection is not None and connection.strip():
        name = connection_name(connection)
        if name not in found.by_name:
            raise UnknownConnection(connection.strip())
        if customer is not None and found.claims.get(customer, DEFAULT_CONNECTION) != name:
            raise CustomerNotServed(name, customer, customer_field)
        return name
    if customer is not None:
        return found.claims.get(customer, DEFAULT_CONNECTION)
    return DEFAULT_CONNECTION


def claimed_by(customer_id: str) -> str | None:
    """The named connection claiming ``customer_id``, if any (None: the default serves it). A
    queued command that names no connection is routed with it, so while
    :func:`routing_errors` remain (a customer claimed twice, a mistyped key that may be a
    claim) this raises :class:`ConnectionNotConfigured` rather than guess."""
    found = connections()
    if found.errors:
        raise ConnectionNotConfigured("Connection routing", found.errors)
    name = found.claims.get(customer_id.strip())
    return None if is_default(name) else name


def claims(name: str, customer_id: str) -> bool:
    """Whether connection ``name``'s own settings claim ``customer_id``, whatever else is wrong
    with the settings (a command it was routed to stays its own while an error lasts)."""
    connection = None if is_default(name) else _known(name)
    return connection is not None and customer_id.strip() in connection.customers


def connection_settings(name: str | None = None) -> Settings:
    """The settings of connection ``name`` (None: default): the app-wide settings overlaid
    with its own, ``.connection`` its name. Raises :class:`UnknownConnection` or
    :class:`ConnectionNotConfigured`."""
    from shared.settings import get_settings

    if is_default(name):
        return get_settings()
    assert name is not None
    connection = _known(name)
    if connection is None:
        raise UnknownConnection(name)
    if connection.errors or connection.settings is None:
        raise ConnectionNotConfigured(f"Connection {connection.name}", connection.errors)
    return connection.settings


def credentials_refused(settings: Settings) -> Problem:
    """The 503 of credentials SmartDialog or its identity provider refused, naming the setting
    of ``settings``' connection that holds them."""
    from shared.settings import SettingsInvalid, refused_credentials

    connection = None if is_default(settings.connection) else _known(settings.connection)
    if connection is None:
        return SettingsInvalid([refused_credentials(settings)])
    who = f"Connection {connection.name}"
    error = refused_credentials(settings, f"{connection.setting_prefix}__", f"{who}: ")
    return ConnectionNotConfigured(who, (error,))


def opt_out_keywords(name: str | None, settings: Settings) -> tuple[frozenset[str], frozenset[str]]:
    """The stop and start keywords of an inbound message of connection ``name``: the
    connection's own (even while another of its settings is broken); ``settings``' (the app's)
    for the default and for a connection the app no longer has (its webhook URL still opens)."""
    if not is_default(name) and (connection := _known(name)) is not None:
        return connection.keywords
    return settings.stop_keyword_set, settings.start_keyword_set


def account_defaults(name: str | None) -> tuple[str | None, str | None]:
    """The default Customer-Id and Service-Id of connection ``name`` (None: default), known
    even while another of its settings is broken; ``(None, None)`` for a connection the app
    does not have."""
    connection = _known(name)
    if connection is None:
        return None, None
    return connection.customer_id, connection.service_id


def missing_account_default(name: str | None, *, service: bool = True) -> FieldError | None:
    """The error of connection ``name`` (None: default) for a queued send that names no customer
    (and, with ``service``, no service), a notification rule's: the setting its sender would
    fill it in from is not set, so the sender could only dead-letter it. None when both are
    there, or the app has no such connection (its sends fail ``connection-removed``)."""
    connection = _known(name)
    if connection is None:
        return None
    joint = "_" if connection.name == DEFAULT_CONNECTION else "__"  # SMARTDIALOG_CUSTOMER_ID
    needs = (("CUSTOMER_ID", connection.customer_id), ("SERVICE_ID", connection.service_id))
    for setting, value in needs if service else needs[:1]:
        if not (value or "").strip():
            return FieldError(
                f"{connection.setting_prefix}{joint}{setting}",
                f"Connection {connection.name}: {setting} is not set, and a notification rule's "
                f"sends name no {setting.replace('_ID', '').lower()} of their own.",
            )
    return None


def _known(name: str | None) -> Connection | None:
    """Connection ``name`` as configured, broken or not (None: the app has none of that name)."""
    key = DEFAULT_CONNECTION if is_default(name) else connection_name(str(name))
    return connections().by_name.get(key)


def list_connections(holding: Callable[[Connection], list[str]]) -> list[dict[str, Any]]:
    """Names, customers, defaults and the settings ``holding`` its sends of every connection
    (never a secret), default first."""
    listed: list[dict[str, Any]] = []
    for connection in connections().by_name.values():
        settings = connection.settings
        customers = list(connection.customers)
        if connection.name == DEFAULT_CONNECTION and settings and settings.customer_id:
            customers = [settings.customer_id]
        listed.append(
            {
                "Name": connection.name,
                "Customers": customers,
                "CustomerId": settings.customer_id if settings else connection.customer_id,
                "ServiceId": settings.service_id if settings else connection.service_id,
                "BrokenSettings": holding(connection) or None,
            }
        )
    return listed


# --- parsing -------------------------------------------------------------------------------------


def _parse(environ: Mapping[str, str], base: Settings) -> Connections:
    from shared.settings import Settings

    aliases = {
        str(info.alias)
        for info in Settings.model_fields.values()
        if str(info.alias).startswith(_SETTING_PREFIX)
    }
    errors: list[FieldError] = []
    given: dict[str, dict[str, str]] = {}  # name -> SETTING -> value
    spelled: dict[str, str] = {}  # name -> NAME as written
    for key in sorted(environ):
        if not key.upper().startswith(_NEAR_PREFIX):
            continue
        raw_name, sep, setting = key[len(PREFIX) :].partition("__")
        if not (key.upper().startswith(PREFIX) and sep and raw_name and setting) or "__" in setting:
            errors.append(
                FieldError(key, f"Not a connection setting: write {PREFIX}<NAME>__<SETTING>.")
            )
            continue
        name = connection_name(raw_name)
        if name == DEFAULT_CONNECTION:
            errors.append(
                FieldError(
                    key,
                    "Connection default: set it with the plain SMARTDIALOG_* settings, not "
                    f"{PREFIX}DEFAULT__*.",
                )
            )
            continue
        if wrong := name_error(name):
            errors.append(FieldError(key, f"Connection {name[:NAME_MAX_LENGTH]}: {wrong}."))
            continue
        first = spelled.setdefault(name, raw_name)
        if first != raw_name:
            errors.append(
                FieldError(
                    key,
                    f"Connection {name}: named twice ({PREFIX}{first} and {PREFIX}{raw_name}); "
                    "use one spelling.",
                )
            )
            continue
        given.setdefault(name, {})[setting.upper()] = environ[key]

    by_name: dict[str, Connection] = {
        DEFAULT_CONNECTION: Connection(
            DEFAULT_CONNECTION,
            "SMARTDIALOG",
            base,
            keywords=(base.stop_keyword_set, base.start_keyword_set),
            customer_id=base.customer_id,
            service_id=base.service_id,
        )
    }
    for name in sorted(given):
        by_name[name] = _connection(name, PREFIX + spelled[name], given[name], base, aliases)

    claims: dict[str, str] = {}
    for connection in by_name.values():
        for customer in connection.customers:
            other = claims.setdefault(customer, connection.name)
            if other != connection.name:
                errors.append(
                    FieldError(
                        f"{connection.setting_prefix}__{CUSTOMERS}",
                        f"Connection {connection.name}: customer {customer} is claimed by "
                        f"connection {other} too; a customer belongs to one connection.",
                    )
                )
    if base.customer_id and base.customer_id in claims:
        errors.append(
            FieldError(
                "SMARTDIALOG_CUSTOMER_ID",
                f"Connection default: its customer {base.customer_id} is claimed by connection "
                f"{claims[base.customer_id]}.",
            )
        )
    errors.extend(_shared_identities(by_name.values()))
    return Connections(by_name, claims, tuple(errors))


def _connection(
    name: str, prefix: str, given: Mapping[str, str], base: Settings, aliases: set[str]
) -> Connection:
    from pydantic import ValidationError

    from shared.settings import (
        Settings,
        error_message,
        error_setting,
        keyword_set,
        missing_credentials,
    )
    from shared.settings_leniency import base_values, refusing_like

    values, given_values = base_values(base), {}  # (one not valid in base: refused again below)
    for own in OWN_SETTINGS:
        values[_SETTING_PREFIX + own] = None
    errors: list[FieldError] = []
    customers: list[str] = []
    # Its own customer is its claim even when another of its settings is wrong: its requests
    # then get its 503, never the default account.
    if own_customer := (given.get("CUSTOMER_ID") or "").strip():
        customers.append(own_customer)
    for setting, value in given.items():
        if setting == CUSTOMERS:
            customers.extend(c.strip() for c in value.split(",") if c.strip())
        elif setting in APP_WIDE and value.strip():  # empty: not given, as everywhere
            errors.append(
                FieldError(
                    f"{prefix}__{setting}",
                    f"Connection {name}: {setting} is app-wide: set SMARTDIALOG_{setting} only.",
                )
            )
        elif _SETTING_PREFIX + setting in aliases:
            if value.strip():  # empty: not given (as the app-wide settings)
                values[_SETTING_PREFIX + setting] = given_values[_SETTING_PREFIX + setting] = value
        else:
            errors.append(
                FieldError(
                    f"{prefix}__{setting}",
                    f"Connection {name}: {setting} is not a setting (SMARTDIALOG_{setting} "
                    "does not exist).",
                )
            )
    try:
        settings: Settings | None = refusing_like(base, Settings(**values), set(given_values))
    except ValidationError as exc:
        settings = None
        for error in exc.errors(include_url=False, include_input=False):
            alias = error_setting(error)
            setting_name = alias.removeprefix(_SETTING_PREFIX)
            message = f"Connection {name}: {error_message(error)}"
            errors.append(FieldError(f"{prefix}__{setting_name}", message))
    if settings is not None:
        settings._connection = name
        missing = missing_credentials(settings, f"{prefix}__", f"Connection {name}: ")
        if missing is not None:
            errors.append(missing)
    keywords = (
        keyword_set(str(values["SMARTDIALOG_STOP_KEYWORDS"])),
        keyword_set(str(values["SMARTDIALOG_START_KEYWORDS"])),
    )
    own_service = (given.get("SERVICE_ID") or "").strip() or None
    return Connection(
        name,
        prefix,
        settings,
        tuple(dict.fromkeys(customers)),
        tuple(errors),
        keywords,
        customer_id=settings.customer_id if settings else own_customer or None,
        service_id=settings.service_id if settings else own_service,
    )


def _identity(settings: Settings) -> str | None:
    """Who upstream sees (and throttles as one): the static token; a client (a GUID: any case)
    at its authority ("?" while it does not validate, read leniently); for delegated sign-in the
    user too, as a hash of the refresh token. Never a secret; None without usable credentials."""
    from shared.settings import SettingsInvalid

    kind = settings.credentials  # a property that checks every secret: read once
    if kind == "access-token":
        assert settings.access_token is not None
        return "token:" + _digest(settings.access_token.get_secret_value())
    if kind is None or not settings.client_id:
        return None
    try:
        authority = settings.authority.lower()
    except SettingsInvalid:  # (its sends refuse it)
        authority = "?"
    client = f"client:{authority}\n{settings.client_id.strip().lower()}"
    if kind == "refresh-token":
        assert settings.refresh_token is not None
        return f"{client}\nuser:{_digest(settings.refresh_token.get_secret_value())}"
    return client


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _shared_identities(listed: Any) -> list[FieldError]:
    seen: dict[str, Connection] = {}
    errors: list[FieldError] = []
    for connection in listed:
        if connection.settings is None:
            continue
        identity = _identity(connection.settings)
        if identity is None:
            continue
        other = seen.setdefault(identity, connection)
        if other is not connection:
            errors.append(
                FieldError(
                    connection.setting_prefix,
                    f"Connection {connection.name}: same upstream identity as connection "
                    f"{other.name} (the same access token; or the same client id and authority, "
                    "and for delegated sign-in the same refresh token), which "
                    "SmartDialog would throttle as one; give each its own account.",
                )
            )
    return errors
