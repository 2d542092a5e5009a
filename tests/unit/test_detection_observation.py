"""From stored audit events to observations, with the events built by the real
emitters: the decision point's ``decision_event``, the gateway enforcer (decisions,
tool calls, refusals), and the token and registry services' event shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tests.unit.gateway_support import AGENT, GATEWAY, Parties
from tests.unit.policy_support import agent as agent_record
from tests.unit.policy_support import authorizer, decide

from agentiam.adapters.gateway.enforcer import Call
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.detection.engine import DetectionEngine
from agentiam.core.detection.observation import MAX_TEXT, is_call, observe
from agentiam.core.enforcement import RateLimit, RateLimiter
from agentiam.core.policy.model import EntityRef
from agentiam.errors import OAuthError
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.agents import agent_summary
from agentiam.services.context import CallContext
from agentiam.services.decisions import decision_event

NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
URL = GATEWAY + "/v1/invoices/7"
ALLOW_GET = f'permit (principal == Agent::"{AGENT}", action == Action::"GET", resource);'
TRACE = TraceContext.new()
AGENT_CTX = CallContext(actor=Actor(ActorType.AGENT, "agt_1"), source="test", trace=TRACE)


def _call(action: str = "GET") -> Call:
    return Call(
        action=action,
        resource=EntityRef("Endpoint", "invoice-7"),
        detail=ApiCall(action=action, url=URL, datatype="Endpoint", identifier="invoice-7"),
        tool="invoices.read",
    )


# -- decisions ------------------------------------------------------------------------------


def test_a_decision_event_is_a_call_by_its_principal() -> None:
    az = authorizer('permit (principal, action, resource == Tool::"ok");', agents=[agent_record()])
    denied = decision_event(AGENT_CTX, decide(az, "agt_1", "invoke_tool", "nope"), now=NOW)
    obs = observe(7, denied.to_dict())
    assert obs is not None
    assert (obs.index, obs.event_id, obs.kind) == (7, denied.event_id, "authz.decision")
    assert (obs.agent_id, obs.action, obs.resource) == ("agt_1", "invoke_tool", "Tool::nope")
    assert obs.allowed is False
    assert obs.session == TRACE.trace_id  # a decision carries no token id
    assert obs.time == NOW
    assert is_call(obs)
    allowed = decision_event(AGENT_CTX, decide(az, "agt_1", "invoke_tool", "ok"), now=NOW)
    obs = observe(8, allowed.to_dict())
    assert obs is not None
    assert obs.allowed is True


def test_the_gateways_decision_tool_call_and_refusals_map_as_documented() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=0.001, burst=1))
    parties = Parties(ALLOW_GET, limiter=limiter)
    token = parties.token()
    access = parties.enforcer.authenticate(
        **parties.headers("GET", URL, token), method="GET", url=URL, trace=TRACE
    )
    verdict = parties.enforcer.decide(access, _call(), trace=TRACE)
    parties.enforcer.record_outcome(
        access,
        _call(),
        verdict,
        trace=TRACE,
        outcome=Outcome.SUCCESS,
        status=200,
        secret=None,
        duration_ms=3.0,
    )
    parties.enforcer.decide(access, _call(), trace=TRACE)  # over the rate limit
    decision, tool_call, limited = (observe(k, e) for k, e in enumerate(parties.sink.events))
    assert decision is not None
    assert tool_call is not None
    assert limited is not None
    assert decision.kind == "authz.decision"
    assert is_call(decision)
    assert decision.resource == "Endpoint::invoice-7"
    assert tool_call.kind == "tool.call"
    assert not is_call(tool_call)
    assert tool_call.session == access.jti
    assert tool_call.attributes["status"] == 200
    assert limited.kind == "api.request.rejected"
    assert is_call(limited)
    assert limited.allowed is False
    assert limited.attributes["refusal"] == "rate_limited"
    assert {o.agent_id for o in (decision, tool_call, limited)} == {AGENT}


def test_a_proof_made_with_another_key_is_classified_as_key_mismatch() -> None:
    parties = Parties(ALLOW_GET)
    token = parties.token()
    thief = AgentKey.generate()
    proof = dpop_proof(thief, method="GET", url=URL, access_token=token)
    with pytest.raises(OAuthError):
        parties.enforcer.authenticate(
            authorization=[f"DPoP {token}"], dpop=[proof], method="GET", url=URL, trace=TRACE
        )
    [event] = parties.sink.events
    # The token verified on its own: the enforcer names its agent (details.client_id)
    # and the presented key (details.jkt); this is the stolen-token signal.
    assert event["details"]["client_id"] == AGENT
    obs = observe(1, event)
    assert obs is not None
    assert obs.agent_id == AGENT
    assert obs.attributes["refusal"] == "key_mismatch"
    assert not is_call(obs)
    alerts = DetectionEngine().observe(obs)
    assert [a.detector for a in alerts] == ["escalation.stolen_token"]


@pytest.mark.parametrize(
    ("reason", "status", "refusal"),
    [
        ("invalid_token: DPoP-bound token presented as Bearer", 401, "key_mismatch"),
        ("invalid_dpop_proof: DPoP proof jti replayed", 401, "proof_replay"),
        ("invalid_token: token expired", 401, "authentication"),
        ("no route for GET", 404, "not_found"),
        ("the gateway has lost the control plane", 503, "unavailable"),
        ("not covered by the token's authorization_details", 403, "forbidden"),
    ],
)
def test_refusals_are_classified(reason: str, status: int, refusal: str) -> None:
    event = AuditEvent.create(
        type="api.request.rejected",
        actor=Actor(ActorType.AGENT, "agt_1"),
        action="authenticate",
        source="gateway/gw",
        trace=TRACE,
        now=NOW,
        outcome=Outcome.DENIED,
        agent_id="agt_1",
        reason=reason,
        details={"status": status, "tool": None},
    )
    obs = observe(1, event.to_dict())
    assert obs is not None
    assert obs.attributes["refusal"] == refusal


# -- tokens ---------------------------------------------------------------------------------


def test_an_issued_token_gives_its_jti_key_and_scope() -> None:
    event = AGENT_CTX.event(
        "token.exchanged",
        now=NOW,
        action="token",
        resource=ResourceRef("agent", "agt_1"),
        details={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "jti": "tok_child",
            "parent_jti": "tok_root",
            "aud": "https://api.example",
            "scope": "read",
            "jkt": "THUMB",
        },
    )
    obs = observe(3, event.to_dict())
    assert obs is not None
    assert (obs.kind, obs.agent_id, obs.session) == ("token.exchanged", "agt_1", "tok_child")
    assert obs.attributes["parent_jti"] == "tok_root"
    assert obs.attributes["jkt"] == "THUMB"
    assert obs.attributes["granted_scope"] == "read"
    assert obs.attributes["audience"] == "https://api.example"


@pytest.mark.parametrize(
    ("reason", "error", "widening"),
    [
        ("invalid_scope: not entitled to admin", "invalid_scope", False),
        ("invalid_scope: widening to admin", "invalid_scope", True),
        ("invalid_target: widening to audience https://prod", "invalid_target", True),
        ("invalid_client: bad assertion", "invalid_client", False),
    ],
)
def test_a_refused_token_request_names_its_oauth_error(
    reason: str, error: str, widening: bool
) -> None:
    # the shape TokenService.deny records once the client was proven
    event = AGENT_CTX.event(
        "token.denied",
        now=NOW,
        action="token",
        outcome=Outcome.DENIED,
        resource=ResourceRef("agent", "agt_1"),
        reason=reason,
        details={"authenticated": True},
    )
    obs = observe(1, event.to_dict())
    assert obs is not None
    assert obs.allowed is False
    assert (obs.attributes["error"], obs.attributes["widening"]) == (error, widening)


@pytest.mark.parametrize("authenticated", [False, None, "true", 1])
def test_a_refusal_of_an_unproven_client_is_not_charged_to_the_id_it_claimed(
    authenticated: object,
) -> None:
    """Anyone can send a token request claiming an agent's client_id; only a refusal
    after the client was proven is that agent's doing."""
    details = {} if authenticated is None else {"authenticated": authenticated}
    event = AGENT_CTX.event(
        "token.denied",
        now=NOW,
        action="token",
        outcome=Outcome.DENIED,
        resource=ResourceRef("agent", "agt_1"),
        reason="invalid_target: one resource per token",
        details=details,
    )
    assert observe(1, event.to_dict()) is None


