"""The stored assessment history and the assessment API, on a live control plane (real
SQLite file, real uvicorn, real httpx) and through the real CLI: a run is stored with
an audit event whose digest matches the stored report, lists newest first, renders
again as JSON, Markdown and HTML with the trend up to it, and scores the same from its
stored inputs. Every refusal is tried: wrong role, no key, bad or partial answers, a
bad inventory, an unknown id, a bad cursor, a second run while one is going, and an
assessment made with another question bank. Nothing is mocked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from tests.api.conftest import Live
from tests.api.test_assessment_evidence import OPS_RUNNER
from tests.api.test_assessment_html import _deployment as _owned_agent
from typer.testing import CliRunner

from agentiam.adapters.reports.assessment_html import render_html
from agentiam.adapters.reports.assessment_markdown import render_markdown
from agentiam.adapters.storage import tables
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container
from agentiam.cli.main import app as cli
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.trail import canonical
from agentiam.ports import AuditQuery, StoredAssessment
from agentiam.services.context import CallContext

CTX = CallContext.system("test")


def _body(client: httpx.Client, level: int | str = 2) -> dict[str, Any]:
    """Answers to every question the deployment cannot answer, from the API itself."""
    asked = client.get("/v1/assessments/questions")
    assert asked.status_code == 200, asked.text
    data = asked.json()
    assert data["questions"]
    assert set(data["levels"]) == {"0", "1", "2", "3", "4"}
    return {
        "answers": {
            "bank_version": data["bank_version"],
            "answers": {q["id"]: level for q in data["questions"]},
        },
        "systems": [OPS_RUNNER],
    }


def test_the_api_runs_stores_lists_and_renders_assessments(live: Live, admin: httpx.Client) -> None:
    c = live.container
    with live.client(live.key(Role.AUDITOR)) as auditor:
        body = _body(auditor)
        first = admin.post("/v1/assessments", json=body)
        assert first.status_code == 201, first.text
        one = first.json()
        assert first.headers["location"] == f"/v1/assessments/{one['id']}"
        assert one["id"].startswith("asm_")
        assert one["inventory"]["agentic"] is True
        assert one["gaps"] == []  # every question in scope answered or measured

        _owned_agent(c)  # the deployment improves between the two
        second = admin.post("/v1/assessments", json=_body(auditor))
        assert second.status_code == 201, second.text
        two = second.json()
        assert two["overall"] > one["overall"]

        # the history, newest first, paged
        listed = auditor.get("/v1/assessments")
        assert listed.status_code == 200, listed.text
        items = listed.json()["items"]
        assert [i["id"] for i in items] == [two["id"], one["id"]]
        assert items[0]["overall"] == two["overall"]
        assert {d["id"] for d in items[0]["domains"]} == {d["id"] for d in two["domains"]}
        assert [p["ladder"] for p in items[0]["ladders"]] == [p["ladder"] for p in two["ladders"]]
        assert items[0]["requested_by"].startswith("admin_key:")
        page = auditor.get("/v1/assessments", params={"limit": 1}).json()
        assert [i["id"] for i in page["items"]] == [two["id"]]
        older = auditor.get("/v1/assessments", params={"limit": 1, "cursor": page["next_cursor"]})
        assert [i["id"] for i in older.json()["items"]] == [one["id"]]
        assert older.json()["next_cursor"] is None

        # one assessment, as stored
        got = auditor.get(f"/v1/assessments/{one['id']}")
        assert got.status_code == 200
        assert got.json() == one

        # HTML: self-contained, with the trend up to the assessment and no further
        html = auditor.get(f"/v1/assessments/{two['id']}", params={"format": "html"})
        assert html.status_code == 200, html.text
        assert html.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in html.headers["content-security-policy"]
        assert "Trend (2 assessments)" in html.text
        assert "<script" not in html.text.lower()
        earliest = auditor.get(f"/v1/assessments/{one['id']}", params={"format": "html"})
        assert earliest.status_code == 200
        assert 'id="trend"' not in earliest.text
        md = auditor.get(f"/v1/assessments/{two['id']}", params={"format": "markdown"})
        assert md.status_code == 200
        assert md.headers["content-type"].startswith("text/markdown")
        assert md.text.startswith("# AgentIAM maturity assessment")
        assert f"**{two['overall']:.2f} / 4**" in md.text

    # scored again from its stored inputs, an assessment gives the report it stored
    for item in (one, two):
        record = c.assessment.stored(item["id"])
        assert c.assessment.rescore(record).to_dict() == record.report
        assert {"id": item["id"], **(record.report or {})} == item

    # each run is in the audit trail, with the digest of the report it stored
    events = c.audit.find(AuditQuery(limit=10, type="assessment.completed")).items
    assert [e.resource.id for e in events if e.resource] == [one["id"], two["id"]]
    for event, item in zip(events, (one, two), strict=True):
        stored = c.assessment.stored(item["id"]).report
        assert event.details["report_sha256"] == hashlib.sha256(canonical(stored)).hexdigest()
        assert event.details["overall"] == round(item["overall"], 4)
        assert event.actor.type.value == "admin_key"


def test_who_may_run_and_read_assessments(live: Live, admin: httpx.Client) -> None:
    ran = admin.post("/v1/assessments", json={})
    assert ran.status_code == 201, ran.text
    path = f"/v1/assessments/{ran.json()['id']}"
    with live.client() as anonymous:
        for method, url in (("POST", "/v1/assessments"), ("GET", "/v1/assessments"), ("GET", path)):
            assert anonymous.request(method, url, json={}).status_code == 401
    with live.client(live.key(Role.AUDITOR)) as auditor:
        refused = auditor.post("/v1/assessments", json={})
        assert refused.status_code == 403
        assert "assessments:run" in refused.json()["detail"]
        assert auditor.get(path).status_code == 200
    with live.client(live.key(Role.VERIFIER)) as verifier:
        for url in ("/v1/assessments", path, "/v1/assessments/questions"):
            assert verifier.get(url).status_code == 403
        assert verifier.post("/v1/assessments", json={}).status_code == 403
    with live.client(live.key(Role.OPERATOR)) as operator:
        assert operator.post("/v1/assessments", json={}).status_code == 201
    assert len(admin.get("/v1/assessments").json()["items"]) == 2  # refusals stored nothing


def test_bad_or_partial_answers_and_inventories_are_refused_naming_the_member(
    live: Live, admin: httpx.Client
) -> None:
    good = _body(admin)
    answers = good["answers"]["answers"]
    first_id = next(iter(answers))
    partial = {k: v for k, v in answers.items() if k != first_id}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "answers": {**good["answers"], "answers": {**answers, "no.such": 2}}}, "no.such"),
        ({**good, "answers": {**good["answers"], "answers": {**answers, first_id: 7}}}, first_id),
        ({**good, "answers": {**good["answers"], "answers": partial}}, first_id),
        ({**good, "answers": {**good["answers"], "bank_version": "1999.1"}}, "bank_version"),
        ({**good, "answers": {"answers": answers}}, "bank_version"),
        ({**good, "systems": [{**OPS_RUNNER, "holds_credentials": "yes"}]}, "holds_credentials"),
        ({**good, "systems": [OPS_RUNNER, OPS_RUNNER]}, "duplicate id"),
        ({**good, "colour": "blue"}, "colour"),
        ({**good, "complete": "no"}, "complete"),
    ]
    for body, named in cases:
        refused = admin.post("/v1/assessments", json=body)
        assert refused.status_code == 422, (named, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert named in refused.text, (named, refused.text)
        assert "Traceback" not in refused.text
    # a partial document is accepted when the caller says so, and leaves gaps
    allowed = admin.post(
        "/v1/assessments",
        json={**good, "answers": {**good["answers"], "answers": partial}, "complete": False},
    )
    assert allowed.status_code == 201, allowed.text
    assert first_id in allowed.json()["gaps"]
    assert len(admin.get("/v1/assessments").json()["items"]) == 1  # refusals stored nothing


def test_unknown_ids_bad_cursors_and_formats_are_refused(live: Live, admin: httpx.Client) -> None:
    ran = admin.post("/v1/assessments", json={}).json()
    for missing in ("asm_01JAAAAAAAAAAAAAAAAAAAAAAA", "agt_01JAAAAAAAAAAAAAAAAAAAAAAA", "x"):
        assert admin.get(f"/v1/assessments/{missing}").status_code == 404
    assert admin.get("/v1/assessments", params={"cursor": "!!"}).status_code == 400
    alien = admin.get("/v1/responses", params={"limit": 1}).json()  # a cursor of another list
    assert alien["next_cursor"] is None or (
        admin.get("/v1/assessments", params={"cursor": alien["next_cursor"]}).status_code == 400
    )
    bad = admin.get(f"/v1/assessments/{ran['id']}", params={"format": "pdf"})
    assert bad.status_code == 422


def test_a_second_run_while_one_is_going_is_429_and_readers_never_wait(
    live: Live, admin: httpx.Client
) -> None:
    """White-box: the service's run lock is held, as a running assessment holds it."""
    lock = live.container.assessment._running
    assert lock.acquire(blocking=False)
    try:
        busy = admin.post("/v1/assessments", json={})
        assert busy.status_code == 429, busy.text
        assert int(busy.headers["retry-after"]) > 0
        # the questions and the history are reads: they collect nothing and take no lock
        with live.client(live.key(Role.AUDITOR)) as auditor:
            assert auditor.get("/v1/assessments/questions").status_code == 200
            assert auditor.get("/v1/assessments").status_code == 200
    finally:
        lock.release()
    assert admin.post("/v1/assessments", json={}).status_code == 201


