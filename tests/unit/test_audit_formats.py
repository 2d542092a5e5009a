"""The OCSF and CEF wire formats of audit events.

OCSF output is validated against the official OCSF schema (the export of schema.ocsf.io
shipped by ``ocsf-json-schema``, turned into JSON Schema by that package, checked with
``jsonschema``) for every event type the services emit, the planned ones and hostile
synthetic events. CEF output is read back with a small strict parser written here from
the CEF rules ("Implementing ArcSight CEF", Version 25), so escaping is checked by
round trip, not by comparing strings with the implementation's own escaping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from agentiam import __version__
from agentiam.core.audit import formats
from agentiam.core.audit.cef import cef
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.audit.ocsf import OCSF_VERSION, ocsf, to_ocsf

NOW = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
NOW_MS = 1795435200123
AGENT = "agt_01JF3Z9Q6W8K2M4N6P8R0T2V4X"
WORKER = "agt_01JF3Z9Q6W8K2M4N6P8R0T2V4Y"
HUMAN = "hum_01JF3Z9Q6W8K2M4N6P8R0T2V4Z"
TRACE = TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
ADMIN = Actor(ActorType.ADMIN_KEY, "adk_01JF3Z9Q6W8K2M4N6P8R0T2V50", role="admin")
PEP = Actor(ActorType.ADMIN_KEY, "adk_01JF3Z9Q6W8K2M4N6P8R0T2V51", role="verifier")
CLI = Actor(ActorType.CLI, "root")
AGENT_ACTOR = Actor(ActorType.AGENT, AGENT)
OAUTH = "control-plane/oauth"
ADMIN_API = "control-plane/admin-api"


def event(
    type_: str,
    *,
    actor: Actor = ADMIN,
    action: str | None = None,
    source: str = ADMIN_API,
    resource: ResourceRef | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    agent_id: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """An event as the services build it (``CallContext.event`` sets ``agent_id`` for an
    agent resource), in its stored form."""
    if agent_id is None and resource is not None and resource.type == "agent":
        agent_id = resource.id
    return AuditEvent.create(
        type=type_,
        actor=actor,
        action=action or type_,
        source=source,
        trace=TRACE,
        now=NOW,
        outcome=outcome,
        resource=resource,
        agent_id=agent_id,
        **kwargs,
    ).to_dict()


# -- the events the services emit (details as in src/agentiam/services) ---------------------

EMITTED: dict[str, dict[str, Any]] = {
    "token.issued": event(
        "token.issued",
        actor=AGENT_ACTOR,
        action="token",
        source=OAUTH,
        resource=ResourceRef("agent", AGENT),
        details={
            "grant_type": "client_credentials",
            "jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V60",
            "aud": "https://api.example.com",
            "scope": "read write",
            "exp": 1795435500,
            "token_type": "DPoP",
            "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            "authorization_details": None,
        },
    ),
    "token.issued/human_subject_token": event(
        "token.issued",
        actor=ADMIN,
        action="token",
        resource=ResourceRef("human", HUMAN),
        details={
            "grant_type": "human_subject_token",
            "jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V61",
            "exp": 1795435500,
            "may_act": AGENT,
        },
    ),
    "token.exchanged": event(
        "token.exchanged",
        actor=Actor(ActorType.AGENT, WORKER),
        action="token",
        source=OAUTH,
        resource=ResourceRef("agent", WORKER),
        initiating_human=HUMAN,
        delegation_chain=(AGENT, WORKER),
        details={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V62",
            "parent_jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V60",
            "actor_jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V63",
            "sub": HUMAN,
            "initiating_human": HUMAN,
            "actors": [AGENT, WORKER],
            "grant_id": "grt_01JF3Z9Q6W8K2M4N6P8R0T2V64",
            "aud": "https://api.example.com",
            "scope": "read",
            "authorization_details": [{"type": "tool_invocation", "tools": ["search"]}],
            "exp": 1795435400,
            "jkt": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
            "external_subject": None,
        },
    ),
    "token.denied": event(
        "token.denied",
        actor=AGENT_ACTOR,
        action="token",
        source=OAUTH,
        resource=ResourceRef("agent", AGENT),
        outcome=Outcome.DENIED,
        reason="invalid_client: client assertion signature does not verify",
    ),
    "token.denied/anonymous": event(
        "token.denied",
        actor=Actor(ActorType.ANONYMOUS, "oauth-client"),
        action="token",
        source=OAUTH,
        outcome=Outcome.DENIED,
        reason="invalid_request: grant_type is required",
    ),
    "token.introspected": event(
        "token.introspected",
        actor=PEP,
        action="introspect",
        source=OAUTH,
        resource=ResourceRef("agent", AGENT),
        details={"active": True, "jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V60"},
    ),
    "token.revoked": event(
        "token.revoked",
        actor=AGENT_ACTOR,
        source=OAUTH,
        resource=ResourceRef("agent", AGENT),
        reason="revoked by its client (RFC 7009)",
        details={"jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V60", "expires": 1795435500},
    ),
    "token.revoked/by_jti": event(
        "token.revoked",
        actor=CLI,
        source="cli",
        reason="leaked in a log",
        details={"jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V65", "expires": 1795521600},
    ),
    "authz.decision": event(
        "authz.decision",
        actor=PEP,
        action="read",
        resource=ResourceRef("Document", "plan.md"),
        agent_id=AGENT,
        initiating_human=HUMAN,
        delegation_chain=(AGENT,),
        decision_id="dec_01JF3Z9Q6W8K2M4N6P8R0T2V66",
        policy_version="42",
        risk_score=17.0,
        reason="policy0 permits read",
        details={
            "decision": "allow",
            "principal": {"type": "Agent", "id": AGENT},
            "policies": ["policy0"],
            "reasons": ["policy0 permits read"],
            "errors": [],
            "dry_run": None,
            "dry_run_outcome": None,
            "evaluation_us": 41.5,
            "arguments": [],
        },
    ),
    "authz.decision/deny": event(
        "authz.decision",
        actor=PEP,
        action="invoke_tool",
        resource=ResourceRef("Tool", "rm-rf"),
        agent_id=WORKER,
        initiating_human=HUMAN,
        delegation_chain=(AGENT, WORKER),
        decision_id="dec_01JF3Z9Q6W8K2M4N6P8R0T2V67",
        policy_version="42",
        risk_score=80.0,
        outcome=Outcome.DENIED,
        reason="no policy permits invoke_tool",
        details={
            "decision": "deny",
            "principal": {"type": "Agent", "id": WORKER},
            "policies": [],
            "reasons": ["no policy permits invoke_tool"],
            "errors": [],
            "dry_run": None,
            "dry_run_outcome": None,
            "evaluation_us": 12.0,
            "arguments": ["path", "recursive"],
        },
    ),
    "authz.decision/human": event(
        "authz.decision",
        actor=PEP,
        action="GET",
        resource=ResourceRef("Endpoint", "/reports"),
        decision_id="dec_01JF3Z9Q6W8K2M4N6P8R0T2V68",
        policy_version="42",
        risk_score=0.0,
        details={"decision": "allow", "principal": {"type": "Human", "id": HUMAN}},
    ),
    "agent.created": event(
        "agent.created",
        resource=ResourceRef("agent", AGENT),
        details={
            "name": "planner",
            "owners": [HUMAN],
            "sponsors": [],
            "purpose": "plans trips",
            "environment": "prod",
            "autonomy": "approve_each",
            "runtime": {"framework": "langgraph", "model": "gpt", "version": "1"},
            "labels": {"team": "travel"},
            "status": "pending",
        },
    ),
    "agent.updated": event(
        "agent.updated",
        resource=ResourceRef("agent", AGENT),
        details={"changes": {"purpose": {"from": "plans trips", "to": "books trips"}}},
    ),
    **{
        f"agent.{verb}": event(
            f"agent.{verb}",
            actor=CLI,
            source="cli",
            resource=ResourceRef("agent", AGENT),
            reason=f"{verb} by the operator",
            details={"from": before, "to": after},
        )
        for verb, before, after in (
            ("activate", "pending", "active"),
            ("suspend", "active", "suspended"),
            ("resume", "suspended", "active"),
            ("decommission", "suspended", "decommissioned"),
        )
    },
    "agent.key.added": event(
        "agent.key.added",
        resource=ResourceRef("agent", AGENT),
        details={
            "key_id": "key_01JF3Z9Q6W8K2M4N6P8R0T2V69",
            "kid": "k1",
            "alg": "ES256",
            "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        },
    ),
    "agent.key.retired": event(
        "agent.key.retired",
        resource=ResourceRef("agent", AGENT),
        reason="rotated",
        details={"key_id": "key_01JF3Z9Q6W8K2M4N6P8R0T2V69", "kid": "k1"},
    ),
    "agent.tokens_revoked": event(
        "agent.tokens_revoked",
        resource=ResourceRef("agent", AGENT),
        reason="suspected compromise",
        details={"cutoff": 1795435200},
    ),
    "human.created": event(
        "human.created",
        resource=ResourceRef("human", HUMAN),
        details={
            "display_name": "Hannah",
            "email": "hannah@example.com",
            "external_issuer": None,
            "external_subject": None,
        },
    ),
    "human.updated": event(
        "human.updated",
        resource=ResourceRef("human", HUMAN),
        details={"changes": {"display_name": {"from": "Hannah", "to": "Hannah B."}}},
    ),
    "admin_key.created": event(
        "admin_key.created",
        actor=CLI,
        source="cli",
        resource=ResourceRef("admin_key", "adk_01JF3Z9Q6W8K2M4N6P8R0T2V70"),
        details={"name": "siem", "role": "auditor", "prefix": "aiam_k3x9"},
    ),
    "admin_key.revoked": event(
        "admin_key.revoked",
        resource=ResourceRef("admin_key", "adk_01JF3Z9Q6W8K2M4N6P8R0T2V70"),
        details={"prefix": "aiam_k3x9"},
    ),
    "signing_key.created": event(
        "signing_key.created",
        resource=ResourceRef("signing_key", "sk-2026-11"),
        details={
            "alg": "ES256",
            "activates_at": "2026-11-23T12:00:00+00:00",
            "replaces": ["sk-2026-10"],
        },
    ),
    # refused: this replica's master key does not open a current key (no key made)
    "signing_key.created/refused": event(
        "signing_key.created",
        outcome=Outcome.FAILURE,
        reason="no signing key was created: the configured master key (88715f8d21225f88) "
        "does not open the current signing key sk-2026-11: sealed under master key "
        "26072d04535407f6, but the configured master key is 88715f8d21225f88",
        details={
            "alg": "ES256",
            "activates_at": "2026-11-23T12:01:00+00:00",
            "master_key_id": "88715f8d21225f88",
            "unopened_kid": "sk-2026-11",
        },
    ),
    "signing_key.retired": event(
        "signing_key.retired",
        resource=ResourceRef("signing_key", "sk-2026-10"),
        reason="scheduled rotation",
    ),
    "master_key.rewrapped": event(
        "master_key.rewrapped",
        actor=CLI,
        source="cli",
        resource=ResourceRef("master_key", "26072d04535407f6"),
        details={
            "signing_keys": 3,
            "from_key_id": "88715f8d21225f88",
            "to_key_id": "26072d04535407f6",
        },
    ),
    "assessment.completed": event(
        "assessment.completed",
        action="assessment.run",
        resource=ResourceRef("assessment", "asm_01JF3Z9Q6W8K2M4N6P8R0T2V68"),
        details={
            "overall": 1.85,
            "bank_version": "2025.1",
            "measured_share": 0.64,
            "ladders": {"agent_iam": "foundation", "governance": None},
            "report_sha256": "ab" * 32,
        },
    ),
    "policy.changed": event(
        "policy.changed",
        action="policy.put",
        resource=ResourceRef("policy_set", "43"),
        details={
            "version": 43,
            "previous_version": 42,
            "put": {"policy0": "sha256:ab12"},
            "deleted": [],
            "modes": {"policy0": "enforce"},
            "changed": 1,
            "comment": "allow reads",
        },
    ),
    "resource.put": event(
        "resource.put",
        resource=ResourceRef("Tool", "search"),
        details={
            "attributes": {"classification": "internal"},
            "parents": [],
            "tags": {},
            "version": 3,
        },
    ),
    "resource.deleted": event("resource.deleted", resource=ResourceRef("Tool", "search")),
    "delegation.granted": event(
        "delegation.granted",
        resource=ResourceRef("agent", AGENT),
        details={
            "grant_id": "grt_01JF3Z9Q6W8K2M4N6P8R0T2V64",
            "human_id": HUMAN,
            "scopes": ["read"],
            "audiences": ["https://api.example.com"],
            "authorization_details": [],
            "max_depth": 2,
            "expires_at": "2026-11-24T12:00:00+00:00",
        },
    ),
    "delegation.revoked": event(
        "delegation.revoked",
        resource=ResourceRef("agent", AGENT),
        reason="task done",
        details={"grant_id": "grt_01JF3Z9Q6W8K2M4N6P8R0T2V64", "human_id": HUMAN, "cutoff": 1},
    ),
    "delegation.human_revoked": event(
        "delegation.human_revoked",
        resource=ResourceRef("human", HUMAN),
        reason="left the company",
        details={"grants": 3, "cutoff": 1795435200},
    ),
    "api.read": event(
        "api.read",
        action="audit.list",
        details={"outcome": "denied", "limit": 100},
    ),
    "api.read/resource": event(
        "api.read", action="agents.get", resource=ResourceRef("agent", AGENT)
    ),
    "api.request.rejected": event(
        "api.request.rejected",
        actor=Actor(ActorType.ANONYMOUS, "-"),
        action="DELETE /v1/agents/{agent_id}",
        outcome=Outcome.DENIED,
        reason="authentication-required",
        details={"status": 401, "detail": "no admin key was presented"},
    ),
    "api.request.rejected/invalid": event(
        "api.request.rejected",
        action="POST /v1/agents",
        outcome=Outcome.FAILURE,
        reason="invalid-input",
        details={"status": 422, "detail": "owners must not be empty"},
    ),
    # a gateway's refusal names the connection's peer (adapters/gateway/enforcer.py)
    "api.request.rejected/gateway": event(
        "api.request.rejected",
        actor=Actor(ActorType.ANONYMOUS, "-"),
        action="authenticate",
        source="gateway/billing-gw",
        outcome=Outcome.DENIED,
        reason="invalid_token: the access token is missing",
        details={"status": 401, "tool": None, "peer": "192.0.2.10"},
    ),
    "api.request.rejected/gateway-ipv6": event(
        "api.request.rejected",
        actor=AGENT_ACTOR,
        action="GET",
        source="gateway/billing-gw",
        outcome=Outcome.DENIED,
        agent_id=AGENT,
        resource=ResourceRef("Endpoint", "invoice-7"),
        reason="rate limit for invoices.read exceeded",
        details={"status": 429, "tool": "invoices.read", "peer": "2001:db8::7"},
    ),
}

PLANNED: dict[str, dict[str, Any]] = {
    "detection.alert": event(
        "detection.alert",
        actor=Actor(ActorType.SYSTEM, "agentiam"),
        action="detect",
        source="control-plane/detection",
        resource=ResourceRef("agent", WORKER),
        risk_score=91.5,
        reason="denied calls rose 40x over the baseline",
        details={
            "alert_id": "alr_1",
            "detector": "denied_rate",
            "title": "Spike in denied calls",
            "severity": "high",
            "window_seconds": 300,
        },
    ),
    "response.action": event(
        "response.action",
        actor=Actor(ActorType.SYSTEM, "agentiam"),
        action="response.suspend",
        source="control-plane/response",
        resource=ResourceRef("agent", WORKER),
        reason="alert alr_1",
        details={"alert_id": "alr_1", "severity": "medium"},
    ),
    "tool.call": event(
        "tool.call",
        actor=Actor(ActorType.AGENT, WORKER),
        action="invoke_tool",
        source="gateway/mcp",
        resource=ResourceRef("Tool", "search"),
        initiating_human=HUMAN,
        delegation_chain=(AGENT, WORKER),
        decision_id="dec_01JF3Z9Q6W8K2M4N6P8R0T2V67",
        policy_version="42",
        details={"tool": "search", "arguments": {"query": "flights", "token": "x"}},
    ),
    "mcp.stream.opened": event(
        "mcp.stream.opened",
        actor=Actor(ActorType.AGENT, WORKER),
        action="subscriptions/listen",
        source="gateway/mcp",
        initiating_human=HUMAN,
        delegation_chain=(AGENT, WORKER),
        details={
            "stream": "listen",
            "status": 200,
            "subject": HUMAN,
            "servers": ["files", "search"],
            "jti": "tok_1",
        },
    ),
}

HOSTILE = (
    "pipe| back\\slash eq=ual nl\nline cr\rret nul\x00 esc\x1b del\x7f nel\x85 "
    "ls\u2028 ps\u2029 tab\t é😀 \\n \\="
)

SYNTHETIC: dict[str, dict[str, Any]] = {
    "unknown type": event("quota.exceeded", action="quota", details={"limit": 10}),
    "missing resource": event("agent.suspend", actor=CLI, source="cli", reason="no resource"),
    "denied": event("agent.created", outcome=Outcome.DENIED, reason="forbidden"),
    "failure": event("policy.changed", outcome=Outcome.FAILURE, reason="conflict"),
    "long chain": event(
        "token.exchanged",
        actor=AGENT_ACTOR,
        source=OAUTH,
        resource=ResourceRef("agent", AGENT),
        initiating_human=HUMAN,
        delegation_chain=tuple(f"agt_{i:026d}" for i in range(64)),
        details={"sub": HUMAN},
    ),
    "hostile": event(
        "authz.decision",
        actor=Actor(ActorType.ADMIN_KEY, HOSTILE, role=HOSTILE),
        action=HOSTILE,
        source=HOSTILE,
        resource=ResourceRef(HOSTILE, HOSTILE),
        agent_id=HOSTILE,
        initiating_human=HOSTILE,
        delegation_chain=(HOSTILE, HOSTILE),
        decision_id=HOSTILE,
        policy_version=HOSTILE,
        risk_score=33.3,
        reason=HOSTILE,
        details={HOSTILE: HOSTILE, "decision": HOSTILE, "policies": [HOSTILE]},
    ),
    "hostile type": event(HOSTILE, action=HOSTILE, reason=HOSTILE),
}

ALL = {**EMITTED, **PLANNED, **SYNTHETIC}


# -- OCSF ----------------------------------------------------------------------------------


@cache
def _validator(version: str, class_uid: int, profiles: tuple[str, ...]) -> Any:
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version))
    name = schema.lookup_class_name_from_uid(class_uid)
    class_schema = schema.get_class_schema(name, list(profiles))
    jsonschema.Draft202012Validator.check_schema(class_schema)
    return jsonschema.Draft202012Validator(class_schema)


def assert_valid(out: Mapping[str, Any], version: str = OCSF_VERSION) -> None:
    """Valid under the official schema of its class, with the profiles it declares."""
    profiles = tuple(out["metadata"].get("profiles", ()))
    errors = sorted(
        _validator(version, out["class_uid"], profiles).iter_errors(out), key=lambda e: e.path
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:300]}" for e in errors)


@pytest.mark.parametrize("name", list(ALL))
def test_ocsf_is_valid_under_the_official_schema(name: str) -> None:
    out = to_ocsf(7, ALL[name])
    assert out["metadata"]["version"] == "1.7.0"
    assert_valid(out)


@pytest.mark.parametrize("name", list(ALL))
def test_ocsf_stays_valid_under_1_8_0(name: str) -> None:
    assert_valid(to_ocsf(7, ALL[name]), "1.8.0")


def test_the_validator_rejects_what_the_schema_forbids() -> None:
    """The schema check is live: each of these breaks the official schema."""
    good = to_ocsf(1, EMITTED["token.issued"])
    assert_valid(good)
    broken: list[dict[str, Any]] = []
    for mutate in (
        lambda o: o.pop("user"),  # Authentication requires user
        lambda o: o.update(type_uid=300299 + 1),  # not a type of the class
        lambda o: o.update(activity_id=42),
        lambda o: o["metadata"].pop("profiles"),  # action_id needs security_control
        lambda o: o.update(invented="x"),
        lambda o: o["actor"]["user"].update(type_id=5),
        lambda o: o.update(time="2026-11-23T12:00:00Z"),
    ):
        copy = json.loads(json.dumps(good))
        mutate(copy)
        broken.append(copy)
    for copy in broken:
        with pytest.raises(AssertionError):
            assert_valid(copy)


CLASSES = {
    "token.issued": (3002, 1),
    "token.issued/human_subject_token": (3002, 1),
    "token.exchanged": (3002, 1),
    "token.denied": (3002, 1),
    "token.denied/anonymous": (3002, 1),
    "token.introspected": (6003, 2),
    "token.revoked": (3004, 9),
    "token.revoked/by_jti": (3004, 9),
    "authz.decision": (6003, 2),
    "authz.decision/deny": (6003, 99),
    "authz.decision/human": (6003, 2),
    "agent.created": (3001, 1),
    "agent.updated": (3001, 99),
    "agent.activate": (3001, 2),
    "agent.suspend": (3001, 5),
    "agent.resume": (3001, 2),
    "agent.decommission": (3001, 6),
    "agent.key.added": (3004, 1),
    "agent.key.retired": (3004, 9),
    "agent.tokens_revoked": (3004, 9),
    "human.created": (3001, 1),
    "human.updated": (3001, 99),
    "admin_key.created": (3004, 1),
    "admin_key.revoked": (3004, 9),
    "signing_key.created": (3004, 1),
    "signing_key.created/refused": (3004, 1),
    "signing_key.retired": (3004, 9),
    "master_key.rewrapped": (3004, 3),
    "policy.changed": (3004, 3),
    "resource.put": (3004, 3),
    "resource.deleted": (3004, 4),
    "delegation.granted": (3004, 1),
    "delegation.revoked": (3004, 9),
    "delegation.human_revoked": (3004, 9),
    "api.read": (6003, 2),
    "api.read/resource": (6003, 2),
    "api.request.rejected": (6003, 4),
    "api.request.rejected/invalid": (6003, 1),
    "api.request.rejected/gateway": (6003, 99),
    "api.request.rejected/gateway-ipv6": (6003, 99),
    "detection.alert": (2004, 1),
    "response.action": (3004, 12),
    "tool.call": (6003, 99),
    "mcp.stream.opened": (6003, 2),
    "unknown type": (0, 99),
    "missing resource": (3001, 5),
    "hostile type": (0, 99),
}


@pytest.mark.parametrize(("name", "expected"), CLASSES.items())
def test_ocsf_class_and_activity(name: str, expected: tuple[int, int]) -> None:
    out = to_ocsf(3, ALL[name])
    class_uid, activity_id = expected
    assert (out["class_uid"], out["activity_id"]) == expected
    assert out["type_uid"] == class_uid * 100 + activity_id
    assert out["category_uid"] == class_uid // 1000


def test_every_emitted_type_has_a_class() -> None:
    """No event type the services emit falls back to Base Event."""
    emitted = {e["type"] for e in EMITTED.values()}
    assert len(emitted) == 31
    for name, ev in {**EMITTED, **PLANNED}.items():
        assert to_ocsf(0, ev)["class_uid"] != 0, name


def test_ocsf_common_attributes() -> None:
    ev = EMITTED["token.exchanged"]
    out = to_ocsf(12345, ev)
    assert out["time"] == NOW_MS
    assert out["metadata"] == {
        "version": "1.7.0",
        "product": {"name": "AgentIAM", "vendor_name": "AgentIAM", "version": __version__},
        "uid": ev["event_id"],
        "original_event_uid": ev["event_id"],
        "event_code": "token.exchanged",
        "log_version": "1",
        "sequence": 12345,
        "correlation_uid": TRACE.trace_id,
        "source": OAUTH,
        "profiles": ["security_control"],
    }
    assert (out["status_id"], out["status"], out["status_code"]) == (1, "Success", "success")
    assert (out["severity_id"], out["severity"]) == (1, "Informational")
    assert (out["action_id"], out["disposition_id"]) == (1, 1)
    assert out["type_name"] == "Authentication: Logon"
    assert out["unmapped"]["span_id"] == TRACE.span_id


def test_token_exchange_names_the_human_as_user_and_the_agent_as_actor() -> None:
    out = to_ocsf(0, EMITTED["token.exchanged"])
    assert out["user"] == {"uid": HUMAN, "type_id": 1, "type": "User"}
    assert out["actor"] == {"user": {"uid": WORKER, "type_id": 4, "type": "Service"}}
    assert out["auth_protocol_id"] == 6
    assert out["service"] == {"name": OAUTH}
    assert out["session"] == {
        "uid": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V62",
        "expiration_time": 1795435400 * 1000,
        "credential_uid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
    }
    unmapped = out["unmapped"]
    assert unmapped["delegation_chain"] == [AGENT, WORKER]
    assert "initiating_human" not in unmapped  # it is the user
    assert unmapped["details"]["parent_jti"] == "tok_01JF3Z9Q6W8K2M4N6P8R0T2V60"
    assert not {"jti", "exp", "jkt", "sub"} & unmapped["details"].keys()


def test_client_credentials_token_names_the_agent_as_user() -> None:
    out = to_ocsf(0, EMITTED["token.issued"])
    assert out["user"]["uid"] == AGENT
    assert "resource" not in out["unmapped"]
    assert out["unmapped"]["details"]["aud"] == "https://api.example.com"


def test_denied_token_request() -> None:
    out = to_ocsf(0, EMITTED["token.denied/anonymous"])
    assert (out["status_id"], out["status"], out["status_code"]) == (2, "Failure", "denied")
    assert (out["action_id"], out["disposition_id"], out["disposition"]) == (2, 2, "Blocked")
    assert out["status_detail"] == "invalid_request: grant_type is required"
    assert out["user"] == {"uid": "oauth-client", "type_id": 0, "type": "Unknown"}
    assert out["severity_id"] == 3


def test_decision_actor_is_the_agent_and_the_caller_invoked_it() -> None:
    out = to_ocsf(0, EMITTED["authz.decision/deny"])
    assert out["actor"] == {
        "user": {"uid": WORKER, "type_id": 4, "type": "Service"},
        "invoked_by": f"admin_key:{PEP.id}",
    }
    assert out["unmapped"]["actor"] == {"type": "admin_key", "id": PEP.id, "role": "verifier"}
    assert out["api"] == {
        "operation": "invoke_tool",
        "service": {"name": ADMIN_API},
        "request": {"uid": "dec_01JF3Z9Q6W8K2M4N6P8R0T2V67"},
    }
    assert out["activity_name"] == "invoke_tool"
    assert out["resources"] == [{"uid": "rm-rf", "type": "Tool"}]
    assert (out["disposition_id"], out["disposition"]) == (26, "Unauthorized")
    assert out["policy"] == {"type": "policy_set", "version": "42"}
    assert out["authorizations"] == [{"decision": "deny"}]
    assert out["risk_score"] == 80
    assert "risk_score" not in out["unmapped"]
    assert out["trace"] == {"uid": TRACE.trace_id}
    assert out["metadata"]["profiles"] == ["security_control", "trace"]
    assert out["unmapped"]["initiating_human"] == HUMAN
    assert out["unmapped"]["delegation_chain"] == [AGENT, WORKER]
    assert out["unmapped"]["details"]["arguments"] == ["path", "recursive"]


def test_decision_policies_become_authorizations() -> None:
    out = to_ocsf(0, EMITTED["authz.decision"])
    assert out["authorizations"] == [
        {"decision": "allow", "policy": {"uid": "policy0", "version": "42"}}
    ]
    assert out["message"] == "policy0 permits read"
    human = to_ocsf(0, EMITTED["authz.decision/human"])
    assert human["actor"]["user"] == {"uid": HUMAN, "type_id": 1, "type": "User"}
    assert human["risk_score"] == 0


def test_fractional_risk_keeps_its_exact_value() -> None:
    out = to_ocsf(0, SYNTHETIC["hostile"])
    assert out["risk_score"] == 33
    assert out["unmapped"]["risk_score"] == 33.3


def test_tool_call_arguments_are_request_data() -> None:
    out = to_ocsf(0, PLANNED["tool.call"])
    assert out["api"]["service"] == {"name": "search"}
    assert out["api"]["request"] == {
        "uid": "dec_01JF3Z9Q6W8K2M4N6P8R0T2V67",
        "data": {"arguments": {"query": "flights", "token": "[redacted]"}},
    }
    assert out["actor"]["user"]["uid"] == WORKER
    assert "actor" not in out["unmapped"]  # the agent is the event's actor


def test_lifecycle_and_admin_changes() -> None:
    suspend = to_ocsf(0, EMITTED["agent.suspend"])
    assert suspend["user"] == {"uid": AGENT, "type_id": 4, "type": "Service"}
    assert suspend["actor"]["user"] == {"uid": "root", "type_id": 99, "type": "cli"}
    assert suspend["message"] == "suspend by the operator"
    assert suspend["unmapped"]["details"] == {"from": "active", "to": "suspended"}
    updated = to_ocsf(0, EMITTED["agent.updated"])
    assert updated["activity_name"] == "Update"
    assert updated["type_name"] == "Account Change: Update"
    key = to_ocsf(0, EMITTED["agent.key.added"])
    assert key["entity"]["uid"] == "key_01JF3Z9Q6W8K2M4N6P8R0T2V69"
    assert key["entity"]["type"] == "agent_key"
    assert key["entity"]["user"]["uid"] == AGENT
    assert key["entity"]["data"]["kid"] == "k1"
    assert "details" not in key.get("unmapped", {})
    admin = to_ocsf(0, EMITTED["admin_key.created"])
    assert admin["entity"]["name"] == "siem"
    assert "groups" not in admin["actor"]["user"]  # the CLI actor has no role
    policy = to_ocsf(0, EMITTED["policy.changed"])
    assert policy["entity"]["type_id"] == 5
    assert policy["entity"]["policy"] == {"type": "policy_set", "version": "43"}
    revoked = to_ocsf(0, EMITTED["token.revoked/by_jti"])
    assert revoked["entity"] == {
        "type_id": 99,
        "type": "token",
        "uid": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V65",
        "data": {"jti": "tok_01JF3Z9Q6W8K2M4N6P8R0T2V65", "expires": 1795521600},
    }
    all_tokens = to_ocsf(0, EMITTED["agent.tokens_revoked"])
    assert all_tokens["entity"]["type"] == "token"
    assert all_tokens["entity"]["user"]["uid"] == AGENT


def test_a_refused_signing_key_creation_is_a_failed_create() -> None:
    """OCSF Entity Management: Create with status Failure, the refusal as
    ``status_detail``; no entity uid (no key was made), the master key id and the kid
    that did not open as the entity's data; the caller as the actor."""
    ev = EMITTED["signing_key.created/refused"]
    out = to_ocsf(7, ev)
    assert out["type_name"] == "Entity Management: Create"
    assert (out["status_id"], out["status"], out["status_code"]) == (2, "Failure", "failure")
    assert (out["severity_id"], out["severity"]) == (2, "Low")
    assert out["status_detail"] == ev["reason"]
    assert out["entity"] == {"name": "signing_key.created", "data": ev["details"]}
    assert out["actor"]["user"]["uid"] == ADMIN.id
    assert "action_id" not in out  # an administrative failure, not an access decision
    header, ext = parse_cef(cef(7, ev))
    assert header[3:] == ["signing_key.created", "Signing key created", "3"]
    assert ext["outcome"] == "failure"
    assert ext["reason"] == ev["reason"]
    assert (ext["suser"], ext["suid"], ext["spriv"]) == (f"admin_key:{ADMIN.id}", ADMIN.id, "admin")
    assert json.loads(ext["msg"])["unopened_kid"] == "sk-2026-11"
    assert json.loads(ext["msg"])["master_key_id"] == "88715f8d21225f88"
    assert "cs6" not in ext  # no resource: no key was made
    accepted = to_ocsf(7, EMITTED["signing_key.created"])
    assert (accepted["status_id"], accepted["type_name"]) == (1, "Entity Management: Create")
    assert accepted["entity"]["uid"] == "sk-2026-11"


