"""Rich authorization requests (RFC 9396) for task-scoped tokens.

A client asks for a task-scoped token with the ``authorization_details`` parameter: a
JSON array of objects, each with a ``type`` that decides what else it may hold (RFC 9396
section 2). It travels as a form parameter holding JSON text on the authorization and
token endpoints (sections 3 and 6), comes back in the token response (section 7) and
sits in the JWT access token as the ``authorization_details`` claim (section 9.1).

This module is the pure part of that: the types this server understands, parsing and
normalising a request, deciding whether one set of details is *narrower* than another
(section 6.1: a token request, or a delegation hop, may only ask for what is already
held), and deciding whether a token's details permit one concrete call. No I/O.

Types
-----
``tool_invocation`` (ours)
    ``tools`` (required): the tool names the token may call. ``locations``: the MCP
    servers or gateways it may call them on. ``arguments``: per argument, a constraint
    built from ``enum``, ``const``, ``min``, ``max``, ``max_length`` and ``prefix``
    (no regular expressions: they invite ReDoS and are hard to compare).
``api_access`` (ours)
    ``locations`` (required, http(s) URIs), ``actions`` (required: HTTP methods, kept
    in upper case, or action names), ``datatypes``, ``identifier``: the section 2.2
    common data fields with their usual meaning.
Operator types
    Registered with :meth:`DetailTypeRegistry.with_types` as data: a name and typed
    fields (``set``, ``uri_set``, ``exact``, ``max_number``, ``min_number``).

Decisions that make it fail closed
----------------------------------
* Unknown types and unknown members are refused, as section 5 requires. The section
  2.2 ``privileges`` field is not declared by the built-in types, so it is refused too.
* No wildcards and no patterns: every set member, URI and number means what it says.
* An empty list or object where a constraint is expected is refused rather than
  guessed at ("nothing" and "anything" are both plausible readings).
* JSON numbers are kept apart from booleans; NaN, infinities and integers beyond
  2^53 - 1 (I-JSON, RFC 7493 section 2.2) are refused; duplicate member names in JSON
  text are refused.
* URIs are compared on scheme, host and port exactly and on the path segment by
  segment, after removing default ports and needless percent-encoding (RFC 3986
  section 6.2.2). Anything a server might read differently is refused: userinfo,
  fragments, queries in granted locations, backslashes, encoded ``/`` or ``\\``, and
  ``.`` or ``..`` segments (also ``..;``).
* Size is bounded (section 11.4 warns about large requests): :data:`MAX_ENTRIES`
  entries, :data:`MAX_JSON_BYTES` of JSON, :data:`MAX_DEPTH` levels of nesting,
  :data:`MAX_LIST` items a list, :data:`MAX_STRING` characters a string.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

__all__ = [
    "BUILTIN",
    "CUSTOM_FIELD_KINDS",
    "HTTP_METHODS",
    "MAX_CUSTOM_TYPES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_FIELDS",
    "MAX_JSON_BYTES",
    "MAX_LIST",
    "MAX_STRING",
    "ApiCall",
    "Call",
    "CustomCall",
    "DetailTypeRegistry",
    "DetailsRejected",
    "DetailsVerdict",
    "ToolCall",
    "permits",
    "policy_context",
]

# -- limits (RFC 9396 section 11.4) ------------------------------------------------------

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

TOOL_INVOCATION: Final = "tool_invocation"
API_ACCESS: Final = "api_access"

# RFC 9110 section 9 plus PATCH (RFC 5789): compared without regard to case.
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

CUSTOM_FIELD_KINDS: Final = ("set", "uri_set", "exact", "max_number", "min_number")

# RFC 9396 section 2.2 common fields (and our ``tools``): an operator type that uses
# one of these names must give it its common meaning, so policies read it one way.
_COMMON_FIELD_KINDS: Final = MappingProxyType(
    {
        "locations": "uri_set",
        "actions": "set",
        "datatypes": "set",
        "privileges": "set",
        "identifier": "exact",
        "tools": "set",
    }
)

_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TOOL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")
_ARGUMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ACTION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:/+-]{0,127}$")
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_STRUCTURE = re.compile(r'[\\"\[\]{}]')


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


# -- calls and verdicts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call, checked against ``tool_invocation`` entries.

    ``location`` is the URI of the MCP server or gateway that serves the tool; None when
    the enforcement point does not know it (then an entry that names locations does not
    permit the call)."""

    tool: str
    arguments: Mapping[str, Any]
    location: str | None = None


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One HTTP API call, checked against ``api_access`` entries. ``url`` is the full
    request URL; its query is ignored, its path must lie beneath an entry location."""

    action: str
    url: str
    datatype: str | None = None
    identifier: str | None = None


@dataclass(frozen=True, slots=True)
class CustomCall:
    """A call checked against entries of ``type`` field by field: for every field an
    entry constrains, ``values`` must hold a value the field admits (see
    :meth:`DetailTypeRegistry.permits`). Built-in types may be checked this way too,
    with the field names as keys (``tools``, ``arguments``, ``locations``...)."""

    type: str
    values: Mapping[str, Any]


Call: TypeAlias = ToolCall | ApiCall | CustomCall


@dataclass(frozen=True, slots=True)
class DetailsVerdict:
    """Whether a token's details permit a call. ``entry`` is the index of the entry that
    permits it (None when denied); ``reason`` says which entry or why none did. Reasons
    never repeat argument values from the call."""

    allowed: bool
    reason: str
    entry: int | None


# -- JSON input --------------------------------------------------------------------------


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


def _check_text(value: str, what: str) -> None:
    if _BAD_TEXT.search(value):
        raise DetailsRejected(f"{what} contains a control character or unpaired surrogate")


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


# -- scalars and numbers -----------------------------------------------------------------

Number: TypeAlias = int | float
_Key: TypeAlias = tuple[int, Any]  # (0 null | 1 boolean | 2 number | 3 string, value)


def _key(value: Any) -> _Key | None:
    """A comparison key that keeps JSON types apart (``true`` is not ``1``); None for
    anything that is not a finite JSON scalar."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int):
        return (2, int(value))
    if isinstance(value, float):
        return (2, value) if math.isfinite(value) else None
    if isinstance(value, str):
        return (3, value)
    return None


