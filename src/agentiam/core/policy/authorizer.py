"""The policy decision point's evaluation: a request, the policy set and the entities
in; a decision with its reasons out.

Decisions fail closed:

* **Default deny.** Nothing is allowed unless an enforce-mode ``permit`` matches and
  no ``forbid`` does (Cedar's semantics).
* **Erroring policies.** Cedar skips a policy whose condition raises an error (a
  missing attribute, a type error, an overflow) and decides without it. For a
  ``permit`` that is safe: it does not grant. For a ``forbid`` it is not: a skipped
  forbid could let a permit through. So every error Cedar reports is mapped back to
  its policy; an erroring ``forbid`` counts as matched (deny), and an error that
  cannot be attributed to a known policy denies as well.
* **Principals.** An agent that is unknown, not active or past its TTL, and a human
  not in the registry, is denied before any policy is read.
* **Requests.** An unknown action, an action that does not apply to the principal or
  resource type, or a context value of the wrong type is denied with the error.

Dry-run policies are evaluated in a second pass together with the enforced ones;
their would-be outcome is reported in ``dry_run`` and never changes ``decision``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

import cedarpy

from agentiam.core.ids import new_id
from agentiam.core.policy.engine import WHOLE_CONTEXT, CompiledPolicy, PolicyEngine
from agentiam.core.policy.entities import (
    MAX_ID,
    MAX_PARENTS,
    EntitySnapshot,
    Place,
    attributes_key,
    check_resource,
    derived_attributes_problem,
    merge_derived,
)
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.core.policy.schema import PRINCIPAL_TYPES
from agentiam.core.policy.values import ValueTypeError, is_encodable, to_cedar
from agentiam.errors import InvalidInput

__all__ = [
    "Authorizer",
    "AuthzRequest",
    "Decision",
    "DryRunOutcome",
    "RateCounter",
    "RequestError",
    "build_context",
    "failed_policy",
]

Effect = Literal["allow", "deny"]
_ERROR_POLICY_RE = re.compile(r"policy `([^`]+)`")


def failed_policy(message: str) -> str | None:
    """The policy id a Cedar evaluation error names, if any."""
    match = _ERROR_POLICY_RE.search(message)
    return match.group(1) if match else None


CALLER_CONTEXT_KEYS = frozenset(
    {
        "delegation",
        "authorization_details",
        "risk_score",
        "approval",
        "args",
        "data_classification",
        "source_environment",
    }
)
APPROVAL_STATES = frozenset({"none", "pending", "approved", "denied"})
# Copies of the snapshot in force kept for placing resources it cannot place itself
# (see Authorizer._place; each built in O(entities) when missed): a place with no
# stand-in in the snapshot, or a resource a stand-in cannot stand for.
PLACED_CACHE = 64


class RequestError(ValueError):
    """A request the PDP cannot evaluate as given (its shape, not its outcome)."""


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """``principal`` acts ``action`` on ``resource``; ``context`` holds what the
    enforcement point knows (see :data:`CALLER_CONTEXT_KEYS`)."""

    principal: EntityRef
    action: str
    resource: EntityRef
    context: Mapping[str, Any] = field(default_factory=dict)
    # Parents the enforcement point knows the resource has whatever the catalog says
    # (the MCP gateway: the McpServer it routes a resource or prompt to). The decision
    # is the one it would be with the resource merged in them as a derived record is
    # (EntitySnapshot.with_more), made without copying the entities where it can be
    # (Authorizer._place); when they cannot be merged (the schema refuses the result)
    # it is a deny, so a forbid on a parent can never be escaped.
    resource_parents: tuple[EntityRef, ...] = ()
    # Attributes the enforcement point derived for the resource from its own
    # configuration (the MCP gateway: a tool's trusted readOnlyHint/destructiveHint as
    # read_only/destructive), never from the agent's request. Used as a derived
    # record's are, with the parents above: only where the catalog sets none (the
    # catalog's win), and in place of what the snapshot's own derived records say
    # (EntitySnapshot.with_attributes), so that the gateway and a control plane
    # deciding the call again see the resource alike, with the attributes an approval
    # for the call is bound to; when they cannot be merged (the schema refuses them)
    # it is a deny.
    resource_attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DryRunOutcome:
    """What the decision would have been with the dry-run policies enforced."""

    decision: Effect
    policies: tuple[str, ...]  # the dry-run policies that matched (or errored as forbids)


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Effect
    decision_id: str
    policies: tuple[str, ...]
    reasons: tuple[str, ...]
    errors: tuple[str, ...]
    policy_version: int
    evaluation_us: float
    evaluated: int
    request: AuthzRequest
    dry_run: DryRunOutcome | None = None
    ignored_arguments: tuple[str, ...] = ()
    risk_score: int = 0

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def would_change(self) -> bool:
        """Dry-run policies would change the outcome."""
        return self.dry_run is not None and self.dry_run.decision != self.decision

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "decision_id": self.decision_id,
            "policies": list(self.policies),
            "reasons": list(self.reasons),
            "errors": list(self.errors),
            "policy_version": self.policy_version,
            "evaluation_us": round(self.evaluation_us, 1),
            "evaluated_policies": self.evaluated,
            "dry_run": (
                {
                    "decision": self.dry_run.decision,
                    "policies": list(self.dry_run.policies),
                    "would_change": self.would_change,
                }
                if self.dry_run
                else None
            ),
            "ignored_arguments": list(self.ignored_arguments),
            "risk_score": self.risk_score,
        }


class RateCounter:
    """Decisions per principal in the last 60 seconds, in one-second buckets. Bounded:
    past ``max_principals`` the least recently active principals are forgotten."""

    WINDOW = 60

    def __init__(self, max_principals: int = 100_000) -> None:
        self._max = max_principals
        # principal -> (last second seen, per-second counts, their sum)
        self._buckets: OrderedDict[EntityRef, tuple[int, list[int], int]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, principal: EntityRef, now: float) -> int:
        second = int(now)
        window = self.WINDOW
        with self._lock:
            entry = self._buckets.get(principal)
            if entry is None:
                while len(self._buckets) >= self._max:
                    self._buckets.popitem(last=False)  # the least recently active
                counts, last, total = [0] * window, second, 0
            else:
                last, counts, total = entry
                if second - last >= window:
                    counts, total = [0] * window, 0
                else:
                    for s in range(last + 1, second + 1):
                        total -= counts[s % window]
                        counts[s % window] = 0
                last = max(last, second)
            counts[second % window] += 1
            total += 1
            self._buckets[principal] = (last, counts, total)
            self._buckets.move_to_end(principal)
            return total

    def peek(self, principal: EntityRef, now: float) -> int:
        """The count in the window, without counting a request (a what-if decision
        such as :func:`agentiam.core.approvals.approvable` must not add one)."""
        second = int(now)
        with self._lock:
            entry = self._buckets.get(principal)
            if entry is None:
                return 0
            last, counts, total = entry
            if second - last >= self.WINDOW:
                return 0
            for s in range(last + 1, second + 1):
                total -= counts[s % self.WINDOW]
            return total


def _time_context(now: datetime, zone: ZoneInfo) -> dict[str, Any]:
    local = now.astimezone(zone)
    return {
        "epoch": int(now.timestamp()),
        "hour": local.hour,
        "minute": local.minute,
        "weekday": local.isoweekday(),
        "date": local.date().isoformat(),
    }


def build_context(
    engine: PolicyEngine,
    request: AuthzRequest,
    *,
    now: datetime,
    zone: ZoneInfo,
    risk_score: int,
    request_rate: int,
    needs: frozenset[str] = frozenset({WHOLE_CONTEXT}),
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The Cedar context for ``request``: caller-supplied parts checked against the
    schema, server-owned parts (time, request rate, risk score) filled in, defaults
    for the rest. Only the attributes in ``needs`` (what the policy slice reads; see
    :func:`agentiam.core.policy.engine.context_attributes`) are built. Returns the
    context and the tool arguments left out because the schema does not declare them.
    """
    supplied = request.context
    unknown = set(supplied) - CALLER_CONTEXT_KEYS
    if unknown:
        raise RequestError(
            f"context keys {sorted(unknown)} are not accepted; time and request_rate are "
            "set by the server"
        )
    schema = engine.schema
    common = schema.common_types
    attrs = schema.context["attributes"]
    if WHOLE_CONTEXT in needs:
        wanted: set[str] = set(attrs)
    else:
        wanted = {n.partition(".")[0] for n in needs} & attrs.keys()
    time_members = (
        None
        if WHOLE_CONTEXT in needs or "time" in needs
        else {n[5:] for n in needs if n.startswith("time.")}
    )

    def convert(name: str, value: Any) -> Any:
        try:
            return to_cedar(value, attrs[name], common, path=f"context.{name}")
        except ValueTypeError as exc:
            raise RequestError(str(exc)) from None

    args_in = supplied.get("args", {})
    if not isinstance(args_in, Mapping):
        raise RequestError("context.args: expected an object")
    declared = common["ToolArguments"]["attributes"]
    ignored = tuple(sorted(k for k in args_in if k not in declared))

    def value_of(name: str) -> Any:
        if name == "time":
            record = _time_context(now, zone)
            if time_members is None:
                return record
            return {k: v for k, v in record.items() if k in time_members}
        if name == "request_rate":
            return request_rate
        if name == "risk_score":
            return risk_score
        if name == "delegation":
            return convert(name, _delegation(request))
        if name == "approval":
            return convert(name, _approval(supplied.get("approval")))
        if name == "args":
            return convert(name, {k: v for k, v in args_in.items() if k in declared})
        if name == "authorization_details":
            return convert(name, supplied.get(name, []))
        return convert(name, supplied.get(name, "unknown"))

    # Everything the caller sent is checked, whether or not a policy reads it, so a
    # malformed request is refused the same way whichever policies apply; only what
    # the slice reads is handed to Cedar.
    context: dict[str, Any] = {}
    for name in attrs.keys() & (set(supplied) | set(wanted)):
        value = value_of(name)
        if name in wanted:
            context[name] = value
    return context, ignored


