"""The Cedar entity store built from the registry and the resource catalog.

An :class:`EntitySnapshot` is immutable: the policy decision point swaps in a new one
when the registry changes, so a decision never reads the database. Besides cedarpy's
parsed entity handle it keeps each entity's parents, for the scope index (which
needs every ancestor of a principal or resource), and each agent's status.

An enforcement point may know resources the catalog does not: the MCP gateway knows
which tools each upstream server lists, and that each is in the server's
``McpServer``. :meth:`EntitySnapshot.with_derived` merges such **derived records**
into a snapshot (:func:`merge_derived`: the union of the parents, the catalog's
attributes first), for the Cedar handle and for the scope index alike, so policies
with and without conditions see the same hierarchy.

It may also know parents of resources nobody listed (the MCP gateway: every URI it
routes to a server, template-made ones included, is in that server's ``McpServer``).
Those are decided without a copy of the snapshot per resource: the snapshot holds one
**stand-in** per such *place* (a resource type and its parents,
:meth:`EntitySnapshot.stand_in`), an entity with no attributes in those parents, and
the policy decision point lets it stand for the resource in Cedar
(:meth:`agentiam.core.policy.authorizer.Authorizer.decide`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple, NoReturn

import cedarpy

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, Human
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.core.policy.schema import RESERVED_TYPES, Schema
from agentiam.core.policy.values import ValueTypeError, to_cedar
from agentiam.errors import InvalidInput

__all__ = [
    "MAX_DERIVED_ATTRIBUTES",
    "MAX_DERIVED_ATTRIBUTES_BYTES",
    "STAND_IN_PREFIX",
    "DerivedAttributes",
    "EntitySnapshot",
    "Place",
    "agent_entity",
    "attributes_key",
    "check_resource",
    "cyclic",
    "derived_attributes",
    "derived_attributes_problem",
    "human_entity",
    "merge_derived",
    "resource_entity",
]

_AUTONOMY_LEVEL = {level: i for i, level in enumerate(AutonomyLevel)}
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,63}$")
MAX_TAGS = 64
MAX_PARENTS = 32
MAX_ID = 512  # characters of an entity id a catalog entry or a request may carry
# attributes an enforcement point may derive for a request's resource
# (AuthzRequest.resource_attributes): how many, and their JSON's size in bytes
MAX_DERIVED_ATTRIBUTES = 32
MAX_DERIVED_ATTRIBUTES_BYTES = 4096

# A stand-in's id: longer than any id a catalog entry, a request or a context value
# may carry (MAX_ID; values.to_cedar), so nothing but a policy literal can name one,
# and the decision point checks those (PolicyEngine.names).
STAND_IN_PREFIX = "agentiam.stand-in." + "-" * MAX_ID + "."


class Place(NamedTuple):
    """A resource type and the parents an enforcement point gives resources of that
    type whatever the catalog says (:attr:`AuthzRequest.resource_parents
    <agentiam.core.policy.authorizer.AuthzRequest.resource_parents>`), with the
    :func:`attributes_key` of the attributes it derives for them
    (``AuthzRequest.resource_attributes``; the HTTP gateway: a route's
    ``resource.attributes``), "" for none: what a stand-in stands for
    (:meth:`EntitySnapshot.stand_in`)."""

    entity_type: str
    parents: tuple[EntityRef, ...]
    attributes: str = ""


class _FrozenDict(dict[str, Any]):
    """A JSON object inside :class:`DerivedAttributes`: a ``dict`` (so it serialises,
    validates and compares as the JSON it came from) whose methods that would change
    it raise TypeError."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("derived attributes are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (dict(self),)  # copied and pickled without __setitem__


