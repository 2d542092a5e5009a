"""The registry's contract, run unchanged against SQLite and the real PostgreSQL server.

Every case goes through the services and the SQL stores on each backend (see the
``database_url`` fixture). A rejected call must write nothing: the cases count rows
before and after.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey
from sqlalchemy import func, select, text
from tests.conftest import FakeClock

from agentiam.adapters.storage import tables as t
from agentiam.bootstrap import Container
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction
from agentiam.core.identities.models import Agent, Human, KeyStatus
from agentiam.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from agentiam.ports import AgentQuery, HumanQuery
from agentiam.services.agents import AgentChanges, NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import HumanChanges, NewHuman

CTX = CallContext.system("contract-test")
A = LifecycleAction


def count(c: Container, table: Any) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def snapshot(c: Container) -> dict[str, int]:
    return {tbl.name: count(c, tbl) for tbl in t.metadata.sorted_tables}


def human(c: Container, email: str = "ada@example.com", **kw: Any) -> Human:
    return c.humans.create(CTX, NewHuman(display_name="Ada Lovelace", email=email, **kw))


def agent(c: Container, owner: Human, name: str = "invoice-bot", **kw: Any) -> Agent:
    spec: dict[str, Any] = {
        "name": name,
        "owners": [owner.id],
        "purpose": "pay invoices",
        "environment": "production",
        **kw,
    }
    return c.agents.register(CTX, NewAgent(**spec))


def es256() -> dict[str, str]:
    return {**ECKey.generate_key("P-256").as_dict(private=False), "alg": "ES256"}


# -- humans ------------------------------------------------------------------------------


def test_human_round_trip_and_update(container: Container) -> None:
    h = human(container, external_issuer="https://idp.example.com", external_subject="u-1")
    assert container.humans.get(h.id) == h
    updated = container.humans.update(CTX, h.id, HumanChanges(display_name="Ada King"))
    assert updated.display_name == "Ada King"
    assert updated.version == h.version + 1
    page = container.humans.find(HumanQuery(limit=10, email="ada@example.com"))
    assert [x.id for x in page.items] == [h.id]


def test_email_is_unique_on_its_normalised_form(container: Container) -> None:
    human(container, "ada@example.com")
    before = snapshot(container)
    with pytest.raises(Conflict, match="email"):
        human(container, "ADA@Example.COM")
    assert snapshot(container) == before


def test_external_identity_links_one_human_only(container: Container) -> None:
    human(
        container, "a@example.com", external_issuer="https://idp.example.com", external_subject="s"
    )
    with pytest.raises(Conflict, match="external identity"):
        human(
            container,
            "b@example.com",
            external_issuer="https://idp.example.com",
            external_subject="s",
        )


@pytest.mark.parametrize(
    "kw",
    [
        {"email": "not-an-email"},
        {
            "email": "a@example.com",
            "external_issuer": "http://idp.example.com",
            "external_subject": "s",
        },
        {"email": "a@example.com", "external_issuer": "https://idp.example.com"},
        {"email": "a\u200b@example.com"},
    ],
)
def test_invalid_human_writes_nothing(container: Container, kw: dict[str, Any]) -> None:
    before = snapshot(container)
    with pytest.raises(InvalidInput):
        container.humans.create(CTX, NewHuman(display_name="Ada", **kw))
    assert snapshot(container) == before


# -- agents ------------------------------------------------------------------------------


def test_agent_registration_records_everything(container: Container) -> None:
    owner = human(container)
    a = agent(
        container,
        owner,
        name="Invoice-Bot",
        labels={"Team": "Payments"},
        runtime={"framework": "langgraph", "model": "gpt-x", "version": "1.2"},
        autonomy="monitored",
    )
    assert a.id.startswith("agt_")
    assert a.name == "invoice-bot"
    assert a.labels == {"team": "payments"}
    assert a.status is AgentStatus.PENDING
    assert a.next_access_review == container.clock.now().date() + timedelta(days=90)
    assert container.agents.get(a.id) == a
    assert container.agents.resolve("INVOICE-BOT") == a
    events = [e.type for e in container.audit.find(_audit_query(a.id)).items]
    assert events == ["agent.created"]


def _audit_query(agent_id: str) -> Any:
    from agentiam.ports import AuditQuery

    return AuditQuery(limit=100, agent_id=agent_id)


def test_agent_needs_an_existing_human_owner(container: Container) -> None:
    before = snapshot(container)
    with pytest.raises(InvalidInput, match="at least one human owner"):
        container.agents.register(
            CTX, NewAgent(name="x", owners=[], purpose="p", environment="dev")
        )
    with pytest.raises(InvalidInput, match="do not exist"):
        container.agents.register(
            CTX, NewAgent(name="x", owners=["hum_nobody"], purpose="p", environment="dev")
        )
    assert snapshot(container) == before


def test_name_is_unique_normalised_and_never_reused(container: Container) -> None:
    owner = human(container)
    a = agent(container, owner, name="invoice-bot")
    with pytest.raises(Conflict, match="never reused"):
        agent(container, owner, name="\uff29nvoice-BOT")  # fullwidth I
    container.agents.transition(CTX, a.id, A.DECOMMISSION, "retired")
    with pytest.raises(Conflict, match="never reused"):
        agent(container, owner, name="invoice-bot")


def test_confusable_name_is_refused(container: Container) -> None:
    owner = human(container)
    before = snapshot(container)
    with pytest.raises(InvalidInput, match="mixes scripts"):
        agent(container, owner, name="inv\u043eice-bot")  # Cyrillic o
    assert snapshot(container) == before


def test_lifecycle_records_who_and_why(container: Container) -> None:
    owner = human(container)
    a = agent(container, owner)
    container.agents.transition(CTX, a.id, A.ACTIVATE, None)
    container.agents.transition(CTX, a.id, A.SUSPEND, "incident 42")
    container.agents.transition(CTX, a.id, A.RESUME, "cleared")
    final = container.agents.transition(CTX, a.id, A.DECOMMISSION, "project over")
    assert final.status is AgentStatus.DECOMMISSIONED
    history = container.agents.transitions(a.id)
    assert [(h.action, h.to_status, h.reason) for h in history] == [
        (A.ACTIVATE, AgentStatus.ACTIVE, "activated"),
        (A.SUSPEND, AgentStatus.SUSPENDED, "incident 42"),
        (A.RESUME, AgentStatus.ACTIVE, "cleared"),
        (A.DECOMMISSION, AgentStatus.DECOMMISSIONED, "project over"),
    ]
    assert {h.actor for h in history} == {"system:agentiam"}


def test_forbidden_transition_is_409_and_writes_nothing(container: Container) -> None:
    owner = human(container)
    a = agent(container, owner)
    before = snapshot(container)
    with pytest.raises(InvalidTransition):
        container.agents.transition(CTX, a.id, A.SUSPEND, "not active yet")
    with pytest.raises(InvalidTransition):
        container.agents.transition(CTX, a.id, A.RESUME, "not suspended")
    assert snapshot(container) == before
    container.agents.transition(CTX, a.id, A.DECOMMISSION, "done")
    for action in A:
        with pytest.raises(InvalidTransition):
            container.agents.transition(CTX, a.id, action, "again")
    with pytest.raises(InvalidTransition):
        container.agents.update(CTX, a.id, AgentChanges(purpose="new"))


def test_suspend_and_decommission_need_a_reason(container: Container) -> None:
    owner = human(container)
    a = agent(container, owner, activate=True)
    with pytest.raises(InvalidInput, match="reason"):
        container.agents.transition(CTX, a.id, A.SUSPEND, "  ")


def test_update_changes_fields_and_keeps_name(container: Container) -> None:
    owner, other = human(container), human(container, "grace@example.com")
    a = agent(container, owner)
    b = container.agents.update(
        CTX,
        a.id,
        AgentChanges(owners=[owner.id, other.id], labels={"tier": "gold"}, autonomy="suggest"),
    )
    assert b.owners == (owner.id, other.id)
    assert b.labels == {"tier": "gold"}
    assert b.version == a.version + 1
    with pytest.raises(InvalidInput):
        container.agents.update(CTX, a.id, AgentChanges(owners=[]))


def test_sponsors_are_optional_existing_humans_and_filterable(container: Container) -> None:
    owner, sponsor = human(container), human(container, "cfo@example.com")
    a = agent(container, owner, sponsors=[sponsor.id])
    b = agent(container, owner, name="no-sponsor")
    assert container.agents.get(a.id).sponsors == (sponsor.id,)
    assert b.sponsors == ()
    found = container.agents.find(AgentQuery(limit=10, sponsor=sponsor.id)).items
    assert [x.id for x in found] == [a.id]
    # a sponsor is not an owner, and the owner filter does not match sponsors
    assert container.agents.find(AgentQuery(limit=10, owner=sponsor.id)).items == []
    before = snapshot(container)
    with pytest.raises(InvalidInput, match="sponsors do not exist"):
        agent(container, owner, name="ghost", sponsors=["hum_ghost"])
    assert snapshot(container) == before
    cleared = container.agents.update(CTX, a.id, AgentChanges(sponsors=[]))
    assert cleared.sponsors == ()
    assert cleared.owners == (owner.id,)


def test_stale_version_is_refused(container: Container) -> None:
    from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork

    owner = human(container)
    a = agent(container, owner)
    container.agents.update(CTX, a.id, AgentChanges(purpose="changed"))
    with SqlUnitOfWork(container.engine) as uow, pytest.raises(Conflict, match="concurrently"):
        uow.agents.update(a, expected_version=a.version)  # a is the old value


def test_list_filters_and_pages(container: Container) -> None:
    ada, grace = human(container), human(container, "grace@example.com")
    made = []
    for i in range(7):
        made.append(
            agent(
                container,
                ada if i % 2 else grace,
                name=f"bot-{i}",
                environment="staging" if i < 3 else "production",
                labels={"team": "red" if i % 3 == 0 else "blue"},
                activate=i == 5,
            )
        )
    ids: list[str] = []
    after = None
    while True:
        page = container.agents.find(AgentQuery(limit=3, after=after))
        ids += [a.id for a in page.items]
        if page.next_after is None:
            break
        after = page.next_after
    assert ids == sorted(a.id for a in made)

    def names(**kw: Any) -> set[str]:
        return {a.name for a in container.agents.find(AgentQuery(limit=50, **kw)).items}

    assert names(owner=ada.id) == {"bot-1", "bot-3", "bot-5"}
    assert names(environment="staging") == {"bot-0", "bot-1", "bot-2"}
    assert names(status=AgentStatus.ACTIVE) == {"bot-5"}
    assert names(labels={"team": "red"}) == {"bot-0", "bot-3", "bot-6"}
    assert names(labels={"team": None}) == {f"bot-{i}" for i in range(7)}
    assert names(labels={"team": "red"}, owner=ada.id) == {"bot-3"}


def test_concurrent_registration_of_one_name_admits_one(container: Container) -> None:
    owner = human(container)
    results: list[str] = []
    barrier = threading.Barrier(4)

    def register() -> None:
        barrier.wait()
        try:
            agent(container, owner, name="race-bot")
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=register) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == ["conflict", "conflict", "conflict", "ok"]
    assert count(container, t.agents) == 1


# -- ephemeral agents ---------------------------------------------------------------------


def test_ephemeral_child_expires_and_parent_cascade(container: Container) -> None:
    clock: FakeClock = container.clock  # type: ignore[assignment]
    owner = human(container)
    parent = agent(container, owner, name="planner", activate=True)
    child = agent(
        container, owner, name="worker", owners=[], parent_id=parent.id, ttl_seconds=600,
        activate=True,
    )  # fmt: skip
    assert child.owners == parent.owners  # inherited
    assert child.expires_at == clock.now() + timedelta(seconds=600)
    grandchild = agent(
        container, owner, name="helper", parent_id=child.id, ttl_seconds=300, activate=True
    )
    with pytest.raises(InvalidInput, match="outlive"):
        agent(container, owner, name="late", parent_id=child.id, ttl_seconds=3600)

    clock.advance(seconds=301)
    assert container.agents.expire_due(CTX) == [grandchild.id]
    assert container.agents.get(grandchild.id).status is AgentStatus.DECOMMISSIONED
    assert container.agents.get(child.id).status is AgentStatus.ACTIVE

    sibling = agent(container, owner, name="sibling", parent_id=parent.id, ttl_seconds=60)
    container.agents.transition(CTX, parent.id, A.SUSPEND, "incident")
    for x in (child, sibling):
        moved = container.agents.get(x.id)
        assert moved.status is AgentStatus.DECOMMISSIONED
    history = container.agents.transitions(child.id)[-1]
    assert "suspended" in history.reason
    assert history.actor == "system:agentiam"


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"ttl_seconds": 86401}, InvalidInput),
        ({"ttl_seconds": 0}, InvalidInput),
        ({"environment": "staging"}, InvalidInput),
        ({"parent_id": None}, InvalidInput),
    ],
)
def test_ephemeral_rules_are_enforced(
    container: Container, kw: dict[str, Any], error: type[Exception]
) -> None:
    owner = human(container)
    parent = agent(container, owner, name="planner", activate=True)
    spec = {"parent_id": parent.id, "ttl_seconds": 60, **kw}
    before = snapshot(container)
    with pytest.raises(error):
        agent(container, owner, name="child", **spec)
    assert snapshot(container) == before


def test_ephemeral_nesting_depth_is_capped(container: Container) -> None:
    owner = human(container)
    chain = [agent(container, owner, name="root", activate=True)]
    depth = container.settings.limits.max_agent_depth
    for i in range(1, depth):
        chain.append(
            agent(
                container, owner, name=f"level-{i}", parent_id=chain[-1].id, ttl_seconds=600,
                activate=True,
            )
        )  # fmt: skip
    before = snapshot(container)
    with pytest.raises(InvalidInput, match="depth"):
        agent(container, owner, name="too-deep", parent_id=chain[-1].id, ttl_seconds=60)
    assert snapshot(container) == before


def test_child_of_inactive_parent_is_refused(container: Container) -> None:
    owner = human(container)
    parent = agent(container, owner, name="planner")  # pending
    with pytest.raises(InvalidTransition):
        agent(container, owner, name="child", parent_id=parent.id, ttl_seconds=60)
    with pytest.raises(NotFound):
        agent(container, owner, name="child", parent_id="agt_missing", ttl_seconds=60)


def test_expired_agent_cannot_be_resumed(container: Container) -> None:
    clock: FakeClock = container.clock  # type: ignore[assignment]
    owner = human(container)
    parent = agent(container, owner, name="planner", activate=True)
    child = agent(container, owner, name="w", parent_id=parent.id, ttl_seconds=60, activate=True)
    container.agents.transition(CTX, child.id, A.SUSPEND, "pause")
    clock.advance(seconds=61)
    assert not container.agents.get(child.id).is_usable(clock.now())
    with pytest.raises(InvalidTransition, match="TTL"):
        container.agents.transition(CTX, child.id, A.RESUME, "back")


# -- keys -------------------------------------------------------------------------------


def test_keys_add_retire_and_decommission_retires_all(container: Container) -> None:
    owner = human(container)
    a = agent(container, owner, keys=[es256()])
    ed = {**OKPKey.generate_key("Ed25519").as_dict(private=False), "alg": "Ed25519", "kid": "k2"}
    k2 = container.agents.add_key(CTX, a.id, ed)
    keys = container.agents.keys(a.id)
    assert {k.alg for k in keys} == {"ES256", "Ed25519"}
    retired = container.agents.retire_key(CTX, a.id, "k2", "rotated")
    assert retired.status is KeyStatus.RETIRED
    assert retired.retire_reason == "rotated"
    with pytest.raises(Conflict, match="already retired"):
        container.agents.retire_key(CTX, a.id, k2.id, "again")
    container.agents.transition(CTX, a.id, A.DECOMMISSION, "done")
    assert all(k.status is KeyStatus.RETIRED for k in container.agents.keys(a.id))
    with pytest.raises(InvalidTransition):
        container.agents.add_key(CTX, a.id, es256())


def test_one_key_cannot_belong_to_two_agents(container: Container) -> None:
    owner = human(container)
    shared = es256()
    agent(container, owner, name="first", keys=[shared])
    before = snapshot(container)
    with pytest.raises(Conflict, match="already registered"):
        agent(container, owner, name="second", keys=[shared])
    assert snapshot(container) == before
    b = agent(container, owner, name="second")
    with pytest.raises(Conflict, match="already registered"):
        container.agents.add_key(CTX, b.id, shared)


def test_active_key_count_is_bounded(container: Container) -> None:
    owner = human(container)
    a = agent(container, owner)
    for _ in range(container.settings.limits.max_active_keys_per_agent):
        container.agents.add_key(CTX, a.id, es256())
    with pytest.raises(Conflict, match="maximum"):
        container.agents.add_key(CTX, a.id, es256())


# -- audit store ---------------------------------------------------------------------------


def test_every_change_is_audited_in_order(container: Container) -> None:
    from agentiam.ports import AuditQuery

    owner = human(container)
    a = agent(container, owner, keys=[es256()], activate=True)
    container.agents.transition(CTX, a.id, A.SUSPEND, "why not")
    types = [e.type for e in container.audit.find(AuditQuery(limit=50)).items]
    assert types == [
        "human.created",
        "agent.created",
        "agent.key.added",
        "agent.activate",
        "agent.suspend",
    ]
    suspend = container.audit.find(AuditQuery(limit=50, type="agent.suspend")).items[0]
    assert suspend.reason == "why not"
    assert suspend.agent_id == a.id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET type = 'forged'",
        "DELETE FROM audit_events",
        "UPDATE agent_transitions SET reason = 'forged'",
        "DELETE FROM agent_transitions",
    ],
)
def test_audit_and_transitions_are_append_only(container: Container, statement: str) -> None:
    owner = human(container)
    agent(container, owner, activate=True)
    before = snapshot(container)
    with pytest.raises(Exception, match="append-only"), container.engine.begin() as conn:
        conn.execute(text(statement))
    assert snapshot(container) == before