@pytest.mark.parametrize("kind", ["token.denied", "token.issued", "agent.created"])
def test_control_plane_facts_shipped_by_an_enforcement_point_are_ignored(kind: str) -> None:
    event = AGENT_CTX.event(
        kind,
        now=NOW,
        action="token",
        outcome=Outcome.DENIED,
        resource=ResourceRef("agent", "agt_1"),
        reason="invalid_scope: forged",
        details={"authenticated": True, "parent_id": "agt_0", "jti": "tok_1"},
    ).to_dict()
    assert observe(1, {**event, "source": "control-plane/admin-api"}) is not None
    assert observe(1, {**event, "source": "gateway/payments"}) is None
    assert observe(1, {**event, "source": "guard/worker"}) is None


def test_an_exchange_refused_for_a_proof_from_another_key_is_a_key_mismatch() -> None:
    event = AGENT_CTX.event(
        "token.denied",
        now=NOW,
        action="token",
        outcome=Outcome.DENIED,
        resource=ResourceRef("agent", "agt_1"),
        reason="invalid_dpop_proof: actor token not bound to the proof key",
        details={"authenticated": True},
    )
    obs = observe(1, event.to_dict())
    assert obs is not None
    assert obs.attributes["refusal"] == "key_mismatch"


# -- spawning -------------------------------------------------------------------------------


