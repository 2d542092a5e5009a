"""The README's path, with real processes: ``agentiam db upgrade``, ``agentiam serve``
(which prints the first admin key once), the CLI creating an owner and an agent, and the
API showing that agent. Runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.cli import AGENTIAM
from tests.support.cli import run as run_cli
from tests.support.live import free_port

pytestmark = pytest.mark.e2e

KEY_RE = re.compile(r"aiam_[a-z2-9]{8}_[A-Za-z0-9_-]{43}")


def env_for(database_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTIAM_DATABASE_URL": database_url,
        "AGENTIAM_PORT": str(port),
        "AGENTIAM_EXPIRY_SWEEP_SECONDS": "0.2",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }


def cli(
    env: dict[str, str], *args: str, check: bool = True, input: str = ""
) -> subprocess.CompletedProcess[str]:
    """``agentiam ARGS`` as a process of its own (tests.support.cli: forked from a
    process that has the imports done; ``agentiam serve`` below is a real one)."""
    result = run_cli(args, env, input=input, timeout=60)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


class Server:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [AGENTIAM, "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "serve exited: " + (self.proc.stdout.read() if self.proc.stdout else "")
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("serve did not become healthy")

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        self.output += out
        return self.output


@pytest.fixture
def server_env(database_url: str) -> Iterator[tuple[dict[str, str], int]]:
    port = free_port()
    return env_for(database_url, port), port


def test_quickstart_owner_agent_visible_through_api(
    server_env: tuple[dict[str, str], int],
) -> None:
    env, port = server_env
    cli(env, "db", "upgrade")
    server = Server(env, port)
    try:
        human = json.loads(
            cli(env, "humans", "create", "--name", "Ada Lovelace", "--email", "ada@example.com",
                "--json").stdout
        )  # fmt: skip
        created = json.loads(
            cli(env, "agents", "create", "invoice-bot", "--owner", human["id"],
                "--purpose", "pay supplier invoices", "--environment", "production",
                "--label", "team=payments", "--activate", "--json").stdout
        )  # fmt: skip
        assert created["status"] == "active"
    finally:
        output = server.stop()
    keys = KEY_RE.findall(output)
    assert len(keys) == 1, output
    admin = keys[0]

    server = Server(env, port)  # restarted: the key still works and is not printed again
    try:
        headers = {"Authorization": f"Bearer {admin}"}
        agents = httpx.get(server.url + "/v1/agents", headers=headers).json()["items"]
        assert [(a["name"], a["owners"], a["labels"]) for a in agents] == [
            ("invoice-bot", [human["id"]], {"team": "payments"})
        ]
        assert httpx.get(server.url + "/v1/agents").status_code == 401

        # A just-in-time child expires on its own: the server's sweeper decommissions it.
        child = httpx.post(
            server.url + "/v1/agents",
            headers=headers,
            json={
                "name": "invoice-bot-worker",
                "purpose": "one batch",
                "environment": "production",
                "parent_id": created["id"],
                "ttl_seconds": 1,
                "activate": True,
            },
        ).json()
        status = _poll_status(server.url, headers, child["id"], "decommissioned")
        assert status == "decommissioned"
        history = httpx.get(
            f"{server.url}/v1/agents/{child['id']}/transitions", headers=headers
        ).json()["items"]
        assert history[-1]["reason"] == "ttl expired"
    finally:
        output = server.stop()
    assert not KEY_RE.search(output)


def _poll_status(url: str, headers: dict[str, str], agent_id: str, want: str) -> Any:
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/agents/{agent_id}", headers=headers).json()["status"]
        if status == want:
            break
        time.sleep(0.2)
    return status


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = env_for(f"sqlite:///{tmp_path}/fresh.db", free_port())
    result = cli(env, "serve", check=False)
    assert result.returncode != 0
    assert "agentiam db upgrade" in result.stderr


def test_cli_errors_name_a_next_step(sqlite_url: str) -> None:
    env = env_for(sqlite_url, free_port())
    human = json.loads(
        cli(env, "humans", "create", "--name", "Ada", "--email", "ada@example.com", "--json").stdout
    )
    cli(env, "agents", "create", "bot", "-o", human["id"], "--purpose", "p", "-e", "dev")
    result = cli(env, "agents", "resume", "bot", "--reason", "x", check=False)
    assert result.returncode == 1
    assert "cannot resume an agent that is pending" in result.stderr
    assert "next:" in result.stderr
    assert "activate" in result.stderr
    result = cli(env, "agents", "create", "bot2", "--purpose", "p", "-e", "dev", check=False)
    assert result.returncode == 1
    assert "humans create" in result.stderr
    result = cli(env, "agents", "show", "nobody", check=False)
    assert result.returncode == 1
    assert "next:" in result.stderr
    listed = json.loads(cli(env, "agents", "list", "--status", "pending", "--json").stdout)
    assert [a["name"] for a in listed] == ["bot"]
    changed = json.loads(
        cli(env, "agents", "update", "bot", "--label", "tier=gold", "--autonomy", "suggest",
            "--json").stdout
    )  # fmt: skip
    assert changed["labels"] == {"tier": "gold"}
    assert changed["autonomy"] == "suggest"
    result = cli(env, "agents", "update", "bot", "--owner", "hum_nobody", check=False)
    assert result.returncode == 1
    assert "do not exist" in result.stderr


def test_admin_keys_cli_create_list_revoke(sqlite_url: str) -> None:
    env = env_for(sqlite_url, free_port())
    created = json.loads(
        cli(env, "admin-keys", "create", "--name", "ci", "--role", "auditor", "--json").stdout
    )
    assert created["secret"].startswith("aiam_")
    assert created["role"] == "auditor"
    listed = cli(env, "admin-keys", "list", "--json").stdout
    assert created["prefix"] in listed
    assert created["secret"] not in listed
    revoked = json.loads(cli(env, "admin-keys", "revoke", created["prefix"], "--json").stdout)
    assert revoked["revoked_at"]
    again = cli(env, "admin-keys", "revoke", created["prefix"], check=False)
    assert again.returncode == 1
    assert "already revoked" in again.stderr
