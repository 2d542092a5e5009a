"""Delegation with real processes: ``agentiam serve``, the runnable example
``docs/examples/delegation_chain.py`` walking human → planner → just-in-time worker
through the admin API and the SDK, then ``agentiam trace token`` drawing the same
chain from the database, and the grant's revocation seen by introspection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.test_quickstart import Server, cli, env_for
from tests.support.live import free_port

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "delegation_chain.py"
RESOURCE = "https://tools.example.com/mcp"
WORKER = "worker (JIT sub-agent)"


def _run_example(issuer: str, admin_key: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), issuer, admin_key],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # The issuer and key come from the arguments only.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("AGENTIAM_")},
            "PYTHONIOENCODING": "utf-8",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _ids(out: str, label: str) -> str:
    match = re.search(rf"^{label}\s+(\S+)", out, re.MULTILINE)
    assert match, f"no {label} line in:\n{out}"
    return match.group(1)


def _token_section(out: str, title: str) -> tuple[str, dict[str, Any]]:
    """The jti and the chain claims the example printed under ``== <title>``."""
    match = re.search(
        rf"^== {re.escape(title)} \(jti (tok_\w+), lives (\d+) s\)\n(\{{.*?^\}})$",
        out,
        re.MULTILINE | re.DOTALL,
    )
    assert match, f"no section {title!r} in:\n{out}"
    assert 0 < int(match.group(2)) <= 300
    return match.group(1), json.loads(match.group(3))


def test_example_chain_trace_and_revocation_against_a_real_server(sqlite_url: str) -> None:
    port = free_port()
    env = env_for(sqlite_url, port)
    env["AGENTIAM_MASTER_KEY"] = "A" * 43
    admin_key = json.loads(
        cli(env, "admin-keys", "create", "--name", "demo", "--role", "admin", "--json").stdout
    )["secret"]
    server = Server(env, port)
    try:
        out = _run_example(server.url, admin_key)
        # The CLI reads the same database while the server runs.
        drawn = cli(env, "trace", "token", _token_section(out, WORKER)[0]).stdout
    finally:
        server.stop()

    human, planner, worker = _ids(out, "human"), _ids(out, "planner"), _ids(out, "worker")
    grant = _ids(out, "grant")
    assert [human[:4], planner[:4], worker[:4], grant[:4]] == ["hum_", "agt_", "agt_", "grt_"]

    # The planner's token acts for the human, under the grant, with the grant's details.
    acting_jti, acting = _token_section(out, "planner acting for Hannah")
    assert acting["sub"] == human
    assert acting["client_id"] == planner
    assert acting["act"] == {"sub": planner}
    assert acting["aud"] == RESOURCE
    assert acting["scope"] == "tools:read tools:write"
    assert acting["delegation"]["grant"] == grant
    assert acting["authorization_details"] == [
        {"type": "tool_invocation", "tools": ["search", "send_email"]}
    ]

    # The worker's token shows the whole chain and only the narrower task.
    assert "wider task (tool send_wire) refused: invalid_authorization_details" in out
    worker_jti, on_task = _token_section(out, WORKER)
    assert on_task["sub"] == human
    assert on_task["client_id"] == worker
    assert on_task["act"] == {"sub": worker, "act": {"sub": planner}}
    assert on_task["scope"] == "tools:read"
    assert on_task["authorization_details"] == [
        {
            "type": "tool_invocation",
            "tools": ["search"],
            "arguments": {"query": {"max_length": 200}},
        }
    ]
    assert on_task["delegation"]["grant"] == grant
    assert on_task["delegation"]["lineage"][-1] == acting_jti  # derived from the planner's

    # The trace: human at the root, then the human's token, the planner's, the worker's.
    trace = out.split("== trace\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert trace[0] == f"{human} · grant {grant} (active)"
    assert re.match(rf"^└── {human} tok_\w+ active .*\(human\)$", trace[1])
    assert re.match(rf"^    └── {planner} {acting_jti} active .*\(exchange\)$", trace[2])
    assert re.match(rf"^        └── {worker} {worker_jti} active .*\(jit\) ◀$", trace[3])
    assert len(trace) == 4

    # Revoking the grant: both tokens inactive at once, and no new exchange.
    assert "before revocation: planner token active=True, worker token active=True" in out
    assert f"grant {grant} is revoked" in out
    assert "after revocation: planner token active=False, worker token active=False" in out
    assert "a new exchange for Hannah is refused: invalid_grant" in out

    # The CLI drew the same chain from the database, now marked revoked.
    lines = drawn.splitlines()
    assert lines[0] == f"{human} · grant {grant} (revoked)"
    assert re.match(rf"^└── {human} tok_\w+ active .*\(human\)$", lines[1])
    assert re.match(rf"^    └── {planner} {acting_jti} revoked .*\(exchange\)$", lines[2])
    assert re.match(rf"^        └── {worker} {worker_jti} revoked .*\(jit\) ◀$", lines[3])
    tree = json.loads(cli(env, "trace", "token", acting_jti, "--json").stdout)
    assert [n["client_id"] for n in tree["ancestors"]] == [human]
    assert tree["token"]["actors"] == [planner]
    assert [(n["jti"], n["actors"], n["revoked"]) for n in tree["descendants"]] == [
        (worker_jti, [worker, planner], True)
    ]
    assert tree["grant"]["status"] == "revoked"
    assert tree["grant"]["revoke_reason"] == "task done"


def test_grants_cli_create_list_mint_revoke(sqlite_url: str, tmp_path: Path) -> None:
    """The grant commands end to end as an operator runs them: every CLI call is its
    own process on the same database."""
    env = env_for(sqlite_url, free_port())
    env["AGENTIAM_MASTER_KEY_FILE"] = str(tmp_path / "master.key")
    cli(env, "keys", "generate-master-key", "-o", env["AGENTIAM_MASTER_KEY_FILE"])
    human = json.loads(
        cli(
            env, "humans", "create", "--name", "Hana", "--email", "hana@example.com", "--json"
        ).stdout
    )
    agent = json.loads(
        cli(
            env,
            "agents",
            "create",
            "planner",
            "--owner",
            human["id"],
            "--purpose",
            "plan",
            "--environment",
            "production",
            "--scope",
            "tools:read",
            "--audience",
            "https://tools.example.com",
            "--activate",
            "--json",
        ).stdout
    )
    wider = cli(
        env,
        "grants",
        "create",
        "--human",
        human["id"],
        "--agent",
        "planner",
        "--scope",
        "tools:admin",
        "--audience",
        "https://tools.example.com",
        check=False,
    )
    assert wider.returncode == 1
    assert "not entitled" in wider.stderr
    grant = json.loads(
        cli(
            env,
            "grants",
            "create",
            "--human",
            human["id"],
            "--agent",
            "planner",
            "--scope",
            "tools:read",
            "--audience",
            "https://tools.example.com",
            "--details",
            '[{"type": "tool_invocation", "tools": ["search"]}]',
            "--json",
        ).stdout
    )
    assert grant["agent_id"] == agent["id"]
    assert grant["authorization_details"] == [{"type": "tool_invocation", "tools": ["search"]}]
    listed = json.loads(cli(env, "grants", "list", "--human", human["id"], "--json").stdout)
    assert [g["id"] for g in listed] == [grant["id"]]
    token = cli(env, "grants", "subject-token", human["id"], "--agent", "planner").stdout.strip()
    assert token.count(".") == 2
    out = cli(env, "grants", "revoke-human", human["id"], "--reason", "left").stdout
    assert "revoked 1 grants" in out
    shown = json.loads(cli(env, "grants", "show", grant["id"], "--json").stdout)
    assert shown["status"] == "revoked"
    assert shown["revoke_reason"] == "left"
    active = json.loads(cli(env, "grants", "list", "--active", "--json").stdout)
    assert active == []
