"""A compiled policy set: every policy parsed once, indexed by its scope, and sliced
per request so a decision evaluates only the policies that could apply.

**Slicing.** Cedar's scope (``principal``, ``action``, ``resource``) is a conjunction
of three constraints, each of which is one of: anything, ``== E``, ``in E``,
``is T``, ``is T in E`` (``in [E1, E2]`` for actions). A policy can match a request
only if each constraint can hold, which depends only on the request's entity, its
type and its ancestors. Each policy therefore files under one key per dimension
(``*``, the type, or the entity uid it names) and a request collects the policies
under its own keys: ``*``, its type, itself and every ancestor. The three sets are
bitmasks; their intersection is the slice. Cedar then evaluates the slice exactly
as it would the full set, conditions included, so the decision is the same: the
policies left out are exactly those whose scope cannot match, which Cedar would
skip. ``tests/unit/test_policy_slicing.py`` checks this equality with Hypothesis.

Slices are cached by their bitmask, so a steady workload re-uses parsed sets and a
decision's cost does not grow with the number of policies.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import cedarpy
from cedarpy import pst

from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord
from agentiam.core.policy.schema import Schema
from agentiam.core.policy.values import cedar_string
from agentiam.errors import InvalidInput

__all__ = [
    "WHOLE_CONTEXT",
    "CompiledPolicy",
    "PolicyEngine",
    "ScopeKey",
    "TypeKey",
    "compile_policies",
    "context_attributes",
    "entity_literals",
    "validate",
]


class TypeKey(NamedTuple):
    """The index key of an ``is T`` scope (a one-element tuple: it can never equal an
    entity uid, which has two)."""

    type: str


ScopeKey = EntityRef | TypeKey | Literal["*"]
ANY: Literal["*"] = "*"
SLICE_CACHE = 8192
_SLOT = "agentiam_slot"
SHARED_LIMIT = 32


def _type_name(entity_type: pst.EntityType) -> str:
    return "::".join((*entity_type.namespace, entity_type.basename))


def _ref(uid: pst.EntityUid) -> EntityRef:
    return EntityRef(_type_name(uid.type), uid.id)


def _scope_key(constraint: Any) -> ScopeKey:
    if isinstance(constraint, pst.ScopeAny):
        return ANY
    if isinstance(constraint, pst.ScopeIs):
        return TypeKey(_type_name(constraint.entity_type))
    if isinstance(constraint, pst.ScopeEq | pst.ScopeIn | pst.ScopeIsIn):
        if not isinstance(constraint.entity, pst.EntityUid):
            raise InvalidInput("policies with template slots are not stored")
        return _ref(constraint.entity)
    raise InvalidInput(f"unsupported scope constraint {type(constraint).__name__}")


def _scope_op(constraint: Any) -> str:
    return {
        pst.ScopeAny: "any",
        pst.ScopeEq: "eq",
        pst.ScopeIn: "in",
        pst.ScopeIs: "is",
        pst.ScopeIsIn: "is_in",
    }.get(type(constraint), "other")


def _action_keys(constraint: Any) -> tuple[ScopeKey, ...]:
    if isinstance(constraint, pst.ScopeAny):
        return (ANY,)
    if isinstance(constraint, pst.ActionEq):
        return (_ref(constraint.entity),)
    if isinstance(constraint, pst.ActionIn):
        return tuple(_ref(e) for e in constraint.entities)
    raise InvalidInput(f"unsupported action constraint {type(constraint).__name__}")


def _children(node: Any) -> Iterator[Any]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield getattr(node, f.name)
    elif isinstance(node, tuple | list):
        yield from node
    elif isinstance(node, dict):
        yield from node.values()


WHOLE_CONTEXT = "*"


def context_attributes(template: pst.Template) -> frozenset[str]:
    """The ``context`` attributes the policy's conditions read (``context.x`` or
    ``context has x``; for the server's ``time`` record, ``time.hour`` and the like);
    ``{"*"}`` if it uses ``context`` as a whole.

    The decision point passes a policy slice only the context attributes its
    policies read: no other attribute can influence their evaluation. The walk is
    iterative; a policy's depth is bounded by the parser's limits.
    """
    found: set[str] = set()
    stack: list[Any] = list(template.clauses)
    while stack:
        node = stack.pop()
        # context.time.<x> and context.time has <x>: only that member of the record
        if (
            isinstance(node, pst.GetAttr | pst.HasAttr)
            and isinstance(node.base, pst.GetAttr)
            and node.base.attr == "time"
            and isinstance(node.base.base, pst.Var)
            and node.base.base.name == "context"
        ):
            found.add("time." + (node.attr if isinstance(node, pst.GetAttr) else node.attrs[0]))
            continue
        if (
            isinstance(node, pst.GetAttr | pst.HasAttr)
            and isinstance(node.base, pst.Var)
            and node.base.name == "context"
        ):
            if isinstance(node, pst.HasAttr) and node.attrs[0] == "time" and len(node.attrs) > 1:
                found.add("time." + node.attrs[1])
                continue
            found.add(node.attr if isinstance(node, pst.GetAttr) else node.attrs[0])
            continue
        if isinstance(node, pst.Var) and node.name == "context":
            return frozenset({WHOLE_CONTEXT})
        stack.extend(_children(node))
    return frozenset(found)


def entity_literals(body: Any) -> frozenset[EntityRef]:
    """Every entity a policy names (its scope and its conditions), from its Cedar JSON
    form: a uid is an object with a string ``type`` and a string ``id`` (scope
    constraints, ``__entity`` values; EST writes a record literal's members as
    expressions, never as bare strings). The walk is iterative."""
    found: set[EntityRef] = set()
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind, ident = node.get("type"), node.get("id")
            if isinstance(kind, str) and isinstance(ident, str):
                found.add(EntityRef(kind, ident))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    record: PolicyRecord
    est: str  # the policy in Cedar's JSON form, without annotations: slices are built from it
    effect: str  # "permit" | "forbid"
    principal: ScopeKey
    actions: tuple[ScopeKey, ...]
    resource: ScopeKey
    principal_op: str  # any | eq | in | is | is_in
    resource_op: str
    resource_type: str | None  # T of a resource scope "is T" or "is T in E"
    principal_type: str | None  # T of a principal scope "is T" or "is T in E"
    action_op: str  # any | eq | in
    conditional: bool  # has when/unless clauses
    context_attrs: frozenset[str]  # see context_attributes()
    names: frozenset[EntityRef] = frozenset()  # see entity_literals()

    @property
    def uses_context(self) -> bool:
        return bool(self.context_attrs)

    @property
    def decided_by_scope(self) -> bool:
        """True when the scope alone decides whether the policy matches: it has no
        conditions and every scope constraint is one :meth:`scope_matches` knows."""
        return not self.conditional and "other" not in (self.principal_op, self.resource_op)

    def scope_matches(
        self,
        principal: EntityRef,
        principal_in: frozenset[EntityRef] | set[EntityRef],
        action: EntityRef,
        action_in: frozenset[EntityRef] | set[EntityRef],
        resource: EntityRef,
        resource_in: frozenset[EntityRef] | set[EntityRef],
    ) -> bool:
        """Cedar's scope semantics (``==``, ``in``, ``is``, ``is … in``; for actions
        ``==`` and ``in [..]``); ``*_in`` hold the entity itself and all its ancestors,
        as in Cedar's entity hierarchy."""
        if self.action_op == "eq":
            action_ok = self.actions[0] == action
        elif self.action_op == "in":
            action_ok = any(k in action_in for k in self.actions)
        else:
            action_ok = True
        return (
            action_ok
            and _side(
                self.principal_op, self.principal, self.principal_type, principal, principal_in
            )
            and _side(self.resource_op, self.resource, self.resource_type, resource, resource_in)
        )

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def mode(self) -> Mode:
        return self.record.mode


