"""Opaque keyset cursors. A cursor names the list it belongs to, so one list's cursor
cannot be replayed against another."""

from __future__ import annotations

import base64
import binascii
import re

from agentiam.errors import BadRequest

__all__ = ["decode_cursor", "encode_cursor"]

_VALUE_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def encode_cursor(kind: str, after: str | None) -> str | None:
    if after is None:
        return None
    return base64.urlsafe_b64encode(f"{kind}:{after}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None, *, numeric: bool = False) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor is not valid", hint="Pass next_cursor back unchanged.") from None
    prefix, _, value = raw.partition(":")
    if prefix != kind or not _VALUE_RE.match(value) or (numeric and not value.isdigit()):
        raise BadRequest("cursor is not valid for this list", hint="Start again without a cursor.")
    return value
