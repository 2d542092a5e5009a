"""One database transaction holding every repository."""

from __future__ import annotations

import threading
import weakref
from typing import Self

from sqlalchemy import Connection, Engine

from agentiam.adapters.storage.repositories import (
    SqlAdminKeys,
    SqlAgentKeys,
    SqlAgents,
    SqlAudit,
    SqlHumans,
    SqlReplayGuard,
    SqlRevocations,
    SqlSigningKeys,
)

__all__ = ["SqlUnitOfWork"]

# SQLite allows one writer at a time; a writer that finds the lock taken sleeps in the
# driver's busy handler (steps of up to 100 ms), which wrecks latency under load. Writers
# of one process therefore queue on a lock of their own first, so only writers of other
# processes ever meet the busy handler.
_SQLITE_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.RLock] = (
    weakref.WeakKeyDictionary()
)
_LOCKS_GUARD = threading.Lock()


def _write_lock(engine: Engine) -> threading.RLock | None:
    if engine.dialect.name != "sqlite":
        return None
    with _LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.get(engine)
        if lock is None:
            lock = _SQLITE_WRITE_LOCKS[engine] = threading.RLock()
        return lock


class SqlUnitOfWork:
    """Opens a connection and a transaction on enter; commits only on :meth:`commit`.

    Leaving the block without a commit rolls back, so a rejected request writes
    nothing.
    """

    def __init__(self, engine: Engine, *, read_only: bool = False) -> None:
        self._engine = engine
        self._read_only = read_only
        self._conn: Connection | None = None
        self._lock = None if read_only else _write_lock(engine)

    def __enter__(self) -> Self:
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._conn = self._engine.connect()
            # Read-only units skip SQLite's write lock (see engine.py); writers take it now.
            self._conn.info["read_only"] = self._read_only
            self._conn.begin()
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock is not None:
                self._lock.release()
            raise
        self.humans = SqlHumans(self._conn)
        self.agents = SqlAgents(self._conn)
        self.agent_keys = SqlAgentKeys(self._conn)
        self.admin_keys = SqlAdminKeys(self._conn)
        self.audit = SqlAudit(self._conn)
        self.signing_keys = SqlSigningKeys(self._conn)
        self.replay = SqlReplayGuard(self._conn)
        self.revocations = SqlRevocations(self._conn)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
        finally:
            self._conn.close()
            self._conn = None
            if self._lock is not None:
                self._lock.release()

    def commit(self) -> None:
        assert self._conn is not None
        self._conn.commit()
