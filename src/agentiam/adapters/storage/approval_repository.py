"""SQL storage of human approval requests (table ``approval_requests``, migration
0008). Every state change is one ``UPDATE … WHERE state IN (…)`` (a compare-and-set),
so of two approvers racing, or an approval racing its expiry, exactly one wins."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.engine import Row

from agentiam.adapters.storage import tables as t
from agentiam.core.approvals import ApprovalRequest, ApprovalState
from agentiam.core.normalize import plain
from agentiam.core.policy.model import EntityRef
from agentiam.ports import ApprovalQuery, Page

__all__ = ["SqlApprovals"]

_ar = t.approval_requests
_SETTABLE = frozenset(
    {
        "decided_by",
        "decided_at",
        "decision_reason",
        "consumed_at",
        "consumed_decision_id",
        "expires_at",
    }
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _row(r: Row[Any]) -> ApprovalRequest:
    return ApprovalRequest(
        id=r.id,
        agent_id=r.agent_id,
        action=r.action,
        resource=EntityRef(r.resource_type, r.resource_id),
        fingerprint=r.fingerprint,
        state=ApprovalState(r.state),
        created_at=r.created_at,
        expires_at=r.expires_at,
        policies=tuple(json.loads(r.policies)),
        initiating_human=r.initiating_human,
        delegation_chain=tuple(json.loads(r.delegation_chain)),
        argument_names=tuple(json.loads(r.argument_names)),
        arguments=json.loads(r.arguments),
        decision_id=r.decision_id,
        requested_by=r.requested_by,
        decided_by=r.decided_by,
        decided_at=r.decided_at,
        decision_reason=r.decision_reason,
        consumed_at=r.consumed_at,
        consumed_decision_id=r.consumed_decision_id,
        resource_parents=tuple(
            EntityRef(p["type"], p["id"]) for p in json.loads(r.resource_parents or "[]")
        ),
        resource_attributes=json.loads(r.resource_attributes or "{}"),
    )


class SqlApprovals:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add(self, request: ApprovalRequest) -> None:
        self._c.execute(
            insert(_ar).values(
                id=request.id,
                agent_id=request.agent_id,
                action=request.action,
                resource_type=request.resource.type,
                resource_id=request.resource.id,
                fingerprint=request.fingerprint,
                state=request.state.value,
                created_at=request.created_at,
                expires_at=request.expires_at,
                policies=_dumps(list(request.policies)),
                initiating_human=request.initiating_human,
                delegation_chain=_dumps(list(request.delegation_chain)),
                argument_names=_dumps(list(request.argument_names)),
                arguments=_dumps(plain(request.arguments)),
                decision_id=request.decision_id,
                requested_by=request.requested_by,
                decided_by=request.decided_by,
                decided_at=request.decided_at,
                decision_reason=request.decision_reason,
                consumed_at=request.consumed_at,
                consumed_decision_id=request.consumed_decision_id,
                resource_parents=_dumps([p.to_json() for p in request.resource_parents]),
                resource_attributes=_dumps(dict(request.resource_attributes)),
            )
        )

    def get(self, approval_id: str) -> ApprovalRequest | None:
        row = self._c.execute(select(_ar).where(_ar.c.id == approval_id)).first()
        return _row(row) if row else None

    def find(self, query: ApprovalQuery) -> Page[ApprovalRequest]:
        stmt = select(_ar).order_by(_ar.c.id).limit(query.limit + 1)
        if query.after:
            stmt = stmt.where(_ar.c.id > query.after)
        if query.state is not None:
            stmt = stmt.where(_ar.c.state == query.state.value)
        if query.agent_id is not None:
            stmt = stmt.where(_ar.c.agent_id == query.agent_id)
        rows = list(self._c.execute(stmt))
        nxt = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            nxt = str(rows[-1].id)
        return Page([_row(r) for r in rows], nxt)

    def pending_for(self, agent_id: str, fingerprint: str) -> ApprovalRequest | None:
        row = self._c.execute(
            select(_ar).where(
                _ar.c.agent_id == agent_id,
                _ar.c.fingerprint == fingerprint,
                _ar.c.state == ApprovalState.PENDING.value,
            )
        ).first()
        return _row(row) if row else None

    def count_pending(self, agent_id: str, now: datetime) -> int:
        return int(
            self._c.execute(
                select(func.count())
                .select_from(_ar)
                .where(
                    _ar.c.agent_id == agent_id,
                    _ar.c.state == ApprovalState.PENDING.value,
                    _ar.c.expires_at > now,
                )
            ).scalar_one()
        )

    def lock_agent(self, agent_id: str) -> None:
        # SQLite: the transaction already holds the database's one write lock.
        if self._c.dialect.name == "postgresql":
            self._c.execute(
                select(t.agents.c.id).where(t.agents.c.id == agent_id).with_for_update()
            )

    def transition(
        self,
        approval_id: str,
        *,
        expect: Sequence[ApprovalState],
        to: ApprovalState,
        live_at: datetime | None = None,
        agent_id: str | None = None,
        fingerprint: str | None = None,
        values: Mapping[str, object] | None = None,
    ) -> ApprovalRequest | None:
        values = dict(values or {})
        unknown = set(values) - _SETTABLE
        if unknown:
            raise ValueError(f"not settable: {sorted(unknown)}")
        stmt = update(_ar).where(
            _ar.c.id == approval_id, _ar.c.state.in_([s.value for s in expect])
        )
        if live_at is not None:
            stmt = stmt.where(_ar.c.expires_at > live_at)
        if agent_id is not None:
            stmt = stmt.where(_ar.c.agent_id == agent_id)
        if fingerprint is not None:
            stmt = stmt.where(_ar.c.fingerprint == fingerprint)
        row = self._c.execute(stmt.values(state=to.value, **values).returning(*_ar.c)).first()
        return _row(row) if row else None

    def expire_due(self, now: datetime, limit: int) -> list[ApprovalRequest]:
        live = (ApprovalState.PENDING.value, ApprovalState.APPROVED.value)
        ids = [
            r.id
            for r in self._c.execute(
                select(_ar.c.id)
                .where(_ar.c.state.in_(live), _ar.c.expires_at <= now)
                .order_by(_ar.c.expires_at)
                .limit(limit)
            )
        ]
        if not ids:
            return []
        rows = self._c.execute(
            update(_ar)
            .where(_ar.c.id.in_(ids), _ar.c.state.in_(live), _ar.c.expires_at <= now)
            .values(state=ApprovalState.EXPIRED.value)
            .returning(*_ar.c)
        )
        return sorted((_row(r) for r in rows), key=lambda a: a.id)
