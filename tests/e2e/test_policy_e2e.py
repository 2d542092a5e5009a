"""Policies with real processes: an operator edits the policy set through the CLI
while ``agentiam serve`` runs; the server's decisions follow without a restart,
rollback restores them, and ``agentiam policy test`` gates a CI run by its exit code."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.test_quickstart import Server, cli, env_for
from tests.support.live import free_port

pytestmark = pytest.mark.e2e

POLICIES = """// Payments agents may move small amounts through the bank's MCP server.
@id("payments-transfer")
permit (principal in AgentGroup::"team=payments", action == Action::"invoke_tool",
        resource in McpServer::"bank")
when { context.args has amount && context.args.amount <= 1000 };
"""
EXTENSION = {
    "commonTypes": {"ToolArguments": {"type": "Record", "attributes": {"amount": {"type": "Long"}}}}
}


def _decide(client: httpx.Client, agent: str, amount: int) -> dict[str, Any]:
    r = client.post(
        "/v1/authorize",
        json={
            "principal": {"type": "Agent", "id": agent},
            "action": "invoke_tool",
            "resource": {"type": "Tool", "id": "transfer"},
            "context": {"args": {"amount": amount}},
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _eventually(client: httpx.Client, agent: str, expected: str) -> dict[str, Any]:
    """The server polls for policy changes every policy_refresh_seconds (0.2 s here)."""
    deadline = time.monotonic() + 10
    while True:
        decision = _decide(client, agent, 10)
        if decision["decision"] == expected or time.monotonic() > deadline:
            return decision
        time.sleep(0.1)


def test_policy_edits_reach_a_running_server_and_roll_back(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(database_url, port)
    env["AGENTIAM_POLICY_REFRESH_SECONDS"] = "0.2"
    cli(env, "db", "upgrade")
    human = json.loads(
        cli(env, "humans", "create", "--name", "Ada", "--email", "ada@example.com",
            "--json").stdout
    )  # fmt: skip
    agent = json.loads(
        cli(env, "agents", "create", "pay-bot", "--owner", human["id"], "--purpose", "pay",
            "--environment", "production", "--label", "team=payments", "--activate",
            "--json").stdout
    )["id"]  # fmt: skip
    cli(env, "resources", "put", "McpServer", "bank")
    cli(env, "resources", "put", "Tool", "transfer", "--parent", "McpServer::bank")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(EXTENSION))
    cli(env, "policy", "extend-schema", str(schema))

    key = json.loads(
        cli(env, "admin-keys", "create", "--name", "pep", "--role", "verifier",
            "--source", "gateway/pep", "--json").stdout
    )["secret"]  # fmt: skip
    server = Server(env, port)
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            assert _decide(client, agent, 10)["decision"] == "deny"  # default deny

            policies = tmp_path / "policies.cedar"
            policies.write_text(POLICIES)
            out = cli(env, "policy", "import", str(policies)).stdout
            assert "version 2" in out
            allowed = _eventually(client, agent, "allow")
            assert allowed["decision"] == "allow"
            assert allowed["policies"] == ["payments-transfer"]
            assert allowed["policy_version"] == 2
            assert _decide(client, agent, 5000)["decision"] == "deny"

            cli(env, "policy", "rollback", "1", "--comment", "back out")
            denied = _eventually(client, agent, "deny")
            assert denied["decision"] == "deny"
            assert denied["policy_version"] == 3

            exported = cli(env, "policy", "export", "--version", "2").stdout
            assert '@id("payments-transfer")' in exported
            assert "// Payments agents may move small amounts" in exported
    finally:
        server.stop()


def test_policy_test_exit_codes(tmp_path: Path, sqlite_url: str) -> None:
    env = {"AGENTIAM_DATABASE_URL": sqlite_url}
    (tmp_path / "policies.cedar").write_text(POLICIES)
    (tmp_path / "schema.json").write_text(json.dumps(EXTENSION))
    case = {
        "principal": {"type": "Agent", "id": "agt_pay"},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": "transfer"},
    }
    suite = {
        "policies": "policies.cedar",
        "schema_extension": "schema.json",
        "agents": [{"id": "agt_pay", "labels": {"team": "payments"}}],
        "resources": [
            {"type": "McpServer", "id": "bank"},
            {"type": "Tool", "id": "transfer", "parents": [{"type": "McpServer", "id": "bank"}]},
        ],
        "cases": [
            {**case, "name": "small", "context": {"args": {"amount": 5}}, "expect": "allow",
             "policies": ["payments-transfer"]},
            {**case, "name": "large", "context": {"args": {"amount": 5000}}, "expect": "deny"},
        ],
    }  # fmt: skip
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(suite))  # JSON is YAML
    result = cli({**_base_env(), **env}, "policy", "test", str(good), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 0 failed" in result.stdout

    suite["cases"][1]["expect"] = "allow"  # type: ignore[index]
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(suite))
    result = cli({**_base_env(), **env}, "policy", "test", str(bad), "--json", check=False)
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert [r["result"] for r in rows] == ["pass", "FAIL"]

    missing = tmp_path / "missing.yaml"
    result = cli({**_base_env(), **env}, "policy", "test", str(missing), check=False)
    assert result.returncode == 2


def _base_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}