def test_actor_role_is_a_group() -> None:
    out = to_ocsf(0, EMITTED["agent.created"])
    assert out["actor"]["user"] == {
        "uid": ADMIN.id,
        "type_id": 99,
        "type": "admin_key",
        "groups": [{"name": "admin"}],
    }


def test_rejected_request_http_details() -> None:
    out = to_ocsf(0, EMITTED["api.request.rejected"])
    assert out["http_request"] == {
        "http_method": "DELETE",
        "url": {"path": "/v1/agents/{agent_id}"},
    }
    assert out["http_response"] == {"code": 401}
    assert out["src_endpoint"] == {"name": ADMIN_API}
    assert out["unmapped"]["details"] == {"detail": "no admin key was presented"}
    failed = to_ocsf(0, EMITTED["api.request.rejected/invalid"])
    assert (failed["status_id"], failed["status_code"]) == (2, "failure")
    assert "disposition_id" not in failed
    assert "action_id" not in failed
    assert failed["severity_id"] == 2


def test_a_gateway_refusal_names_its_peer_as_the_source_endpoint() -> None:
    """``details.peer`` is OCSF's ``src_endpoint.ip`` (not left in ``unmapped``) and
    CEF's ``src`` (IPv4) or ``c6a2`` "Source IPv6 Address"."""
    v4, v6 = EMITTED["api.request.rejected/gateway"], EMITTED["api.request.rejected/gateway-ipv6"]
    out = to_ocsf(0, v4)
    assert out["src_endpoint"] == {"name": "gateway/billing-gw", "ip": "192.0.2.10"}
    assert "peer" not in out["unmapped"]["details"]
    assert to_ocsf(0, v6)["src_endpoint"]["ip"] == "2001:db8::7"
    ext = parse_cef(cef(0, v4))[1]
    assert ext["src"] == "192.0.2.10"
    assert "c6a2" not in ext
    ext = parse_cef(cef(0, v6))[1]
    assert (ext["c6a2Label"], ext["c6a2"]) == ("Source IPv6 Address", "2001:db8::7")
    assert "src" not in ext
    # what is not one address (a summary's other, unknown, an IPv6 /64) is no endpoint
    for peer in ("other", "unknown", "2001:db8::/64", "192.0.2.1 ", "x" * 80):
        odd = {**v4, "details": {**v4["details"], "peer": peer}}
        assert "ip" not in to_ocsf(0, odd)["src_endpoint"]
        assert to_ocsf(0, odd)["unmapped"]["details"]["peer"] == peer
        assert not {"src", "c6a2"} & set(parse_cef(cef(0, odd))[1])


