"""The wire names of human approval (step-up) between an agent and an enforcement
point, shared by the gateways and the agent SDK (docs/approvals.md): a pure module
with no imports, so agent code does not pull in the policy engine."""

from __future__ import annotations

__all__ = ["APPROVAL_HEADER", "APPROVAL_STATE_HEADER", "META_KEY", "PROBLEM_CODES"]

# Request: the approval to use for this call. Response: the approval the call waits on.
APPROVAL_HEADER = "AgentIAM-Approval"
# Response: pending, approved, denied, expired, consumed or mismatch.
APPROVAL_STATE_HEADER = "AgentIAM-Approval-State"
# MCP: the key in a tools/call's ``params._meta`` carrying the approval id.
META_KEY = "agentiam/approval"
# The RFC 9457 problem code (after the problem base URL) per approval state.
PROBLEM_CODES = {
    "pending": "approval-pending",
    "approved": "approval-pending",  # approved, not yet used by this call: retry it
    "denied": "approval-denied",
    "expired": "approval-expired",
    "consumed": "approval-used",
    "mismatch": "approval-mismatch",
}
