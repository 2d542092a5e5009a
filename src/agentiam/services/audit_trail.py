"""The tamper-evident audit trail over the event store.

**Integration.** Events are written by the services in their own transactions (and so
are durable when the change is). An integrator then gives each committed event its
place in one log: every replica runs it, and a PostgreSQL advisory lock lets one at a
time work, so several replicas writing to one database still form a single sequence.
Each pass takes the events not yet logged in ``seq`` order, computes their leaf and
chain hashes and the Merkle tree nodes they complete, and stores them in one
transaction. A transaction that committed late (a lower ``seq`` than events already
logged) is still picked up: the pass looks back ``lookback`` sequence numbers, and a
full sweep runs at intervals.

**Tree heads.** At intervals (and on demand) the log's state is signed as a tree head
with the authorization server's current signing key.

**Retention** (:mod:`agentiam.services.audit_retention`) archives the oldest
entries and prunes them below a signed checkpoint; verification, proofs and exports
then start from that checkpoint.

**Verification** (:meth:`AuditTrail.verify`, ``agentiam audit verify``) recomputes
every leaf from the stored event, the hash chain, and the Merkle root at every signed
tree head, checks each head's signature, and reports what does not match. The same
check runs offline over an export (``agentiam.core.audit.verification.verify_export``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agentiam.core.audit.merkle import (
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
)
from agentiam.core.audit.trail import (
    CHECKPOINT_TYP,
    TREE_HEAD_TYP,
    Checkpoint,
    LogEntry,
    TreeHead,
    chain_hash,
    checkpoint_claims,
    event_leaf,
    tree_head_claims,
    verify_tree_head,
)
from agentiam.core.audit.verification import Finding, VerifyReport, key_map, verify_entries
from agentiam.core.credentials.jose import JoseRejected
from agentiam.errors import NotFound
from agentiam.ports import AuditTrailRepository, Clock, UnitOfWorkFactory

__all__ = ["AuditTrail", "TrailNodes", "TrailPolicy", "entry_line"]

_PAGE = 2000


@dataclass(frozen=True, slots=True)
class TrailPolicy:
    issuer: str
    # Events logged per transaction: on SQLite the pass holds the only write lock, so
    # it is kept short (about 40 ms) to leave room for the requests writing meanwhile.
    batch: int = 500
    # How far below the highest logged seq a pass looks for late commits (PostgreSQL;
    # on SQLite nothing commits late, see SqlTrail.pending).
    lookback: int = 50_000
    # How often a pass ignores the lookback and searches every event for any not logged.
    sweep_interval: timedelta = field(default_factory=lambda: timedelta(seconds=60))
    # Sign a tree head at least this often while the log grows.
    head_interval: timedelta = field(default_factory=lambda: timedelta(seconds=5))
    # An event not in the log after this long is reported by verification.
    grace: timedelta = field(default_factory=lambda: timedelta(seconds=60))


class TrailNodes:
    """A NodeStore over the trail repository, caching what it has read."""

    def __init__(self, trail: AuditTrailRepository) -> None:
        self._trail = trail
        self._cache: dict[tuple[int, int], bytes] = {}

    def get(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self._cache:
            self._cache.update(self._trail.nodes([key]))
        return self._cache[key]

    def get_many(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        missing = [k for k in keys if k not in self._cache]
        if missing:
            self._cache.update(self._trail.nodes(missing))
        return {k: self._cache[k] for k in keys if k in self._cache}


class AuditTrail:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        policy: TrailPolicy,
        sign: Callable[[Mapping[str, Any], str], str],
        keys: Callable[[], list[dict[str, Any]]],
    ) -> None:
        """``sign(claims, typ)`` signs with the current signing key; ``keys()`` gives
        every signing key's public JWK (retired ones too, for old heads)."""
        self._uow = uow
        self._clock = clock
        self.policy = policy
        self._sign = sign
        self._keys = keys
        self._last_head_at: datetime | None = None
        self._last_sweep_at: datetime | None = None

    # -- integration ---------------------------------------------------------------

    def integrate(self, *, full_sweep: bool = False) -> int:
        """Log the pending events (one batch); returns how many were logged, 0 when
        none were pending or another replica holds the integrator's lock."""
        with self._uow() as uow:
            trail = uow.trail
            if not trail.lock():
                return 0
            pending = trail.pending(
                self.policy.batch, lookback=None if full_sweep else self.policy.lookback
            )
            if not pending:
                return 0
            size, chain = trail.head()
            builder = TreeBuilder.resume(TrailNodes(trail), size)
            entries: list[LogEntry] = []
            nodes: list[tuple[int, int, bytes]] = []
            for seq, body in pending:
                leaf = event_leaf(body)
                chain = chain_hash(chain, leaf)
                entries.append(LogEntry(size, seq, leaf, chain))
                nodes.extend(builder.append(leaf))
                size += 1
            trail.append(entries, nodes)
            uow.commit()
        return len(entries)

    def integrate_all(self) -> int:
        """Integrate until nothing is pending. Every ``sweep_interval`` the first pass
        looks at every event, not only those within the lookback, so an event that
        committed very late (or was restored from a backup) is still logged."""
        now = self._clock.now()
        sweep = self._last_sweep_at is None or now - self._last_sweep_at >= (
            self.policy.sweep_interval
        )
        total = 0
        if sweep:
            while (n := self.integrate(full_sweep=True)) > 0:
                total += n
            self._last_sweep_at = now
        while (n := self.integrate()) > 0:
            total += n
        return total

    def sign_head(self, *, force: bool = False) -> TreeHead | None:
        """Sign the log's current state if it grew since the last head (and the
        interval passed, unless ``force``); returns the new head or None."""
        now = self._clock.now()
        if (
            not force
            and self._last_head_at is not None
            and now - self._last_head_at < self.policy.head_interval
        ):
            return None
        with self._uow(read_only=True) as uow:
            trail = uow.trail
            size, chain = trail.head()
            latest = trail.tree_heads(limit=1)
            if size == 0 or (latest and latest[0].tree_size >= size):
                return None
            root = TreeBuilder.resume(TrailNodes(trail), size).root()
        # Signed outside any transaction: signing may itself write (the ring's first key).
        head = self.sign_tree(size, root, chain, now)
        with self._uow() as uow:
            if not uow.trail.lock() or uow.trail.tree_head(size) is not None:
                return None  # another replica is signing, or signed this size already
            uow.trail.add_tree_head(head)
            uow.commit()
        self._last_head_at = now
        return head

    def sign_tree(self, size: int, root: bytes, chain: bytes, now: datetime) -> TreeHead:
        """A tree head over the first ``size`` entries, signed with the current key
        (not stored). Call it outside a transaction: signing may write a new key."""
        signed_at = int(now.timestamp())
        signature = self._sign(
            tree_head_claims(
                issuer=self.policy.issuer,
                tree_size=size,
                root_hash=root,
                chain=chain,
                signed_at=signed_at,
            ),
            TREE_HEAD_TYP,
        )
        return TreeHead(size, root, chain, datetime.fromtimestamp(signed_at, now.tzinfo), signature)

    def sign_checkpoint(
        self, size: int, root: bytes, chain: bytes, now: datetime, archive: bytes
    ) -> TreeHead:
        """A retention checkpoint's JWS (``typ: audit-checkpoint+jwt``) over the first
        ``size`` entries and the SHA-256 of the archive of the pruned segment."""
        signed_at = int(now.timestamp())
        claims = checkpoint_claims(
            issuer=self.policy.issuer,
            tree_size=size,
            root_hash=root,
            chain=chain,
            signed_at=signed_at,
            archive=archive,
        )
        signature = self._sign(claims, CHECKPOINT_TYP)
        return TreeHead(size, root, chain, datetime.fromtimestamp(signed_at, now.tzinfo), signature)

    def public_keys(self) -> list[dict[str, Any]]:
        """Every signing key's public JWK, retired ones too (for old heads)."""
        return self._keys()

    def checkpoint(self) -> Checkpoint | None:
        """The retention checkpoint the trail starts from, if it was ever pruned."""
        with self._uow(read_only=True) as uow:
            return uow.trail.checkpoint()

    def checkpoints(self, *, limit: int = 50) -> list[Checkpoint]:
        with self._uow(read_only=True) as uow:
            return uow.trail.checkpoints(limit=limit)

    # -- reads and proofs ------------------------------------------------------------

    def tree_heads(self, *, limit: int = 50, before: int | None = None) -> list[TreeHead]:
        with self._uow(read_only=True) as uow:
            return uow.trail.tree_heads(limit=limit, before=before)

    def _head(self, uow_trail: AuditTrailRepository, tree_size: int | None) -> TreeHead:
        if tree_size is None:
            latest = uow_trail.tree_heads(limit=1)
            if not latest:
                raise NotFound("no tree head has been signed yet")
            return latest[0]
        head = uow_trail.tree_head(tree_size)
        if head is None:
            raise NotFound(f"no signed tree head of size {tree_size}")
        return head

    def inclusion(self, event_id: str, tree_size: int | None = None) -> dict[str, Any]:
        """RFC 9162 section 2.1.3 inclusion proof of an event in a signed tree head."""
        with self._uow(read_only=True) as uow:
            trail = uow.trail
            head = self._head(trail, tree_size)
            index = trail.index_of(event_id)
            if index is None:
                raise NotFound(f"event {event_id} is not in the trail yet")
            if index >= head.tree_size:
                raise NotFound(f"event {event_id} is not in the tree of size {head.tree_size}")
            entry, _ = trail.entries(index, 1)[0]
            proof = inclusion_proof(TrailNodes(trail), index, head.tree_size)
        return {
            "event_id": event_id,
            "leaf_index": index,
            "leaf_hash": entry.leaf_hash.hex(),
            "tree_head": head.to_dict(),
            "audit_path": [p.hex() for p in proof],
        }

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        """RFC 9162 section 2.1.4 consistency proof between two signed tree heads."""
        with self._uow(read_only=True) as uow:
            trail = uow.trail
            older, newer = self._head(trail, first), self._head(trail, second)
            if older.tree_size > newer.tree_size:
                raise NotFound("the first tree head must not be larger than the second")
            proof = consistency_proof(TrailNodes(trail), older.tree_size, newer.tree_size)
        return {
            "first": older.to_dict(),
            "second": newer.to_dict(),
            "consistency_path": [p.hex() for p in proof],
        }

    # -- verification and export -----------------------------------------------------

    def stream(self, start: int = 0, end: int | None = None) -> Iterator[tuple[LogEntry, str]]:
        """The log entries from index ``start`` (up to ``end``), with their events."""
        while end is None or start < end:
            with self._uow(read_only=True) as uow:
                page = uow.trail.entries(start, _PAGE)
            if end is not None:
                page = [item for item in page if item[0].index < end]
            yield from page
            if len(page) < _PAGE:
                return
            start = page[-1][0].index + 1

    def all_heads(self) -> list[TreeHead]:
        heads: list[TreeHead] = []
        before: int | None = None
        while True:
            with self._uow(read_only=True) as uow:
                page = uow.trail.tree_heads(limit=_PAGE, before=before)
            heads.extend(page)
            if len(page) < _PAGE:
                return sorted(heads, key=lambda h: h.tree_size)
            before = page[-1].tree_size

    def verify(self, *, held_head: str | None = None) -> VerifyReport:
        """Verify the whole trail in the database (see
        :mod:`agentiam.core.audit.verification`), and report stored events the
        integrator never logged although they are older than the grace period.
        ``held_head`` is a tree head's JWS kept elsewhere (a witness's copy): the
        trail must still contain it."""
        keys = key_map(self._keys())
        report = VerifyReport()
        expected: TreeHead | None = None
        if held_head is not None:
            try:
                expected = verify_tree_head(held_head, keys, issuer=self.policy.issuer)
            except JoseRejected as exc:
                report.findings.append(Finding("bad-signature", None, f"held head: {exc}"))
        start = self.checkpoint()
        checked = verify_entries(
            self.stream(start.tree_size if start else 0),
            self.all_heads(),
            keys,
            issuer=self.policy.issuer,
            expected=expected,
            start=start,
        )
        checked.findings[:0] = report.findings
        report = checked
        with self._uow(read_only=True) as uow:
            unlogged = uow.trail.unlogged_before(self._clock.now() - self.policy.grace)
        if unlogged:
            report.findings.append(
                Finding(
                    "unlogged",
                    None,
                    f"{unlogged} stored events older than {self.policy.grace} are not in the "
                    "trail (written around the service, or the integrator is not running)",
                )
            )
        return report

    def export(self) -> Iterator[str]:
        """The trail as JSON Lines: the public keys, the checkpoint it starts from (once
        pruned), every signed tree head, then every entry with its event: all an
        auditor needs to verify it offline, in one pass
        (:func:`agentiam.core.audit.verification.verify_export`)."""
        start = self.checkpoint()
        yield json.dumps({"keys": self._keys()}, sort_keys=True)
        if start is not None:
            yield json.dumps({"checkpoint": start.to_dict()}, sort_keys=True)
        for head in self.all_heads():
            yield json.dumps({"tree_head": head.signature}, sort_keys=True)
        for entry, body in self.stream(start.tree_size if start else 0):
            yield entry_line(entry, body)


def entry_line(entry: LogEntry, body: str) -> str:
    """One entry of an export or archive, with its event."""
    return json.dumps(
        {
            "index": entry.index,
            "leaf_hash": entry.leaf_hash.hex(),
            "chain_hash": entry.chain_hash.hex(),
            "event": json.loads(body) if body else None,
        },
        sort_keys=True,
    )
