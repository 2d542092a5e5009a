"""The policy store's contract on SQLite and the real PostgreSQL server: the versioned
policy set (history, the set at any past version, racing writers, a large import),
the resource catalog (upsert, paging, tombstones), the entity fingerprint the policy
decision point polls, and the audit trail's ``since`` filter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from tests.conftest import FakeClock, _empty_postgres

from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container
from agentiam.core.audit.events import ResourceRef
from agentiam.core.identities.lifecycle import LifecycleAction
from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord, PolicySetVersion
from agentiam.core.policy.model import ResourceRecord as R
from agentiam.errors import Conflict, InvalidInput
from agentiam.ports import AuditQuery, ResourceQuery
from agentiam.services.agents import AgentChanges, NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import HumanChanges, NewHuman

CTX = CallContext.system("contract-test")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY_TABLES = (t.policy_versions, t.policy_revisions)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    yield e
    e.dispose()


@pytest.fixture
def pg_engine(postgres_database: str) -> Iterator[Engine]:
    """PostgreSQL only: two writers overlapping in time, which SQLite's writer queue
    never lets happen (so these cases have no SQLite counterpart to skip)."""
    _empty_postgres(postgres_database)
    e = make_engine(postgres_database)
    yield e
    e.dispose()


def meta(version: int, change: str = "put", **kw: Any) -> PolicySetVersion:
    fields: dict[str, Any] = {
        "version": version,
        "created_at": T0 + timedelta(minutes=version),
        "created_by": "admin:alice",
        "change": change,
        "comment": f"change {version}",
        "schema_extension": "",
        **kw,
    }
    return PolicySetVersion(**fields)


def pol(policy_id: str, rev: str = "1", **kw: Any) -> PolicyRecord:
    text_ = f'permit (principal, action == Action::"{policy_id}-{rev}", resource);'
    return PolicyRecord(id=policy_id, text=text_, **kw)


def commit(engine: Engine, version: int, *, put: Any = (), delete: Any = (), **kw: Any) -> None:
    with SqlUnitOfWork(engine) as uow:
        assert uow.policies.head() == version - 1
        uow.policies.commit_version(meta(version, **kw), put=put, delete=delete)
        uow.commit()


def rows(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- the policy set ----------------------------------------------------------------------


def test_an_empty_store_is_at_version_zero(engine: Engine) -> None:
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.policies.head() == 0
        assert uow.policies.versions(limit=10) == []
        assert uow.policies.version(1) is None
        assert uow.policies.policies(0) == []


def test_every_past_version_reads_back_as_it_was_written(engine: Engine) -> None:
    # Each step: (put, delete). The expected sets are replayed in Python.
    steps: list[tuple[list[PolicyRecord], list[str]]] = [
        ([pol("a"), pol("b"), pol("c")], []),
        ([pol("b", "2")], ["c"]),  # replace b, delete c
        ([pol("d")], ["a", "never-existed"]),  # deleting an unknown id is a no-op
        ([pol("c", "3")], []),  # a deleted id comes back
        ([], []),  # a schema-only change keeps the set
        ([pol("a", "5")], ["a", "b"]),  # delete and re-put in one version: the put wins
    ]
    expected: list[dict[str, PolicyRecord]] = [{}]
    for version, (put, delete) in enumerate(steps, start=1):
        commit(engine, version, put=put, delete=delete)
        current = {k: v for k, v in expected[-1].items() if k not in delete}
        current.update({p.id: p for p in put})
        expected.append(current)

    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.policies.head() == len(steps)
        for version, want in enumerate(expected):
            got = uow.policies.policies(version)
            assert got == [want[k] for k in sorted(want)], f"version {version}"
            if version:
                v = uow.policies.version(version)
                assert v is not None
                assert v.policy_count == len(want), f"version {version}"
        # A version past the head reads as the head's set.
        assert uow.policies.policies(99) == uow.policies.policies(len(steps))


def test_history_is_newest_first_and_pages_back(engine: Engine) -> None:
    for version in (1, 2, 3, 4):
        commit(
            engine,
            version,
            put=[pol(f"p{version}")],
            change="import" if version == 2 else "put",
            schema_extension="" if version < 3 else '{"entityTypes": {}}',
        )
    with SqlUnitOfWork(engine, read_only=True) as uow:
        newest = uow.policies.versions(limit=2)
        assert [v.version for v in newest] == [4, 3]
        assert [v.version for v in uow.policies.versions(limit=2, before=3)] == [2, 1]
        assert uow.policies.versions(limit=5, before=1) == []
        # Numbers beyond any version (from a URL) read as "no bound", not a driver error.
        huge = 10**20
        assert [v.version for v in uow.policies.versions(limit=2, before=huge)] == [4, 3]
        assert uow.policies.version(huge) is None
        assert uow.policies.version(-huge) is None
        assert [p.id for p in uow.policies.policies(huge)] == ["p1", "p2", "p3", "p4"]
        assert [v.version for v in uow.policies.versions(limit=10)] == [4, 3, 2, 1]
        two = uow.policies.version(2)
        four = uow.policies.version(4)
    assert two == PolicySetVersion(
        version=2,
        created_at=T0 + timedelta(minutes=2),
        created_by="admin:alice",
        change="import",
        comment="change 2",
        schema_extension="",
        policy_count=2,
    )
    assert two.created_at.tzinfo is not None
    assert four is not None
    assert four.schema_extension == '{"entityTypes": {}}'
    assert newest[0] == four


def test_policy_fields_round_trip(engine: Engine) -> None:
    record = PolicyRecord(
        id="tmpl.read-only:1",
        text='forbid (principal, action, resource) when { resource.label == "für" };',
        mode=Mode.DRY_RUN,
        description="Ünïcode description\nover two lines",
        template="read_only",
    )
    commit(engine, 1, put=[record, pol("plain")])
    with SqlUnitOfWork(engine, read_only=True) as uow:
        got = uow.policies.policies(1)
    assert got == [pol("plain"), record]
    assert got[1].mode is Mode.DRY_RUN
    assert got[0].mode is Mode.ENFORCE
    assert got[0].template is None


def test_a_writer_that_lost_the_race_gets_conflict_and_writes_nothing(engine: Engine) -> None:
    commit(engine, 1, put=[pol("a")])
    before = [rows(engine, table) for table in POLICY_TABLES]
    with SqlUnitOfWork(engine) as uow:
        # This writer computed its version before the other one committed.
        with pytest.raises(Conflict, match="written first"):
            uow.policies.commit_version(meta(1), put=[pol("b"), pol("a", "2")], delete=["a"])
        # The transaction is still usable after the refusal.
        assert uow.policies.head() == 1
    assert [rows(engine, table) for table in POLICY_TABLES] == before
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.policies.policies(1) == [pol("a")]


@pytest.mark.postgres
def test_two_open_transactions_racing_for_one_version(pg_engine: Engine) -> None:
    """Both writers read head 0; the second blocks on the version's primary key
    until the first commits, then gets Conflict."""
    engine = pg_engine
    outcome: list[object] = []

    first = SqlUnitOfWork(engine).__enter__()
    try:
        assert first.policies.head() == 0
        first.policies.commit_version(meta(1), put=[pol("first")])

        def second() -> None:
            with SqlUnitOfWork(engine) as uow:
                try:
                    uow.policies.commit_version(meta(1), put=[pol("second")])
                    uow.commit()
                    outcome.append("committed")
                except Conflict as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 10
        with engine.connect() as conn:
            while time.monotonic() < deadline:  # wait until it blocks on the key
                waiting = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                conn.rollback()  # the statistics views are a snapshot per transaction
                if waiting:
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the second writer never waited on the first")
        first.commit()
    finally:
        first.__exit__(None, None, None)
    thread.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], Conflict)
    assert "written first" in str(outcome[0])
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.policies.policies(1) == [pol("first")]
    assert [rows(engine, table) for table in POLICY_TABLES] == [1, 1]


def test_versions_are_consecutive_and_ids_unique_per_version(engine: Engine) -> None:
    with SqlUnitOfWork(engine) as uow:
        with pytest.raises(ValueError, match="does not follow"):
            uow.policies.commit_version(meta(2), put=[pol("a")])
        with pytest.raises(ValueError, match="more than once"):
            uow.policies.commit_version(meta(1), put=[pol("a"), pol("a", "2")])
    assert [rows(engine, table) for table in POLICY_TABLES] == [0, 0]


def test_a_ten_thousand_policy_import_is_batched(engine: Engine) -> None:
    n = 10_000
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        commit(engine, 1, put=[pol(f"p{i:05d}") for i in range(n)], change="import")
        # Replace every policy (closes 10,000 revisions) ...
        commit(engine, 2, put=[pol(f"p{i:05d}", "2") for i in range(n)], change="import")
        # ... then delete half of them.
        commit(engine, 3, delete=[f"p{i:05d}" for i in range(0, n, 2)], change="delete")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # A few statements per version (the UPDATE is batched, the INSERT one executemany),
    # not one per id.
    assert len(statements) < 150, len(statements)
    with SqlUnitOfWork(engine, read_only=True) as uow:
        v1, v2, v3 = (uow.policies.policies(v) for v in (1, 2, 3))
        counts = [uow.policies.version(v).policy_count for v in (1, 2, 3)]  # type: ignore[union-attr]
    assert (len(v1), len(v2), len(v3)) == (n, n, n // 2)
    assert counts == [n, n, n // 2]
    assert v1[123] == pol("p00123")
    assert v2[123] == pol("p00123", "2")
    assert v3[0] == pol("p00001", "2")
    assert rows(engine, t.policy_revisions) == 2 * n


# -- the resource catalog -------------------------------------------------------------


def res(type_: str, id_: str, **kw: Any) -> R:
    return R(type=type_, id=id_, updated_at=kw.pop("updated_at", T0), **kw)


def test_resource_put_get_replace(engine: Engine) -> None:
    record = res(
        "Tool",
        "payments/refund ü",
        attributes={"risk": "high", "limits": {"max": 100, "currencies": ["EUR", "USD"]}},
        parents=(EntityRef("McpServer", "payments"), EntityRef("ToolGroup", "money")),
        tags={"owner": "team-pay"},
    )
    with SqlUnitOfWork(engine) as uow:
        stored = uow.resources.put(record)
        uow.commit()
    assert stored == record  # version 1, the caller's updated_at
    assert stored.version == 1
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.resources.get("Tool", "payments/refund ü") == record
        assert uow.resources.get("Tool", "payments/refund") is None
        assert uow.resources.get("McpServer", "payments/refund ü") is None

    later = T0 + timedelta(hours=1)
    replacement = res("Tool", "payments/refund ü", attributes={"risk": "low"}, updated_at=later)
    with SqlUnitOfWork(engine) as uow:
        stored = uow.resources.put(replacement)
        uow.commit()
    assert stored.version == 2
    assert stored.updated_at == later
    with SqlUnitOfWork(engine, read_only=True) as uow:
        got = uow.resources.get("Tool", "payments/refund ü")
    assert got == stored
    assert got.parents == ()
    assert got.tags == {}


def test_resource_put_needs_an_update_time(engine: Engine) -> None:
    with SqlUnitOfWork(engine) as uow, pytest.raises(ValueError, match="updated_at"):
        uow.resources.put(R(type="Tool", id="x"))


def test_resource_find_pages_in_type_and_id_order(engine: Engine) -> None:
    keys = [("Tool", "b"), ("Api", "z"), ("Tool", "a"), ("Dataset", "m"), ("Tool", "c::d")]
    keys += [("Api", "a"), ("Tool", "c")]
    with SqlUnitOfWork(engine) as uow:
        for type_, id_ in keys:
            uow.resources.put(res(type_, id_))
        uow.resources.delete("Tool", "b")
        uow.commit()
    live = sorted(k for k in keys if k != ("Tool", "b"))

    with SqlUnitOfWork(engine, read_only=True) as uow:
        seen: list[tuple[str, str]] = []
        cursors: list[str | None] = []
        after = None
        while True:
            page = uow.resources.find(ResourceQuery(limit=2, after=after))
            seen += [(r.type, r.id) for r in page.items]
            cursors.append(page.next_after)
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == live
        assert cursors == ["Api::z", "Tool::a", None]

        tools = uow.resources.find(ResourceQuery(limit=2, type="Tool"))
        assert [r.id for r in tools.items] == ["a", "c"]
        rest = uow.resources.find(ResourceQuery(limit=2, type="Tool", after=tools.next_after))
        assert [r.id for r in rest.items] == ["c::d"]
        assert rest.next_after is None

        exact = uow.resources.find(ResourceQuery(limit=6))
        assert len(exact.items) == 6
        assert exact.next_after is None
        assert [(r.type, r.id) for r in uow.resources.all()] == live
        with pytest.raises(InvalidInput):
            uow.resources.find(ResourceQuery(limit=2, after="no-separator"))


def test_resource_delete_leaves_a_tombstone_that_a_put_revives(engine: Engine) -> None:
    with SqlUnitOfWork(engine) as uow:
        uow.resources.put(res("Tool", "t", attributes={"n": 1}))
        second = uow.resources.put(res("Tool", "t", attributes={"n": 2}))
        uow.commit()
    assert second.version == 2
    with SqlUnitOfWork(engine) as uow:
        assert uow.resources.delete("Tool", "t") is True
        assert uow.resources.delete("Tool", "t") is False  # already gone
        assert uow.resources.delete("Tool", "never") is False
        uow.commit()
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.resources.get("Tool", "t") is None
        assert uow.resources.all() == []
        assert uow.resources.find(ResourceQuery(limit=10)).items == []
    assert rows(engine, t.policy_resources) == 1  # the tombstone

    with SqlUnitOfWork(engine) as uow:
        revived = uow.resources.put(res("Tool", "t", attributes={"n": 3}))
        uow.commit()
    assert revived.version > second.version  # versions never go back
    assert revived.attributes == {"n": 3}
    with SqlUnitOfWork(engine, read_only=True) as uow:
        assert uow.resources.get("Tool", "t") == revived
    with engine.connect() as conn:
        revisions = conn.execute(select(t.policy_resources.c.revision)).scalars().all()
    assert revisions == [4]  # put, put, delete, put: one step each


def test_resource_changes_roll_back_with_the_unit(engine: Engine) -> None:
    with SqlUnitOfWork(engine) as uow:
        uow.resources.put(res("Tool", "t"))
    assert rows(engine, t.policy_resources) == 0


# -- the entity fingerprint -----------------------------------------------------------


def fingerprint(c: Container) -> str:
    with SqlUnitOfWork(c.engine, read_only=True) as uow:
        return uow.resources.fingerprint()


def test_fingerprint_moves_on_every_entity_change_and_only_then(
    container: Container, clock: FakeClock
) -> None:
    c = container
    seen = [fingerprint(c)]

    def changed(what: str) -> None:
        now = fingerprint(c)
        assert now not in seen, f"fingerprint did not change on {what}"
        seen.append(now)

    def unchanged(what: str) -> None:
        assert fingerprint(c) == seen[-1], f"fingerprint changed on {what}"

    unchanged("nothing")
    owner = c.humans.create(CTX, NewHuman(display_name="Ada", email="ada@example.com"))
    changed("human created")
    clock.advance(seconds=1)
    c.humans.update(CTX, owner.id, HumanChanges(display_name="Ada L."))
    changed("human renamed")
    bot = c.agents.register(
        CTX, NewAgent(name="bot", owners=[owner.id], purpose="p", environment="dev")
    )
    changed("agent registered")
    c.agents.update(CTX, bot.id, AgentChanges(labels={"team": "pay"}))
    changed("agent labels")
    c.agents.update(CTX, bot.id, AgentChanges(scopes=["tools:read"]))
    changed("agent scopes")
    c.agents.update(CTX, bot.id, AgentChanges(audiences=["https://api.example.com"]))
    changed("agent audiences")
    c.agents.transition(CTX, bot.id, LifecycleAction.ACTIVATE, None)
    changed("agent activated")
    unchanged("reads")

    for step, action in enumerate(("put", "put", "delete", "delete", "put")):
        with SqlUnitOfWork(c.engine) as uow:
            if action == "put":
                uow.resources.put(res("Tool", "t", attributes={"step": step}))
                wrote = True
            else:
                wrote = uow.resources.delete("Tool", "t")
            uow.commit()
        if wrote:
            changed(f"resource {action} (step {step})")
        else:
            unchanged(f"a delete of nothing (step {step})")

    with SqlUnitOfWork(c.engine) as uow:  # rolled back: no change
        uow.resources.put(res("Tool", "other"))
    unchanged("a rolled-back put")


@pytest.mark.postgres
def test_fingerprint_sees_both_of_two_overlapping_catalog_writes(pg_engine: Engine) -> None:
    """Two PostgreSQL writers on different rows can compute the same ``revision``;
    the fingerprint must still move when the second of them commits."""
    engine = pg_engine
    with SqlUnitOfWork(engine) as uow:
        uow.resources.put(res("Tool", "x"))
        uow.resources.put(res("Tool", "y"))
        uow.commit()

    def fp() -> str:
        with SqlUnitOfWork(engine, read_only=True) as uow:
            return uow.resources.fingerprint()

    start = fp()
    deleting = SqlUnitOfWork(engine).__enter__()
    try:
        assert deleting.resources.delete("Tool", "x")  # takes revision 3, uncommitted
        with SqlUnitOfWork(engine) as uow:  # also computes revision 3
            uow.resources.put(res("Tool", "y", attributes={"n": 1}))
            uow.commit()
        between = fp()
        deleting.commit()
    finally:
        deleting.__exit__(None, None, None)
    end = fp()
    with engine.connect() as conn:
        revisions = conn.execute(select(t.policy_resources.c.revision)).scalars().all()
    assert sorted(revisions) == [3, 3]  # the race this test is about did happen
    assert len({start, between, end}) == 3


# -- the audit trail's since filter ---------------------------------------------------


def test_audit_since_keeps_events_at_or_after_the_time(engine: Engine) -> None:
    agent = ResourceRef("agent", "agt_1")
    other = ResourceRef("tool", "x")
    times = [T0 + timedelta(minutes=m) for m in range(6)]
    with SqlUnitOfWork(engine) as uow:
        for i, at in enumerate(times):
            uow.audit.append(CTX.event(f"e{i}", now=at, resource=agent if i % 2 else other))
        uow.commit()

    def types(**kw: Any) -> list[str]:
        with SqlUnitOfWork(engine, read_only=True) as uow:
            return [e.type for e in uow.audit.find(AuditQuery(limit=100, **kw)).items]

    assert types() == [f"e{i}" for i in range(6)]
    assert types(since=times[2]) == ["e2", "e3", "e4", "e5"]  # at or after
    assert types(since=times[2] + timedelta(microseconds=1)) == ["e3", "e4", "e5"]
    assert types(since=times[5] + timedelta(seconds=1)) == []
    assert types(since=times[2], agent_id="agt_1") == ["e3", "e5"]
    # Another offset for the same instant selects the same events.
    elsewhere = times[2].astimezone(timezone(timedelta(hours=-5)))
    assert types(since=elsewhere) == ["e2", "e3", "e4", "e5"]

    with SqlUnitOfWork(engine, read_only=True) as uow:
        first = uow.audit.find(AuditQuery(limit=2, since=times[1]))
        assert [e.type for e in first.items] == ["e1", "e2"]
        rest = uow.audit.find(AuditQuery(limit=10, since=times[1], after=first.next_after))
        assert [e.type for e in rest.items] == ["e3", "e4", "e5"]
