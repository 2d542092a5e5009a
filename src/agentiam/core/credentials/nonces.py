"""Server-provided DPoP nonces (RFC 9449 section 8 and section 9 for resource servers).

Nonces are stateless, so every replica that shares the master key accepts every
other's: ``base64url(issued-at, 8 bytes big-endian || HMAC-SHA256(key, issued-at)[:16])``.
A nonce is valid from its issue time until ``lifetime`` seconds later; a fresh one is
handed out on every response so clients always hold a current value.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from agentiam.core.credentials.jose import JoseRejected, b64url_decode, b64url_encode

__all__ = ["NonceIssuer"]


class NonceIssuer:
    def __init__(self, key: bytes, *, lifetime: int = 300) -> None:
        if len(key) < 32:
            raise ValueError("the nonce key must be at least 32 bytes")
        self._key = key
        self.lifetime = lifetime

    def issue(self, now: int) -> str:
        stamp = struct.pack(">Q", now)
        return b64url_encode(stamp + self._mac(stamp))

    def is_valid(self, nonce: str | None, now: int) -> bool:
        if not nonce or len(nonce) > 64:
            return False
        try:
            raw = b64url_decode(nonce)
        except JoseRejected:
            return False
        if len(raw) != 24:
            return False
        stamp, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return False
        issued: int = struct.unpack(">Q", stamp)[0]
        return issued - 5 <= now <= issued + self.lifetime

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._key, b"dpop-nonce\x00" + stamp, hashlib.sha256).digest()[:16]
