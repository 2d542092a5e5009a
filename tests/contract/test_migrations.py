"""Alembic migrations: they build exactly the schema the code declares, on both
databases, and re-running them over data changes nothing."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.engine import make_engine
from agentiam.bootstrap import Container
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
