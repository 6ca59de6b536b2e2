"""SMS part counting (GSM 03.38 / 3GPP TS 23.038) and ``$(name)`` personalization, as the sandbox
reports them.

A message that fits the GSM-7 default alphabet costs one septet per character, two for characters
of the extension table; anything else is sent as UCS-2 and costs one UTF-16 code unit per character
(two for characters outside the BMP). A single part holds 160 septets or 70 code units; a
concatenated message loses the user-data header, so each part holds 153 septets or 67 code units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = [
    "GSM7_MULTIPART",
    "GSM7_SINGLE",
    "UCS2_MULTIPART",
    "UCS2_SINGLE",
    "part_count",
    "personalize",
]

GSM7_SINGLE = 160
GSM7_MULTIPART = 153
UCS2_SINGLE = 70
UCS2_MULTIPART = 67

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

PLACEHOLDER = re.compile(r"\$\((\w+)\)")


def personalize(content: str, values: Mapping[str, object] | None) -> str:
    """Fill ``$(name)`` placeholders from ``values``; one without a value becomes empty."""
    found = values or {}
    return PLACEHOLDER.sub(
        lambda m: "" if found.get(m.group(1)) is None else str(found.get(m.group(1))), content
    )


def part_count(text: str) -> int:
    """Number of SMS parts needed for ``text`` (at least 1)."""
    septets = 0
    for char in text:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENSION:
            septets += 2
        else:
            units = len(text.encode("utf-16-le")) // 2
            return 1 if units <= UCS2_SINGLE else math.ceil(units / UCS2_MULTIPART)
    return 1 if septets <= GSM7_SINGLE else math.ceil(septets / GSM7_MULTIPART)
