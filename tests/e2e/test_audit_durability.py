"""No acknowledged decision is lost when the server is killed with SIGKILL under load.

A real ``agentiam serve`` process takes /v1/authorize and /v1/authorize/batch calls
from several client threads; every decision id answered with 200 is remembered. While
calls are still in flight the server process is killed with SIGKILL (no shutdown, no
drain of the group-commit queue). A new ``agentiam serve`` on the same database must
then show every acknowledged decision as exactly one ``authz.decision`` event, integrate
the whole event store into the trail and sign it, and ``agentiam audit verify`` must
find the trail intact: the tree heads the killed process signed and the ones the new
process signed all check out. Runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from tests.e2e.test_quickstart import AGENTIAM, KEY_RE, cli, env_for
from tests.support.live import free_port

from agentiam.adapters.storage.engine import make_engine
from agentiam.core.credentials.sealing import MasterKey

pytestmark = pytest.mark.e2e

THREADS = 8  # half send single requests, half batches of BATCH
BATCH = 5
KILL_AFTER_CALLS = 400  # acknowledged calls before the kill
POLICY = """@id("bank-tools")
permit (principal in AgentGroup::"team=payments", action == Action::"invoke_tool",
        resource in McpServer::"bank");
"""


class Serve:
    """``agentiam serve`` as a child process, its output going to a file (a pipe
    nobody reads would fill up with access-log lines and stall the server)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [AGENTIAM, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("serve exited: " + log.read_text())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.proc.kill()
        raise AssertionError("serve did not become healthy: " + log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _set_up(admin: httpx.Client) -> str:
    """An active payments agent and a policy that lets it use the bank's tools."""
    human = _ok(
        admin.post("/v1/humans", json={"display_name": "Ada", "email": "ada@example.com"}), 201
    )
    agent = _ok(
        admin.post(
            "/v1/agents",
            json={
                "name": "pay-bot",
                "owners": [human["id"]],
                "purpose": "pay supplier invoices",
                "environment": "production",
                "labels": {"team": "payments"},
                "activate": True,
            },
        ),
        201,
    )
    _ok(admin.put("/v1/resources/McpServer/bank", json={}))
    _ok(
        admin.put(
            "/v1/resources/Tool/transfer", json={"parents": [{"type": "McpServer", "id": "bank"}]}
        )
    )
    _ok(admin.post("/v1/policies/import", content=POLICY, headers={"content-type": "text/plain"}))
    agent_id: str = agent["id"]
    deadline = time.monotonic() + 10  # the server picks up the new agent within a poll
    while _ok(admin.post("/v1/authorize", json=_request(agent_id, 1)))["decision"] != "allow":
        assert time.monotonic() < deadline, "the policy never allowed the agent"
        time.sleep(0.05)
    return agent_id


def _request(agent_id: str, n: int) -> dict[str, Any]:
    """Every third request asks for a tool outside the bank: a deny, also audited."""
    return {
        "principal": {"type": "Agent", "id": agent_id},
        "action": "invoke_tool",
        "resource": {"type": "Tool", "id": "transfer" if n % 3 else "drop_tables"},
    }


class Load:
    """Client threads calling /v1/authorize(/batch) until the server goes away."""

    def __init__(self, url: str, key: str, agent_id: str) -> None:
        self.url = url
        self.key = key
        self.agent_id = agent_id
        self.lock = threading.Lock()
        self.acked: list[str] = []  # decision ids answered with 200
        self.calls = 0  # calls answered with 200
        self.refused: list[str] = []  # answers other than 200 (before the kill: none)
        self.transport_errors = 0  # calls cut off by the kill
        self.unexpected: list[str] = []
        self.killed = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(THREADS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=15)
            assert not thread.is_alive(), "a client thread hung after the kill"

    def _run(self, worker: int) -> None:
        batch = worker % 2 == 1
        n = 0
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            while True:
                n += 1
                try:
                    if batch:
                        body = {"requests": [_request(self.agent_id, n + i) for i in range(BATCH)]}
                        r = client.post("/v1/authorize/batch", json=body)
                    else:
                        r = client.post("/v1/authorize", json=_request(self.agent_id, n))
                except httpx.TransportError as exc:
                    with self.lock:
                        if self.killed.is_set():
                            self.transport_errors += 1
                        else:
                            self.unexpected.append(repr(exc))
                    return
                with self.lock:
                    if r.status_code != 200:
                        self.refused.append(f"{r.status_code} {r.text[:200]}")
                        if self.killed.is_set():
                            return
                        continue
                    decisions = r.json()["decisions"] if batch else [r.json()]
                    self.acked.extend(d["decision_id"] for d in decisions)
                    self.calls += 1


def _decision_ids(admin: httpx.Client) -> list[str]:
    """Every authz.decision event's decision id, through the API, page by page."""
    ids: list[str] = []
    event_ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"type": "authz.decision", "limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = _ok(admin.get("/v1/audit/events", params=params))
        for event in page["items"]:
            assert event["type"] == "authz.decision"
            ids.append(event["decision_id"])
            event_ids.append(event["event_id"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(set(event_ids)) == len(event_ids), "an event was listed twice"
    return ids


def _counts(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar() or 0)

            return {
                "events": one("SELECT count(*) FROM audit_events"),
                "max_seq": one("SELECT coalesce(max(seq), 0) FROM audit_events"),
                "logged": one("SELECT count(*) FROM audit_log"),
                "logged_events": one("SELECT count(DISTINCT event_seq) FROM audit_log"),
                "max_index": one("SELECT coalesce(max(log_index), -1) FROM audit_log"),
                "unlogged": one(
                    "SELECT count(*) FROM audit_events e WHERE NOT EXISTS "
                    "(SELECT 1 FROM audit_log l WHERE l.event_seq = e.seq)"
                ),
                "heads": one("SELECT count(*) FROM audit_tree_heads"),
                "largest_head": one("SELECT coalesce(max(tree_size), 0) FROM audit_tree_heads"),
            }
    finally:
        engine.dispose()


def _wait_integrated(database_url: str, at_least: int) -> dict[str, int]:
    """Wait until every stored event (at least ``at_least``) is in the trail and a
    signed tree head covers them all."""
    deadline = time.monotonic() + 15
    while True:
        now = _counts(database_url)
        if at_least <= now["events"] == now["largest_head"] and now["unlogged"] == 0:
            return now
        assert time.monotonic() < deadline, f"the trail was not integrated and signed: {now}"
        time.sleep(0.1)


def test_sigkill_under_load_loses_no_acknowledged_decision(
    database_url: str, tmp_path: Path
) -> None:
    master = tmp_path / "master.key"
    master.write_text(MasterKey.generate_text(), encoding="ascii")
    port = free_port()
    env = env_for(database_url, port)
    env["AGENTIAM_MASTER_KEY_FILE"] = str(master)
    env["AGENTIAM_POLICY_REFRESH_SECONDS"] = "0.1"
    env["AGENTIAM_AUDIT_INTEGRATE_SECONDS"] = "0.1"
    env["AGENTIAM_AUDIT_TREE_HEAD_SECONDS"] = "1"
    log = tmp_path / "serve.log"

    # -- load, then SIGKILL --------------------------------------------------------
    server = Serve(env, port, log)
    try:
        keys = KEY_RE.findall(log.read_text())
        assert len(keys) == 1, log.read_text()
        admin_key = keys[0]
        admin_headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=server.url, headers=admin_headers, timeout=10) as admin:
            agent_id = _set_up(admin)

        load = Load(server.url, admin_key, agent_id)
        load.start()
        deadline = time.monotonic() + 15
        while load.calls < KILL_AFTER_CALLS:
            assert time.monotonic() < deadline, f"only {load.calls} calls answered"
            assert all(t.is_alive() for t in load.threads), load.unexpected + load.refused
            time.sleep(0.005)
        # ``agentiam`` is a Python script run directly: its pid is the server itself
        # (one worker, no supervisor in between).
        assert server.proc.poll() is None
        load.killed.set()
        os.kill(server.proc.pid, signal.SIGKILL)
        assert server.proc.wait(timeout=10) == -signal.SIGKILL
        load.join()
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):  # nothing else was serving that port
        httpx.get(server.url + "/healthz", timeout=1)

    assert not load.unexpected, load.unexpected
    assert not load.refused, load.refused  # no 503 before the kill, none after
    assert load.calls >= KILL_AFTER_CALLS
    assert load.transport_errors >= 1, "no call was in flight when the server was killed"
    acked = set(load.acked)
    assert len(acked) == len(load.acked)  # decision ids are unique
    crashed = _counts(database_url)
    assert crashed["heads"] >= 1, crashed  # the killed process had signed tree heads

    # -- restart on the same database ----------------------------------------------
    server = Serve(env, port, log)
    try:
        # The restarted server logs what the killed one left unlogged, and signs it.
        _wait_integrated(database_url, crashed["events"])
        with httpx.Client(base_url=server.url, headers=admin_headers, timeout=10) as admin:
            stored = _decision_ids(admin)
        _wait_integrated(database_url, crashed["events"])  # the reads above are events too
    finally:
        server.stop()

    counts = Counter(stored)
    assert [d for d, n in counts.items() if n > 1] == [], "a decision was logged twice"
    missing = acked - counts.keys()
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged decisions were lost"

    after = _counts(database_url)
    assert after["unlogged"] == 0, after
    assert after["logged"] == after["logged_events"] == after["events"], after  # once each
    assert after["max_index"] == after["logged"] - 1, after  # one gap-free sequence
    assert after["heads"] > crashed["heads"], after  # the restarted server signed too

    result = cli(env, "audit", "verify", "--json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True, report
    assert report["findings"] == [], report
    assert report["entries"] == after["events"] > len(acked), (report, after)
    assert report["heads_verified"] == report["tree_heads"] == after["heads"], report
