"""Least-privilege analysis: what an agent can do, how far that reaches, and which of
its rights it never used (with a tighter policy set that still allows what it did).

**Effective permissions** enumerate each action that applies to agents against each
resource in the catalog (plus "pattern" grants: permits whose resource scope is a
type, a container or anything). For each pair the policies whose scope matches are
taken from the engine's slice; those whose conditions do not read ``context`` are
evaluated exactly with Cedar against the real entities, those that do are reported as
*conditional* (they hold for some contexts: a time, a risk score, an approval). A
context-free forbid that matches removes the pair; one that depends on context makes
it conditional. This is exact for everything that does not depend on the request's
context, and says so where it does.

**Blast radius** is the worst case: every allowed and conditional permission, write
and delete rights on sensitive resources, destructive tools, sub-agent spawning and
the agent's existing sub-agents.

**Unused permissions** compare the permissions with the agent's allowed decisions of
the last N days (from the audit trail). The proposal narrows each permit that was
used to exactly the (action, resource) pairs it allowed, keeping its conditions, and
drops the rest; allowed decisions it can replay exactly (context-free policies) are
replayed against the proposal to prove it still allows them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import cedarpy

from agentiam.core.policy.engine import ANY, CompiledPolicy, PolicyEngine, TypeKey
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.lexical import scope_span
from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord
from agentiam.core.policy.parsing import render_policies
from agentiam.core.policy.schema import DELETE_ACTIONS, WRITE_ACTIONS
from agentiam.core.policy.values import entity_literal

__all__ = [
    "BlastRadius",
    "Permission",
    "Proposal",
    "UnusedReport",
    "Usage",
    "blast_radius",
    "effective_permissions",
    "unused_permissions",
]

Status = Literal["allowed", "conditional"]
SENSITIVE_CLASSES = frozenset({"confidential", "restricted"})
MAX_CATALOG = 5000
MAX_DESCENDANTS_COUNTED = 10  # each count is a full enumeration


@dataclass(frozen=True, slots=True)
class Permission:
    action: str
    resource: EntityRef | None  # a catalog entity, or None for a pattern grant
    pattern: str | None  # e.g. 'any Tool in McpServer::"payments"'
    status: Status
    policies: tuple[str, ...]  # the permits that grant it
    conditions: tuple[str, ...] = ()  # context-dependent policies it hinges on
    sensitive: bool = False

    @property
    def kind(self) -> str:
        if self.action in DELETE_ACTIONS:
            return "delete"
        if self.action in WRITE_ACTIONS:
            return "write"
        if self.action == "invoke_tool":
            return "invoke"
        if self.action == "spawn_agent":
            return "spawn"
        return "read" if self.action in ("read", "GET", "HEAD", "OPTIONS") else "other"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "resource": self.resource.to_json() if self.resource else None,
            "pattern": self.pattern,
            "status": self.status,
            "kind": self.kind,
            "policies": list(self.policies),
            "conditions": list(self.conditions),
            "sensitive": self.sensitive,
        }


def _is_sensitive(entities: EntitySnapshot, ref: EntityRef) -> bool:
    record = entities.resources.get(ref)
    if record is None:
        return False
    attrs = record.attributes
    return attrs.get("classification") in SENSITIVE_CLASSES or attrs.get("sensitive") is True


def _is_destructive(entities: EntitySnapshot, ref: EntityRef) -> bool:
    record = entities.resources.get(ref)
    return record is not None and record.attributes.get("destructive") is True


def _matched(
    engine: PolicyEngine,
    policies: Sequence[CompiledPolicy],
    request: dict[str, Any],
    entities: EntitySnapshot,
) -> tuple[set[str], set[str]]:
    """Evaluate context-free ``policies`` together: (matched ids, erroring ids)."""
    if not policies:
        return set(), set()
    mask = 0
    for policy in policies:
        mask |= engine.bit_of[policy.id]
    result = cedarpy.is_authorized(request, engine.policy_set(mask), entities.handle)
    errored = {p.id for p in policies if any(f"`{p.id}`" in e for e in result.diagnostics.errors)}
    return set(result.diagnostics.reasons), errored


def _principal_keys(entities: EntitySnapshot, principal: EntityRef) -> set[Any]:
    """The scope-index keys an agent's policies can be filed under."""
    return {ANY, TypeKey("Agent"), principal, *entities.ancestors(principal)}


def _principal_can_match(policy: CompiledPolicy, keys: set[Any]) -> bool:
    return policy.principal in keys


