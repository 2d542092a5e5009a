"""SQL storage of the assessment history (table ``assessments``, migration 0009).
Lists read only the summary column; the report and inputs are read by ``get``."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert, select

from agentiam.adapters.storage import tables as t
from agentiam.ports import AssessmentQuery, Page, StoredAssessment

__all__ = ["SqlAssessments"]

_a = t.assessments
_SUMMARY_COLUMNS = (
    _a.c.id,
    _a.c.assessed_at,
    _a.c.bank_version,
    _a.c.overall,
    _a.c.requested_by,
    _a.c.summary,
)


def _dumps(value: Any) -> str:
    """JSON in the value's own member order: a report re-rendered from stored inputs
    lists things (the numbers behind a measurement) in the order they were made."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _record(r: Any, *, whole: bool) -> StoredAssessment:
    return StoredAssessment(
        id=r.id,
        assessed_at=r.assessed_at,
        bank_version=r.bank_version,
        overall=float(r.overall),
        requested_by=r.requested_by,
        summary=json.loads(r.summary),
        report=json.loads(r.report) if whole else None,
        inputs=json.loads(r.inputs) if whole else None,
    )


class SqlAssessments:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add(self, record: StoredAssessment) -> None:
        if record.report is None or record.inputs is None:
            raise ValueError("a stored assessment needs its report and inputs")
        self._c.execute(
            insert(_a).values(
                id=record.id,
                assessed_at=record.assessed_at,
                bank_version=record.bank_version,
                overall=record.overall,
                requested_by=record.requested_by,
                summary=_dumps(record.summary),
                report=_dumps(record.report),
                inputs=_dumps(record.inputs),
            )
        )

    def get(self, assessment_id: str) -> StoredAssessment | None:
        row = self._c.execute(select(_a).where(_a.c.id == assessment_id)).first()
        return _record(row, whole=True) if row else None

    def find(self, query: AssessmentQuery) -> Page[StoredAssessment]:
        stmt = select(*_SUMMARY_COLUMNS).order_by(_a.c.id.desc()).limit(query.limit + 1)
        if query.before:
            stmt = stmt.where(_a.c.id < query.before)
        rows = list(self._c.execute(stmt))
        nxt = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            nxt = str(rows[-1].id)
        return Page([_record(r, whole=False) for r in rows], nxt)
