"""The MCP gateway's ASGI endpoint in front of the SDK, with a stand-in enforcer: every
refusal it makes itself (Origin, batches, oversized or malformed calls, task scope,
rate limits, the outage bound, an audit write that fails) never reaches the MCP
server, and an allowed or policy-denied call reaches it with its decision."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from starlette.testclient import TestClient
from tests.unit.gateway_support import NoApprovals

from agentiam.adapters.gateway.enforcer import Call, SharedAdmission, SharedLimit, Verdict
from agentiam.adapters.gateway.mcp_listen import Streams
from agentiam.adapters.gateway.mcp_proxy import (
    _STATE_KEY,
    McpGateway,
    Namespace,
    _Endpoint,
    _Pending,
    _RequestState,
    _take,
    tool_call,
)
from agentiam.adapters.gateway.mcp_upstream import UpstreamServer
from agentiam.core.approvals_wire import META_KEY
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.errors import AgentIAMError, OAuthError, ServiceUnavailable

URL = "https://gw.example.com/mcp"
METADATA = f'resource_metadata="{URL.replace("/mcp", "")}/.well-known/oauth-protected-resource/mcp"'
ACCESS = VerifiedAccess(
    subject="agt_1",
    client_id="agt_1",
    scope=("mcp",),
    jti="tok_1",
    issued_at=0,
    expires_at=2**40,
    jkt="thumbprint",
    claims={"aud": URL},
)
ALLOWED = Verdict(True, 200, None, "allowed", decision_id="dec_1")


@dataclass
class FakeEnforcer:
    verdict: Verdict = ALLOWED
    failure: Exception | None = None
    decided: list[Call] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    refused_actions: list[str | None] = field(default_factory=list)
    source: str = "gateway/test"
    shared: AgentIAMError | None = None  # what the replicas' replay cache answers
    limit: SharedLimit | AgentIAMError | None = None  # what their shared rate limit answers
    limits: list[SharedLimit | None] = field(default_factory=list)  # passed to decide
    admitted: list[tuple[bool, str | None]] = field(default_factory=list)  # charge, tool

    async def shared_admit(
        self, access: VerifiedAccess, *, charge: bool, tool: str | None = None
    ) -> SharedAdmission:
        self.admitted.append((charge, tool))
        if self.shared is not None:
            return SharedAdmission(refusal=self.shared)
        if charge and isinstance(self.limit, AgentIAMError):
            return SharedAdmission(refusal=self.limit)
        return SharedAdmission(limit=self.limit if charge else None)  # type: ignore[arg-type]

    def refuse_shared(
        self, access: VerifiedAccess, error: Exception, *, trace: Any, peer: Any = None
    ) -> None:
        self.refuse(access, trace=trace, status=getattr(error, "oauth_status", 503), reason="x")

    def authenticate(
        self, *, authorization: Any, dpop: Any, method: str, url: str, trace: Any, peer: Any = None
    ) -> VerifiedAccess:
        assert url == URL  # the DPoP proof's htu is always the public URL
        if list(authorization) != ["DPoP good"]:
            raise OAuthError(
                "invalid_token",
                "the access token is not valid",
                status=401,
                headers={"WWW-Authenticate": f'DPoP error="invalid_token", {METADATA}'},
            )
        return ACCESS

    def decide(
        self,
        access: VerifiedAccess,
        call: Call,
        *,
        trace: Any,
        limit: SharedLimit | None = None,
        peer: Any = None,
    ) -> Verdict:
        if self.failure is not None:
            raise self.failure
        self.decided.append(call)
        self.limits.append(limit)
        return self.verdict

    def refuse(
        self,
        access: Any,
        *,
        trace: Any,
        status: int,
        reason: str,
        call: Any = None,
        action: str | None = None,
        **before_authentication: Any,  # peer, authorization, dpop
    ) -> None:
        if isinstance(self.failure, ServiceUnavailable):
            raise self.failure
        self.refused.append((status, reason))
        self.refused_actions.append(action)


class Downstream:
    """Stands for the SDK's Streamable HTTP app: records what reached it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        state = scope[_STATE_KEY]
        self.seen.append(
            {
                "body": message.get("body"),
                "state": state,
                "pending": state.pending,  # the handler takes it (one use)
                "user": scope["user"].username,
            }
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


class Listed:
    """Stands in for :class:`ListedTools`: every name but ``unlisted`` is listed."""

    def __init__(self, unlisted: frozenset[str] = frozenset()) -> None:
        self.unlisted = unlisted

    async def ensure(self, name: str) -> bool:
        return name not in self.unlisted

    def known(self, name: str) -> bool:
        return name not in self.unlisted

    def attributes(self, name: str) -> dict[str, Any]:
        return {}


@dataclass
class Stub:
    enforcer: FakeEnforcer
    location: str = URL
    approvals: Any = None
    tools: Listed = field(default_factory=Listed)
    namespace: Namespace = field(
        default_factory=lambda: Namespace(
            [UpstreamServer("bank", "https://b.internal/mcp", "bank.")]
        )
    )

    async def durably(self, step: Any) -> Any:
        return step()  # the fake enforcer's events are recorded at once

    outcomes: list[tuple[str, Any]] = field(default_factory=list)  # (tool, status)
    down: Exception | None = None  # what the live authorizer raises (the outage bound)

    def __post_init__(self) -> None:
        def authorizer() -> None:
            if self.down is not None:
                raise self.down

        link = type("L", (), {"issuer": "https://iam.example.com"})()
        link.authorizer = authorizer
        self.runtime = type("R", (), {"link": link})()
        self.sessions = type("S", (), {"_session_owners": {}})()
        self.streams = Streams(lambda access: None, per_owner=32, total=1024)
        self.call_for = partial(McpGateway.call_for, self)  # type: ignore[arg-type]

    def record_outcome(
        self, state: Any, pending: _Pending, outcome: Any, status: Any, secret: Any, ms: float
    ) -> None:
        self.outcomes.append((pending.call.tool, status))


def endpoint(enforcer: FakeEnforcer, approvals: Any = None) -> tuple[TestClient, Downstream]:
    downstream = Downstream()
    app = _Endpoint(Stub(enforcer, approvals=approvals), downstream)  # type: ignore[arg-type]
    return TestClient(app, base_url="https://gw.example.com"), downstream


def rpc(method: str, params: dict[str, Any], request_id: int = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def post(client: TestClient, body: Any, **headers: str) -> Any:
    headers = {"Authorization": "DPoP good", "DPoP": "proof", **headers}
    return client.post("/mcp", content=json.dumps(body), headers=headers)


CALL = rpc("tools/call", {"name": "bank.search", "arguments": {"query": "x"}})


def test_no_valid_token_is_401_naming_the_metadata() -> None:
    client, downstream = endpoint(FakeEnforcer())
    r = client.post("/mcp", content=json.dumps(CALL))
    assert r.status_code == 401
    assert METADATA in r.headers["www-authenticate"]
    assert r.json()["error"] == "invalid_token"
    assert post(client, CALL, Authorization="DPoP stolen").status_code == 401
    assert downstream.seen == []


def test_an_allowed_call_reaches_the_server_with_its_decision() -> None:
    enforcer = FakeEnforcer()
    client, downstream = endpoint(enforcer)
    assert post(client, CALL).status_code == 200
    # location: the gateway's public URL; placed in the server it routes to
    assert enforcer.decided == [
        tool_call("bank.search", {"query": "x"}, location=URL, server="bank")
    ]
    (seen,) = downstream.seen
    assert json.loads(seen["body"]) == CALL  # the body is replayed unchanged
    state: _RequestState = seen["state"]
    assert state.access is ACCESS
    assert seen["pending"] is not None
    assert seen["pending"].verdict is ALLOWED
    assert seen["user"] == "agt_1"  # the SDK binds handshake-era sessions to this


def test_a_policy_denial_reaches_the_server_to_be_answered_as_a_tool_error() -> None:
    denied = Verdict(False, 403, "insufficient_scope", "no permit", decision_id="dec_2")
    client, downstream = endpoint(FakeEnforcer(verdict=denied))
    assert post(client, CALL).status_code == 200
    assert downstream.seen[0]["pending"].verdict is denied


def test_the_task_scope_refusal_is_a_403_insufficient_scope_challenge() -> None:
    challenge = f'DPoP error="insufficient_scope", {METADATA}'
    scope = Verdict(
        False, 403, "insufficient_scope", "tool not listed", headers={"WWW-Authenticate": challenge}
    )
    client, downstream = endpoint(FakeEnforcer(verdict=scope))
    r = post(client, CALL)
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == challenge
    assert r.json()["id"] == 7
    assert "tool not listed" in r.json()["error"]["message"]
    assert downstream.seen == []


def test_over_the_rate_limit_is_a_429_with_retry_after() -> None:
    limited = Verdict(False, 429, "rate_limited", "rate limit", headers={"Retry-After": "3"})
    client, downstream = endpoint(FakeEnforcer(verdict=limited))
    r = post(client, CALL)
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    assert downstream.seen == []


@pytest.mark.parametrize(
    "failure",
    [
        ServiceUnavailable("the gateway has lost the control plane for longer than its bound"),
        ServiceUnavailable("the gateway cannot record this call durably; it was refused"),
    ],
)
def test_no_decision_or_no_durable_audit_refuses_the_call(failure: Exception) -> None:
    client, downstream = endpoint(FakeEnforcer(failure=failure))
    r = post(client, CALL)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == str(failure)
    assert downstream.seen == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([CALL, CALL], 400),  # a batch could carry calls past the decision
        (rpc("tools/call", {"name": 7}), 400),
        (rpc("tools/call", {"name": "bank.search", "arguments": [1, 2]}), 400),
        (rpc("tools/call", {"name": "x" * 300}), 400),
        (rpc("tools/call", {"name": "bank.t", "arguments": {f"a{i}": i for i in range(300)}}), 400),
        (rpc("resources/read", {"uri": "bank." + "x" * 600}), 400),
        (rpc("prompts/get", {"name": "bank.p", "arguments": {"n": 1}}), 400),
    ],
)
def test_malformed_calls_are_refused_and_audited(body: Any, status: int) -> None:
    enforcer = FakeEnforcer()
    client, downstream = endpoint(enforcer)
    assert post(client, body).status_code == status
    assert [s for s, _ in enforcer.refused] == [status]
    assert enforcer.decided == []
    assert downstream.seen == []
    # replicas: the proof was recorded in their replay cache, and no token was taken
    assert [charge for charge, _ in enforcer.admitted] == [False]


