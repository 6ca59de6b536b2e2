"""HMAC URL tokens: purpose- and subject-bound, rotatable, expiring."""

from __future__ import annotations

import pytest

from shared.signing import (
    SigningNotConfigured,
    TokenPurpose,
    VerifiedToken,
    new_nonce,
    sign,
    verified,
    verify,
)

NEW, OLD = "new-secret-of-at-least-thirty-two-bytes", "old-secret-of-at-least-thirty-two-bytes"


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
        "v1." + "9" * 5000 + ".x",  # more digits than int() reads: refused, not a ValueError
        "v2." + "9" * 5000 + ".abcdefghijklmnop.x",
    ],
)
def test_forged_or_malformed_tokens_are_refused(forged: str | None) -> None:
    assert not verify(forged, TokenPurpose.STATUS, "m-1", secrets=[NEW])


def test_tampered_expiry_is_refused() -> None:
    token = sign(TokenPurpose.STATUS, "m-1", ttl_seconds=60, secrets=[NEW], now=lambda: 1000.0)
    version, _, mac = token.split(".")
    assert not verify(f"{version}.0.{mac}", TokenPurpose.STATUS, "m-1", secrets=[NEW])


def test_only_the_token_as_signed_opens_not_one_with_zeros_before_its_expiry() -> None:
    """Found by an attacker's look: ``v1.01799266038.<mac>`` opened what ``v1.1799266038.<mac>``
    did (int() reads past the zeros, and the signature covers the number)."""
    for nonce in (None, new_nonce()):
        token = sign(TokenPurpose.STATUS, "m-1", ttl_seconds=60, secrets=[NEW], nonce=nonce)
        assert verify(token, TokenPurpose.STATUS, "m-1", secrets=[NEW])
        parts = token.split(".")
        parts[1] = "0" + parts[1]
        assert not verify(".".join(parts), TokenPurpose.STATUS, "m-1", secrets=[NEW])
    unexpiring = sign(TokenPurpose.STATUS, "m-1", secrets=[NEW])  # "v1.0.<mac>"
    assert verify(unexpiring, TokenPurpose.STATUS, "m-1", secrets=[NEW])
    version, _, mac = unexpiring.split(".")
    assert not verify(f"{version}.00.{mac}", TokenPurpose.STATUS, "m-1", secrets=[NEW])


def test_no_secrets_configured_is_an_error_not_an_open_door() -> None:
    with pytest.raises(SigningNotConfigured):
        verify("v1.0.x", TokenPurpose.STATUS, "m-1", secrets=[])


@pytest.mark.parametrize("secrets", [["x" * 31], [NEW, "short-old-secret"], ["é" * 15]])
def test_a_secret_shorter_than_32_bytes_is_a_configuration_error_naming_the_setting(
    secrets: list[str],
) -> None:
    with pytest.raises(SigningNotConfigured) as raised:
        sign(TokenPurpose.STATUS, "m-1", secrets=secrets)
    problem = raised.value
    assert problem.status == 503
    assert "SMARTDIALOG_CALLBACK_SECRETS" in (problem.detail or "")
    assert all(secret not in (problem.detail or "") for secret in secrets)  # never the secret
    with pytest.raises(SigningNotConfigured):
        verify("v1.0.x", TokenPurpose.STATUS, "m-1", secrets=secrets)


def test_a_nonce_token_opens_its_subject_and_tells_its_nonce() -> None:
    nonce = new_nonce()
    token = sign(TokenPurpose.WEBHOOK, "service/s", nonce=nonce, secrets=[NEW])
    assert token.startswith(f"v2.0.{nonce}.")
    assert verified(token, TokenPurpose.WEBHOOK, "service/s", secrets=[NEW]) == VerifiedToken(
        0, nonce
    )
    # The nonce is signed: swapping it for another breaks the signature.
    other = token.replace(nonce, new_nonce())
    assert verified(other, TokenPurpose.WEBHOOK, "service/s", secrets=[NEW]) is None
    assert verified(token, TokenPurpose.WEBHOOK, "service/t", secrets=[NEW]) is None


def test_a_token_made_before_nonces_still_verifies_without_one() -> None:
    token = sign(TokenPurpose.WEBHOOK, "service/s", secrets=[NEW])
    assert token.startswith("v1.0.")
    assert verified(token, TokenPurpose.WEBHOOK, "service/s", secrets=[NEW]) == VerifiedToken(
        0, None
    )


#: Tokens the release before this test made (``sign`` at 9e8a817) with secret ``NEW``: a status
#: URL, a delivery-report URL with an expiry, a webhook URL with its registration's nonce.
RECORDED = [
    (TokenPurpose.STATUS, "m-1", "v1.0.7s9On8zXKUpi0dd-5vVngkOoyyW3UNX2MWfl2Tv9kbw"),
    (TokenPurpose.DLR, "m-1", "v1.1700003601.OOsWeHcUYeVQ3jQlcbTMuk1Pg0OpFxlRm9IgerYC3cA"),
    (
        TokenPurpose.WEBHOOK,
        "svc-1",
        "v2.0.AAAAAAAAAAAAAAAAAAAAAA.tK5uD4_bVpUz4KROBzVDi9133igBqqyHnt6VTE7Xn9A",
    ),
]


@pytest.mark.parametrize(("purpose", "subject", "token"), RECORDED, ids=["v1", "v1-ttl", "v2"])
def test_tokens_of_the_previous_release_still_open_their_urls(
    purpose: TokenPurpose, subject: str, token: str
) -> None:
    """URLs outlive a deploy: a flow polls its status URL, SmartDialog calls the delivery-report
    and webhook URLs it was given. A change to what a token signs must keep reading these."""
    at = 1_700_000_000.0
    assert verify(token, purpose, subject, secrets=[NEW], now=lambda: at)
    assert not verify(token, purpose, subject + "x", secrets=[NEW], now=lambda: at)
    nonce = token.split(".")[2] if token.startswith("v2.") else None
    expiry = int(token.split(".")[1])
    ttl = expiry - 1 - at if expiry else None
    assert (
        sign(purpose, subject, nonce=nonce, ttl_seconds=ttl, secrets=[NEW], now=lambda: at) == token
    )


def test_a_nonce_that_is_no_registration_nonce_is_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="nonce"):
        sign(TokenPurpose.WEBHOOK, "svc-1", nonce="short", secrets=[NEW])
    with pytest.raises(ValueError, match="nonce"):
        sign(TokenPurpose.WEBHOOK, "svc-1", nonce="A" * 16 + ".", secrets=[NEW])
