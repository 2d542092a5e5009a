"""Values crossing into Cedar: caller JSON checked against a schema type, and Python
values written as Cedar source literals.

Everything an enforcement point or operator sends (tool arguments, resource
attributes) passes :func:`to_cedar` against its declared type, so evaluation sees
exactly the types the validated policies were checked against. Depth, size and
numeric range are bounded here (Cedar's ``Long`` is a signed 64-bit integer; its
``decimal`` has four fractional digits).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_ITEMS",
    "ValueTypeError",
    "cedar_string",
    "entity_literal",
    "is_encodable",
    "to_cedar",
]

MAX_DEPTH = 8
MAX_ITEMS = 1_000
MAX_STRING = 8_192
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_ENTITY_ID_MAX = 512
_TYPE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ValueTypeError(ValueError):
    """A value does not fit its declared Cedar type; ``path`` names where."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def is_encodable(value: str) -> bool:
    """False for text with lone surrogates (possible in JSON: ``"\\ud800"``), which no
    UTF-8 consumer, Cedar included, accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def cedar_string(value: str) -> str:
    """``value`` as a Cedar string literal (Cedar escapes: ``\\n \\r \\t \\0 \\\\ \\"``
    and ``\\u{hex}`` for other control characters)."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{{{code:x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def entity_literal(entity_type: str, entity_id: str) -> str:
    """``Type::"id"`` with the id escaped; the type must be a plain Cedar name."""
    if not _TYPE_NAME_RE.fullmatch(entity_type):
        raise ValueTypeError("entity", f"{entity_type!r} is not a Cedar type name")
    return f"{entity_type}::{cedar_string(entity_id)}"


def _entity_ref(path: str, value: Any, expected: str | None) -> dict[str, Any]:
    if isinstance(value, Mapping) and "__entity" in value:
        value = value["__entity"]
    if not (isinstance(value, Mapping) and set(value) == {"type", "id"}):
        raise ValueTypeError(path, 'expected an entity reference {"type": …, "id": …}')
    etype, eid = value["type"], value["id"]
    if not isinstance(etype, str) or not _TYPE_NAME_RE.fullmatch(etype):
        raise ValueTypeError(path, "the entity type is not a Cedar type name")
    if expected is not None and etype != expected:
        raise ValueTypeError(path, f"expected an entity of type {expected}")
    if not isinstance(eid, str) or not eid or len(eid) > _ENTITY_ID_MAX:
        raise ValueTypeError(path, "the entity id must be a non-empty string")
    if not is_encodable(eid):
        raise ValueTypeError(path, "the entity id is not valid Unicode")
    return {"__entity": {"type": etype, "id": eid}}


def _decimal(path: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueTypeError(path, "expected a decimal number")
    text = str(value)
    if len(text) > 64:
        raise ValueTypeError(path, "the decimal is out of range")
    try:
        number = Decimal(text)
        if not number.is_finite():
            raise InvalidOperation
        if abs(number) >= Decimal("922337203685477.5808"):
            raise ValueTypeError(path, "the decimal is out of range")
        exact = number == number.quantize(Decimal("0.0001"))
    except InvalidOperation:
        raise ValueTypeError(path, "expected a decimal number within Cedar's range") from None
    if not exact:
        raise ValueTypeError(path, "a Cedar decimal has at most four fractional digits")
    return {"__extn": {"fn": "decimal", "arg": f"{number:.4f}"}}


def to_cedar(
    value: Any,
    spec: Mapping[str, Any],
    common: Mapping[str, Any],
    *,
    path: str = "value",
    depth: int = 0,
) -> Any:
    """Convert a JSON value to Cedar's JSON value form for the schema type ``spec``.

    Records drop nothing silently: an attribute the type does not declare raises,
    except where the caller filters first (tool arguments).
    """
    if depth > MAX_DEPTH:
        raise ValueTypeError(path, f"nested deeper than {MAX_DEPTH} levels")
    kind = spec.get("type")
    if isinstance(kind, str) and kind in common:
        return to_cedar(value, common[kind], common, path=path, depth=depth)
    if kind == "String":
        if not isinstance(value, str):
            raise ValueTypeError(path, "expected a string")
        if len(value) > MAX_STRING:
            raise ValueTypeError(path, f"strings are limited to {MAX_STRING} characters")
        if not is_encodable(value):
            raise ValueTypeError(path, "the string is not valid Unicode")
        return value
    if kind == "Long":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueTypeError(path, "expected an integer")
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise ValueTypeError(path, "the integer is out of the 64-bit range")
        return value
    if kind == "Boolean":
        if not isinstance(value, bool):
            raise ValueTypeError(path, "expected true or false")
        return value
    if kind == "Set":
        if not isinstance(value, list | tuple):
            raise ValueTypeError(path, "expected a list")
        if len(value) > MAX_ITEMS:
            raise ValueTypeError(path, f"lists are limited to {MAX_ITEMS} items")
        element = spec.get("element") or {}
        return [
            to_cedar(v, element, common, path=f"{path}[{i}]", depth=depth + 1)
            for i, v in enumerate(value)
        ]
    if kind == "Record":
        if not isinstance(value, Mapping):
            raise ValueTypeError(path, "expected an object")
        attributes: Mapping[str, Any] = spec.get("attributes") or {}
        out: dict[str, Any] = {}
        for name, item in value.items():
            attr = attributes.get(name)
            if attr is None:
                raise ValueTypeError(f"{path}.{name}", "is not declared in the schema")
            out[name] = to_cedar(item, attr, common, path=f"{path}.{name}", depth=depth + 1)
        missing = [
            name
            for name, attr in attributes.items()
            if attr.get("required", True) and name not in out
        ]
        if missing:
            raise ValueTypeError(path, f"missing required attributes {sorted(missing)}")
        return out
    if kind == "Entity":
        return _entity_ref(path, value, spec.get("name"))
    if kind == "Extension":
        if spec.get("name") == "decimal":
            return _decimal(path, value)
        if spec.get("name") == "ipaddr":
            if not isinstance(value, str) or len(value) > 64:
                raise ValueTypeError(path, "expected an IP address or CIDR string")
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueTypeError(path, "expected an IP address or CIDR string") from None
            return {"__extn": {"fn": "ip", "arg": value}}
        raise ValueTypeError(path, f"unsupported extension type {spec.get('name')!r}")
    if kind is None and "name" in spec:  # {"type": "EntityOrCommon", "name": …}
        name = spec["name"]
        if name in common:
            return to_cedar(value, common[name], common, path=path, depth=depth)
        return _entity_ref(path, value, name)
    if kind == "EntityOrCommon":
        name = spec.get("name", "")
        if name in common:
            return to_cedar(value, common[name], common, path=path, depth=depth)
        if name in ("String", "Long", "Bool", "Boolean"):
            return to_cedar(
                value, {"type": "Boolean" if name == "Bool" else name}, common, path=path
            )
        return _entity_ref(path, value, name)
    raise ValueTypeError(path, f"unsupported schema type {kind!r}")
