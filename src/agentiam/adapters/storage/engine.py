"""Engines for the two supported databases.

SQLite: one file, WAL journal (readers never block the writer), foreign keys on, a
busy timeout so concurrent writers (the CLI beside a running server) wait instead of
failing, and ``BEGIN IMMEDIATE`` so a read-then-write transaction takes the write lock
up front rather than failing on upgrade.

PostgreSQL: psycopg 3, selected when the URL's scheme is ``postgresql``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from agentiam.errors import InvalidInput

__all__ = ["is_postgres", "make_engine", "normalize_url", "redact_url"]


def normalize_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def redact_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def is_postgres(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "postgresql"


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        try:
            import psycopg  # noqa: F401 - only to give a clear message when it is missing
        except ImportError:
            raise InvalidInput(
                "PostgreSQL support is not installed",
                hint="Install it with: pip install 'agentiam[postgres]'",
            ) from None
        return create_engine(url, pool_pre_ping=True, **kwargs)
    raise InvalidInput(
        f"unsupported database {backend!r}",
        hint="Use sqlite:///path/to/file.db or postgresql://user@host/db.",
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, manage transactions (see SQLAlchemy's
        # "Serializable isolation / Savepoints / Transactional DDL" notes for pysqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if conn.info.get("read_only") else "BEGIN IMMEDIATE")
