"""The Cedar schema of the AgentIAM domain, and operator extensions of it.

The schema is kept in Cedar's JSON schema format (Cedar reference, "Schema format,
JSON") with the empty namespace, so policies name types plainly (``Agent::"agt_…"``).

* **Principals**: ``Agent`` (a member of its ``Environment``, of one ``AgentGroup`` per
  label ``key=value`` and, for a sub-agent, of its parent ``Agent``; labels are also
  entity tags) and ``Human``.
* **Resources**: ``Tool`` (in an ``McpServer``), ``Api`` / ``Endpoint`` (an endpoint is
  in its API), ``DataSet`` (in an ``McpServer`` for the MCP gateway's resources and
  prompts); the agent itself for ``spawn_agent``.
* **Actions** and action groups: ``invoke_tool``; ``read``/``write``/``delete``; the
  HTTP methods; ``spawn_agent``; groups ``read_actions``, ``write_actions``,
  ``delete_actions``, ``http``.
* **Context** (:data:`CONTEXT_TYPE`): time, delegation chain, authorization details,
  risk score, approval state, tool arguments, data classification, source environment
  and the principal's recent request rate.

Cedar has no open records, so tool arguments are typed by a common type,
``ToolArguments``, whose attributes are all optional. Operators declare the arguments
their tools take by extending that record (see :func:`merge_extension`); an argument
nobody declared is left out of the context, which no validated policy can read anyway.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cedarpy

from agentiam.core.policy.model import EntityRef
from agentiam.errors import InvalidInput

__all__ = [
    "ACTION_GROUPS",
    "BASE_SCHEMA",
    "DELETE_ACTIONS",
    "HTTP_METHODS",
    "PRINCIPAL_TYPES",
    "RESERVED_TYPES",
    "RESOURCE_TYPES",
    "WRITE_ACTIONS",
    "EntityTypeSpec",
    "Schema",
    "load_schema",
    "merge_extension",
    "parse_extension",
]

HTTP_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
RESOURCE_TYPES = ("Tool", "McpServer", "Api", "Endpoint", "DataSet")
PRINCIPAL_TYPES = ("Agent", "Human")
# Types whose entities come from the registry (or the schema), never the catalog.
RESERVED_TYPES = frozenset({"Agent", "Human", "Environment", "AgentGroup", "Action"})

READ_ACTIONS = ("read", "GET", "HEAD", "OPTIONS")
WRITE_ACTIONS = ("write", "POST", "PUT", "PATCH")
DELETE_ACTIONS = ("delete", "DELETE")
ACTION_GROUPS: Mapping[str, tuple[str, ...]] = {
    "read_actions": READ_ACTIONS,
    "write_actions": WRITE_ACTIONS,
    "delete_actions": DELETE_ACTIONS,
    "http": HTTP_METHODS,
}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_EXTENSION_BYTES = 256 * 1024
MAX_EXTENSION_ITEMS = 256
MAX_HIERARCHY_DEPTH = 16
_RESERVED_TYPE_NAMES = frozenset(
    {"Bool", "Boolean", "Entity", "Extension", "Long", "Record", "Set", "String",
     "EntityOrCommon", "decimal", "ipaddr", "datetime", "duration", "__cedar"}
)  # fmt: skip


def _t(type_name: str, *, required: bool = True, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_name, **extra}
    if not required:
        spec["required"] = False
    return spec


def _entity(name: str, *, required: bool = True) -> dict[str, Any]:
    return _t("Entity", name=name, required=required)


def _set(element: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return _t("Set", element=element, required=required)


def _record(attributes: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return _t("Record", attributes=attributes, required=required)


_STRING = _t("String")
_OPT_STRING = _t("String", required=False)

# Attributes every resource type may carry (all optional: operators set what they know).
_RESOURCE_ATTRS = {
    "name": _OPT_STRING,
    "classification": _OPT_STRING,  # public | internal | confidential | restricted
    "environment": _OPT_STRING,
    "domain": _OPT_STRING,
    "owner": _entity("Human", required=False),
    "sensitive": _t("Boolean", required=False),
}

_CONTEXT_ATTRS: dict[str, Any] = {
    "time": _record(
        {
            "epoch": _t("Long"),  # seconds since 1970 (UTC)
            "hour": _t("Long"),  # 0-23 in the configured policy time zone
            "minute": _t("Long"),
            "weekday": _t("Long"),  # ISO: 1 = Monday … 7 = Sunday
            "date": _STRING,  # YYYY-MM-DD in the policy time zone
        }
    ),
    "delegation": _record(
        {
            "depth": _t("Long"),  # 0 = the agent acts on its own
            "actors": _set(_entity("Agent")),  # every agent in the chain
            "initiating_human": _entity("Human", required=False),
        }
    ),
    "authorization_details": _set(
        _record(
            {
                "type": _STRING,
                "tools": _set(_STRING, required=False),
                "actions": _set(_STRING, required=False),
                "locations": _set(_STRING, required=False),
                "datatypes": _set(_STRING, required=False),
                "identifier": _OPT_STRING,
            }
        )
    ),
    "risk_score": _t("Long"),  # 0-100
    "approval": _record(
        {
            "state": _STRING,  # none | pending | approved | denied
            "approver": _entity("Human", required=False),
        }
    ),
    "args": _t("ToolArguments"),
    "data_classification": _STRING,  # "unknown" unless the enforcement point knows
    "source_environment": _STRING,  # "unknown" unless the enforcement point knows
    "request_rate": _t("Long"),  # this principal's decisions in the last 60 s
}

CONTEXT_TYPE = "RequestContext"


def _applies(principals: tuple[str, ...], resources: tuple[str, ...]) -> dict[str, Any]:
    return {
        "principalTypes": list(principals),
        "resourceTypes": list(resources),
        "context": {"type": CONTEXT_TYPE},
    }


def _base_actions() -> dict[str, Any]:
    actions: dict[str, Any] = {
        group: {} for group in ACTION_GROUPS
    }  # groups are never requested directly
    groups_of: dict[str, list[str]] = {}
    for group, members in ACTION_GROUPS.items():
        for member in members:
            groups_of.setdefault(member, []).append(group)

    def action(name: str, resources: tuple[str, ...]) -> None:
        spec: dict[str, Any] = {"appliesTo": _applies(PRINCIPAL_TYPES, resources)}
        if name in groups_of:
            spec["memberOf"] = [{"id": g} for g in groups_of[name]]
        actions[name] = spec

    action("invoke_tool", ("Tool",))
    for name in ("read", "write", "delete"):
        action(name, ("DataSet", "Api", "Endpoint"))
    for method in HTTP_METHODS:
        action(method, ("Api", "Endpoint"))
    action("spawn_agent", ("Agent",))
    return actions


BASE_SCHEMA: dict[str, Any] = {
    "commonTypes": {
        "ToolArguments": _record({}),
        CONTEXT_TYPE: _record(_CONTEXT_ATTRS),
    },
    "entityTypes": {
        "Human": {
            "shape": _record({"email": _STRING, "display_name": _STRING}),
        },
        "Environment": {"shape": _record({})},
        "AgentGroup": {"shape": _record({})},
        "Agent": {
            "memberOfTypes": ["Environment", "AgentGroup", "Agent"],
            "shape": _record(
                {
                    "name": _STRING,
                    "owners": _set(_entity("Human")),
                    "sponsors": _set(_entity("Human")),
                    "environment": _STRING,
                    "autonomy": _STRING,
                    "autonomy_level": _t("Long"),  # 0 suggest … 4 unsupervised
                    "purpose": _STRING,
                    "status": _STRING,
                    "ephemeral": _t("Boolean"),
                    "parent": _entity("Agent", required=False),
                    "framework": _OPT_STRING,
                    "model": _OPT_STRING,
                }
            ),
            "tags": {"type": "String"},
        },
        "McpServer": {"shape": _record(dict(_RESOURCE_ATTRS)), "tags": {"type": "String"}},
        "Tool": {
            "memberOfTypes": ["McpServer"],
            "shape": _record(
                {
                    **_RESOURCE_ATTRS,
                    "read_only": _t("Boolean", required=False),
                    "destructive": _t("Boolean", required=False),
                }
            ),
            "tags": {"type": "String"},
        },
        "Api": {
            "shape": _record({**_RESOURCE_ATTRS, "host": _OPT_STRING}),
            "tags": {"type": "String"},
        },
        "Endpoint": {
            "memberOfTypes": ["Api"],
            "shape": _record({**_RESOURCE_ATTRS, "method": _OPT_STRING, "path": _OPT_STRING}),
            "tags": {"type": "String"},
        },
        "DataSet": {
            "memberOfTypes": ["McpServer"],
            "shape": _record(dict(_RESOURCE_ATTRS)),
            "tags": {"type": "String"},
        },
    },
    "actions": _base_actions(),
}


class EntityTypeSpec:
    """What the schema says about one entity type: its attribute types, the types it
    may be a member of, and its tag type."""

    __slots__ = ("attributes", "member_of", "name", "tags")

    def __init__(self, name: str, spec: Mapping[str, Any], common: Mapping[str, Any]) -> None:
        self.name = name
        shape = spec.get("shape") or {"type": "Record", "attributes": {}}
        self.attributes: dict[str, Any] = dict(_resolve(shape, common).get("attributes", {}))
        self.member_of: tuple[str, ...] = tuple(spec.get("memberOfTypes", ()))
        tags = spec.get("tags")
        self.tags: dict[str, Any] | None = _resolve(tags, common) if tags else None


def _resolve(spec: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    """Follow a common-type reference (``{"type": "ToolArguments"}``) to its record."""
    seen = 0
    current = dict(spec)
    while current.get("type") in common and seen < 8:
        required = current.get("required", True)
        current = dict(common[current["type"]])
        if not required:
            current["required"] = False
        seen += 1
    return current


class Schema:
    """The effective schema: :data:`BASE_SCHEMA` with an operator extension merged in.

    ``json`` is what cedarpy validates policies against; ``extension`` is the
    operator's fragment as stored (canonical JSON, ``""`` for none).
    """

    def __init__(self, extension: str = "") -> None:
        self.extension = extension
        fragment = parse_extension(extension) if extension else {}
        try:
            self.document = merge_extension(BASE_SCHEMA, fragment)
        except (AttributeError, TypeError, KeyError) as exc:
            raise InvalidInput(f"the schema extension is malformed: {exc}") from None
        self.json = json.dumps({"": self.document}, sort_keys=True)
        try:  # Cedar's own reading of the merged schema, kept parsed for validation
            self.handle = cedarpy.Schema.from_json_str(self.json)
        except ValueError as exc:
            raise InvalidInput(
                "the schema extension does not make a valid Cedar schema",
                errors=[{"message": str(exc).removeprefix("cedarpy: ")}],
            ) from None
        common = self.document["commonTypes"]
        self.common_types: dict[str, Any] = common
        self.entity_types: dict[str, EntityTypeSpec] = {
            name: EntityTypeSpec(name, spec, common)
            for name, spec in self.document["entityTypes"].items()
        }
        self.context: dict[str, Any] = _resolve({"type": CONTEXT_TYPE}, common)
        self.actions: dict[str, Any] = self.document["actions"]
        self.applies_to = self.requestable_actions()
        self._ancestor_refs: dict[str, tuple[EntityRef, ...]] = {
            name: tuple(EntityRef("Action", a) for a in sorted(self.action_ancestors(name)))
            for name in self.actions
        }

    def action_ancestor_refs(self, action: str) -> tuple[EntityRef, ...]:
        """The action groups ``action`` is in, as entity uids (precomputed)."""
        return self._ancestor_refs.get(action, ())

    def action_parents(self, action: str) -> tuple[str, ...]:
        spec = self.actions.get(action) or {}
        return tuple(m["id"] for m in spec.get("memberOf", ()) if "id" in m)

    def action_ancestors(self, action: str) -> frozenset[str]:
        out: set[str] = set()
        stack = list(self.action_parents(action))
        while stack:
            parent = stack.pop()
            if parent not in out:
                out.add(parent)
                stack.extend(self.action_parents(parent))
        return frozenset(out)

    def requestable_actions(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Each action that can be requested: (principal types, resource types)."""
        out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for name, spec in self.actions.items():
            applies = spec.get("appliesTo")
            if applies:
                out[name] = (
                    tuple(applies.get("principalTypes", ())),
                    tuple(applies.get("resourceTypes", ())),
                )
        return out

    def action_entities(self) -> list[dict[str, Any]]:
        """The action hierarchy as Cedar entities, so ``action in Action::"group"``
        holds at evaluation time without passing the schema on every request."""
        return [
            {
                "uid": {"type": "Action", "id": name},
                "attrs": {},
                "parents": [{"type": "Action", "id": p} for p in self.action_parents(name)],
            }
            for name in self.actions
        ]


