"""The delegation graph: every delegated token and the token it was derived from, so
the whole tree from the initiating human down is queryable (``GET
/v1/delegations/{jti}``, ``agentiam trace token``). Each node is shown revoked or expired
exactly as a verifier would judge it now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from agentiam.core.credentials.revocations import RevocationSet, parties_of
from agentiam.core.delegation.models import DelegationGrant, TokenNode
from agentiam.core.ids import is_id
from agentiam.errors import NotFound
from agentiam.ports import Clock, UnitOfWorkFactory
from agentiam.services.revocations import RevocationService

__all__ = ["GRAPH_RETENTION", "DelegationGraph", "DelegationTree", "TreeNode"]

_MAX_TREE = 1000
# Nodes are kept this long after their token expired, for investigations; the audit
# trail keeps every issuance for good.
GRAPH_RETENTION = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TreeNode:
    node: TokenNode
    revoked: bool
    expired: bool


@dataclass(frozen=True, slots=True)
class DelegationTree:
    """A token, the chain above it (root first) and every token derived from it."""

    token: TreeNode
    ancestors: list[TreeNode]
    descendants: list[TreeNode]
    grant: DelegationGrant | None
    truncated: bool


class DelegationGraph:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        revocations: RevocationService,
        *,
        max_depth: int,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._revocations = revocations
        self._max_depth = max_depth

    def purge(self, *, limit: int = 1000) -> int:
        """Forget graph nodes whose token expired more than ``GRAPH_RETENTION`` ago."""
        with self._uow() as uow:
            removed = uow.token_graph.purge(self._clock.now() - GRAPH_RETENTION, limit)
            uow.commit()
        return removed

    def tree(self, jti: str) -> DelegationTree:
        """The token ``jti``, its ancestors up to the root and its descendants
        (breadth first, at most 1000), each marked revoked or expired as verifiers
        would see it now."""
        now = self._clock.now()
        self._revocations.ensure_fresh()
        with self._uow(read_only=True) as uow:
            node = uow.token_graph.get(jti) if is_id(jti, "token") else None
            if node is None:
                raise NotFound(f"token {jti} is not in the delegation graph")
            ancestors: list[TokenNode] = []
            parent = node.parent_jti
            while parent is not None and len(ancestors) <= self._max_depth + 1:
                found = uow.token_graph.get(parent)
                if found is None:
                    break
                ancestors.insert(0, found)
                parent = found.parent_jti
            descendants: list[TokenNode] = []
            frontier = [node.jti]
            truncated = False
            while frontier and not truncated:
                children = uow.token_graph.children(frontier)
                room = _MAX_TREE - len(descendants)
                truncated = len(children) > room
                descendants.extend(children[:room])
                frontier = [c.jti for c in children[:room]]
            grant_id = node.grant_id
            grant = uow.grants.get(grant_id) if grant_id else None
        by_jti = {n.jti: n for n in (*ancestors, node, *descendants)}
        revoked = self._revocations.revoked

        def mark(n: TokenNode) -> TreeNode:
            return TreeNode(
                node=n,
                revoked=_is_revoked(revoked, n, by_jti),
                expired=n.expires_at <= now,
            )

        return DelegationTree(
            token=mark(node),
            ancestors=[mark(a) for a in ancestors],
            descendants=[mark(d) for d in descendants],
            grant=grant,
            truncated=truncated,
        )


def _is_revoked(revoked: RevocationSet, node: TokenNode, by_jti: Mapping[str, TokenNode]) -> bool:
    lineage: list[str] = []
    current: TokenNode | None = node
    while current is not None:
        if current.actor_jti:
            lineage.append(current.actor_jti)
        if current.parent_jti:
            lineage.append(current.parent_jti)
        current = by_jti.get(current.parent_jti) if current.parent_jti else None
    return revoked.is_revoked(
        jti=node.jti,
        agent_id=node.client_id,
        issued_at=int(node.issued_at.timestamp()),
        lineage=lineage,
        parties=parties_of(node.subject, node.actors, node.grant_id),
    )
