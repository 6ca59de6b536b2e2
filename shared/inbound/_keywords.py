"""Opt-out keywords: whether an inbound message is a STOP or a START."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from shared.connections import opt_out_keywords
from shared.messages import normalize_reply

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["OptOutKeyword", "classify_keyword", "connection_keyword", "keyword_text"]

OptOutKeyword = Literal["stop", "start"]


def classify_keyword(
    content: str, stop: Iterable[str], start: Iterable[str]
) -> OptOutKeyword | None:
    """``"stop"`` when the whole message is a stop keyword, ``"start"`` for a start keyword,
    else None. Compared :func:`~shared.messages.normalize_reply` (case, width, invisible
    characters, surrounding blanks and punctuation ignored); a keyword inside a longer message
    ("please stop calling") is not one (carriers' rule: the keyword alone)."""
    word = normalize_reply(content)
    if not word:
        return None
    if word in {normalize_reply(k) for k in stop}:
        return "stop"
    if word in {normalize_reply(k) for k in start}:
        return "start"
    return None


def connection_keyword(
    content: str, connection: str | None, settings: Settings
) -> OptOutKeyword | None:
    """:func:`classify_keyword` with the keywords of the message's connection (``connection``;
    None: the default), as :func:`shared.connections.opt_out_keywords` gives them."""
    return classify_keyword(content, *opt_out_keywords(connection, settings))


def keyword_text(content: str) -> str:
    """The keyword as stored with a suppression and given to the opt-out trigger: the message's
    words upper-cased, blanks folded, cut to 64 characters."""
    return " ".join(content.split()).upper()[:64]