def _pattern(policy: CompiledPolicy) -> str:
    key = policy.resource
    if key == ANY:
        return "any resource"
    if isinstance(key, TypeKey):
        return f"any {key.type}"
    assert isinstance(key, EntityRef)
    if policy.resource_op == "is_in":
        return f"any {policy.resource_type} in {key}"
    return f"anything in {key}"


def _action_names(policy: CompiledPolicy, applicable: Iterable[str]) -> list[str]:
    if policy.actions == (ANY,):
        return sorted(applicable)
    return sorted(str(k.id) for k in policy.actions if isinstance(k, EntityRef))


def effective_permissions(
    engine: PolicyEngine, entities: EntitySnapshot, agent_id: str
) -> list[Permission]:
    """Every (action, catalog resource) the agent's policies grant, plus pattern grants."""
    principal = EntityRef("Agent", agent_id)
    p_keys = _principal_keys(entities, principal)
    schema = engine.schema
    applicable = {
        action: resources
        for action, (principals, resources) in schema.applies_to.items()
        if "Agent" in principals
    }
    out: list[Permission] = []
    catalog = sorted(entities.resources, key=str)[:MAX_CATALOG]
    # Resources a permit names exactly (== scope) count even when not catalogued.
    named = {
        p.resource
        for p in engine.members(engine.enforce_mask)
        if p.effect == "permit"
        and p.resource_op == "eq"
        and isinstance(p.resource, EntityRef)
        and p.resource not in entities.resources
        and _principal_can_match(p, p_keys)
    }
    catalog += sorted(named, key=str)[: max(0, MAX_CATALOG - len(catalog))]
    for action, resource_types in sorted(applicable.items()):
        action_ref = EntityRef("Action", action)
        a_anc = schema.action_ancestor_refs(action)
        for ref in catalog:
            if ref.type not in resource_types:
                continue
            mask = engine.enforce_mask & engine.slice(
                principal,
                entities.ancestors(principal),
                action_ref,
                a_anc,
                ref,
                entities.ancestors(ref),
            )
            policies = engine.members(mask)
            permits = [p for p in policies if p.effect == "permit"]
            if not permits:
                continue
            request = {
                "principal": principal.to_json(),
                "action": action_ref.to_json(),
                "resource": ref.to_json(),
                "context": {},
            }
            forbids = [p for p in policies if p.effect == "forbid"]
            hard_forbids = [p for p in forbids if not p.uses_context]
            matched, errored = _matched(engine, hard_forbids, request, entities)
            if matched or errored:
                continue  # a context-free forbid (or one that errors: fail closed) blocks
            hard_permits = [p for p in permits if not p.uses_context]
            granted, _ = _matched(engine, hard_permits, request, entities)
            soft = [p.id for p in permits if p.uses_context]
            if not granted and not soft:
                continue
            soft_forbids = [p.id for p in forbids if p.uses_context]
            status: Status = "allowed" if granted and not soft_forbids else "conditional"
            out.append(
                Permission(
                    action=action,
                    resource=ref,
                    pattern=None,
                    status=status,
                    policies=tuple(sorted(granted)) if granted else tuple(sorted(soft)),
                    conditions=tuple(sorted(soft_forbids if granted else [*soft, *soft_forbids])),
                    sensitive=_is_sensitive(entities, ref),
                )
            )
    for policy in engine.members(engine.enforce_mask):
        if policy.effect != "permit" or policy.resource_op == "eq":
            continue
        if not _principal_can_match(policy, p_keys):
            continue
        for action in _action_names(policy, applicable):
            if action not in applicable:
                # an action group: expand to the member actions that apply to agents
                members = [
                    a
                    for a in applicable
                    if EntityRef("Action", action) in schema.action_ancestor_refs(a)
                ]
            else:
                members = [action]
            for member in members:
                out.append(
                    Permission(
                        action=member,
                        resource=None,
                        pattern=_pattern(policy),
                        status="conditional" if policy.conditional else "allowed",
                        policies=(policy.id,),
                        conditions=(policy.id,) if policy.conditional else (),
                    )
                )
    return out


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Literal["critical", "high", "medium"]
    message: str
    action: str
    resource: str
    policies: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "message": self.message,
            "action": self.action,
            "resource": self.resource,
            "policies": list(self.policies),
        }


