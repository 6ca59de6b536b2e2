"""``local.settings.json`` the way ``func start`` reads it: its ``Values`` become environment
variables, and a variable already set in the environment wins."""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["apply_local_settings", "read_local_settings"]


def read_local_settings(path: str | Path) -> dict[str, Any]:
    """The parsed file; raises ValueError with the path if it is not valid JSON."""
    file = Path(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return doc


def apply_local_settings(
    path: str | Path, environ: MutableMapping[str, str] | None = None
) -> list[str]:
    """Copy ``Values`` into ``environ`` (default ``os.environ``) without overwriting; returns the
    names that were set from the file."""
    env = os.environ if environ is None else environ
    values = read_local_settings(path).get("Values") or {}
    applied: list[str] = []
    for name, value in values.items():
        if name not in env and value is not None:
            env[name] = str(value)
            applied.append(name)
    return applied
