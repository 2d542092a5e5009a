"""Human approval (step-up) in the in-process guard, against a real control plane
(uvicorn, SQLite): a guarded tool whose call policy puts under approval raises
``ApprovalPending`` naming the request, and runs once the owner approved, exactly
once, for exactly the arguments approved; a guard told to wait blocks (or awaits)
until the human decides. The same over MCP: a guarded ``MCPServer`` answers the
pending tool result of the MCP gateway, and the retry naming the approval runs.
Nothing is mocked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from tests.api.oauth_support import OAuthLive, oauth_live
from tests.api.test_guard import setup_policy, trail
from tests.support.live import until as _until

from agentiam.core.approvals_wire import META_KEY
from agentiam.guard import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalPending,
    Guard,
    ToolCallDenied,
)

TIMEOUT = 3.0  # approval_timeout_seconds of this control plane
PAY_NEEDS_APPROVAL = {
    "allow-pay": 'permit (principal is Agent, action == Action::"invoke_tool", '
    'resource == Tool::"pay");',
    "pay-needs-approval": 'forbid (principal, action == Action::"invoke_tool", '
    'resource == Tool::"pay") when { context.approval.state != "approved" };',
}


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(
        sqlite_url, approval_timeout_seconds=TIMEOUT, approval_sweep_seconds=0.1
    ) as server:
        setup_policy(server)
        with server.admin_client() as admin:
            r = admin.put("/v1/resources/Tool/pay", json={"attributes": {}})
            assert r.status_code == 200, r.text
            for policy_id, text in PAY_NEEDS_APPROVAL.items():
                r = admin.put(f"/v1/policies/{policy_id}", json={"text": text})
                assert r.status_code == 200, r.text
        yield server


def decide(live: OAuthLive, approval: str, verb: str = "approve", reason: str = "ok") -> None:
    with live.admin_client() as admin:
        token = admin.post(
            f"/v1/humans/{live.owner_id}/subject-tokens", json={"purpose": "approval"}
        )
        assert token.status_code == 201, token.text
    r = httpx.post(
        f"{live.url}/v1/approvals/{approval}/{verb}",
        json={"reason": reason},
        headers={"Authorization": f"Bearer {token.json()['subject_token']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def pending_ids(live: OAuthLive) -> set[str]:
    with live.admin_client() as admin:
        items = admin.get("/v1/approvals", params={"state": "pending"}).json()["items"]
    return {i["id"] for i in items}


def decide_when_pending(live: OAuthLive, verb: str = "approve") -> threading.Thread:
    """In a thread: approve (or deny) the first request that becomes pending."""
    before = pending_ids(live)

    def run() -> None:
        for approval in _until(lambda: pending_ids(live) - before, timeout=15) or ():
            decide(live, approval, verb)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_call_needing_approval_raises_pending_then_runs_once_approved(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[tuple[int, int]] = []

    @guard.tool()
    def pay(invoice: int, amount: int) -> str:
        ran.append((invoice, amount))
        return f"paid {amount}"

    with pytest.raises(ApprovalPending) as caught:
        pay(42, 900)
    pending = caught.value
    assert isinstance(pending, ToolCallDenied)  # existing handlers still catch it
    assert pending.approval_id.startswith("apr_")
    assert pending.approval_state == "pending"
    assert pending.decision_id is not None
    assert pending.retry_after == 2.0
    assert pending.status_url is not None
    assert ran == []
    with pytest.raises(ApprovalPending) as again:  # the same call finds the same request
        pay(42, 900)
    assert again.value.approval_id == pending.approval_id
    with guard.using_approval(pending.approval_id), pytest.raises(ApprovalPending):
        pay(42, 900)  # offered before anyone decided: still pending
    assert ran == []

    decide(live, pending.approval_id, reason="invoice 42 checked")
    with guard.using_approval(pending.approval_id):
        assert pay(42, 900) == "paid 900"
    assert ran == [(42, 900)]

    with guard.using_approval(pending.approval_id), pytest.raises(ApprovalDenied) as used:
        pay(42, 900)  # single use
    assert used.value.approval_state == "consumed"
    assert ran == [(42, 900)]

    # the trail: the control plane's consumed event names the guard's allowing decision
    assert guard.drain(10)
    consumed = _until(
        lambda: [
            e
            for e in trail(live, type="approval.consumed")
            if e["details"].get("approval_id") == pending.approval_id
        ]
    )
    allows = [
        e
        for e in trail(live, type="authz.decision", resource_id="pay", outcome="success")
        if e["source"] == "guard/test-agent"
    ]
    assert [e["decision_id"] for e in allows] == [consumed[0]["decision_id"]]
    refusals = [e["reason"] for e in trail(live, type="api.request.rejected")]
    assert f"approval {pending.approval_id} is consumed" in refusals


def test_tampered_arguments_cannot_use_the_approval(live: OAuthLive, guard: Guard) -> None:
    ran: list[int] = []

    @guard.tool()
    def pay(invoice: int, amount: int) -> None:
        ran.append(amount)

    with pytest.raises(ApprovalPending) as caught:
        pay(7, 100)
    approval = caught.value.approval_id
    decide(live, approval)
    with guard.using_approval(approval), pytest.raises(ApprovalDenied) as tampered:
        pay(7, 100_000)  # approved for 100
    assert tampered.value.approval_state == "mismatch"
    assert ran == []
    # the block API with the id as a keyword; the approval was left as it was
    with guard.call("pay", {"invoice": 7, "amount": 100}, approval=approval) as call:
        assert call.decision_id is not None
        ran.append(100)
    assert ran == [100]


def test_an_approval_offered_to_a_block_leaves_other_calls_alone(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[str] = []

    @guard.tool()
    def search(query: str) -> None:
        ran.append(f"search:{query}")

    @guard.tool()
    def pay(invoice: int, amount: int) -> None:
        ran.append(f"pay:{amount}")

    with pytest.raises(ApprovalPending) as caught:
        pay(9, 50)
    decide(live, caught.value.approval_id)
    with guard.using_approval(caught.value.approval_id):
        search("first")  # needs no approval: runs, leaves the approval for pay
        pay(9, 50)
    assert ran == ["search:first", "pay:50"]
    with pytest.raises(ValueError, match="approval id"):
        guard.using_approval("apr_forged").__enter__()


def test_a_waiting_guard_blocks_until_approved_sync_and_async(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[str] = []

    @guard.tool(approval_wait=20)
    def pay(invoice: int, amount: int) -> str:
        ran.append(f"sync:{amount}")
        return "paid"

    @guard.tool("pay", approval_wait=20)
    async def pay_async(invoice: int, amount: int) -> str:
        ran.append(f"async:{amount}")
        return "paid"

    thread = decide_when_pending(live)
    assert pay(1, 10) == "paid"
    thread.join(timeout=20)
    thread = decide_when_pending(live)
    assert asyncio.run(pay_async(2, 20)) == "paid"
    thread.join(timeout=20)
    assert ran == ["sync:10", "async:20"]


def test_denied_and_expired_raise_and_the_body_never_runs(live: OAuthLive, guard: Guard) -> None:
    ran: list[int] = []

    @guard.tool(approval_wait=20)
    def pay(invoice: int, amount: int) -> None:
        ran.append(amount)

    thread = decide_when_pending(live, verb="deny")
    with pytest.raises(ApprovalDenied) as denied:
        pay(3, 30)
    thread.join(timeout=20)
    assert denied.value.approval_state == "denied"

    async def nobody_decides() -> None:
        async with guard.call("pay", {"invoice": 4, "amount": 40}, approval_wait=TIMEOUT + 5):
            ran.append(40)

    with pytest.raises(ApprovalExpired) as expired:
        asyncio.run(nobody_decides())
    assert expired.value.approval_state == "expired"
    assert ran == []


def test_a_guarded_mcp_server_answers_pending_and_runs_the_approved_retry(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[int] = []
    server = MCPServer("tools")
    guard.protect(server)

    @server.tool()
    def pay(invoice: int, amount: int) -> str:
        ran.append(amount)
        return f"paid {amount}"

    async def call(arguments: dict[str, Any], approval: str | None = None) -> Any:
        async with Client(server) as client:
            return await client.session.call_tool(
                "pay", arguments, meta={META_KEY: approval} if approval else None
            )

    first = asyncio.run(call({"invoice": 5, "amount": 500}))
    assert first.is_error
    waiting = (first.meta or {})[META_KEY]
    assert waiting["state"] == "pending"
    assert waiting["retry_after"] == 2
    assert ran == []
    decide(live, waiting["id"])
    tampered = asyncio.run(call({"invoice": 5, "amount": 5000}, waiting["id"]))
    assert (tampered.meta or {})[META_KEY]["state"] == "mismatch"
    through = asyncio.run(call({"invoice": 5, "amount": 500}, waiting["id"]))
    assert not through.is_error
    assert ran == [500]
    replay = asyncio.run(call({"invoice": 5, "amount": 500}, waiting["id"]))
    assert (replay.meta or {})[META_KEY]["state"] == "consumed"
    malformed = asyncio.run(call({"invoice": 5, "amount": 500}, "apr_forged"))
    assert malformed.is_error
    assert ran == [500]