@dataclass(frozen=True, slots=True)
class BlastRadius:
    agent_id: str
    permissions: list[Permission]
    findings: list[Finding]
    can_spawn: bool
    descendants: list[str]
    descendant_permissions: dict[str, int]
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]

    @property
    def level(self) -> str:
        severities = {f.severity for f in self.findings}
        for level in ("critical", "high", "medium"):
            if level in severities:
                return level
        return "low"

    def to_dict(self) -> dict[str, Any]:
        reachable = {
            (p.action, str(p.resource) if p.resource else p.pattern) for p in self.permissions
        }
        return {
            "agent_id": self.agent_id,
            "level": self.level,
            "reachable": len(reachable),
            "findings": [f.to_dict() for f in self.findings],
            "can_spawn_sub_agents": self.can_spawn,
            "sub_agents": self.descendants,
            "sub_agent_permissions": self.descendant_permissions,
            "oauth": {"scopes": list(self.scopes), "audiences": list(self.audiences)},
            "permissions": [p.to_dict() for p in self.permissions],
        }


def _descendants(entities: EntitySnapshot, agent_id: str) -> list[str]:
    children: dict[str, list[str]] = defaultdict(list)
    for agent in entities.agents.values():
        if agent.parent_id:
            children[agent.parent_id].append(agent.id)
    out: list[str] = []
    stack = list(children.get(agent_id, ()))
    while stack:
        child = stack.pop()
        if child not in out:
            out.append(child)
            stack.extend(children.get(child, ()))
    return sorted(out)


def blast_radius(engine: PolicyEngine, entities: EntitySnapshot, agent_id: str) -> BlastRadius:
    """The worst case: every permission that holds in some context, with write/delete
    on sensitive resources, destructive tools and sub-agent spawning called out."""
    permissions = effective_permissions(engine, entities, agent_id)
    findings: list[Finding] = []
    for p in permissions:
        target = str(p.resource) if p.resource else (p.pattern or "")
        if p.kind in ("write", "delete"):
            if p.resource is None:
                findings.append(
                    Finding(
                        "critical",
                        f"{p.kind} on {p.pattern}, which may include sensitive resources",
                        p.action,
                        target,
                        p.policies,
                    )
                )
            elif p.resource not in entities.resources:
                findings.append(
                    Finding(
                        "critical",
                        f"{p.kind} on a resource not in the catalog (its sensitivity is unknown)",
                        p.action,
                        target,
                        p.policies,
                    )
                )
            elif p.sensitive:
                findings.append(
                    Finding(
                        "critical",
                        f"{p.kind} on a sensitive resource",
                        p.action,
                        target,
                        p.policies,
                    )
                )
            else:
                findings.append(Finding("high", f"{p.kind} access", p.action, target, p.policies))
        elif (
            p.kind == "invoke" and p.resource is not None and _is_destructive(entities, p.resource)
        ):
            findings.append(
                Finding("critical", "invokes a destructive tool", p.action, target, p.policies)
            )
        elif p.kind == "invoke" and p.resource is None:
            findings.append(
                Finding("medium", f"may invoke {p.pattern}", p.action, target, p.policies)
            )
        elif p.kind == "spawn":
            findings.append(Finding("high", "may spawn sub-agents", p.action, target, p.policies))
    descendants = _descendants(entities, agent_id)
    agent = entities.agents.get(agent_id)
    return BlastRadius(
        agent_id=agent_id,
        permissions=permissions,
        findings=findings,
        can_spawn=any(p.kind == "spawn" for p in permissions),
        descendants=descendants,
        descendant_permissions={
            d: len(effective_permissions(engine, entities, d))
            for d in descendants[:MAX_DESCENDANTS_COUNTED]
        },
        scopes=agent.scopes if agent else (),
        audiences=agent.audiences if agent else (),
    )


@dataclass(frozen=True, slots=True)
class Usage:
    """One (action, resource) the agent was allowed, from the decision history."""

    action: str
    resource: EntityRef
    policies: tuple[str, ...]
    count: int
    last_used: datetime


@dataclass(frozen=True, slots=True)
class Proposal:
    policies: list[PolicyRecord]
    replaces: list[dict[str, Any]]  # the agent's current permits, and whether shared
    replayed: int  # allowed decisions replayed exactly against the proposal
    replay_allowed: int
    same_conditions: int  # context-dependent ones, covered by identical conditions

    def to_dict(self) -> dict[str, Any]:
        return {
            "cedar": render_policies(self.policies),
            "policies": [p.id for p in self.policies],
            "replaces": self.replaces,
            "verification": {
                "replayed": self.replayed,
                "still_allowed": self.replay_allowed,
                "covered_by_identical_conditions": self.same_conditions,
            },
        }


@dataclass(frozen=True, slots=True)
class UnusedReport:
    agent_id: str
    days: int
    decisions: int
    used: list[Usage]
    unused: list[Permission]
    unused_policies: list[str]
    proposal: Proposal
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "days": self.days,
            "decisions_considered": self.decisions,
            "history_truncated": self.truncated,
            "used": [
                {
                    "action": u.action,
                    "resource": u.resource.to_json(),
                    "policies": list(u.policies),
                    "count": u.count,
                    "last_used": u.last_used.isoformat(),
                }
                for u in self.used
            ],
            "unused": [p.to_dict() for p in self.unused],
            "unused_policies": self.unused_policies,
            "proposal": self.proposal.to_dict(),
            "notes": self.notes,
        }


