"""The policy API over real HTTP: the set's versions and rollback, validation on write,
decisions with reasons, dry-run, the catalog, import/export and the analyzer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.api.conftest import Live

from agentiam.core.access.admin_keys import Role

EXTENSION = {
    "commonTypes": {
        "ToolArguments": {
            "type": "Record",
            "attributes": {"amount": {"type": "Long"}, "to": {"type": "String"}},
        }
    }
}

PAY = """permit (principal in AgentGroup::"team=payments", action == Action::"invoke_tool",
  resource in McpServer::"bank")
when { context.args has amount && context.args.amount <= 1000 };"""


def _human(admin: httpx.Client) -> str:
    r = admin.post("/v1/humans", json={"display_name": "Ann", "email": "ann@example.com"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _agent(admin: httpx.Client, owner: str, name: str, **extra: Any) -> str:
    body = {
        "name": name,
        "owners": [owner],
        "purpose": "moves money",
        "environment": "production",
        "labels": {"team": "payments"},
        "activate": True,
        **extra,
    }
    r = admin.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
def world(admin: httpx.Client) -> dict[str, str]:
    owner = _human(admin)
    agent = _agent(admin, owner, "pay-bot")
    r = admin.put("/v1/policy-schema/extension", json={"extension": EXTENSION})
    assert r.status_code == 200, r.text
    for path, body in (
        ("/v1/resources/McpServer/bank", {"attributes": {"name": "bank"}}),
        (
            "/v1/resources/Tool/transfer",
            {"parents": [{"type": "McpServer", "id": "bank"}], "attributes": {}},
        ),
        (
            "/v1/resources/Tool/close_account",
            {
                "parents": [{"type": "McpServer", "id": "bank"}],
                "attributes": {"destructive": True, "classification": "restricted"},
            },
        ),
    ):
        r = admin.put(path, json=body)
        assert r.status_code == 200, r.text
    return {"owner": owner, "agent": agent}


def _decide(client: httpx.Client, agent: str, tool: str, **context: Any) -> dict[str, Any]:
    r = client.post(
        "/v1/authorize",
        json={
            "principal": {"type": "Agent", "id": agent},
            "action": "invoke_tool",
            "resource": {"type": "Tool", "id": tool},
            "context": context,
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_default_deny_then_policy_allows_with_reasons(
    admin: httpx.Client, world: dict[str, str]
) -> None:
    d = _decide(admin, world["agent"], "transfer", args={"amount": 10})
    assert d["decision"] == "deny"
    assert d["reasons"] == ["no policy permits this request (default deny)"]

    r = admin.put("/v1/policies/payments-transfer", json={"text": PAY})
    assert r.status_code == 200, r.text
    version = r.json()["version"]["version"]

    d = _decide(admin, world["agent"], "transfer", args={"amount": 10})
    assert d["decision"] == "allow"
    assert d["policies"] == ["payments-transfer"]
    assert d["policy_version"] == version
    assert d["decision_id"].startswith("dec_")
    assert d["evaluation_us"] > 0
    assert _decide(admin, world["agent"], "transfer", args={"amount": 5000})["decision"] == "deny"

    forbid = (
        "forbid (principal, action, resource is Tool) "
        "when { resource has destructive && resource.destructive };"
    )
    assert admin.put("/v1/policies/no-destructive", json={"text": forbid}).status_code == 200
    d = _decide(admin, world["agent"], "close_account", args={"amount": 1})
    assert d["decision"] == "deny"
    assert d["reasons"] == ["forbidden by policy no-destructive"]


def test_every_decision_is_audited(live: Live, admin: httpx.Client, world: dict[str, str]) -> None:
    args = {"amount": 987654, "to": "acct-7734", "api_key": "sk-live-4242"}
    d = _decide(admin, world["agent"], "transfer", args=args)
    events = admin.get("/v1/audit/events", params={"type": "authz.decision"}).json()["items"]
    [event] = [e for e in events if e["decision_id"] == d["decision_id"]]
    assert event["agent_id"] == world["agent"]
    assert event["outcome"] == "denied"
    assert event["resource"] == {"type": "Tool", "id": "transfer"}
    assert event["details"]["argument_names"] == ["amount", "api_key", "to"]
    # Without a redaction file that asks for them, no value is recorded.
    assert event["details"]["arguments"] == {}
    for value in ("987654", "acct-7734", "sk-live-4242"):
        assert value not in str(event)


def test_invalid_policy_is_422_with_diagnostics_and_not_stored(
    admin: httpx.Client, world: dict[str, str]
) -> None:
    before = admin.get("/v1/policies").json()["version"]
    for text in (
        "permit (principal, action, resource) when { context.nope == 1 };",  # schema
        'permit (principal, action == Action::"fly", resource);',  # unknown action
        "permit (principal is Robot, action, resource);",  # unknown entity type
        "permit (principal, action, resource",  # syntax
        "permit (principal, action, resource) when { " + "(" * 200 + "true" + ")" * 200 + " };",
    ):
        r = admin.put("/v1/policies/bad", json={"text": text})
        assert r.status_code == 422, (text, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = admin.put(
        "/v1/policies/bad",
        json={"text": "permit (principal, action, resource) when { context.nope == 1 };"},
    )
    assert r.json()["errors"][0]["policy_id"] == "bad"
    assert admin.get("/v1/policies").json()["version"] == before
    assert admin.get("/v1/policies/bad").status_code == 404


def test_versions_and_rollback(admin: httpx.Client, world: dict[str, str]) -> None:
    v1 = admin.put("/v1/policies/payments-transfer", json={"text": PAY}).json()["version"]
    assert _decide(admin, world["agent"], "transfer", args={"amount": 10})["decision"] == "allow"
    r = admin.delete("/v1/policies/payments-transfer")
    assert r.status_code == 200
    assert _decide(admin, world["agent"], "transfer", args={"amount": 10})["decision"] == "deny"

    r = admin.post(f"/v1/policy-versions/{v1['version']}/rollback", json={"comment": "oops"})
    assert r.status_code == 200, r.text
    assert r.json()["put"] == ["payments-transfer"]
    assert _decide(admin, world["agent"], "transfer", args={"amount": 10})["decision"] == "allow"
    history = admin.get("/v1/policy-versions").json()["items"]
    assert [v["change"] for v in history[:3]] == ["rollback", "delete", "put"]
    # the old version's set is still readable
    old = admin.get("/v1/policies", params={"version": v1["version"] - 1}).json()
    assert old["policies"] == []


def test_expected_version_refuses_a_lost_update(admin: httpx.Client, world: dict[str, str]) -> None:
    head = admin.get("/v1/policies").json()["version"]
    assert (
        admin.put("/v1/policies/a", json={"text": PAY, "expected_version": head}).status_code == 200
    )
    r = admin.put("/v1/policies/b", json={"text": PAY, "expected_version": head})
    assert r.status_code == 409


def test_dry_run_reports_would_deny_without_changing_the_outcome(
    admin: httpx.Client, world: dict[str, str]
) -> None:
    admin.put("/v1/policies/payments-transfer", json={"text": PAY})
    r = admin.put(
        "/v1/policies/risk-gate",
        json={
            "template": "approval_above_risk",
            "parameters": {"threshold": 50},
            "mode": "dry_run",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["template"] == "approval_above_risk"
    d = _decide(admin, world["agent"], "transfer", args={"amount": 10}, risk_score=80)
    assert d["decision"] == "allow"
    assert d["dry_run"] == {"decision": "deny", "policies": ["risk-gate"], "would_change": True}
    events = admin.get("/v1/audit/events", params={"type": "authz.decision"}).json()["items"]
    [event] = [e for e in events if e["decision_id"] == d["decision_id"]]
    assert event["outcome"] == "success"  # the decision stands
    assert event["details"]["dry_run_outcome"] == "would deny"


def test_export_import_round_trip(admin: httpx.Client, world: dict[str, str]) -> None:
    admin.put("/v1/policies/payments-transfer", json={"text": PAY, "description": 'pay "x"'})
    admin.put(
        "/v1/policies/hours",
        json={"template": "business_hours", "parameters": {}, "mode": "dry_run"},
    )
    exported = admin.get("/v1/policies/export")
    assert exported.status_code == 200
    text = exported.text
    assert '@id("hours")' in text
    assert '@mode("dry_run")' in text
    before = admin.get("/v1/policies").json()["policies"]
    admin.delete("/v1/policies/hours")
    r = admin.post(
        "/v1/policies/import",
        content=text.encode(),
        headers={"content-type": "text/plain"},
        params={"replace": "true"},
    )
    assert r.status_code == 200, r.text
    after = admin.get("/v1/policies").json()["policies"]
    assert [(p["id"], p["mode"], p["description"], p["text"]) for p in after] == [
        (p["id"], p["mode"], p["description"], p["text"]) for p in before
    ]


def test_import_without_ids_must_replace(admin: httpx.Client, world: dict[str, str]) -> None:
    r = admin.post("/v1/policies/import", json={"text": PAY})
    assert r.status_code == 422
    r = admin.post("/v1/policies/import", json={"text": PAY, "replace": True})
    assert r.status_code == 200
    assert r.json()["put"] == ["policy1"]


def test_batch(admin: httpx.Client, world: dict[str, str]) -> None:
    admin.put("/v1/policies/payments-transfer", json={"text": PAY})
    req = {
        "principal": {"type": "Agent", "id": world["agent"]},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": "transfer"},
    }
    r = admin.post(
        "/v1/authorize/batch",
        json={"requests": [{**req, "context": {"args": {"amount": a}}} for a in (1, 2000)]},
    )
    assert r.status_code == 200, r.text
    assert [d["decision"] for d in r.json()["decisions"]] == ["allow", "deny"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"principal": {"type": "Robot", "id": "r"}}, 422),  # unknown principal type
        ({"resource": {"type": "Spaceship", "id": "x"}}, 422),  # unknown resource type
        ({"action": "fly"}, 422),
        ({"action": "GET"}, 422),  # does not apply to a Tool
        ({"context": {"time": {"hour": 3}}}, 422),  # server-owned
        ({"context": {"args": {"amount": "lots"}}}, 422),
        ({"context": {"risk_score": 101}}, 422),
        ({"context": {"args": {"to": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}}}}}, 422),
        ({"extra": 1}, 422),
    ],
)
def test_bad_authorization_requests_are_4xx(
    admin: httpx.Client, world: dict[str, str], body: dict[str, Any], status: int
) -> None:
    req: dict[str, Any] = {
        "principal": {"type": "Agent", "id": world["agent"]},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": "transfer"},
        **body,
    }
    r = admin.post("/v1/authorize", json=req)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    "context",
    [
        '{"args": {"amount": NaN, "to": "x"}}',
        '{"args": {"to": "x", "extra": Infinity}}',  # an argument policy would ignore
        '{"args": {"to": "x", "extra": [-Infinity]}}',
    ],
)
def test_nan_and_infinity_are_not_json_and_are_refused(
    admin: httpx.Client, world: dict[str, str], context: str
) -> None:
    """RFC 8259 section 6 has no NaN or Infinity, yet Python's decoder accepts them: a
    body holding one is refused as a whole (400), never decided. Before, an argument
    the schema does not declare was decided on (and named in ``ignored_arguments``)."""
    agent = world["agent"]
    body = (
        f'{{"principal": {{"type": "Agent", "id": "{agent}"}}, "action": "invoke_tool", '
        f'"resource": {{"type": "Tool", "id": "transfer"}}, "context": {context}}}'
    )
    r = admin.post(
        "/v1/authorize", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "NaN and Infinity are not numbers" in r.json()["detail"]
    # the same words inside a string are data
    fine = body.replace(context, '{"args": {"to": "NaN Infinity", "amount": 5}}')
    r = admin.post(
        "/v1/authorize", content=fine.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text


def test_nan_is_refused_on_every_json_endpoint(admin: httpx.Client) -> None:
    r = admin.post(
        "/v1/humans",
        content=b'{"display_name": "Ann", "email": "nan@example.com", "weight": NaN}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert "NaN" in r.json()["detail"]


def test_deeply_nested_context_and_huge_bodies(admin: httpx.Client, world: dict[str, str]) -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    r = admin.post(
        "/v1/authorize",
        json={
            "principal": {"type": "Agent", "id": world["agent"]},
            "action": "invoke_tool",
            "resource": {"type": "Tool", "id": "transfer"},
            "context": {"args": deep},
        },
    )
    assert r.status_code == 400
    huge = "permit (principal, action, resource);\n" * 300_000  # > 8 MiB
    r = admin.post(
        "/v1/policies/import", content=huge.encode(), headers={"content-type": "text/plain"}
    )
    assert r.status_code == 413


def test_suspended_agent_is_denied_whatever_the_policy(
    live: Live, admin: httpx.Client, world: dict[str, str]
) -> None:
    admin.put("/v1/policies/all", json={"text": "permit (principal, action, resource);"})
    assert _decide(admin, world["agent"], "transfer")["decision"] == "allow"
    r = admin.post(f"/v1/agents/{world['agent']}/suspend", json={"reason": "incident"})
    assert r.status_code == 200, r.text
    live.container.decisions.refresh()  # the poll would do this within policy_refresh_seconds
    d = _decide(admin, world["agent"], "transfer")
    assert d["decision"] == "deny"
    assert d["reasons"] == ["the agent is suspended"]


def test_roles(live: Live, world: dict[str, str]) -> None:
    with live.client(live.key(Role.AUDITOR)) as auditor:
        assert auditor.get("/v1/policies").status_code == 200
        assert auditor.put("/v1/policies/x", json={"text": PAY}).status_code == 403
        assert auditor.post("/v1/authorize", json={}).status_code in (403, 422)
    with live.client(live.key(Role.VERIFIER)) as verifier:
        assert verifier.get("/v1/policies").status_code == 403
        assert _decide(verifier, world["agent"], "transfer")["decision"] == "deny"
    with httpx.Client(base_url=live.url) as anonymous:
        assert anonymous.post("/v1/authorize", json={}).status_code == 401


def test_analysis(admin: httpx.Client, world: dict[str, str]) -> None:
    admin.put("/v1/policies/payments-transfer", json={"text": PAY})
    admin.put(
        "/v1/policies/close",
        json={
            "text": f'permit (principal == Agent::"{world["agent"]}", '
            'action == Action::"invoke_tool", resource == Tool::"close_account");'
        },
    )
    _decide(admin, world["agent"], "transfer", args={"amount": 10})
    perms = admin.get(f"/v1/agents/{world['agent']}/permissions").json()["permissions"]
    concrete = {(p["resource"]["id"], p["status"]) for p in perms if p["resource"]}
    assert concrete == {("transfer", "conditional"), ("close_account", "allowed")}
    blast = admin.get(f"/v1/agents/{world['agent']}/blast-radius").json()
    assert blast["level"] == "critical"
    assert any("destructive" in f["message"] for f in blast["findings"])
    unused = admin.get(f"/v1/agents/{world['agent']}/unused-permissions", params={"days": 30})
    assert unused.status_code == 200, unused.text
    report = unused.json()
    assert [u["resource"]["id"] for u in report["used"]] == ["transfer"]
    assert {p["resource"]["id"] for p in report["unused"] if p["resource"]} == {"close_account"}
    assert "close" in report["unused_policies"]
    assert 'resource == Tool::"transfer"' in report["proposal"]["cedar"]
    assert "context.args.amount <= 1000" in report["proposal"]["cedar"]
    assert "close_account" not in report["proposal"]["cedar"]


def test_decisions_are_counted_in_metrics(admin: httpx.Client, world: dict[str, str]) -> None:
    admin.put("/v1/policies/payments-transfer", json={"text": PAY})
    _decide(admin, world["agent"], "transfer", args={"amount": 10})
    _decide(admin, world["agent"], "transfer", args={"amount": 99999})
    text = admin.get("/metrics").text
    assert 'agentiam_policy_decisions_total{decision="allow"} 1.0' in text
    assert 'agentiam_policy_decisions_total{decision="deny"} 1.0' in text
    assert "agentiam_policy_evaluation_seconds_count 2.0" in text
    version = admin.get("/v1/policies").json()["version"]
    assert f"agentiam_policy_version {float(version)}" in text