def test_reading_the_questions_does_not_verify_the_trail(live: Live, admin: httpx.Client) -> None:
    c = live.container
    before = c.audit.find(AuditQuery(limit=500, type="api.read")).items
    trail = c.assessment._trail  # white-box: count full verifications
    calls: list[int] = []
    original = trail.verify

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    trail.verify = counting  # type: ignore[method-assign]
    try:
        with live.client(live.key(Role.AUDITOR)) as auditor:
            asked = auditor.get("/v1/assessments/questions").json()["questions"]
        assert calls == []
        assert admin.post("/v1/assessments", json={}).status_code == 201
        assert calls == [1]
    finally:
        trail.verify = original  # type: ignore[method-assign]
    # the questions listed are exactly those a run finds unanswered
    run = admin.get("/v1/assessments").json()["items"][0]
    report = admin.get(f"/v1/assessments/{run['id']}").json()
    in_scope = {q["id"] for q in asked if q["in_scope"]}
    assert in_scope == set(report["gaps"])
    assert len(c.audit.find(AuditQuery(limit=500, type="api.read")).items) > len(before)


def test_a_stored_assessment_renders_as_it_did_when_it_was_made(live: Live) -> None:
    c = live.container
    _owned_agent(c)
    assessment_id, original = c.assessment.run_and_save(CTX)
    again = c.assessment.rescore(c.assessment.stored(assessment_id))
    assert render_markdown(again) == render_markdown(original)
    assert render_html(again) == render_html(original)


