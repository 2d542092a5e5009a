"""The audit write path stores what it stored before it was made cheaper, on both
stores.

* :class:`~agentiam.adapters.storage.bulk.BulkInsert` hands the driver the very
  statement and parameters SQLAlchemy Core's own ``insert()`` executemany does (the
  path it replaced): captured at the cursor, in one transaction rolled back.
* A fixed batch, as a gateway ships it, ingested through ``EnforcementSync.ingest``:
  the stored rows (canonical body, query columns, the time as the database holds it),
  the leaf and chain hashes the trail gives them, and the ``audit.ingested`` record
  equal expectations fixed from the code before the change.
* Detection reads every ingested body as its JSON text decodes (the memo hit).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from tests.conftest import FakeClock

from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.repositories import SqlAudit
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
from agentiam.core.audit.trail import decoded_body
from agentiam.services.context import CallContext

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
AGENT = "agt_01JF0000000000000000SAME01"
SOURCE = "gateway/sameness"


def _events() -> list[AuditEvent]:
    """Values of every kind a row holds: a time not in UTC, members longer than their
    query column, no resource, non-ASCII text, floats, nested details."""
    east = datetime(2026, 11, 23, 11, 0, 0, 123456, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=2))
    )
    return [
        AuditEvent.create(
            type="authz.decision",
            actor=Actor(ActorType.AGENT, AGENT),
            action="GET",
            source=SOURCE,
            trace=TraceContext("a" * 32, "1" * 16),
            now=east,
            resource=ResourceRef("Endpoint", "items"),
            agent_id=AGENT,
            delegation_chain=(AGENT,),
            decision_id="dec_01JF000000000000000000SAME",
            policy_version="7",
            risk_score=12.5,
            reason="permitted by policy p1",
            details={"decision": "allow", "evaluation_us": 127.9, "target": {"host": "h"}},
        ),
        AuditEvent.create(
            type="tool.call",
            actor=Actor(ActorType.AGENT, AGENT),
            action="x" * 300,  # over the 128-character query column: stored cut
            source=SOURCE,
            trace=TraceContext("b" * 32, "2" * 16),
            now=T0,
            outcome=Outcome.FAILURE,
            resource=ResourceRef("Tool", "é" * 500),
            agent_id=AGENT,
            initiating_human="hum_01JF00000000000000000000SAME",
            details={"status": 502, "text": 'naïve "q" \\ \u2028', "n": [1, 2.0, None]},
        ),
        AuditEvent.create(
            type="api.request.rejected",
            actor=Actor(ActorType.ANONYMOUS, "-"),
            action="authenticate",
            source=SOURCE,
            trace=TraceContext("c" * 32, "3" * 16),
            now=T0 + timedelta(microseconds=1),
            outcome=Outcome.DENIED,
        ),
    ]


class _Cursor:
    """What reaches the DBAPI cursor: each statement with its parameters."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            self.seen.append((statement, params))


def _captured(engine: Any, write: Any) -> list[tuple[str, Any]]:
    cursor = _Cursor()
    event.listen(engine, "before_cursor_execute", cursor)
    try:
        with SqlUnitOfWork(engine) as uow:  # left without a commit: rolled back
            write(uow)
    finally:
        event.remove(engine, "before_cursor_execute", cursor)
    return cursor.seen


@pytest.fixture
def container(database_url: str, clock: FakeClock) -> Iterator[Container]:
    c = build(Settings(database_url=database_url), clock=clock)
    yield c
    c.close()


def _core_rows(events: list[AuditEvent]) -> list[dict[str, Any]]:
    return [dict(zip(SqlAudit._ROW, SqlAudit._row(e), strict=True)) for e in events]


def _as_rows(params: Any) -> list[Any]:
    """A cursor's parameters as a list of rows (execute: one; executemany: many)."""
    if isinstance(params, dict):
        return [params]
    if isinstance(params, list | tuple) and params and isinstance(params[0], dict | tuple):
        return list(params)
    return [tuple(params)]


@pytest.mark.parametrize("absent", [False, True])
def test_bulk_insert_hands_the_driver_what_core_insert_did(
    container: Container, absent: bool
) -> None:
    events = _events()
    dialect = container.engine.dialect.name
    if absent:
        core = (pg_insert if dialect == "postgresql" else sqlite_insert)(
            t.audit_events
        ).on_conflict_do_nothing(index_elements=["event_id"])
    else:
        core = insert(t.audit_events)
    old = _captured(container.engine, lambda uow: uow.audit._c.execute(core, _core_rows(events)))
    new = _captured(
        container.engine,
        lambda uow: (uow.audit.append_absent if absent else uow.audit.append_many)(events),
    )
    assert [s for s, _ in new] == [s for s, _ in old]
    assert [r for _, p in new for r in _as_rows(p)] == [r for _, p in old for r in _as_rows(p)]
    assert len(_as_rows(new[0][1])) == len(events)  # one executemany, every row


