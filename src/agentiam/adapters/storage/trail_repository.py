"""SQL storage of the tamper-evident trail: the log, the Merkle tree's perfect
subtrees and the signed tree heads (tables in migration 0005), and the retention
checkpoints below which it was pruned (migration 0006)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, text, tuple_, update

from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.batching import chunks
from agentiam.adapters.storage.bulk import BulkInsert
from agentiam.core.audit.merkle import prunable_nodes
from agentiam.core.audit.trail import GENESIS, Checkpoint, LogEntry, TreeHead

__all__ = ["SqlTrail"]

# The PostgreSQL advisory-lock key of the integrator (any constant shared by replicas).
_INTEGRATOR_LOCK = 0x41554449  # "AUDI"


class SqlTrail:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def lock(self) -> bool:
        if self._c.dialect.name != "postgresql":
            return True  # SQLite: this transaction already holds the only write lock
        got = self._c.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _INTEGRATOR_LOCK}
        ).scalar()
        return bool(got)

    def head(self) -> tuple[int, bytes]:
        log = t.audit_log
        row = self._c.execute(
            select(log.c.log_index, log.c.chain_hash).order_by(log.c.log_index.desc()).limit(1)
        ).first()
        if row is not None:
            return int(row.log_index) + 1, bytes.fromhex(row.chain_hash)
        # Empty: a new log, or one pruned up to its end (it goes on from the checkpoint).
        checkpoint = self.checkpoint()
        if checkpoint is not None:
            return checkpoint.tree_size, checkpoint.head.chain_hash
        return 0, GENESIS

    def pending(self, limit: int, *, lookback: int | None) -> list[tuple[int, str]]:
        """Events not in the log, in ``seq`` order; with ``lookback``, only those above
        the highest logged ``seq`` minus ``lookback`` (``None``: every event).

        On SQLite the lookback is not needed, and not paid: one writer at a time, each
        new row's ``seq`` above every row there (``INTEGER PRIMARY KEY``), so nothing
        commits below a logged ``seq``, and the pass starts just above the highest.
        Looking back would cost a log probe per event in the window (about 25 ms at
        50,000 events, several times a second). Anything below (a restore) is still
        found by the periodic full sweep (``lookback=None``). PostgreSQL allocates
        sequence numbers before commit, so a transaction can commit late there."""
        e, log = t.audit_events, t.audit_log
        stmt = (
            select(e.c.seq, e.c.body)
            .select_from(e.outerjoin(log, log.c.event_seq == e.c.seq))
            .where(log.c.event_seq.is_(None))
            .order_by(e.c.seq)
            .limit(limit)
        )
        if lookback is not None:
            highest = self._c.execute(select(func.max(log.c.event_seq))).scalar()
            if highest is not None:
                window = 0 if self._c.dialect.name == "sqlite" else lookback
                stmt = stmt.where(e.c.seq > int(highest) - window)
        return [(int(r.seq), str(r.body)) for r in self._c.execute(stmt)]

    # One executemany each (adapters/storage/bulk.py): the integrator's hot writes.
    _LOG = BulkInsert(t.audit_log, ("log_index", "event_seq", "leaf_hash", "chain_hash"))
    _NODES = BulkInsert(t.audit_tree_nodes, ("level", "node_index", "hash"))

    def append(self, entries: Sequence[LogEntry], nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._LOG.execute(
            self._c,
            [(e.index, e.event_seq, e.leaf_hash.hex(), e.chain_hash.hex()) for e in entries],
        )
        self._NODES.execute(self._c, [(level, i, h.hex()) for level, i, h in nodes])

    def nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """PostgreSQL takes a row-value ``IN``; SQLite answers that with a full table
        scan, so there it is one primary-key range per level."""
        n = t.audit_tree_nodes
        wanted = list(dict.fromkeys(keys))
        found: dict[tuple[int, int], bytes] = {}
        if self._c.dialect.name == "postgresql":
            for chunk in chunks(wanted):
                rows = self._c.execute(
                    select(n.c.level, n.c.node_index, n.c.hash).where(
                        tuple_(n.c.level, n.c.node_index).in_(chunk)
                    )
                )
                for r in rows:
                    found[(int(r.level), int(r.node_index))] = bytes.fromhex(r.hash)
            return found
        by_level: dict[int, list[int]] = {}
        for level, index in wanted:
            by_level.setdefault(level, []).append(index)
        for level, indices in by_level.items():
            for part in chunks(indices):
                rows = self._c.execute(
                    select(n.c.node_index, n.c.hash).where(
                        n.c.level == level, n.c.node_index.in_(part)
                    )
                )
                for r in rows:
                    found[(level, int(r.node_index))] = bytes.fromhex(r.hash)
        return found

    def entries(self, start: int, limit: int) -> list[tuple[LogEntry, str]]:
        log, e = t.audit_log, t.audit_events
        stmt = (
            select(log, e.c.body)
            .select_from(log.outerjoin(e, e.c.seq == log.c.event_seq))
            .where(log.c.log_index >= start)
            .order_by(log.c.log_index)
            .limit(limit)
        )
        return [
            (
                LogEntry(
                    index=int(r.log_index),
                    event_seq=int(r.event_seq),
                    leaf_hash=bytes.fromhex(r.leaf_hash),
                    chain_hash=bytes.fromhex(r.chain_hash),
                ),
                "" if r.body is None else str(r.body),
            )
            for r in self._c.execute(stmt)
        ]

    def index_of(self, event_id: str) -> int | None:
        log, e = t.audit_log, t.audit_events
        value = self._c.execute(
            select(log.c.log_index)
            .select_from(log.join(e, and_(e.c.seq == log.c.event_seq)))
            .where(e.c.event_id == event_id)
        ).scalar()
        return None if value is None else int(value)

    def add_tree_head(self, head: TreeHead) -> None:
        self._c.execute(
            insert(t.audit_tree_heads).values(
                tree_size=head.tree_size,
                root_hash=head.root_hash.hex(),
                chain_hash=head.chain_hash.hex(),
                signed_at=head.signed_at,
                signature=head.signature,
            )
        )

    @staticmethod
    def _head(r: Any) -> TreeHead:
        return TreeHead(
            tree_size=int(r.tree_size),
            root_hash=bytes.fromhex(r.root_hash),
            chain_hash=bytes.fromhex(r.chain_hash),
            signed_at=r.signed_at,
            signature=r.signature,
        )

    def tree_head(self, tree_size: int) -> TreeHead | None:
        th = t.audit_tree_heads
        row = self._c.execute(select(th).where(th.c.tree_size == tree_size)).first()
        return self._head(row) if row else None

    def tree_heads(self, *, limit: int, before: int | None = None) -> list[TreeHead]:
        th = t.audit_tree_heads
        stmt = select(th).order_by(th.c.tree_size.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(th.c.tree_size < before)
        return [self._head(r) for r in self._c.execute(stmt)]

    def unlogged_before(self, time: datetime) -> int:
        e, log = t.audit_events, t.audit_log
        value = self._c.execute(
            select(func.count())
            .select_from(e.outerjoin(log, log.c.event_seq == e.c.seq))
            .where(log.c.event_seq.is_(None), e.c.time < time)
        ).scalar()
        return int(value or 0)

    # -- retention -------------------------------------------------------------------

    @staticmethod
    def _checkpoint(r: Any) -> Checkpoint:
        return Checkpoint(
            head=SqlTrail._head(r),
            compact_range=tuple(bytes.fromhex(h) for h in json.loads(r.compact_range)),
            archive=r.archive,
        )

    def checkpoint(self) -> Checkpoint | None:
        found = self.checkpoints(limit=1)
        return found[0] if found else None

    def checkpoints(self, *, limit: int) -> list[Checkpoint]:
        cp = t.audit_checkpoints
        rows = self._c.execute(select(cp).order_by(cp.c.tree_size.desc()).limit(limit))
        return [self._checkpoint(r) for r in rows]

    def prune_point(self, before: datetime) -> int:
        log, e = t.audit_log, t.audit_events
        first = self._c.execute(
            select(func.min(log.c.log_index))
            .select_from(log.join(e, e.c.seq == log.c.event_seq))
            .where(e.c.time >= before)
        ).scalar()
        return int(first) if first is not None else self.head()[0]

    def prune(self, checkpoint: Checkpoint, *, tree_head: TreeHead, now: datetime) -> int:
        log, e, cp = t.audit_log, t.audit_events, t.audit_checkpoints
        size = checkpoint.tree_size
        head = checkpoint.head
        if self.tree_head(size) is None:
            self.add_tree_head(tree_head)
        seqs = [
            int(s)
            for s in self._c.execute(select(log.c.event_seq).where(log.c.log_index < size))
            .scalars()
            .all()
        ]
        previous = self._c.execute(select(func.max(cp.c.max_event_seq))).scalar()
        self._c.execute(
            insert(cp).values(
                tree_size=size,
                root_hash=head.root_hash.hex(),
                chain_hash=head.chain_hash.hex(),
                signed_at=head.signed_at,
                signature=head.signature,
                compact_range=json.dumps([h.hex() for h in checkpoint.compact_range]),
                max_event_seq=max([*seqs, -1 if previous is None else int(previous)]),
                archive=checkpoint.archive,
                created_at=now,
            )
        )
        # The database's guards (migration 0006) allow these deletes only now that the
        # checkpoint row exists, and only below it.
        th, n = t.audit_tree_heads, t.audit_tree_nodes
        self._c.execute(delete(th).where(th.c.tree_size < size))
        for level, bound in prunable_nodes(size):
            self._c.execute(delete(n).where(n.c.level == level, n.c.node_index < bound))
        self._c.execute(delete(log).where(log.c.log_index < size))
        for part in chunks(seqs):
            self._c.execute(delete(e).where(e.c.seq.in_(part)))
        return len(seqs)

    def min_cursor(self) -> tuple[str, int] | None:
        c = t.audit_export_cursors
        row = self._c.execute(
            select(c.c.name, c.c.position).order_by(c.c.position, c.c.name).limit(1)
        ).first()
        return None if row is None else (str(row.name), int(row.position))

    # -- exporter cursors ------------------------------------------------------------

    def cursor(self, name: str) -> int:
        c = t.audit_export_cursors
        value = self._c.execute(select(c.c.position).where(c.c.name == name)).scalar()
        return 0 if value is None else int(value)

    def _upsert(self, name: str, now: datetime, changes: dict[str, Any], **first: Any) -> None:
        c = t.audit_export_cursors
        done = self._c.execute(update(c).where(c.c.name == name).values(updated_at=now, **changes))
        if done.rowcount == 0:
            row = {"name": name, "position": 0, "updated_at": now, "last_error": None}
            row["failures"] = 0
            row.update(first)
            self._c.execute(insert(c).values(**row))

    def advance(self, name: str, position: int, now: datetime) -> None:
        c = t.audit_export_cursors
        self._upsert(
            name,
            now,
            # never backwards: another replica may have delivered further meanwhile
            {
                "position": func.max(c.c.position, position)
                if self._c.dialect.name == "sqlite"
                else func.greatest(c.c.position, position),
                "failures": 0,
                "last_error": None,
            },
            position=position,
        )

    def record_failure(self, name: str, error: str, now: datetime) -> None:
        c = t.audit_export_cursors
        changes = {"failures": c.c.failures + 1, "last_error": error}
        self._upsert(name, now, changes, failures=1, last_error=error)