def test_an_admitted_mcp_stream_is_an_api_read_with_its_status() -> None:
    """The MCP gateway's ``mcp.stream.opened``: API Activity Read, the agent as actor,
    the answer's status as ``http_response``, the trace; the rest kept unmapped."""
    out = to_ocsf(0, PLANNED["mcp.stream.opened"])
    assert (out["class_uid"], out["activity_id"]) == (6003, 2)
    assert out["api"]["operation"] == "subscriptions/listen"
    assert out["http_response"] == {"code": 200}
    assert out["actor"]["user"]["uid"] == WORKER
    assert out["unmapped"]["details"]["servers"] == ["files", "search"]
    assert out["unmapped"]["details"]["stream"] == "listen"


def test_detection_alert_is_a_finding() -> None:
    ev = PLANNED["detection.alert"]
    out = to_ocsf(0, ev)
    assert out["finding_info"] == {
        "uid": "alr_1",
        "title": "Spike in denied calls",
        "desc": "denied calls rose 40x over the baseline",
        "analytic": {"name": "denied_rate", "type_id": 0, "type": "Unknown"},
        "created_time": NOW_MS,
    }
    assert (out["severity_id"], out["severity"]) == (4, "High")
    assert (out["status_id"], out["status"]) == (1, "New")
    assert out["is_alert"] is True
    assert out["resources"] == [{"uid": WORKER, "type": "agent"}]
    assert out["risk_score"] == 92
    assert out["unmapped"]["risk_score"] == 91.5
    assert out["metadata"]["profiles"] == ["host"]
    assert out["unmapped"]["details"] == {"window_seconds": 300}


