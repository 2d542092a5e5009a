"""Audit queries on both stores: every filter of AuditQuery, alone and combined, with
cursor pagination; the derived query columns agree with the stored body; values
longer than their column are found all the same; and the trail still verifies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from tests.conftest import FakeClock

from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.credentials.sealing import MasterKey
from agentiam.ports import AuditQuery

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TRACE_A = "a" * 32
TRACE_B = "b" * 32
ADA, BOB = "hum_01JF0000000000000000000ADA", "hum_01JF0000000000000000000B0B"
PLANNER, WORKER = "agt_01JF000000000000000PLANNER", "agt_01JF0000000000000000WORKER"


def _event(
    n: int,
    *,
    action: str = "read",
    resource: ResourceRef | None = None,
    agent: str | None = None,
    human: str | None = None,
    chain: tuple[str, ...] = (),
    decision: str | None = None,
    trace: str = TRACE_A,
    outcome: Outcome = Outcome.SUCCESS,
    type_: str = "policy.decision",
) -> AuditEvent:
    return AuditEvent.create(
        type=type_,
        actor=Actor(ActorType.AGENT, agent) if agent else Actor(ActorType.SYSTEM, "agentiam"),
        action=action,
        source="contract-test",
        trace=TraceContext(trace, f"{n:016x}"),
        now=T0 + timedelta(minutes=n),
        outcome=outcome,
        resource=resource,
        agent_id=agent,
        initiating_human=human,
        delegation_chain=chain,
        decision_id=decision,
        reason=f"event {n}",
    )


# Ten events: Ada's planner delegates to the worker (trace A), Bob's planner acts
# alone (trace B), and a few system events without agent or human.
EVENTS = [
    _event(0, type_="system.start", action="start"),
    _event(1, agent=PLANNER, human=ADA, chain=(PLANNER,), decision="dec_1",
           resource=ResourceRef("Document", "doc-1")),
    _event(2, agent=WORKER, human=ADA, chain=(WORKER, PLANNER), decision="dec_2",
           resource=ResourceRef("Document", "doc-1"), action="write", outcome=Outcome.DENIED),
    _event(3, agent=WORKER, human=ADA, chain=(WORKER, PLANNER), decision="dec_3",
           resource=ResourceRef("Tool", "search"), action="call"),
    _event(4, agent=PLANNER, human=BOB, chain=(PLANNER,), decision="dec_4",
           resource=ResourceRef("Document", "doc-2"), trace=TRACE_B),
    _event(5, agent=PLANNER, human=BOB, chain=(PLANNER,), decision="dec_5",
           resource=ResourceRef("Document", "doc-1"), trace=TRACE_B, action="write"),
    _event(6, type_="admin.change", action="agent.update",
           resource=ResourceRef("agent", PLANNER), trace=TRACE_B, outcome=Outcome.FAILURE),
    _event(7, agent=WORKER, human=ADA, chain=(WORKER, PLANNER), decision="dec_7",
           resource=ResourceRef("Tool", "search"), action="call", outcome=Outcome.DENIED),
    _event(8, type_="system.stop", action="stop"),
    _event(9, agent=WORKER, human=ADA, chain=(WORKER, PLANNER), decision="dec_9",
           resource=ResourceRef("Document", "doc-3"), trace=TRACE_B),
]  # fmt: skip


@pytest.fixture
def c(database_url: str, clock: FakeClock) -> Iterator[Container]:
    settings = Settings(
        database_url=database_url,
        issuer="https://as.example.com",
        master_key=MasterKey.generate_text(),
    )
    container = build(settings, clock=clock)
    with SqlUnitOfWork(container.engine) as uow:
        uow.audit.append(EVENTS[0])
        uow.audit.append_many(EVENTS[1:])  # both write paths fill the query columns
        uow.commit()
    yield container
    container.close()


def _ours(c: Container, **kw: Any) -> list[int]:
    """The positions in EVENTS of the matching events, in the order returned."""
    ids = {e.event_id: i for i, e in enumerate(EVENTS)}
    found = c.audit.find(AuditQuery(limit=100, **kw)).items
    return [ids[e.event_id] for e in found if e.event_id in ids]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, list(range(10))),
        ({"agent_id": WORKER}, [2, 3, 7, 9]),
        ({"human_id": ADA}, [1, 2, 3, 7, 9]),
        ({"human_id": BOB}, [4, 5]),
        ({"action": "write"}, [2, 5]),
        ({"resource_type": "Document"}, [1, 2, 4, 5, 9]),
        ({"resource_type": "Document", "resource_id": "doc-1"}, [1, 2, 5]),
        ({"resource_id": "search"}, [3, 7]),
        ({"decision_id": "dec_4"}, [4]),
        ({"decision_id": "dec_nope"}, []),
        ({"trace_id": TRACE_B}, [4, 5, 6, 9]),
        ({"outcome": "denied"}, [2, 7]),
        ({"outcome": "failure"}, [6]),
        ({"type": "system.stop"}, [8]),
        ({"since": T0 + timedelta(minutes=7)}, [7, 8, 9]),
        ({"until": T0 + timedelta(minutes=2)}, [0, 1]),  # strictly before
        ({"since": T0 + timedelta(minutes=2), "until": T0 + timedelta(minutes=5)}, [2, 3, 4]),
        ({"human_id": ADA, "trace_id": TRACE_B}, [9]),
        ({"agent_id": WORKER, "outcome": "denied", "action": "call"}, [7]),
        ({"agent_id": PLANNER, "resource_type": "Document", "human_id": BOB}, [4, 5]),
    ],
)
def test_each_filter_selects_exactly_its_events(
    c: Container, filters: dict[str, Any], expected: list[int]
) -> None:
    assert _ours(c, **filters) == expected


def test_filters_page_with_the_cursor(c: Container) -> None:
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = c.audit.find(AuditQuery(limit=2, after=after, human_id=ADA))
        seen += [e.event_id for e in page.items]
        pages += 1
        after = page.next_after
        if after is None:
            break
    assert seen == [EVENTS[i].event_id for i in (1, 2, 3, 7, 9)]
    assert pages == 3
    # An exact fit leaves no cursor behind.
    assert c.audit.find(AuditQuery(limit=2, human_id=BOB)).next_after is None


def test_after_event_resumes_after_an_event_id(c: Container) -> None:
    assert _ours(c, after_event=EVENTS[6].event_id) == [7, 8, 9]
    assert _ours(c, after_event=EVENTS[6].event_id, agent_id=WORKER) == [7, 9]
    assert _ours(c, after_event="evt_unknown") == []


def test_query_columns_are_derived_from_the_body(c: Container) -> None:
    """The indexed columns hold copies of the body's members; what queries return is
    the body, the record the trail hashes."""
    e = t.audit_events
    with c.engine.connect() as conn:
        rows = {r.event_id: r for r in conn.execute(select(e))}
    for event in EVENTS:
        row = rows[event.event_id]
        assert row.human_id == event.initiating_human
        assert row.action == event.action
        assert row.resource_type == (event.resource.type if event.resource else None)
        assert row.resource_id == (event.resource.id if event.resource else None)
        assert row.decision_id == event.decision_id
        assert row.trace_id == event.trace.trace_id
        assert row.outcome == event.outcome.value
    found = c.audit.find(AuditQuery(limit=1, decision_id="dec_2")).items
    assert [f.to_dict() for f in found] == [EVENTS[2].to_dict()]


def test_values_longer_than_their_column_are_stored_cut_and_still_found(
    c: Container,
) -> None:
    long_id = "x" * 600  # resource ids may be 512 characters; this is beyond
    sibling = "x" * 512 + "y" * 88  # the same first 512 characters
    long_agent = "agent-" + "z" * 60  # longer than the agent_id column (40)
    with SqlUnitOfWork(c.engine) as uow:
        uow.audit.append_many(
            [
                _event(20, resource=ResourceRef("Document", long_id), agent=long_agent),
                _event(21, resource=ResourceRef("Document", sibling)),
            ]
        )
        uow.commit()
    ids = [e.resource.id for e in c.audit.find(AuditQuery(limit=10, resource_id=long_id)).items]
    assert ids == [long_id]
    found = c.audit.find(AuditQuery(limit=10, agent_id=long_agent)).items
    assert [e.agent_id for e in found] == [long_agent]


def test_the_trail_verifies_with_the_query_columns(c: Container) -> None:
    c.audit_trail.integrate_all()
    assert c.audit_trail.sign_head(force=True) is not None
    assert c.audit_trail.verify().ok


def test_query_columns_cannot_be_updated(c: Container) -> None:
    """The append-only guard covers the new columns like the rest of the row."""
    engine: Engine = c.engine
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(t.audit_events.update().values(outcome="success"))