def _from_key(key: _Key) -> Any:
    tag, value = key
    if tag == 0:
        return None
    if tag == 1:
        return bool(value)
    return value


def _as_number(value: Any) -> Number | None:
    """A finite JSON number (never a boolean), integral floats as ints; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)
    return value


def _number(value: Any, where: str) -> Number:
    number = _as_number(value)
    if number is None:
        raise DetailsRejected(f"{where} must be a number, not {_json_kind(value)}")
    return number


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(value, where)
    raise DetailsRejected(f"{where} must be a JSON scalar, not {_json_kind(value)}")


# -- argument constraints ----------------------------------------------------------------

_CONSTRAINT_KEYS: Final = ("enum", "const", "min", "max", "max_length", "prefix")
_REGEX_WORDS: Final = frozenset({"pattern", "regex", "regexp"})


@dataclass(frozen=True, slots=True)
class _Constraint:
    """The meaning of one argument constraint: a value is admitted when it satisfies
    every keyword present. ``min``/``max`` admit only numbers, ``max_length`` and
    ``prefix`` only strings; ``enum`` and ``const`` compare by JSON type and value."""

    values: frozenset[_Key] | None
    low: Number | None
    high: Number | None
    max_length: int | None
    prefix: str | None

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> _Constraint:
        values: frozenset[_Key] | None = None
        if "enum" in spec:
            values = frozenset(k for k in map(_key, spec["enum"]) if k is not None)
        if "const" in spec:
            const = _key(spec["const"])
            single = frozenset({const} if const is not None else ())
            values = single if values is None else values & single
        return cls(
            values=values,
            low=spec.get("min"),
            high=spec.get("max"),
            max_length=spec.get("max_length"),
            prefix=spec.get("prefix"),
        )

    @property
    def numeric(self) -> bool:
        return self.low is not None or self.high is not None

    @property
    def textual(self) -> bool:
        return self.max_length is not None or self.prefix is not None

    def admits_key(self, key: _Key) -> bool:
        if self.values is not None and key not in self.values:
            return False
        tag, value = key
        if self.numeric:
            if tag != 2:
                return False
            if self.low is not None and value < self.low:
                return False
            if self.high is not None and value > self.high:
                return False
        if self.textual:
            if tag != 3:
                return False
            if self.max_length is not None and len(value) > self.max_length:
                return False
            if self.prefix is not None and not value.startswith(self.prefix):
                return False
        return True

    def admits(self, value: Any) -> bool:
        key = _key(value)
        return key is not None and self.admits_key(key)

    def finite(self) -> frozenset[_Key] | None:
        """Every admitted value, when there are finitely many; else None."""
        if self.values is not None:
            return frozenset(k for k in self.values if self.admits_key(k))
        if self.low is not None and self.low == self.high:
            return frozenset({(2, self.low)})
        if self.max_length is not None and self.max_length == len(self.prefix or ""):
            key: _Key = (3, self.prefix or "")
            return frozenset({key}) if self.admits_key(key) else frozenset()
        return None

    def implication_problem(self, granted: _Constraint) -> str | None:
        """None when every value this constraint admits is admitted by ``granted``.

        Exact for these keywords: a finite constraint is checked value by value; an
        infinite numeric range or string family must carry bounds at least as tight as
        each of the granted ones."""
        finite = self.finite()
        if finite is not None:
            for key in sorted(finite):
                if not granted.admits_key(key):
                    return f"the value {_show(_from_key(key))} is not allowed by the grant"
            return None
        if granted.values is not None:
            return "an open range or prefix is wider than the granted enum/const"
        if self.numeric:
            if granted.textual:
                return "the grant allows only strings here"
            if granted.low is not None and (self.low is None or self.low < granted.low):
                return f"min must be at least the granted {_show(granted.low)}"
            if granted.high is not None and (self.high is None or self.high > granted.high):
                return f"max must be at most the granted {_show(granted.high)}"
            return None
        if granted.numeric:
            return "the grant allows only numbers here"
        if granted.max_length is not None and (
            self.max_length is None or self.max_length > granted.max_length
        ):
            return f"max_length must be at most the granted {granted.max_length}"
        if granted.prefix is not None and not (self.prefix or "").startswith(granted.prefix):
            return f"prefix must start with the granted {_show(granted.prefix)}"
        return None


def _normalize_constraint(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise DetailsRejected(
            f"{where} must be a non-empty object using {', '.join(_CONSTRAINT_KEYS)}"
        )
    unknown = sorted(set(value) - set(_CONSTRAINT_KEYS))
    if unknown:
        extra = " (regular expressions are not supported)" if unknown[0] in _REGEX_WORDS else ""
        raise DetailsRejected(f"{where}: unknown constraint {_show(unknown[0])}{extra}")
    out: dict[str, Any] = {}
    if "enum" in value:
        items = value["enum"]
        if not isinstance(items, list) or not items:
            raise DetailsRejected(f"{where}.enum must be a non-empty array of JSON scalars")
        keyed: dict[_Key, Any] = {}
        for i, item in enumerate(items):
            scalar = _scalar(item, f"{where}.enum[{i}]")
            key = _key(scalar)
            assert key is not None
            keyed.setdefault(key, scalar)
        out["enum"] = [keyed[k] for k in sorted(keyed)]
    if "const" in value:
        out["const"] = _scalar(value["const"], f"{where}.const")
    for bound in ("min", "max"):
        if bound in value:
            out[bound] = _number(value[bound], f"{where}.{bound}")
    if "max_length" in value:
        length = _as_number(value["max_length"])
        if not isinstance(length, int) or length < 0:
            raise DetailsRejected(f"{where}.max_length must be a non-negative integer")
        out["max_length"] = length
    if "prefix" in value:
        if not isinstance(value["prefix"], str):
            raise DetailsRejected(f"{where}.prefix must be a string")
        out["prefix"] = value["prefix"]
    compiled = _Constraint.of(out)
    if compiled.numeric and compiled.textual:
        raise DetailsRejected(
            f"{where} mixes number bounds (min/max) with string ones (max_length/prefix)"
        )
    if compiled.low is not None and compiled.high is not None and compiled.low > compiled.high:
        raise DetailsRejected(f"{where}: min is greater than max")
    if (
        compiled.prefix is not None
        and compiled.max_length is not None
        and len(compiled.prefix) > compiled.max_length
    ):
        raise DetailsRejected(f"{where}: prefix is longer than max_length")
    if "const" in out and "enum" in out and not compiled.values:
        raise DetailsRejected(f"{where}: const is not one of enum")
    if compiled.finite() == frozenset():
        raise DetailsRejected(f"{where} can never be satisfied")
    return out


# -- URIs --------------------------------------------------------------------------------

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS: Final = MappingProxyType({"http": 80, "https": 443, "ws": 80, "wss": 443})
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_HOST_RE = re.compile(
    r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*$"
)
_URI_TEXT = re.compile(r"^[\x21-\x7e]+$")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class _BadUri(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Uri:
    scheme: str
    authority: str  # host and non-default port, normalised
    segments: tuple[str, ...]
    text: str

    def covers(self, other: _Uri) -> bool:
        """``other`` is this URI or beneath it: same scheme, host and port, and this
        path's segments are a prefix of the other's (``/api`` covers ``/api/v1``, not
        ``/api-admin``)."""
        return (
            self.scheme == other.scheme
            and self.authority == other.authority
            and other.segments[: len(self.segments)] == self.segments
        )


def _decode_unreserved(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    char = chr(code)
    if char in _UNRESERVED:
        return char
    if code < 0x20 or code == 0x7F or char in "/\\":
        raise _BadUri("must not percent-encode '/', '\\' or control characters")
    return "%" + match.group(1).upper()


def _dot_segment(segment: str) -> bool:
    """``.`` or ``..`` as some server might read it: decoded, without path parameters
    (``..;x``, ``..%3B``) and surrounding blanks."""
    return unquote(segment).split(";", 1)[0].strip() in {".", ".."}


def _parse_uri(value: Any, *, web_only: bool, allow_query: bool) -> _Uri:
    """Check and normalise an absolute URI with a host (RFC 3986 section 6.2.2)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_STRING:
        raise _BadUri(f"must be an absolute URI of at most {MAX_STRING} characters")
    if not _URI_TEXT.match(value):
        raise _BadUri("must be printable ASCII without spaces (percent-encode the rest)")
    if "\\" in value:
        raise _BadUri("must not contain a backslash")
    if "#" in value:
        raise _BadUri("must not contain a fragment")
    scheme, sep, rest = value.partition("://")
    if not sep or not _SCHEME_RE.match(scheme):
        raise _BadUri("must be an absolute URI with a host (scheme://host/path)")
    scheme = scheme.lower()
    if web_only and scheme not in {"http", "https"}:
        raise _BadUri("must be an http or https URI")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path, question, _query = tail.partition("?")
    if question and not allow_query:
        raise _BadUri("must not contain a query")
    if "@" in authority:
        raise _BadUri("must not contain user information")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _BadUri("has an unterminated IPv6 address")
        try:
            host = f"[{ipaddress.IPv6Address(authority[1:close]).compressed}]"
        except ValueError:
            raise _BadUri("has an invalid IPv6 address") from None
        after = authority[close + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        host = host.lower()
        after = colon + port_text
        if not _HOST_RE.match(host):
            raise _BadUri("must name a host in ASCII (a DNS name or an IP address)")
    port: int | None = None
    if after:
        digits = after[1:]
        if not after.startswith(":") or not (
            digits == "" or (digits.isascii() and digits.isdigit())
        ):
            raise _BadUri("has an invalid port")
        if digits:
            if len(digits) > 5 or not 0 < int(digits) <= 65535:
                raise _BadUri("has an invalid port")
            port = int(digits)
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    if _STRAY_PERCENT.search(path):
        raise _BadUri("has a malformed percent-encoding")
    path = _PERCENT.sub(_decode_unreserved, path) or "/"
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()
    if any(_dot_segment(segment) for segment in segments):
        raise _BadUri("must not contain '.' or '..' path segments")
    authority = host if port is None else f"{host}:{port}"
    return _Uri(scheme, authority, tuple(segments), f"{scheme}://{authority}{path}")


# -- field kinds -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one kind of field is checked (``normalize``), compared (``narrowing``:
    None when the requested value is at most as wide as the granted one) and matched
    against a call (``matching``: None when the call's value is admitted)."""

    name: str
    description: str
    normalize: Callable[[Any, str], Any]
    narrowing: Callable[[Any, Any, str], str | None]
    matching: Callable[[Any, Any, str], str | None]


def _string_list(
    value: Any, where: str, check: Callable[[str, str], str] = lambda s, w: s
) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DetailsRejected(f"{where} must be a non-empty array of strings")
    out: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise DetailsRejected(f"{where}[{i}] must be a non-empty string")
        out.add(check(item, f"{where}[{i}]"))
    return sorted(out)


def _subset_problem(requested: list[str], granted: list[str], where: str) -> str | None:
    held = set(granted)
    extra = [item for item in requested if item not in held]
    if extra:
        return f"{where}: {_show(extra[0])} is not granted"
    return None


# set: strings; narrower = subset; a call gives one string or a non-empty list of them.


def _set_matching(entry: list[str], value: Any, where: str) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        return f"{where}: the call must give a string or a non-empty list of strings"
    for item in items:
        if not isinstance(item, str) or item not in entry:
            return f"{where}: the call's value is not listed"
    return None


_SET = _Kind(
    "set",
    "an array of strings; narrower means a subset",
    lambda v, w: _string_list(v, w),
    _subset_problem,
    _set_matching,
)


# tool_set: tool names.


def _tool_name(item: str, where: str) -> str:
    if not _TOOL_RE.match(item):
        raise DetailsRejected(
            f"{where}: a tool name is 1 to 128 of A-Z a-z 0-9 _ . : / - (got {_show(item)})"
        )
    return item


def _tool_matching(entry: list[str], value: Any, where: str) -> str | None:
    if not isinstance(value, str):
        return f"{where}: the call must name one tool"
    if value not in entry:
        return f"tool {_show(value)} is not listed"
    return None


_TOOL_SET = _Kind(
    "tool_set",
    "an array of tool names (exact, case-sensitive); narrower means a subset",
    lambda v, w: _string_list(v, w, _tool_name),
    _subset_problem,
    _tool_matching,
)


# action_set: HTTP methods (upper case) or action names (case-sensitive).


def _action(item: str, where: str) -> str:
    if item.upper() in HTTP_METHODS:
        return item.upper()
    if not _ACTION_RE.match(item):
        raise DetailsRejected(
            f"{where}: an action is an HTTP method or 1 to 128 of A-Z a-z 0-9 _ . : / - "
            f"(got {_show(item)})"
        )
    return item


def _action_matching(entry: list[str], value: Any, where: str) -> str | None:
    if not isinstance(value, str):
        return f"{where}: the call must name one action"
    action = value.upper() if value.upper() in HTTP_METHODS else value
    if action not in entry:
        return f"action {_show(action)} is not listed"
    return None


_ACTION_SET = _Kind(
    "action_set",
    "an array of HTTP methods (any case, kept upper case) or action names "
    "(case-sensitive); narrower means a subset",
    lambda v, w: _string_list(v, w, _action),
    _subset_problem,
    _action_matching,
)


# uri_set / http_uri_set.


def _uri_list(value: Any, where: str, web_only: bool) -> list[str]:
    def check(item: str, at: str) -> str:
        try:
            return _parse_uri(item, web_only=web_only, allow_query=False).text
        except _BadUri as exc:
            raise DetailsRejected(f"{at} {exc} (got {_show(item)})") from None

    return _string_list(value, where, check)


def _uris(texts: list[str]) -> list[_Uri]:
    return [_parse_uri(t, web_only=False, allow_query=False) for t in texts]


def _uri_narrowing(requested: list[str], granted: list[str], where: str) -> str | None:
    held = _uris(granted)
    for uri in _uris(requested):
        if not any(g.covers(uri) for g in held):
            return f"{where}: {_show(uri.text)} is not within a granted location"
    return None


def _uri_matching(web_only: bool) -> Callable[[list[str], Any, str], str | None]:
    def matching(entry: list[str], value: Any, where: str) -> str | None:
        try:
            uri = _parse_uri(value, web_only=web_only, allow_query=True)
        except _BadUri as exc:
            return f"{where}: the call's URI {exc}"
        if not any(g.covers(uri) for g in _uris(entry)):
            return f"{where}: {_show(uri.text)} is outside the listed locations"
        return None

    return matching


_URI_SET = _Kind(
    "uri_set",
    "an array of absolute URIs with a host, without query or fragment; narrower means "
    "each URI equals or lies beneath a granted one (same scheme, host and port; whole "
    "path segments)",
    lambda v, w: _uri_list(v, w, web_only=False),
    _uri_narrowing,
    _uri_matching(web_only=False),
)
_HTTP_URI_SET = _Kind(
    "http_uri_set",
    "like uri_set, limited to http and https",
    lambda v, w: _uri_list(v, w, web_only=True),
    _uri_narrowing,
    _uri_matching(web_only=True),
)


# exact: one string.


def _exact(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DetailsRejected(f"{where} must be a non-empty string")
    return value


def _exact_narrowing(requested: str, granted: str, where: str) -> str | None:
    if requested != granted:
        return f"{where}: {_show(requested)} differs from the granted {_show(granted)}"
    return None


def _exact_matching(entry: str, value: Any, where: str) -> str | None:
    if value != entry or not isinstance(value, str):
        return f"{where}: the call's value differs from the entry's"
    return None


_EXACT = _Kind("exact", "a string; narrower means equal", _exact, _exact_narrowing, _exact_matching)


# max_number / min_number.


def _bound_narrowing(upper: bool) -> Callable[[Number, Number, str], str | None]:
    def narrowing(requested: Number, granted: Number, where: str) -> str | None:
        if requested > granted if upper else requested < granted:
            relation = "above" if upper else "below"
            return f"{where}: {_show(requested)} is {relation} the granted {_show(granted)}"
        return None

    return narrowing


def _bound_matching(upper: bool) -> Callable[[Number, Any, str], str | None]:
    def matching(entry: Number, value: Any, where: str) -> str | None:
        number = _as_number(value)
        if number is None:
            return f"{where}: the call must give a finite number"
        if number > entry if upper else number < entry:
            return f"{where}: the call's value is {'above' if upper else 'below'} the limit"
        return None

    return matching


_MAX_NUMBER = _Kind(
    "max_number",
    "a number, an upper limit; narrower means smaller or equal",
    _number,
    _bound_narrowing(upper=True),
    _bound_matching(upper=True),
)
_MIN_NUMBER = _Kind(
    "min_number",
    "a number, a lower limit; narrower means greater or equal",
    _number,
    _bound_narrowing(upper=False),
    _bound_matching(upper=False),
)


# argument_constraints: tool_invocation.arguments.


def _normalize_arguments(value: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not value:
        raise DetailsRejected(
            f"{where} must be a non-empty object mapping argument names to constraints"
        )
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(value):
        if not _ARGUMENT_RE.match(name):
            raise DetailsRejected(
                f"{where}: an argument name is 1 to 128 of A-Z a-z 0-9 _ . - (got {_show(name)})"
            )
        out[name] = _normalize_constraint(value[name], f"{where}.{name}")
    return out


def _arguments_narrowing(
    requested: Mapping[str, Any], granted: Mapping[str, Any], where: str
) -> str | None:
    for name, held in granted.items():
        if name not in requested:
            return (
                f"{where}: argument {_show(name)} is constrained by the grant, not by the request"
            )
        problem = _Constraint.of(requested[name]).implication_problem(_Constraint.of(held))
        if problem is not None:
            return f"{where}: argument {_show(name)}: {problem}"
    return None


def _arguments_matching(entry: Mapping[str, Any], value: Any, where: str) -> str | None:
    if not isinstance(value, Mapping):
        return f"{where}: the call's arguments must be an object"
    for name, spec in entry.items():
        if name not in value:
            return f"argument {_show(name)} is constrained but missing from the call"
        if not _Constraint.of(spec).admits(value[name]):
            return f"argument {_show(name)} is outside the entry's constraint"
    return None


_ARGUMENTS = _Kind(
    "argument_constraints",
    "an object mapping argument names to constraints made of enum, const, min, max, "
    "max_length and prefix; a constrained argument must be present in the call",
    _normalize_arguments,
    _arguments_narrowing,
    _arguments_matching,
)

_KINDS: Final = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            _SET,
            _TOOL_SET,
            _ACTION_SET,
            _URI_SET,
            _HTTP_URI_SET,
            _EXACT,
            _MAX_NUMBER,
            _MIN_NUMBER,
            _ARGUMENTS,
        )
    }
)