def test_response_action_revokes_access() -> None:
    out = to_ocsf(0, PLANNED["response.action"])
    assert (out["activity_id"], out["activity_name"]) == (12, "Suspend")
    assert (out["disposition_id"], out["disposition"]) == (24, "Access Revoked")
    assert out["entity"]["uid"] == WORKER
    assert out["severity_id"] == 3


def test_unknown_type_is_a_base_event_that_loses_nothing() -> None:
    ev = SYNTHETIC["unknown type"]
    out = to_ocsf(0, ev)
    assert (out["class_uid"], out["activity_name"]) == (0, "quota")
    assert out["metadata"]["event_code"] == "quota.exceeded"
    assert out["unmapped"]["details"] == {"limit": 10}
    assert out["metadata"]["profiles"] == ["host"]


def test_missing_resource_falls_back_to_the_actor() -> None:
    out = to_ocsf(0, SYNTHETIC["missing resource"])
    assert out["user"]["uid"] == "root"
    assert "resource" not in out.get("unmapped", {})


def test_long_delegation_chain_is_kept_whole() -> None:
    out = to_ocsf(0, SYNTHETIC["long chain"])
    assert out["unmapped"]["delegation_chain"] == SYNTHETIC["long chain"]["delegation_chain"]
    assert len(out["unmapped"]["delegation_chain"]) == 64


