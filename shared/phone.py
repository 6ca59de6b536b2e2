"""Phone numbers: parse what a flow author typed, hand SmartDialog one canonical form.

Every phone number we accept (group-contact phones, WhatsApp senders, recipients and identity
numbers, Call-button data) goes through :func:`parse_phone_number`, which uses Google's
``phonenumbers`` library, never a hand-written pattern. Numbers are interpreted in the given
regions in order (ISO 3166-1 alpha-2 codes, as the certified connector's
``phoneNumberRegions`` / ``Region`` fields carry them); the first region in which the number is
valid wins; with no region, :data:`DEFAULT_REGION` (Finland, as upstream) applies. Numbers in
international form (``+46 70 123 45 67``) are valid whatever the regions.

The result is **E.164** (``+358401234567``): this is the form we pass upstream, in paths and in
bodies, so SmartDialog never has to guess a region again.

For logs use :func:`mask_phone_number` (the client's one masking style, ``***4567``); whole
numbers never appear in a log line.
``phonenumbers`` is imported on first use (cold start).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache, lru_cache

__all__ = [
    "DEFAULT_REGION",
    "MAX_REGIONS",
    "InvalidPhoneNumber",
    "InvalidRegion",
    "calling_code",
    "extra_charge",
    "is_calling_code",
    "is_region",
    "mask_phone_number",
    "normalize_region",
    "parse_phone_number",
]

#: The region numbers without a country code are read in when the caller names none (upstream's).
DEFAULT_REGION = "FI"
#: The most regions a caller's list may hold (``phoneNumberRegions``), and a refusal names.
MAX_REGIONS = 10
#: E.164 caps a number at 15 digits; with ``+``, separators and slack no real input is longer.
MAX_INPUT_LENGTH = 40


class InvalidPhoneNumber(ValueError):
    """The text is not a valid phone number in any of the given regions."""


class InvalidRegion(ValueError):
    """The text is not a region code ``phonenumbers`` knows (ISO 3166-1 alpha-2, e.g. ``FI``)."""


@cache
def _supported_regions() -> frozenset[str]:
    import phonenumbers

    return frozenset(phonenumbers.SUPPORTED_REGIONS)


def is_region(code: str) -> bool:
    """True when ``code`` (any case) is a region code phone numbers can be parsed in."""
    return code.strip().upper() in _supported_regions()


def normalize_region(code: str) -> str:
    """``code`` upper-cased and checked; raises :class:`InvalidRegion`."""
    region = code.strip().upper()
    if region not in _supported_regions():
        raise InvalidRegion(
            f"'{code[:10]}' is not a phone number region; use a 2-letter country code such as FI."
        )
    return region


#: A number's RFC 3966 prefix, which the library reads (its only letters a number may have).
_TEL = re.compile(r"^\s*tel:", re.IGNORECASE)
_NOT_A_NUMBER = (
    "A phone number has no letters or extension (the number without them would be another "
    "number); give it in international form, e.g. +358401234567."
)


def parse_phone_number(text: str, regions: Iterable[str] = ()) -> str:
    """``text`` as an E.164 number, read in ``regions`` in order (default :data:`DEFAULT_REGION`),
    each once (a region given again is not tried again).

    Raises :class:`InvalidPhoneNumber` with a message fit for the flow author (it quotes no
    more of the number than they typed), or :class:`InvalidRegion` for an unknown region.
    """
    candidates = tuple(dict.fromkeys(normalize_region(r) for r in regions)) or (DEFAULT_REGION,)
    raw = text.strip()
    if not raw:
        raise InvalidPhoneNumber("Empty: give a phone number such as +358401234567.")
    if len(raw) > MAX_INPUT_LENGTH:
        raise InvalidPhoneNumber(f"Too long to be a phone number ({len(raw)} characters).")
    if any(c.isalpha() for c in _TEL.sub("", raw, count=1)):
        # The library reads past what it does not understand: "+358401234567/../x" or
        # "+358 40 FLOWERS" would be some number, a DeleteGroupContact of another one.
        raise InvalidPhoneNumber(_NOT_A_NUMBER)
    return _e164(raw, candidates)


@lru_cache(maxsize=4096)
def _e164(raw: str, candidates: tuple[str, ...]) -> str:
    """The E.164 form of checked ``raw``, read in ``candidates``: remembered (a rule's listed
    numbers are read for each event, ~40 µs a read; what raises is read again each time)."""
    import phonenumbers

    for region in candidates:
        try:
            number = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            continue
        if number.extension:  # "... ext. 5", "...x99" (letters were refused) or ";ext=5"
            raise InvalidPhoneNumber(_NOT_A_NUMBER)
        if phonenumbers.is_valid_number(number):
            return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    more = len(candidates) - MAX_REGIONS
    where = ", ".join(candidates[:MAX_REGIONS]) + (f" and {more} more" if more > 0 else "")
    raise InvalidPhoneNumber(
        f"Not a valid phone number (read in region {where}); "
        "give it in international form, e.g. +358401234567."
    )


@cache
def _calling_codes() -> frozenset[int]:
    import phonenumbers

    return frozenset(phonenumbers.supported_calling_codes())


def is_calling_code(code: int) -> bool:
    """True when ``code`` is a country calling code numbers have (``358``; the non-geographic
    ones such as ``800`` too). Real codes are prefix-free; ``35`` is none."""
    return code in _calling_codes()


def calling_code(number: str) -> int:
    """The country calling code of E.164 ``number`` (one :func:`parse_phone_number` gave)."""
    import phonenumbers

    return phonenumbers.parse(number).country_code or 0


def extra_charge(number: str) -> str | None:
    """``"premium-rate"`` or ``"shared-cost"`` when E.164 ``number`` is such a number by the
    library's tables (the sender pays more, its owner gets a share), else None."""
    import phonenumbers

    kinds = {
        phonenumbers.PhoneNumberType.PREMIUM_RATE: "premium-rate",
        phonenumbers.PhoneNumberType.SHARED_COST: "shared-cost",
    }
    return kinds.get(phonenumbers.number_type(phonenumbers.parse(number)))


def mask_phone_number(number: str) -> str:
    """The number masked for logs (``***4567``): :func:`shared.smartdialog.mask_phone_number`.

    Kept here for callers that parse and mask side by side; there is one masking style, and it
    lives with the client (imported on first use, so importing this module stays cheap).
    """
    from shared.smartdialog import mask_phone_number as mask

    return mask(number)
