"""Behavioural detection on a live control plane (real uvicorn, SQLite file, the
background loops running): a runaway loop through ``POST /v1/authorize`` is detected
from the trail, recorded as a ``detection.alert`` event whose evidence names trail
events, contained by a playbook within the issue's bound, and its risk score reaches
the policy context, the API and the CLI. Restart resumes without a second alert."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.api.oauth_support import CTX, RESOURCE, oauth_live
from typer.testing import CliRunner

from agentiam.adapters.gateway.link import ControlPlaneLink
from agentiam.bootstrap import build
from agentiam.cli.main import app as cli
from agentiam.config import Settings
from agentiam.core.audit.events import AuditEvent
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef
from agentiam.errors import InvalidInput
from agentiam.ports import AuditQuery

SEARCH = 'permit (principal, action == Action::"invoke_tool", resource == Tool::"search");'
RUNAWAY = {
    "name": "runaway-loop",
    "when": {"detectors": ["velocity.runaway_loop"]},
    "actions": [{"suspend": {}}, {"revoke_tokens": {}}],
}


def _decide(admin: httpx.Client, agent: str, tool: str = "search") -> dict[str, Any]:
    r = admin.post(
        "/v1/authorize",
        json={
            "principal": {"type": "Agent", "id": agent},
            "action": "invoke_tool",
            "resource": {"type": "Tool", "id": tool},
            "context": {},
        },
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _events(c: Any, type_: str, agent_id: str) -> list[AuditEvent]:
    return list(c.audit.find(AuditQuery(limit=1000, type=type_, agent_id=agent_id)).items)


def _until(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _settled(read: Callable[[], Any]) -> Any:
    """``read()`` once it gives the same value twice, half a second apart."""
    last = read()
    for _ in range(20):
        time.sleep(0.5)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError("never settled")


def _playbooks(tmp_path: Path, playbooks: list[dict[str, Any]]) -> str:
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "playbooks": playbooks}))
    return str(path)


def test_a_runaway_loop_is_detected_from_the_trail_and_contained(
    sqlite_url: str, tmp_path: Path
) -> None:
    with oauth_live(sqlite_url, playbooks_file=_playbooks(tmp_path, [RUNAWAY])) as live:
        c = live.container
        with live.admin_client() as admin:
            assert admin.put("/v1/policies/search", json={"text": SEARCH}).status_code == 200
            allowed = 0
            # an agent's loop at about 100 calls/s (the simulator's runaway runs at
            # about 130/s); stops at the first deny
            for _ in range(2000):
                if _decide(admin, live.agent_id)["decision"] != "allow":
                    break
                allowed += 1
                time.sleep(0.01)
            else:
                pytest.fail("the runaway agent was never cut off")
        # the bound: at most 50 actions before containment
        assert allowed <= 50, allowed
        alerts = _until(lambda: _events(c, "detection.alert", live.agent_id))
        alert = alerts[0]
        assert alert.details["detector"] == "velocity.runaway_loop"
        assert alert.details["category"] == "velocity"
        assert alert.details["evidence"]["summary"]
        # the evidence names real decision events of that agent in the trail
        decisions = {e.event_id: e for e in _events(c, "authz.decision", live.agent_id)}
        cited = alert.details["evidence"]["events"]
        assert cited
        assert set(cited) <= set(decisions)
        first = min(decisions.values(), key=lambda e: e.time)
        # detected and contained within a second of the loop's first call (trail times)
        assert (alert.time - first.time).total_seconds() <= 1.0
        # each action is recorded once it is done, so the record may follow the effect
        responses = _until(
            lambda: (
                (found := _events(c, "response.action", live.agent_id))
                and any(r.action == "response.suspend" for r in found)
                and found
            )
        )
        assert {r.details["alert_id"] for r in responses} == {alert.details["alert_id"]}
        suspend = next(r for r in responses if r.action == "response.suspend")
        assert (suspend.time - first.time).total_seconds() <= 1.0
        assert c.agents.get(live.agent_id).status.value == "suspended"


def test_risk_reaches_the_policy_context_the_api_and_the_cli(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = (
        'forbid (principal, action == Action::"invoke_tool", resource) '
        'when { context.risk_score >= 10 && context.approval.state != "approved" };'
    )
    with oauth_live(sqlite_url) as live:
        c = live.container
        with live.admin_client() as admin:
            assert admin.put("/v1/policies/search", json={"text": SEARCH}).status_code == 200
            before = _decide(admin, live.agent_id)
            assert (before["decision"], before["risk_score"]) == ("allow", 0)
            assert admin.put("/v1/policies/gate", json={"text": gate}).status_code == 200
            for _ in range(30):  # no playbook: detection alerts, nothing contains
                _decide(admin, live.agent_id)
            _until(lambda: _events(c, "detection.alert", live.agent_id))
            scored = _until(lambda: (d := _decide(admin, live.agent_id))["risk_score"] and d)
            assert scored["risk_score"] >= 10
            assert scored["decision"] == "deny"
            assert "gate" in scored["policies"]

            one = admin.get(f"/v1/risk/{live.agent_id}").json()
            assert one["risk_score"] >= 10
            assert "velocity.runaway_loop" in {a["detector"] for a in one["alerts"]}
            listed = admin.get("/v1/risk").json()["items"]
            assert listed[0]["agent_id"] == live.agent_id
            status = _until(
                lambda: (s := admin.get("/v1/detection/status").json())["processed"] > 30 and s
            )
            assert status["alerts"] >= 1
            assert status["errors"] == 0
            # an auditor reads them; a verifier (an enforcement point) may not
            verifier = c.admin_keys.create(
                CTX, name="pep", role="verifier", sources=["gateway/pep"]
            ).secret
            with httpx.Client(
                base_url=live.url, headers={"Authorization": f"Bearer {verifier}"}
            ) as pep:
                assert pep.get("/v1/risk").status_code == 403
        # the CLI, in its own container, agrees from the recorded alerts alone (once
        # detection has caught up with the last decisions)
        served = _settled(lambda: c.detection and c.detection.agent_risk(live.agent_id))
        monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
        result = CliRunner().invoke(cli, ["risk", live.agent_id, "--json"])
        assert result.exit_code == 0, result.output
        shown = json.loads(result.output)
        assert abs(shown["risk_score"] - served) <= 1
        assert "velocity.runaway_loop" in {a["detector"] for a in shown["alerts"]}
        listed_cli = json.loads(CliRunner().invoke(cli, ["alerts", "list", "--json"]).output)
        assert listed_cli[-1]["agent_id"] == live.agent_id


def test_a_restart_resumes_behind_its_cursor_without_a_second_alert(sqlite_url: str) -> None:
    with oauth_live(sqlite_url) as live:
        agent = live.agent_id
        with live.admin_client() as admin:
            assert admin.put("/v1/policies/search", json={"text": SEARCH}).status_code == 200
            for _ in range(30):
                _decide(admin, agent)
        _until(lambda: _events(live.container, "detection.alert", agent))
        position = _until(lambda: live.container.detection and live.container.detection.status())
    again = build(Settings(database_url=sqlite_url))
    try:
        assert again.detection is not None
        again.detection.run()
        # nothing new was read twice, the score came back from the replay, no new alert
        assert again.detection.status().position >= position.position
        assert again.detection.agent_risk(agent) > 0
        assert len(_events(again, "detection.alert", agent)) == 1
    finally:
        again.close()


def test_detection_switched_off_says_so(sqlite_url: str) -> None:
    with oauth_live(sqlite_url, detection_enabled=False) as live, live.admin_client() as admin:
        r = admin.get("/v1/risk")
        assert r.status_code == 404
        assert "switched off" in r.json()["detail"]
        assert live.container.detection is None
        assert _decide(admin, live.agent_id, "x")["risk_score"] == 0


def test_a_bad_detection_file_stops_the_start_naming_the_key(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "detection.yaml"
    path.write_text(yaml.safe_dump({"velocity": {"loop_repeats": -3}}))
    with pytest.raises(InvalidInput, match=r"velocity\.loop_repeats"):
        build(Settings(database_url=sqlite_url, detection_file=str(path)))


def test_an_anonymous_request_claiming_an_agent_id_raises_nothing_against_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A failed token request only claims a client_id; charging it to that agent would
    let anyone raise a victim's risk or get it suspended."""
    probe = {
        "name": "probing",
        "when": {"categories": ["privilege_escalation"], "min_severity": "high"},
        "actions": [{"suspend": {}}],
    }
    with oauth_live(sqlite_url, playbooks_file=_playbooks(tmp_path, [probe])) as live:
        for _ in range(8):
            r = httpx.post(
                live.token_endpoint,
                data={
                    "grant_type": "client_credentials",
                    "client_id": live.agent_id,
                    "resource": ["https://a.example", "https://b.example"],
                },
            )
            assert r.status_code == 400
        c = live.container
        denied = _until(lambda: _events(c, "token.denied", live.agent_id))
        assert denied[0].details["authenticated"] is False
        _settled(lambda: c.detection and c.detection.status().position)
        assert _events(c, "detection.alert", live.agent_id) == []
        assert c.agents.get(live.agent_id).status.value == "active"
        assert c.detection is not None
        assert c.detection.agent_risk(live.agent_id) == 0
        # the proven agent asking beyond its entitlements is charged
        r = live.request_token(form=live.form(scope="admin:everything"))
        assert r.status_code == 400, r.text
        alert = _until(lambda: _events(c, "detection.alert", live.agent_id))
        assert alert[0].details["detector"] == "escalation.beyond_entitlement"
        # the playbook acts after the alert is recorded
        _until(lambda: c.agents.get(live.agent_id).status.value == "suspended")


