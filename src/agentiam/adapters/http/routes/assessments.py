"""The maturity assessment over HTTP (docs/assessment.md#the-api).

``POST /v1/assessments`` runs one against the live control plane (answers and hand-
declared systems in the body, in the same shapes as the CLI's files) and stores it;
``GET /v1/assessments`` lists the history newest first; ``GET /v1/assessments/{id}``
returns one as JSON (as stored), Markdown or a self-contained HTML page (scored again
from its stored inputs, with the trend up to it); ``GET /v1/assessments/questions``
lists what the deployment cannot answer itself, for a client to ask people.

Running takes ``assessments:run`` (admin, operator): it reads the registry and the
whole trail and verifies it. Reading takes ``assessments:read`` (admin, operator,
auditor)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, StrictBool

from agentiam.adapters.http.pagination import decode_cursor, encode_cursor
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, IdPath, audited_read
from agentiam.adapters.http.security import require
from agentiam.adapters.reports.assessment_formats import (
    MEDIA_TYPES,
    render_stored,
    report_json,
    stored_report_json,
)
from agentiam.adapters.reports.assessment_html import CSP
from agentiam.core.access.admin_keys import Permission
from agentiam.core.assessment import (
    LEVEL_DESCRIPTIONS,
    AISystem,
    Answers,
    load_answers,
    load_declared_systems,
)
from agentiam.core.audit.events import ResourceRef
from agentiam.core.ids import is_id
from agentiam.errors import NotFound
from agentiam.services.assessment import AssessmentService
from agentiam.services.context import CallContext

__all__ = ["router"]

router = APIRouter(prefix="/v1/assessments", tags=["assessments"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.ASSESSMENTS_READ))]
Run = Annotated[CallContext, Depends(require(Permission.ASSESSMENTS_RUN))]


class RunIn(BaseModel):
    """``answers``: an answers file as JSON (``{"bank_version": …, "answers": {…}}``);
    ``systems``: the inventory file's ``systems`` list. With answers, every question in
    scope the evidence cannot answer must be answered (``unknown`` is an answer)
    unless ``complete`` is false."""

    model_config = ConfigDict(extra="forbid")

    answers: dict[str, Any] | None = None
    systems: list[Any] | None = None
    complete: StrictBool | None = None


def _service(request: Request) -> AssessmentService:
    service: AssessmentService = request.app.state.container.assessment
    return service


def _declared(body: RunIn) -> tuple[AISystem, ...]:
    return () if body.systems is None else load_declared_systems(body.systems)


@router.post("", status_code=201)
def run_assessment(request: Request, response: Response, ctx: Run, body: RunIn) -> dict[str, Any]:
    """Assess the deployment now and store the result (201, ``Location`` names it).
    A bad or partial answers document is 422 naming the question; a run while another
    is going is 429 with ``Retry-After``."""
    service = _service(request)
    declared = _declared(body)
    answers: Answers | None = None
    if body.answers is not None:
        answers = load_answers(body.answers, service.bank)
    complete = body.complete if body.complete is not None else answers is not None
    assessment_id, report = service.run_and_save(ctx, answers, declared=declared, complete=complete)
    response.headers["Location"] = f"/v1/assessments/{assessment_id}"
    return report_json(report, assessment_id)


@router.get("")
def list_assessments(
    request: Request,
    ctx: Read,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The stored assessments, newest first (pass ``next_cursor`` back for older ones):
    scores per domain and overall, the ladder stages reached, who ran each."""
    page = _service(request).history(limit=limit, before=decode_cursor("asm", cursor))
    audited_read(request, ctx, "assessments.list")
    return {
        "items": [
            {
                "id": r.id,
                "assessed_at": r.assessed_at.isoformat(),
                "bank_version": r.bank_version,
                "overall": r.overall,
                "requested_by": r.requested_by,
                **{k: v for k, v in r.summary.items() if k not in ("assessed_at", "overall")},
            }
            for r in page.items
        ],
        "next_cursor": encode_cursor("asm", page.next_after),
    }


@router.get("/questions")
def questions_to_answer(request: Request, ctx: Read) -> dict[str, Any]:
    """The questions the deployment cannot answer itself (what people answer in
    ``POST /v1/assessments``), with the maturity scale. An agent-specific question is
    ``in_scope`` when the registry holds an agentic agent; declaring an agentic system
    in ``systems`` brings the rest into scope too."""
    service = _service(request)
    questions, agentic = service.unmeasured(agentic=True)
    audited_read(request, ctx, "assessments.questions")
    return {
        "bank_version": service.bank.version,
        "levels": {str(int(level)): text for level, text in LEVEL_DESCRIPTIONS.items()},
        "questions": [
            {
                "id": q.id,
                "text": q.text,
                "guidance": q.guidance,
                "weight": q.weight,
                "agentic_only": q.agentic_only,
                "in_scope": agentic or not q.agentic_only,
            }
            for q in questions
        ],
    }


@router.get(
    "/{assessment_id}",
    responses={
        200: {"content": {MEDIA_TYPES["markdown"]: {}, MEDIA_TYPES["html"]: {}}},
        409: {"description": "Made with another question bank: only JSON is available"},
    },
)
def get_assessment(
    request: Request,
    ctx: Read,
    assessment_id: IdPath,
    format: Annotated[Literal["json", "markdown", "html"], Query()] = "json",
) -> Any:
    """One stored assessment. ``format=json`` (default) is the report as stored;
    ``markdown`` and ``html`` are scored again from its stored inputs (the same report)
    and the HTML page's trend runs up to it."""
    if not is_id(assessment_id, "assessment"):
        raise NotFound(f"no assessment {assessment_id}")
    service = _service(request)
    record = service.stored(assessment_id)
    audited_read(
        request, ctx, "assessments.read", resource=ResourceRef("assessment", assessment_id)
    )
    if format == "json":
        return stored_report_json(record)
    text = render_stored(service, record, format)
    headers = {"Content-Security-Policy": CSP} if format == "html" else {}
    return Response(text, media_type=MEDIA_TYPES[format], headers=headers)
