"""The decision point on both stores: decisions never read the database, changes made
by another replica arrive on refresh, staleness and audit failures fail closed, and
every policy change is audited with its version."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import FakeClock

from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.identities.lifecycle import LifecycleAction
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.errors import InvalidInput, ServiceUnavailable
from agentiam.ports import AuditQuery, UnitOfWork
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.decisions import DecisionPoint
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")
ALLOW_TOOLS = 'permit (principal is Agent, action == Action::"invoke_tool", resource is Tool);'


def _agent(c: Container, name: str = "bot") -> str:
    owner = c.humans.create(CTX, NewHuman(display_name="Ann", email=f"{name}@example.com"))
    spec: dict[str, Any] = {
        "name": name,
        "owners": [owner.id],
        "purpose": "test",
        "environment": "production",
        "activate": True,
    }
    return c.agents.register(CTX, NewAgent(**spec)).id


def _request(agent: str) -> AuthzRequest:
    return AuthzRequest(EntityRef("Agent", agent), "invoke_tool", EntityRef("Tool", "t"))


@pytest.fixture
def replicas(database_url: str, clock: FakeClock) -> Iterator[tuple[Container, Container]]:
    settings = Settings(database_url=database_url)
    a, b = build(settings, clock=clock), build(settings, clock=clock)
    yield a, b
    a.close()
    b.close()


class _CountingFactory:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        self.calls += 1
        return self.inner(read_only=read_only)  # type: ignore[no-any-return]


def test_decisions_do_not_touch_the_database(container: Container) -> None:
    agent = _agent(container)
    container.policies.put(CTX, "tools", text=ALLOW_TOOLS)
    container.decisions.refresh()
    counting = _CountingFactory(container.decisions._uow)
    container.decisions._uow = counting
    authorizer = container.decisions.authorizer
    for _ in range(200):
        assert authorizer.decide(_request(agent)).allowed
    assert counting.calls == 0


def test_another_replicas_changes_arrive_on_refresh(
    replicas: tuple[Container, Container],
) -> None:
    a, b = replicas
    agent = _agent(a)
    b.decisions.refresh()
    assert not b.decisions.authorizer.decide(_request(agent)).allowed  # default deny

    a.policies.put(CTX, "tools", text=ALLOW_TOOLS)
    assert not b.decisions.authorizer.decide(_request(agent)).allowed  # not yet polled
    b.decisions.refresh()
    decision = b.decisions.authorizer.decide(_request(agent))
    assert decision.allowed
    assert decision.policy_version == a.policies.head()[0]

    a.agents.transition(CTX, agent, LifecycleAction.SUSPEND, "incident")
    b.decisions.refresh()
    denied = b.decisions.authorizer.decide(_request(agent))
    assert not denied.allowed
    assert denied.reasons == ("the agent is suspended",)

    a.resources.put(CTX, ResourceRecord("Tool", "t", {"destructive": True}))
    a.policies.put(
        CTX,
        "no-destructive",
        text="forbid (principal, action, resource is Tool) "
        "when { resource has destructive && resource.destructive };",
    )
    b.decisions.refresh()
    assert b.decisions.authorizer.entities.resources[EntityRef("Tool", "t")].attributes == {
        "destructive": True
    }


def test_stale_policy_data_fails_closed(container: Container, clock: FakeClock) -> None:
    agent = _agent(container)
    container.policies.put(CTX, "tools", text=ALLOW_TOOLS)

    def broken(*, read_only: bool = False) -> UnitOfWork:
        raise ConnectionError("database gone")

    pdp = DecisionPoint(container.decisions._uow, clock, max_staleness_seconds=0.05)
    pdp.refresh()
    assert pdp.authorizer.decide(_request(agent)).allowed  # fresh: decided from memory
    pdp._uow = broken
    time.sleep(0.1)
    with pytest.raises(ServiceUnavailable):
        pdp.authorizer  # noqa: B018 - the property refreshes, fails, and refuses


def test_a_decision_that_cannot_be_audited_is_refused(container: Container) -> None:
    agent = _agent(container)
    container.policies.put(CTX, "tools", text=ALLOW_TOOLS)
    pdp = container.decisions
    pdp.refresh()
    # Decision logs are group-committed: the writer's store is the one that fails.
    writer = container.audit_writer
    inner = writer._uow

    def read_only_store(*, read_only: bool = False) -> UnitOfWork:
        if not read_only:
            raise ConnectionError("audit store gone")
        return inner(read_only=True)  # type: ignore[no-any-return]

    writer._uow = read_only_store
    with pytest.raises(ServiceUnavailable):
        pdp.decide(CTX, [_request(agent)])


def test_every_policy_change_is_audited_with_its_version(container: Container) -> None:
    container.policies.put(CTX, "tools", text=ALLOW_TOOLS)
    container.policies.delete(CTX, "tools")
    container.policies.rollback(CTX, 1)
    events = container.audit.find(AuditQuery(limit=50, type="policy.changed")).items
    assert [(e.action, e.details["version"]) for e in events] == [
        ("policy.put", 1),
        ("policy.delete", 2),
        ("policy.rollback", 3),
    ]
    assert events[0].details["put"]["tools"]  # a digest of the text, not the text
    assert ALLOW_TOOLS not in str(events[0].details)


def test_decision_events_record_arguments_through_the_configured_redaction(
    database_url: str, clock: FakeClock, tmp_path: Any
) -> None:
    rules = tmp_path / "redaction.yaml"
    rules.write_text(
        "record_arguments: values\n"
        "rules:\n"
        "  - paths: [card.number]\n    action: mask\n    keep_last: 4\n"
        "  - paths: ['**.ssn']\n    action: drop\n"
    )
    c = build(Settings(database_url=database_url, audit_redaction_file=str(rules)), clock=clock)
    try:
        agent = _agent(c)
        args = {"card": {"number": "4111111111111111"}, "who": {"ssn": "078-05-1120"}}
        request = AuthzRequest(
            EntityRef("Agent", agent),
            "invoke_tool",
            EntityRef("Tool", "t"),
            context={"args": args},
        )
        c.decisions.decide(CTX, [request])
        [event] = c.audit.find(AuditQuery(limit=5, type="authz.decision")).items
        assert event.details["arguments"] == {"card": {"number": "…1111"}, "who": {}}
        assert event.details["argument_names"] == ["card", "who"]
    finally:
        c.close()
    rules.write_text("record_arguments: values\nrules: [{paths: [a], action: shred}]\n")
    with pytest.raises(InvalidInput, match=r"redaction rules .*rule #1: action"):
        build(Settings(database_url=database_url, audit_redaction_file=str(rules)), clock=clock)