def test_a_batch_is_refused_as_a_post_not_as_authentication() -> None:
    """A JSON-RPC batch is refused after authentication: its record names the HTTP
    method (it has no single JSON-RPC method), not the ``authenticate`` default."""
    enforcer = FakeEnforcer()
    client, downstream = endpoint(enforcer)
    assert post(client, [CALL, CALL]).status_code == 400
    assert enforcer.refused_actions == ["POST"]
    assert downstream.seen == []


def test_a_foreign_origin_and_an_oversized_body_are_refused() -> None:
    enforcer = FakeEnforcer()
    client, downstream = endpoint(enforcer)
    assert post(client, CALL, Origin="https://evil.example").status_code == 403
    assert post(client, CALL, Origin="https://gw.example.com").status_code == 200
    huge = rpc("tools/call", {"name": "bank.search", "arguments": {"q": "x" * (5 << 20)}})
    assert post(client, huge).status_code == 413
    assert [s for s, _ in enforcer.refused] == [403, 413]
    assert len(downstream.seen) == 1
    # replicas: the oversized request's proof was recorded all the same, no token taken
    assert enforcer.admitted[-1] == (False, None)


def test_any_json_the_client_sends_is_classified_without_failing() -> None:
    """The request is classified before its proof is recorded in the replicas' cache:
    a method or an approval id of any JSON type must neither fail (a 500 with the
    proof unrecorded) nor pass as a call."""
    enforcer = FakeEnforcer(limit=SharedLimit(retry_after=None))
    client, downstream = endpoint(enforcer, approvals=NoApprovals())
    odd = {"jsonrpc": "2.0", "id": 1, "method": ["tools/call"], "params": {}}
    assert post(client, odd).status_code == 200  # not a guarded call: the SDK answers it
    assert enforcer.decided == []
    params = {"name": "bank.search", "arguments": {"query": "x"}, "_meta": {META_KEY: 1}}
    r = post(client, rpc("tools/call", params))
    assert r.status_code == 400
    assert "not one approval id" in r.json()["error"]["message"]
    assert [charge for charge, _ in enforcer.admitted] == [False, False]  # both recorded
    assert enforcer.decided == []
    assert len(downstream.seen) == 1