def test_a_sub_agent_created_is_a_spawn_by_its_parent() -> None:
    child = agent_record("agt_child", environment="production", parent="agt_parent")
    event = AGENT_CTX.event(
        "agent.created",
        now=NOW,
        resource=ResourceRef("agent", child.id),
        details=agent_summary(child),
    )
    obs = observe(1, event.to_dict())
    assert obs is not None
    assert (obs.agent_id, obs.action, obs.resource) == (
        "agt_parent",
        "spawn_agent",
        "Agent::agt_child",
    )
    assert obs.attributes["parent_id"] == "agt_parent"
    assert obs.attributes["environment"] == "production"
    top = agent_record("agt_top")
    created = AGENT_CTX.event(
        "agent.created", now=NOW, resource=ResourceRef("agent", top.id), details=agent_summary(top)
    )
    assert observe(2, created.to_dict()) is None  # not a spawn


# -- what is ignored, and bounds ------------------------------------------------------------


def _event(**over: Any) -> dict[str, Any]:
    event = AGENT_CTX.event(
        "authz.decision", now=NOW, action="invoke_tool", resource=ResourceRef("Tool", "x")
    ).to_dict()
    event["agent_id"] = "agt_1"
    event.update(over)
    return event


def test_other_and_malformed_events_are_ignored() -> None:
    assert observe(1, _event(type="agent.updated")) is None
    assert observe(1, _event(time="yesterday")) is None
    assert observe(1, _event(time="2025-03-03T09:00:00")) is None  # no zone
    assert observe(1, _event(event_id=None)) is None
    assert observe(1, _event(agent_id=None, actor={"type": "admin_key", "id": "k"})) is None
    assert observe(1, {}) is None


def test_target_attributes_are_read_only_where_the_event_has_them() -> None:
    obs = observe(1, _event())
    assert obs is not None
    assert dict(obs.attributes) == {}
    target = {"host": "CRM.Example", "environment": "prod", "domain": "hr", "tenant": "acme"}
    obs = observe(1, _event(details={"target": target}))
    assert obs is not None
    assert dict(obs.attributes) == {
        "host": "crm.example",
        "environment": "prod",
        "data_domain": "hr",
        "tenant": "acme",
    }
    obs = observe(1, _event(resource={"type": "Environment", "id": "production"}))
    assert obs is not None
    assert obs.attributes["environment"] == "production"


def test_long_strings_are_cut() -> None:
    obs = observe(1, _event(action="a" * 10_000, agent_id="agt_" + "x" * 10_000))
    assert obs is not None
    assert len(obs.action) == MAX_TEXT
    assert len(obs.agent_id) == MAX_TEXT