def test_hostile_strings_survive_and_stay_on_one_line() -> None:
    for ev in (SYNTHETIC["hostile"], SYNTHETIC["hostile type"]):
        line = ocsf(9, ev)
        assert len(line.splitlines()) == 1
        assert line.isascii()
        assert json.loads(line) == to_ocsf(9, ev)
    out = to_ocsf(9, SYNTHETIC["hostile"])
    assert out["status_detail"] if out["status_id"] == 2 else out["message"] == HOSTILE
    assert out["actor"]["user"]["uid"] == HOSTILE
    assert out["api"]["operation"] == HOSTILE
    assert out["unmapped"]["details"][HOSTILE] == HOSTILE


def _strings(value: Any, *, keys: bool = False) -> Iterator[str]:
    """The string values in a JSON value (and its member names when ``keys``)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if keys:
                yield str(k)
            yield from _strings(v, keys=keys)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, keys=keys)


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


# Strings the mapping may add that are not from the event: OCSF captions and names of
# AgentIAM's own vocabulary (never addresses, hosts or other facts about the world).
VOCABULARY = {
    "1.7.0", "AgentIAM", __version__, "OAUTH 2.0", "policy_set", "token", "agent_key",
    "grant", "User", "Service", "System", "Unknown", "Policy", "Success", "Failure",
    "New", "Allowed", "Denied", "Blocked", "Unauthorized", "Access Revoked",
    "Informational", "Low", "Medium", "High", "security_control", "trace", "host",
    "Identity & Access Management", "Application Activity", "Findings", "Uncategorized",
    "Authentication", "Account Change", "Entity Management", "API Activity",
    "Detection Finding", "Base Event", "Logon", "Create", "Read", "Update", "Delete",
    "Enable", "Disable", "Suspend",
}  # fmt: skip
_TYPE_NAME = re.compile(r"^[A-Za-z &]+: .+$", re.DOTALL)


@pytest.mark.parametrize("name", list(ALL))
def test_ocsf_adds_nothing_the_event_does_not_have(name: str) -> None:
    ev = ALL[name]
    out = to_ocsf(5, ev)
    assert not {"hostname", "mac", "port", "domain", "email_addr"} & set(_keys(out))
    # the one address an event carries: the peer a gateway names, and only that one
    peer = ev["details"].get("peer") if isinstance(ev["details"], dict) else None
    assert out.get("src_endpoint", {}).get("ip") == peer
    source = set(_strings(ev, keys=True))
    actor = ev["actor"]
    labels = {f"{actor['type']}:{actor['id']}"}
    for text in _strings(out):
        if text in source or text in VOCABULARY or text in labels:
            continue
        if _TYPE_NAME.match(text) and text.split(": ", 1)[1] in source | VOCABULARY:
            continue  # type_name: "<class>: <activity>"
        if any(text in s and text == s.split(" ", 1)[-1] for s in source):
            continue  # the path of "METHOD /path"
        if any(s.startswith(text + " ") for s in source):
            continue  # the method of "METHOD /path"
        pytest.fail(f"{text!r} is not from the event")


# -- CEF -----------------------------------------------------------------------------------

CEF_KEYS = {
    "rt", "externalId", "act", "outcome", "suser", "suid", "spriv", "duser", "duid",
    "sourceServiceName", "requestMethod", "request", "reason", "msg", "cn1", "cn1Label",
    "src", "c6a2", "c6a2Label",
    "cfp1", "cfp1Label", "flexString1", "flexString1Label",
    *(f"cs{i}" for i in range(1, 7)), *(f"cs{i}Label" for i in range(1, 7)),
}  # fmt: skip
_KEY_START = re.compile(r" ([A-Za-z0-9_]+)=")


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A strict reader of one CEF:0 line: 7 header fields (``\\|`` and ``\\\\`` the
    only escapes, no line breaks) and the extension (``\\\\``, ``\\=``, ``\\n``,
    ``\\r`` the only escapes, every ``=`` in a value escaped, keys unique)."""
    assert len(line.splitlines()) == 1, line
    assert "\n" not in line
    assert "\r" not in line
    header: list[str] = []
    field: list[str] = []
    i = 0
    while len(header) < 7:
        ch = line[i]
        if ch == "\\":
            nxt = line[i + 1]
            assert nxt in "\\|", f"bad header escape \\{nxt!r}"
            field.append(nxt)
            i += 2
            continue
        if ch == "|":
            header.append("".join(field))
            field = []
        else:
            field.append(ch)
        i += 1
    assert header[0] == "CEF:0"
    rest = line[i:]
    first = re.match(r"([A-Za-z0-9_]+)=", rest)
    assert first, rest[:80]
    starts = [(0, first.group(1), first.end())]
    for match in _KEY_START.finditer(rest):
        if match.start() > starts[-1][2] - 1:
            starts.append((match.start(), match.group(1), match.end()))
    extension: dict[str, str] = {}
    for n, (_start, key, value_start) in enumerate(starts):
        value_end = starts[n + 1][0] if n + 1 < len(starts) else len(rest)
        raw = rest[value_start:value_end]
        out: list[str] = []
        j = 0
        while j < len(raw):
            if raw[j] == "\\":
                nxt = raw[j + 1]
                assert nxt in "\\=nr", f"bad extension escape \\{nxt!r}"
                out.append({"\\": "\\", "=": "=", "n": "\n", "r": "\r"}[nxt])
                j += 2
                continue
            assert raw[j] != "=", f"unescaped = in {key}: {raw!r}"
            out.append(raw[j])
            j += 1
        assert key not in extension, f"{key} twice"
        extension[key] = "".join(out)
    return header[1:], extension