def test_a_proof_the_shared_cache_refuses_is_refused_whatever_the_body() -> None:
    """A replayed proof is refused (401) before the body is looked at, be it a call,
    oversized or not JSON: the replay never reaches the server or the decision."""
    replayed = OAuthError("invalid_dpop_proof", "the DPoP proof is not valid", status=401)
    for body in (CALL, {"q": "x" * (5 << 20)}, "not json"):
        enforcer = FakeEnforcer(shared=replayed)
        client, downstream = endpoint(enforcer)
        assert post(client, body).status_code == 401
        assert [s for s, _ in enforcer.refused] == [401]
        assert downstream.seen == []
        assert enforcer.decided == []


def test_unguarded_methods_pass_without_a_decision() -> None:
    enforcer = FakeEnforcer()
    client, downstream = endpoint(enforcer)
    assert post(client, rpc("tools/list", {})).status_code == 200
    assert post(client, {"jsonrpc": "2.0", "method": "tools/call", "params": {}}).status_code == 200
    assert enforcer.decided == []
    assert [seen["pending"] for seen in downstream.seen] == [None, None]


def test_a_handler_uses_only_the_decision_made_for_its_own_call() -> None:
    call = tool_call("bank.search", {"query": "x"}, location=URL)
    state = _RequestState(ACCESS, TraceContext.new(), _Pending("tools/call", call, ALLOWED))
    with pytest.raises(MCPError, match="no decision"):
        _take(state, "tools/call", "bank.search", {"query": "other"})
    assert state.pending is None  # used up, even when refused
    with pytest.raises(MCPError, match="no decision"):
        _take(state, "tools/call", "bank.search", {"query": "x"})
    state.pending = _Pending("tools/call", call, ALLOWED)
    assert _take(state, "tools/call", "bank.search", {"query": "x"}).verdict is ALLOWED
    state.pending = _Pending("tools/call", call, ALLOWED)
    with pytest.raises(MCPError):
        _take(state, "prompts/get", "bank.search", {"query": "x"})


