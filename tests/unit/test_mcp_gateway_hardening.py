"""The MCP gateway's endpoint, hardened after review r5 (stand-in enforcer and SDK app,
as in test_mcp_gateway_endpoint.py): handshake-era sessions are capped per agent and
subject, a resource URI cannot pass for a prompt, a listing past the outage bound is
an audited 503, and an allowed call the SDK refuses ends with a failed tool.call."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.unit.test_mcp_gateway_endpoint import (
    CALL,
    FakeEnforcer,
    Stub,
    post,
    rpc,
)

from agentiam.adapters.gateway.mcp_proxy import (
    MAX_SESSIONS_PER_OWNER,
    McpGateway,
    _Endpoint,
)
from agentiam.adapters.gateway.mcp_upstream import SESSION_IDLE_SECONDS
from agentiam.errors import ServiceUnavailable

INITIALIZE = rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}})


class Sdk:
    """Stands for the SDK's app: answers ``status`` without running a handler, and
    registers a session for its owner on a 200 without ``Mcp-Session-Id``."""

    def __init__(self, stub: Stub, status: int = 200) -> None:
        self.stub = stub
        self.status = status
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await receive()
        owners = self.stub.sessions._session_owners
        if self.status == 200 and not any(k == b"mcp-session-id" for k, _ in scope["headers"]):
            owners[f"s{len(owners)}"] = {
                "client_id": scope["user"].username,
                "issuer": "https://iam.example.com",
                "subject": "agt_1",
            }
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def gateway(status: int = 200) -> tuple[TestClient, Stub, Sdk, FakeEnforcer]:
    enforcer = FakeEnforcer()
    stub = Stub(enforcer)
    sdk = Sdk(stub, status)
    app = _Endpoint(stub, sdk)  # type: ignore[arg-type]
    return TestClient(app, base_url="https://gw.example.com"), stub, sdk, enforcer


def test_an_agent_opens_at_most_its_share_of_handshake_sessions() -> None:
    """Past MAX_SESSIONS_PER_OWNER sessions for one agent and subject, opening another
    is an audited 429 that never reaches the SDK; requests in an open session, modern
    requests (no session) and other agents are not counted against it."""
    client, stub, sdk, enforcer = gateway()
    for _ in range(MAX_SESSIONS_PER_OWNER):
        assert post(client, INITIALIZE).status_code == 200
    assert len(stub.sessions._session_owners) == MAX_SESSIONS_PER_OWNER
    refused = post(client, INITIALIZE)
    assert refused.status_code == 429
    assert "more than 32 open MCP sessions" in refused.json()["error"]["message"]
    assert enforcer.refused == [(429, "more than 32 open MCP sessions")]
    assert sdk.calls == MAX_SESSIONS_PER_OWNER
    assert post(client, rpc("ping", {}), **{"Mcp-Session-Id": "s0"}).status_code == 200
    assert (
        post(client, rpc("ping", {}), **{"MCP-Protocol-Version": "2026-07-28"}).status_code == 200
    )
    # another agent (or the same agent for another subject) has its own share
    for owner in stub.sessions._session_owners.values():
        owner["subject"] = "hum_other"
    assert post(client, INITIALIZE).status_code == 200
    assert SESSION_IDLE_SECONDS < 1800  # below the SDK's default of 30 minutes


def test_sessions_being_opened_count_against_the_share() -> None:
    """Sessions in the middle of their opening request count too, so concurrent
    initializes cannot pass the cap together."""
    client, _stub, _sdk, _enforcer = gateway()
    endpoint: _Endpoint = client.app  # type: ignore[assignment]
    endpoint._opening[("agt_1", "agt_1")] = MAX_SESSIONS_PER_OWNER
    assert post(client, INITIALIZE).status_code == 429
    del endpoint._opening[("agt_1", "agt_1")]
    assert post(client, INITIALIZE).status_code == 200
    assert endpoint._opening == {}  # released once served


def test_a_resource_uri_that_would_name_a_prompt_is_malformed() -> None:
    """A resources/read of "prompt:..." would be decided on that prompt's entity
    (DataSet::"prompt:<name>"): it is refused as malformed, audited, never decided."""
    stub = Stub(FakeEnforcer())
    call_for = McpGateway.call_for
    assert "names a prompt" in str(call_for(stub, "resources/read", {"uri": "prompt:summarize"}))  # type: ignore[arg-type]
    client, _stub, sdk, enforcer = gateway()
    refused = post(client, rpc("resources/read", {"uri": "prompt:summarize"}))
    assert refused.status_code == 400
    assert enforcer.decided == []
    assert sdk.calls == 0
    assert [status for status, _ in enforcer.refused] == [400]


@pytest.mark.parametrize(
    "method", ["tools/list", "resources/list", "resources/templates/list", "prompts/list"]
)
def test_past_the_outage_bound_a_listing_is_an_audited_503(method: str) -> None:
    client, stub, sdk, enforcer = gateway()
    stub.down = ServiceUnavailable("the gateway has lost the control plane")
    refused = post(client, rpc(method, {}))
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["id"] == 7
    assert enforcer.refused == [(503, "the gateway has lost the control plane")]
    assert sdk.calls == 0
    stub.down = None
    assert post(client, rpc(method, {})).status_code == 200


@pytest.mark.parametrize("status", [400, 404, 406])
def test_an_allowed_call_the_sdk_refuses_ends_with_a_failed_tool_call(status: int) -> None:
    """The SDK refuses the request before the handler takes its decision (headers,
    Accept, session): the call's tool.call carries the status the client got, and
    the decision cannot be used afterwards."""
    client, stub, _sdk, _enforcer = gateway(status)
    assert post(client, CALL).status_code == status
    assert stub.outcomes == [("bank.search", status)]
