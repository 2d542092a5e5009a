"""Human approval (step-up) at the MCP gateway, end to end with real servers: a control
plane (uvicorn, SQLite), an upstream MCP server (the official SDK's ``MCPServer`` over
Streamable HTTP), the real MCP gateway (its runtime: control-plane link, spool,
shipper, approvals client) and agents using the official MCP client SDK through
``AgentClient.mcp_session``, each on its own loopback port.

A policy asks for approval before any transfer. The agent's ``tools/call`` gets a
pending tool result naming the approval, the owner approves with a reason, the retry
(naming the approval in ``_meta``) reaches the upstream tool exactly once, the approval
cannot be used again, an approval for arguments A does not carry arguments B, a denial
and a timeout refuse, the SDK waits for approval by itself, and a gateway configured
to hold the call answers with the real result once approved.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.support.live import free_port, serve_in_thread
from tests.support.live import until as _until

from agentiam.adapters.gateway.mcp_proxy import build_app, load_config
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.approvals_wire import META_KEY
from agentiam.sdk import (
    AgentClient,
    AgentKey,
    ApprovalDenied,
    ApprovalError,
    ApprovalExpired,
    ApprovalPending,
)
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext

CTX = CallContext.system("test")
TIMEOUT = 4.0  # approval_timeout_seconds of this control plane
POLICIES = {
    "tools": 'permit (principal, action == Action::"invoke_tool", resource is Tool);',
    "transfer-needs-approval": 'forbid (principal, action == Action::"invoke_tool", '
    'resource == Tool::"bank.transfer") when { context.approval.state != "approved" };',
}


@dataclass
class World:
    cp: OAuthLive
    gw_url: str  # answers pending at once
    held_url: str  # holds a call up to approvals.wait_seconds for the human
    agent_id: str
    agent: AgentClient
    ran: list[str] = field(default_factory=list)  # what the upstream tool did

    def admin(self) -> httpx.Client:
        return self.cp.admin_client()

    def owner_token(self) -> str:
        with self.admin() as admin:
            r = admin.post(
                f"/v1/humans/{self.cp.owner_id}/subject-tokens", json={"purpose": "approval"}
            )
            assert r.status_code == 201, r.text
            return str(r.json()["subject_token"])

    def decide(self, approval: str, verb: str, reason: str = "ok") -> httpx.Response:
        return httpx.post(
            f"{self.cp.url}/v1/approvals/{approval}/{verb}",
            json={"reason": reason},
            headers={"Authorization": f"Bearer {self.owner_token()}"},
            timeout=10,
        )

    def transfer(
        self,
        amount: int,
        approval: str | None = None,
        *,
        url: str | None = None,
        approval_wait: float = 0.0,
    ) -> Any:
        """One ``tools/call`` of ``bank.transfer`` through the gateway, as the agent."""

        async def main() -> Any:
            meta = {META_KEY: approval} if approval is not None else None
            async with self.agent.mcp_session(
                url or self.gw_url, approval_wait=approval_wait
            ) as session:
                try:
                    return await session.call_tool(
                        "bank.transfer", {"amount": amount, "to": "acme"}, meta=meta
                    )
                except (MCPError, ApprovalError) as exc:  # raised outside the session's tasks
                    return exc

        result = anyio.run(main)
        if isinstance(result, Exception):
            raise result
        return result

    def pending_ids(self) -> set[str]:
        with self.admin() as admin:
            r = admin.get("/v1/approvals", params={"state": "pending", "agent_id": self.agent_id})
            return {i["id"] for i in r.json()["items"]}

    def trail(self, **params: Any) -> list[dict[str, Any]]:
        with self.admin() as admin:
            r = admin.get("/v1/audit/events", params={"limit": 200, **params})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])


def _upstream(ran: list[str]) -> MCPServer:
    server = MCPServer("bank")

    @server.tool()
    def transfer(amount: int, to: str) -> str:
        """Move money."""
        ran.append(f"transfer:{amount}:{to}")
        return f"sent {amount} to {to}"

    return server


def _gateway_config(
    name: str, url: str, port: int, cp: str, env: str, spool: Path, upstream: str, wait: float
) -> Any:
    return load_config(
        {
            "name": name,
            "public_url": url,
            "listen": {"host": "127.0.0.1", "port": port},
            "control_plane": {"url": cp, "key_env": env},
            "spool": {"directory": str(spool)},
            "approvals": {"retry_after_seconds": 1, "wait_seconds": wait},
            "servers": [{"name": "bank", "url": upstream, "prefix": "bank."}],
            "catalog_seconds": 0,
        }
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("approvals-mcp")
    db = tmp / "cp.db"
    db.write_bytes(sqlite_template.read_bytes())
    gw_port, held_port = free_port(), free_port()
    gw_url = f"http://127.0.0.1:{gw_port}/mcp"
    held_url = f"http://127.0.0.1:{held_port}/mcp"
    ran: list[str] = []
    with oauth_live(
        f"sqlite:///{db}",
        approval_timeout_seconds=TIMEOUT,
        approval_sweep_seconds=0.1,
        policy_refresh_seconds=0.1,
    ) as cp:
        c = cp.container
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name="mcp-payer-bot",
                owners=[cp.owner_id],
                purpose="pays invoices",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                audiences=[gw_url, held_url],
            ),
        )
        for policy_id, text in POLICIES.items():
            c.policies.put(CTX, policy_id, text=text)
        verifier = c.admin_keys.create(
            CTX, name="mcp-gw", role="verifier", sources=["gateway/mcp-gw", "gateway/mcp-held"]
        ).secret
        env = f"AGENTIAM_TEST_MCP_GW_KEY_{secrets.token_hex(4).upper()}"
        os.environ[env] = verifier
        try:
            with serve_in_thread(_upstream(ran).streamable_http_app(), lifespan="on") as up:
                configs = [
                    _gateway_config(
                        "mcp-gw", gw_url, gw_port, cp.url, env, tmp / "spool", up + "/mcp", 0
                    ),
                    _gateway_config(
                        "mcp-held", held_url, held_port, cp.url, env, tmp / "held", up + "/mcp", 15
                    ),
                ]
                apps = [build_app(cfg, GatewayRuntime.start(cfg.gateway)) for cfg in configs]
                # the app's lifespan closes its runtime
                with (
                    serve_in_thread(apps[0], gw_port, lifespan="on"),
                    serve_in_thread(apps[1], held_port, lifespan="on"),
                ):
                    client = AgentClient(cp.url, client_id=agent.id, key=key, resource=gw_url)
                    try:
                        yield World(cp, gw_url, held_url, agent.id, client, ran)
                    finally:
                        client.close()
        finally:
            os.environ.pop(env, None)


def _approval(result: Any, state: str = "pending") -> dict[str, Any]:
    """The approval a tool error result names (``_meta["agentiam/approval"]``)."""
    assert result.is_error, result
    approval: dict[str, Any] = (result.meta or {})[META_KEY]
    assert approval["state"] == state, approval
    assert approval["id"].startswith("apr_")
    return approval


def test_a_transfer_waits_for_the_owner_and_goes_through_once(world: World) -> None:
    first = world.transfer(101)
    pending = _approval(first)
    assert pending["code"] == "approval-pending"
    assert pending["retry_after"] == 1
    assert pending["expires_at"]
    assert pending["status_url"].endswith(f"/v1/approvals/{pending['id']}")
    assert pending["decision_id"].startswith("dec_")
    assert "waits for a human's approval" in first.content[0].text
    assert META_KEY in first.content[0].text  # says how to retry
    approval = pending["id"]
    assert world.ran == []
    assert _approval(world.transfer(101))["id"] == approval  # the same request again

    early = world.transfer(101, approval)  # retried before anyone decided: still pending
    assert _approval(early)["id"] == approval
    assert world.ran == []

    approved = world.decide(approval, "approve", reason="invoice 101 checked")
    assert approved.status_code == 200, approved.text
    through = world.transfer(101, approval)
    assert not through.is_error, through
    assert through.content[0].text == "sent 101 to acme"
    assert world.ran.count("transfer:101:acme") == 1

    replay = world.transfer(101, approval)  # single use
    used = _approval(replay, "consumed")
    assert used["code"] == "approval-used"
    assert "retry_after" not in used
    assert world.ran.count("transfer:101:acme") == 1

    # the trail: requested (linked to the gateway's deny), approved (by the owner, with
    # the reason), consumed (linked to the gateway's allow); the gateway's refusals of
    # the early retry and of the replay name the approval
    def linked() -> dict[str, dict[str, Any]] | None:
        events = {
            e["type"]: e
            for e in world.trail(agent_id=world.agent_id)
            if e.get("details", {}).get("approval_id") == approval
        }
        wanted = {"approval.requested", "approval.approved", "approval.consumed"}
        return events if wanted <= set(events) else None

    events = _until(linked)
    assert events is not None
    assert events["approval.approved"]["reason"] == "invoice 101 checked"
    deny = events["approval.requested"]["decision_id"]
    allow = events["approval.consumed"]["decision_id"]
    assert deny == pending["decision_id"]

    def gateway_events() -> dict[str, Any] | None:
        found = world.trail(agent_id=world.agent_id, resource_id="bank.transfer")
        decisions = {
            e["decision_id"]: e
            for e in found
            if e["type"] == "authz.decision" and e["source"] == "gateway/mcp-gw"
        }
        refusals = [
            e["reason"]
            for e in found
            if e["type"] == "api.request.rejected" and approval in (e.get("reason") or "")
        ]
        outcomes = [e for e in found if e["type"] == "tool.call" and e["decision_id"] == allow]
        if deny in decisions and allow in decisions and len(refusals) >= 2 and outcomes:
            return {"decisions": decisions, "refusals": refusals, "outcomes": outcomes}
        return None

    gateway = _until(gateway_events)
    assert gateway is not None, world.trail(agent_id=world.agent_id)
    assert gateway["decisions"][deny]["outcome"] == "denied"
    assert gateway["decisions"][allow]["outcome"] == "success"
    assert f"approval {approval} is pending" in gateway["refusals"]
    assert f"approval {approval} is consumed" in gateway["refusals"]
    assert gateway["outcomes"][0]["outcome"] == "success"


def test_an_approval_for_arguments_a_does_not_carry_arguments_b(world: World) -> None:
    approval = _approval(world.transfer(202))["id"]
    assert world.decide(approval, "approve").status_code == 200
    tampered = world.transfer(9_999_999, approval)  # approved for 202, tried with more
    refused = _approval(tampered, "mismatch")
    assert refused["code"] == "approval-mismatch"
    assert "for another call" in tampered.content[0].text
    assert not any(r.startswith("transfer:9999999") for r in world.ran)
    # the approval is left as it was, and still good for its own call
    assert not world.transfer(202, approval).is_error
    assert world.ran.count("transfer:202:acme") == 1


def test_a_denied_request_stays_refused(world: World) -> None:
    approval = _approval(world.transfer(303))["id"]
    assert world.decide(approval, "deny", reason="not ours").status_code == 200
    refused = _approval(world.transfer(303, approval), "denied")
    assert refused["code"] == "approval-denied"
    assert not any(r.startswith("transfer:303") for r in world.ran)


def test_a_timeout_denies(world: World) -> None:
    approval = _approval(world.transfer(404))["id"]
    with world.admin() as admin:  # long poll: answered when the sweep expires it
        r = admin.get(f"/v1/approvals/{approval}", params={"wait": TIMEOUT + 5}, timeout=20)
    assert r.json()["state"] == "expired"
    assert world.decide(approval, "approve").status_code == 409  # too late
    refused = _approval(world.transfer(404, approval), "expired")
    assert refused["code"] == "approval-expired"
    assert not any(r.startswith("transfer:404") for r in world.ran)


def test_a_malformed_approval_id_is_refused(world: World) -> None:
    with pytest.raises(MCPError) as caught:
        world.transfer(505, "apr_not-an-id")
    assert META_KEY in str(caught.value)
    assert not any(r.startswith("transfer:505") for r in world.ran)


def _approve_when_pending(
    world: World, before: set[str], verb: str = "approve"
) -> tuple[threading.Thread, list[str]]:
    """In a thread: approve (or deny) the first new pending request."""
    decided: list[str] = []

    def run() -> None:
        found = _until(lambda: world.pending_ids() - before, timeout=15)
        for approval in found or ():
            assert world.decide(approval, verb).status_code == 200
            decided.append(approval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, decided


def test_the_sdk_waits_for_approval_then_returns_the_real_result(world: World) -> None:
    thread, decided = _approve_when_pending(world, world.pending_ids())
    result = world.transfer(606, approval_wait=20)
    thread.join(timeout=20)
    assert not result.is_error, result
    assert result.content[0].text == "sent 606 to acme"
    assert len(decided) == 1
    assert world.ran.count("transfer:606:acme") == 1


def test_the_sdk_raises_when_the_owner_denies(world: World) -> None:
    thread, decided = _approve_when_pending(world, world.pending_ids(), verb="deny")
    with pytest.raises(ApprovalDenied) as caught:
        world.transfer(707, approval_wait=20)
    thread.join(timeout=20)
    assert [caught.value.approval_id] == decided
    assert caught.value.state == "denied"
    assert not any(r.startswith("transfer:707") for r in world.ran)


def test_the_sdk_gives_up_at_its_bound_and_raises_on_expiry(world: World) -> None:
    with pytest.raises(ApprovalPending) as pending:
        world.transfer(808, approval_wait=1.5)
    approval = pending.value.approval_id
    assert approval.startswith("apr_")
    # nobody decides: once it expires, the SDK's retry raises ApprovalExpired
    with world.admin() as admin:
        admin.get(f"/v1/approvals/{approval}", params={"wait": TIMEOUT + 5}, timeout=20)
    with pytest.raises(ApprovalExpired):
        world.transfer(808, approval, approval_wait=5)
    assert not any(r.startswith("transfer:808") for r in world.ran)


def test_a_gateway_that_holds_the_call_answers_once_approved(world: World) -> None:
    thread, decided = _approve_when_pending(world, world.pending_ids())
    result = world.transfer(909, url=world.held_url)  # one tools/call, no retry
    thread.join(timeout=20)
    assert not result.is_error, result
    assert result.content[0].text == "sent 909 to acme"
    assert len(decided) == 1
    assert world.ran.count("transfer:909:acme") == 1
