"""The delegation store's contract on SQLite and the real PostgreSQL server: grants
(round trip, paging and filters, the ``active_at`` filter, revocation once and per
human, racing revokers) and the delegation graph (round trip, children of many
parents, purging expired nodes)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine

from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.core.delegation.models import (
    DelegationGrant,
    GrantStatus,
    TokenNode,
    TokenOrigin,
)
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, Human, RuntimeInfo
from agentiam.core.ids import new_id
from agentiam.ports import GrantQuery

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

DETAILS: tuple[dict[str, Any], ...] = (
    {
        "type": "payment_initiation",
        "actions": ["initiate", "status"],
        "locations": ["https://bank.example.com/payments"],
        "instructedAmount": {"currency": "EUR", "amount": "123.50"},
        "creditorName": "Merchant A — Zürich ✓",
        "limits": {"count": 3, "ratio": 0.25, "strict": True, "note": None, "nested": {"z": 1}},
    },
    {"type": "tool", "identifier": "search", "datatypes": []},
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    yield e
    e.dispose()


@pytest.fixture
def people(engine: Engine) -> dict[str, str]:
    """Two humans and two agents (grants reference both by foreign key)."""
    ids = {
        "ada": new_id("human"),
        "bob": new_id("human"),
        "bot": new_id("agent"),
        "helper": new_id("agent"),
    }
    with SqlUnitOfWork(engine) as uow:
        for name in ("ada", "bob"):
            uow.humans.add(
                Human(
                    id=ids[name],
                    display_name=name,
                    email=f"{name}@example.com",
                    external_identity=None,
                    created_at=T0,
                    updated_at=T0,
                )
            )
        for name in ("bot", "helper"):
            uow.agents.add(
                Agent(
                    id=ids[name],
                    name=name,
                    owners=(ids["ada"],),
                    purpose="test",
                    environment="dev",
                    autonomy=AutonomyLevel.MONITORED,
                    runtime=RuntimeInfo(),
                    labels={},
                    status=AgentStatus.ACTIVE,
                    next_access_review=date(2027, 1, 1),
                    created_at=T0,
                    updated_at=T0,
                )
            )
        uow.commit()
    return ids


def grant(human_id: str, agent_id: str, **kw: Any) -> DelegationGrant:
    fields: dict[str, Any] = {
        "id": new_id("grant"),
        "human_id": human_id,
        "agent_id": agent_id,
        "scopes": ("tools:read", "tools:write"),
        "audiences": ("https://api.example.com", "https://mcp.example.com/mcp"),
        "authorization_details": (),
        "max_depth": 2,
        "created_at": T0,
        "created_by": "human:" + human_id,
        "expires_at": T0 + timedelta(days=30),
        **kw,
    }
    return DelegationGrant(**fields)


def add_grants(engine: Engine, *grants: DelegationGrant) -> None:
    with SqlUnitOfWork(engine) as uow:
        for g in grants:
            uow.grants.add(g)
        uow.commit()


def find_all(engine: Engine, **kw: Any) -> list[DelegationGrant]:
    with SqlUnitOfWork(engine, read_only=True) as uow:
        return list(uow.grants.find(GrantQuery(limit=1000, **kw)).items)


# -- grants ------------------------------------------------------------------------------


def test_a_grant_reads_back_as_written(engine: Engine, people: dict[str, str]) -> None:
    plus_two = timezone(timedelta(hours=2))
    g = grant(
        people["ada"],
        people["bot"],
        authorization_details=DETAILS,
        max_depth=3,
        created_at=datetime(2026, 12, 7, 14, 0, 0, 123456, tzinfo=plus_two),
    )
    bare = grant(people["ada"], people["bot"], scopes=(), audiences=(), max_depth=1)
    add_grants(engine, g, bare)
    with SqlUnitOfWork(engine, read_only=True) as uow:
        got = uow.grants.get(g.id)
        assert got == g
        assert got is not None
        assert got.created_at == datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)
        assert got.created_at.tzinfo is not None
        # JSON objects come back equal whatever their key order; nothing is lost.
        assert [dict(d) for d in got.authorization_details] == list(DETAILS)
        assert got.scopes == ("tools:read", "tools:write")  # order kept
        assert got.status(T0) is GrantStatus.ACTIVE
        assert uow.grants.get(bare.id) == bare
        assert uow.grants.get(new_id("grant")) is None


def test_authorization_details_keep_every_json_value_and_key_order_is_irrelevant(
    engine: Engine, people: dict[str, str]
) -> None:
    details = ({"b": 1, "a": [1, "x", {"d": None, "c": False}], "": "empty key"},)
    reordered = ({"": "empty key", "a": [1, "x", {"c": False, "d": None}], "b": 1},)
    g = grant(people["ada"], people["bot"], authorization_details=details)
    add_grants(engine, g)
    with SqlUnitOfWork(engine, read_only=True) as uow:
        got = uow.grants.get(g.id)
    assert got is not None
    assert got.authorization_details == reordered
    assert got == replace(g, authorization_details=reordered)


def test_find_pages_in_id_order_and_filters_by_human_and_agent(
    engine: Engine, people: dict[str, str]
) -> None:
    ada, bob, bot, helper = people["ada"], people["bob"], people["bot"], people["helper"]
    grants = [
        grant(ada, bot),
        grant(ada, helper),
        grant(bob, bot),
        grant(ada, bot, scopes=("other",)),
        grant(bob, helper),
    ]
    add_grants(engine, *reversed(grants))  # insertion order must not matter
    by_id = sorted(grants, key=lambda g: g.id)

    seen: list[DelegationGrant] = []
    after = None
    pages = 0
    with SqlUnitOfWork(engine, read_only=True) as uow:
        while True:
            page = uow.grants.find(GrantQuery(limit=2, after=after))
            assert len(page.items) <= 2
            seen.extend(page.items)
            pages += 1
            if page.next_after is None:
                break
            assert page.next_after == page.items[-1].id
            after = page.next_after
        assert seen == by_id
        assert pages == 3
        # A page exactly as long as what is left says there is no more.
        last = uow.grants.find(GrantQuery(limit=1, after=by_id[-2].id))
        assert (list(last.items), last.next_after) == ([by_id[-1]], None)

    assert find_all(engine, human_id=ada) == [g for g in by_id if g.human_id == ada]
    assert find_all(engine, agent_id=bot) == [g for g in by_id if g.agent_id == bot]
    assert find_all(engine, human_id=bob, agent_id=helper) == [grants[4]]
    assert find_all(engine, human_id=new_id("human")) == []

    # Paging and a filter together.
    with SqlUnitOfWork(engine, read_only=True) as uow:
        first = uow.grants.find(GrantQuery(limit=1, human_id=ada))
        rest = uow.grants.find(GrantQuery(limit=10, human_id=ada, after=first.next_after))
    assert [*first.items, *rest.items] == [g for g in by_id if g.human_id == ada]
    assert rest.next_after is None


def test_active_at_leaves_out_expired_and_revoked_grants(
    engine: Engine, people: dict[str, str]
) -> None:
    ada, bot = people["ada"], people["bot"]
    live = grant(ada, bot, expires_at=T0 + timedelta(hours=1))
    expired = grant(ada, bot, expires_at=T0 - timedelta(seconds=1))
    ends_now = grant(ada, bot, expires_at=T0)  # expired at its expiry instant
    just_live = grant(ada, bot, expires_at=T0 + timedelta(microseconds=1))
    revoked = grant(ada, bot)
    add_grants(engine, live, expired, ends_now, just_live, revoked)
    with SqlUnitOfWork(engine) as uow:
        assert uow.grants.revoke(revoked.id, at=T0, by="admin:alice", reason="test")
        uow.commit()

    active = find_all(engine, active_at=T0)
    assert {g.id for g in active} == {live.id, just_live.id}
    assert all(g.is_active(T0) for g in active)
    # Agrees with the model everywhere.
    for at in (T0 - timedelta(hours=1), T0, T0 + timedelta(minutes=30), T0 + timedelta(days=1)):
        every = find_all(engine)
        assert [g.id for g in find_all(engine, active_at=at)] == [
            g.id for g in every if g.is_active(at)
        ]
    # Before the revocation time a revoked grant is still left out: revocation is final.
    assert revoked.id not in {g.id for g in find_all(engine, active_at=T0 - timedelta(days=1))}
    # A time zone other than UTC means the same instant.
    plus_five = timezone(timedelta(hours=5))
    assert find_all(engine, active_at=T0.astimezone(plus_five)) == active
    assert find_all(engine, active_at=T0, agent_id=people["helper"]) == []


def test_revoke_once_then_false(engine: Engine, people: dict[str, str]) -> None:
    g = grant(people["ada"], people["bot"])
    add_grants(engine, g)
    at = T0 + timedelta(minutes=5)
    with SqlUnitOfWork(engine) as uow:
        assert uow.grants.revoke(g.id, at=at, by="admin:alice", reason="left the team")
        assert not uow.grants.revoke(g.id, at=at + timedelta(1), by="admin:eve", reason="again")
        assert not uow.grants.revoke(new_id("grant"), at=at, by="admin:alice", reason="none")
        uow.commit()
    with SqlUnitOfWork(engine) as uow:
        assert not uow.grants.revoke(g.id, at=at, by="admin:eve", reason="later")
        got = uow.grants.get(g.id)
    assert got == replace(g, revoked_at=at, revoked_by="admin:alice", revoke_reason="left the team")
    assert got.status(T0) is GrantStatus.REVOKED


def test_a_revocation_not_committed_is_not_kept(engine: Engine, people: dict[str, str]) -> None:
    g = grant(people["ada"], people["bot"])
    add_grants(engine, g)
    with SqlUnitOfWork(engine) as uow:
        assert uow.grants.revoke(g.id, at=T0, by="admin:alice", reason="r")
        assert uow.grants.revoke_for_human(people["ada"], at=T0, by="a", reason="r") == []
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.grants.get(g.id) == g


def test_revoke_for_human_touches_only_that_humans_unrevoked_grants(
    engine: Engine, people: dict[str, str]
) -> None:
    ada, bob, bot, helper = people["ada"], people["bob"], people["bot"], people["helper"]
    a1, a2 = grant(ada, bot), grant(ada, helper)
    a_expired = grant(ada, bot, expires_at=T0 - timedelta(days=1))
    a_revoked = grant(ada, helper)
    b1 = grant(bob, bot)
    add_grants(engine, a1, a2, a_expired, a_revoked, b1)
    earlier = T0 - timedelta(hours=1)
    with SqlUnitOfWork(engine) as uow:
        assert uow.grants.revoke(a_revoked.id, at=earlier, by="admin:alice", reason="first")
        uow.commit()

    with SqlUnitOfWork(engine) as uow:
        ids = uow.grants.revoke_for_human(ada, at=T0, by="admin:eve", reason="offboarded")
        uow.commit()
    assert ids == sorted([a1.id, a2.id, a_expired.id])

    with SqlUnitOfWork(engine, read_only=True) as uow:
        for g in (a1, a2, a_expired):
            assert uow.grants.get(g.id) == replace(
                g, revoked_at=T0, revoked_by="admin:eve", revoke_reason="offboarded"
            )
        # An earlier revocation keeps its own time, author and reason.
        assert uow.grants.get(a_revoked.id) == replace(
            a_revoked, revoked_at=earlier, revoked_by="admin:alice", revoke_reason="first"
        )
        assert uow.grants.get(b1.id) == b1  # another human's grant is untouched

    with SqlUnitOfWork(engine) as uow:
        assert uow.grants.revoke_for_human(ada, at=T0, by="admin:eve", reason="again") == []
        assert uow.grants.revoke_for_human(new_id("human"), at=T0, by="x", reason="none") == []
        uow.commit()
    assert find_all(engine, active_at=T0) == [b1]


def test_of_two_racing_revokers_only_one_wins(engine: Engine, people: dict[str, str]) -> None:
    """The second revoker waits for the first (SQLite: the writer queue; PostgreSQL: the
    row lock) and then finds the grant already revoked."""
    g = grant(people["ada"], people["bot"])
    add_grants(engine, g)
    first_revoked = threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        with SqlUnitOfWork(engine) as uow:
            results["first"] = uow.grants.revoke(g.id, at=T0, by="first", reason="r1")
            first_revoked.set()
            threading.Event().wait(0.3)  # hold the write while the second one starts
            uow.commit()

    def second() -> None:
        first_revoked.wait(10)
        with SqlUnitOfWork(engine) as uow:
            results["second"] = uow.grants.revoke(g.id, at=T0, by="second", reason="r2")
            results["bulk"] = uow.grants.revoke_for_human(
                people["ada"], at=T0, by="second", reason="r2"
            )
            uow.commit()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert results == {"first": True, "second": False, "bulk": []}
    with SqlUnitOfWork(engine, read_only=True) as uow:
        got = uow.grants.get(g.id)
    assert got is not None
    assert got.revoked_by == "first"


# -- the delegation graph ----------------------------------------------------------------


def node(
    jti: str | None = None,
    *,
    parent: TokenNode | None = None,
    expires_at: datetime = T0 + timedelta(minutes=5),
    **kw: Any,
) -> TokenNode:
    jti = jti or new_id("token")
    fields: dict[str, Any] = {
        "jti": jti,
        "parent_jti": parent.jti if parent else None,
        "actor_jti": None,
        "root_jti": parent.root_jti if parent else jti,
        "origin": TokenOrigin.EXCHANGE if parent else TokenOrigin.HUMAN,
        "subject": "hum_01JF0000000000000000000000",
        "client_id": "agt_01JF0000000000000000000000",
        "actors": (),
        "grant_id": None,
        "scope": ("tools:read",),
        "audience": "https://api.example.com",
        "issued_at": T0,
        "expires_at": expires_at,
        **kw,
    }
    return TokenNode(**fields)


def add_nodes(engine: Engine, *nodes: TokenNode) -> None:
    with SqlUnitOfWork(engine) as uow:
        for n in nodes:
            uow.token_graph.add(n)
        uow.commit()


def test_a_token_node_reads_back_as_written(engine: Engine) -> None:
    root = node(
        origin=TokenOrigin.HUMAN,
        external_subject="https://idp.example.com abc-123",  # PostgreSQL text has no NUL
        scope=(),
        actors=(),
    )
    child = node(
        parent=root,
        actor_jti=new_id("token"),
        actors=("agt_01JFB000000000000000000000", "agt_01JFA000000000000000000000"),
        grant_id=new_id("grant"),  # not a foreign key: the graph is purged on its own
        scope=("tools:write", "tools:read"),
        issued_at=T0.astimezone(timezone(timedelta(hours=-7))),
    )
    jit = node(parent=child, origin=TokenOrigin.JIT, actors=("a", "b", "c"))
    add_nodes(engine, root, child, jit)
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.token_graph.get(root.jti) == root
        got = uow.token_graph.get(child.jti)
        assert got == child
        assert got is not None
        assert got.scope == ("tools:write", "tools:read")  # order kept
        assert got.actors[0] == "agt_01JFB000000000000000000000"  # current actor first
        assert got.depth == 2
        assert got.issued_at == T0
        assert uow.token_graph.get(jit.jti) == jit
        assert uow.token_graph.get(new_id("token")) is None


def test_children_of_several_parents_in_jti_order(engine: Engine) -> None:
    root = node()
    a, b, c = (node(parent=root) for _ in range(3))
    a_kids = [node(parent=a) for _ in range(3)]
    b_kids = [node(parent=b) for _ in range(2)]
    grandchild = node(parent=a_kids[0])
    add_nodes(engine, root, a, b, c, *reversed(a_kids), *b_kids, grandchild)
    with SqlUnitOfWork(engine, read_only=True) as uow:
        graph = uow.token_graph
        assert graph.children([root.jti]) == sorted([a, b, c], key=lambda n: n.jti)
        assert graph.children([a.jti, b.jti, c.jti]) == sorted(a_kids + b_kids, key=lambda n: n.jti)
        assert graph.children([c.jti]) == []
        assert graph.children([]) == []
        assert graph.children([new_id("token")]) == []
        # Repeated parents do not repeat children.
        assert graph.children([b.jti, b.jti]) == sorted(b_kids, key=lambda n: n.jti)
        # Breadth-first walk of the whole tree below the root.
        level, below = [root.jti], []
        while level:
            kids = graph.children(level)
            below.extend(kids)
            level = [k.jti for k in kids]
        assert {n.jti for n in below} == {n.jti for n in (a, b, c, *a_kids, *b_kids, grandchild)}


def test_children_of_more_parents_than_one_in_list_holds(engine: Engine) -> None:
    root = node()
    parents = [node(parent=root) for _ in range(1200)]
    kids = [node(parent=parents[i]) for i in (0, 499, 500, 501, 999, 1000, 1199)]
    add_nodes(engine, root, *parents, *kids)
    with SqlUnitOfWork(engine, read_only=True) as uow:
        got = uow.token_graph.children([p.jti for p in reversed(parents)])
    assert got == sorted(kids, key=lambda n: n.jti)


def test_purge_forgets_expired_nodes_up_to_the_limit(engine: Engine) -> None:
    root = node(expires_at=T0 + timedelta(hours=1))
    old = [node(parent=root, expires_at=T0 - timedelta(minutes=i + 1)) for i in range(5)]
    at_cutoff = node(parent=root, expires_at=T0)  # not expired *before* the cutoff
    live = node(parent=root, expires_at=T0 + timedelta(minutes=1))
    add_nodes(engine, root, *old, at_cutoff, live)
    with SqlUnitOfWork(engine) as uow:
        assert uow.token_graph.purge(T0, 3) == 3
        uow.commit()
    with SqlUnitOfWork(engine) as uow:
        remaining_old = [n for n in old if uow.token_graph.get(n.jti) is not None]
        # The longest expired went first.
        assert remaining_old == old[:2]
        assert uow.token_graph.purge(T0, 0) == 0
        assert uow.token_graph.purge(T0, 100) == 2
        assert uow.token_graph.purge(T0, 100) == 0
        uow.commit()
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.token_graph.get(at_cutoff.jti) == at_cutoff
        assert uow.token_graph.get(live.jti) == live
        assert uow.token_graph.get(root.jti) == root
        assert uow.token_graph.children([root.jti]) == sorted(
            [at_cutoff, live], key=lambda n: n.jti
        )
    with SqlUnitOfWork(engine) as uow:
        assert uow.token_graph.purge(T0 + timedelta(days=1), 100) == 3
        uow.commit()
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.token_graph.get(root.jti) is None
