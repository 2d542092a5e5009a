"""Human approval (step-up): when a deny can be lifted by a human, the approval
request that asks one, and its state machine.

**When.** A decision is *approvable* when it is a deny that the same request would
turn into an allow with ``context.approval = {state: "approved", approver: <an owner
of the agent>}``: the policies that denied it are the ones that ask for approval
(``forbid … when { context.approval.state != "approved" }``, the
``approval_above_risk`` template, a response playbook's step-up). Any other deny
(no permit at all, an unconditional forbid, an error, an unknown agent) stays a deny:
approving it would change nothing. :func:`approvable` is the one place this rule
lives; the control plane's decision point and every enforcement point ask it.

**Binding.** An approval is for one call: :func:`request_fingerprint` is the SHA-256
of the RFC 8785 canonical JSON of the principal, the action, the resource, the parents
the enforcement point placed the resource in (``AuthzRequest.resource_parents``: the
HTTP gateway's ``Api``, the MCP gateway's ``McpServer``) and the complete tool
arguments. Using an approval (consuming it) requires the same agent and the same
fingerprint, so an approval for arguments A cannot carry arguments B, nor one for
``Endpoint::"pay-5"`` in ``Api::"billing"`` the same endpoint id in another Api. The
attributes the enforcement point derived for the resource
(``AuthzRequest.resource_attributes``: the MCP gateway's ``read_only`` /
``destructive`` from a trusted server's tool annotations) are bound too when there are
any, so an approval opened for a tool the gateway saw as ``destructive: false`` cannot
be used once it sees it as ``destructive: true``.

**Placement.** The request is decided everywhere as the enforcement point placed it:
the control plane's check that approval would lift the deny, the request it records
(``resource_parents``, shown to the approver and in every ``approval.*`` event) and the
decision made again as approved all see the same ``resource_parents`` the original
decision did (:func:`approvable` keeps them; ``dataclasses.replace`` changes only the
context). The parents come from the enforcement point's configuration, never from the
agent's request. So do the derived attributes (``resource_attributes``), which every
decision uses as a derived record's: only where the catalog sets none (the catalog's
win, as in the gateway's own snapshot), whatever the deciding snapshot's own derived
records say; they are recorded and shown with the parents.

**States.** ``pending`` → ``approved`` | ``denied`` | ``expired``; ``approved`` →
``consumed`` (single use) | ``expired`` (not used in time). A pending request that
times out is *expired*, which denies: a timeout never approves. Every transition is a
compare-and-set in storage, so two approvers racing cannot both win.

The semantics are compared with OpenID CIBA in docs/approvals.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from agentiam.core.audit.trail import canonical
from agentiam.core.policy.authorizer import Authorizer, Decision
from agentiam.core.policy.model import EntityRef

__all__ = [
    "APPROVAL_EVENTS",
    "ApprovalRequest",
    "ApprovalState",
    "Approver",
    "approvable",
    "approved_context",
    "placement",
    "request_fingerprint",
]

# The audit event of each transition (the state it enters).
APPROVAL_EVENTS = {
    "pending": "approval.requested",
    "approved": "approval.approved",
    "denied": "approval.denied",
    "expired": "approval.expired",
    "consumed": "approval.consumed",
}
MAX_ARGUMENTS_BYTES = 256 * 1024  # canonical JSON of the arguments a fingerprint covers


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CONSUMED = "consumed"

    @property
    def final(self) -> bool:
        """Nothing can happen to the request any more."""
        return self in (ApprovalState.DENIED, ApprovalState.EXPIRED, ApprovalState.CONSUMED)


@dataclass(frozen=True, slots=True)
class Approver:
    """Who decided: an operator (``kind`` "operator", ``id`` the admin key's actor) or
    a human in the registry (``kind`` "human", ``id`` the human's id), who must be an
    owner or sponsor of the agent."""

    kind: str  # "operator" or "human"
    id: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, label: str) -> Approver:
        kind, _, ident = label.partition(":")
        return cls(kind, ident)


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One call waiting for (or given) a human's approval. ``arguments`` are redacted
    by the audit redaction rules; the raw values are never stored, only bound by the
    fingerprint. ``expires_at`` is the decision deadline while pending, and the use
    deadline once approved."""

    id: str
    agent_id: str
    action: str
    resource: EntityRef
    fingerprint: str
    state: ApprovalState
    created_at: datetime
    expires_at: datetime
    policies: tuple[str, ...] = ()  # the policies that asked for approval (the reason)
    initiating_human: str | None = None
    delegation_chain: tuple[str, ...] = ()
    argument_names: tuple[str, ...] = ()
    arguments: Mapping[str, Any] = field(default_factory=dict)
    decision_id: str | None = None  # the deny that opened it
    requested_by: str = ""  # the enforcement point (audit source) that asked
    decided_by: str | None = None  # Approver.label
    decided_at: datetime | None = None
    decision_reason: str | None = None
    consumed_at: datetime | None = None
    consumed_decision_id: str | None = None
    # the parents the enforcement point placed the resource in (placement())
    resource_parents: tuple[EntityRef, ...] = ()
    # the attributes the enforcement point derived for the resource (resource_attributes)
    resource_attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def approver(self) -> Approver | None:
        return Approver.parse(self.decided_by) if self.decided_by else None

    def effective_state(self, now: datetime) -> ApprovalState:
        """The state as of ``now``: a pending or approved request past its deadline is
        expired even before the sweep records it."""
        if self.state in (ApprovalState.PENDING, ApprovalState.APPROVED) and now >= self.expires_at:
            return ApprovalState.EXPIRED
        return self.state

    def as_of(self, now: datetime) -> ApprovalRequest:
        state = self.effective_state(now)
        return self if state is self.state else replace(self, state=state)


def placement(parents: Sequence[EntityRef]) -> tuple[EntityRef, ...]:
    """The parents a request places its resource in, as an approval records and binds
    them: each once, in a canonical order (``AuthzRequest.resource_parents`` is a
    set: the resource is in each of them)."""
    return tuple(sorted(set(parents)))


def request_fingerprint(
    principal: EntityRef,
    action: str,
    resource: EntityRef,
    args: Mapping[str, Any] | None,
    parents: Sequence[EntityRef] = (),
    attributes: Mapping[str, Any] | None = None,
) -> str:
    """SHA-256 (hex) of the RFC 8785 canonical JSON of the call: what an approval is
    bound to. ``args`` whole, unredacted; None and ``{}`` are the same call.
    ``parents``: the request's ``resource_parents`` (:func:`placement`); a call
    without any has the fingerprint it had before parents were bound, one with some
    is another call than the same resource placed elsewhere or nowhere.
    ``attributes``: the request's ``resource_attributes``, likewise: none (None or
    ``{}``) leaves the fingerprint as it was before they were bound; any make it
    another call than the same resource with other derived attributes, or none.
    Raises ValueError for arguments (or attributes) that are not JSON or larger than
    256 KiB."""
    body: dict[str, Any] = {
        "principal": {"type": principal.type, "id": principal.id},
        "action": action,
        "resource": {"type": resource.type, "id": resource.id},
        "args": dict(args or {}),
    }
    placed = placement(parents)
    if placed:
        body["resource_parents"] = [{"type": p.type, "id": p.id} for p in placed]
    if attributes:
        body["resource_attributes"] = dict(attributes)
    try:
        text = canonical(json.loads(json.dumps(body, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the call's arguments are not JSON: {type(exc).__name__}") from None
    if len(text) > MAX_ARGUMENTS_BYTES:
        raise ValueError("the call's arguments are larger than 256 KiB")
    return hashlib.sha256(text).hexdigest()


def approved_context(context: Mapping[str, Any], approver: Approver | None) -> dict[str, Any]:
    """``context`` with ``approval`` set to approved, naming the human who approved
    (an operator is not a Human entity, so it is left out)."""
    approval: dict[str, Any] = {"state": "approved"}
    if approver is not None and approver.kind == "human":
        approval["approver"] = approver.id
    return {**context, "approval": approval}


def approvable(authorizer: Authorizer, decision: Decision) -> bool:
    """Whether a human's approval would turn ``decision`` (a deny) into an allow.

    The request is decided again, with no change to the request-rate counter, as if
    approved by an owner of the agent: the same request (its resource placed in the
    same ``resource_parents``, with the same ``resource_attributes``), only the
    context changed. Refused outright: an allow, a deny with
    evaluation errors (fail closed: an erroring policy is not an approval question),
    a request that already carries an approval, and a principal that is not an agent
    in the registry."""
    request = decision.request
    if decision.allowed or decision.errors or "approval" in request.context:
        return False
    if request.principal.type != "Agent":
        return False
    agent = authorizer.entities.agents.get(request.principal.id)
    if agent is None:
        return False
    owner = next(iter(agent.owners), None)
    approver = Approver("human", owner) if owner else None
    what_if = replace(request, context=approved_context(request.context, approver))
    return authorizer.decide(what_if, count=False).allowed
