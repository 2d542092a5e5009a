"""The assessment history on both stores: a run is stored with its report, summary and
inputs and an audit event in one transaction; lists go newest first in pages; a stored
report scores again to itself; the JSON survives the round trip (floats, notes, member
order)."""

from __future__ import annotations

import hashlib

from tests.conftest import FakeClock

from agentiam.bootstrap import Container
from agentiam.core.assessment import load_answers
from agentiam.core.audit.trail import canonical
from agentiam.ports import AuditQuery
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")


def test_runs_are_stored_listed_newest_first_and_score_again_to_themselves(
    container: Container, clock: FakeClock
) -> None:
    c = container
    service = c.assessment
    asked = service.to_ask()
    note = "two teams | one policy\nsigned 'off' — ünïcode"
    answers = load_answers(
        {
            "bank_version": service.bank.version,
            "answers": {q.id: {"level": 2, "note": note} for q in asked},
        },
        service.bank,
    )
    ids = []
    for _ in range(3):
        assessment_id, _ = service.run_and_save(CTX, answers, complete=True)
        ids.append(assessment_id)
        clock.advance(seconds=60)
        owner = c.humans.create(CTX, NewHuman(display_name="Ann", email=f"a{len(ids)}@ex.com"))
        c.agents.register(
            CTX,
            NewAgent(
                name=f"agent-{len(ids)}",
                owners=[owner.id],
                purpose="works",
                environment="production",
                activate=True,
            ),
        )

    first = service.history(limit=2)
    assert [r.id for r in first.items] == ids[::-1][:2]
    assert first.items[0].report is None  # lists carry summaries only
    assert first.next_after is not None
    rest = service.history(limit=2, before=first.next_after)
    assert [r.id for r in rest.items] == ids[:1]
    assert rest.next_after is None

    for assessment_id in ids:
        record = service.stored(assessment_id)
        assert record.report is not None
        assert record.inputs is not None
        assert service.rescore(record).to_dict() == record.report
        assert record.summary["overall"] == record.overall == record.report["overall"]
        kept = record.inputs["answers"]
        assert all(a == {"level": 2, "note": note} for a in kept.values())
        assert list(record.report) == list(service.rescore(record).to_dict())  # member order

    trend = service.trend_before(ids[-1], limit=10)
    assert (
        [t["assessed_at"] for t in trend]
        == [
            service.stored(i).report["assessed_at"]  # type: ignore[index]
            for i in ids[:2]
        ]
    )

    events = c.audit.find(AuditQuery(limit=10, type="assessment.completed")).items
    assert [e.resource.id for e in events if e.resource] == ids
    for event, assessment_id in zip(events, ids, strict=True):
        stored = service.stored(assessment_id).report
        assert event.details["report_sha256"] == hashlib.sha256(canonical(stored)).hexdigest()