class _FrozenList(list[Any]):
    """A JSON array inside :class:`DerivedAttributes`: a ``list`` whose methods that
    would change it raise TypeError (see :class:`_FrozenDict`)."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("derived attributes are read-only")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (list(self),)


def _frozen(value: Any) -> Any:
    """A JSON value with its objects and arrays read-only, nested ones too."""
    if isinstance(value, dict):
        return _FrozenDict((name, _frozen(item)) for name, item in value.items())
    if isinstance(value, list):
        return _FrozenList(_frozen(item) for item in value)
    return value


class DerivedAttributes(Mapping[str, Any]):
    """Derived attributes whose shape :func:`derived_attributes` checked, held as a
    read-only copy of their JSON with their :func:`attributes_key` (``key``), made
    once: an enforcement point that derives the same attributes for every call (an
    HTTP gateway route's ``resource.attributes``) hands this to each decision, which
    finds the stand-in of their place by ``key`` without serialising them again.

    The values are made from ``key`` and are read-only all the way down (objects and
    arrays nested in them raise TypeError when changed, and so does setting ``key``),
    so the key and the values cannot disagree: a consumer that changed a nested list
    would otherwise be decided with the stand-in of other attributes than those it
    shows. Reading them costs what reading a dict costs."""

    __slots__ = ("_values", "key")
    _values: dict[str, Any]
    key: str

    def __init__(self, key: str) -> None:
        values = json.loads(key) if key else {}
        object.__setattr__(self, "_values", {n: _frozen(v) for n, v in values.items()})
        object.__setattr__(self, "key", key)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("derived attributes are read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("derived attributes are read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        return DerivedAttributes, (self.key,)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"DerivedAttributes({self._values!r})"


def attributes_key(attributes: Mapping[str, Any]) -> str:
    """Derived attributes as one string, the same for equal mappings (JSON, keys
    sorted, no spaces; "" for none): the ``attributes`` of a :class:`Place`, and the
    key a decision finds that place's stand-in by (:class:`DerivedAttributes` carry
    theirs)."""
    if isinstance(attributes, DerivedAttributes):
        return attributes.key
    if not attributes:
        return ""
    return json.dumps(dict(attributes), sort_keys=True, separators=(",", ":"), allow_nan=False)


def derived_attributes(attributes: Mapping[str, Any]) -> DerivedAttributes:
    """``attributes`` checked as derived attributes are whatever the schema (the half
    of :func:`derived_attributes_problem` that needs none, :func:`_shape_key`),
    returned as a read-only copy made from their JSON, with their key; ValueError
    saying what is wrong."""
    if isinstance(attributes, DerivedAttributes):
        return attributes
    key = _shape_key(attributes)
    try:
        return DerivedAttributes(key)
    except RecursionError:
        raise ValueError(_NESTED_TOO_DEEPLY) from None


_NESTED_TOO_DEEPLY = "not JSON: the values are nested too deeply"


def _shape_key(attributes: Mapping[str, Any]) -> str:
    """The :func:`attributes_key` of ``attributes`` if they are a mapping of at most
    :data:`MAX_DERIVED_ATTRIBUTES`, whose values are JSON (no NaN) and whose JSON is
    at most :data:`MAX_DERIVED_ATTRIBUTES_BYTES`; else ValueError saying which."""
    if not isinstance(attributes, Mapping):
        raise ValueError("derived attributes are a mapping of names to values")
    if len(attributes) > MAX_DERIVED_ATTRIBUTES:
        raise ValueError(f"at most {MAX_DERIVED_ATTRIBUTES} derived attributes")
    try:
        key = attributes_key(attributes)
    except (TypeError, ValueError):
        raise ValueError(
            "not JSON: the values must be booleans, numbers, strings, lists and mappings"
        ) from None
    except RecursionError:
        raise ValueError(_NESTED_TOO_DEEPLY) from None
    if len(key) > MAX_DERIVED_ATTRIBUTES_BYTES:
        raise ValueError(f"larger than {MAX_DERIVED_ATTRIBUTES_BYTES} bytes of JSON")
    return key


def derived_attributes_problem(
    schema: Schema, resource_type: str, attributes: Mapping[str, Any]
) -> str | None:
    """Why ``attributes`` cannot be the derived attributes of a ``resource_type``
    (:attr:`AuthzRequest.resource_attributes
    <agentiam.core.policy.authorizer.AuthzRequest.resource_attributes>`), or None:
    their shape (:func:`derived_attributes`: more than :data:`MAX_DERIVED_ATTRIBUTES`
    of them, not JSON, JSON larger than :data:`MAX_DERIVED_ATTRIBUTES_BYTES`), an
    attribute ``schema`` does not declare for the type or a value not of its
    declared type. The one check of derived attributes: the decision point's for a
    request, an enforcement point's for its configuration (the HTTP gateway's
    routes, at start and with each bundle)."""
    if not attributes:
        return None
    try:
        _shape_key(attributes)  # DerivedAttributes: no serialising, their key is made
    except ValueError as exc:
        return f"resource_attributes: {exc}"
    spec = schema.entity_types.get(resource_type)
    declared = spec.attributes if spec is not None else {}
    for name, value in attributes.items():
        attr = declared.get(name) if isinstance(name, str) else None
        if attr is None:
            return f"resource_attributes.{name}: is not declared for a {resource_type}"
        try:
            to_cedar(value, attr, schema.common_types, path=f"resource_attributes.{name}")
        except ValueTypeError as exc:
            return str(exc)
    return None


def _uid(ref: EntityRef) -> dict[str, str]:
    return {"type": ref.type, "id": ref.id}


def agent_parents(agent: Agent) -> tuple[EntityRef, ...]:
    """An agent is in its environment, in one group per label ``key=value`` and, for
    a sub-agent, in its parent agent."""
    parents = [EntityRef("Environment", agent.environment)]
    parents += [EntityRef("AgentGroup", f"{k}={v}") for k, v in sorted(agent.labels.items())]
    if agent.parent_id:
        parents.append(EntityRef("Agent", agent.parent_id))
    return tuple(parents)


def agent_entity(agent: Agent) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "name": agent.name,
        "owners": [{"__entity": {"type": "Human", "id": h}} for h in agent.owners],
        "sponsors": [{"__entity": {"type": "Human", "id": h}} for h in agent.sponsors],
        "environment": agent.environment,
        "autonomy": agent.autonomy.value,
        "autonomy_level": _AUTONOMY_LEVEL[agent.autonomy],
        "purpose": agent.purpose,
        "status": agent.status.value,
        "ephemeral": agent.is_ephemeral,
    }
    if agent.parent_id:
        attrs["parent"] = {"__entity": {"type": "Agent", "id": agent.parent_id}}
    if agent.runtime.framework:
        attrs["framework"] = agent.runtime.framework
    if agent.runtime.model:
        attrs["model"] = agent.runtime.model
    return {
        "uid": {"type": "Agent", "id": agent.id},
        "attrs": attrs,
        "parents": [_uid(p) for p in agent_parents(agent)],
        "tags": dict(agent.labels),
    }


def human_entity(human: Human) -> dict[str, Any]:
    return {
        "uid": {"type": "Human", "id": human.id},
        "attrs": {"email": human.email, "display_name": human.display_name},
        "parents": [],
    }


def check_resource(schema: Schema, record: ResourceRecord) -> dict[str, Any]:
    """Validate a catalog entry against the schema and return its Cedar entity.

    Principal and grouping types (``Agent``, ``Human``, ``Environment``,
    ``AgentGroup``, ``Action``) come from the registry and cannot be catalogued.
    """
    spec = schema.entity_types.get(record.type)
    if spec is None:
        raise InvalidInput(f"entity type {record.type!r} is not in the schema")
    if record.type in RESERVED_TYPES:
        raise InvalidInput(f"{record.type} entities come from the registry, not the catalog")
    if not record.id or len(record.id) > MAX_ID:
        raise InvalidInput(f"a resource id must be 1-{MAX_ID} characters")
    try:
        attrs = to_cedar(
            dict(record.attributes),
            {"type": "Record", "attributes": spec.attributes},
            schema.common_types,
            path="attributes",
        )
    except ValueTypeError as exc:
        raise InvalidInput(f"resource {record.type}::{record.id}: {exc}") from None
    if len(record.parents) > MAX_PARENTS:
        raise InvalidInput(f"a resource may have at most {MAX_PARENTS} parents")
    for parent in record.parents:
        if parent.type not in spec.member_of:
            raise InvalidInput(
                f"a {record.type} cannot be in a {parent.type}",
                hint=f"{record.type} may be in: {', '.join(spec.member_of) or 'nothing'}.",
            )
    if record.tags:
        if spec.tags is None:
            raise InvalidInput(f"{record.type} entities take no tags")
        if len(record.tags) > MAX_TAGS:
            raise InvalidInput(f"a resource may have at most {MAX_TAGS} tags")
        for key, value in record.tags.items():
            if not _TAG_KEY_RE.fullmatch(key) or not isinstance(value, str) or len(value) > 256:
                raise InvalidInput(f"tag {key!r} is not valid")
    return resource_entity(record, attrs)


def resource_entity(record: ResourceRecord, attrs: Mapping[str, Any]) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "uid": {"type": record.type, "id": record.id},
        "attrs": dict(attrs),
        "parents": [_uid(p) for p in record.parents],
    }
    if record.tags:
        entity["tags"] = dict(record.tags)
    return entity


def cyclic(resources: Iterable[ResourceRecord]) -> set[EntityRef]:
    """The catalog entries that are their own ancestors (through their parents)."""
    parents = {r.ref: r.parents for r in resources}
    state: dict[EntityRef, int] = {}  # 1 = on the current path, 2 = done
    out: set[EntityRef] = set()
    for root in parents:
        if root in state:
            continue
        path: list[EntityRef] = []
        stack: list[tuple[EntityRef, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            children = [p for p in parents.get(node, ()) if p in parents]
            if i < len(children):
                stack.append((node, i + 1))
                nxt = children[i]
                if state.get(nxt) == 1:
                    out.update(path[path.index(nxt) :])
                elif nxt not in state:
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
    return out


def _named(entity: Mapping[str, Any]) -> Iterable[EntityRef]:
    """The entities a Cedar entity names: its parents and the entity values in its
    attributes (at any depth)."""
    for parent in entity.get("parents", ()):
        yield EntityRef(parent["type"], parent["id"])
    stack: list[Any] = [entity.get("attrs", {})]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            uid = node.get("__entity")
            if isinstance(uid, dict):
                yield EntityRef(uid["type"], uid["id"])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _uid_of(entity: Mapping[str, Any]) -> EntityRef:
    return EntityRef(entity["uid"]["type"], entity["uid"]["id"])


def merge_derived(catalog: ResourceRecord | None, derived: ResourceRecord) -> ResourceRecord:
    """One resource as a decision sees it when an enforcement point derived a record
    for it (``derived``) and the catalog may have one too: the catalog's parents, then
    the derived parents the catalog lacks; the catalog's attributes, and the derived
    ones only where the catalog sets none; the catalog's tags."""
    if catalog is None:
        return derived
    parents = catalog.parents + tuple(p for p in derived.parents if p not in catalog.parents)
    attributes = {**derived.attributes, **catalog.attributes}
    return ResourceRecord(
        type=catalog.type,
        id=catalog.id,
        attributes=attributes,
        parents=parents,
        tags=catalog.tags,
        updated_at=catalog.updated_at,
        version=catalog.version,
    )


