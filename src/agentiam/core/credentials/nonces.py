"""Server-provided DPoP nonces (RFC 9449 section 8 and section 9 for resource servers).

Nonces are stateless, so every replica that shares the master key accepts every
other's: ``base64url(issued-at, 8 bytes big-endian || HMAC-SHA256(key, issued-at)[:16])``.
A nonce is valid from its issue time until ``lifetime`` seconds later; a fresh one is
handed out on every response so clients always hold a current value.

Key rotation with overlap: besides the key it issues with, an issuer may accept the
nonces of up to :data:`MAX_ACCEPTED_KEYS` other keys (never issuing with them). A
rolling rotation first makes every replica accept the new key, then issue with it
while accepting the old one, then drop the old one, so no replica ever refuses a nonce
another one issued (RFC 9449 section 8.2 leaves when a server renews its nonces to
the server; a refused nonce costs the client a ``use_dpop_nonce`` round trip). A nonce
of an accepted key is bound to the same lifetime as one of the issuing key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from agentiam.core.credentials.jose import JoseRejected, b64url_decode, b64url_encode

__all__ = ["MAX_ACCEPTED_KEYS", "NonceIssuer"]

# keys accepted besides the issuing one: a rotation needs one; each costs an HMAC on
# every refused nonce, so the bound keeps a forged nonce's cost small
MAX_ACCEPTED_KEYS = 3
_MIN_KEY = 32
_LABEL = b"dpop-nonce\x00"


class NonceIssuer:
    """Issues nonces with ``key`` and accepts those of ``key`` and of each of
    ``accept`` (older or newer keys of a rotation) for ``lifetime`` seconds.
    ValueError when a key is shorter than 32 bytes, when there are more than
    :data:`MAX_ACCEPTED_KEYS` accepted keys, or when a key is listed twice (an
    accepted key equal to the issuing key is a rotation step done wrong)."""

    __slots__ = ("_macs", "lifetime")

    def __init__(self, key: bytes, *, lifetime: int = 300, accept: Sequence[bytes] = ()) -> None:
        keys = (key, *accept)
        if any(len(k) < _MIN_KEY for k in keys):
            raise ValueError(f"the nonce key must be at least {_MIN_KEY} bytes")
        if len(accept) > MAX_ACCEPTED_KEYS:
            raise ValueError(f"at most {MAX_ACCEPTED_KEYS} accepted nonce keys")
        if len(set(keys)) != len(keys):
            raise ValueError("a nonce key is listed twice (issuing and accepted keys differ)")
        # the keyed HMAC states with the label absorbed, the issuing key's first: a
        # nonce of the current key is checked with one HMAC
        self._macs = tuple(hmac.new(k, _LABEL, hashlib.sha256) for k in keys)
        self.lifetime = lifetime

    @property
    def accepted_keys(self) -> int:
        """How many keys besides the issuing one are accepted."""
        return len(self._macs) - 1

    def issue(self, now: int) -> str:
        stamp = struct.pack(">Q", now)
        return b64url_encode(stamp + _tag(self._macs[0], stamp))

    def is_valid(self, nonce: str | None, now: int) -> bool:
        """Whether ``nonce`` was issued with the issuing or an accepted key at most
        ``lifetime`` seconds ago (and at most 5 seconds ahead, for clock steps). Each
        key's MAC is compared in constant time (:func:`hmac.compare_digest`); the issue
        time is public (it is in the nonce), so it is checked first, and a nonce out of
        its lifetime costs no HMAC."""
        if not nonce or len(nonce) > 64:
            return False
        try:
            raw = b64url_decode(nonce)
        except JoseRejected:
            return False
        if len(raw) != 24:
            return False
        stamp, mac = raw[:8], raw[8:]
        issued: int = struct.unpack(">Q", stamp)[0]
        if not issued - 5 <= now <= issued + self.lifetime:
            return False
        return any(hmac.compare_digest(mac, _tag(state, stamp)) for state in self._macs)


def _tag(state: hmac.HMAC, stamp: bytes) -> bytes:
    """HMAC-SHA256(key, label || stamp) truncated to 16 bytes, from ``state`` (the key's
    HMAC with the label absorbed), which is left as it was."""
    mac = state.copy()
    mac.update(stamp)
    return mac.digest()[:16]