def test_damaged_stored_records_are_409_or_left_off_the_trend_never_500(
    live: Live, admin: httpx.Client
) -> None:
    c = live.container
    first = admin.post("/v1/assessments", json={}).json()["id"]
    second = admin.post("/v1/assessments", json={}).json()["id"]
    with c.engine.begin() as conn:
        conn.execute(
            update(tables.assessments)
            .where(tables.assessments.c.id == first)
            .values(inputs='{"bank_version": "2025.1"}', summary='{"overall": "high"}')
        )
    damaged = admin.get(f"/v1/assessments/{first}", params={"format": "markdown"})
    assert damaged.status_code == 409, damaged.text
    assert "cannot be read back" in damaged.json()["detail"]
    assert admin.get(f"/v1/assessments/{first}").status_code == 200  # the JSON is intact
    page = admin.get(f"/v1/assessments/{second}", params={"format": "html"})
    assert page.status_code == 200, page.text
    assert 'id="trend"' not in page.text  # the damaged point is left off, not fatal


def test_an_assessment_made_with_another_bank_keeps_its_json_but_is_not_rescored(
    live: Live, admin: httpx.Client
) -> None:
    made = admin.post("/v1/assessments", json={}).json()
    c = live.container
    record = c.assessment.stored(made["id"])
    assert record.report is not None
    assert record.inputs is not None
    old_id = "asm_01J00000000000000000000000"
    with SqlUnitOfWork(c.engine) as uow:
        uow.assessments.add(
            StoredAssessment(
                id=old_id,
                assessed_at=record.assessed_at,
                bank_version="1999.1",
                overall=record.overall,
                requested_by="cli:someone",
                summary={**record.summary, "bank_version": "1999.1"},
                report={**record.report, "bank_version": "1999.1"},
                inputs={**record.inputs, "bank_version": "1999.1"},
            )
        )
        uow.commit()
    assert admin.get(f"/v1/assessments/{old_id}").json()["bank_version"] == "1999.1"
    refused = admin.get(f"/v1/assessments/{old_id}", params={"format": "html"})
    assert refused.status_code == 409
    assert "1999.1" in refused.json()["detail"]
    # it is older than the other, so it is on that one's trend from its summary alone
    trend = admin.get(f"/v1/assessments/{made['id']}", params={"format": "html"})
    assert "Trend (2 assessments)" in trend.text


# -- the CLI --------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def on_db(live: Live, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Container:
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("AGENTIAM_DETECTION_ENABLED", "false")
    return live.container


def test_the_cli_stores_each_run_lists_the_history_and_shows_one(
    on_db: Container, tmp_path: Path
) -> None:
    first = _cli("assess")
    assert first.exit_code == 0, first.output
    assert "stored as asm_" in first.output
    _owned_agent(on_db)
    assert _cli("assess", "--no-save").exit_code == 0  # not stored
    second = tmp_path / "second.html"
    assert _cli("assess", "-o", str(second)).exit_code == 0
    assert "Trend (2 assessments)" in second.read_text(encoding="utf-8")

    listed = _cli("assessments", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert len(rows) == 2
    assert rows[0]["overall"] > rows[1]["overall"]
    assert all(r["by"].startswith("cli:") for r in rows)

    shown = _cli("assessments", "show", rows[1]["id"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["id"] == rows[1]["id"]
    assert round(report["overall"], 2) == rows[1]["overall"]
    page = tmp_path / "again.html"
    again = _cli("assessments", "show", rows[0]["id"], "-o", str(page))
    assert again.exit_code == 0, again.output
    assert "Trend (2 assessments)" in page.read_text(encoding="utf-8")
    md = _cli("assessments", "show", rows[0]["id"], "--format", "markdown")
    assert md.exit_code == 0
    assert md.output.startswith("# AgentIAM maturity assessment")

    unwritable = _cli("assess", "-o", str(tmp_path / "no" / "such" / "dir.html"))
    assert unwritable.exit_code != 0
    assert "cannot write" in unwritable.output
    assert len(json.loads(_cli("assessments", "list", "--json").output)) == 2  # not stored

    missing = _cli("assessments", "show", "asm_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert missing.exit_code != 0
    assert "no assessment" in missing.output