def test_ids_nobody_registered_create_no_detection_state(sqlite_url: str) -> None:
    """A flood of made-up agent ids must not evict real agents' baselines."""
    with oauth_live(sqlite_url) as live, live.admin_client() as admin:
        for n in range(20):
            _decide(admin, f"agt_01JF{n:022d}", "search")
        _decide(admin, live.agent_id, "search")
        c = live.container
        assert c.detection is not None
        _settled(lambda: c.detection and c.detection.status().position)
        assert c.detection.status().engine["agents"] == 1


def test_switching_detection_on_over_history_judges_only_what_comes_next(
    sqlite_url: str, tmp_path: Path
) -> None:
    with oauth_live(sqlite_url, detection_enabled=False) as live:
        agent = live.agent_id
        with live.admin_client() as admin:
            assert admin.put("/v1/policies/search", json={"text": SEARCH}).status_code == 200
            for _ in range(30):  # a loop that happened before detection was on
                _decide(admin, agent)
    again = build(Settings(database_url=sqlite_url, playbooks_file=_playbooks(tmp_path, [RUNAWAY])))
    try:
        assert again.detection is not None
        again.detection.start()
        again.detection.run()
        assert _events(again, "detection.alert", agent) == []
        assert _events(again, "response.action", agent) == []
        assert again.agents.get(agent).status.value == "active"
        assert again.detection.engine.stats()["events"] >= 30  # it learned from them
    finally:
        again.close()


