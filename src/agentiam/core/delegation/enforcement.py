"""What an enforcement point reads from a verified, possibly delegated, access token:
whether its task scope (RFC 9396 ``authorization_details``) permits a call, and the
delegation facts to put into the policy context.

A token without ``authorization_details`` is not task-scoped: its scope and the
policies decide alone. A token with them permits only calls that one of its entries
covers (see :meth:`DetailTypeRegistry.permits`); anything unreadable denies.
"""

from __future__ import annotations

from typing import Any

from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.delegation.authorization_details import (
    BUILTIN,
    ApiCall,
    CustomCall,
    DetailsRejected,
    DetailsVerdict,
    DetailTypeRegistry,
    ToolCall,
    policy_context,
)
from agentiam.core.ids import is_id

__all__ = ["delegation_context", "token_permits"]


def token_permits(
    access: VerifiedAccess,
    call: ToolCall | ApiCall | CustomCall,
    registry: DetailTypeRegistry = BUILTIN,
) -> DetailsVerdict:
    """Does this token's ``authorization_details`` permit ``call``?"""
    details = access.chain.authorization_details
    if not details:
        return DetailsVerdict(
            allowed=True,
            reason="the token is not task-scoped (no authorization_details)",
            entry=None,
        )
    return registry.permits(list(details), call)


def delegation_context(access: VerifiedAccess) -> dict[str, Any]:
    """The ``delegation`` and ``authorization_details`` members of the Cedar request
    context (see ``core/policy/schema.py``) for a request made with ``access``: every
    agent in the chain, current actor first, and the human the chain acts for."""
    chain = access.chain
    actors = list(chain.actors) if chain.actors else [access.client_id]
    delegation: dict[str, Any] = {"depth": len(actors) - 1, "actors": actors}
    if is_id(access.subject, "human"):
        delegation["initiating_human"] = access.subject
    context: dict[str, Any] = {"delegation": delegation}
    if chain.authorization_details:
        try:
            context["authorization_details"] = policy_context(list(chain.authorization_details))
        except DetailsRejected:
            # The policy still sees the chain; the call itself must be refused by
            # token_permits, which denies unreadable details.
            context["authorization_details"] = []
    return context
