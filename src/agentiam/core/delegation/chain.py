"""Delegation chains in access tokens (RFC 8693 section 4.1, ``act``) and the rules
that make every hop narrower than the one before.

A delegated token is an ordinary RFC 9068 access token whose ``sub`` is the party the
chain acts for (the initiating human, or the agent whose own authority is handed on)
and whose ``client_id`` is the agent holding it. Three more claims describe the chain:

* ``act`` (RFC 8693 section 4.1): the current actor, with earlier actors nested
  inside it: ``{"sub": worker, "act": {"sub": planner}}``. Only the outermost entry
  is the party acting now; inner entries are history and grant nothing.
* ``delegation`` (ours): ``{"grant": <grant id or absent>, "lineage": [jti, ...]}``.
  ``lineage`` lists every AgentIAM token this one was derived from: the subject
  tokens up the chain and the actor tokens presented on each hop. Verifiers refuse a
  token when any of them is revoked, which is how revoking one token revokes the
  whole subtree below it without a database read (see ``RevocationSet``).
* ``authorization_details`` (RFC 9396 section 9.1) when the task is scoped.

Everything here is pure: parsing and building claims, and the narrowing checks for
scope and audience (``authorization_details`` narrowing lives with its types in
:mod:`agentiam.core.delegation.authorization_details`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentiam.core.credentials.jose import JoseRejected

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_DEPTH_CAP",
    "ChainClaims",
    "build_act",
    "narrow_scope",
    "parse_act",
    "parse_chain",
]

DEFAULT_MAX_DEPTH = 4
# The configurable cap is itself capped: lineage grows by two jtis a hop, and a token
# stays well inside the 8 KiB access-token limit.
MAX_DEPTH_CAP = 16
_MAX_LINEAGE = 2 * MAX_DEPTH_CAP + 1
_MAX_ID = 256


def build_act(actors: Sequence[str]) -> dict[str, Any] | None:
    """The nested ``act`` claim for ``actors`` (current actor first); None if empty."""
    act: dict[str, Any] | None = None
    for actor in reversed(actors):
        act = {"sub": actor} if act is None else {"sub": actor, "act": act}
    return act


def parse_act(value: Any) -> tuple[str, ...]:
    """The actors named by an ``act`` claim, outermost (current) first.

    RFC 8693 section 4.1 allows other claims beside ``sub`` in each entry; this
    service writes only ``sub`` and ``act``, and refuses anything else it finds in its
    own tokens, so a chain cannot smuggle extra meaning."""
    actors: list[str] = []
    node = value
    while node is not None:
        if not isinstance(node, Mapping) or not set(node) <= {"sub", "act"}:
            raise JoseRejected("act must be nested {sub, act} objects")
        sub = node.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= _MAX_ID:
            raise JoseRejected("act.sub must be a non-empty string")
        actors.append(sub)
        if len(actors) > MAX_DEPTH_CAP:
            raise JoseRejected("act chain is too deep")
        node = node.get("act")
    return tuple(actors)


@dataclass(frozen=True, slots=True)
class ChainClaims:
    """The delegation facts of one verified access token.

    ``actors`` is empty for an agent's own token (``sub`` = ``client_id``) and for a
    human's subject token; otherwise its first entry is ``client_id``."""

    actors: tuple[str, ...] = ()
    grant_id: str | None = None
    lineage: tuple[str, ...] = ()
    authorization_details: tuple[Mapping[str, Any], ...] = ()
    may_act: Mapping[str, Any] | None = None

    @property
    def depth(self) -> int:
        """Hops below the party the chain acts for (0: nobody acts for anybody)."""
        return len(self.actors)

    @property
    def delegated(self) -> bool:
        return bool(self.actors)

    def to_claims(self) -> dict[str, Any]:
        """The JWT claims for this chain (empty for a plain token)."""
        claims: dict[str, Any] = {}
        act = build_act(self.actors)
        if act is not None:
            claims["act"] = act
        delegation: dict[str, Any] = {}
        if self.grant_id is not None:
            delegation["grant"] = self.grant_id
        if self.lineage:
            delegation["lineage"] = list(self.lineage)
        if delegation:
            claims["delegation"] = delegation
        if self.authorization_details:
            claims["authorization_details"] = [dict(d) for d in self.authorization_details]
        if self.may_act is not None:
            claims["may_act"] = dict(self.may_act)
        return claims


def _string_list(value: Any, what: str, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise JoseRejected(f"{what} must be a list of at most {limit} strings")
    if not all(isinstance(v, str) and 0 < len(v) <= _MAX_ID for v in value):
        raise JoseRejected(f"{what} must hold non-empty strings")
    return tuple(value)


def parse_chain(claims: Mapping[str, Any], *, client_id: str) -> ChainClaims:
    """Read the delegation claims of a verified token; raise ``JoseRejected`` if they
    are malformed or inconsistent (the current actor must be the ``client_id``)."""
    actors = parse_act(claims.get("act"))
    if actors and actors[0] != client_id:
        raise JoseRejected("the current actor (act.sub) is not the client_id")
    if len(set(actors)) != len(actors):
        raise JoseRejected("an agent appears twice in the act chain")
    grant_id: str | None = None
    lineage: tuple[str, ...] = ()
    delegation = claims.get("delegation")
    if delegation is not None:
        if not isinstance(delegation, Mapping) or not set(delegation) <= {"grant", "lineage"}:
            raise JoseRejected("delegation must be {grant, lineage}")
        grant = delegation.get("grant")
        if grant is not None:
            if not isinstance(grant, str) or not 0 < len(grant) <= _MAX_ID:
                raise JoseRejected("delegation.grant must be a string")
            grant_id = grant
        if "lineage" in delegation:
            lineage = _string_list(delegation["lineage"], "delegation.lineage", _MAX_LINEAGE)
    details: tuple[Mapping[str, Any], ...] = ()
    raw_details = claims.get("authorization_details")
    if raw_details is not None:
        if not isinstance(raw_details, list) or not all(isinstance(d, dict) for d in raw_details):
            raise JoseRejected("authorization_details must be a list of objects")
        details = tuple(raw_details)
    may_act = claims.get("may_act")
    if may_act is not None and not isinstance(may_act, Mapping):
        raise JoseRejected("may_act must be an object")
    return ChainClaims(
        actors=actors,
        grant_id=grant_id,
        lineage=lineage,
        authorization_details=details,
        may_act=may_act,
    )


def narrow_scope(
    requested: Sequence[str] | None, *held: Collection[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The scope to grant on an exchange and what the request asked for beyond it.

    ``held`` are the sets the new token must stay within (the subject token's scope,
    the grant's, the actor's own entitlement): the result lies in their intersection.
    No request means the whole intersection (RFC 8693 section 2.1 leaves the default
    to the server; the narrowest safe answer is "what every party already holds").
    Returns ``(granted, beyond)``; ``beyond`` is non-empty when the request widens."""
    allowed = set(held[0]) if held else set()
    for more in held[1:]:
        allowed &= set(more)
    if requested is None:
        return tuple(sorted(allowed)), ()
    beyond = tuple(s for s in requested if s not in allowed)
    return (tuple(requested) if not beyond else ()), beyond
