"""``POST /v1/authorize`` (and its batch) for a call an enforcement point placed and
attributed itself (``resource_parents``, ``resource_attributes``), over real HTTP:
the decision uses them, the catalog's attributes still win, the schema's limits are
422, and the ``authz.decision`` event records them (and only when they were set)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agentiam.core.policy.entities import MAX_DERIVED_ATTRIBUTES, MAX_PARENTS

IN_BANK = """permit (principal, action == Action::"invoke_tool", resource in McpServer::"bank");"""
DESTRUCTIVE_FORBID = """forbid (principal, action, resource is Tool)
when { resource has destructive && resource.destructive };"""


@pytest.fixture
def agent(admin: httpx.Client) -> str:
    r = admin.post("/v1/humans", json={"display_name": "Ann", "email": "ann@example.com"})
    assert r.status_code == 201, r.text
    body = {
        "name": "placed-bot",
        "owners": [r.json()["id"]],
        "purpose": "calls tools",
        "environment": "production",
        "activate": True,
    }
    r = admin.post("/v1/agents", json=body)
    assert r.status_code == 201, r.text
    agent_id = str(r.json()["id"])
    for name, text in (("in-bank", IN_BANK), ("no-destructive", DESTRUCTIVE_FORBID)):
        r = admin.put(f"/v1/policies/{name}", json={"text": text})
        assert r.status_code == 200, r.text
    r = admin.put("/v1/resources/McpServer/bank", json={"attributes": {"name": "bank"}})
    assert r.status_code == 200, r.text
    return agent_id


def _request(agent: str, tool: str, **placed: Any) -> dict[str, Any]:
    return {
        "principal": {"type": "Agent", "id": agent},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": tool},
        **placed,
    }


def _decide(admin: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = admin.post("/v1/authorize", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _event(admin: httpx.Client, decision_id: str) -> dict[str, Any]:
    r = admin.get("/v1/audit/events", params={"type": "authz.decision", "limit": 200})
    assert r.status_code == 200, r.text
    [event] = [e for e in r.json()["items"] if e["decision_id"] == decision_id]
    return dict(event)


BANK = [{"type": "McpServer", "id": "bank"}]


def test_a_placed_tool_is_decided_in_its_server(admin: httpx.Client, agent: str) -> None:
    # not in the catalog: without its placement no policy reaches it
    assert _decide(admin, _request(agent, "bank.pay"))["decision"] == "deny"
    d = _decide(admin, _request(agent, "bank.pay", resource_parents=BANK))
    assert d["decision"] == "allow"
    assert d["policies"] == ["in-bank"]
    event = _event(admin, d["decision_id"])
    assert event["details"]["resource_parents"] == BANK
    assert "resource_attributes" not in event["details"]


def test_derived_attributes_are_decided_with(admin: httpx.Client, agent: str) -> None:
    placed = {"resource_parents": BANK}
    harmless = _request(agent, "bank.pay", **placed, resource_attributes={"destructive": False})
    assert _decide(admin, harmless)["decision"] == "allow"
    body = _request(agent, "bank.pay", **placed, resource_attributes={"destructive": True})
    d = _decide(admin, body)
    assert d["decision"] == "deny"
    assert d["reasons"] == ["forbidden by policy no-destructive"]
    event = _event(admin, d["decision_id"])
    assert event["details"]["resource_attributes"] == {"destructive": True}


def test_the_catalog_wins_over_a_derived_attribute(admin: httpx.Client, agent: str) -> None:
    """The attack: an enforcement point (or whoever holds its key) says a catalogued
    destructive tool is not destructive. The catalog's value decides."""
    r = admin.put(
        "/v1/resources/Tool/bank.close",
        json={"parents": BANK, "attributes": {"destructive": True}},
    )
    assert r.status_code == 200, r.text
    body = _request(agent, "bank.close", resource_attributes={"destructive": False})
    d = _decide(admin, body)
    assert d["decision"] == "deny"
    assert d["reasons"] == ["forbidden by policy no-destructive"]


def test_the_batch_takes_them_too(admin: httpx.Client, agent: str) -> None:
    requests = [
        _request(agent, "bank.pay"),
        _request(agent, "bank.pay", resource_parents=BANK),
        _request(
            agent, "bank.pay", resource_parents=BANK, resource_attributes={"destructive": True}
        ),
    ]
    r = admin.post("/v1/authorize/batch", json={"requests": requests})
    assert r.status_code == 200, r.text
    assert [d["decision"] for d in r.json()["decisions"]] == ["deny", "allow", "deny"]


@pytest.mark.parametrize(
    "placed",
    [
        {"resource_parents": [{"type": "Api", "id": "bank"}]},  # a Tool is not in an Api
        {"resource_parents": [{"type": "Spaceship", "id": "x"}]},
        {"resource_parents": [{"type": "McpServer", "id": ""}]},
        {
            "resource_parents": [
                {"type": "McpServer", "id": f"s{i}"} for i in range(MAX_PARENTS + 1)
            ]
        },
        {"resource_attributes": {"colour": "red"}},  # not declared for a Tool
        {"resource_attributes": {"owner": "me"}},  # declared, but an entity reference
        {"resource_attributes": {"destructive": "yes"}},  # not a Boolean
        {"resource_attributes": {"": True}},
        {"resource_attributes": {f"a{i}": True for i in range(MAX_DERIVED_ATTRIBUTES + 1)}},
        {"resource_attributes": []},
    ],
)
def test_bad_placement_is_422_and_not_decided(
    admin: httpx.Client, agent: str, placed: dict[str, Any]
) -> None:
    before = admin.get("/v1/audit/events", params={"type": "authz.decision", "limit": 200})
    r = admin.post("/v1/authorize", json=_request(agent, "bank.pay", **placed))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in r.text
    assert "Extra inputs" not in r.text  # the fields are known: their values are refused
    r = admin.post(
        "/v1/authorize/batch", json={"requests": [_request(agent, "bank.pay", **placed)]}
    )
    assert r.status_code == 422, r.text
    after = admin.get("/v1/audit/events", params={"type": "authz.decision", "limit": 200})
    assert len(after.json()["items"]) == len(before.json()["items"])