def _side(
    op: str,
    key: ScopeKey,
    type_name: str | None,
    ref: EntityRef,
    within: frozenset[EntityRef] | set[EntityRef],
) -> bool:
    if op == "any":
        return True
    if op == "eq":
        return key == ref
    if op == "in":
        return key in within
    if op == "is":
        return ref.type == type_name
    if op == "is_in":
        return ref.type == type_name and key in within
    return False


_RECENT: OrderedDict[PolicyRecord, CompiledPolicy] = OrderedDict()
_RECENT_LOCK = threading.Lock()
RECENT_COMPILED = 20_000


def compile_policies(records: Sequence[PolicyRecord]) -> list[CompiledPolicy]:
    """Compile many policies; recently compiled records are reused (validating a
    write compiles it, and the decision point loads the same records just after)."""
    with _RECENT_LOCK:
        known = {r: _RECENT[r] for r in records if r in _RECENT}
    fresh = _compile_batch([r for r in records if r not in known])
    with _RECENT_LOCK:
        for policy in fresh:
            _RECENT[policy.record] = policy
            _RECENT.move_to_end(policy.record)
        while len(_RECENT) > RECENT_COMPILED:
            _RECENT.popitem(last=False)
    made = iter(fresh)
    return [known[r] if r in known else next(made) for r in records]


