"""Retention of the audit trail: archive, checkpoint, prune.

A pass prunes the oldest entries, those whose events are older than the retention
period, in four steps:

1. **Plan.** The prune point ``k`` is the first entry whose event is recent enough,
   but never past an exporter's cursor (an event a SIEM has not received yet is kept)
   and never more than ``batch`` entries after the last checkpoint (each pass is
   bounded in time, memory and archive size).
2. **Head.** The tree of the first ``k`` entries is signed as a tree head, and the
   hashes of its compact range (``merkle.compact_range_keys``) are read.
3. **Archive.** The segment from the previous checkpoint to ``k`` is written, and
   fsynced, before anything is removed: the public keys, the previous checkpoint, the
   tree heads up to ``k`` (the new one included) and every entry with its event. It
   is an export in its own right: ``agentiam audit verify --export`` checks it alone,
   and archives chain, each starting where the previous one ends. An archive missing
   an entry is not kept, and an existing archive is never overwritten.
   Then the **checkpoint** is signed: a JWS of its own type naming ``k``, the root,
   the chain hash and the archive's SHA-256.
4. **Prune.** In one transaction, with the integrator's lock: the checkpoint is
   recorded, then the entries, events, tree heads and Merkle nodes before ``k`` that
   no later root or proof needs are deleted. The database itself refuses any delete
   above the latest checkpoint (migration 0006).

The trail then verifies from its checkpoint, and every inclusion proof of a remaining
event and every consistency proof between remaining tree heads still verify. A crash
between archive and prune leaves an archive file and no prune; the next pass writes
it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentiam.core.audit.events import Outcome, ResourceRef
from agentiam.core.audit.merkle import compact_range_keys, fold
from agentiam.core.audit.trail import Checkpoint, TreeHead
from agentiam.ports import Clock, UnitOfWorkFactory
from agentiam.services.audit_trail import AuditTrail, TrailNodes, entry_line
from agentiam.services.context import CallContext

__all__ = ["ArchiveIncomplete", "ArchiveSink", "AuditRetention", "PrunePlan", "RetentionPolicy"]


class ArchiveIncomplete(Exception):
    """The segment changed while it was being archived (another pass pruned it)."""


class ArchiveSink(Protocol):
    """Where pruned segments go (adapters/archive.py: a local directory)."""

    def write(self, name: str, lines: Iterable[str]) -> str:
        """Store ``lines`` durably under ``name`` and return a reference to it:
        ``"<name> sha256:<hex digest>"``. An existing archive of that name is never
        replaced: the same content is accepted as is, other content refused
        (ArchiveConflict). If ``lines`` raises, nothing is stored."""
        ...


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    # Entries whose events are older than this are archived and pruned.
    keep: timedelta
    # The most entries one checkpoint covers (one archive file, one transaction).
    batch: int = 100_000


@dataclass(frozen=True, slots=True)
class PrunePlan:
    start: int  # the previous checkpoint's size (0: none)
    end: int  # the new checkpoint's size: entries [start, end) go
    held_back_by: str | None  # what stopped it short of the time horizon, if anything

    @property
    def entries(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "entries": self.entries,
            "held_back_by": self.held_back_by,
        }


class AuditRetention:
    def __init__(
        self,
        trail: AuditTrail,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        archive: ArchiveSink,
        exporters: Sequence[str] = (),
        record: Callable[[CallContext, str, Outcome, ResourceRef, dict[str, Any]], None]
        | None = None,
    ) -> None:
        """``exporters`` are the configured exporters' names, whose cursors bound the
        prune point; ``record`` audits each prune (type, outcome, resource, details)."""
        self._trail = trail
        self._uow = uow
        self._clock = clock
        self._archive = archive
        self._exporters = tuple(exporters)
        self._record = record

    def plan(self, before: datetime, *, batch: int = 100_000) -> PrunePlan:
        """What a prune of the events recorded before ``before`` would remove now."""
        if batch < 1:
            raise ValueError("batch must be positive")
        with self._uow(read_only=True) as uow:
            trail = uow.trail
            previous = trail.checkpoint()
            start = previous.tree_size if previous else 0
            end = trail.prune_point(before)
            held: str | None = None
            # Every exporter's cursor bounds it: those configured here, and any other
            # replica's (each cursor row), so no SIEM misses an event to retention.
            cursors = [(name, trail.cursor(name)) for name in self._exporters]
            behind = trail.min_cursor()
            if behind is not None:
                cursors.append(behind)
            for name, position in cursors:
                if position < end:
                    end, held = position, f"exporter {name} has delivered only {position}"
            if end > start + batch:
                end, held = start + batch, f"at most {batch} entries a pass"
        return PrunePlan(start, max(end, start), held)

    def prune(
        self, ctx: CallContext, before: datetime, *, batch: int = 100_000
    ) -> Checkpoint | None:
        """One pass (see the module docstring); None when there is nothing to prune
        or another replica pruned or integrated meanwhile (the next pass retries)."""
        plan = self.plan(before, batch=batch)
        if plan.entries <= 0:
            return None
        end = plan.end
        with self._uow(read_only=True) as uow:
            keys = compact_range_keys(end)
            found = TrailNodes(uow.trail).get_many(keys)
            compact = tuple(found[k] for k in keys)
            chain = uow.trail.entries(end - 1, 1)[0][0].chain_hash
        root = fold(compact)
        head = self._trail.sign_tree(end, root, chain, self._clock.now())
        previous = self._trail.checkpoint()
        if (previous.tree_size if previous else 0) != plan.start:
            return None
        name = f"audit-{plan.start:012d}-{end:012d}.jsonl"
        # The archive must hold every entry it covers; another pass pruning meanwhile
        # would cut it short, and then it is not kept (ArchiveIncomplete).
        reference = self._archive.write(name, self._segment(previous, head, plan))
        digest = bytes.fromhex(reference.rsplit("sha256:", 1)[1])
        signed = self._trail.sign_checkpoint(end, root, chain, self._clock.now(), digest)
        checkpoint = Checkpoint(signed, compact, reference)
        with self._uow() as uow:
            current = uow.trail.checkpoint()
            if not uow.trail.lock() or (current.tree_size if current else 0) != plan.start:
                return None
            removed = uow.trail.prune(checkpoint, tree_head=head, now=self._clock.now())
            uow.commit()
        if self._record is not None:
            self._record(
                ctx,
                "audit.pruned",
                Outcome.SUCCESS,
                ResourceRef("audit_checkpoint", str(end)),
                {
                    "tree_size": end,
                    "from": plan.start,
                    "entries": removed,
                    "before": before.isoformat(),
                    "archive": reference,
                    "held_back_by": plan.held_back_by,
                },
            )
        return checkpoint

    def run(self, ctx: CallContext, keep: RetentionPolicy) -> int:
        """Prune everything older than ``keep.keep``, pass after pass; returns the
        number of passes that pruned."""
        before = self._clock.now() - keep.keep
        passes = 0
        while self.prune(ctx, before, batch=keep.batch) is not None:
            passes += 1
        return passes

    def _segment(
        self, previous: Checkpoint | None, head: TreeHead, plan: PrunePlan
    ) -> Iterator[str]:
        """The archive: an export of the entries [start, end) (see module docstring)."""
        yield json.dumps({"keys": self._trail.public_keys()}, sort_keys=True)
        if previous is not None:
            yield json.dumps({"checkpoint": previous.to_dict()}, sort_keys=True)
        for stored in self._trail.all_heads():
            if plan.start < stored.tree_size < plan.end:
                yield json.dumps({"tree_head": stored.signature}, sort_keys=True)
        yield json.dumps({"tree_head": head.signature}, sort_keys=True)
        expected = plan.start
        for entry, body in self._trail.stream(plan.start, plan.end):
            if entry.index != expected:
                raise ArchiveIncomplete(f"entry {expected} is gone; the archive is not kept")
            expected += 1
            yield entry_line(entry, body)
        if expected != plan.end:
            raise ArchiveIncomplete(
                f"only entries {plan.start}..{expected - 1} of ..{plan.end - 1} were read"
            )
