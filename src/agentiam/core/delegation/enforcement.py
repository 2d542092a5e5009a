"""What an enforcement point reads from a verified, possibly delegated, access token:
whether its task scope (RFC 9396 ``authorization_details``) permits a call, the
delegation facts to put into the policy context, and the parties whose rate limits a
call counts against (:func:`rate_parties`).

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

__all__ = ["chain_root", "delegation_context", "initiating_human", "rate_parties", "token_permits"]


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
    human = initiating_human(access)
    if human is not None:
        delegation["initiating_human"] = human
    context: dict[str, Any] = {"delegation": delegation}
    if chain.authorization_details:
        try:
            context["authorization_details"] = policy_context(list(chain.authorization_details))
        except DetailsRejected:
            # The policy still sees the chain; the call itself must be refused by
            # token_permits, which denies unreadable details.
            context["authorization_details"] = []
    return context


def initiating_human(access: VerifiedAccess) -> str | None:
    """The human a token acts for: its ``sub`` when that is a human's id (the root of
    a delegation chain a human started, RFC 8693 section 4.1: ``sub`` is the party
    acted for, ``act`` the agents acting), else None: an agent's own token, or a
    chain an agent started with its own authority, names no human. The token carries
    no owner of the agent, and none is looked up."""
    return access.subject if is_id(access.subject, "human") else None


def chain_root(access: VerifiedAccess) -> tuple[str, str]:
    """The delegation chain a token belongs to, as (root, first agent): the party at
    its root (``sub``) and the first agent below it, i.e. the innermost ``act``
    entry (RFC 8693 section 4.1 nests earlier actors inside), or the ``client_id``
    when nobody acts for anybody. When the root is not a human it is itself the
    first agent (an agent handing its own authority on): ``(sub, sub)``. Every token
    exchanged or minted below the first agent (its sub-agents, theirs) has the same
    pair, so one bucket keyed by it is shared by the whole tree."""
    subject = access.subject
    if not is_id(subject, "human"):
        return subject, subject
    actors = access.chain.actors
    return subject, actors[-1] if actors else access.client_id


def rate_parties(
    access: VerifiedAccess, *, human: bool, chain: bool
) -> tuple[str | None, tuple[str, str] | None]:
    """The pooled parties of a call, for the ``human`` and ``chain`` arguments of
    :meth:`RateLimiter.take <agentiam.core.enforcement.ratelimit.RateLimiter.take>`
    (and ``buckets``): :func:`initiating_human` and :func:`chain_root`, each read only
    when asked for (its limit is configured), so an unset limit costs nothing."""
    return (
        initiating_human(access) if human else None,
        chain_root(access) if chain else None,
    )
