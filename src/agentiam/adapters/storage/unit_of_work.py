"""One database transaction holding every repository."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Self

from sqlalchemy import Connection, Engine

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: threads still queue, processes do not
    fcntl = None  # type: ignore[assignment]

from agentiam.adapters.storage.approval_repository import SqlApprovals
from agentiam.adapters.storage.assessment_repository import SqlAssessments
from agentiam.adapters.storage.repositories import (
    SqlAdminKeys,
    SqlAgentKeys,
    SqlAgents,
    SqlAudit,
    SqlGrants,
    SqlHumans,
    SqlPolicies,
    SqlReplayGuard,
    SqlResources,
    SqlRevocations,
    SqlSigningKeys,
    SqlTokenGraph,
)
from agentiam.adapters.storage.trail_repository import SqlTrail

__all__ = ["SqlUnitOfWork"]


# SQLite allows one writer at a time; a writer that finds the lock taken sleeps in the
# driver's busy handler (steps of up to 100 ms), which wrecks latency under load. Writers
# therefore queue first: threads of one process on a lock, and processes sharing the
# file (``serve --workers``, the CLI beside a server) on an advisory lock of a file next
# to it. Both wait in the kernel, so a writer starts the moment the previous one ends.
class _WriterQueue:
    def __init__(self, database: str | None) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        if database and database != ":memory:" and fcntl is not None:
            self._fd = os.open(database + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._depth == 1 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._depth -= 1
        self._lock.release()


_QUEUES: weakref.WeakKeyDictionary[Engine, _WriterQueue] = weakref.WeakKeyDictionary()
_QUEUES_GUARD = threading.Lock()


def _write_lock(engine: Engine) -> _WriterQueue | None:
    if engine.dialect.name != "sqlite":
        return None
    with _QUEUES_GUARD:
        queue = _QUEUES.get(engine)
        if queue is None:
            queue = _QUEUES[engine] = _WriterQueue(engine.url.database)
        return queue


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
        self.policies = SqlPolicies(self._conn)
        self.resources = SqlResources(self._conn)
        self.grants = SqlGrants(self._conn)
        self.token_graph = SqlTokenGraph(self._conn)
        self.trail = SqlTrail(self._conn)
        self.approvals = SqlApprovals(self._conn)
        self.assessments = SqlAssessments(self._conn)
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
        self.revocations.flush()  # last: takes the lock that orders revocations
        self._conn.commit()
