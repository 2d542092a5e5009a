"""Masking the brokered credential in a response body an upstream echoes it in.

The gateways inject a credential the agent must never see (DESIGN.md, "data safety").
An upstream that reflects its request (an echo or debug endpoint, an error page that
quotes the ``Authorization`` field) would hand it to the agent in the body it
answers. :class:`EchoMask` replaces every occurrence of the credential's bytes in a
body relayed chunk by chunk with as many fill bytes, so the body keeps its length:
a ``Content-Length`` stays true and the chunk framing is the gateway's own.

An occurrence may be split across the chunks the body arrives in. The mask holds
back the end of a chunk only when it could begin the credential (the longest tail
that is a prefix of it, at most ``len(secret) - 1`` bytes), and hands it on with the
next chunk or at the end: memory is bounded by the credential's length, and a chunk
that cannot end in the credential's first bytes (an event stream's ``\\n\\n``) is
relayed at once, not held until the next one. The work per chunk is C-level searches
(``bytes.find``, ``bytes.replace``), not a Python step per byte.

Only the verbatim bytes are found: a credential the upstream transforms (base64,
JSON ``\\u`` escapes, percent-encoding, UTF-16, a compressed body) is not. The HTTP
gateway therefore refuses (502) a body in a content coding on the routes it injects
a credential for (:func:`content_coded`).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["EchoMask", "content_coded"]

_FILLS = b"*#x0"  # the first of these the credential does not hold fills a masked one


class EchoMask:
    """Streams a body with every occurrence of ``secret`` replaced by as many fill
    bytes (``*``, or another byte the secret does not hold, so a masked occurrence
    can never be part of a new one). :meth:`feed` each chunk in order and relay what
    it returns, then relay :meth:`flush`. ``masked`` counts the occurrences."""

    __slots__ = ("_fill", "_first", "_held", "_keep", "_secret", "masked")

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("an empty secret cannot be masked")
        fill = next(bytes([b]) for b in _FILLS if b not in secret)
        self._secret = secret
        self._fill = fill * len(secret)
        self._first = secret[:1]
        self._keep = len(secret) - 1
        self._held = b""
        self.masked = 0

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of the body up to ``chunk`` that can be relayed, masked; a tail
        that may begin the secret is held back for the next chunk."""
        data = self._held + chunk if self._held else chunk
        secret = self._secret
        if secret in data:
            self.masked += data.count(secret)
            data = data.replace(secret, self._fill)
        cut = self._tail(data)
        self._held = data[cut:]
        return data if cut == len(data) else data[:cut]

    def flush(self) -> bytes:
        """What is still held back at the end of the body (too short to be the
        secret)."""
        held, self._held = self._held, b""
        return held

    def _tail(self, data: bytes) -> int:
        """Where the longest tail of ``data`` shorter than the secret that is a prefix
        of it starts; ``len(data)`` if there is none. Only positions holding the
        secret's first byte, within its length of the end, are tried."""
        if not self._keep:
            return len(data)
        view = memoryview(data)
        at = data.find(self._first, max(len(data) - self._keep, 0))
        while at != -1:
            if self._secret.startswith(view[at:]):
                return at
            at = data.find(self._first, at + 1)
        return len(data)


# the HTTP Content Coding Registry's names: an upstream's other words are never
# repeated in a log line or the audit trail (one could hold the echoed credential)
_REGISTERED = frozenset(
    {"aes128gcm", "br", "compress", "dcb", "dcz", "deflate", "exi", "gzip",
     "pack200-gzip", "x-compress", "x-gzip", "zstd"}
)  # fmt: skip


def content_coded(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The content coding of a message (RFC 9110 section 8.4.1) if it has one other
    than ``identity``: its registered name (the first listed), or
    ``"unregistered"``; None for none. ``headers``: lower-case field names."""
    for name, value in headers:
        if name != b"content-encoding":
            continue
        for token in value.split(b","):
            coding = token.strip(b" \t").lower().decode("latin-1")
            if coding not in ("", "identity"):
                return coding if coding in _REGISTERED else "unregistered"
    return None
