"""Field kinds: how each kind of field in an entry is normalised, compared when narrowing
(RFC 9396 section 6.1) and matched against a call. The kinds are sets of strings, tool
names and actions, URI sets, exact strings, upper and lower number limits, and tool
argument constraints."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from agentiam.core.delegation.authorization_details._constraints import (
    _Constraint,
    _normalize_constraint,
)
from agentiam.core.delegation.authorization_details._limits import DetailsRejected, _show
from agentiam.core.delegation.authorization_details._scalars import Number, _as_number, _number
from agentiam.core.delegation.authorization_details._uris import _BadUri, _parse_uri, _Uri

# RFC 9110 section 9 plus PATCH (RFC 5789): compared without regard to case.
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

_TOOL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")
_ARGUMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ACTION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")


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