class EntitySnapshot:
    """Every entity a decision may need, parsed once."""

    def __init__(
        self,
        schema: Schema,
        *,
        agents: Iterable[Agent] = (),
        humans: Iterable[Human] = (),
        resources: Iterable[ResourceRecord] = (),
        fingerprint: str = "",
    ) -> None:
        self.schema = schema
        self.fingerprint = fingerprint
        entities: list[dict[str, Any]] = list(schema.action_entities())
        self.parents: dict[EntityRef, tuple[EntityRef, ...]] = {}
        self.agents: dict[str, Agent] = {}
        self.humans: dict[str, Human] = {}
        self.resources: dict[EntityRef, ResourceRecord] = {}
        groups: set[EntityRef] = set()
        for agent in agents:
            self.agents[agent.id] = agent
            entities.append(agent_entity(agent))
            parents = agent_parents(agent)
            self.parents[EntityRef("Agent", agent.id)] = parents
            groups.update(p for p in parents if p.type != "Agent")
        for human in humans:
            self.humans[human.id] = human
            entities.append(human_entity(human))
        resources = list(resources)
        in_cycle = cyclic(resources)
        for record in resources:
            if record.ref in in_cycle:
                continue  # Cedar refuses a cyclic hierarchy outright: leave these out
            try:
                entity = check_resource(schema, record)
            except InvalidInput:
                continue  # a schema change made it invalid: it is left out (no attributes)
            self.resources[record.ref] = record
            entities.append(entity)
            self.parents[record.ref] = record.parents
        entities += [{"uid": _uid(g), "attrs": {}, "parents": []} for g in sorted(groups, key=str)]
        # Built off the decision path (refresh): let other threads run while Cedar parses.
        document = json.dumps(entities)
        self.handle = cedarpy.Entities.from_json_str(document, release_gil=True)
        self.count = len(entities)
        self._ancestors = lru_cache(maxsize=65_536)(self._compute_ancestors)
        # Entities that some entity names (a parent, an attribute value) but that are
        # not in the snapshot: a stand-in cannot stand for one (a decision could tell
        # them apart through the entity that names it).
        present = {_uid_of(e) for e in entities}
        self.referenced: frozenset[EntityRef] = frozenset(
            ref for e in entities for ref in _named(e) if ref not in present
        )
        # what with_derived needs to re-parse when a derived record changes a catalog
        # entry (kept as text: a fraction of the memory of the parsed dicts)
        self._document = document
        self._base = self
        self._derived: tuple[ResourceRecord, ...] = ()
        self._places: tuple[Place, ...] = ()
        # by Place, looked up with a plain tuple (equal to it, no NamedTuple per decision)
        self._stand_ins: dict[tuple[str, tuple[EntityRef, ...], str], EntityRef] = {}

    def with_catalog_merged(self, records: Iterable[ResourceRecord]) -> EntitySnapshot:
        """A snapshot built as this one's base was, with ``records`` merged into its
        catalog entries (:func:`merge_derived`; a merged entry the schema refuses is
        left as the catalog has it): a base of its own, over which
        :meth:`with_derived` merges. For derived records that change far less often
        than the others (the MCP gateway: the catalog's data sets in the servers it
        routes them to, once per bundle, under its listings). Costs a full build."""
        base = self._base
        schema = base.schema
        resources = dict(base.resources)
        for record in records:
            catalog = resources.get(record.ref)
            if catalog is None:
                continue
            merged = merge_derived(catalog, record)
            try:
                check_resource(schema, merged)
            except InvalidInput:
                continue
            resources[record.ref] = merged
        return EntitySnapshot(
            schema,
            agents=base.agents.values(),
            humans=base.humans.values(),
            resources=resources.values(),
            fingerprint=base.fingerprint,
        )

    def with_derived(
        self, records: Iterable[ResourceRecord], *, places: Iterable[Place] = ()
    ) -> EntitySnapshot:
        """This snapshot (as built from the registry and the catalog: a derived
        snapshot's own base is used) with ``records`` merged in (:func:`merge_derived`)
        and a stand-in for each of ``places`` (:meth:`stand_in`).

        A derived record the schema refuses is left out, and so is the stand-in of a
        place the schema refuses (a type that cannot be in those parents). Derived
        records that add entities are parsed on their own into a clone of this
        snapshot's handle (cedarpy ``with_added_json_str``); only when one changes a
        catalog entry (a parent or an attribute the catalog lacks) is the whole set
        parsed again.
        """
        base = self._base
        records = tuple(records)
        keys = tuple(dict.fromkeys(Place(*place) for place in places))
        merged: dict[EntityRef, tuple[ResourceRecord, dict[str, Any]]] = {}
        for record in records:
            catalog = base.resources.get(record.ref)
            previous = merged[record.ref][0] if record.ref in merged else catalog
            effective = merge_derived(previous, record)
            if catalog is not None and effective == catalog:
                continue  # already as the catalog has it
            try:
                entity = check_resource(base.schema, effective)
            except InvalidInput:
                continue
            merged[record.ref] = (effective, entity)
        stand_ins = base._make_stand_ins(keys)
        if not merged and not stand_ins:
            return base
        added = [entity for _, entity in merged.values()]
        added += [stand_in for _, stand_in in stand_ins.values()]
        if any(ref in base.resources for ref in merged):
            kept = [
                e
                for e in json.loads(base._document)
                if EntityRef(e["uid"]["type"], e["uid"]["id"]) not in merged
            ]
            handle = cedarpy.Entities.from_json_str(json.dumps(kept + added), release_gil=True)
        else:
            handle = base.handle.with_added_json_str(json.dumps(added))
        out = object.__new__(EntitySnapshot)
        out.schema = base.schema
        out.fingerprint = base.fingerprint
        out.agents = base.agents
        out.humans = base.humans
        out.resources = {**base.resources, **{ref: r for ref, (r, _) in merged.items()}}
        out.parents = {**base.parents, **{ref: r.parents for ref, (r, _) in merged.items()}}
        out.handle = handle
        out.count = len(handle)
        out._ancestors = lru_cache(maxsize=65_536)(out._compute_ancestors)
        out.referenced = base.referenced.union(
            *(_named(entity) for _, entity in merged.values()),
            *(_named(stand_in) for _, stand_in in stand_ins.values()),
        ) - set(merged)
        out._document = ""
        out._base = base
        out._derived = records
        out._places = keys
        out._stand_ins = {place: ref for place, (ref, _) in stand_ins.items()}
        return out

    def _make_stand_ins(
        self, places: Sequence[Place]
    ) -> dict[Place, tuple[EntityRef, dict[str, Any]]]:
        """One stand-in entity per place the schema accepts: the place's parents and
        its derived attributes (none for most places)."""
        out: dict[Place, tuple[EntityRef, dict[str, Any]]] = {}
        for i, place in enumerate(places):
            entity_type, parents, key = place
            ref = EntityRef(entity_type, f"{STAND_IN_PREFIX}{i}")
            attributes = json.loads(key) if key else {}
            try:  # the checks a resource of that type, in those parents, with those
                # attributes passes; its Cedar entity, with the stand-in's uid
                entity = check_resource(
                    self.schema, ResourceRecord(entity_type, "-", attributes, parents)
                )
            except InvalidInput:
                continue
            out[place] = (
                ref,
                resource_entity(ResourceRecord(*ref, {}, parents), entity["attrs"]),
            )
        return out

    def with_more(
        self, records: Iterable[ResourceRecord] = (), *, places: Iterable[Place] = ()
    ) -> EntitySnapshot:
        """This snapshot with ``records`` merged in and stand-ins for ``places`` as
        well: the derived records and places it already has and these, over its base
        (:meth:`with_derived`). For a decision whose enforcement point knows parents
        of its resource that this snapshot does not give it
        (:attr:`AuthzRequest.resource_parents
        <agentiam.core.policy.authorizer.AuthzRequest.resource_parents>`)."""
        return self._base.with_derived((*self._derived, *records), places=(*self._places, *places))

    def built(self, ref: EntityRef) -> ResourceRecord | None:
        """``ref``'s record as this snapshot's base has it (built from the registry and
        the catalog), before any derived record was merged in."""
        return self._base.resources.get(ref)

    def with_attributes(self, record: ResourceRecord) -> EntitySnapshot:
        """This snapshot with ``record`` merged in (:meth:`with_more`), its attributes
        in place of those the derived records it has gave that resource (their parents
        are kept): the resource has the base's attributes and, where those set none,
        ``record``'s. For a decision whose enforcement point derived the resource's
        attributes itself (:attr:`AuthzRequest.resource_attributes
        <agentiam.core.policy.authorizer.AuthzRequest.resource_attributes>`) from a
        listing other than the one this snapshot's records were made from."""
        kept = tuple(replace(r, attributes={}) if r.ref == record.ref else r for r in self._derived)
        return self._base.with_derived((*kept, record), places=self._places)

    def stand_in(
        self, entity_type: str, parents: tuple[EntityRef, ...], attributes: str = ""
    ) -> EntityRef | None:
        """The stand-in of the place (``entity_type`` in exactly ``parents``, with
        exactly the derived attributes whose :func:`attributes_key` is
        ``attributes``: none by default), if this snapshot has one: an entity of
        that type with those attributes, no tags and those parents, that nothing
        else names. A decision on a resource of that type
        in those parents that the snapshot does not hold (a URI made from a
        template) lets it stand for the resource in Cedar, rather than copying the
        snapshot to add the resource: Cedar can tell them apart only by a literal
        naming either (the decision point checks the policies' literals), by an
        entity naming the resource (:attr:`referenced`), or by its id in an error
        message (the decision point writes the resource's back)."""
        return self._stand_ins.get((entity_type, parents, attributes))

    def _compute_ancestors(self, ref: EntityRef) -> frozenset[EntityRef]:
        out: set[EntityRef] = set()
        stack = list(self.parents.get(ref, ()))
        while stack:
            parent = stack.pop()
            if parent not in out:
                out.add(parent)
                stack.extend(self.parents.get(parent, ()))
        return frozenset(out)

    def ancestors(self, ref: EntityRef) -> frozenset[EntityRef]:
        """Every entity ``ref`` is transitively in (not including itself)."""
        return self._ancestors(ref)

    def principal_problem(self, ref: EntityRef, now: datetime) -> str | None:
        """Why ``ref`` may not act at all (unknown, not active, past its TTL), or None."""
        if ref.type == "Agent":
            agent = self.agents.get(ref.id)
            if agent is None:
                return "the agent is not in the registry"
            if agent.is_expired(now):
                return "the agent's TTL has passed"
            if agent.status is not AgentStatus.ACTIVE:
                return f"the agent is {agent.status.value}"
            return None
        if ref.type == "Human":
            return None if ref.id in self.humans else "the human is not in the registry"
        return f"{ref.type} cannot be a principal"