def test_log_entries_and_nodes_reach_the_driver_as_core_insert_sent_them(
    container: Container,
) -> None:
    from agentiam.adapters.storage.trail_repository import SqlTrail
    from agentiam.core.audit.trail import LogEntry

    entries = [LogEntry(i, 10 + i, bytes([i]) * 32, bytes([i + 1]) * 32) for i in range(3)]
    nodes = [(0, 0, b"\x01" * 32), (1, 0, b"\x02" * 32)]
    log_rows = [
        {
            "log_index": e.index,
            "event_seq": e.event_seq,
            "leaf_hash": e.leaf_hash.hex(),
            "chain_hash": e.chain_hash.hex(),
        }
        for e in entries
    ]
    node_rows = [{"level": lv, "node_index": i, "hash": h.hex()} for lv, i, h in nodes]

    def core(uow: Any) -> None:
        uow.trail._c.execute(insert(t.audit_log), log_rows)
        uow.trail._c.execute(insert(t.audit_tree_nodes), node_rows)

    def bulk(uow: Any) -> None:
        assert isinstance(uow.trail, SqlTrail)
        uow.trail.append(entries, nodes)

    # The log's foreign key to events is checked at the insert on SQLite (immediate),
    # so the statements are compared as the driver gets them, not stored.
    old = _captured_lenient(container.engine, core)
    new = _captured_lenient(container.engine, bulk)
    assert [s for s, _ in new] == [s for s, _ in old]
    assert [_as_rows(p) for _, p in new] == [_as_rows(p) for _, p in old]


def _captured_lenient(engine: Any, write: Any) -> list[tuple[str, Any]]:
    """:func:`_captured`, ignoring what the database answers (constraint errors)."""
    cursor = _Cursor()
    event.listen(engine, "before_cursor_execute", cursor)
    try:
        with SqlUnitOfWork(engine) as uow:
            if engine.dialect.name == "sqlite":
                uow.trail._c.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            else:
                uow.trail._c.exec_driver_sql("SET CONSTRAINTS ALL DEFERRED")
            write(uow)
    except Exception:  # noqa: S110 - only what reached the driver is compared
        pass
    finally:
        event.remove(engine, "before_cursor_execute", cursor)
    return cursor.seen


# -- a fixed batch, ingested ---------------------------------------------------------------

# Fixed by running this batch through the code before the change (base 0d303cd); the
# body by its SHA-256 (the first one is the canonical text a reader sees).
EXPECTED_ROWS: list[dict[str, Any]] = [
    {
        "event_id": "evt_01JF00000000000000000SAME1",
        "type": "authz.decision",
        "agent_id": AGENT,
        "human_id": None,
        "action": "GET",
        "resource_type": "Endpoint",
        "resource_id": "items",
        "decision_id": "dec_01JF000000000000000000SAME",
        "trace_id": "a" * 32,
        "outcome": "success",
        "body_sha256": "6af1dce118e5bee298de76e1abc795a33cd1abe973774dd29bf25ac5274b7492",
    },
    {
        "event_id": "evt_01JF00000000000000000SAME2",
        "type": "tool.call",
        "agent_id": AGENT,
        "human_id": "hum_01JF00000000000000000000SAME",
        "action": "x" * 128,  # cut to the column; the body holds all 300
        "resource_type": "Tool",
        "resource_id": "é" * 500,
        "decision_id": None,
        "trace_id": "b" * 32,
        "outcome": "failure",
        "body_sha256": "dac583cdb0e571410ac9058c685d84a40a11c8c50c1ce5f2c2178813a72b5c08",
    },
    {
        "event_id": "evt_01JF00000000000000000SAME3",
        "type": "api.request.rejected",
        "agent_id": None,
        "human_id": None,
        "action": "authenticate",
        "resource_type": None,
        "resource_id": None,
        "decision_id": None,
        "trace_id": "c" * 32,
        "outcome": "denied",
        "body_sha256": "58b0edcdb793a7c887e63adc66b85f7c0615d731eb1621e8a21dad3a1208e907",
    },
]
FIRST_BODY = (
    '{"action":"GET","actor":{"id":"agt_01JF0000000000000000SAME01","role":null,"type":"agent"},'
    '"agent_id":"agt_01JF0000000000000000SAME01","decision_id":"dec_01JF000000000000000000SAME",'
    '"delegation_chain":["agt_01JF0000000000000000SAME01"],"details":{"decision":"allow",'
    '"evaluation_us":127.9,"target":{"host":"h"}},"event_id":"evt_01JF00000000000000000SAME1",'
    '"initiating_human":null,"outcome":"success","policy_version":"7","reason":'
    '"permitted by policy p1","resource":{"id":"items","type":"Endpoint"},"risk_score":12.5,'
    '"schema_version":"1","source":"gateway/sameness","time":"2026-11-23T11:00:00.123456Z",'
    '"trace":{"span_id":"1111111111111111","trace_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},'
    '"type":"authz.decision"}'
)
EXPECTED_SQLITE_TIMES = [
    "2026-11-23 11:00:00.123456",
    "2026-11-23 12:00:00.000000",
    "2026-11-23 12:00:00.000001",
]
EXPECTED_LEAVES = [
    "7e3bcf75666289378e7fb266601ae2bd4f1c3350f652796bffcd4333f0bceab2",
    "c57dc0117bb49413eb748f91f3f1af734b259d822c76227e17af886eec167e01",
    "05328852d34ea8738e1a742106b700bbf249d6add7c25b970bddb3bf384bdb28",
]
EXPECTED_CHAINS = [
    "8d2605e3506f2aedc21fab1490b8039b98fd256766c01d81288a4bec178b75d1",
    "e0ae96988dab23eb9d4c263eb3cad2ee9b6d41e0bdd0f12a8e5b6cbaef101bf3",
    "0e5d3e1e761a3dea19e583b17ceb7e69accb0b4063ffdda7cd188d46e29319a0",
]


