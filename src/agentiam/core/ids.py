"""Opaque, time-ordered identifiers such as ``agt_01JF…``.

The body is a ULID (48-bit millisecond timestamp, 80 random bits, Crockford base32),
so ids sort by creation time, which lets lists page with a stable keyset cursor, and
leak nothing but the creation time.
"""

from __future__ import annotations

import re
import secrets
import time

__all__ = ["PREFIXES", "is_id", "new_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

PREFIXES = {
    "human": "hum",
    "agent": "agt",
    "agent_key": "key",
    "admin_key": "adk",
    "event": "evt",
    "transition": "trn",
    "token": "tok",
    "decision": "dec",
    "grant": "grt",
    "alert": "alr",
    "approval": "apr",
    "response": "rsp",
    "assessment": "asm",
}

_ID_RE = re.compile(r"^(?P<prefix>[a-z]{3})_[0-9A-HJKMNP-TV-Z]{26}$")


# Two base32 digits per step: ten bits at a time (ids are made on hot paths, such as
# one per policy decision).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int, length: int) -> str:
    chunks = []
    if length % 2:
        chunks.append(_ALPHABET[value & 31])
        value >>= 5
    for _ in range(length // 2):
        chunks.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(chunks))


def new_id(kind: str, *, now_ms: int | None = None) -> str:
    """Return a fresh id for an entity of ``kind`` (a key of :data:`PREFIXES`)."""
    millis = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    body = (millis << 80) | secrets.randbits(80)
    return f"{PREFIXES[kind]}_{_encode(body, 26)}"


def is_id(value: str, kind: str) -> bool:
    """True when ``value`` is syntactically an id of ``kind``."""
    match = _ID_RE.match(value)
    return bool(match and match.group("prefix") == PREFIXES[kind])
