"""Detail types (RFC 9396 section 2.1): the built-in ``tool_invocation`` and ``api_access``
types with their fields, and parsing an operator-defined type from its definition,
whose fields use the kinds in :data:`CUSTOM_FIELD_KINDS`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from agentiam.core.delegation.authorization_details._field_kinds import _KINDS
from agentiam.core.delegation.authorization_details._limits import (
    MAX_FIELDS,
    MAX_STRING,
    DetailsRejected,
    _check_text,
    _show,
)

TOOL_INVOCATION: Final = "tool_invocation"
API_ACCESS: Final = "api_access"

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

_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:/+-]{0,127}$")
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


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
