"""The assessment's evidence collector on a real control plane (SQLite file, uvicorn,
the background loops, the real SDK and in-process guard): a deployment that adds
owners, DPoP, enforcement at an enforcement point, detection and playbooks scores
higher at every step; evidence beats a contradicting answer; `agentiam assess` refuses
a bad or partial answers file with exit status 2, naming the question. Nothing here is
mocked."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.api.oauth_support import oauth_live
from tests.conftest import FakeClock
from tests.support.live import free_port, serve_in_thread
from typer.testing import CliRunner

from agentiam.adapters.http.app import create_app
from agentiam.bootstrap import Container, build
from agentiam.cli.main import app as cli
from agentiam.config import Settings
from agentiam.core.access.admin_keys import Role
from agentiam.core.assessment import (
    MEASURED_EVIDENCE_KEYS,
    NEVER,
    AISystem,
    Evidence,
    load_answers,
    load_declared_systems,
)
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef, Mode
from agentiam.guard import Guard
from agentiam.sdk import AgentClient, AgentKey
from agentiam.services.agents import AgentChanges, NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("test")
RESOURCE = "https://tools.example.com/mcp"
# An agentic system declared by hand keeps the agent-specific questions in scope at
# every step, so a step changes evidence, never the set of questions.
OPS_RUNNER: dict[str, Any] = {
    "id": "ops-runner",
    "name": "Ops runner",
    "acts_on_external_systems": True,
    "chains_steps_unapproved": True,
    "holds_credentials": True,
    "acts_on_untrusted_input": True,
    "spawns_sub_agents": False,
    "runs_long_horizons": False,
}
DECLARED = load_declared_systems([OPS_RUNNER])
RUNAWAY: dict[str, Any] = {
    "name": "contain-runaway",
    "when": {"detectors": ["velocity.runaway_loop"]},
    "actions": [{"suspend": {}}, {"revoke_tokens": {}}],
}
CONTAINING_PLAYBOOK = {"version": 1, "playbooks": [RUNAWAY]}


@contextmanager
def plane(database_url: str, port: int, master: str, **settings: Any) -> Iterator[Container]:
    """A serving control plane on ``port`` (the same issuer across restarts)."""
    base = Settings(
        database_url=database_url,
        issuer=f"http://127.0.0.1:{port}",
        master_key=master,
        port=port,
        revocation_feed_max_wait_seconds=1.0,
    )
    c = build(replace(base, **settings))
    c.start_background()
    try:
        with serve_in_thread(create_app(c), port):
            yield c
    finally:
        c.close()


def values(evidence: Evidence) -> dict[str, float]:
    return {m.key: m.value for m in evidence}


def overall(c: Container, declared: tuple[AISystem, ...] = DECLARED) -> float:
    return c.assessment.run(declared=declared).assessment.overall


def test_a_deployment_that_adds_owners_dpop_enforcement_detection_and_playbooks_scores_higher(
    sqlite_url: str, tmp_path: Path
) -> None:
    port, master = free_port(), MasterKey.generate_text()
    url = f"http://127.0.0.1:{port}"
    scores: list[float] = []
    with plane(sqlite_url, port, master, detection_enabled=False) as c:
        # 0. bare: no agents, no policies, no detection, no playbooks
        bare = values(c.assessment.collect())
        assert set(bare) == MEASURED_EVIDENCE_KEYS  # every key, measured
        assert bare["agents.owner_share"] == 0.0
        assert bare["policy.default_deny"] == 1.0  # nothing permits: Cedar denies
        assert bare["detection.detectors_enabled_share"] == 0.0
        assert bare["response.auto_revocation_playbooks"] == 0.0
        assert bare["revocation.last_exercised_days"] == NEVER
        scores.append(overall(c))

        # 1. owners: an agent with a named owner, a purpose and a current review
        owner = c.humans.create(CTX, NewHuman(display_name="Ann", email="ann@example.com"))
        key = AgentKey.generate()
        agent = c.agents.register(
            CTX,
            NewAgent(
                name="invoice-bot",
                owners=[owner.id],
                purpose="pays invoices",
                environment="production",
                activate=True,
                keys=[key.public_jwk()],
                scopes=["tools:read"],
                audiences=[RESOURCE],
                dpop_required=False,
            ),
        )
        owned = c.assessment.collect()
        step1 = values(owned)
        assert step1["agents.owner_share"] == 1.0
        assert step1["inventory.purpose_share"] == 1.0
        assert step1["agents.access_review_current_share"] == 1.0
        assert step1["credentials.dpop_share"] == 0.0  # not yet required
        measured = owned.get("agents.owner_share")
        assert measured is not None
        assert dict(measured.numbers) == {"agents": 1, "with_owner": 1}
        scores.append(overall(c))

        # 2. DPoP and short-lived tokens: DPoP required, a token taken through the real
        # token endpoint; one decision asked of the PDP API (not an enforcement point)
        c.agents.update(CTX, agent.id, AgentChanges(dpop_required=True))
        # the narrowing revoked every token issued up to its whole second (NumericDate):
        # take the first one after it
        narrowed_at = int(time.time())
        while int(time.time()) == narrowed_at:
            time.sleep(0.05)
        client = AgentClient(url, client_id=agent.id, key=key, resource=RESOURCE)
        try:
            assert client.token().value
            admin = c.admin_keys.create(CTX, name="ops", role=Role.ADMIN).secret
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=10
            ) as api:
                for tool in ("search", "delete"):
                    assert api.put(f"/v1/resources/Tool/{tool}", json={"attributes": {}}).is_success
                r = api.post(
                    "/v1/authorize",
                    json={
                        "principal": {"type": "Agent", "id": agent.id},
                        "action": "invoke_tool",
                        "resource": {"type": "Tool", "id": "search"},
                        "context": {},
                    },
                )
                assert r.status_code == 200, r.text
            step2 = values(c.assessment.collect())
            assert step2["credentials.dpop_share"] == 1.0
            assert step2["credentials.short_lived_share"] == 1.0  # 300 s tokens
            assert step2["keys.signing_key_age_days"] < 1  # the key signing them now
            assert step2["enforcement.tool_call_share"] == 0.0  # 0 of 1 at an enforcement point
            scores.append(overall(c))

            # 3. enforcement: an enforced permit naming the agent, and tool calls that
            # pass the in-process guard (an enforcement point)
            c.policies.put(
                CTX,
                "invoice-bot-search",
                text=(
                    f'permit (principal == Agent::"{agent.id}", '
                    'action == Action::"invoke_tool", resource == Tool::"search");'
                ),
            )
            verifier = c.admin_keys.create(
                CTX, name="guard", role=Role.VERIFIER, sources=["guard/invoice-bot"]
            ).secret
            guard = Guard.connect(
                url,
                resource=RESOURCE,
                spool_dir=tmp_path / "spool",
                name="invoice-bot",
                token=lambda: client.token().value,
                environ={"AGENTIAM_GUARD_KEY": verifier},
                poll_wait=1.0,
            )
            try:

                @guard.tool()
                def search(query: str) -> str:
                    return f"results for {query}"

                for n in range(9):
                    assert search(f"q{n}") == f"results for q{n}"
                assert guard.drain(10)
            finally:
                guard.close()
        finally:
            client.close()
        enforced = c.assessment.collect()
        step3 = values(enforced)
        assert step3["policy.agent_coverage_share"] == 1.0
        assert step3["policy.enforced_share"] == 1.0
        assert step3["policy.default_deny"] == 1.0
        assert step3["enforcement.tool_call_share"] == pytest.approx(0.9)  # 9 of 10
        decided = enforced.get("enforcement.tool_call_share")
        assert decided is not None
        assert decided.numbers["decisions"] == 10
        assert decided.numbers["at_enforcement_points"] == 9
        scores.append(overall(c))

    # 4. detection and playbooks: the same database, restarted with detection on and a
    # playbook that suspends and revokes
    playbooks = tmp_path / "playbooks.yaml"
    playbooks.write_text(yaml.safe_dump(CONTAINING_PLAYBOOK), encoding="utf-8")
    with plane(sqlite_url, port, master, playbooks_file=str(playbooks)) as c:
        step4 = values(c.assessment.collect())
        assert step4["detection.detectors_enabled_share"] == 1.0
        assert step4["response.auto_revocation_playbooks"] == 1.0
        assert step4["enforcement.tool_call_share"] == pytest.approx(0.9)  # kept
        scores.append(overall(c))

        # 5. revocation exercised: the agent's tokens revoked
        c.revocations.revoke_agent(CTX, agent.id, "revocation drill")
        step5 = values(c.assessment.collect())
        assert step5["revocation.last_exercised_days"] < 1
        scores.append(overall(c))

    assert all(b > a for a, b in itertools.pairwise(scores)), scores


# -- negative: what must not earn credit --------------------------------------------------------


@pytest.fixture
def offline(sqlite_url: str, clock: FakeClock) -> Iterator[Container]:
    c = build(Settings(database_url=sqlite_url, detection_enabled=False), clock=clock)
    yield c
    c.close()


def _agent(c: Container, name: str, **extra: Any) -> str:
    owner = c.humans.create(CTX, NewHuman(display_name=name, email=f"{name}@example.com"))
    agent = c.agents.register(
        CTX,
        NewAgent(
            name=name,
            owners=[owner.id],
            purpose="does work",
            environment="production",
            activate=True,
            **extra,
        ),
    )
    return agent.id


def test_an_enforced_permit_all_breaks_default_deny_and_a_dry_run_one_is_not_enforcement(
    offline: Container,
) -> None:
    c = offline
    c.policies.put(CTX, "everything", text="permit (principal, action, resource);")
    found = c.assessment.collect().get("policy.default_deny")
    assert found is not None
    assert found.value == 0.0
    assert "everything" in found.source
    assert found.numbers["permit_all"] == 1
    # "every Agent" is every principal an agent can be: the same hole
    c.policies.put(CTX, "everything", text="permit (principal is Agent, action, resource);")
    assert values(c.assessment.collect())["policy.default_deny"] == 0.0
    # in dry run it decides nothing: default deny holds, but nothing is enforced
    c.policies.put(
        CTX, "everything", text="permit (principal, action, resource);", mode=Mode.DRY_RUN
    )
    measured = values(c.assessment.collect())
    assert measured["policy.default_deny"] == 1.0
    assert measured["policy.enforced_share"] == 0.0


def test_a_permit_for_every_agent_names_no_agent_and_a_forbid_without_approval_covers_none(
    offline: Container,
) -> None:
    c = offline
    _agent(c, "runner", autonomy="unsupervised")
    c.policies.put(
        CTX,
        "reads",
        text='permit (principal is Agent, action == Action::"invoke_tool", resource);',
    )
    c.policies.put(CTX, "no-delete", text='forbid (principal, action, resource == Tool::"delete");')
    measured = values(c.assessment.collect())
    assert measured["policy.agent_coverage_share"] == 0.0
    assert measured["approvals.risky_agent_share"] == 0.0
    c.policies.put(
        CTX, "approve-risky", template="approval_above_risk", parameters={"threshold": 50}
    )
    assert values(c.assessment.collect())["approvals.risky_agent_share"] == 1.0


def test_past_due_access_reviews_lower_the_share(offline: Container, clock: FakeClock) -> None:
    c = offline
    _agent(c, "reviewed")
    assert values(c.assessment.collect())["agents.access_review_current_share"] == 1.0
    clock.advance(days=c.settings.access_review_interval_days + 1)
    measured = c.assessment.collect().get("agents.access_review_current_share")
    assert measured is not None
    assert measured.value == 0.0
    assert dict(measured.numbers) == {"agents": 1, "review_current": 0}


def test_a_dry_run_playbook_is_not_automatic_containment(sqlite_url: str, tmp_path: Path) -> None:
    book = {"version": 1, "playbooks": [{**RUNAWAY, "mode": "dry_run"}]}
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump(book), encoding="utf-8")
    c = build(Settings(database_url=sqlite_url, playbooks_file=str(path)))
    try:
        found = c.assessment.collect().get("response.auto_revocation_playbooks")
        assert found is not None
        assert found.value == 0.0
        assert dict(found.numbers) == {"playbooks": 1, "enforced_containing": 0}
    finally:
        c.close()


def test_a_trail_scan_is_bounded_and_says_when_it_was_capped(
    offline: Container, clock: FakeClock
) -> None:
    c = offline
    agent = EntityRef("Agent", _agent(c, "busy"))
    c.decisions.refresh()
    for n in range(5):  # five decisions asked of the PDP in process, none at a gateway
        c.decisions.decide(CTX, [AuthzRequest(agent, "invoke_tool", EntityRef("Tool", f"t{n}"))])
    c.assessment.max_scan = 3
    found = c.assessment.collect().get("enforcement.tool_call_share")
    assert found is not None
    assert found.numbers["decisions"] == 3
    assert found.numbers["capped"] == 1.0
    c.assessment.max_scan = 1000
    found = c.assessment.collect().get("enforcement.tool_call_share")
    assert found is not None
    assert found.numbers["decisions"] == 5
    assert found.numbers["capped"] == 0.0
    assert found.value == 0.0  # all five came through the PDP, none at an enforcement point
    clock.advance(days=c.assessment.window_days + 1)
    found = c.assessment.collect().get("enforcement.tool_call_share")
    assert found is not None
    assert found.numbers["decisions"] == 0


# -- evidence beats answers; the CLI ------------------------------------------------------------


def _complete_answers(c: Container, **claims: Any) -> dict[str, Any]:
    """An answers file answering every question the evidence cannot, plus ``claims``."""
    asked = c.assessment.to_ask()
    answers: dict[str, Any] = {q.id: "unknown" for q in asked}
    answers.update(claims)
    return {"bank_version": c.assessment.bank.version, "answers": answers}


def test_evidence_beats_a_contradicting_answer(offline: Container) -> None:
    c = offline
    data = _complete_answers(c, **{"govern.agent_owners": 4, "govern.ai_policy": 3})
    report = c.assessment.run(load_answers(data, c.assessment.bank), complete=True)
    owners = report.assessment.result("govern.agent_owners")
    assert owners is not None
    assert int(owners.level) == 0  # no agent has an owner: there are no agents
    assert owners.source.value == "measured"
    (contradiction,) = report.assessment.contradictions
    assert contradiction.question_id == "govern.agent_owners"
    assert contradiction.overstated
    assert contradiction.measurement.numbers["agents"] == 0
    policy = report.assessment.result("govern.ai_policy")
    assert policy is not None
    assert int(policy.level) == 3
    assert report.to_dict()["contradictions"] == [
        {"question": "govern.agent_owners", "claimed": 4, "measured": 0, "overstated": True}
    ]


@pytest.fixture
def on_db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("AGENTIAM_DETECTION_ENABLED", "false")
    c = build(Settings(database_url=sqlite_url, detection_enabled=False))
    yield c
    c.close()


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["assess", *args])


def test_the_cli_writes_json_and_markdown_with_the_overridden_answer(
    on_db: Container, tmp_path: Path
) -> None:
    answers = tmp_path / "answers.yaml"
    data = _complete_answers(on_db, **{"govern.agent_owners": 4})
    answers.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = _run("--answers", str(answers), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["contradictions"][0]["question"] == "govern.agent_owners"
    assert {m["ladder"] for m in report["ladders"]} == {"agent_iam", "governance"}
    assert report["roadmap"]
    assert report["roadmap"][0]["commands"] is not None
    out = tmp_path / "report.md"
    result = _run("--answers", str(answers), "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "## Where evidence overrode an answer" in text
    assert "`govern.agent_owners`: claimed 4, measured 0" in text
    summary = _run("--answers", str(answers))
    assert summary.exit_code == 0, summary.output
    assert "evidence overrode an answer" in summary.output


@pytest.mark.parametrize(
    ("answers", "named"),
    [
        ({"govern.roles": {"note": "two teams"}}, "answer govern.roles: level: is required"),
        ({"govern.roles": 7}, "answer govern.roles"),
        ({"govern.nonexistent": 2}, "answer govern.nonexistent: unknown question"),
        ({"govern.roles": None}, "answer govern.roles"),
    ],
)
def test_a_bad_answers_file_exits_2_naming_the_question(
    on_db: Container, tmp_path: Path, answers: dict[str, Any], named: str
) -> None:
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump({"bank_version": "2025.1", "answers": answers}), "utf-8")
    result = _run("--answers", str(path))
    assert result.exit_code == 2, result.output
    assert named in " ".join(result.output.split())


def test_a_partial_answers_file_exits_2_naming_the_first_missing_question(
    on_db: Container, tmp_path: Path
) -> None:
    data = _complete_answers(on_db)
    first = next(iter(data["answers"]))
    del data["answers"][first]
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = _run("--answers", str(path))
    assert result.exit_code == 2, result.output
    assert f"answer {first}: is missing" in " ".join(result.output.split())


def test_answers_for_another_bank_and_unparsable_yaml_exit_2(
    on_db: Container, tmp_path: Path
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"bank_version": "1999.1", "answers": {}}), "utf-8")
    result = _run("--answers", str(other))
    assert result.exit_code == 2
    assert "bank_version" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("answers: [unclosed", "utf-8")
    result = _run("--answers", str(broken))
    assert result.exit_code == 2
    assert "not valid YAML" in " ".join(result.output.split())


def test_key_age_is_measured_from_the_signing_keys_creation(
    offline: Container, clock: FakeClock
) -> None:
    """Key age is measured from the key's creation, on the service's clock."""
    c = build(
        Settings(
            database_url=str(offline.settings.database_url),
            master_key=MasterKey.generate_text(),
            detection_enabled=False,
        ),
        clock=clock,
    )
    try:
        c.signing_keys.ensure_key(CTX)
        clock.advance(days=100)
        age = values(c.assessment.collect())["keys.signing_key_age_days"]
        assert age == pytest.approx(100.0)
    finally:
        c.close()


def test_an_interactive_run_asks_what_the_evidence_cannot_answer(
    on_db: Container, tmp_path: Path
) -> None:
    asked = on_db.assessment.to_ask()
    assert asked  # the self-reported questions at least
    out = tmp_path / "report.json"
    # a bad level is asked again; an empty answer is "unknown"
    typed = "9\n3\n" + "\n" * (len(asked) - 1)
    result = CliRunner().invoke(cli, ["assess", "-i", "-o", str(out)], input=typed)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    first = next(r for r in report["questions"] if r["id"] == asked[0].id)
    assert first["level"] == 3
    assert first["source"] == "self_reported"
    assert set(report["gaps"]) == {q.id for q in asked[1:]}


def test_an_alert_and_the_containment_it_triggered_are_measured_as_exercised(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump(CONTAINING_PLAYBOOK), encoding="utf-8")
    with oauth_live(sqlite_url, playbooks_file=str(path)) as live:
        c = live.container
        before = values(c.assessment.collect())
        assert before["detection.last_exercised_days"] == NEVER
        assert before["response.last_triggered_days"] == NEVER
        with live.admin_client() as admin:
            search = 'permit (principal, action == Action::"invoke_tool", resource == Tool::"s");'
            assert admin.put("/v1/policies/search", json={"text": search}).status_code == 200
            for _ in range(500):  # a runaway loop, until the playbook cuts it off
                r = admin.post(
                    "/v1/authorize",
                    json={
                        "principal": {"type": "Agent", "id": live.agent_id},
                        "action": "invoke_tool",
                        "resource": {"type": "Tool", "id": "s"},
                        "context": {},
                    },
                )
                assert r.status_code == 200, r.text
                if r.json()["decision"] != "allow":
                    break
            else:
                pytest.fail("the runaway loop was never contained")
        deadline = time.monotonic() + 10
        while True:  # the revocation is recorded once it is done, after the suspension
            after = values(c.assessment.collect())
            if after["revocation.last_exercised_days"] < 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert after["detection.last_exercised_days"] < 1
        assert after["response.last_triggered_days"] < 1
        assert after["revocation.last_exercised_days"] < 1
