"""``agentiam policy decide`` on a real database: a resource placed and attributed on
the command line (``--parent``, ``--attributes``, as ``POST /v1/authorize`` takes them)
is decided so, the catalog's attributes win, and a request the schema refuses fails
with its reason and is not decided."""

from __future__ import annotations

import json

import pytest
from tests.api.test_response import CTX, make_agent
from typer.testing import CliRunner

from agentiam.bootstrap import build
from agentiam.cli.main import app
from agentiam.config import Settings
from agentiam.core.policy.model import EntityRef, ResourceRecord

runner = CliRunner()
IN_BANK = 'permit (principal, action == Action::"invoke_tool", resource in McpServer::"bank");'
NO_DESTRUCTIVE = """forbid (principal, action, resource is Tool)
when { resource has destructive && resource.destructive };"""


@pytest.fixture
def agent(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    c = build(Settings.from_env())
    try:
        agent_id = make_agent(c)
        c.policies.put(CTX, "in-bank", text=IN_BANK)
        c.policies.put(CTX, "no-destructive", text=NO_DESTRUCTIVE)
        c.resources.put(CTX, ResourceRecord("McpServer", "bank", {"name": "bank"}, ()))
        bank = (EntityRef("McpServer", "bank"),)
        c.resources.put(CTX, ResourceRecord("Tool", "bank.close", {"destructive": True}, bank))
    finally:
        c.close()
    return agent_id


def _decide(agent: str, tool: str, *extra: str) -> dict[str, object]:
    result = runner.invoke(
        app,
        ["policy", "decide", "--principal", f"Agent::{agent}", "--action", "invoke_tool",
         "--resource", f"Tool::{tool}", "--json", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_placed_and_attributed_on_the_command_line(agent: str) -> None:
    assert _decide(agent, "bank.pay")["decision"] == "deny"
    assert _decide(agent, "bank.pay", "--parent", "McpServer::bank")["decision"] == "allow"
    destructive = _decide(
        agent, "bank.pay", "--parent", "McpServer::bank", "--attributes", '{"destructive": true}'
    )
    assert destructive["decision"] == "deny"
    assert destructive["reasons"] == ["forbidden by policy no-destructive"]
    # the catalog says bank.close is destructive: a derived false does not change that
    close = _decide(agent, "bank.close", "--attributes", '{"destructive": false}')
    assert close["decision"] == "deny"
    assert close["reasons"] == ["forbidden by policy no-destructive"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--parent", "Api::bank"], "cannot be in a Api"),
        (["--parent", "bank"], "--parent must be Type::id"),
        (["--attributes", '{"colour": "red"}'], "is not declared"),
        (["--attributes", '{"destructive": "yes"}'], "destructive"),
        (["--attributes", "[1]"], "--attributes must be a JSON object"),
        (["--attributes", "{"], "--attributes is not JSON"),
    ],
)
def test_a_request_the_schema_refuses_fails_undecided(
    agent: str, extra: list[str], message: str
) -> None:
    result = runner.invoke(
        app,
        ["policy", "decide", "--principal", f"Agent::{agent}", "--action", "invoke_tool",
         "--resource", "Tool::bank.pay", *extra],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert "allow" not in result.output
    assert "deny" not in result.output