# -- types -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    kind: str
    required: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class _Type:
    name: str
    description: str
    fields: Mapping[str, _Field]
    builtin: bool

    def describe(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, spec in self.fields.items():
            entry: dict[str, Any] = {"kind": spec.kind, "required": spec.required}
            entry["description"] = spec.description or _KINDS[spec.kind].description
            fields[name] = entry
        return {
            "type": self.name,
            "builtin": self.builtin,
            "description": self.description,
            "fields": fields,
        }


_BUILTIN_TYPES: Final = (
    _Type(
        TOOL_INVOCATION,
        "Call the listed tools, optionally only on the listed MCP servers or gateways "
        "and only with arguments that satisfy the given constraints.",
        MappingProxyType(
            {
                "tools": _Field("tool_set", required=True),
                "locations": _Field(
                    "uri_set",
                    required=False,
                    description="the MCP servers or gateways (absolute URIs) the tools "
                    "may be called on; a call's location must equal or lie beneath one",
                ),
                "arguments": _Field("argument_constraints", required=False),
            }
        ),
        builtin=True,
    ),
    _Type(
        API_ACCESS,
        "Call an HTTP API beneath the listed locations with the listed actions "
        "(RFC 9396 section 2.2 common data fields).",
        MappingProxyType(
            {
                "locations": _Field("http_uri_set", required=True),
                "actions": _Field("action_set", required=True),
                "datatypes": _Field("set", required=False),
                "identifier": _Field("exact", required=False),
            }
        ),
        builtin=True,
    ),
)


def _fold(name: str) -> str:
    """The form in which two type names count as the same (no shadowing by case or
    punctuation: ``Tool-Invocation`` shadows ``tool_invocation``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _parse_definition(raw: Any, where: str) -> _Type:
    """One operator type definition: ``{"type", "description"?, "fields"}``."""
    if not isinstance(raw, Mapping):
        raise DetailsRejected(f"{where} must be an object")
    unknown = sorted(str(k) for k in set(raw) - {"type", "description", "fields"})
    if unknown:
        raise DetailsRejected(f"{where}: unknown member {_show(unknown[0])}")
    name = raw.get("type")
    if not isinstance(name, str) or not _TYPE_RE.match(name):
        raise DetailsRejected(
            f"{where}.type must be 1 to 128 of A-Z a-z 0-9 _ . : / + -, starting with a letter"
        )
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_STRING:
        raise DetailsRejected(f"{where}.description must be a string of at most {MAX_STRING}")
    _check_text(description, f"{where}.description")
    fields_raw = raw.get("fields")
    if not isinstance(fields_raw, Mapping):
        raise DetailsRejected(f"{where}.fields must be an object of field definitions")
    if len(fields_raw) > MAX_FIELDS:
        raise DetailsRejected(f"{where}: a type has at most {MAX_FIELDS} fields")
    fields: dict[str, _Field] = {}
    for field_name, spec in fields_raw.items():
        at = f"{where}.fields.{field_name}" if isinstance(field_name, str) else where
        if not isinstance(field_name, str) or not _FIELD_RE.match(field_name):
            raise DetailsRejected(f"{at}: field names are 1 to 64 of a-z 0-9 _, from a letter")
        if field_name == "type":
            raise DetailsRejected(f"{at}: 'type' is not a field")
        if not isinstance(spec, Mapping):
            raise DetailsRejected(f"{at} must be an object with a kind")
        extra = sorted(str(k) for k in set(spec) - {"kind", "required", "description"})
        if extra:
            raise DetailsRejected(f"{at}: unknown member {_show(extra[0])}")
        kind = spec.get("kind")
        if kind not in CUSTOM_FIELD_KINDS:
            raise DetailsRejected(f"{at}.kind must be one of {', '.join(CUSTOM_FIELD_KINDS)}")
        common = _COMMON_FIELD_KINDS.get(field_name)
        if common is not None and kind != common:
            raise DetailsRejected(
                f"{at}: {field_name} is an RFC 9396 common field and must be of kind {common}"
            )
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise DetailsRejected(f"{at}.required must be true or false")
        field_description = spec.get("description", "")
        if not isinstance(field_description, str) or len(field_description) > MAX_STRING:
            raise DetailsRejected(f"{at}.description must be a string of at most {MAX_STRING}")
        _check_text(field_description, f"{at}.description")
        fields[field_name] = _Field(str(kind), required, field_description)
    return _Type(name, description, MappingProxyType(fields), builtin=False)


# -- the registry ------------------------------------------------------------------------


def _call_values(call: Any) -> tuple[str, dict[str, Any]]:
    """The entry type a call is checked against and its values by field name."""
    if isinstance(call, ToolCall):
        values: dict[str, Any] = {"tools": call.tool, "arguments": call.arguments}
        if call.location is not None:
            values["locations"] = call.location
        return TOOL_INVOCATION, values
    if isinstance(call, ApiCall):
        values = {"actions": call.action, "locations": call.url}
        if call.datatype is not None:
            values["datatypes"] = call.datatype
        if call.identifier is not None:
            values["identifier"] = call.identifier
        return API_ACCESS, values
    if isinstance(call, CustomCall) and isinstance(call.values, Mapping):
        return call.type, {k: v for k, v in call.values.items() if v is not None}
    raise TypeError("call must be a ToolCall, an ApiCall or a CustomCall")


class DetailTypeRegistry:
    """The ``authorization_details`` types this server understands (RFC 9396 section
    2.1), and the operations on details of those types.

    Immutable: :meth:`builtin` gives the two built-in types, :meth:`with_types` a new
    registry with operator types added. ``names`` is what the authorization server
    metadata lists as ``authorization_details_types_supported`` (section 10)."""

    __slots__ = ("_types",)

    def __init__(self, types: Sequence[_Type] = _BUILTIN_TYPES) -> None:
        self._types: Mapping[str, _Type] = MappingProxyType({t.name: t for t in types})

    @classmethod
    def builtin(cls) -> DetailTypeRegistry:
        """A registry with only ``tool_invocation`` and ``api_access``."""
        return cls(_BUILTIN_TYPES)

    def with_types(self, definitions: Sequence[Mapping[str, Any]]) -> DetailTypeRegistry:
        """A new registry with the operator types in ``definitions`` added.

        A definition is ``{"type": name, "description": text, "fields": {field: {"kind":
        kind, "required": bool, "description": text}}}`` with kinds from
        :data:`CUSTOM_FIELD_KINDS`. A type may not redefine or shadow (same letters and
        digits, ignoring case and punctuation) a type already present, and a field named
        like an RFC 9396 section 2.2 common field must have that field's kind. Raise
        :class:`DetailsRejected` on any problem."""
        if isinstance(definitions, str | bytes | Mapping) or not isinstance(definitions, Sequence):
            raise DetailsRejected("authorization_details types must be a list of definitions")
        custom = sum(1 for t in self._types.values() if not t.builtin)
        if custom + len(definitions) > MAX_CUSTOM_TYPES:
            raise DetailsRejected(f"at most {MAX_CUSTOM_TYPES} operator-defined types")
        types = dict(self._types)
        folded = {_fold(name): name for name in types}
        for i, raw in enumerate(definitions):
            spec = _parse_definition(raw, f"types[{i}]")
            clash = folded.get(_fold(spec.name))
            if clash is not None:
                what = "the built-in type" if types[clash].builtin else "the type"
                raise DetailsRejected(
                    f"types[{i}]: {_show(spec.name)} redefines or shadows {what} {_show(clash)}"
                )
            types[spec.name] = spec
            folded[_fold(spec.name)] = spec.name
        return DetailTypeRegistry(tuple(types.values()))

    @property
    def names(self) -> tuple[str, ...]:
        """The supported type names, built-ins first (RFC 9396 section 10)."""
        return tuple(self._types)

    def describe(self) -> list[dict[str, Any]]:
        """Every type with its fields, kinds and descriptions, for metadata and docs."""
        return [t.describe() for t in self._types.values()]

    # -- parsing ---------------------------------------------------------------------------

    def _entry(self, raw: Any, index: int, *, skip_unknown: bool = False) -> dict[str, Any] | None:
        where = f"authorization_details[{index}]"
        if not isinstance(raw, dict):
            raise DetailsRejected(f"{where} must be an object")
        name = raw.get("type")
        if not isinstance(name, str) or not name:
            raise DetailsRejected(f'{where} must have a string "type" (RFC 9396 section 2)')
        spec = self._types.get(name)
        if spec is None:
            if skip_unknown:
                return None
            raise DetailsRejected(
                f"{where}: unknown type {_show(name)} (supported: {', '.join(self.names)})"
            )
        unknown = sorted(set(raw) - set(spec.fields) - {"type"})
        if unknown:
            raise DetailsRejected(
                f"{where} ({name}): unknown member {_show(unknown[0])} (RFC 9396 section 5)"
            )
        out: dict[str, Any] = {"type": name}
        for field_name, field_spec in spec.fields.items():
            if field_name not in raw:
                if field_spec.required:
                    raise DetailsRejected(f"{where} ({name}): {field_name} is required")
                continue
            out[field_name] = _KINDS[field_spec.kind].normalize(
                raw[field_name], f"{where}.{field_name}"
            )
        return out

    def _indexed(self, raw: Any, *, skip_unknown: bool = False) -> list[tuple[int, dict[str, Any]]]:
        entries = []
        for index, item in enumerate(_top_level(raw)):
            entry = self._entry(item, index, skip_unknown=skip_unknown)
            if entry is not None:
                entries.append((index, entry))
        return entries

    def parse(self, raw: Any) -> tuple[dict[str, Any], ...]:
        """Check and normalise ``authorization_details`` (RFC 9396 sections 2, 3, 5).

        ``raw`` is the JSON text of the request parameter (str or bytes) or an already
        decoded array. Every entry must be an object of a known type holding only that
        type's members, each well formed; anything else raises :class:`DetailsRejected`
        (the ``invalid_authorization_details`` error of section 5).

        The result is plain JSON, normalised so that equal requests compare equal: sets
        sorted without duplicates, HTTP methods upper case, URIs in normal form,
        integral numbers as integers, and exact duplicate entries dropped (order is
        otherwise kept). Parsing the result again gives the same result."""
        out: list[dict[str, Any]] = []
        for _, entry in self._indexed(raw):
            if entry not in out:
                out.append(entry)
        if _json_size(out) > MAX_JSON_BYTES:  # normal forms can be a little longer
            raise DetailsRejected(
                f"authorization_details is larger than {MAX_JSON_BYTES} bytes of JSON"
            )
        return tuple(out)

    # -- narrowing (RFC 9396 section 6.1) ---------------------------------------------------

    def _entry_narrowing(
        self, spec: _Type, requested: Mapping[str, Any], granted: Mapping[str, Any]
    ) -> str | None:
        for field_name, field_spec in spec.fields.items():
            if field_name not in granted:
                continue  # unconstrained in the grant
            if field_name not in requested:
                return f"{field_name} is limited by the grant but left open in the request"
            problem = _KINDS[field_spec.kind].narrowing(
                requested[field_name], granted[field_name], field_name
            )
            if problem is not None:
                return problem
        return None

    def narrowing_problem(self, requested: Any, granted: Any) -> str | None:
        """None when ``requested`` is at most as wide as ``granted``; else why not.

        RFC 9396 section 6.1 lets a token request ask for a subset of what was
        authorised; the same rule makes every delegation hop narrower. Each requested
        entry must be covered by one granted entry of its type: every field the granted
        entry constrains is constrained at least as tightly in the requested one (a
        field left out means "any", so leaving out a granted field widens), and fields
        the granted entry leaves out are free. An entry is not split across several
        granted entries. Nothing requested is always fine.

        Both sides are parsed first; raise :class:`DetailsRejected` if either is
        malformed (the message says which)."""
        wanted = self._indexed(requested)
        try:
            held = self._indexed(granted)
        except DetailsRejected as exc:
            raise DetailsRejected(f"the granted details are malformed: {exc}") from None
        for index, entry in wanted:
            name = entry["type"]
            candidates = [(j, g) for j, g in held if g["type"] == name]
            if not candidates:
                return f"authorization_details[{index}] ({name}): nothing of this type is granted"
            first: tuple[int, str] | None = None
            for j, grant in candidates:
                problem = self._entry_narrowing(self._types[name], entry, grant)
                if problem is None:
                    break
                if first is None:
                    first = (j, problem)
            else:
                assert first is not None
                more = f" and {len(candidates) - 1} other(s)" if len(candidates) > 1 else ""
                return (
                    f"authorization_details[{index}] ({name}) is wider than granted entry "
                    f"{first[0]}{more}: {first[1]}"
                )
        return None

    # -- enforcement ------------------------------------------------------------------------

    def permits(self, details: Any, call: Call) -> DetailsVerdict:
        """Whether ``details`` (a token's ``authorization_details``, RFC 9396 section
        9.1) permit ``call``.

        Allowed when some entry of the call's type covers it: for every field the entry
        constrains, the call gives a value the field admits (a missing value, such as a
        constrained argument the call leaves out or a location the enforcement point
        does not know, is not admitted); fields the entry leaves out are free. Values
        the call gives for fields the type does not define deny the call.

        A :class:`ToolCall` is matched against ``tool_invocation`` entries, an
        :class:`ApiCall` against ``api_access`` entries, a :class:`CustomCall` against
        entries of its ``type`` with ``values`` keyed by field name: ``set`` takes a
        string or a list of strings (all listed), ``uri_set`` a URI (equal to or
        beneath a listed one; its query is ignored), ``exact`` an equal string,
        ``max_number``/``min_number`` a number within the limit.

        Entries of types this registry does not know are skipped (they cannot permit
        the call); malformed details, no entry of the call's type, or none that covers
        the call deny. Whether a token *without* details is limited at all is for the
        caller to decide."""
        try:
            name, values = _call_values(call)
        except TypeError as exc:
            return DetailsVerdict(False, str(exc), None)
        spec = self._types.get(name)
        if spec is None:
            return DetailsVerdict(False, f"the type {_show(name)} is not supported", None)
        extra = sorted(set(values) - set(spec.fields))
        if extra:
            return DetailsVerdict(
                False, f"the call gives {_show(extra[0])}, which {name} does not define", None
            )
        try:
            entries = self._indexed(details if details is not None else [], skip_unknown=True)
        except DetailsRejected as exc:
            return DetailsVerdict(False, f"the authorization_details are malformed: {exc}", None)
        reasons: list[str] = []
        for index, entry in entries:
            if entry["type"] != name:
                continue
            problem = self._entry_matching(spec, entry, values)
            if problem is None:
                return DetailsVerdict(
                    True, f"authorization_details[{index}] ({name}) permits the call", index
                )
            reasons.append(f"[{index}] {problem}")
        if not reasons:
            return DetailsVerdict(False, f"no authorization_details entry of type {name}", None)
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        return DetailsVerdict(
            False, _clip(f"no authorization_details entry permits the call: {shown}", 500), None
        )

    def _entry_matching(
        self, spec: _Type, entry: Mapping[str, Any], values: Mapping[str, Any]
    ) -> str | None:
        for field_name, field_spec in spec.fields.items():
            if field_name not in entry:
                continue
            if field_name not in values:
                return f"the call gives no {field_name}, which the entry limits"
            problem = _KINDS[field_spec.kind].matching(
                entry[field_name], values[field_name], field_name
            )
            if problem is not None:
                return problem
        return None


BUILTIN: Final = DetailTypeRegistry.builtin()


def permits(details: Any, call: Call, registry: DetailTypeRegistry = BUILTIN) -> DetailsVerdict:
    """Whether a token's ``authorization_details`` permit ``call``: the check every
    enforcement point makes for a task-scoped token (RFC 9396 section 9.1). See
    :meth:`DetailTypeRegistry.permits`; enforcement points that serve operator types
    pass the control plane's registry."""
    return registry.permits(details, call)


_POLICY_SETS: Final = ("tools", "actions", "locations", "datatypes")


def policy_context(details: Any) -> list[dict[str, Any]]:
    """The ``authorization_details`` policy context: one record per entry with
    ``type`` and, where the entry has them, ``tools``, ``actions``, ``locations``,
    ``datatypes`` (lists of strings) and ``identifier`` (a string). Other members (tool
    argument constraints, operator fields) are left to :func:`permits`.

    ``details`` are parsed details (a token's claim). Raise :class:`DetailsRejected`
    when an entry or one of those members has another shape, rather than hide it."""
    if not isinstance(details, list | tuple):
        raise DetailsRejected("authorization_details must be an array of objects")
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(details):
        where = f"authorization_details[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise DetailsRejected(f'{where} must be an object with a string "type"')
        record: dict[str, Any] = {"type": entry["type"]}
        for member in _POLICY_SETS:
            if member in entry:
                value = entry[member]
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise DetailsRejected(f"{where}.{member} must be an array of strings")
                record[member] = list(value)
        if "identifier" in entry:
            if not isinstance(entry["identifier"], str):
                raise DetailsRejected(f"{where}.identifier must be a string")
            record["identifier"] = entry["identifier"]
        out.append(record)
    return out
