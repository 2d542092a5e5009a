"""One assessment report in each format it is offered in: JSON, Markdown and HTML
(docs/assessment.md#reports). The CLI and the API both render through here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from agentiam.adapters.reports.assessment_html import MAX_HISTORY, render_html, trend_point
from agentiam.adapters.reports.assessment_markdown import render_markdown
from agentiam.core.assessment.report import AssessmentReport
from agentiam.errors import InvalidInput
from agentiam.ports import StoredAssessment
from agentiam.services.assessment import AssessmentService

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "Format",
    "render_report",
    "render_stored",
    "report_json",
    "stored_report_json",
    "trend_history",
]

Format = Literal["json", "markdown", "html"]
FORMATS: tuple[Format, ...] = ("json", "markdown", "html")
MEDIA_TYPES: dict[Format, str] = {
    "json": "application/json",
    "markdown": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
}


def report_json(report: AssessmentReport, assessment_id: str | None = None) -> dict[str, Any]:
    """The JSON report, with the stored assessment's id when it has one."""
    data = report.to_dict()
    return data if assessment_id is None else {"id": assessment_id, **data}


def stored_report_json(record: StoredAssessment) -> dict[str, Any]:
    """A stored assessment's JSON report exactly as stored, with its id."""
    if record.report is None:
        raise ValueError("the record was read without its report")
    return {"id": record.id, **record.report}


def _json_text(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_stored(service: AssessmentService, record: StoredAssessment, fmt: Format) -> str:
    """A stored assessment as text: JSON as stored; Markdown and HTML scored again from
    its inputs (Conflict for another bank), the HTML trend running up to it."""
    if fmt == "json":
        return _json_text(stored_report_json(record))
    earlier = trend_history(service.trend_before(record.id, limit=MAX_HISTORY))
    return render_report(service.rescore(record), fmt, history=earlier, assessment_id=record.id)


def render_report(
    report: AssessmentReport,
    fmt: Format,
    *,
    history: Sequence[Mapping[str, Any]] = (),
    assessment_id: str | None = None,
) -> str:
    """``report`` as text in ``fmt``; ``history`` (earlier reports or their summaries,
    oldest first) draws the HTML report's trend. InvalidInput for a bad history entry."""
    if fmt == "json":
        return _json_text(report_json(report, assessment_id))
    if fmt == "html":
        return render_html(report, history)
    return render_markdown(report)


def trend_history(*sources: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Earlier reports from several sources (stored history, files given by hand) as one
    trend: oldest first, one point per assessment time, the newest ``MAX_HISTORY``.
    An entry that is not a trend point (a damaged stored summary) is left out rather
    than failing the report it would only decorate."""
    by_time: dict[datetime, Mapping[str, Any]] = {}
    for source in sources:
        for entry in source:
            try:
                point = trend_point(entry)
            except InvalidInput:
                continue
            by_time.setdefault(point.assessed_at, entry)
    return [by_time[t] for t in sorted(by_time)][-MAX_HISTORY:]