def _narrow(
    policy: CompiledPolicy, agent_id: str, actions: Sequence[str], resource: EntityRef, index: int
) -> PolicyRecord:
    """``policy`` with its scope narrowed to this agent, these actions and this
    resource; its conditions are kept as they are."""
    text = policy.record.text
    open_at, close_at = scope_span(text)
    if len(actions) == 1:
        action = f"action == {entity_literal('Action', actions[0])}"
    else:
        action = f"action in [{', '.join(entity_literal('Action', a) for a in actions)}]"
    scope = (
        f"(principal == {entity_literal('Agent', agent_id)}, {action}, "
        f"resource == {entity_literal(resource.type, resource.id)})"
    )
    text = cedarpy.format_policies(text[:open_at] + scope + text[close_at + 1 :]).strip()
    return PolicyRecord(
        id=f"lp-{agent_id}-{index}",
        text=text,
        description=f"narrowed from {policy.id} by least-privilege analysis",
    )


def unused_permissions(
    engine: PolicyEngine,
    entities: EntitySnapshot,
    agent_id: str,
    usage: Sequence[Usage],
    *,
    days: int,
    decisions: int,
    truncated: bool = False,
) -> UnusedReport:
    permissions = effective_permissions(engine, entities, agent_id)
    used_pairs = {(u.action, u.resource) for u in usage}
    used_policies = {p for u in usage for p in u.policies}
    unused = [
        p
        for p in permissions
        if (p.resource is not None and (p.action, p.resource) not in used_pairs)
        or (p.resource is None and not set(p.policies) & used_policies)
    ]
    principal = EntityRef("Agent", agent_id)
    p_keys = _principal_keys(entities, principal)
    agent_permits = [
        p
        for p in engine.members(engine.enforce_mask)
        if p.effect == "permit" and _principal_can_match(p, p_keys)
    ]
    unused_policies = sorted(p.id for p in agent_permits if p.id not in used_policies)

    # Group what was used by the permit that allowed it, then by resource.
    grouped: dict[tuple[str, EntityRef], set[str]] = defaultdict(set)
    notes: list[str] = []
    for u in usage:
        permit = next((engine.by_id[p] for p in u.policies if p in engine.by_id), None)
        if permit is None or permit.effect != "permit":
            notes.append(
                f"{u.action} on {u.resource} was allowed by policies {list(u.policies)} that "
                "no longer exist; it is left out of the proposal"
            )
            continue
        grouped[(permit.id, u.resource)].add(u.action)
    proposed: list[PolicyRecord] = []
    for i, ((policy_id, resource), actions) in enumerate(sorted(grouped.items(), key=str)):
        proposed.append(
            _narrow(engine.by_id[policy_id], agent_id, sorted(actions), resource, i + 1)
        )

    # Replay: the proposal plus every current forbid, for the context-free grants.
    forbids = [p.record for p in engine.policies if p.effect == "forbid" and p.mode is Mode.ENFORCE]
    check = PolicyEngine(engine.version, engine.schema, [*forbids, *proposed])
    replayed = allowed = same = 0
    for u in usage:
        permit = next((engine.by_id[p] for p in u.policies if p in engine.by_id), None)
        if permit is None:
            continue
        if permit.uses_context:
            same += 1
            continue
        replayed += 1
        request = {
            "principal": principal.to_json(),
            "action": {"type": "Action", "id": u.action},
            "resource": u.resource.to_json(),
            "context": {},
        }
        result = cedarpy.is_authorized(request, check.policy_set(check.all_mask), entities.handle)
        allowed += bool(result.allowed)
    replaces = [
        {"policy": p.id, "shared": p.principal_op != "eq", "used": p.id in used_policies}
        for p in agent_permits
    ]
    if any(r["shared"] for r in replaces):
        notes.append(
            "Some permits that grant this agent also grant others (shared). To apply the "
            "proposal, exclude this agent from them (add `unless { principal == "
            f'Agent::"{agent_id}" }}`) rather than deleting them.'
        )
    return UnusedReport(
        agent_id=agent_id,
        days=days,
        decisions=decisions,
        used=list(usage),
        unused=unused,
        unused_policies=unused_policies,
        proposal=Proposal(proposed, replaces, replayed, allowed, same),
        truncated=truncated,
        notes=notes,
    )
