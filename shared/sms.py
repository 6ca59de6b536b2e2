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
import unicodedata
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

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
    "personalized_lengths",
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
def _gsm_alphabet() -> tuple[re.Pattern[str], dict[int, str]]:
    """A pattern matching a character outside the GSM 7-bit alphabet, and each character of it
    mapped to its cost in septets (as a one-character string, for ``str.translate``)."""
    charset = importlib.import_module("gsm0338.charset")  # untyped; as gsm0338's codec reads it
    chars = {
        unicodedata.lookup(name)
        for table in (charset.BASIC_CHARACTER_SET, charset.BASIC_CHARACTER_SET_EXTENSION)
        for name in table.values()
    }
    codec = importlib.import_module("gsm0338").Codec()  # the cost of each, as the codec encodes
    costs = {ord(char): chr(len(codec.encode(char)[0])) for char in chars}
    outside = re.compile("[^" + "".join(re.escape(char) for char in sorted(chars)) + "]")
    return outside, costs


#: A character outside the BMP: two UTF-16 code units (a surrogate pair).
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _pack(costs: bytes, single: int, concatenated: int) -> int:
    """Parts needed for characters of the given costs; a character never straddles parts."""
    if costs.count(1) == len(costs):  # one unit each (most texts): nothing to straddle
        return 1 if len(costs) <= single else -(-len(costs) // concatenated)
    ends = list(accumulate(costs, initial=0))  # ends[i]: the units before character i
    if ends[-1] <= single:
        return 1
    parts = at = 0
    while at < len(costs):  # each part ends after the last character that fits it whole
        at = bisect_right(ends, ends[at] + concatenated) - 1
        parts += 1
    return parts


def estimate(text: str) -> SmsEstimate:
    """The encoding, size and part count of ``text`` as an SMS (an empty text is one part)."""
    outside, septets = _gsm_alphabet()
    if outside.search(text) is None:
        costs = text.translate(septets).encode("latin-1")
        parts = _pack(costs, GSM7_SINGLE_PART_SEPTETS, GSM7_CONCATENATED_PART_SEPTETS)
        return SmsEstimate(SmsEncoding.GSM7, sum(costs), parts)
    if _ASTRAL.search(text) is None:
        costs = bytes([1]) * len(text)
    else:
        costs = bytes(1 if ord(char) < 0x10000 else 2 for char in text)
    parts = _pack(costs, UCS2_SINGLE_PART_UNITS, UCS2_CONCATENATED_PART_UNITS)
    return SmsEstimate(SmsEncoding.UCS2, sum(costs), parts)


def personalize(content: str, values: Mapping[str, object] | None) -> str:
    """``content`` with every ``$(name)`` replaced by ``values[name]``.

    A placeholder without a value becomes empty, as the sandbox does; upstream's exact rule
    is not published, so estimates for incomplete personalization are approximate.
    """
    found = values or {}
    return PLACEHOLDER.sub(lambda match: _filling(found.get(match.group(1))), content)


def _filling(value: object) -> str:
    """What a placeholder becomes: its value as text (none: empty)."""
    return "" if value is None else str(value)


def personalized_lengths(
    content: str, personalizations: Iterable[Mapping[str, object] | None]
) -> Iterator[int]:
    """The length of ``content`` filled in by :func:`personalize` with each of
    ``personalizations``, counted without filling it in (a long value in many placeholders
    would make a text as long as their product)."""
    uses = Counter(PLACEHOLDER.findall(content))
    fixed = len(content) - sum(len(match.group(0)) for match in PLACEHOLDER.finditer(content))
    for values in personalizations:
        found = values or {}
        yield fixed + sum(count * len(_filling(found.get(name))) for name, count in uses.items())


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
