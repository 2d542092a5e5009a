"""Decoding ``authorization_details`` input: the JSON text of the form parameter (RFC 9396
sections 3 and 6) or an already decoded value, reduced to plain JSON within the size
limits. Duplicate member names, non-finite numbers, integers beyond I-JSON (RFC 7493)
and excessive nesting are refused."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from agentiam.core.delegation.authorization_details._limits import (
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_JSON_BYTES,
    MAX_KEY,
    MAX_LIST,
    MAX_MEMBERS,
    MAX_SAFE_INTEGER,
    MAX_STRING,
    DetailsRejected,
    _check_text,
    _json_kind,
    _show,
)

_STRUCTURE = re.compile(r'[\\"\[\]{}]')


class _Budget:
    """Bytes of compact JSON still allowed for an already-decoded value."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise DetailsRejected(
                f"authorization_details is larger than {MAX_JSON_BYTES} bytes of JSON"
            )


def _plain(value: Any, depth: int, budget: _Budget | None, where: str) -> Any:
    """A plain JSON copy of ``value`` (dicts, lists, str, int, float, bool, None),
    checked against the size limits; tuples become lists."""
    spend = budget.spend if budget is not None else _no_spend
    if value is None or isinstance(value, bool):
        spend(len(json.dumps(value)))
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise DetailsRejected(
                f"{where}: integers must lie within +/-(2^53 - 1) (RFC 7493 section 2.2)"
            )
        spend(len(str(value)))
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DetailsRejected(f"{where}: numbers must be finite (no NaN or Infinity)")
        spend(len(json.dumps(value)))
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise DetailsRejected(f"{where}: strings are limited to {MAX_STRING} characters")
        _check_text(value, where)
        spend(_json_size(value))
        return str(value)
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_DEPTH:
        raise DetailsRejected(f"authorization_details is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        if len(value) > MAX_MEMBERS:
            raise DetailsRejected(f"{where}: objects are limited to {MAX_MEMBERS} members")
        spend(max(2, 1 + len(value)))  # brackets and commas
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
                raise DetailsRejected(
                    f"{where}: member names must be strings of 1 to {MAX_KEY} characters"
                )
            _check_text(key, f"{where}: a member name")
            spend(_json_size(key) + 1)
            out[key] = _plain(item, depth + 1, budget, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST:
            raise DetailsRejected(f"{where}: arrays are limited to {MAX_LIST} items")
        spend(max(2, 1 + len(value)))  # brackets and commas
        return [_plain(item, depth + 1, budget, f"{where}[{i}]") for i, item in enumerate(value)]
    raise DetailsRejected(f"{where}: {_json_kind(value)} is not allowed here")


def _no_spend(_: int) -> None:
    return None


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (what :data:`MAX_JSON_BYTES` counts)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DetailsRejected(f"authorization_details repeats the member {_show(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise DetailsRejected(f"authorization_details: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise DetailsRejected("authorization_details: numbers must be finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:
        raise DetailsRejected(
            "authorization_details: integers must lie within +/-(2^53 - 1) (RFC 7493 section 2.2)"
        )
    return int(text)


def _check_nesting(text: str) -> None:
    """Refuse JSON text nested deeper than :data:`MAX_DEPTH` before decoding it, in one
    linear pass that skips brackets inside strings."""
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(text):
        pos, char = match.start(), match.group()
        if in_string:
            if pos == escaped_at:
                continue
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise DetailsRejected(
                    f"authorization_details is nested deeper than {MAX_DEPTH} levels"
                )
        elif char in "]}":
            depth -= 1


def _decode_text(raw: str | bytes | bytearray) -> Any:
    """Decode the JSON text of the form parameter (RFC 9396 sections 3 and 6)."""
    if len(raw) > MAX_JSON_BYTES:
        raise DetailsRejected(f"authorization_details is larger than {MAX_JSON_BYTES} bytes")
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise DetailsRejected("authorization_details is not UTF-8") from None
    else:
        text = raw
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise DetailsRejected("authorization_details holds an unpaired surrogate") from None
        if size > MAX_JSON_BYTES:
            raise DetailsRejected(f"authorization_details is larger than {MAX_JSON_BYTES} bytes")
    _check_nesting(text)
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except DetailsRejected:
        raise
    except json.JSONDecodeError as exc:
        raise DetailsRejected(
            f"authorization_details is not valid JSON (at character {exc.pos})"
        ) from None
    except (ValueError, RecursionError):
        raise DetailsRejected("authorization_details is not valid JSON") from None


def _top_level(raw: Any) -> list[Any]:
    """The entries of ``raw`` as plain JSON, within the size limits."""
    if isinstance(raw, str | bytes | bytearray):
        decoded = _decode_text(raw)
        budget: _Budget | None = None  # the text itself was measured
    else:
        decoded = raw
        budget = _Budget(MAX_JSON_BYTES)
    if not isinstance(decoded, list | tuple):
        raise DetailsRejected(
            "authorization_details must be a JSON array of objects (RFC 9396 section 2)"
        )
    if len(decoded) > MAX_ENTRIES:
        raise DetailsRejected(f"authorization_details is limited to {MAX_ENTRIES} entries")
    plain = _plain(decoded, 0, budget, "authorization_details")
    assert isinstance(plain, list)
    return plain
