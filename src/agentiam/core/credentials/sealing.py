"""Encryption at rest for private key material, under a master key the operator keeps
outside the database (environment variable or file).

Sealed values are AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce and the
record's identity as associated data, so a sealed value moved to another record does
not open. The format names the master key (a fingerprint, not the key) so a wrong
master key is reported as such: ``v1.<master-id>.<nonce>.<ciphertext>``.

Rotating the master key is :func:`reseal`: every sealed value opened with the current
key and sealed again, under the same associated data, with the next one; the callers
(the control plane's signing keys, a gateway's secret store) store all of them at once
or none.

Other secrets the service derives from the master key (such as the DPoP nonce key)
come from HKDF-SHA256 (RFC 5869) with a distinct ``info`` per purpose.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agentiam.core.credentials.jose import JoseRejected, b64url_decode, b64url_encode

__all__ = ["MasterKey", "SealError", "reseal"]

_VERSION = "v1"


class SealError(Exception):
    """A sealed value could not be opened: wrong master key, or altered. ``label``
    names the record whose value did not open (a kid), when the raiser knows it."""

    def __init__(self, message: str, *, label: str | None = None) -> None:
        super().__init__(message)
        self.label = label


class MasterKey:
    """A 256-bit key-encryption key. Its repr never shows the secret."""

    __slots__ = ("_secret", "id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._secret = secret
        self.id = hashlib.sha256(b"agentiam master key id\x00" + secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MasterKey(id={self.id})"

    @staticmethod
    def generate_text() -> str:
        """A new random master key as the text form :meth:`from_text` reads."""
        return b64url_encode(secrets.token_bytes(32))

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Read the base64url text form (43 characters, surrounding space ignored)."""
        try:
            secret = b64url_decode(text.strip())
        except JoseRejected:
            raise ValueError("the master key must be 32 bytes of unpadded base64url") from None
        return cls(secret)

    def seal(self, plaintext: bytes, *, context: str) -> str:
        nonce = os.urandom(12)
        ciphertext = AESGCM(self._secret).encrypt(nonce, plaintext, self._aad(context))
        return ".".join((_VERSION, self.id, b64url_encode(nonce), b64url_encode(ciphertext)))

    def open(self, sealed: str, *, context: str) -> bytes:
        parts = sealed.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise SealError("not a sealed value of a known format")
        if parts[1] != self.id:
            raise SealError(
                f"sealed under master key {parts[1]}, but the configured master key is {self.id}"
            )
        try:
            nonce, ciphertext = b64url_decode(parts[2]), b64url_decode(parts[3])
            return AESGCM(self._secret).decrypt(nonce, ciphertext, self._aad(context))
        except (JoseRejected, InvalidTag, ValueError):
            raise SealError("sealed value was altered or belongs to another record") from None

    def derive(self, purpose: str) -> bytes:
        """A 32-byte subkey for ``purpose`` (HKDF-SHA256, RFC 5869)."""
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"agentiam/" + purpose.encode()
        ).derive(self._secret)

    @staticmethod
    def _aad(context: str) -> bytes:
        return b"agentiam sealed\x00" + context.encode()


def reseal(
    values: Mapping[str, tuple[str, str]], *, old: MasterKey, new: MasterKey
) -> dict[str, str]:
    """Each of ``values`` (a label, e.g. a kid, to ``(sealed, context)``) opened with
    ``old`` and sealed again with ``new`` under the same ``context`` (the associated
    data of NIST SP 800-38D section 7: the value stays bound to its record), by label.

    All or nothing: every value is opened before any is sealed, and a value that does
    not open with ``old`` (another key's, altered, moved to another record) raises
    :class:`SealError` naming its label, so the caller writes nothing. ``new`` must
    differ from ``old`` (ValueError): re-sealing under the same key is a mistake, most
    likely the current key file given as the new one."""
    if new.id == old.id:
        raise ValueError(f"the new key is the current key ({old.id})")
    opened: dict[str, bytes] = {}
    for label, (sealed, context) in values.items():
        try:
            opened[label] = old.open(sealed, context=context)
        except SealError as exc:
            raise SealError(f"{label}: {exc}", label=label) from None
    return {label: new.seal(data, context=values[label][1]) for label, data in opened.items()}
