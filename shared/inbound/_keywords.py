"""Opt-out keywords: whether an inbound message is a STOP or a START."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from shared.connections import opt_out_keywords

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["OptOutKeyword", "classify_keyword", "connection_keyword"]

OptOutKeyword = Literal["stop", "start"]


def _normalised(text: str) -> str:
    """``text`` as keywords are compared: NFKC (fullwidth letters, "…" as "..."), without
    invisible format characters (zero-width space or joiner, BOM: Unicode category Cf),
    blanks and punctuation (categories P*: "Stop!", «STOP») trimmed from both ends, inner
    blanks single, case folded."""
    nfkc = unicodedata.normalize("NFKC", text)
    kept = [c for c in nfkc if unicodedata.category(c) != "Cf"]
    while kept and _edge(kept[-1]):
        kept.pop()
    first = next((i for i, c in enumerate(kept) if not _edge(c)), len(kept))
    return " ".join("".join(kept[first:]).split()).casefold()


def _edge(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def classify_keyword(
    content: str, stop: Iterable[str], start: Iterable[str]
) -> OptOutKeyword | None:
    """``"stop"`` when the whole message is a stop keyword, ``"start"`` for a start keyword,
    else None. Compared :func:`_normalised` (case, width, invisible characters, surrounding
    blanks and punctuation ignored); a keyword inside a longer message ("please stop calling")
    is not one (carriers' rule: the keyword alone)."""
    word = _normalised(content)
    if not word:
        return None
    if word in {_normalised(k) for k in stop}:
        return "stop"
    if word in {_normalised(k) for k in start}:
        return "start"
    return None


def connection_keyword(
    content: str, connection: str | None, settings: Settings
) -> OptOutKeyword | None:
    """:func:`classify_keyword` with the keywords of the message's connection (``connection``;
    None: the default), as :func:`shared.connections.opt_out_keywords` gives them."""
    return classify_keyword(content, *opt_out_keywords(connection, settings))