def test_parser_rejects_broken_lines() -> None:
    """The reader is strict: each of these is not valid CEF and fails it."""
    for bad in (
        "CEF:0|A|B|1|t|n|1|msg=a=b",  # unescaped =
        "CEF:0|A|B|1|t|n|1|msg=a\\tb",  # unknown escape
        "CEF:0|A|B|1|t\\x|n|1|msg=a",  # unknown header escape
        "CEF:0|A|B|1|t|n|1|msg=a\nrt=1",  # a line break
        "CEF:0|A|B|1|t|n|1|msg=a msg=b",  # a key twice
    ):
        with pytest.raises(AssertionError):
            parse_cef(bad)


@pytest.mark.parametrize("name", list(ALL))
def test_cef_reads_back(name: str) -> None:
    ev = ALL[name]
    line = cef(11, ev)
    header, ext = parse_cef(line)
    assert header[:3] == ["AgentIAM", "AgentIAM", __version__]
    # a header cannot hold a line break: control characters there become U+FFFD
    assert header[3] == re.sub("[\x00-\x1f\x7f-\x9f\u2028\u2029]", "\ufffd", ev["type"])
    assert 0 <= int(header[5]) <= 10
    assert set(ext) <= CEF_KEYS
    assert ext["externalId"] == ev["event_id"]
    assert ext["rt"] == str(NOW_MS)
    assert ext["outcome"] == ev["outcome"]
    assert (ext["cn1Label"], ext["cn1"]) == ("logIndex", "11")
    assert (ext["cs5Label"], ext["cs5"]) == ("traceId", TRACE.trace_id)
    assert (ext["flexString1Label"], ext["flexString1"]) == ("spanId", TRACE.span_id)
    if ev["details"]:
        assert json.loads(ext["msg"]) == ev["details"]
    else:
        assert "msg" not in ext


