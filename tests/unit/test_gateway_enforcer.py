"""The enforcer every gateway runs for every call: its order of checks (authenticate,
rate limit, task scope, policy), the audit event each verdict leaves (durable before
the verdict is returned), and its fail-closed answers (503) when the spool cannot take
an event or the control plane has been away past the outage bound."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from tests.unit.gateway_support import AGENT, GATEWAY, METADATA, Parties

from agentiam.adapters.gateway.enforcer import Call
from agentiam.core.audit.events import Outcome, TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.enforcement import RateLimit, RateLimiter
from agentiam.core.policy.model import EntityRef
from agentiam.errors import OAuthError, ServiceUnavailable

URL = GATEWAY + "/v1/invoices/7"
ALLOW_GET = f'permit (principal == Agent::"{AGENT}", action == Action::"GET", resource);'
TRACE = TraceContext.new()


def _call(action: str = "GET", url: str = URL, tool: str = "invoices.read") -> Call:
    resource = EntityRef("Endpoint", "invoice-7")
    return Call(
        action=action,
        resource=resource,
        detail=ApiCall(action=action, url=url, datatype="Endpoint", identifier="invoice-7"),
        tool=tool,
    )


def _access(parties: Parties, **claims: Any) -> VerifiedAccess:
    token = parties.token(**claims)
    return parties.enforcer.authenticate(
        **parties.headers("GET", URL, token), method="GET", url=URL, trace=TRACE
    )


# -- authenticate ---------------------------------------------------------------------------


def test_a_valid_dpop_request_authenticates_and_leaves_no_event() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    assert access.client_id == AGENT
    assert parties.sink.events == []


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("no token", "invalid_token"),
        ("other audience", "invalid_token"),
        ("bearer", "invalid_token"),
        ("proof for another url", "invalid_dpop_proof"),
        ("proof replayed", "invalid_dpop_proof"),
        ("revoked", "invalid_token"),
    ],
)
def test_refused_credentials_are_401_naming_the_metadata_and_audited(case: str, error: str) -> None:
    parties = Parties(ALLOW_GET)
    token = parties.token(audience="https://other.example" if case == "other audience" else GATEWAY)
    headers = parties.headers("GET", URL, token)
    if case == "no token":
        headers = {"authorization": [], "dpop": []}
    elif case == "bearer":
        headers = {"authorization": [f"Bearer {token}"], "dpop": []}
    elif case == "proof for another url":
        headers = parties.headers("GET", "https://evil.example/v1/invoices/7", token)
    elif case == "proof replayed":
        parties.enforcer.authenticate(**headers, method="GET", url=URL, trace=TRACE)
    elif case == "revoked":
        parties.revoked.apply([_agent_revocation()], now=2_000_000_000)
    with pytest.raises(OAuthError) as caught:
        parties.enforcer.authenticate(**headers, method="GET", url=URL, trace=TRACE)
    assert caught.value.oauth_status == 401
    assert caught.value.error == error
    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ")
    assert f'resource_metadata="{METADATA}"' in challenge
    [event] = parties.sink.events
    assert event["type"] == "api.request.rejected"
    assert event["outcome"] == Outcome.DENIED.value
    assert event["details"]["status"] == 401
    assert token not in str(event)  # the token is never written to the trail


def _agent_revocation() -> Any:
    from agentiam.core.credentials.revocations import Revocation, RevocationKind

    return Revocation(
        seq=1, kind=RevocationKind.AGENT, subject=AGENT, cutoff=2_000_000_000, expires=2**40
    )


def test_a_refusal_that_cannot_be_audited_is_503_not_401() -> None:
    parties = Parties(ALLOW_GET)
    parties.sink.broken = True
    with pytest.raises(ServiceUnavailable):
        parties.enforcer.authenticate(authorization=[], dpop=[], method="GET", url=URL, trace=TRACE)


def test_a_stale_revocation_set_refuses_every_token_with_503() -> None:
    parties = Parties(ALLOW_GET)
    parties.revoked._fresh_at = -1e9  # the feed has not answered for ages
    with pytest.raises(OAuthError) as caught:
        _access(parties)
    assert caught.value.oauth_status == 503
    assert parties.sink.types() == ["api.request.rejected"]


# -- decide: order of checks ----------------------------------------------------------------


def test_allowed_call_is_durable_before_the_verdict() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    verdict = parties.enforcer.decide(access, _call(), trace=TRACE)
    assert verdict.allowed
    assert verdict.status == 200
    [event] = parties.sink.events
    assert event["type"] == "authz.decision"
    assert event["outcome"] == Outcome.SUCCESS.value
    assert event["decision_id"] == verdict.decision_id
    assert event["source"] == "gateway/test-gw"
    assert event["trace"]["trace_id"] == TRACE.trace_id


def test_policy_deny_is_403_insufficient_scope_and_audited() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    verdict = parties.enforcer.decide(access, _call("DELETE"), trace=TRACE)
    assert (verdict.allowed, verdict.status, verdict.error) == (False, 403, "insufficient_scope")
    assert 'error="insufficient_scope"' in verdict.headers["WWW-Authenticate"]
    assert f'resource_metadata="{METADATA}"' in verdict.headers["WWW-Authenticate"]
    [event] = parties.sink.events
    assert (event["type"], event["outcome"]) == ("authz.decision", Outcome.DENIED.value)


def test_rate_limit_comes_before_task_scope_and_policy() -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=0.001, burst=1))
    parties = Parties(ALLOW_GET, limiter=limiter)
    access = _access(parties)
    assert parties.enforcer.decide(access, _call(), trace=TRACE).allowed
    asked = parties.link.asked
    verdict = parties.enforcer.decide(access, _call("DELETE"), trace=TRACE)  # also denied
    assert (verdict.status, verdict.error) == (429, "rate_limited")
    assert int(verdict.headers["Retry-After"]) >= 1
    assert parties.link.asked == asked  # policy was not consulted
    assert parties.sink.types()[-1] == "api.request.rejected"
    assert parties.sink.events[-1]["details"]["status"] == 429


def test_task_scope_comes_before_policy() -> None:
    """A token whose authorization_details cover only another location is refused
    even though policy would allow, and policy is never asked."""
    parties = Parties(ALLOW_GET)
    details = [{"type": "api_access", "locations": [GATEWAY + "/v1/reports"], "actions": ["GET"]}]
    access = _access(parties, authorization_details=details)
    verdict = parties.enforcer.decide(access, _call(), trace=TRACE)
    assert (verdict.status, verdict.error) == (403, "insufficient_scope")
    assert "WWW-Authenticate" in verdict.headers
    assert parties.link.asked == 0
    assert parties.sink.events[-1]["details"]["status"] == 403
    # ...and the same token may make the calls it was scoped to
    within = _call(url=GATEWAY + "/v1/reports/3")
    assert parties.enforcer.decide(access, within, trace=TRACE).allowed


# -- decide: fail closed -------------------------------------------------------------------


def test_an_allow_that_cannot_be_audited_is_503() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    parties.sink.broken = True
    with pytest.raises(ServiceUnavailable):
        parties.enforcer.decide(access, _call(), trace=TRACE)


@pytest.mark.parametrize("action", ["GET", "DELETE"])
def test_a_refusal_that_cannot_be_audited_is_503(action: str) -> None:
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=0.001, burst=1))
    parties = Parties(ALLOW_GET, limiter=limiter if action == "GET" else None)
    access = _access(parties)
    if action == "GET":
        parties.enforcer.decide(access, _call(), trace=TRACE)  # uses the one token
    parties.sink.broken = True
    with pytest.raises(ServiceUnavailable):
        parties.enforcer.decide(access, _call(action), trace=TRACE)


def test_past_the_outage_bound_every_call_is_503_and_audited() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    parties.link.outage = True
    with pytest.raises(ServiceUnavailable):
        parties.enforcer.decide(access, _call(), trace=TRACE)
    [event] = parties.sink.events
    assert event["type"] == "api.request.rejected"
    assert event["details"]["status"] == 503


# -- after the call ------------------------------------------------------------------------


def test_outcome_names_the_secret_by_version_never_by_value() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    call = _call()
    verdict = parties.enforcer.decide(access, call, trace=TRACE)
    parties.enforcer.record_outcome(
        access, call, verdict, trace=TRACE, outcome=Outcome.SUCCESS, status=201,
        secret="billing-key@3", duration_ms=12.5,
    )  # fmt: skip
    event = parties.sink.events[-1]
    assert event["type"] == "tool.call"
    assert event["decision_id"] == verdict.decision_id
    assert event["details"]["status"] == 201
    assert event["details"]["brokered"] == "billing-key@3"
    assert event["details"]["tool"] == "invoices.read"
    assert event["resource"] == {"type": "Endpoint", "id": "invoice-7"}


def test_refuse_audits_a_transport_refusal() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    parties.enforcer.refuse(access, trace=TRACE, status=404, reason="no route for GET")
    [event] = parties.sink.events
    assert (event["type"], event["agent_id"], event["details"]["status"]) == (
        "api.request.rejected",
        AGENT,
        404,
    )
    parties.sink.broken = True
    with pytest.raises(ServiceUnavailable):
        parties.enforcer.refuse(None, trace=TRACE, status=400, reason="bad path")


# -- what refusals and decisions tell detection ----------------------------------------------


def test_a_stolen_token_shown_with_another_key_names_its_agent_jti_and_the_presented_key() -> None:
    from agentiam.sdk.keys import AgentKey
    from agentiam.sdk.proofs import dpop_proof

    parties = Parties(ALLOW_GET)
    token = parties.token()
    jti = parties.verifier.verify_token(token, now=int(time.time())).jti
    thief = AgentKey.generate()
    proof = dpop_proof(thief, method="GET", url=URL, access_token=token)
    with pytest.raises(OAuthError) as caught:
        parties.enforcer.authenticate(
            authorization=[f"DPoP {token}"], dpop=[proof], method="GET", url=URL, trace=TRACE
        )
    assert caught.value.error == "invalid_dpop_proof"
    [event] = parties.sink.events
    assert event["actor"]["type"] == "anonymous"  # the request was not authenticated
    assert event["agent_id"] == AGENT
    details = event["details"]
    assert details["client_id"] == AGENT
    assert details["jti"] == jti
    assert details["jkt"] == thief.key.thumbprint()
    assert details["jkt"] != parties.dpop_key.key.thumbprint()
    assert "cnf.jkt" in event["reason"]
    # nothing secret: neither the token, nor the proof, nor their signatures
    text = json.dumps(event)
    for secret in (token, proof, token.rsplit(".", 1)[1], proof.rsplit(".", 1)[1]):
        assert secret not in text


def test_a_bound_token_shown_as_bearer_names_its_agent_without_a_key() -> None:
    parties = Parties(ALLOW_GET)
    token = parties.token()
    with pytest.raises(OAuthError):
        parties.enforcer.authenticate(
            authorization=[f"Bearer {token}"], dpop=[], method="GET", url=URL, trace=TRACE
        )
    [event] = parties.sink.events
    assert event["agent_id"] == AGENT
    assert "jkt" not in event["details"]
    assert token not in json.dumps(event)


@pytest.mark.parametrize("case", ["forged signature", "other audience", "revoked", "garbage"])
def test_a_token_that_does_not_verify_attributes_the_refusal_to_no_one(case: str) -> None:
    """What an unverified token claims is never trusted: a forger could name any agent."""
    from agentiam.sdk.keys import AgentKey
    from agentiam.sdk.proofs import dpop_proof

    parties = Parties(ALLOW_GET)
    token = parties.token(audience="https://other.example" if case == "other audience" else GATEWAY)
    if case == "forged signature":
        forger = Parties(ALLOW_GET)  # same claims, signed by a key the gateway does not know
        token = forger.token()
    elif case == "revoked":
        parties.revoked.apply([_agent_revocation()], now=2_000_000_000)
    elif case == "garbage":
        token = "not.a.token"
    thief = AgentKey.generate()
    proof = dpop_proof(thief, method="GET", url=URL, access_token=token)
    with pytest.raises(OAuthError):
        parties.enforcer.authenticate(
            authorization=[f"DPoP {token}"], dpop=[proof], method="GET", url=URL, trace=TRACE
        )
    [event] = parties.sink.events
    assert event["agent_id"] is None
    assert not {"client_id", "jti", "jkt"} & set(event["details"])


def test_an_unreadable_proof_still_names_the_verified_token_but_no_key() -> None:
    parties = Parties(ALLOW_GET)
    token = parties.token()
    with pytest.raises(OAuthError):
        parties.enforcer.authenticate(
            authorization=[f"DPoP {token}"], dpop=["x" * 20_000], method="GET", url=URL,
            trace=TRACE,
        )  # fmt: skip
    [event] = parties.sink.events
    assert event["agent_id"] == AGENT
    assert "jkt" not in event["details"]


def test_decision_and_outcome_carry_the_token_id_and_the_target() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    call = dataclasses.replace(_call(), target={"host": "billing.internal.example"})
    verdict = parties.enforcer.decide(access, call, trace=TRACE)
    parties.enforcer.record_outcome(
        access, call, verdict, trace=TRACE, outcome=Outcome.SUCCESS, status=200,
        secret=None, duration_ms=1.0,
    )  # fmt: skip
    decision, outcome = parties.sink.events
    assert decision["type"] == "authz.decision"
    assert decision["details"]["jti"] == outcome["details"]["jti"] == access.jti
    for event in (decision, outcome):
        assert event["details"]["target"] == {"host": "billing.internal.example"}
    # a refusal before policy names them too
    parties.enforcer.refuse(access, trace=TRACE, status=404, reason="no route", call=call)
    assert parties.sink.events[-1]["details"]["target"] == {"host": "billing.internal.example"}
    assert parties.sink.events[-1]["details"]["jti"] == access.jti


def test_without_a_target_no_target_member_is_written() -> None:
    parties = Parties(ALLOW_GET)
    access = _access(parties)
    parties.enforcer.decide(access, _call(), trace=TRACE)
    assert "target" not in parties.sink.events[0]["details"]
