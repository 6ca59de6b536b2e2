"""SMS part counting and personalization."""

from __future__ import annotations

import pytest

from sandbox.sms import part_count, personalize


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters count two septets: 160
        ("€" * 81, 2),
        ("[" + "a" * 159, 2),  # 161 septets
        ("äöåÄÖÅ" + "a" * 154, 1),  # Finnish and Swedish letters are GSM-7 characters
        ("ñ" * 160, 1),
        ("ő" * 70, 1),  # not GSM-7: UCS-2
        ("ő" * 71, 2),
        ("ő" * 134, 2),
        ("ő" * 135, 3),
        ("😀" * 35, 1),  # surrogate pairs: two UCS-2 units each
        ("😀" * 36, 2),
    ],
)
def test_part_count(text: str, parts: int) -> None:
    assert part_count(text) == parts


def test_personalize_fills_placeholders_and_blanks_missing_ones() -> None:
    assert (
        personalize("Hi $(name), code $(code)$(none)", {"name": "Ada", "code": 42})
        == "Hi Ada, code 42"
    )
    assert personalize("Hi $(name)", None) == "Hi "
