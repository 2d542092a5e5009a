"""The approval step of an enforcement point, as blocking calls: shared by the MCP
gateway (on a worker thread) and the in-process guard (docs/approvals.md).

Two ways in:

* :meth:`ApprovalFlow.open`: the call's decision was a deny that a human's approval
  would lift (``Verdict.approvable``). The request is opened at the control plane
  (idempotent per agent and call fingerprint), optionally held up to a bound for the
  human, and, if approved meanwhile, used at once.
* :meth:`ApprovalFlow.retry`: the call names an approval id. The control plane uses
  it for exactly this call (approved, unexpired, same agent and fingerprint over the
  action, resource and complete arguments; a compare-and-set, so once) and the call is
  decided again as approved, carrying the decision id the consumption recorded.

Every refusal the flow makes is audited by the enforcer (``api.request.rejected``,
its reason naming the approval id) before it is answered; the control plane audits
``approval.requested`` / ``approved`` / ``denied`` / ``expired`` / ``consumed``. A
control plane that cannot be asked refuses the call (fail closed, 503).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from agentiam.adapters.gateway.approvals import (
    ApprovalClient,
    ApprovalTicket,
    ApprovedUse,
    NotApprovable,
)
from agentiam.adapters.gateway.enforcer import Call, Enforcer, SharedLimit, Verdict
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.errors import Forbidden, ServiceUnavailable

__all__ = ["MAX_POLL_SECONDS", "ApprovalFlow", "ApprovalOutcome"]

MAX_POLL_SECONDS = 60.0  # one long poll; the control plane caps it too


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """Where the approval step left a call.

    ``verdict`` set: the call is decided (an approval was consumed and the call decided
    as approved, or no request could be opened and the original deny stands); go on
    with it. ``verdict`` None: the call waits or is refused for good, ``state`` says
    which (pending, approved, denied, expired, consumed, mismatch)."""

    verdict: Verdict | None
    approval_id: str | None = None
    state: str | None = None
    expires_at: str | None = None
    status_url: str | None = None

    @classmethod
    def of(cls, ticket: ApprovalTicket) -> ApprovalOutcome:
        return cls(None, ticket.id, ticket.state, ticket.expires_at, ticket.status_url)


class ApprovalFlow:
    """The approval step for one enforcement point: its enforcer (decisions and
    audit) and its client for the control plane's approvals API."""

    def __init__(self, enforcer: Enforcer, client: ApprovalClient) -> None:
        self.enforcer = enforcer
        self.client = client

    def open(
        self,
        access: VerifiedAccess,
        call: Call,
        denied: Verdict,
        *,
        trace: TraceContext,
        wait: float = 0.0,
        peer: str | None = None,
    ) -> ApprovalOutcome:
        """Open (or find) the request for an approvable deny; with ``wait`` seconds,
        hold the call for the human and use the approval if it is given in time.
        ``peer``: the connection's network address, named in every event."""
        request = self.enforcer.request_for(access, call)
        try:
            ticket = self.client.open(request, denied.decision_id)
        except NotApprovable:
            return ApprovalOutcome(denied)  # the control plane would not: a plain deny
        except ServiceUnavailable as exc:
            self._refuse(access, call, trace, 503, exc.detail, peer)
            raise
        if wait > 0 and ticket.state == "pending":
            ticket = self.wait(ticket, wait, access=access, call=call, trace=trace, peer=peer)
        if ticket.state != "approved":
            return ApprovalOutcome.of(ticket)
        # the deny that opened it already passed the rate limit and task scope
        return self.retry(access, call, ticket.id, trace=trace, admitted=True, peer=peer)

    def wait(
        self,
        ticket: ApprovalTicket,
        seconds: float,
        *,
        access: VerifiedAccess,
        call: Call,
        trace: TraceContext,
        peer: str | None = None,
    ) -> ApprovalTicket:
        """The request once a human decided it (or it expired), or as it is after
        ``seconds``: long polls of at most a minute each."""
        deadline = time.monotonic() + seconds
        while ticket.state == "pending":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                ticket = self.client.wait(ticket.id, min(remaining, MAX_POLL_SECONDS))
            except ServiceUnavailable as exc:
                self._refuse(access, call, trace, 503, exc.detail, peer)
                raise
        return ticket

    def retry(
        self,
        access: VerifiedAccess,
        call: Call,
        approval_id: str,
        *,
        trace: TraceContext,
        wait: float = 0.0,
        admitted: bool = False,
        limit: SharedLimit | None = None,
        peer: str | None = None,
    ) -> ApprovalOutcome:
        """Use ``approval_id`` for this call and, once consumed, decide it as approved.
        The rate limit and the task scope are checked first: a call they refuse does
        not use the approval, which stays approved for a later try. Still pending:
        with ``wait`` seconds, wait for the human and try once more. Not for this call,
        not approved, used or expired: the refusal is audited and the outcome names
        the state. ``admitted``: this call already passed them (it is the call whose
        deny opened the request). ``limit``: the replicas' shared rate limit already
        answered for this call (:meth:`Enforcer.shared_admit`)."""
        if not admitted:
            refused = self.enforcer.admit(access, call, trace=trace, limit=limit, peer=peer)
            if refused is not None:
                return ApprovalOutcome(refused, approval_id, "not_used")
        request = self.enforcer.request_for(access, call)
        used = self._use(access, call, approval_id, request, trace, peer)
        if isinstance(used, ApprovalTicket) and used.state == "pending" and wait > 0:
            ticket = self.wait(used, wait, access=access, call=call, trace=trace, peer=peer)
            used = (
                self._use(access, call, approval_id, request, trace, peer)
                if ticket.state == "approved"
                else ticket
            )
        if isinstance(used, ApprovalOutcome):
            return used
        if isinstance(used, ApprovalTicket):
            self._refuse(access, call, trace, 403, f"approval {used.id} is {used.state}", peer)
            return ApprovalOutcome.of(used)
        verdict = self.enforcer.decide(
            access, call, trace=trace, approval=used, admitted=True, peer=peer
        )
        return ApprovalOutcome(verdict, used.approval_id, "consumed")

    def _use(
        self,
        access: VerifiedAccess,
        call: Call,
        approval_id: str,
        request: AuthzRequest,
        trace: TraceContext,
        peer: str | None,
    ) -> ApprovedUse | ApprovalTicket | ApprovalOutcome:
        try:
            return self.client.use(approval_id, request)
        except Forbidden:
            reason = f"approval {approval_id} is not for this call"
            self._refuse(access, call, trace, 403, reason, peer)
            return ApprovalOutcome(None, approval_id, "mismatch")
        except ServiceUnavailable as exc:
            self._refuse(access, call, trace, 503, exc.detail, peer)
            raise

    def _refuse(
        self,
        access: VerifiedAccess,
        call: Call,
        trace: TraceContext,
        status: int,
        reason: str,
        peer: str | None,
    ) -> None:
        """Audit a refusal; a spool that cannot take it is fail-closed already (the
        call is refused either way), so its error does not replace the refusal."""
        with contextlib.suppress(ServiceUnavailable):
            self.enforcer.refuse(
                access, trace=trace, status=status, reason=reason, call=call, peer=peer
            )