def _compile_batch(records: Sequence[PolicyRecord]) -> list[CompiledPolicy]:
    """Compile with one pair of parser calls (a call per policy costs far more).

    Each record's text is tagged with its position, so a text that holds no policy or
    two (a damaged row) cannot shift the others onto the wrong record: any mismatch
    falls back to compiling one by one, which names the bad record."""
    if not records:
        return []
    tagged = "\n".join(f'@{_SLOT}("{i}")\n{r.text}' for i, r in enumerate(records))
    try:
        parsed = cedarpy.policies_to_pst(tagged)
        est = json.loads(cedarpy.policies_to_json_str(tagged))
    except (ValueError, RecursionError):
        return [compile_policy(r) for r in records]
    statics = list(parsed.static_policies.values())
    bodies = [est["staticPolicies"].get(f"policy{i}") for i in range(len(statics))]
    if (
        parsed.templates
        or len(statics) != len(records)
        or any(t.annotations.get(_SLOT) != str(i) for i, t in enumerate(statics))
        or any(b is None or (b.get("annotations") or {}).get(_SLOT) != str(i)
               for i, b in enumerate(bodies))
    ):  # fmt: skip
        return [compile_policy(r) for r in records]
    return [
        _compiled(record, template, body)
        for record, template, body in zip(records, statics, bodies, strict=True)
    ]


def compile_policy(record: PolicyRecord) -> CompiledPolicy:
    try:
        parsed = cedarpy.policies_to_pst(record.text)
        est = json.loads(cedarpy.policies_to_json_str(record.text))
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"policy {record.id}: {exc}") from None
    if parsed.templates or len(parsed.static_policies) != 1:
        raise InvalidInput(f"policy {record.id}: expected one static policy")
    return _compiled(
        record, next(iter(parsed.static_policies.values())), est["staticPolicies"]["policy0"]
    )


def _compiled(record: PolicyRecord, template: pst.Template, body: dict[str, Any]) -> CompiledPolicy:
    body = {k: v for k, v in body.items() if k != "annotations"}
    resource = template.resource
    return CompiledPolicy(
        record=record,
        est=json.dumps(body, separators=(",", ":")),
        effect=str(template.effect),
        principal=_scope_key(template.principal),
        actions=_action_keys(template.action),
        resource=_scope_key(resource),
        principal_op=_scope_op(template.principal),
        resource_op=_scope_op(resource),
        resource_type=(
            _type_name(resource.entity_type)
            if isinstance(resource, pst.ScopeIs | pst.ScopeIsIn)
            else None
        ),
        action_op=(
            "eq"
            if isinstance(template.action, pst.ActionEq)
            else "in"
            if isinstance(template.action, pst.ActionIn)
            else "any"
        ),
        principal_type=(
            _type_name(template.principal.entity_type)
            if isinstance(template.principal, pst.ScopeIs | pst.ScopeIsIn)
            else None
        ),
        conditional=bool(template.clauses),
        context_attrs=context_attributes(template),
        names=entity_literals(body),
    )


