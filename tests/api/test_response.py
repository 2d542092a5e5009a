"""Automatic response on a real control plane (SQLite file, real services, a real HTTP
server where the path matters): each playbook action's effect, dry run, cool-downs
across a restart, failures that do not stop the next action, the throttle at the PDP
and at a gateway-side limiter fed from the bundle, and the signed notify webhook."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.api.oauth_support import CTX, RESOURCE, oauth_live
from tests.conftest import FakeClock

from agentiam.adapters.gateway.link import ControlPlaneLink
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.webhook_signature import WebhookSecret, verify
from agentiam.core.detection.model import Alert, Category, Evidence, Severity
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef
from agentiam.errors import InvalidInput
from agentiam.ports import AuditQuery
from agentiam.services.agents import NewAgent
from agentiam.services.humans import NewHuman
from agentiam.services.response import RESPONSE_EVENT, step_up_policy_id

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, test only


def playbook_file(tmp_path: Path, playbooks: list[dict[str, Any]], **extra: Any) -> str:
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "playbooks": playbooks, **extra}))
    return str(path)


def alert(agent_id: str, detector: str = "velocity.runaway_loop", **kw: Any) -> Alert:
    return Alert(
        alert_id=kw.get("alert_id", "alr_01JTESTALERT0000000000000A"),
        detector=detector,
        category=kw.get("category", Category.VELOCITY),
        severity=kw.get("severity", Severity.HIGH),
        agent_id=agent_id,
        time=datetime.now(UTC),
        score=50,
        evidence=Evidence(summary="the same call 500 times in 10 s"),
    )


def responses(c: Container, agent_id: str) -> list[Any]:
    return list(c.audit.find(AuditQuery(limit=100, type=RESPONSE_EVENT, agent_id=agent_id)).items)


def make_agent(c: Container, name: str = "bot", **kw: Any) -> str:
    owner = c.humans.create(CTX, NewHuman(display_name="Ann", email=f"{name}@example.com"))
    return c.agents.register(
        CTX,
        NewAgent(
            name=name,
            owners=[owner.id],
            purpose="test",
            environment="production",
            activate=True,
            **kw,
        ),
    ).id


RUNAWAY = {
    "name": "runaway-loop",
    "when": {"detectors": ["velocity.runaway_loop"]},
    "actions": [{"suspend": {}}, {"revoke_tokens": {}}],
}


# -- suspend and revoke: the agent is cut off -------------------------------------------


def test_a_runaway_agent_is_cut_off_within_the_bound_and_traced(
    sqlite_url: str, tmp_path: Path
) -> None:
    with oauth_live(sqlite_url, playbooks_file=playbook_file(tmp_path, [RUNAWAY])) as live:
        c = live.container
        token = live.token()
        assert token
        started = time.monotonic()
        outcomes = c.response.handle(alert(live.agent_id), agent_risk=80, session_risk=None)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0  # the bound: contained within a second of the alert
        assert [(o.action, o.result) for o in outcomes] == [
            ("suspend", "done"),
            ("revoke_tokens", "done"),
        ]
        # the next token request is refused, and so is the next decision
        assert live.request_token().status_code in (400, 401)
        assert c.agents.get(live.agent_id).status is AgentStatus.SUSPENDED
        decision = c.decisions.authorizer.decide(
            AuthzRequest(
                EntityRef("Agent", live.agent_id), "invoke_tool", EntityRef("Tool", "x"), {}
            )
        )
        assert not decision.allowed
        # every response is in the trail, with the alert that caused it
        events = responses(c, live.agent_id)
        assert [e.action for e in events] == ["response.suspend", "response.revoke_tokens"]
        for event in events:
            assert event.details["alert_id"] == "alr_01JTESTALERT0000000000000A"
            assert event.details["detector"] == "velocity.runaway_loop"
            assert event.details["playbook"] == "runaway-loop"
            assert event.details["dry_run"] is False
            assert event.source == "control-plane/response"
        with live.admin_client() as admin:
            listed = admin.get("/v1/responses", params={"agent_id": live.agent_id}).json()
            assert [i["result"] for i in listed["items"]] == ["done", "done"]
            shown = admin.get("/v1/playbooks").json()
            assert shown["version"] == 1
            assert shown["playbooks"][0]["name"] == "runaway-loop"


def test_dry_run_changes_nothing_but_is_audited(sqlite_url: str, tmp_path: Path) -> None:
    book = {**RUNAWAY, "mode": "dry_run"}
    path = playbook_file(tmp_path, [book])
    c = build(Settings(database_url=sqlite_url, playbooks_file=path))
    try:
        agent_id = make_agent(c)
        outcomes = c.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
        assert {o.result for o in outcomes} == {"would_do"}
        assert c.agents.get(agent_id).status is AgentStatus.ACTIVE
        events = responses(c, agent_id)
        assert len(events) == 2
        assert all(e.details["dry_run"] is True for e in events)
        assert not any(
            e.type == "agent.tokens_revoked"
            for e in c.audit.find(AuditQuery(limit=100, agent_id=agent_id)).items
        )
    finally:
        c.close()


def test_cooldown_prevents_a_second_firing_and_survives_a_restart(
    sqlite_url: str, tmp_path: Path
) -> None:
    book = {**RUNAWAY, "actions": [{"revoke_tokens": {}}], "cooldown_seconds": 600}
    settings = Settings(database_url=sqlite_url, playbooks_file=playbook_file(tmp_path, [book]))
    c = build(settings)
    agent_id = make_agent(c)
    try:
        first = c.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
        assert [o.result for o in first] == ["done"]
        second = c.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
        assert [(o.action, o.result) for o in second] == [("*", "skipped")]
    finally:
        c.close()
    again = build(settings)  # a restart: cool-downs come back from the trail
    try:
        again.response.restore()
        third = again.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
        assert [o.result for o in third] == ["skipped"]
        assert len(responses(again, agent_id)) == 1
    finally:
        again.close()


def test_a_failing_action_does_not_stop_the_next(sqlite_url: str, tmp_path: Path) -> None:
    book = {
        **RUNAWAY,
        "actions": [
            {"step_up": {"actions": ["no_such_action"], "count": 1}},  # refused by the schema
            {"revoke_tokens": {}},
        ],
    }
    c = build(Settings(database_url=sqlite_url, playbooks_file=playbook_file(tmp_path, [book])))
    try:
        agent_id = make_agent(c)
        outcomes = c.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
        assert [(o.action, o.result) for o in outcomes] == [
            ("step_up", "failed"),
            ("revoke_tokens", "done"),
        ]
        events = responses(c, agent_id)
        assert [e.outcome.value for e in events] == ["failure", "success"]
        assert events[0].details["error"]
    finally:
        c.close()


# -- quarantine ----------------------------------------------------------------------------


def test_quarantine_reaches_the_grandchildren(sqlite_url: str, tmp_path: Path) -> None:
    book = {
        "name": "lateral-movement",
        "when": {"categories": ["boundary_crossing"]},
        "actions": [{"quarantine_subtree": {}}],
    }
    c = build(Settings(database_url=sqlite_url, playbooks_file=playbook_file(tmp_path, [book])))
    try:
        root = make_agent(c, "root")
        owner = c.agents.get(root).owners
        child = c.agents.register(
            CTX,
            NewAgent(
                name="child",
                owners=owner,
                purpose="t",
                environment="production",
                parent_id=root,
                ttl_seconds=3600,
                activate=True,
            ),
        ).id
        grandchild = c.agents.register(
            CTX,
            NewAgent(
                name="grandchild",
                owners=owner,
                purpose="t",
                environment="production",
                parent_id=child,
                ttl_seconds=600,
                activate=True,
            ),
        ).id
        outcomes = c.response.handle(
            alert(root, "boundary.environment", category=Category.BOUNDARY),
            agent_risk=0,
            session_risk=None,
        )
        assert [o.result for o in outcomes] == ["done"]
        assert outcomes[0].detail["agents"] == [root, child, grandchild]
        for agent_id in (root, child, grandchild):
            assert not c.agents.get(agent_id).is_usable(datetime.now(UTC))
            assert c.revocations.revoked.is_revoked(
                jti="tok_x", agent_id=agent_id, issued_at=int(time.time()) - 1
            )
    finally:
        c.close()


# -- step-up -------------------------------------------------------------------------------


def test_step_up_makes_the_next_call_need_approval_and_expires(
    sqlite_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    book = {
        "name": "risky-needs-human",
        "when": {"agent_risk_at_least": 60},
        "actions": [{"step_up": {"actions": "invoke_tool", "for_minutes": 30}}],
    }
    c = build(
        Settings(database_url=sqlite_url, playbooks_file=playbook_file(tmp_path, [book])),
        clock=clock,
    )
    try:
        agent_id = make_agent(c)
        c.policies.put(
            CTX,
            "allow-tools",
            text=f'permit (principal == Agent::"{agent_id}", action == Action::"invoke_tool", '
            "resource is Tool);",
        )
        c.decisions.refresh()
        call = AuthzRequest(EntityRef("Agent", agent_id), "invoke_tool", EntityRef("Tool", "t"), {})
        assert c.decisions.decide(CTX, [call])[0].allowed
        assert c.response.handle(alert(agent_id), agent_risk=30, session_risk=None) == []
        outcomes = c.response.handle(alert(agent_id), agent_risk=70, session_risk=None)
        assert [o.result for o in outcomes] == ["done"]
        denied = c.decisions.decide(CTX, [call])[0]
        assert not denied.allowed
        assert step_up_policy_id(agent_id) in denied.policies
        approved = replace(call, context={"approval": {"state": "approved"}})
        assert c.decisions.authorizer.decide(approved).allowed  # a human's approval lifts it
        assert c.response.sweep() == 0
        clock.advance(minutes=31)
        assert c.response.sweep() == 1
        c.decisions.refresh()
        assert c.decisions.decide(CTX, [call])[0].allowed
        ended = responses(c, agent_id)[-1]
        assert ended.action == "response.step_up_ended"
        assert ended.details["alert_id"] == "alr_01JTESTALERT0000000000000A"
    finally:
        c.close()


# -- throttle ------------------------------------------------------------------------------


def test_throttle_gives_429_at_the_pdp_and_at_a_gateway_limiter(
    sqlite_url: str, tmp_path: Path
) -> None:
    book = {
        "name": "slow-down",
        "when": {"min_severity": "low"},
        "actions": [{"throttle": {"per_minute": 3, "for_minutes": 5}}],
    }
    with oauth_live(sqlite_url, playbooks_file=playbook_file(tmp_path, [book])) as live:
        c = live.container
        verifier = c.admin_keys.create(
            CTX, name="gw", role=Role.VERIFIER, sources=["gateway/gw"]
        ).secret
        link = ControlPlaneLink(live.url, RESOURCE, admin_key=verifier, limiter=RateLimiter())
        try:
            link.poll_once(0)
            etag = link.etag
            c.response.handle(alert(live.agent_id), agent_risk=0, session_risk=None)
            body = {
                "principal": {"type": "Agent", "id": live.agent_id},
                "action": "invoke_tool",
                "resource": {"type": "Tool", "id": "t"},
                "context": {},
            }
            with live.admin_client() as admin:
                codes = [admin.post("/v1/authorize", json=body).status_code for _ in range(4)]
                assert codes[:3] == [200, 200, 200]
                assert codes[3] == 429
                refused = admin.post("/v1/authorize", json=body)
                assert refused.status_code == 429
                assert int(refused.headers["Retry-After"]) >= 1
                assert refused.json()["type"].endswith("too-many-requests")
            # the gateway: the bundle changed and carries the throttle to its limiter
            assert link.poll_once(0)
            assert link.etag != etag
            limiter = link.limiter
            assert limiter is not None
            results = [limiter.check(live.agent_id, "t", 0.0) for _ in range(4)]
            assert results[:3] == [None, None, None]
            assert results[3] is not None
        finally:
            link.close()


# -- notify --------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_notify_delivers_a_signed_webhook(
    sqlite_url: str, tmp_path: Path, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECOPS_WEBHOOK_SECRET", SECRET)
    book = {**RUNAWAY, "actions": [{"notify": {"webhook": "secops"}}, {"revoke_tokens": {}}]}
    hooks = {
        "secops": {
            "url": receiver,
            "secret_env": "SECOPS_WEBHOOK_SECRET",
            "allow_private_network": True,
        }
    }
    path = playbook_file(tmp_path, [book], webhooks=hooks)
    c = build(Settings(database_url=sqlite_url, playbooks_file=path))
    try:
        c.response.start()
        agent_id = make_agent(c)
        outcomes = c.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
        # notifications go last and report what was done
        assert [(o.action, o.result) for o in outcomes] == [
            ("revoke_tokens", "done"),
            ("notify", "queued"),
        ]
        deadline = time.monotonic() + 10
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        headers, body = _Receiver.received[0]
        verify(WebhookSecret.parse(SECRET), headers, body)
        sent = json.loads(body)
        assert sent["alert"]["alert_id"] == "alr_01JTESTALERT0000000000000A"
        assert sent["actions"][0]["action"] == "revoke_tokens"
        while time.monotonic() < deadline:
            delivered = [e for e in responses(c, agent_id) if e.action.endswith("delivery")]
            if delivered:
                break
            time.sleep(0.05)
        assert delivered[0].details["result"] == "delivered"
        assert SECRET not in json.dumps([e.to_dict() for e in responses(c, agent_id)])
    finally:
        c.close()


def test_a_private_webhook_address_is_refused_unless_allowed(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECOPS_WEBHOOK_SECRET", SECRET)
    book = {**RUNAWAY, "actions": [{"notify": {"webhook": "secops"}}]}
    hooks = {"secops": {"url": "http://127.0.0.1:9/hook", "secret_env": "SECOPS_WEBHOOK_SECRET"}}
    path = playbook_file(tmp_path, [book], webhooks=hooks)
    with pytest.raises(InvalidInput, match=r"webhooks\.secops\.url refused"):
        build(Settings(database_url=sqlite_url, playbooks_file=path))


def test_a_playbook_file_with_an_inline_secret_stops_the_start(
    sqlite_url: str, tmp_path: Path
) -> None:
    book = {**RUNAWAY, "actions": [{"notify": {"webhook": "secops"}}]}
    hooks = {"secops": {"url": "https://hooks.example.com/x", "secret": SECRET}}
    path = playbook_file(tmp_path, [book], webhooks=hooks)
    with pytest.raises(InvalidInput) as err:
        build(Settings(database_url=sqlite_url, playbooks_file=path))
    assert "webhooks.secops.secret" in err.value.detail
    assert SECRET not in err.value.detail
