"""HMAC URL tokens: purpose- and subject-bound, rotatable, expiring."""

from __future__ import annotations

import pytest

from shared.signing import SigningNotConfigured, TokenPurpose, sign, verify

NEW, OLD = "new-secret", "old-secret"


def test_token_opens_its_own_purpose_and_subject_only() -> None:
    token = sign(TokenPurpose.STATUS, "m-1", secrets=[NEW])
    assert verify(token, TokenPurpose.STATUS, "m-1", secrets=[NEW])
    assert not verify(token, TokenPurpose.STATUS, "m-2", secrets=[NEW])
    assert not verify(token, TokenPurpose.DLR, "m-1", secrets=[NEW])
    assert not verify(token, TokenPurpose.WEBHOOK, "m-1", secrets=[NEW])


def test_rotation_signs_with_the_first_secret_and_accepts_every_listed_one() -> None:
    old_token = sign(TokenPurpose.DLR, "m-1", secrets=[OLD])
    assert verify(old_token, TokenPurpose.DLR, "m-1", secrets=[NEW, OLD])
    assert not verify(old_token, TokenPurpose.DLR, "m-1", secrets=[NEW])  # retired
    assert sign(TokenPurpose.DLR, "m-1", secrets=[NEW, OLD]) == sign(
        TokenPurpose.DLR, "m-1", secrets=[NEW]
    )


def test_expired_token_is_refused() -> None:
    token = sign(TokenPurpose.STATUS, "m-1", ttl_seconds=60, secrets=[NEW], now=lambda: 1000.0)
    assert verify(token, TokenPurpose.STATUS, "m-1", secrets=[NEW], now=lambda: 1059.0)
    assert not verify(token, TokenPurpose.STATUS, "m-1", secrets=[NEW], now=lambda: 1062.0)


@pytest.mark.parametrize(
    "forged",
    [
        None,
        "",
        "v1",
        "v1.0.",
        "v2.0.abc",
        "v1.x.abc",
        "v1.0.AAAA",
        "v1.0.ÄÖ",
        "garbage.token.here",
        "v1.².x",
        "v1.٣.x",
    ],
)
def test_forged_or_malformed_tokens_are_refused(forged: str | None) -> None:
    assert not verify(forged, TokenPurpose.STATUS, "m-1", secrets=[NEW])


def test_tampered_expiry_is_refused() -> None:
    token = sign(TokenPurpose.STATUS, "m-1", ttl_seconds=60, secrets=[NEW], now=lambda: 1000.0)
    version, _, mac = token.split(".")
    assert not verify(f"{version}.0.{mac}", TokenPurpose.STATUS, "m-1", secrets=[NEW])


def test_no_secrets_configured_is_an_error_not_an_open_door() -> None:
    with pytest.raises(SigningNotConfigured):
        verify("v1.0.x", TokenPurpose.STATUS, "m-1", secrets=[])