def test_cef_fields() -> None:
    ev = EMITTED["authz.decision/deny"]
    header, ext = parse_cef(cef(3, ev))
    assert header == [
        "AgentIAM",
        "AgentIAM",
        __version__,
        "authz.decision",
        "Authorization decision",
        "5",
    ]
    assert ext["act"] == "invoke_tool"
    assert (ext["suser"], ext["suid"], ext["spriv"]) == (f"admin_key:{PEP.id}", PEP.id, "verifier")
    assert (ext["duser"], ext["duid"]) == (f"agent:{WORKER}", WORKER)
    assert ext["reason"] == "no policy permits invoke_tool"
    assert ext["sourceServiceName"] == ADMIN_API
    assert (ext["cs1Label"], ext["cs1"]) == ("initiatingHuman", HUMAN)
    assert (ext["cs2Label"], ext["cs2"]) == ("delegationChain", f"{AGENT},{WORKER}")
    assert (ext["cs3Label"], ext["cs3"]) == ("decisionId", "dec_01JF3Z9Q6W8K2M4N6P8R0T2V67")
    assert (ext["cs4Label"], ext["cs4"]) == ("policyVersion", "42")
    assert (ext["cs6Label"], ext["cs6"]) == ("resource", "Tool:rm-rf")
    assert (ext["cfp1Label"], float(ext["cfp1"])) == ("riskScore", 80.0)
    rejected = parse_cef(cef(0, EMITTED["api.request.rejected"]))[1]
    assert (rejected["requestMethod"], rejected["request"]) == ("DELETE", "/v1/agents/{agent_id}")
    human = parse_cef(cef(0, EMITTED["human.created"]))[1]
    assert (human["duser"], human["duid"]) == (f"human:{HUMAN}", HUMAN)


