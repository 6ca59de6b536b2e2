"""SMS part estimates after ``$(name)`` personalization (3GPP TS 23.038, the old GSM 03.38).

A text that the GSM 7-bit default alphabet can carry costs one septet per character and two
for a character of the extension table (it is sent as ESC + character); anything else is
sent as UCS-2 and costs one UTF-16 code unit per character (two outside the BMP). One part
holds 160 septets or 70 code units; a concatenated message spends part of every part on the
user-data header, leaving 153 septets or 67 code units, and never splits an escape pair or a
surrogate pair across parts. The alphabet itself comes from the maintained ``gsm0338`` codec.

The estimate is what we store and report before upstream answers; SmartDialog's own
``MessagePartCount`` replaces it once the message is sent.

Characters outside the alphabet are not downgraded. Many providers send a character the GSM
alphabet lacks as a look-alike it has (``ç`` as ``Ç``, 0x09; ``ñ`` is in it, ``ő`` as ``ö``)
and keep GSM-7; whether SmartDialog does, and for which characters, is not published, and we
send the caller's text unchanged. So a text with ``ç`` is estimated as UCS-2 (70/67 units a
part): an upper bound, never fewer parts than upstream will count, and upstream's own count
replaces it once sent. ``Ç`` itself is in the alphabet and costs one septet.
"""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "GSM7_CONCATENATED_PART_SEPTETS",
    "GSM7_SINGLE_PART_SEPTETS",
    "PLACEHOLDER",
    "UCS2_CONCATENATED_PART_UNITS",
    "UCS2_SINGLE_PART_UNITS",
    "SmsEncoding",
    "SmsEstimate",
    "estimate",
    "estimate_message",
    "message_part_count",
    "personalize",
]

#: Septets in a single-part GSM 7-bit message.
GSM7_SINGLE_PART_SEPTETS = 160
#: Septets per part of a concatenated GSM 7-bit message (7 septets go to the UDH).
GSM7_CONCATENATED_PART_SEPTETS = 153
#: UTF-16 code units in a single-part UCS-2 message.
UCS2_SINGLE_PART_UNITS = 70
#: UTF-16 code units per part of a concatenated UCS-2 message.
UCS2_CONCATENATED_PART_UNITS = 67

#: A personalization placeholder, ``$(name)``, filled from ``Recipients[].Personalization``.
PLACEHOLDER = re.compile(r"\$\((\w+)\)")


class SmsEncoding(enum.StrEnum):
    """How the text travels: GSM 7-bit default alphabet or UCS-2."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True)
class SmsEstimate:
    """The encoding, the size in septets (GSM-7) or code units (UCS-2), and the part count."""

    encoding: SmsEncoding
    units: int
    parts: int


@lru_cache(maxsize=1)
def _gsm_codec() -> Any:
    # gsm0338 ships no type information; imported by name so mypy --strict needs no override.
    return importlib.import_module("gsm0338").Codec()


def _septets(char: str) -> int | None:
    """Septets for one character in the GSM 7-bit alphabet, or None if it has none."""
    try:
        encoded, _ = _gsm_codec().encode(char)
    except UnicodeEncodeError:
        return None
    return len(encoded)


def _pack(costs: Iterable[int], single: int, concatenated: int) -> int:
    """Parts needed for characters of the given costs; a character never straddles parts."""
    sizes = list(costs)
    total = sum(sizes)
    if total <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > concatenated:
            parts, used = parts + 1, 0
        used += size
    return parts


def estimate(text: str) -> SmsEstimate:
    """The encoding, size and part count of ``text`` as an SMS (an empty text is one part)."""
    septets = [_septets(char) for char in text]
    if all(size is not None for size in septets):
        gsm = [size for size in septets if size is not None]
        parts = _pack(gsm, GSM7_SINGLE_PART_SEPTETS, GSM7_CONCATENATED_PART_SEPTETS)
        return SmsEstimate(SmsEncoding.GSM7, sum(gsm), parts)
    units = [len(char.encode("utf-16-le")) // 2 for char in text]
    parts = _pack(units, UCS2_SINGLE_PART_UNITS, UCS2_CONCATENATED_PART_UNITS)
    return SmsEstimate(SmsEncoding.UCS2, sum(units), parts)


def personalize(content: str, values: Mapping[str, object] | None) -> str:
    """``content`` with every ``$(name)`` replaced by ``values[name]``.

    A placeholder without a value becomes empty, as the sandbox does; upstream's exact rule
    is not published, so estimates for incomplete personalization are approximate.
    """
    found = values or {}

    def fill(match: re.Match[str]) -> str:
        value = found.get(match.group(1))
        return "" if value is None else str(value)

    return PLACEHOLDER.sub(fill, content)


def estimate_message(
    content: str, personalizations: Iterable[Mapping[str, object] | None]
) -> list[SmsEstimate]:
    """One estimate per recipient, after filling that recipient's placeholders."""
    return [estimate(personalize(content, values)) for values in personalizations]


def message_part_count(
    content: str, personalizations: Iterable[Mapping[str, object] | None]
) -> int:
    """The most parts any recipient's text needs (at least 1): the message's part count."""
    estimates = estimate_message(content, personalizations)
    return max((e.parts for e in estimates), default=estimate(content).parts)
