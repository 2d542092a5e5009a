"""Shared fixtures: a controllable clock and real databases.

SQLite: a fresh file per test, copied from one migrated template.
PostgreSQL: a fresh database per test session on the real server named by
AGENTIAM_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test), emptied
between tests. When AGENTIAM_REQUIRE_POSTGRES=1 (CI), an unreachable server fails the
run; elsewhere the PostgreSQL cases skip with a message saying how to enable them.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import make_engine, normalize_url
from agentiam.adapters.storage.tables import metadata
from agentiam.bootstrap import Container, build
from agentiam.config import Settings

PG_URL = os.environ.get("AGENTIAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGENTIAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    current: datetime

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


def _unreachable(what: str, url: str, exc: Exception, url_var: str, required_var: str) -> NoReturn:
    """Fail (when ``required_var`` is 1, as in CI) or skip, saying how to enable it."""
    message = f"{what} is not reachable at {url} ({type(exc).__name__}). Start it or set {url_var}."
    if os.environ.get(required_var) == "1":
        pytest.fail(f"{required_var}=1: " + message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of its own on the real Redis server (AGENTIAM_TEST_REDIS_URL, default
    database 15), its keys deleted afterwards. With AGENTIAM_REQUIRE_REDIS=1 (CI) an
    unreachable server fails the test; elsewhere it skips, saying how to enable it."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        _unreachable("Redis", REDIS_URL, exc, "AGENTIAM_TEST_REDIS_URL", "AGENTIAM_REQUIRE_REDIS")
    prefix = f"agentiam-test:{os.getpid()}:{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """Create a throwaway database on the real PostgreSQL server; drop it afterwards."""
    admin = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        _unreachable(
            "PostgreSQL", PG_URL, exc, "AGENTIAM_TEST_POSTGRES_URL", "AGENTIAM_REQUIRE_POSTGRES"
        )
    name = f"agentiam_t_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = normalize_url(PG_URL).rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _empty_postgres(url: str) -> None:
    engine = make_engine(url)
    names = ", ".join(t.name for t in metadata.sorted_tables)
    with engine.begin() as conn:
        # Superuser-only: disables the append-only triggers for this session's cleanup.
        conn.execute(text("SET session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "agentiam.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    _empty_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "agentiam.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def container(database_url: str, clock: FakeClock) -> Iterator[Container]:
    c = build(Settings(database_url=database_url), clock=clock)
    yield c
    c.close()