@pytest.mark.parametrize(
    ("outcome", "severity"), [(Outcome.SUCCESS, "1"), (Outcome.FAILURE, "3"), (Outcome.DENIED, "5")]
)
def test_cef_severity(outcome: Outcome, severity: str) -> None:
    assert parse_cef(cef(0, event("agent.created", outcome=outcome)))[0][5] == severity
    alert = dict(PLANNED["detection.alert"], details={"severity": "Critical"})
    assert parse_cef(cef(0, alert))[0][5] == "9"


def test_cef_escapes_hostile_values_and_they_round_trip() -> None:
    ev = SYNTHETIC["hostile"]
    line = cef(1, ev)
    assert len(line.splitlines()) == 1
    _, ext = parse_cef(line)
    # CR and LF survive (escaped); other control characters and line separators are
    # replaced; everything else, pipes, backslashes, equals, unicode, comes back as is.
    expected = re.sub("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]", "\ufffd", HOSTILE)
    assert ext["reason"] == expected
    assert ext["act"] == expected
    for key in ("suid", "spriv", "cs1", "cs3", "cs4", "duid"):
        assert ext[key] == expected, key
    assert ext["cs6"] == f"{expected}:{expected}"
    assert ext["cs2"] == f"{expected},{expected}"
    assert ext["sourceServiceName"] == expected
    assert json.loads(ext["msg"]) == ev["details"]  # JSON escapes its own controls
    assert set(ext) <= CEF_KEYS


def test_cef_lines_encode_as_utf8_even_with_lone_surrogates() -> None:
    ev = json.loads(json.dumps(event("agent.created", reason="x")).replace('"x"', '"a\\udc80b"'))
    assert ev["reason"] == "a\udc80b"
    line = cef(0, ev)
    line.encode("utf-8")
    assert parse_cef(line)[1]["reason"] == "a\ufffdb"
    ocsf(0, ev).encode("ascii")


def test_cef_header_escapes_pipes_and_backslashes() -> None:
    ev = event("a|b\\c|", action="x", reason="r")
    header, ext = parse_cef(cef(0, ev))
    assert header[3] == "a|b\\c|"
    assert header[4] == "a|b\\c|"  # unknown types are named by their type
    assert ext["reason"] == "r"
    broken = event("line\nbreak\r\x00", action="x")
    header, _ = parse_cef(cef(0, broken))
    assert header[3] == "line\ufffdbreak\ufffd\ufffd"


def test_cef_value_that_looks_like_a_key_stays_in_its_value() -> None:
    ev = event("agent.created", reason="ok rt=0 externalId=evil x\\=y \\")
    _, ext = parse_cef(cef(0, ev))
    assert ext["reason"] == "ok rt=0 externalId=evil x\\=y \\"
    assert ext["rt"] == str(NOW_MS)
    assert ext["externalId"] == ev["event_id"]


# -- the registry and degenerate input ----------------------------------------------------


def test_formats_are_registered() -> None:
    assert formats.formatter("ocsf") is ocsf
    assert formats.formatter("cef") is cef
    with pytest.raises(ValueError, match="cef, native, ocsf"):
        formats.formatter("leef")


@pytest.mark.parametrize(
    "ev",
    [
        {"event_id": "evt_1", "type": "human.created", "pad": "x" * 40},
        {},
        {"type": "token.issued", "time": "yesterday", "details": "not a mapping", "actor": 3},
        {"type": "authz.decision", "resource": {"type": "Tool"}, "risk_score": True},
        {"type": "detection.alert", "outcome": "odd", "delegation_chain": "agt_1"},
    ],
)
def test_formatters_never_fail_on_degenerate_events(ev: dict[str, Any]) -> None:
    """A stored event a formatter cannot read would stop an exporter for good."""
    for fmt in (ocsf, cef):
        line = fmt(4, ev)
        assert len(line.splitlines()) == 1
    out = to_ocsf(4, ev)
    assert out["metadata"]["sequence"] == 4
    assert "time" not in out  # never invented
    if "time" in ev:
        assert out["unmapped"]["time"] == ev["time"]
    if "pad" in ev:
        assert out["unmapped"]["pad"] == "x" * 40  # a member this schema does not know
    parse_cef(cef(4, ev))