def _batch() -> list[dict[str, Any]]:
    """The events as a gateway ships them (fixed ids), as the request body decodes."""
    out = []
    for n, e in enumerate(_events(), 1):
        wire = e.to_dict()
        wire["event_id"] = f"evt_01JF00000000000000000SAME{n}"
        out.append(json.loads(json.dumps(wire)))
    return out


_QUERY = (
    "event_id", "type", "body", "agent_id", "human_id", "action", "resource_type",
    "resource_id", "decision_id", "trace_id", "outcome",
)  # fmt: skip


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _stored(container: Container) -> tuple[list[dict[str, Any]], list[Any]]:
    e = t.audit_events
    with container.engine.connect() as conn:
        rows = conn.execute(select(e).order_by(e.c.seq)).mappings().all()
        raw = conn.exec_driver_sql("SELECT time FROM audit_events ORDER BY seq").scalars().all()
    return [dict(r) for r in rows], list(raw)


def test_a_fixed_batch_is_stored_hashed_and_recorded_as_before(
    container: Container, clock: FakeClock
) -> None:
    ctx = CallContext.system("control-plane/sameness")
    batch = _batch()
    result = container.enforcement.ingest(ctx, batch)
    assert (result.accepted, result.duplicates) == (3, 0)
    again = container.enforcement.ingest(ctx, [*batch[1:], batch[1]])  # a retry, repeated
    assert (again.accepted, again.duplicates) == (0, 3)

    rows, raw_times = _stored(container)
    assert [r["type"] for r in rows] == [b["type"] for b in batch] + ["audit.ingested"] * 2
    assert rows[0]["body"] == FIRST_BODY
    assert [
        {**{k: r[k] for k in _QUERY if k != "body"}, "body_sha256": _sha256(r["body"])}
        for r in rows[:3]
    ] == EXPECTED_ROWS
    assert [r["time"] for r in rows[:3]] == [
        datetime.fromisoformat(b["time"].replace("Z", "+00:00")) for b in batch
    ]
    if container.engine.dialect.name == "sqlite":  # the text SQLite holds
        assert raw_times[:3] == EXPECTED_SQLITE_TIMES
    records = [json.loads(r["body"]) for r in rows[3:]]
    assert [r["details"] for r in records] == [
        {"received": 3, "accepted": 3, "duplicates": 0, "sources": [SOURCE],
         "first_event_id": batch[0]["event_id"], "last_event_id": batch[2]["event_id"]},
        {"received": 3, "accepted": 0, "duplicates": 3, "sources": [SOURCE],
         "first_event_id": batch[1]["event_id"], "last_event_id": batch[1]["event_id"]},
    ]  # fmt: skip
    assert [r["resource"] for r in records] == [{"type": "enforcement_point", "id": SOURCE}] * 2

    assert container.audit_trail.integrate_all() == 5
    with SqlUnitOfWork(container.engine, read_only=True) as uow:
        entries = uow.trail.entries(0, 10)
    assert [entry.leaf_hash.hex() for entry, _ in entries[:3]] == EXPECTED_LEAVES
    assert [entry.chain_hash.hex() for entry, _ in entries[:3]] == EXPECTED_CHAINS
    assert container.audit_trail.verify().ok


def test_detection_reads_every_ingested_body_as_its_text_decodes(
    container: Container,
) -> None:
    """The bodies the write path remembers (``canonical_text``) are what detection is
    given back (``decoded_body``): the same values a decoder of the text gives."""
    container.enforcement.ingest(CallContext.system("control-plane/sameness"), _batch())
    container.audit_trail.integrate_all()
    with SqlUnitOfWork(container.engine, read_only=True) as uow:
        entries = uow.trail.entries(0, 10)
    assert len(entries) == 4
    for _, body in entries:
        assert decoded_body(body) == json.loads(body)
