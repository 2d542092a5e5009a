"""Credentials with real processes: ``agentiam keys generate-master-key``, ``agentiam
serve``, an agent registered through the CLI with a key made by the runnable SDK example,
the example obtaining a DPoP-bound token from the server, then ``agentiam keys rotate``,
``agentiam tokens revoke-agent`` and introspection showing the effect."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.test_quickstart import KEY_RE, Server, cli, env_for
from tests.support.live import free_port

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agent_client.py"
RESOURCE = "https://tools.example.com"


def example(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def register_agent(env: dict[str, str], tmp_path: Path, name: str) -> tuple[dict[str, Any], Path]:
    """Through the CLI: an owner, and an active agent whose key the SDK example made,
    entitled to tools:read on RESOURCE. Returns the agent and its private key file."""
    key_file = tmp_path / "agent.key"
    public = tmp_path / "agent.pub.json"
    public.write_text(example("keygen", str(key_file)))
    human = json.loads(
        cli(env, "humans", "create", "--name", "Ada", "--email", "ada@example.com", "--json").stdout
    )
    agent = json.loads(
        cli(env, "agents", "create", name, "--owner", human["id"],
            "--purpose", "pay invoices", "--environment", "production",
            "--key-file", str(public), "--scope", "tools:read", "--audience", RESOURCE,
            "--activate", "--json").stdout
    )  # fmt: skip
    return agent, key_file


def test_agent_gets_a_token_from_a_real_server_and_operators_revoke_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(sqlite_url, port)
    master = tmp_path / "master.key"
    cli(env, "keys", "generate-master-key", "-o", str(master))
    assert oct(master.stat().st_mode & 0o777) == "0o600"
    again = cli(env, "keys", "generate-master-key", "-o", str(master), check=False)
    assert again.returncode == 1  # never overwrites a master key
    env["AGENTIAM_MASTER_KEY_FILE"] = str(master)
    agent, key_file = register_agent(env, tmp_path, "invoice-bot")
    assert agent["scopes"] == ["tools:read"]
    assert agent["dpop_required"] is True
    server = Server(env, port)
    try:
        admin = KEY_RE.findall(server.proc.stdout.readline() + _drain(server))[0]
        out = example("token", server.url, agent["id"], str(key_file), RESOURCE)
        assert "token_type=DPoP scope='tools:read' expires_in=300" in out
        claims = json.loads(out.split("\n", 1)[1])
        assert claims["sub"] == agent["id"]
        assert claims["aud"] == RESOURCE
        assert "jkt" in claims["cnf"]

        listed = json.loads(cli(env, "keys", "list", "--json").stdout)
        assert [k["state"] for k in listed] == ["signing"]
        rotated = json.loads(cli(env, "keys", "rotate", "--json").stdout)
        assert rotated["state"] == "pending"

        cli(env, "tokens", "revoke-agent", "invoice-bot", "--reason", "incident drill")
        headers = {"Authorization": f"Bearer {admin}"}
        feed = httpx.get(
            server.url + "/v1/revocations", params={"after": 0}, headers=headers
        ).json()
        assert [(e["kind"], e["subject"]) for e in feed["entries"]] == [("agent", agent["id"])]
        assert feed["entries"][0]["cutoff"] >= claims["iat"]  # covers the token above
    finally:
        server.stop()


def _drain(server: Server) -> str:
    """Read the serve banner lines that carry the first admin key."""
    assert server.proc.stdout is not None
    lines = []
    for _ in range(6):
        line = server.proc.stdout.readline()
        lines.append(line)
        if KEY_RE.search(line):
            break
    return "".join(lines)


def test_serve_with_two_workers_issues_tokens_and_stops_cleanly(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(sqlite_url, port)
    env["AGENTIAM_MASTER_KEY"] = "A" * 43
    agent, key_file = register_agent(env, tmp_path, "bot")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentiam.cli.main", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        for _ in range(3):  # each token request may land on either worker
            out = example("token", url, agent["id"], str(key_file), RESOURCE)
            assert "token_type=DPoP" in out
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=2)  # no worker is left listening


def test_a_stopping_server_answers_a_held_long_poll_and_exits(
    sqlite_url: str, tmp_path: Path
) -> None:
    """SIGTERM while an enforcement point holds a revocation-feed long poll (25 s by
    default): serve answers it at once and exits, instead of staying up for the
    poll's whole wait (or cutting it with a 500 at the end of its grace)."""
    port = free_port()
    env = env_for(sqlite_url, port)
    env["AGENTIAM_SHUTDOWN_GRACE_SECONDS"] = "1"
    server = Server(env, port)
    held: list[BaseException | int] = []
    try:
        admin = KEY_RE.findall(server.proc.stdout.readline() + _drain(server))[0]
        headers = {"Authorization": f"Bearer {admin}"}
        feed = server.url + "/v1/revocations"
        cursor = httpx.get(feed, params={"after": 0}, headers=headers).json()["cursor"]

        def poll() -> None:
            try:
                params = {"after": cursor, "wait": 25}
                held.append(httpx.get(feed, params=params, headers=headers, timeout=60).status_code)
            except httpx.HTTPError as exc:
                held.append(exc)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        time.sleep(1.0)  # the poll is being held
        assert not held
        stopping = time.monotonic()
        server.proc.terminate()
        server.proc.wait(timeout=20)
        stopped_in = time.monotonic() - stopping
        poller.join(timeout=5)
    finally:
        server.stop()
    assert stopped_in < 8, f"serve took {stopped_in:.1f} s to stop"
    assert held == [200]  # answered (nothing new), not cut: the caller polls again
    assert "Exception in ASGI application" not in server.output


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("serve --workers 2 did not become healthy")
