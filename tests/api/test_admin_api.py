"""The admin API over real HTTP: authentication, roles, audit, problem details, limits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.api.conftest import Live

from agentiam.adapters.storage import tables as t
from agentiam.core.access.admin_keys import Role

PROBLEM = "application/problem+json"


def make_human(client: httpx.Client, email: str = "ada@example.com") -> dict[str, Any]:
    r = client.post("/v1/humans", json={"display_name": "Ada Lovelace", "email": email})
    assert r.status_code == 201, r.text
    return dict(r.json())


def make_agent(client: httpx.Client, owner: str, name: str = "invoice-bot", **kw: Any) -> Any:
    body = {"name": name, "owners": [owner], "purpose": "pay", "environment": "production", **kw}
    r = client.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def audit_rows(live: Live) -> list[dict[str, Any]]:
    with live.container.engine.connect() as conn:
        return [json.loads(r.body) for r in conn.execute(select(t.audit_events.c.body))]


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = dict(r.json())
    assert body["status"] == status
    assert body["title"]
    assert body["type"]
    assert "Traceback" not in r.text
    return body


# -- authentication and roles --------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
        "Bearer aiam_abcdefgh_" + "A" * 43,  # well-formed, unknown
        "Bearer not-a-key",
        "Bearer " + "x" * 1000,
    ],
)
def test_unauthenticated_calls_are_refused(live: Live, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/v1/agents"), ("POST", "/v1/humans"), ("GET", "/metrics")]:
        r = httpx.request(method, live.url + path, headers=headers, json={})
        body = assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert body["type"].endswith("authentication-required")


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/v1/humans", b"\x00{not json"),
        ("POST", "/v1/agents", b"[" * 10_000),
        ("PATCH", "/v1/humans/hum_x", b'{"email": 5}'),
        ("POST", "/v1/agents/agt_x/keys", b"x" * 200_000),
        ("GET", "/v1/no-such-route", b""),
    ],
)
def test_anonymous_callers_never_reach_parsing_or_routing(
    live: Live, method: str, path: str, content: bytes
) -> None:
    """Authentication comes first: malformed, deep, oversized or misrouted requests
    without a key all get the same 401, so nothing about the API leaks to them."""
    r = httpx.request(
        method, live.url + path, content=content, headers={"content-type": "application/json"}
    )
    assert_problem(r, 401)
    rejected = [e for e in audit_rows(live) if e["type"] == "api.request.rejected"]
    assert rejected[-1]["actor"]["type"] == "anonymous"
    assert rejected[-1]["outcome"] == "denied"


def test_authentication_fails_closed_when_the_key_store_is_broken(live: Live) -> None:
    with live.container.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE admin_keys RENAME TO admin_keys_gone")
    with live.client(live.admin) as c:
        body = assert_problem(c.get("/v1/agents"), 503)
    assert "refused" in body["detail"]


def test_openapi_declares_the_bearer_scheme(live: Live) -> None:
    spec = httpx.get(live.url + "/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["adminKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, ops in spec["paths"].items():
        for op in ops.values():
            protected = path not in ("/healthz", "/readyz")
            assert ({"adminKey": []} in op.get("security", [])) is protected, path
            if protected:
                assert "401" in op["responses"], path


def test_wrong_secret_for_a_real_prefix_is_refused(live: Live) -> None:
    forged = live.admin[:-4] + ("AAAA" if not live.admin.endswith("AAAA") else "BBBB")
    with live.client(forged) as c:
        assert_problem(c.get("/v1/agents"), 401)


def test_revoked_key_stops_working_at_once(live: Live, admin: httpx.Client) -> None:
    key = live.key(Role.OPERATOR)
    with live.client(key) as c:
        assert c.get("/v1/agents").status_code == 200
        listed = admin.get("/v1/admin-keys").json()["items"]
        target = next(k for k in listed if key.startswith(f"aiam_{k['prefix']}_"))
        assert admin.post(f"/v1/admin-keys/{target['id']}/revoke").status_code == 200
        assert_problem(c.get("/v1/agents"), 401)


def test_auditor_reads_but_cannot_write(live: Live, admin: httpx.Client) -> None:
    owner = make_human(admin)
    with live.client(live.key(Role.AUDITOR)) as auditor:
        assert auditor.get("/v1/agents").status_code == 200
        assert auditor.get("/v1/audit/events").status_code == 200
        assert auditor.get("/metrics").status_code == 200
        before = len(audit_rows(live))
        r = auditor.post(
            "/v1/agents",
            json={"name": "x", "owners": [owner["id"]], "purpose": "p", "environment": "dev"},
        )
        assert_problem(r, 403)
        assert_problem(
            auditor.post("/v1/humans", json={"display_name": "x", "email": "x@y.io"}), 403
        )
    denied = [e for e in audit_rows(live)[before:] if e["type"] == "api.request.rejected"]
    assert denied
    assert all(e["outcome"] == "denied" for e in denied)
    assert all(e["actor"]["role"] == "auditor" for e in denied)
    assert admin.get("/v1/agents").json()["items"] == []


def test_operator_cannot_manage_admin_keys(live: Live) -> None:
    with live.client(live.key(Role.OPERATOR)) as op:
        assert_problem(op.post("/v1/admin-keys", json={"name": "x", "role": "admin"}), 403)
        assert op.get("/v1/admin-keys").status_code == 200


@pytest.mark.parametrize(
    "expires_at", ["2030-01-01T00:00:00", "2000-01-01T00:00:00Z", "tomorrow", 1700000000]
)
def test_admin_key_expiry_must_be_a_future_aware_time(admin: httpx.Client, expires_at: Any) -> None:
    r = admin.post(
        "/v1/admin-keys", json={"name": "x", "role": "auditor", "expires_at": expires_at}
    )
    assert_problem(r, 422)


def test_admin_key_secret_is_shown_once_and_never_stored(live: Live, admin: httpx.Client) -> None:
    r = admin.post("/v1/admin-keys", json={"name": "ci", "role": "auditor"})
    assert r.status_code == 201
    secret = r.json()["secret"]
    assert secret.startswith("aiam_")
    listed = admin.get("/v1/admin-keys").text
    assert secret not in listed
    assert "secret" not in listed
    with live.container.engine.connect() as conn:
        dump = " ".join(
            str(row) for tbl in t.metadata.sorted_tables for row in conn.execute(select(tbl))
        )
    assert secret not in dump
    assert live.admin not in dump
    assert secret.split("_", 2)[2] not in dump  # the random part may itself contain "_"


# -- audit -----------------------------------------------------------------------------------


def test_every_call_is_audited_with_actor_and_trace(live: Live, admin: httpx.Client) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    owner = make_human(admin)
    a = make_agent(admin, owner["id"])
    r = admin.get(
        f"/v1/agents/{a['id']}", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    assert r.status_code == 200
    events = audit_rows(live)
    prefix = live.admin.split("_")[1]
    read = [e for e in events if e["type"] == "api.read" and e["action"] == "agents.get"]
    assert len(read) == 1
    assert read[0]["trace"]["trace_id"] == trace_id
    assert read[0]["actor"] == {"type": "admin_key", "id": prefix, "role": "admin"}
    assert read[0]["agent_id"] == a["id"]
    created = [e for e in events if e["type"] == "agent.created"]
    assert created[0]["actor"]["id"] == prefix


def test_read_fails_closed_when_the_audit_store_is_unwritable(
    live: Live, admin: httpx.Client
) -> None:
    make_human(admin)
    with live.container.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER block_audit BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    r = admin.get("/v1/humans")
    body = assert_problem(r, 503)
    assert "audit" in body["detail"]
    assert "ada@example.com" not in r.text
    r = admin.post("/v1/humans", json={"display_name": "Grace", "email": "grace@example.com"})
    assert_problem(r, 503)
    assert r.status_code == 503
    assert "grace" not in r.text.lower()
    with live.container.engine.connect() as conn:
        emails = [row.email for row in conn.execute(select(t.humans.c.email))]
    assert emails == ["ada@example.com"]


# -- resources -------------------------------------------------------------------------------


def test_agent_lifecycle_over_http(admin: httpx.Client) -> None:
    owner = make_human(admin)
    a = make_agent(admin, owner["id"], labels={"team": "payments"})
    assert a["status"] == "pending"
    assert admin.post(f"/v1/agents/{a['id']}/activate").json()["status"] == "active"
    body = assert_problem(admin.post(f"/v1/agents/{a['id']}/resume", json={"reason": "x"}), 409)
    assert body["type"].endswith("invalid-transition")
    assert body["hint"]
    assert_problem(admin.post(f"/v1/agents/{a['id']}/suspend", json={}), 422)
    r = admin.post(f"/v1/agents/{a['id']}/suspend", json={"reason": "incident 7"})
    assert r.json()["status"] == "suspended"
    history = admin.get(f"/v1/agents/{a['id']}/transitions").json()["items"]
    assert [h["action"] for h in history] == ["activate", "suspend"]
    assert history[1]["reason"] == "incident 7"
    assert history[1]["actor"].startswith("admin_key:")
    r = admin.patch(f"/v1/agents/{a['id']}", json={"labels": {"team": "risk"}})
    assert r.json()["labels"] == {"team": "risk"}
    assert_problem(admin.patch(f"/v1/agents/{a['id']}", json={"name": "renamed"}), 422)


def test_ephemeral_child_over_http(admin: httpx.Client) -> None:
    owner = make_human(admin)
    parent = make_agent(admin, owner["id"], name="planner", activate=True)
    r = admin.post(
        "/v1/agents",
        json={
            "name": "worker-1",
            "purpose": "one task",
            "environment": "production",
            "parent_id": parent["id"],
            "ttl_seconds": 600,
            "activate": True,
        },
    )
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["ephemeral"]
    assert child["owners"] == [owner["id"]]
    assert child["expires_at"]
    too_long = {"name": "w2", "purpose": "p", "environment": "production"}
    too_long.update(parent_id=parent["id"], ttl_seconds=86401)
    assert_problem(admin.post("/v1/agents", json=too_long), 422)
    admin.post(f"/v1/agents/{parent['id']}/decommission", json={"reason": "done"})
    assert admin.get(f"/v1/agents/{child['id']}").json()["status"] == "decommissioned"


def test_keys_over_http(admin: httpx.Client) -> None:
    from joserfc.jwk import ECKey

    owner = make_human(admin)
    a = make_agent(admin, owner["id"])
    pair = ECKey.generate_key("P-256")
    r = admin.post(
        f"/v1/agents/{a['id']}/keys", json={"jwk": {**pair.as_dict(private=False), "alg": "ES256"}}
    )
    assert r.status_code == 201, r.text
    key = r.json()
    assert "d" not in key["jwk"]
    private = {**pair.as_dict(private=True), "alg": "ES256", "kid": "other"}
    body = assert_problem(admin.post(f"/v1/agents/{a['id']}/keys", json={"jwk": private}), 422)
    assert private["d"] not in json.dumps(body)
    r = admin.post(f"/v1/agents/{a['id']}/keys/{key['id']}/retire", json={"reason": "rotate"})
    assert r.json()["status"] == "retired"


def test_lists_filter_and_page_with_cursors(admin: httpx.Client) -> None:
    ada, grace = make_human(admin), make_human(admin, "grace@example.com")
    for i in range(5):
        make_agent(
            admin,
            (ada if i < 2 else grace)["id"],
            name=f"bot-{i}",
            labels={"team": "Payments" if i % 2 else "risk"},
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = admin.get("/v1/agents", params=params).json()
        seen += [a["name"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"bot-{i}" for i in range(5)]
    assert len(seen) == 5

    def names(**params: Any) -> set[str]:
        return {a["name"] for a in admin.get("/v1/agents", params=params).json()["items"]}

    assert names(label="team=payments") == {"bot-1", "bot-3"}
    assert names(owner=ada["id"]) == {"bot-0", "bot-1"}
    assert names(owner=ada["id"], label="team=risk") == {"bot-0"}
    sponsored = admin.patch(
        "/v1/agents/" + admin.get("/v1/agents", params={"limit": 1}).json()["items"][0]["id"],
        json={"sponsors": [grace["id"]]},
    ).json()
    assert sponsored["sponsors"] == [grace["id"]]
    assert names(sponsor=grace["id"]) == {sponsored["name"]}
    assert names(status="pending", environment="PRODUCTION") == {f"bot-{i}" for i in range(5)}
    assert_problem(admin.get("/v1/agents", params={"cursor": "garbage!"}), 400)
    human_cursor = admin.get("/v1/humans", params={"limit": 1}).json()["next_cursor"]
    assert_problem(admin.get("/v1/agents", params={"cursor": human_cursor}), 400)
    assert_problem(admin.get("/v1/agents", params={"status": "zombie"}), 422)


# -- bad input -------------------------------------------------------------------------------


def test_oversized_body_is_refused_and_writes_nothing(live: Live, admin: httpx.Client) -> None:
    before = len(audit_rows(live))
    big = {"display_name": "x" * 70_000, "email": "a@b.io"}
    assert_problem(admin.post("/v1/humans", json=big), 413)

    def chunked() -> Any:  # no Content-Length: the server must count as it reads
        yield b'{"display_name": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'", "email": "a@b.io"}'

    r = admin.post("/v1/humans", content=chunked(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413)
    assert len(audit_rows(live)) == before


def test_deep_json_is_refused_before_parsing(admin: httpx.Client) -> None:
    deep = '{"display_name": "x", "email": "a@b.io", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    body = assert_problem(
        admin.post("/v1/humans", content=deep, headers={"content-type": "application/json"}), 400
    )
    assert "nesting" in body["detail"]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b'{"display_name": "Ada", "email": "a@b.io", "admin": true}', 422),
        (b'{"display_name": "Ada\\u200b", "email": "a@b.io"}', 422),
        (b'{"display_name": "", "email": "a@b.io"}', 422),
        (b'{"display_name": "Ada", "email": "\\u0000@b.io"}', 422),
        (b"[]", 422),
        (b"\xff\xfe", 400),
    ],
)
def test_malformed_input_gets_a_problem_and_writes_nothing(
    live: Live, admin: httpx.Client, content: bytes, status: int
) -> None:
    r = admin.post("/v1/humans", content=content, headers={"content-type": "application/json"})
    body = assert_problem(r, status)
    assert "\\u200b" not in json.dumps(body.get("errors", []))
    assert admin.get("/v1/humans").json()["items"] == []


def test_unknown_ids_are_404_problems(admin: httpx.Client) -> None:
    assert_problem(admin.get("/v1/agents/agt_nothing"), 404)
    assert_problem(admin.get("/v1/humans/hum_nothing"), 404)
    assert_problem(admin.post("/v1/agents/agt_nothing/suspend", json={"reason": "x"}), 404)
    assert_problem(admin.get("/v1/no-such-route"), 404)


# -- system endpoints ------------------------------------------------------------------------


def test_health_readiness_and_metrics(live: Live, admin: httpx.Client) -> None:
    assert httpx.get(live.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(live.url + "/readyz").json() == {"status": "ready"}
    admin.get("/v1/agents")
    metrics = admin.get("/metrics")
    assert metrics.status_code == 200
    assert 'agentiam_http_requests_total{method="GET",route="/v1/agents",status="200"}' in (
        metrics.text
    )


def test_readiness_fails_when_schema_is_behind(live: Live) -> None:
    with live.container.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'old'")
    body = assert_problem(httpx.get(live.url + "/readyz"), 503)
    assert "schema" in body["detail"]


def test_openapi_and_offline_docs(live: Live) -> None:
    spec = httpx.get(live.url + "/openapi.json").json()
    assert "/v1/agents" in spec["paths"]
    assert "/v1/agents/{agent_id}/suspend" in spec["paths"]
    page = httpx.get(live.url + "/docs")
    assert page.status_code == 200
    assert "/docs/static/swagger-ui-bundle.js" in page.text
    for marker in ("cdn.", "unpkg", "jsdelivr"):
        assert marker not in page.text
    assert httpx.get(live.url + "/docs/static/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(live.url + "/healthz").headers["x-content-type-options"] == "nosniff"
