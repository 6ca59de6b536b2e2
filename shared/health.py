"""What ``/api/health`` checks: the settings every function needs, read as the functions read
them, without touching storage or SmartDialog.

A configuration error is reported on first use, never at import: a setting that does not
validate, no SmartDialog credentials, callback secrets that are missing or shorter than 32
bytes, no public base URL outside local development, no storage setting or one the storage SDK
cannot read (its clients are built, not called), or a named connection's error
(:mod:`shared.connections`). The functions that need the setting answer the same 503 problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.problems import FieldError, Problem

if TYPE_CHECKING:
    from shared.connections import Connection
    from shared.settings import Settings

__all__ = [
    "configuration_problem",
    "holding",
    "send_blockers",
    "settings_errors",
    "storage_errors",
    "telemetry_errors",
]


def settings_errors(settings: Settings) -> list[FieldError]:
    """What is wrong with settings that validated (``field``: the setting, never its value):
    no SmartDialog credentials, callback secrets missing or too short, or no public URL that
    can be told. The senders check this before sending. A check that reads a setting that
    does not validate (:mod:`shared.settings_leniency`) is passed over: that one is named."""
    from shared.settings import PublicUrlNotConfigured, SettingsInvalid, missing_credentials
    from shared.signing import secrets_problem

    def credentials() -> list[FieldError]:
        if settings.named_connection is not None:  # a named connection's are its own errors
            return []
        missing = missing_credentials(settings)
        return [] if missing is None else [missing]

    def secrets() -> list[FieldError]:
        problem = secrets_problem(settings.callback_secret_list)
        return [] if problem is None else list(problem.errors)

    def public_url() -> list[FieldError]:
        try:
            settings.api_base_url  # noqa: B018 - raises when no public URL can be told
        except PublicUrlNotConfigured as exc:
            return [FieldError("SMARTDIALOG_PUBLIC_BASE_URL", exc.detail or exc.title)]
        return []

    errors: list[FieldError] = []
    for check in (credentials, secrets, public_url):
        try:
            errors += check()
        except SettingsInvalid:
            continue
    return errors


def send_blockers(settings: Settings) -> list[FieldError]:
    """What holds the sends made with ``settings``: :func:`settings_errors`, the app's routing
    errors, and settings held at their defaults (a lenient function's, :func:`refused_errors`)."""
    from shared.connections import routing_errors
    from shared.settings_leniency import refused_errors

    return [*settings_errors(settings), *routing_errors(), *refused_errors(settings)]


def holding(connection: Connection) -> list[str]:
    """The settings that hold ``connection``'s sends, by name: those of the app that do not
    validate (run leniently: :mod:`shared.settings_leniency`), its own errors, and
    :func:`send_blockers` of its settings."""
    from shared.connections import routing_errors
    from shared.settings import SettingsInvalid, get_settings
    from shared.settings_leniency import refused_errors

    try:
        errors = refused_errors(get_settings())
    except SettingsInvalid as problem:  # (not run leniently)
        errors = list(problem.errors)
    errors += connection.errors
    settings = connection.settings
    errors += routing_errors() if settings is None else send_blockers(settings)
    return list(dict.fromkeys(e.field for e in errors))


def configuration_problem() -> Problem | None:
    """A 503 problem listing every configuration error (``errors[].field``: the setting), or
    None when the app is configured. Settings that do not validate come first, then what is
    wrong with the rest, read as the functions that run leniently read them
    (:mod:`shared.settings_leniency`): fixing one setting never just reveals the next."""
    from shared.connections import connection_errors
    from shared.settings import SettingsInvalid, get_settings
    from shared.settings_leniency import leniently, refused_errors

    with leniently():
        try:
            settings = get_settings()
        except SettingsInvalid as problem:  # the rest do not validate either
            return problem
        errors = refused_errors(settings)
        every = (settings_errors, storage_errors, telemetry_errors, lambda _: connection_errors())
        for check in every:
            try:
                errors += check(settings)
            except SettingsInvalid:  # it read a setting listed above
                continue
    return SettingsInvalid(errors) if errors else None


def telemetry_errors(settings: Settings) -> list[FieldError]:
    """What keeps traces and metrics from Application Insights (health only: no function needs
    them, and with a connection string the exporter refuses they are off, one error logged):
    ``APPLICATIONINSIGHTS_CONNECTION_STRING`` as the exporter's own parser reads it."""
    if (text := settings.applicationinsights_connection_string) is None:
        return []
    try:  # the exporter's own reading (not public API: without it, nothing is checked)
        from azure.monitor.opentelemetry.exporter._connection_string_parser import (
            ConnectionStringParser,
        )
    except ImportError:
        return []
    try:
        ConnectionStringParser(text)
    except ValueError as exc:  # its words name no part of the value
        why = f"the exporter refuses it ({exc}): telemetry is off."
        return [FieldError("APPLICATIONINSIGHTS_CONNECTION_STRING", why)]
    return []


def storage_errors(settings: Settings) -> list[FieldError]:
    """What keeps ``settings`` from the storage account's table, queue and blob services, each
    naming its setting, never its value: their clients are built (and cached), not called."""
    from shared import storage

    errors: list[FieldError] = []
    for service in (storage.table_service, storage.queue_service, storage.blob_service):
        try:
            service(settings)
        except storage.StorageNotConfigured as problem:  # whatever kept a client from being built
            errors.extend(e for e in problem.errors if e.field not in {f.field for f in errors})
    return errors