def parse_extension(text: str) -> dict[str, Any]:
    """Parse an operator's JSON schema fragment (bare, or under the empty namespace)."""
    if len(text.encode()) > MAX_EXTENSION_BYTES:
        raise InvalidInput(f"the schema extension is larger than {MAX_EXTENSION_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"the schema extension is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the schema extension must be a JSON object")
    if set(data) == {""}:
        data = data[""]
    if not isinstance(data, dict):
        raise InvalidInput("the schema extension must be a JSON object")
    unknown = set(data) - {"entityTypes", "actions", "commonTypes"}
    if unknown:
        raise InvalidInput(
            f"the schema extension has unknown members {sorted(unknown)}; it may hold "
            "entityTypes, actions and commonTypes (one namespace: the empty one)"
        )
    return data


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(f"{kind} name {name!r} is not a Cedar identifier")


def _optional_attributes(kind: str, attrs: Any) -> dict[str, Any]:
    if not isinstance(attrs, dict):
        raise InvalidInput(f"{kind}: attributes must be an object")
    out: dict[str, Any] = {}
    for name, spec in attrs.items():
        _check_name("attribute", name)
        if not isinstance(spec, dict) or "type" not in spec:
            raise InvalidInput(f"{kind}.{name}: an attribute needs a type")
        out[name] = {**spec, "required": False}
    return out


def merge_extension(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """Merge an operator fragment into ``base``; the result is a new document.

    Rules, so an extension can add but never weaken or redefine:

    * new entity types, actions and common types are added as written;
    * a base entity type gains the fragment's attributes, always optional (the
      registry does not know their values for every entity); redefining an existing
      attribute, its members or its tags is refused;
    * attributes of the common type ``ToolArguments`` declare tool arguments (optional);
    * a base action or any other base common type cannot be redefined.
    """
    doc = copy.deepcopy(dict(base))
    for member in ("entityTypes", "actions", "commonTypes"):
        if not isinstance(fragment.get(member, {}), dict):
            raise InvalidInput(f"the schema extension's {member} must be an object")
        if len(fragment.get(member) or {}) > MAX_EXTENSION_ITEMS:
            raise InvalidInput(f"the schema extension has more than {MAX_EXTENSION_ITEMS} {member}")
    for name, spec in (fragment.get("entityTypes") or {}).items():
        _check_name("entity type", name)
        if not isinstance(spec, dict):
            raise InvalidInput(f"entity type {name}: must be an object")
        if name == "Action" or name in _RESERVED_TYPE_NAMES:
            raise InvalidInput(f"{name!r} is reserved by Cedar")
        if name not in doc["entityTypes"]:
            doc["entityTypes"][name] = spec
            continue
        if set(spec) - {"shape"}:
            raise InvalidInput(
                f"entity type {name} is built in: an extension may only add attributes to its shape"
            )
        shape = spec.get("shape") or {}
        if not isinstance(shape, dict) or shape.get("type", "Record") != "Record":
            raise InvalidInput(f"entity type {name}: shape must be a Record")
        added = _optional_attributes(name, shape.get("attributes", {}))
        existing = doc["entityTypes"][name]["shape"]["attributes"]
        clash = sorted(set(added) & set(existing))
        if clash:
            raise InvalidInput(f"entity type {name} already has attributes {clash}")
        existing.update(added)
    for name, spec in (fragment.get("actions") or {}).items():
        if not isinstance(name, str) or not name or len(name) > 128:
            raise InvalidInput(f"action name {name!r} is not valid")
        if name in doc["actions"]:
            raise InvalidInput(f"action {name} is built in and cannot be redefined")
        if not isinstance(spec, dict):
            raise InvalidInput(f"action {name}: must be an object")
        groups = spec.get("memberOf", [])
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise InvalidInput(f"action {name}: memberOf must be a list of {{id: …}}")
        if any(g.get("id") in base["actions"] for g in groups):
            raise InvalidInput(
                f"action {name} cannot join a built-in action group: policies written "
                "for that group would then cover it",
                hint="Define a group of your own.",
            )
        if "appliesTo" in spec:
            if not isinstance(spec["appliesTo"], dict):
                raise InvalidInput(f"action {name}: appliesTo must be an object")
            spec = copy.deepcopy(spec)
            spec["appliesTo"].setdefault("context", {"type": CONTEXT_TYPE})
        doc["actions"][name] = spec
    for name, spec in (fragment.get("commonTypes") or {}).items():
        _check_name("common type", name)
        if name in _RESERVED_TYPE_NAMES:
            raise InvalidInput(f"common type name {name} is reserved by Cedar")
        if name == "ToolArguments":
            if not isinstance(spec, dict) or spec.get("type") != "Record":
                raise InvalidInput("ToolArguments must be a Record")
            added = _optional_attributes(name, spec.get("attributes", {}))
            existing = doc["commonTypes"]["ToolArguments"]["attributes"]
            clash = sorted(set(added) & set(existing))
            if clash:
                raise InvalidInput(f"ToolArguments already has attributes {clash}")
            existing.update(added)
        elif name in doc["commonTypes"]:
            raise InvalidInput(f"common type {name} is built in and cannot be redefined")
        else:
            doc["commonTypes"][name] = spec
    _check_hierarchy_depth(doc["entityTypes"])
    return doc


def _check_hierarchy_depth(entity_types: Mapping[str, Any]) -> None:
    """Refuse ``memberOfTypes`` chains deeper than :data:`MAX_HIERARCHY_DEPTH` (Cedar
    takes time quadratic in such chains each time it reads the schema)."""
    depth: dict[str, int] = {}
    for root in entity_types:
        stack: list[tuple[str, int]] = [(root, 0)]
        on_path: list[str] = []
        while stack:
            name, state = stack.pop()
            if state == 1:
                on_path.pop()
                parents = (entity_types.get(name) or {}).get("memberOfTypes") or []
                depth[name] = 1 + max((depth.get(p, 0) for p in parents), default=0)
                if depth[name] > MAX_HIERARCHY_DEPTH:
                    raise InvalidInput(
                        f"entity type hierarchies may be at most {MAX_HIERARCHY_DEPTH} deep"
                    )
                continue
            if name in depth or name in on_path:
                continue
            on_path.append(name)
            stack.append((name, 1))
            spec = entity_types.get(name) or {}
            parents = spec.get("memberOfTypes") if isinstance(spec, dict) else None
            for parent in parents if isinstance(parents, list) else []:
                if isinstance(parent, str) and parent in entity_types:
                    stack.append((parent, 0))


@lru_cache(maxsize=16)
def load_schema(extension: str = "") -> Schema:
    """The effective schema for a stored extension (cached: schemas are immutable)."""
    return Schema(extension)
