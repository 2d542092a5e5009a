"""Declared expectations on an agent: stored, returned, audited, bounded, refused when
malformed (the field named), and cleared with {}."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.api.conftest import Live
from tests.api.test_admin_api import assert_problem, audit_rows, make_agent, make_human

DECLARED: dict[str, Any] = {
    "actions": ["tool:crm_*", "read@Api::billing"],
    "hosts": ["API.Example.com", "*.internal.example"],
    "environments": ["staging"],
    "data_domains": ["billing"],
    "max_calls_per_minute": 120,
    "workflow": {"*start": ["tool:crm_search"], "tool:crm_search": ["tool:crm_update"]},
}


def test_expectations_round_trip_and_are_audited(live: Live, admin: httpx.Client) -> None:
    owner = make_human(admin)["id"]
    agent = make_agent(admin, owner, expectations=DECLARED)
    assert agent["expectations"]["actions"] == DECLARED["actions"]
    assert agent["expectations"]["hosts"] == ["api.example.com", "*.internal.example"]
    assert agent["expectations"]["workflow"]["*start"] == ["tool:crm_search"]
    fetched = admin.get(f"/v1/agents/{agent['id']}").json()
    assert fetched["expectations"] == agent["expectations"]
    # the PDP's snapshot (which detection reads) carries them too
    live.container.decisions.refresh()
    held = live.container.decisions.authorizer.entities.agents[agent["id"]]
    assert held.expectations.max_calls_per_minute == 120

    r = admin.patch(f"/v1/agents/{agent['id']}", json={"expectations": {"hosts": ["a.example"]}})
    assert r.status_code == 200, r.text
    assert r.json()["expectations"] == {"hosts": ["a.example"]}
    updates = [e for e in audit_rows(live) if e["type"] == "agent.updated"]
    assert updates[-1]["details"]["changes"]["expectations"]["to"] == {"hosts": ["a.example"]}

    r = admin.patch(f"/v1/agents/{agent['id']}", json={"expectations": {}})
    assert r.json()["expectations"] == {}


@pytest.mark.parametrize(
    ("expectations", "named"),
    [
        ({"actions": "tool:x"}, "expectations.actions"),
        ({"actions": ["has space"]}, "expectations.actions"),
        ({"actions": ["x" * 201]}, "expectations.actions"),
        ({"actions": [f"a{i}" for i in range(201)]}, "expectations.actions"),
        ({"max_calls_per_minute": 0}, "expectations.max_calls_per_minute"),
        ({"max_calls_per_minute": True}, "expectations.max_calls_per_minute"),
        ({"workflow": ["a"]}, "expectations.workflow"),
        ({"workflow": {"a": "b"}}, "expectations.workflow.a"),
        ({"shell": ["rm"]}, "unknown field 'shell'"),
    ],
)
def test_malformed_expectations_are_refused_naming_the_field(
    live: Live, admin: httpx.Client, expectations: dict[str, Any], named: str
) -> None:
    owner = make_human(admin)["id"]
    r = admin.post(
        "/v1/agents",
        json={
            "name": "bot",
            "owners": [owner],
            "purpose": "p",
            "environment": "staging",
            "expectations": expectations,
        },
    )
    body = assert_problem(r, 422)
    assert named in body["detail"]
    assert admin.get("/v1/agents").json()["items"] == []  # nothing half-created
