"""The OCSF export end to end: a live server with a JSON Lines exporter in OCSF format
receives real traffic (tokens issued and refused, introspection, a revocation, admin
changes, a policy change, allowed and denied decisions), and every line the exporter
writes is valid under the official OCSF 1.7.0 schema of its class, so a SIEM can take
the file as it is."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.unit.test_audit_formats import assert_valid


@pytest.fixture
def live(sqlite_url: str, tmp_path: Path) -> Iterator[OAuthLive]:
    exporters = tmp_path / "exporters.yaml"
    exporters.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "siem",
                    "type": "jsonl",
                    "path": str(tmp_path / "ocsf.jsonl"),
                    "format": "ocsf",
                }
            ]
        )
    )
    with oauth_live(
        sqlite_url, audit_exporters_file=str(exporters), audit_integrate_seconds=0.05
    ) as running:
        yield running


def _traffic(live: OAuthLive) -> None:
    token = live.token()
    refused = live.request_token(form={**live.form(), "scope": "admin:everything"})
    assert refused.status_code == 400
    with live.admin_client() as admin:
        r = admin.post("/v1/humans", json={"display_name": "Sam", "email": "sam@example.com"})
        assert r.status_code == 201, r.text
        r = admin.put(
            "/v1/policies/tools",
            json={
                "text": 'permit (principal is Agent, action == Action::"invoke_tool", '
                'resource == Tool::"search");'
            },
        )
        assert r.status_code == 200, r.text
        for tool in ("search", "transfer"):
            body = {
                "principal": {"type": "Agent", "id": live.agent_id},
                "action": "invoke_tool",
                "resource": {"type": "Tool", "id": tool},
                "context": {"args": {"q": "x"}},
            }
            assert admin.post("/v1/authorize", json=body).status_code == 200
        r = admin.post("/oauth2/introspect", data={"token": token})
        assert r.status_code == 200, r.text
        r = admin.post(f"/v1/agents/{live.agent_id}/revoke-tokens", json={"reason": "test"})
        assert r.status_code in (200, 204), r.text


def _lines(path: Path, want: set[str], deadline: float) -> list[dict[str, Any]]:
    while True:
        items = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        seen = {i["metadata"]["event_code"] for i in items}
        if want <= seen or time.monotonic() > deadline:
            return items
        time.sleep(0.1)


def test_every_exported_line_is_valid_ocsf(live: OAuthLive, tmp_path: Path) -> None:
    _traffic(live)
    items = _lines(
        tmp_path / "ocsf.jsonl",
        {"token.issued", "token.denied", "authz.decision", "human.created"},
        time.monotonic() + 15,
    )
    assert len(items) >= 8
    for item in items:
        assert_valid(item)
    decisions = [i["status"] for i in items if i["metadata"]["event_code"] == "authz.decision"]
    assert sorted(decisions) == ["Failure", "Success"]  # one allowed, one denied
    classes = {item["class_uid"] for item in items}
    assert {3002, 6003} <= classes  # Authentication, API Activity
    assert classes & {3001, 3004}  # Account Change or Entity Management
    uids = [item["metadata"]["uid"] for item in items]
    assert len(uids) == len(set(uids))  # one line per event
    sequence = [item["metadata"]["sequence"] for item in items]
    assert sequence == sorted(sequence)  # in trail order
    with httpx.Client(
        base_url=live.url, headers={"Authorization": f"Bearer {live.admin}"}
    ) as admin:
        [health] = admin.get("/v1/audit/exporters").json()["items"]
    assert health["name"] == "siem"
    assert health["healthy"]
