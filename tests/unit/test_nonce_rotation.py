"""DPoP nonce key rotation with overlap (RFC 9449 sections 8.2 and 9): an issuer
accepts the nonces of its accepted keys but never issues with them, and every other
rule of a nonce (lifetime, MAC) holds whichever key made it."""

from __future__ import annotations

import secrets

import pytest

from agentiam.core.credentials.jose import b64url_decode, b64url_encode
from agentiam.core.credentials.nonces import MAX_ACCEPTED_KEYS, NonceIssuer

NOW = 1_800_000_000
OLD, NEW, NEXT, STRANGER = (bytes([n]) * 32 for n in (1, 2, 3, 4))


def test_a_nonce_of_an_accepted_key_verifies_and_the_issuing_key_still_does() -> None:
    rotating = NonceIssuer(NEW, lifetime=60, accept=[OLD])
    assert rotating.accepted_keys == 1
    assert rotating.is_valid(NonceIssuer(OLD, lifetime=60).issue(NOW), NOW)
    assert rotating.is_valid(rotating.issue(NOW), NOW)
    # and the other phase of the rotation (issue old, accept new) takes both too
    behind = NonceIssuer(OLD, lifetime=60, accept=[NEW])
    assert behind.is_valid(rotating.issue(NOW), NOW)
    assert rotating.is_valid(behind.issue(NOW), NOW)


def test_an_accepted_key_is_never_used_to_issue() -> None:
    rotating = NonceIssuer(NEW, lifetime=60, accept=[OLD, NEXT])
    for now in range(NOW, NOW + 50):
        nonce = rotating.issue(now)
        assert nonce == NonceIssuer(NEW, lifetime=60).issue(now)  # the issuing key's, bit for bit
        assert not NonceIssuer(OLD, lifetime=60).is_valid(nonce, now)
        assert not NonceIssuer(NEXT, lifetime=60).is_valid(nonce, now)


@pytest.mark.parametrize("maker", [OLD, NEW], ids=["accepted key", "issuing key"])
def test_a_nonce_is_bound_to_its_lifetime_whichever_key_made_it(maker: bytes) -> None:
    rotating = NonceIssuer(NEW, lifetime=60, accept=[OLD])
    made = NonceIssuer(maker, lifetime=3600)  # a long-lived maker changes nothing
    assert rotating.is_valid(made.issue(NOW - 60), NOW)  # the last second of its life
    assert not rotating.is_valid(made.issue(NOW - 61), NOW)  # expired
    assert rotating.is_valid(made.issue(NOW + 5), NOW)  # a clock step ahead
    assert not rotating.is_valid(made.issue(NOW + 6), NOW)  # from the future


def test_a_nonce_of_a_key_not_listed_is_refused() -> None:
    rotating = NonceIssuer(NEW, lifetime=60, accept=[OLD, NEXT])
    assert not rotating.is_valid(NonceIssuer(STRANGER).issue(NOW), NOW)
    assert not rotating.is_valid(NonceIssuer(secrets.token_bytes(32)).issue(NOW), NOW)
    # dropping the old key (phase 3) refuses its nonces again
    assert not NonceIssuer(NEW, lifetime=60).is_valid(NonceIssuer(OLD).issue(NOW), NOW)


@pytest.mark.parametrize("maker", [NEW, OLD], ids=["issuing key", "accepted key"])
def test_a_forged_nonce_is_refused(maker: bytes) -> None:
    rotating = NonceIssuer(NEW, lifetime=60, accept=[OLD])
    raw = b64url_decode(NonceIssuer(maker).issue(NOW))
    stamp, mac = raw[:8], raw[8:]
    forged = {
        "mac flipped": stamp + bytes([mac[0] ^ 1]) + mac[1:],
        "random mac": stamp + secrets.token_bytes(16),
        "stamp moved": (NOW - 1).to_bytes(8, "big") + mac,  # the MAC covers the time
        "truncated": raw[:-1],
        "extended": raw + b"\x00",
    }
    for case, value in forged.items():
        assert not rotating.is_valid(b64url_encode(value), NOW), case
    for case, text in {"empty": "", "none": None, "padded": b64url_encode(raw) + "="}.items():
        assert not rotating.is_valid(text, NOW), case


def test_accepted_keys_are_bounded_distinct_and_long_enough() -> None:
    extra = [bytes([n]) * 32 for n in range(10, 10 + MAX_ACCEPTED_KEYS)]
    assert NonceIssuer(NEW, accept=extra).accepted_keys == MAX_ACCEPTED_KEYS
    with pytest.raises(ValueError, match=f"at most {MAX_ACCEPTED_KEYS} accepted"):
        NonceIssuer(NEW, accept=[*extra, OLD])
    with pytest.raises(ValueError, match="listed twice"):
        NonceIssuer(NEW, accept=[NEW])  # the issuing key again: a rotation step done wrong
    with pytest.raises(ValueError, match="listed twice"):
        NonceIssuer(NEW, accept=[OLD, OLD])
    with pytest.raises(ValueError, match="32 bytes"):
        NonceIssuer(NEW, accept=[b"k" * 31])