def test_a_caller_cannot_assert_its_own_approval(sqlite_url: str) -> None:
    """Approval state is the control plane's: set from an approved request named by
    ``context.approval_id``, never taken from the caller."""
    with oauth_live(sqlite_url) as live, live.admin_client() as admin:
        body = {
            "principal": {"type": "Agent", "id": live.agent_id},
            "action": "invoke_tool",
            "resource": {"type": "Tool", "id": "search"},
            "context": {"approval": {"state": "approved"}},
        }
        r = admin.post("/v1/authorize", json=body)
        assert r.status_code == 422
        assert "context.approval_id" in r.text
        r = admin.post("/v1/authorize/batch", json={"requests": [body]})
        assert r.status_code == 422


def test_risk_scores_reach_a_gateway_through_the_bundle(sqlite_url: str) -> None:
    """Continuous authentication at the enforcement points: the control plane's risk
    scores ride in the policy bundle, so a gateway's own decisions see them in
    ``context.risk_score`` (here, a risk gate the agent then fails)."""
    gate = (
        'forbid (principal, action == Action::"invoke_tool", resource) '
        'when { context.risk_score >= 10 && context.approval.state != "approved" };'
    )
    with oauth_live(sqlite_url) as live:
        c = live.container
        verifier = c.admin_keys.create(
            CTX, name="gw", role="verifier", sources=["gateway/gw"]
        ).secret
        link = ControlPlaneLink(live.url, RESOURCE, admin_key=verifier)
        try:
            with live.admin_client() as admin:
                assert admin.put("/v1/policies/search", json={"text": SEARCH}).status_code == 200
                assert admin.put("/v1/policies/gate", json={"text": gate}).status_code == 200
                link.poll_once(0)  # without start(): the test drives the bundle
                link.remote.feed.poll_once(0)  # and the revocations, which decide too
                call = AuthzRequest(
                    EntityRef("Agent", live.agent_id), "invoke_tool", EntityRef("Tool", "search")
                )
                before = link.authorizer().decide(call)
                assert (before.decision, before.risk_score) == ("allow", 0)
                for _ in range(30):
                    _decide(admin, live.agent_id)
            _until(lambda: _events(c, "detection.alert", live.agent_id))
            _until(lambda: link.poll_once(0) and link.authorizer().decide(call).risk_score)
            after = link.authorizer().decide(call)
            assert after.risk_score >= 10
            assert after.decision == "deny"
            assert "gate" in after.policies
        finally:
            link.close()
