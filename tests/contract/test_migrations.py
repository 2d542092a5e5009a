"""Alembic migrations: they build exactly the schema the code declares, on both
databases, and re-running them over data changes nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import Container
from agentiam.core.audit.events import Outcome, ResourceRef, TraceContext
from agentiam.core.credentials.revocations import RevocationKind
from agentiam.core.delegation.models import DelegationGrant, TokenNode, TokenOrigin
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, Human, RuntimeInfo
from agentiam.core.ids import new_id
from agentiam.core.policy.model import PolicyRecord, PolicySetVersion, ResourceRecord
from agentiam.ports import AuditQuery
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman


def test_migrated_schema_matches_the_table_definitions(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        assert diff == []
        assert migrate.is_current(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_keeps_data(container: Container) -> None:
    ctx = CallContext.system("test")
    h = container.humans.create(ctx, NewHuman(display_name="Ada", email="ada@example.com"))
    container.agents.register(
        ctx, NewAgent(name="keeper", owners=[h.id], purpose="p", environment="dev")
    )
    migrate.upgrade(container.engine)
    with container.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.agents)).scalar_one() == 1
    assert container.agents.resolve("keeper").owners == (h.id,)


def _downgrade(engine: Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrate.__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_policy_migration_downgrades_and_upgrades_over_data(container: Container) -> None:
    ctx = CallContext.system("test")
    h = container.humans.create(ctx, NewHuman(display_name="Ada", email="ada@example.com"))
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with SqlUnitOfWork(container.engine) as uow:
        uow.policies.commit_version(
            PolicySetVersion(1, now, "test", "put", "", ""),
            put=[PolicyRecord("p", "permit (principal, action, resource);")],
        )
        uow.resources.put(ResourceRecord("Tool", "t", updated_at=now))
        uow.audit.append(ctx.event("test.event", now=now))
        uow.commit()
    policy_tables = {"policy_versions", "policy_revisions", "policy_resources"}
    try:
        _downgrade(container.engine, "0002")
        assert migrate.current_revision(container.engine) == "0002"
        assert not policy_tables & set(inspect(container.engine).get_table_names())
    finally:
        migrate.upgrade(container.engine)
    assert migrate.is_current(container.engine)
    with container.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), t.metadata) == []
        assert conn.execute(select(func.count()).select_from(t.audit_events)).scalar_one() >= 2
    assert container.humans.get(h.id).email == "ada@example.com"
    with SqlUnitOfWork(container.engine) as uow:  # the tables are back, empty and usable
        assert uow.policies.head() == 0
        assert uow.resources.all() == []
        uow.policies.commit_version(PolicySetVersion(1, now, "test", "put", "", ""))
        uow.commit()


DELEGATION_TABLES = {"delegation_grants", "token_nodes"}


def test_delegation_migration_downgrades_and_upgrades_over_data(database_url: str) -> None:
    engine = make_engine(database_url)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    human_id, agent_id = new_id("human"), new_id("agent")
    grant = DelegationGrant(
        id=new_id("grant"),
        human_id=human_id,
        agent_id=agent_id,
        scopes=("tools:read",),
        audiences=("https://api.example.com",),
        authorization_details=({"type": "tool", "actions": ["call"]},),
        max_depth=1,
        created_at=now,
        created_by="test",
        expires_at=now + timedelta(days=1),
    )
    jti = new_id("token")
    token = TokenNode(
        jti=jti,
        parent_jti=None,
        actor_jti=None,
        root_jti=jti,
        origin=TokenOrigin.HUMAN,
        subject=human_id,
        client_id=agent_id,
        actors=(agent_id,),
        grant_id=grant.id,
        scope=("tools:read",),
        audience="https://api.example.com",
        issued_at=now,
        expires_at=now + timedelta(minutes=5),
    )
    try:
        with SqlUnitOfWork(engine) as uow:
            uow.humans.add(Human(human_id, "Ada", "ada@example.com", None, now, now))
            uow.agents.add(
                Agent(
                    id=agent_id,
                    name="delegate",
                    owners=(human_id,),
                    purpose="p",
                    environment="dev",
                    autonomy=AutonomyLevel.MONITORED,
                    runtime=RuntimeInfo(),
                    labels={},
                    status=AgentStatus.ACTIVE,
                    next_access_review=date(2027, 1, 1),
                    created_at=now,
                    updated_at=now,
                )
            )
            uow.grants.add(grant)
            uow.token_graph.add(token)
            uow.commit()
        try:
            _downgrade(engine, "0003")
            assert migrate.current_revision(engine) == "0003"
            tables = set(inspect(engine).get_table_names())
            assert not DELEGATION_TABLES & tables
            assert "policy_versions" in tables
        finally:
            migrate.upgrade(engine)
        assert migrate.is_current(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), t.metadata) == []
        with SqlUnitOfWork(engine) as uow:  # earlier data kept; the new tables empty, usable
            assert uow.humans.get(human_id) is not None
            assert uow.agents.get(agent_id) is not None
            assert uow.grants.get(grant.id) is None
            assert uow.token_graph.get(jti) is None
            uow.grants.add(grant)
            uow.token_graph.add(token)
            uow.commit()
        with SqlUnitOfWork(engine, read_only=True) as uow:
            assert uow.grants.get(grant.id) == grant
            assert uow.token_graph.get(jti) == token
    finally:
        engine.dispose()


def test_empty_database_is_not_current(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")
    try:
        assert migrate.current_revision(engine) is None
        assert not migrate.is_current(engine)
        migrate.upgrade(engine)
        assert migrate.is_current(engine)
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_audit_query_columns_are_backfilled_from_the_body(database_url: str) -> None:
    """Migration 0005 adds the audit query columns over existing events and fills them
    from each event's body, lifting the append-only guard for that UPDATE only."""
    engine = make_engine(database_url)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    trace = TraceContext("c" * 32, "d" * 16)
    ctx = CallContext(actor=CallContext.system("test").actor, source="test", trace=trace)
    decided = ctx.event(
        "policy.decision",
        now=now,
        action="call",
        resource=ResourceRef("Tool", "x" * 600),  # cut to the column's 512
        outcome=Outcome.DENIED,
    )
    decided = replace(decided, initiating_human="hum_1", decision_id="dec_1")
    bare = ctx.event("system.start", now=now)  # no resource, human or decision
    columns = ("human_id", "action", "resource_type", "resource_id", "decision_id")
    try:
        with SqlUnitOfWork(engine) as uow:
            uow.audit.append_many([decided, bare])
            uow.commit()
        try:
            _downgrade(engine, "0004")
            assert "human_id" not in {
                c["name"] for c in inspect(engine).get_columns("audit_events")
            }
        finally:
            migrate.upgrade(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), t.metadata) == []
            rows = {r.event_id: r for r in conn.execute(select(t.audit_events))}
        row = rows[decided.event_id]
        assert [getattr(row, c) for c in columns] == ["hum_1", "call", "Tool", "x" * 512, "dec_1"]
        assert (row.trace_id, row.outcome) == ("c" * 32, "denied")
        empty = rows[bare.event_id]
        assert [getattr(empty, c) for c in columns] == [None, "system.start", None, None, None]
        assert (empty.trace_id, empty.outcome) == ("c" * 32, "success")
        with SqlUnitOfWork(engine, read_only=True) as uow:  # found through the new columns
            found = uow.audit.find(AuditQuery(limit=5, resource_id="x" * 600, outcome="denied"))
            assert [e.event_id for e in found.items] == [decided.event_id]
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(t.audit_events.update().values(outcome="success"))
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(t.audit_events.delete())
    finally:
        engine.dispose()


def test_signing_key_revocations_migration_downgrades_for_an_older_release(
    container: Container,
) -> None:
    """0012 marks that the revocation feed may hold ``signing_key`` entries, which an
    older release cannot read (its schema check then keeps it from serving); going
    back below it deletes those entries and keeps every other."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    epoch = int(now.timestamp())
    jti = new_id("token")
    with SqlUnitOfWork(container.engine) as uow:
        uow.revocations.add(RevocationKind.TOKEN, jti, cutoff=epoch, expires=epoch + 60, now=now)
        uow.revocations.add(
            RevocationKind.SIGNING_KEY, "kid-1", cutoff=epoch, expires=epoch + 60, now=now
        )
        uow.commit()
    try:
        _downgrade(container.engine, "0011")
        assert not migrate.is_current(container.engine)
        with container.engine.connect() as conn:
            rows = conn.execute(select(t.revocations.c.kind, t.revocations.c.subject)).all()
        assert [tuple(r) for r in rows] == [("token", jti)]
    finally:
        migrate.upgrade(container.engine)
    assert migrate.is_current(container.engine)
