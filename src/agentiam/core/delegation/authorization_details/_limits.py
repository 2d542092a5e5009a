"""Size limits on ``authorization_details`` (RFC 9396 section 11.4), the
:class:`DetailsRejected` error, and the helpers its messages rely on: short, escaped
renderings of client values and the check that refuses control characters in text."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

MAX_ENTRIES: Final = 16
MAX_JSON_BYTES: Final = 16 * 1024
MAX_DEPTH: Final = 6  # containers, the outer array included
MAX_LIST: Final = 64
MAX_STRING: Final = 512
MAX_MEMBERS: Final = 32  # members of one object (an entry, ``arguments``)
MAX_KEY: Final = 128
MAX_CUSTOM_TYPES: Final = 32
MAX_FIELDS: Final = 16
MAX_SAFE_INTEGER: Final = 2**53 - 1  # RFC 7493 section 2.2
_MAX_MESSAGE = 400

_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class DetailsRejected(ValueError):
    """Authorization details (or a type definition) that cannot be accepted.

    The message says what is wrong and where, and is safe to show to the client: it
    quotes at most a short, escaped excerpt of the input. On the wire it is the
    ``invalid_authorization_details`` error of RFC 9396 section 5."""

    error: Final = "invalid_authorization_details"

    def __init__(self, message: str) -> None:
        super().__init__(_clip(message, _MAX_MESSAGE))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any, limit: int = 48) -> str:
    """A short, escaped rendering of a client value for messages."""
    if isinstance(value, str):
        return _clip(json.dumps(value[: limit + 1], ensure_ascii=True), limit)
    if value is None or isinstance(value, bool | int | float):
        return _clip(json.dumps(value) if _finite_or_not_float(value) else repr(value), limit)
    return _json_kind(value)


def _finite_or_not_float(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return "a non-JSON value"


def _check_text(value: str, what: str) -> None:
    if _BAD_TEXT.search(value):
        raise DetailsRejected(f"{what} contains a control character or unpaired surrogate")