def _delegation(request: AuthzRequest) -> dict[str, Any]:
    supplied = request.context.get("delegation", {})
    if not isinstance(supplied, Mapping):
        raise RequestError("context.delegation: expected an object")
    extra = set(supplied) - {"depth", "actors", "initiating_human"}
    if extra:
        raise RequestError(f"context.delegation: unknown members {sorted(extra)}")
    actors = supplied.get("actors")
    if actors is None:
        actors = [request.principal.id] if request.principal.type == "Agent" else []
    if not isinstance(actors, list) or not all(isinstance(a, str) for a in actors):
        raise RequestError("context.delegation.actors: expected a list of agent ids")
    depth = max(len(actors) - 1, 0)
    if supplied.get("depth", depth) != depth:
        raise RequestError("context.delegation.depth must be the number of hops: len(actors) - 1")
    if request.principal.type == "Agent" and actors and request.principal.id not in actors:
        raise RequestError("context.delegation.actors must include the acting agent")
    out: dict[str, Any] = {
        "depth": depth,
        "actors": [{"type": "Agent", "id": a} for a in actors],
    }
    human = supplied.get("initiating_human")
    if human is not None:
        out["initiating_human"] = {"type": "Human", "id": human}
    return out


def _delegation_problem(
    entities: EntitySnapshot, request: AuthzRequest, now: datetime
) -> str | None:
    """A chain is only as good as its links: every agent in it must be usable now
    (suspending or expiring one cuts off everything delegated through it), and the
    initiating human must be in the registry."""
    delegation = request.context.get("delegation")
    if not isinstance(delegation, Mapping):
        return None
    try:
        _delegation(request)
    except RequestError:
        return None  # malformed: reported as such when the context is built
    actors = delegation.get("actors")
    for actor in actors if isinstance(actors, list) else ():
        if isinstance(actor, str) and actor != request.principal.id:
            problem = entities.principal_problem(EntityRef("Agent", actor), now)
            if problem:
                return f"the delegation chain is not valid: agent {actor}: {problem}"
    human = delegation.get("initiating_human")
    if isinstance(human, str) and human not in entities.humans:
        return "the delegation's initiating human is not in the registry"
    return None


