"""SMS part estimates (3GPP TS 23.038): table-driven."""

from __future__ import annotations

import pytest

from shared.sms import (
    GSM7_CONCATENATED_PART_SEPTETS,
    GSM7_SINGLE_PART_SEPTETS,
    UCS2_CONCATENATED_PART_UNITS,
    UCS2_SINGLE_PART_UNITS,
    SmsEncoding,
    estimate,
    message_part_count,
    personalize,
    personalized_lengths,
)

GSM, UCS = SmsEncoding.GSM7, SmsEncoding.UCS2


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"),
    [
        ("", GSM, 0, 1),
        ("Hello", GSM, 5, 1),
        ("a" * GSM7_SINGLE_PART_SEPTETS, GSM, 160, 1),
        ("a" * (GSM7_SINGLE_PART_SEPTETS + 1), GSM, 161, 2),
        ("a" * (2 * GSM7_CONCATENATED_PART_SEPTETS), GSM, 306, 2),
        ("a" * (2 * GSM7_CONCATENATED_PART_SEPTETS + 1), GSM, 307, 3),
        ("Hyvää päivää, Åsa! Ñ ü ß É", GSM, 26, 1),  # all in the basic alphabet
        ("€" * 80, GSM, 160, 1),  # extension characters count twice
        ("€" * 81, GSM, 162, 2),
        ("a" * 152 + "€", GSM, 154, 1),  # 154 septets still fit one part of 160
        # an escape pair never straddles a part: 152 + 2 does not fit 153, the euro moves on
        ("a" * 152 + "€" + "a" * 152, GSM, 306, 3),
        ("[]{}~^|\\", GSM, 16, 1),
        ("Привет", UCS, 6, 1),
        ("ç" * UCS2_SINGLE_PART_UNITS, UCS, 70, 1),  # ç is not GSM-7 (only Ç is)
        ("ç" * (UCS2_SINGLE_PART_UNITS + 1), UCS, 71, 2),
        ("ç" * (2 * UCS2_CONCATENATED_PART_UNITS), UCS, 134, 2),
        ("😀" * 35, UCS, 70, 1),  # outside the BMP: a surrogate pair, two units
        ("a" * 66 + "😀" + "a", UCS, 69, 1),
        ("a" * 66 + "😀" + "a" * 4, UCS, 72, 2),  # pair does not straddle: 66 | 2+4
        # ç is estimated as UCS-2 (no downgrade to Ç: an upper bound, see shared.sms); Ç is GSM
        ("Ç" * GSM7_SINGLE_PART_SEPTETS, GSM, 160, 1),
        ("Ça va? " + "ç", UCS, 8, 1),
        # an escape pair at the single-part limit: ESC is septet 160, its character 161
        ("a" * 158 + "€", GSM, 160, 1),
        ("a" * 159 + "€", GSM, 161, 2),
        # an escape pair ending exactly on septet 153 fits the first part
        ("a" * 151 + "€" + "a" * 8, GSM, 161, 2),
        # one starting on septet 153 moves whole to the next part: 152 | 2+151 | 1
        ("a" * 152 + "€" + "a" * 151 + "€", GSM, 307, 3),
        ("a" * 152 + "€" + "a" * 151, GSM, 305, 2),
        # emoji: one character, a surrogate pair of two UTF-16 units
        ("😀", UCS, 2, 1),
        ("👍🏽", UCS, 4, 1),  # with a skin-tone modifier: two pairs
        # a surrogate pair at the single-part limit: units 69-70 fit, 70-71 do not
        ("a" * 68 + "😀", UCS, 70, 1),
        ("a" * 69 + "😀", UCS, 71, 2),
        # a pair ending exactly on unit 67 fits the first part
        ("a" * 65 + "😀" + "a" * 4, UCS, 71, 2),
        # a pair starting on unit 67 moves whole to the next part: 66 | 2+65 | 1
        ("a" * 66 + "😀" + "a" * 66, UCS, 134, 3),
        ("a" * 65 + "😀" + "a" * 67, UCS, 134, 2),
    ],
)
def test_estimate(text: str, encoding: SmsEncoding, units: int, parts: int) -> None:
    result = estimate(text)
    assert (result.encoding, result.units, result.parts) == (encoding, units, parts)


@pytest.mark.parametrize(
    ("content", "values", "expected"),
    [
        ("Hi $(name)!", {"name": "Ada"}, "Hi Ada!"),
        ("Hi $(name)!", None, "Hi !"),
        ("$(a)$(b)$(a)", {"a": 1, "b": True}, "1True1"),
        ("$(unknown) stays empty", {"name": "x"}, " stays empty"),
        ("no placeholders", {"name": "x"}, "no placeholders"),
        ("$name, $(na me) stay", {"name": "x"}, "$name, $(na me) stay"),
    ],
)  # fmt: skip
def test_personalize(content: str, values: dict[str, object] | None, expected: str) -> None:
    assert personalize(content, values) == expected
    # counted without filling in, for each recipient's values
    empty = personalize(content, None)
    assert list(personalized_lengths(content, [values, None])) == [len(expected), len(empty)]


def test_message_part_count_is_the_largest_after_personalization() -> None:
    content = "Dear $(name), " + "x" * 150
    assert message_part_count(content, [{"name": "Al"}, {"name": "Bartholomew-Maximilian"}]) == 2
    assert message_part_count(content, [{"name": "Al"}]) == 1
    assert message_part_count(content + "€", [{"name": "Al"}]) == 2
    assert message_part_count("Hej $(n)", [{"n": "Ж"}]) == 1