def validate(schema: Schema, records: Sequence[PolicyRecord]) -> list[dict[str, str]]:
    """Cedar's validator (strict mode) over ``records`` against ``schema``; returns
    the diagnostics as ``{"policy_id", "message"}`` (empty when valid)."""
    if not records:
        return []
    text = "\n".join(f"@id({cedar_string(r.id)})\n{r.text}" for r in records)
    by_position = {f"policy{i}": r.id for i, r in enumerate(records)}
    # The GIL is released while Cedar validates, so decisions on other threads go on.
    result = cedarpy.validate_policies(text, schema.handle, release_gil=True)
    out: list[dict[str, str]] = []
    for e in result.errors:
        ours = by_position.get(e.policy_id, e.policy_id)
        out.append({"policy_id": ours, "message": e.error.replace(f"`{e.policy_id}`", f"`{ours}`")})
    if not out:  # valid policies must also build: Cedar limits expression nesting
        try:
            compile_policies(records)  # one batched parse in the usual case
        except InvalidInput:
            for record in records:  # name every policy that fails
                try:
                    compile_policy(record)
                except InvalidInput as exc:
                    out.append({"policy_id": record.id, "message": exc.detail})
    return out


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


class _SliceCache:
    """A bounded LRU of parsed Cedar sets by slice mask (thread-safe)."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[int, cedarpy.PolicySet] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, mask: int, *, count: bool = True) -> cedarpy.PolicySet | None:
        with self._lock:
            found = self._items.get(mask)
            if found is not None:
                self._items.move_to_end(mask)
            if count:
                if found is None:
                    self.misses += 1
                else:
                    self.hits += 1
            return found

    def put(self, mask: int, policy_set: cedarpy.PolicySet) -> None:
        with self._lock:
            self._items[mask] = policy_set
            self._items.move_to_end(mask)
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self._maxsize, len(self._items))


class PolicyEngine:
    """One version of the policy set, compiled and indexed. Immutable once built."""

    def __init__(
        self,
        version: int,
        schema: Schema,
        records: Iterable[PolicyRecord],
        *,
        previous: PolicyEngine | None = None,
    ) -> None:
        """``previous`` lends its compiled policies: only new or changed ones are parsed
        again, so a one-policy edit of a large set costs one parse, not thousands."""
        self.version = version
        self.schema = schema
        reuse = {p.record: p for p in previous.policies} if previous else {}
        records = list(records)
        fresh = iter(compile_policies([r for r in records if r not in reuse]))
        self.policies: list[CompiledPolicy] = [
            reuse[r] if r in reuse else next(fresh) for r in records
        ]
        self.by_id = {p.id: p for p in self.policies}
        self.bit_of = {p.id: 1 << i for i, p in enumerate(self.policies)}
        self._principal: dict[ScopeKey, int] = {}
        self._action: dict[ScopeKey, int] = {}
        self._resource: dict[ScopeKey, int] = {}
        self.enforce_mask = 0
        self.dry_run_mask = 0
        for i, policy in enumerate(self.policies):
            bit = 1 << i
            self._principal[policy.principal] = self._principal.get(policy.principal, 0) | bit
            for key in policy.actions:
                self._action[key] = self._action.get(key, 0) | bit
            self._resource[policy.resource] = self._resource.get(policy.resource, 0) | bit
            if policy.mode is Mode.ENFORCE:
                self.enforce_mask |= bit
            else:
                self.dry_run_mask |= bit
        self.all_mask = self.enforce_mask | self.dry_run_mask
        # every entity some policy names: a decision that stands an entity in for its
        # resource must not be told apart by one (Authorizer._place)
        self.names: frozenset[EntityRef] = frozenset().union(*(p.names for p in self.policies))
        # Policies Cedar must evaluate (conditions); the rest match by scope alone.
        self.cedar_mask = 0
        shared = 0
        for i, policy in enumerate(self.policies):
            if not policy.decided_by_scope:
                self.cedar_mask |= 1 << i
                if policy.principal == ANY or isinstance(policy.principal, TypeKey):
                    shared |= 1 << i
        # Conditional policies for any principal (global guards) sit in most slices; when
        # they are few, every Cedar set carries all of them, so sets differ only by their
        # principal-specific policies and are far fewer (see Authorizer._evaluate).
        self.shared_cedar_mask = shared if shared.bit_count() <= SHARED_LIMIT else 0
        self._sets = _SliceCache(SLICE_CACHE)
        self._needs = lru_cache(maxsize=SLICE_CACHE)(self._context_needs)

    @staticmethod
    def _lookup(index: dict[ScopeKey, int], keys: Iterable[ScopeKey]) -> int:
        mask = 0
        for key in keys:
            mask |= index.get(key, 0)
        return mask

    def slice(
        self,
        principal: EntityRef,
        principal_ancestors: Iterable[EntityRef],
        action: EntityRef,
        action_ancestors: Iterable[EntityRef],
        resource: EntityRef,
        resource_ancestors: Iterable[EntityRef],
    ) -> int:
        """The bitmask of policies whose scope can match the request."""
        return (
            self.principal_mask(principal, principal_ancestors)
            & self.action_mask(action, action_ancestors)
            & self.resource_mask(resource, resource_ancestors)
        )

    def principal_mask(self, ref: EntityRef, ancestors: Iterable[EntityRef]) -> int:
        """The policies whose principal scope can match ``ref`` (one dimension of a
        slice; the Authorizer caches it per principal)."""
        return self._lookup(self._principal, (ANY, TypeKey(ref.type), ref, *ancestors))

    def action_mask(self, ref: EntityRef, ancestors: Iterable[EntityRef]) -> int:
        return self._lookup(self._action, (ANY, ref, *ancestors))

    def resource_mask(self, ref: EntityRef, ancestors: Iterable[EntityRef]) -> int:
        return self._lookup(self._resource, (ANY, TypeKey(ref.type), ref, *ancestors))

    def warm(self, limit: int = SLICE_CACHE // 2) -> int:
        """Parse ahead the Cedar sets most decisions will need: for each conditional
        policy of one principal (or group), that policy with the shared guards, and the
        shared guards alone. A policy's first decision then does not pay for parsing.
        Returns how many sets were built (at most ``limit``)."""
        if not self.shared_cedar_mask and not self.cedar_mask:
            return 0
        shared = self.shared_cedar_mask & self.enforce_mask
        masks = [shared] if shared else []
        for policy in self.members(self.cedar_mask & self.enforce_mask & ~shared):
            masks.append(self.bit_of[policy.id] | shared)
        for mask in masks[:limit]:
            if self._sets.get(mask, count=False) is None:
                # Off the decision path: let decisions on other threads run meanwhile.
                self._sets.put(mask, self._build_set(mask, release_gil=True))
        return min(len(masks), limit)

    def members(self, mask: int) -> list[CompiledPolicy]:
        out: list[CompiledPolicy] = []
        while mask:
            low = mask & -mask
            out.append(self.policies[low.bit_length() - 1])
            mask ^= low
        return out

    def policy_set(self, mask: int) -> cedarpy.PolicySet:
        """The parsed Cedar set of the policies in ``mask`` (cached)."""
        found = self._sets.get(mask)
        if found is None:
            found = self._build_set(mask)
            self._sets.put(mask, found)
        return found

    def slice_cache_info(self) -> CacheInfo:
        """Hits, misses, capacity and size of the parsed-set cache (for benchmarks and
        metrics)."""
        return self._sets.info()

    def context_needs(self, mask: int) -> frozenset[str]:
        """The context attributes the policies in ``mask`` read (cached)."""
        return self._needs(mask)

    def _context_needs(self, mask: int) -> frozenset[str]:
        out: set[str] = set()
        for policy in self.members(mask):
            out |= policy.context_attrs
        return frozenset(out)

    def _build_set(self, mask: int, *, release_gil: bool = False) -> cedarpy.PolicySet:
        # From Cedar's JSON form: about half the cost of building from syntax nodes.
        statics = ",".join(f"{json.dumps(p.id)}:{p.est}" for p in self.members(mask))
        return cedarpy.PolicySet.from_json_str(
            '{"templates":{},"templateLinks":[],"staticPolicies":{' + statics + "}}",
            release_gil=release_gil,
        )
