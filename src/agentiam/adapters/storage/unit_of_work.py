"""One database transaction holding every repository."""

from __future__ import annotations

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


class SqlUnitOfWork:
    """Opens a connection and a transaction on enter; commits only on :meth:`commit`.

    Leaving the block without a commit rolls back, so a rejected request writes
    nothing.
    """

    def __init__(self, engine: Engine, *, read_only: bool = False) -> None:
        self._engine = engine
        self._read_only = read_only
        self._conn: Connection | None = None

    def __enter__(self) -> Self:
        self._conn = self._engine.connect()
        # Read-only units skip SQLite's write lock (see engine.py); writers take it at once.
        self._conn.info["read_only"] = self._read_only
        self._conn.begin()
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

    def commit(self) -> None:
        assert self._conn is not None
        self._conn.commit()
