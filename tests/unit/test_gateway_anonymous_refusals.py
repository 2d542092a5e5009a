"""The enforcer with a budget of refusals naming nobody (adapters/gateway/enforcer.py):
which refusals it counts instead of recording (only those naming nobody: no access,
no token that verifies), the summary event it writes and that the control plane's
ingest parser and the OCSF mapping take, and the gateway configuration of the budget."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tests.unit.gateway_support import AGENT, GATEWAY, METADATA, Parties
from tests.unit.test_audit_formats import assert_valid
from tests.unit.test_gateway_http import _config

from agentiam.adapters.gateway.enforcer import REFUSAL_SUMMARY_EVENT_TYPE, Call, Enforcer
from agentiam.adapters.gateway.http_proxy import load_config
from agentiam.core.audit.cef import cef
from agentiam.core.audit.events import TraceContext
from agentiam.core.audit.ocsf import to_ocsf
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.enforcement import RateLimit, RateLimiter
from agentiam.core.enforcement.anonymous import AnonymousRefusalLimits, AnonymousRefusals
from agentiam.core.policy.model import EntityRef
from agentiam.errors import OAuthError, ServiceUnavailable
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import dpop_proof
from agentiam.services.enforcement_sync import parse_ingested_event

URL = GATEWAY + "/v1/invoices/1"
BURST = 3
PEER = "198.51.100.23"


def _parties(*, budget: bool = True) -> Parties:
    parties = Parties("permit (principal, action, resource);")
    anonymous = (
        AnonymousRefusals(
            AnonymousRefusalLimits(per_peer=RateLimit(0.001, BURST), overall=RateLimit(0.001, 100))
        )
        if budget
        else None
    )
    parties.enforcer = Enforcer(
        "test-gw",
        parties.link,  # type: ignore[arg-type]
        parties.sink,
        resource_metadata=METADATA,
        anonymous=anonymous,
    )
    return parties


def _authenticate(parties: Parties, headers: dict[str, list[str]]) -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        parties.enforcer.authenticate(
            authorization=headers.get("authorization", []),
            dpop=headers.get("dpop", []),
            method="GET",
            url=URL,
            trace=TraceContext.new(),
            peer=PEER,
        )
    return refused.value


def _rejected(parties: Parties) -> list[dict[str, Any]]:
    return [e for e in parties.sink.events if e["type"] == "api.request.rejected"]


def test_anonymous_refusals_past_the_budget_get_no_event_but_the_same_error() -> None:
    parties = _parties()
    errors = [_authenticate(parties, {}) for _ in range(10)]
    assert len(_rejected(parties)) == BURST
    first, last = errors[0], errors[-1]
    assert (first.oauth_status, first.error, first.headers, first.to_oauth()) == (
        last.oauth_status,
        last.error,
        last.headers,
        last.to_oauth(),
    )
    garbage = {"authorization": ["DPoP not-a-token"], "dpop": ["x"]}  # does not verify
    _authenticate(parties, garbage)
    assert len(_rejected(parties)) == BURST
    anonymous = parties.enforcer.anonymous
    assert anonymous is not None
    assert anonymous.summarized() == {401: 8}


def test_refusals_while_the_gateway_cannot_verify_are_always_recorded() -> None:
    """Past the outage bound every request gets 503 and no token verifies, so an
    agent's call looks like an anonymous one: each is recorded all the same, so that
    every call is in the trail (the spool's own bound bounds them)."""
    parties = _parties()
    for _ in range(BURST):
        _authenticate(parties, {})  # the budget is spent
    assert len(_rejected(parties)) == BURST
    for _ in range(5):
        parties.enforcer.refuse(
            None, trace=TraceContext.new(), status=503, reason="revocation feed stale", peer=PEER
        )
    assert len(_rejected(parties)) == BURST + 5
    assert parties.enforcer.anonymous is not None
    assert parties.enforcer.anonymous.drain() == []


def test_a_token_that_verifies_with_a_wrong_proof_is_always_recorded() -> None:
    """A stolen token shown with the thief's key names its agent: never summarized,
    even once the budget for the peer is spent."""
    parties = _parties()
    for _ in range(BURST + 2):
        _authenticate(parties, {})
    token = parties.token()
    thief = AgentKey.generate()
    stolen = {
        "authorization": [f"DPoP {token}"],
        "dpop": [dpop_proof(thief, method="GET", url=URL, access_token=token)],
    }
    for _ in range(5):
        _authenticate(parties, stolen)
    _authenticate(parties, {"authorization": [f"DPoP {token}"]})  # proof missing
    named = [e for e in _rejected(parties) if e["details"].get("client_id") == AGENT]
    assert len(named) == 6
    assert all(e["details"]["jkt"] == thief.key.thumbprint() for e in named[:5])


def test_refusals_of_an_authenticated_agent_and_before_authentication_with_its_token() -> None:
    """A refusal with access, or before authentication of a request whose token
    verifies, names the agent and is always recorded."""
    parties = _parties()
    access = parties.enforcer.authenticate(
        **parties.headers("GET", URL), method="GET", url=URL, trace=TraceContext.new(), peer=PEER
    )
    for _ in range(BURST):
        parties.enforcer.refuse(None, trace=TraceContext.new(), status=400, reason="x", peer=PEER)
    signed = parties.headers("GET", URL)
    for _ in range(4):
        parties.enforcer.refuse(access, trace=TraceContext.new(), status=404, reason="no route")
        parties.enforcer.refuse(
            None,
            trace=TraceContext.new(),
            status=413,
            reason="the request body is larger than 10 bytes",
            peer=PEER,
            **signed,
        )
    statuses = [e["details"]["status"] for e in _rejected(parties)]
    assert statuses.count(404) == 4
    assert statuses.count(413) == 4
    assert all(
        e["details"]["client_id"] == AGENT
        for e in _rejected(parties)
        if e["details"]["status"] == 413
    )
    # anonymous ones before authentication are within the budget: none is left now
    parties.enforcer.refuse(None, trace=TraceContext.new(), status=400, reason="y", peer=PEER)
    assert [e["details"]["status"] for e in _rejected(parties)].count(400) == BURST


def test_without_a_budget_every_refusal_is_recorded() -> None:
    """The in-process guard's enforcer, and a gateway with the bound off."""
    parties = _parties(budget=False)
    for _ in range(50):
        _authenticate(parties, {})
    assert len(_rejected(parties)) == 50


def _summary_event(parties: Parties) -> dict[str, Any]:
    anonymous = parties.enforcer.anonymous
    assert anonymous is not None
    traces = []
    for _ in range(BURST + 4):
        trace = TraceContext.new()
        traces.append(trace.trace_id)
        with pytest.raises(OAuthError):
            parties.enforcer.authenticate(
                authorization=[], dpop=[], method="GET", url=URL, trace=trace, peer=PEER
            )
    (summary,) = anonymous.drain()
    parties.enforcer.record_refusal_summary(summary)
    event = parties.sink.events[-1]
    assert event["type"] == REFUSAL_SUMMARY_EVENT_TYPE
    assert (event["details"]["first_trace_id"], event["details"]["last_trace_id"]) == (
        traces[BURST],
        traces[-1],
    )
    return event


def test_the_summary_event_is_what_ingest_takes() -> None:
    parties = _parties()
    event = _summary_event(parties)
    assert event["actor"] == {"type": "anonymous", "id": "-", "role": None}
    assert event["outcome"] == "denied"
    assert event["agent_id"] is None
    assert event["resource"] is None
    details = event["details"]
    assert details["peer"] == PEER
    assert details["count"] == 4
    assert details["statuses"] == [{"status": 401, "count": 4}]
    assert details["reasons"] == [{"reason": "invalid_token", "count": 4}]
    assert details["first_time"].endswith("Z")
    assert details["last_time"] >= details["first_time"]
    parsed = parse_ingested_event(event, 0, now=datetime.now(UTC))
    assert parsed.type == REFUSAL_SUMMARY_EVENT_TYPE
    assert parsed.to_dict()["details"] == details  # nothing redacted, nothing lost


def test_the_summary_event_maps_to_ocsf_with_its_count_and_period() -> None:
    event = _summary_event(_parties())
    out = to_ocsf(5, event)
    assert (out["class_uid"], out["activity_id"], out["activity_name"]) == (6003, 99, "Summary")
    assert out["count"] == 4
    assert out["start_time"] <= out["end_time"]
    assert out["src_endpoint"]["ip"] == PEER  # an IPv4 peer's key is its address
    assert "count" not in out["unmapped"]["details"]
    assert_valid(out)
    assert_valid(out, "1.8.0")
    assert "Anonymous refusals summarized" in cef(5, event)


# -- every refusal names its peer ---------------------------------------------------------

IPV6_PEER = "2001:db8::42"


def _peer_parties(policies: str, limiter: RateLimiter | None = None) -> Parties:
    parties = Parties(policies, limiter=limiter)
    parties.enforcer = Enforcer(
        "test-gw",
        parties.link,  # type: ignore[arg-type]
        parties.sink,
        resource_metadata=METADATA,
        limiter=limiter,
        anonymous=_parties().enforcer.anonymous,
    )
    return parties


def _call(resource: str = "invoice-7", tool: str = "invoices.read") -> Call:
    return Call(
        action="GET",
        resource=EntityRef("Endpoint", resource),
        detail=ApiCall(action="GET", url=URL, datatype="Endpoint", identifier=resource),
        tool=tool,
    )


def test_every_refusal_and_decision_event_names_the_peer_it_was_given() -> None:
    """Anonymous or not, before or after authentication, refused by the transport, the
    rate limit, the task scope, policy or the outage bound: the event's
    ``details.peer`` is the peer the transport passed. None given (the in-process
    guard): no peer."""
    limiter = RateLimiter(per_tool={"limited": RateLimit(0.001, 1)})
    parties = _peer_parties(
        'permit (principal, action, resource) unless { resource == Endpoint::"no" };',
        limiter,
    )
    enforcer = parties.enforcer
    _authenticate(parties, {})  # no token: within the budget, recorded
    access = enforcer.authenticate(
        **parties.headers("GET", URL), method="GET", url=URL, trace=TraceContext.new(), peer=PEER
    )
    trace = TraceContext.new
    enforcer.refuse(access, trace=trace(), status=404, reason="no route for GET", peer=PEER)
    enforcer.refuse(None, trace=trace(), status=400, reason="path refused: x", peer=IPV6_PEER)
    assert enforcer.decide(access, _call(tool="limited"), trace=trace(), peer=PEER).allowed
    limited = enforcer.decide(access, _call(tool="limited"), trace=trace(), peer=PEER)
    assert limited.status == 429
    denied = enforcer.decide(access, _call("no"), trace=trace(), peer=PEER)
    assert denied.status == 403
    assert enforcer.admit_request(access, "tools/list", trace=trace(), peer=PEER) is None
    enforcer.refuse_shared(access, enforcer.link.verifier.replayed(), trace=trace(), peer=PEER)
    parties.link.outage = True
    with pytest.raises(ServiceUnavailable):
        enforcer.decide(access, _call(), trace=trace(), peer=PEER)
    parties.link.outage = False
    enforcer.refuse(access, trace=trace(), status=404, reason="no peer given")

    rejected = _rejected(parties)
    assert [(e["details"]["status"], e["details"].get("peer")) for e in rejected] == [
        (401, PEER),  # anonymous, before authentication
        (404, PEER),  # an agent's, decided by the transport
        (400, IPV6_PEER),
        (429, PEER),  # the rate limit
        (401, PEER),  # a proof the replicas' cache had seen
        (503, PEER),  # past the outage bound
        (404, None),  # no peer given
    ]
    decisions = [e for e in parties.sink.events if e["type"] == "authz.decision"]
    assert [(e["outcome"], e["details"]["peer"]) for e in decisions] == [
        ("success", PEER),
        ("denied", PEER),
    ]


def test_the_task_scope_refusal_names_the_peer() -> None:
    parties = _peer_parties("permit (principal, action, resource);")
    scoped = parties.token(
        authorization_details=[
            {"type": "api_access", "actions": ["GET"], "locations": ["https://other.example/"]}
        ]
    )
    access = parties.enforcer.authenticate(
        **parties.headers("GET", URL, scoped), method="GET", url=URL, trace=TraceContext.new()
    )
    verdict = parties.enforcer.decide(access, _call(), trace=TraceContext.new(), peer=PEER)
    assert (verdict.status, verdict.error) == (403, "insufficient_scope")
    [event] = _rejected(parties)
    assert event["details"]["peer"] == PEER


def test_a_request_over_the_agents_rate_limit_names_the_peer() -> None:
    """An MCP ``initialize`` or listing over the agent's own bucket (admit_request)."""
    parties = _peer_parties(
        "permit (principal, action, resource);", RateLimiter(per_agent=RateLimit(0.001, 1))
    )
    access = parties.enforcer.authenticate(
        **parties.headers("GET", URL), method="GET", url=URL, trace=TraceContext.new()
    )
    enforcer = parties.enforcer
    assert enforcer.admit_request(access, "tools/list", trace=TraceContext.new(), peer=PEER) is None
    refused = enforcer.admit_request(access, "tools/list", trace=TraceContext.new(), peer=PEER)
    assert refused is not None
    assert refused.status == 429
    [event] = _rejected(parties)
    assert (event["action"], event["details"]["peer"]) == ("tools/list", PEER)


@pytest.mark.parametrize("peer", [PEER, IPV6_PEER])
def test_a_refusal_with_its_peer_survives_ingest_and_maps_to_ocsf_and_cef(peer: str) -> None:
    parties = _peer_parties("permit (principal, action, resource);")
    with pytest.raises(OAuthError):
        parties.enforcer.authenticate(
            authorization=[], dpop=[], method="GET", url=URL, trace=TraceContext.new(), peer=peer
        )
    [event] = _rejected(parties)
    assert event["details"]["peer"] == peer
    parsed = parse_ingested_event(event, 0, now=datetime.now(UTC)).to_dict()
    assert parsed["details"]["peer"] == peer  # the control plane keeps it as sent
    out = to_ocsf(3, parsed)
    assert out["src_endpoint"] == {"name": "gateway/test-gw", "ip": peer}
    assert "peer" not in out["unmapped"].get("details", {})
    assert_valid(out)
    assert_valid(out, "1.8.0")
    line = cef(3, parsed)
    expected = f" src={peer}" if ":" not in peer else f" c6a2={peer}"
    assert expected in line
    assert ("c6a2Label=Source IPv6 Address" in line) is (":" in peer)


def test_the_gateway_config_of_the_budget() -> None:
    default = load_config(_config()).gateway.anonymous_refusals
    assert default == AnonymousRefusalLimits()
    off = load_config(_config(audit={"anonymous_refusals": None})).gateway
    assert off.anonymous_refusals is None
    assert (
        load_config(_config(audit={"anonymous_refusals": "off"})).gateway.anonymous_refusals is None
    )
    set_ = load_config(
        _config(audit={"anonymous_refusals": {"per_peer": {"rate_per_second": 2, "burst": 4}}})
    ).gateway.anonymous_refusals
    assert set_ is not None
    assert set_.per_peer == RateLimit(2, 4)


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        (
            {"anonymous_refusals": {"summary_seconds": 0}},
            "audit.anonymous_refusals: summary_seconds",
        ),
        ({"anonymous_refusals": {"per_peer": {"burst": 1}}}, "audit.anonymous_refusals: per_peer"),
        ({"anonymous_refusals": {"max_peers": -1}}, "audit.anonymous_refusals: max_peers"),
        ({"anonymous_refusals": False}, "audit.anonymous_refusals: a mapping, or null"),
        ({"anonymous": {}}, "audit: unknown keys anonymous"),
        ("on", "audit: expected a mapping"),
    ],
)
def test_a_bad_budget_is_refused_at_start(audit: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(_config(audit=audit))