def test_a_proof_the_shared_replay_cache_refuses_never_reaches_the_server() -> None:
    replayed = OAuthError(
        "invalid_dpop_proof",
        "the DPoP proof is not valid",
        status=401,
        reason="DPoP proof jti replayed",
        headers={"WWW-Authenticate": f'DPoP error="invalid_dpop_proof", {METADATA}'},
    )
    enforcer = FakeEnforcer(shared=replayed)
    client, downstream = endpoint(enforcer)
    r = post(client, CALL)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_dpop_proof"
    assert METADATA in r.headers["www-authenticate"]
    assert [s for s, _ in enforcer.refused] == [401]
    # a cache that cannot answer: refused, fail closed
    enforcer = FakeEnforcer(shared=ServiceUnavailable("the shared DPoP replay cache ..."))
    client, downstream_two = endpoint(enforcer)
    r = post(client, CALL)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert [s for s, _ in enforcer.refused] == [503]
    assert downstream.seen == downstream_two.seen == []
    assert enforcer.decided == []


def test_the_shared_rate_limit_is_taken_before_the_decision_and_passed_to_it() -> None:
    """Replicas: the call's tokens come from the shared buckets, and the decision
    uses that answer (it charges nothing locally); a store that cannot answer is a
    503 the server never sees, audited."""
    enforcer = FakeEnforcer(limit=SharedLimit(retry_after=7))
    client, downstream = endpoint(enforcer)
    post(client, CALL)
    assert enforcer.limits == [SharedLimit(retry_after=7)]
    assert enforcer.admitted == [(True, "bank.search")]
    enforcer = FakeEnforcer(limit=ServiceUnavailable("the replicas' shared rate limits ..."))
    client, downstream = endpoint(enforcer)
    r = post(client, CALL)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("the replicas' shared rate limits")
    assert [s for s, _ in enforcer.refused] == [503]
    assert downstream.seen == []
    assert enforcer.decided == []


def test_a_malformed_approval_id_is_refused_without_taking_a_shared_token() -> None:
    """Replicas: a tools/call naming an approval that is not one id is refused (400)
    after its proof is recorded, but takes no token from the shared buckets; a
    well-formed call takes one."""
    enforcer = FakeEnforcer(limit=SharedLimit(retry_after=None))
    client, downstream = endpoint(enforcer, approvals=NoApprovals())
    params = {"name": "bank.search", "arguments": {"query": "x"}, "_meta": {META_KEY: "x"}}
    r = post(client, rpc("tools/call", params))
    assert r.status_code == 400
    assert "not one approval id" in r.json()["error"]["message"]
    assert [charge for charge, _ in enforcer.admitted] == [False]
    assert downstream.seen == []
    assert enforcer.decided == []
    assert post(client, CALL).status_code == 200
    assert enforcer.admitted[1:] == [(True, "bank.search")]
