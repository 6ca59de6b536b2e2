"""Settings for the functions that need only some of them.

While a setting does not validate, most functions answer the 503 problem naming it before they
do anything (:func:`shared.settings.get_settings` raises), so a broken setting never stops one
halfway. A few run *leniently* (:func:`leniently`): SmartDialog's callbacks (inbound messages,
delivery reports), the status URLs, the ops page and the dead-letter and connection lists. They
keep working through a broken setting they do not read: the settings they get hold the broken
ones at their defaults, and refuse to be read there (:class:`PartlySettings`: reading one
raises the same :class:`~shared.settings.SettingsInvalid`, naming it). So a typo in
``SMARTDIALOG_QUOTA_CALLS`` holds the sends, not SmartDialog's callbacks or the operator's
tools to look at what waits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr, ValidationError

from shared.settings import HELD_SETTINGS, Settings, SettingsInvalid, get_settings

if TYPE_CHECKING:
    from shared.problems import FieldError

__all__ = [
    "PartlySettings",
    "base_values",
    "leniently",
    "partly",
    "refused_errors",
    "refusing_like",
]


@contextmanager
def leniently() -> Iterator[None]:
    """Within: :func:`~shared.settings.get_settings` answers :func:`partly` valid settings
    instead of raising while some setting does not validate (if the rest do, with it at its
    default: else it raises as ever)."""
    token = HELD_SETTINGS.set(HELD_SETTINGS.get() or _held())
    try:
        yield
    finally:
        HELD_SETTINGS.reset(token)


def _held() -> Settings | None:
    """The settings to run leniently with: None while they all validate (get_settings answers
    them) or when the rest do not validate either (it raises)."""
    try:
        get_settings()
        return None
    except SettingsInvalid:
        pass
    try:
        Settings()
        return None  # (fixed meanwhile)
    except ValidationError as exc:
        try:
            return partly(exc)
        except SettingsInvalid:
            return None


class PartlySettings(Settings):
    """Settings some of which did not validate: those hold their defaults and raise
    :class:`~shared.settings.SettingsInvalid` (naming them) when read."""

    _refused: dict[str, tuple[FieldError, ...]] = PrivateAttr(default_factory=dict)

    def __getattribute__(self, name: str) -> Any:
        if name[:1] != "_":
            private = object.__getattribute__(self, "__pydantic_private__")
            if private and (errors := private["_refused"].get(name)):
                raise SettingsInvalid(list(errors))
        return super().__getattribute__(name)

    def refused(self) -> dict[str, tuple[FieldError, ...]]:
        """The broken settings (by attribute) and their errors."""
        return dict(self._refused)


def refused_errors(settings: Settings) -> list[FieldError]:
    """The errors of the settings ``settings`` hold at their defaults (none unless
    :class:`PartlySettings`)."""
    if not isinstance(settings, PartlySettings):
        return []
    return [e for errors in settings.refused().values() for e in errors]


def partly(exc: ValidationError) -> Settings:
    """The settings of the environment with those ``exc`` refuses at their defaults, refusing
    to be read there; raises :class:`~shared.settings.SettingsInvalid` as the settings as a
    whole would when that is not enough (a rule across settings, a required one)."""
    problem = SettingsInvalid.of(exc)
    by_alias = {str(info.alias): (name, info) for name, info in Settings.model_fields.items()}
    if not problem.errors or any(e.field not in by_alias for e in problem.errors):
        raise problem from None
    defaults = {
        e.field: by_alias[e.field][1].get_default(call_default_factory=True) for e in problem.errors
    }
    try:
        valid = Settings(**defaults)
    except ValidationError:
        raise problem from None
    refused: dict[str, tuple[FieldError, ...]] = {}
    for error in problem.errors:
        attribute = by_alias[error.field][0]
        refused[attribute] = (*refused.get(attribute, ()), error)
    return _refusing(valid, refused)


def base_values(base: Settings) -> dict[str, Any]:
    """``base``'s values by alias, broken ones (:class:`PartlySettings`) at their defaults."""
    return {str(info.alias): base.__dict__[name] for name, info in Settings.model_fields.items()}


def refusing_like(base: Settings, derived: Settings, own: set[str]) -> Settings:
    """``derived`` (settings made from ``base``'s values and its own ``own`` aliases) refusing
    what ``base`` refuses but for the settings it gives itself."""
    if not isinstance(base, PartlySettings):
        return derived
    by_name = {name: str(info.alias) for name, info in Settings.model_fields.items()}
    kept = {n: e for n, e in base.refused().items() if by_name[n] not in own}
    return _refusing(derived, kept) if kept else derived


def _refusing(valid: Settings, refused: dict[str, tuple[FieldError, ...]]) -> Settings:
    held = PartlySettings.model_construct(_fields_set=valid.model_fields_set, **valid.__dict__)
    held._refused = refused
    return held
