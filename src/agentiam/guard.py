"""The in-process guard, for agent code: decide and audit Python tool calls locally.

    from agentiam.guard import Guard, ToolCallDenied

    guard = Guard.connect("https://iam.example.com", resource="https://agent.example/tools",
                          spool_dir="/var/lib/my-agent/guard", name="my-agent",
                          token=lambda: agent.token().value)   # AGENTIAM_GUARD_KEY: verifier key

    @guard.tool()
    def search(query: str) -> list[str]: ...

    try:
        search("invoices")
    except ToolCallDenied as denied:
        print(denied.reason, denied.decision_id)

A call that policy puts under human approval (docs/approvals.md) raises
:class:`ApprovalPending` (a ``ToolCallDenied``) naming the approval request, or, with
``approval_wait=`` seconds, waits for the human and runs once approved; once approved,
the same call made inside ``with guard.using_approval(pending.approval_id):`` runs,
once. :class:`ApprovalDenied` and :class:`ApprovalExpired` say it never will.

MCP servers built with the official SDK (``pip install 'agentiam[mcp]'``):
``guard.protect(server)``. See docs/guard.md and
:mod:`agentiam.adapters.gateway.guard`.

This module sits outside the layers on purpose: like the CLI, it is an entry point
that re-exports an adapter (the guard runs the gateway's enforcement parts in the
agent's process). :mod:`agentiam.sdk` does not import it, so agent code that only
needs tokens does not load the policy engine or the spool.
"""

from __future__ import annotations

from agentiam.adapters.gateway.guard import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalPending,
    ApprovalRefusal,
    Authenticate,
    Guard,
    GuardedCall,
    GuardEnforcer,
    GuardUnavailable,
    Principal,
    TokenSource,
    ToolCallDenied,
    plain_arguments,
)

__all__ = [
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalPending",
    "ApprovalRefusal",
    "Authenticate",
    "Guard",
    "GuardEnforcer",
    "GuardUnavailable",
    "GuardedCall",
    "Principal",
    "TokenSource",
    "ToolCallDenied",
    "plain_arguments",
]