def _approval(supplied: Any) -> Any:
    if supplied is None:
        return {"state": "none"}
    if not isinstance(supplied, Mapping):
        raise RequestError("context.approval: expected an object")
    if supplied.get("state") not in APPROVAL_STATES:
        raise RequestError(f"context.approval.state must be one of {sorted(APPROVAL_STATES)}")
    if "approver" in supplied:
        return {**supplied, "approver": {"type": "Human", "id": supplied["approver"]}}
    return supplied


def caller_risk(request: AuthzRequest) -> int:
    """The risk score the enforcement point reported (0-100; 0 if none)."""
    value = request.context.get("risk_score", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise RequestError("context.risk_score: expected an integer 0-100")
    return value


def _shape_problem(engine: PolicyEngine, request: AuthzRequest) -> str | None:
    schema = engine.schema
    principal, resource = request.principal, request.resource
    for text in (principal.id, resource.id, request.action):
        if not isinstance(text, str) or not text or not is_encodable(text) or len(text) > 512:
            return "entity ids and the action must be non-empty, valid Unicode, ≤ 512 chars"
    if principal.type not in PRINCIPAL_TYPES:
        return f"{principal.type} cannot be a principal (Agent or Human)"
    if resource.type not in schema.entity_types or resource.type == "Action":
        return f"the entity type {resource.type!r} is not in the schema"
    applies = schema.applies_to.get(request.action)
    if applies is None:
        return f"the action {request.action!r} is not in the schema"
    principals, resources = applies
    if principal.type not in principals:
        return f"the action {request.action} does not apply to a {principal.type}"
    if resource.type not in resources:
        return f"the action {request.action} does not apply to a {resource.type}"
    return None


def _placement_problem(engine: PolicyEngine, request: AuthzRequest) -> str | None:
    """Why ``request.resource_parents`` cannot place its resource, or None: a parent
    of a type the schema does not let the resource be in, an invalid id, too many.
    (``decide`` denies such a request, fail closed, when it cannot place it.)"""
    parents = request.resource_parents
    if not parents:
        return None
    if len(parents) > MAX_PARENTS:
        return f"a resource may be placed in at most {MAX_PARENTS} parents"
    spec = engine.schema.entity_types.get(request.resource.type)
    allowed = spec.member_of if spec is not None else ()
    for parent in parents:
        if not parent.id or not is_encodable(parent.id) or len(parent.id) > MAX_ID:
            return f"a parent's id must be non-empty, valid Unicode, ≤ {MAX_ID} chars"
        if parent.type not in allowed:
            return f"a {request.resource.type} cannot be in a {parent.type}"
    return None


def _attributes_problem(engine: PolicyEngine, request: AuthzRequest) -> str | None:
    """Why ``request.resource_attributes`` cannot be the attributes of a derived record
    of its resource, or None (:func:`derived_attributes_problem`). (``decide`` denies
    a request whose attributes the schema refuses, fail closed.)"""
    return derived_attributes_problem(
        engine.schema, request.resource.type, request.resource_attributes
    )


def _uid(ref: EntityRef) -> dict[str, str]:
    return {"type": ref.type, "id": ref.id}


@dataclass(frozen=True, slots=True)
class _Outcome:
    effect: Effect
    matched: tuple[str, ...]
    errors: tuple[str, ...]
    failed_forbids: tuple[str, ...]
    unattributed: bool


_NATIVE = getattr(cedarpy, "_internal", None)
_NATIVE_BATCH = getattr(_NATIVE, "is_authorized_batch", None)


def cedar_authorize(
    request: dict[str, Any], policies: cedarpy.PolicySet, entities: cedarpy.Entities
) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """Cedar's answer: (allowed, the matched policy ids, the error messages).

    cedarpy's public ``is_authorized`` wraps a native batch call in copying, JSON and
    result objects worth a fifth of a decision's time. Where that native call exists
    (cedarpy 4.x, which ``pyproject.toml`` pins) it is called directly with the same
    arguments the wrapper would pass; otherwise the public function is used. A unit
    test checks that both give the same answers.
    """
    inner = getattr(entities, "_inner", None)
    if _NATIVE_BATCH is not None and inner is not None:
        native = {**request, "context": json.dumps(request.get("context") or {})}
        raw = json.loads(_NATIVE_BATCH([native], policies, inner, None, False)[0])
        diagnostics = raw.get("diagnostics") or {}
        return (
            raw.get("decision") == "Allow",
            tuple(diagnostics.get("reason") or ()),
            tuple(diagnostics.get("errors") or ()),
        )
    result = cedarpy.is_authorized(request, policies, entities)
    return result.allowed, tuple(result.diagnostics.reasons), tuple(result.diagnostics.errors)


def _standing_in(value: Any, ref: EntityRef, stand_in: EntityRef) -> Any:
    """``value`` (a context in Cedar's JSON form) with every reference to ``ref`` made
    one to ``stand_in``: what the context is for a decision that lets ``stand_in``
    stand for ``ref`` (``context.args.x == resource`` holds in both or neither)."""
    if isinstance(value, dict):
        uid = value.get("__entity")
        if isinstance(uid, dict):
            if uid.get("type") == ref.type and uid.get("id") == ref.id:
                return {"__entity": _uid(stand_in)}
            return value
        return {k: _standing_in(v, ref, stand_in) for k, v in value.items()}
    if isinstance(value, list):
        return [_standing_in(v, ref, stand_in) for v in value]
    return value


# Cedar's own text for an entity (its escaping of the id) is read from the error it gives
# when a policy reads an attribute of an entity that does not exist.
_PROBE = cedarpy.PolicySet.from_str("permit (principal, action, resource) when { resource.x };")
_PROBE_HEAD, _PROBE_TAIL = "error while evaluating policy `policy0`: entity `", "` does not exist"
_NO_ENTITIES = cedarpy.Entities.from_json_str("[]")


@lru_cache(maxsize=1024)
def cedar_text(ref: EntityRef) -> str | None:
    """How Cedar writes ``ref`` in its messages (``DataSet::"a\\"b"``), or None if its
    answer is not in the form this module knows (another cedarpy)."""
    uid = _uid(ref)
    request = {"principal": uid, "action": uid, "resource": uid, "context": {}}
    _, _, errors = cedar_authorize(request, _PROBE, _NO_ENTITIES)
    if len(errors) != 1:
        return None
    message = errors[0]
    if not (message.startswith(_PROBE_HEAD) and message.endswith(_PROBE_TAIL)):
        return None
    return message[len(_PROBE_HEAD) : -len(_PROBE_TAIL)]


def _written_back(
    errors: tuple[str, ...], stand_in: EntityRef, ref: EntityRef
) -> tuple[str, ...] | None:
    """Cedar's error messages of a decision that let ``stand_in`` stand for ``ref``,
    as they would be with ``ref`` itself (None when Cedar's text for ``ref`` cannot
    be had)."""
    text = f'{stand_in.type}::"{stand_in.id}"'  # a stand-in's id needs no escaping
    if not any(text in message for message in errors):
        return errors
    rendered = cedar_text(ref)
    if rendered is None:
        return None
    return tuple(message.replace(text, rendered) for message in errors)


@dataclass(frozen=True, slots=True)
class _Scope:
    """The request's entities with their ancestors (each set holds the entity too)."""

    principal: EntityRef
    principal_in: frozenset[EntityRef]
    action: EntityRef
    action_in: frozenset[EntityRef]
    resource: EntityRef
    resource_in: frozenset[EntityRef]


def _evaluate(
    engine: PolicyEngine,
    mask: int,
    request: dict[str, Any],
    entities: cedarpy.Entities,
    scope: _Scope | None,
    modes: int,
) -> _Outcome:
    """Evaluate the policies in ``mask``.

    With ``scope`` (a slice), policies without conditions are decided here: within a
    slice their scope is checked exactly (:meth:`CompiledPolicy.scope_matches`) and,
    having no conditions, they match exactly when it holds. Only the others go to
    Cedar, so the parsed sets Cedar needs are few and often shared, and a slice with
    no conditions needs no Cedar call at all. The set handed to Cedar also carries
    every conditional policy for any principal (when there are few: see
    ``PolicyEngine.shared_cedar_mask``) of the modes in ``modes``: those outside the
    slice cannot match the request's scope, so Cedar skips them without reading their
    conditions, and the parsed set is shared by far more requests. Without ``scope``
    (``full=True``) Cedar evaluates everything, which is what the property test
    compares against.
    """
    permits: list[str] = []
    forbids: list[str] = []
    cedar_mask = mask
    if scope is not None:
        cedar_mask = mask & engine.cedar_mask
        shared = engine.shared_cedar_mask & modes
        if cedar_mask and shared:
            cedar_mask = (cedar_mask & ~shared) | shared
        for policy in engine.members(mask & ~engine.cedar_mask):
            if policy.scope_matches(
                scope.principal,
                scope.principal_in,
                scope.action,
                scope.action_in,
                scope.resource,
                scope.resource_in,
            ):
                (permits if policy.effect == "permit" else forbids).append(policy.id)
    errors: tuple[str, ...] = ()
    if cedar_mask:
        _, reasons, errors = cedar_authorize(request, engine.policy_set(cedar_mask), entities)
        for policy_id in reasons:
            known = engine.by_id.get(policy_id)
            if known is not None:
                (permits if known.effect == "permit" else forbids).append(policy_id)
    failed_forbids: list[str] = []
    unattributed = False
    for message in errors:
        named = failed_policy(message)
        failed = engine.by_id.get(named) if named else None
        if failed is None:
            unattributed = True
        elif failed.effect == "forbid":
            failed_forbids.append(failed.id)
    if forbids:
        return _Outcome("deny", tuple(forbids), errors, tuple(failed_forbids), unattributed)
    allowed = bool(permits) and not failed_forbids and not unattributed
    return _Outcome(
        "allow" if allowed else "deny",
        tuple(permits),
        errors,
        tuple(failed_forbids),
        unattributed,
    )


class _Dimensions:
    """Per-entity slices of one (policy engine, entity snapshot) pair: each principal's,
    action's and resource's mask and the set of entities it is ``in``. They depend on
    nothing else, so they are computed once per entity and dropped with the pair;
    bounded, since ids in requests are the caller's."""

    LIMIT = 100_000

    def __init__(self, engine: PolicyEngine, entities: EntitySnapshot) -> None:
        self._engine = engine
        self._entities = entities
        self._principals: dict[EntityRef, tuple[int, frozenset[EntityRef]]] = {}
        self._actions: dict[str, tuple[int, EntityRef, frozenset[EntityRef]]] = {}
        self._resources: dict[EntityRef, tuple[int, frozenset[EntityRef]]] = {}

    def principal(self, ref: EntityRef) -> tuple[int, frozenset[EntityRef]]:
        return self._entity(self._principals, ref, self._engine.principal_mask)

    def resource(self, ref: EntityRef) -> tuple[int, frozenset[EntityRef]]:
        return self._entity(self._resources, ref, self._engine.resource_mask)

    def _entity(
        self,
        cache: dict[EntityRef, tuple[int, frozenset[EntityRef]]],
        ref: EntityRef,
        mask_of: Callable[[EntityRef, frozenset[EntityRef]], int],
    ) -> tuple[int, frozenset[EntityRef]]:
        found = cache.get(ref)
        if found is None:
            up = self._entities.ancestors(ref)
            found = (mask_of(ref, up), up | {ref})
            self._store(cache, ref, found)
        return found

    def action(self, name: str) -> tuple[int, EntityRef, frozenset[EntityRef]]:
        found = self._actions.get(name)
        if found is None:
            ref = EntityRef("Action", name)
            up = self._engine.schema.action_ancestor_refs(name)
            found = (self._engine.action_mask(ref, up), ref, frozenset(up) | {ref})
            self._store(self._actions, name, found)
        return found

    def _store(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self.LIMIT:
            cache.clear()
        cache[key] = value


@dataclass(frozen=True, slots=True)
class _Placement:
    """How one decision sees its resource in the parents its enforcement point gives
    it (:attr:`AuthzRequest.resource_parents`): the Cedar entities and the slices it
    is decided on; with a ``stand_in``, the entity Cedar decides on in the resource's
    place, and the resource with its ancestors (``resource_in``) for the scope
    index."""

    handle: cedarpy.Entities
    dims: _Dimensions
    stand_in: EntityRef | None = None
    resource_in: frozenset[EntityRef] = frozenset()


class Authorizer:
    """Decides requests against the current policy engine and entity snapshot.

    Both are swapped atomically by :meth:`update` when a new policy version or a
    registry change arrives; a decision never touches storage. ``risk`` gives the
    server's risk score for a principal (0 until detection is configured).
    """

    def __init__(
        self,
        engine: PolicyEngine,
        entities: EntitySnapshot,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        zone: str = "UTC",
        risk: Callable[[EntityRef], int] | None = None,
    ) -> None:
        self._state = (engine, entities, _Dimensions(engine, entities))
        self._clock = clock
        self._zone = ZoneInfo(zone)
        self._risk = risk or (lambda _ref: 0)
        self.rates = RateCounter()
        # copies of the snapshot in force that place what it cannot (see _place)
        self._placed_lock = threading.Lock()
        self._placed: tuple[EntitySnapshot | None, OrderedDict[Any, EntitySnapshot]] = (
            None,
            OrderedDict(),
        )

    @property
    def engine(self) -> PolicyEngine:
        return self._state[0]

    @property
    def entities(self) -> EntitySnapshot:
        return self._state[1]

    def update(
        self, engine: PolicyEngine | None = None, entities: EntitySnapshot | None = None
    ) -> None:
        current_engine, current_entities, _ = self._state
        engine, entities = engine or current_engine, entities or current_entities
        self._state = (engine, entities, _Dimensions(engine, entities))

    def decide(self, request: AuthzRequest, *, full: bool = False, count: bool = True) -> Decision:
        """Decide one request. ``full=True`` evaluates the whole policy set instead of
        the slice (used to prove the two agree); ``count=False`` leaves the request
        rate as it is (a what-if question, not a request). Never raises: anything
        unexpected (a native error, a failing risk source) is a deny with the error
        named."""
        started = time.perf_counter()
        try:
            return self._decide(request, full=full, count=count)
        except Exception as exc:  # fail closed, whatever went wrong
            engine = self.engine
            message = f"the decision could not be evaluated: {type(exc).__name__}"
            return Decision(
                decision="deny",
                decision_id=new_id("decision"),
                policies=(),
                reasons=(f"{message} (fail closed)",),
                errors=(message,),
                policy_version=engine.version,
                evaluation_us=(time.perf_counter() - started) * 1e6,
                evaluated=0,
                request=request,
            )

    def _decide(
        self, request: AuthzRequest, *, full: bool, count: bool = True, stand_in: bool = True
    ) -> Decision:
        started = time.perf_counter()
        engine, entities, dims = self._state
        now = self._clock()

        def done(
            effect: Effect,
            reasons: Sequence[str],
            *,
            policies: Sequence[str] = (),
            errors: Sequence[str] = (),
            evaluated: int = 0,
            dry_run: DryRunOutcome | None = None,
            ignored: tuple[str, ...] = (),
            risk: int = 0,
        ) -> Decision:
            return Decision(
                decision=effect,
                decision_id=new_id("decision"),
                policies=tuple(policies),
                reasons=tuple(reasons),
                errors=tuple(errors),
                policy_version=engine.version,
                evaluation_us=(time.perf_counter() - started) * 1e6,
                evaluated=evaluated,
                request=request,
                dry_run=dry_run,
                ignored_arguments=ignored,
                risk_score=risk,
            )

        problem = self._request_problem(engine, entities, request, now)
        if problem:
            return done("deny", [problem], errors=[problem])
        placement = _Placement(entities.handle, dims)
        if request.resource_parents or request.resource_attributes:
            placed = self._place(engine, entities, dims, request, stand_in=stand_in)
            if placed is None:
                where = ", ".join(map(str, request.resource_parents))
                problem = (
                    f"{request.resource} cannot be placed in {where} (fail closed)"
                    if not request.resource_attributes
                    else f"{request.resource} cannot be given its derived attributes"
                    + (f" in {where}" if where else "")
                    + " (fail closed)"
                )
                return done("deny", [problem], errors=[problem])
            placement = placed
            dims = placed.dims
        standing = placement.stand_in
        rates = self.rates
        rate = (rates.hit if count else rates.peek)(request.principal, now.timestamp())
        scope = None
        if full:
            mask = engine.all_mask
            action_ref = EntityRef("Action", request.action)
        else:
            principal_mask, principal_in = dims.principal(request.principal)
            action_mask, action_ref, action_in = dims.action(request.action)
            if standing is None:
                resource_mask, resource_in = dims.resource(request.resource)
            else:
                resource_in = placement.resource_in
                resource_mask = engine.resource_mask(request.resource, resource_in)
            mask = principal_mask & action_mask & resource_mask
            scope = _Scope(
                request.principal,
                principal_in,
                action_ref,
                action_in,
                request.resource,
                resource_in,
            )
        risk = 0
        try:
            risk = max(caller_risk(request), min(100, max(0, self._risk(request.principal))))
            context, ignored = build_context(
                engine,
                request,
                now=now,
                zone=self._zone,
                risk_score=risk,
                request_rate=rate,
                needs=engine.context_needs(mask if full else mask & engine.cedar_mask),
            )
        except RequestError as exc:
            return done("deny", [f"the request is not valid: {exc}"], errors=[str(exc)], risk=risk)
        if standing is not None:
            context = _standing_in(context, request.resource, standing)
        cedar_request = {
            "principal": _uid(request.principal),
            "action": _uid(action_ref),
            "resource": _uid(standing or request.resource),
            "context": context,
        }
        handle = placement.handle
        enforce_mask = mask & engine.enforce_mask
        outcome = _evaluate(engine, enforce_mask, cedar_request, handle, scope, engine.enforce_mask)
        errors = outcome.errors
        if standing is not None:
            written = _written_back(errors, standing, request.resource)
            if written is None:  # Cedar's text for the resource is not to be had: copy
                return self._decide(request, full=full, count=False, stand_in=False)
            errors = written
        dry_run = None
        if mask & engine.dry_run_mask:
            shadow = _evaluate(engine, mask, cedar_request, handle, scope, engine.all_mask)
            dry_ids = {p.id for p in engine.members(mask & engine.dry_run_mask)}
            dry_run = DryRunOutcome(
                decision=shadow.effect,
                policies=tuple(
                    p for p in (*shadow.matched, *shadow.failed_forbids) if p in dry_ids
                ),
            )
        reasons = self._reasons(engine, outcome)
        return done(
            outcome.effect,
            reasons,
            policies=() if outcome.unattributed else (outcome.failed_forbids or outcome.matched),
            errors=errors,
            evaluated=mask.bit_count(),
            dry_run=dry_run,
            ignored=ignored,
            risk=risk,
        )

    def _place(
        self,
        engine: PolicyEngine,
        entities: EntitySnapshot,
        dims: _Dimensions,
        request: AuthzRequest,
        *,
        stand_in: bool = True,
    ) -> _Placement | None:
        """How the decision sees ``request.resource`` in each of
        ``request.resource_parents`` and, when it has ``request.resource_attributes``,
        with exactly those where the catalog sets none, as if a derived record for it
        were merged in (:meth:`EntitySnapshot.with_more`, :func:`merge_derived`: the
        catalog's attributes win; :meth:`EntitySnapshot.with_attributes`: the request's
        derived attributes replace those of the snapshot's derived records, so a call
        is decided with the attributes an approval for it is bound to, even when its
        enforcement point's snapshot changed meanwhile); None when the schema refuses
        that record.

        * In them, and with those attributes, in the snapshot in force (a listed
          item's derived record, the catalog's attributes): as is.
        * Else, a resource that the snapshot does not hold and that nothing names
          (no policy, no entity, :attr:`EntitySnapshot.referenced`), such as a URI
          made from a template: the stand-in of its place, its type in those parents
          with those derived attributes (:meth:`EntitySnapshot.stand_in`; the HTTP
          gateway's attributed routes have one each), stands for
          it in Cedar, and the scope index sees it with the parents and their
          ancestors. No copy, whatever the number of entities. Its context and
          Cedar's messages are written to match (:func:`_standing_in`,
          :func:`_written_back`).
        * Else (a catalog entry or derived record, a resource something names; or
          a place the snapshot has no stand-in for, whose copy with one is kept): a
          copy of the snapshot
          with the record merged in, the last :data:`PLACED_CACHE` kept per snapshot
          in force.
        """
        ref, parents = request.resource, request.resource_parents
        named = ref in entities.referenced or ref in engine.names
        unheld = stand_in and not named and ref not in entities.resources
        place: Place | None = None  # the resource's, when it is unheld
        found: EntityRef | None = None
        if unheld:
            # The usual case first: a resource the snapshot does not hold, whose place
            # has a stand-in (made with the snapshot, so the schema has accepted that
            # type in those parents with those attributes, and _shape_problem the id):
            # nothing to merge or check per call. DerivedAttributes carry their key.
            place = Place(ref.type, parents, attributes_key(request.resource_attributes))
            found = entities.stand_in(*place)
            if found is not None and found not in engine.names:
                return self._standing(entities, entities, dims, found, ref, parents)
        attributes = dict(request.resource_attributes)
        have = entities.parents.get(ref, ())
        catalog = entities.resources.get(ref)
        wanted: dict[str, Any] | None = None  # the attributes the decision must see
        if attributes:
            built = entities.built(ref)
            wanted = {**attributes, **(built.attributes if built is not None else {})}
        if all(p in have for p in parents) and (
            wanted is None or (catalog is not None and dict(catalog.attributes) == wanted)
        ):
            return _Placement(entities.handle, dims)
        record = ResourceRecord(ref.type, ref.id, attributes, parents)
        merged_record = merge_derived(catalog, record)
        if wanted is not None:
            merged_record = replace(merged_record, attributes=wanted)
        try:
            check_resource(entities.schema, merged_record)
        except InvalidInput:
            return None  # fail closed: not in its parents, so not decided
        if place is not None and found is None:
            # a place the snapshot has no stand-in for: a copy with one, kept (the
            # schema accepted the record just above)
            missing = place
            holder = self._copy(entities, missing, lambda: entities.with_more(places=[missing]))
            found = holder.stand_in(*missing)
            if found is not None and found not in engine.names:
                return self._standing(entities, holder, dims, found, ref, parents)
        if wanted is None:
            merged = self._copy(entities, (ref, parents), lambda: entities.with_more([record]))
        else:
            key = (ref, parents, attributes_key(attributes))
            merged = self._copy(entities, key, lambda: entities.with_attributes(record))
        if not all(p in merged.parents.get(ref, ()) for p in parents):
            return None
        kept = merged.resources.get(ref)
        if wanted is not None and (kept is None or dict(kept.attributes) != wanted):
            return None
        return _Placement(merged.handle, _Dimensions(engine, merged))

    @staticmethod
    def _standing(
        entities: EntitySnapshot,
        holder: EntitySnapshot,
        dims: _Dimensions,
        found: EntityRef,
        ref: EntityRef,
        parents: tuple[EntityRef, ...],
    ) -> _Placement:
        """The placement through ``found``, the stand-in ``holder`` (``entities`` or
        its copy with the place) has: the resource with its parents and their
        ancestors in ``entities`` for the scope index."""
        above = frozenset(parents).union(*(entities.ancestors(p) for p in parents))
        return _Placement(holder.handle, dims, found, above | {ref})

    def _copy(
        self, entities: EntitySnapshot, key: Any, build: Callable[[], EntitySnapshot]
    ) -> EntitySnapshot:
        """The copy of ``entities`` that ``build`` makes, kept under ``key`` (the last
        :data:`PLACED_CACHE` per snapshot in force)."""
        with self._placed_lock:
            source, cache = self._placed
            if source is not entities:
                cache = OrderedDict()
                self._placed = (entities, cache)
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                return found
        made = build()
        with self._placed_lock:
            if self._placed[0] is entities:
                cache[key] = made
                while len(cache) > PLACED_CACHE:
                    cache.popitem(last=False)
        return made

    @staticmethod
    def _request_problem(
        engine: PolicyEngine, entities: EntitySnapshot, request: AuthzRequest, now: datetime
    ) -> str | None:
        return (
            _shape_problem(engine, request)
            or entities.principal_problem(request.principal, now)
            or _delegation_problem(entities, request, now)
        )

    def validate_request(self, request: AuthzRequest) -> None:
        """Raise :class:`RequestError` if the request is malformed: unknown entity
        types or action, an action that does not apply, or a context that does not fit
        the schema. (``decide`` denies such requests; an API answers them with 4xx.)"""
        engine = self.engine
        problem = (
            _shape_problem(engine, request)
            or _placement_problem(engine, request)
            or _attributes_problem(engine, request)
        )
        if problem:
            raise RequestError(problem)
        caller_risk(request)
        build_context(
            engine, request, now=self._clock(), zone=self._zone, risk_score=0, request_rate=0
        )

    @staticmethod
    def _reasons(engine: PolicyEngine, outcome: _Outcome) -> list[str]:
        if outcome.unattributed:
            return ["a policy failed to evaluate and could not be identified (fail closed)"]
        if outcome.failed_forbids:
            return [
                f"forbid policy {p} failed to evaluate; it is treated as matching (fail closed)"
                for p in outcome.failed_forbids
            ]
        policies: list[CompiledPolicy] = [
            engine.by_id[p] for p in outcome.matched if p in engine.by_id
        ]
        if outcome.effect == "allow":
            return [f"permitted by policy {p.id}" for p in policies]
        forbids = [p for p in policies if p.effect == "forbid"]
        if forbids:
            return [f"forbidden by policy {p.id}" for p in forbids]
        return ["no policy permits this request (default deny)"]
