"""Record calls that change nothing (reads, rejections) and read the event store.

Changes record their own events inside their transaction (see the other services).
Reads and refusals are recorded before their answer leaves, through the group-commit
writer when one is wired (``services/audit_writer.py``): if the event cannot be made
durable the call fails with 503, so nothing is served unlogged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from agentiam.core.audit.events import AuditEvent, Outcome, ResourceRef
from agentiam.errors import ServiceUnavailable
from agentiam.ports import AuditAppender, AuditQuery, Clock, Page, UnitOfWorkFactory
from agentiam.services.context import CallContext

__all__ = ["AuditService"]


class AuditService:
    def __init__(
        self, uow: UnitOfWorkFactory, clock: Clock, appender: AuditAppender | None = None
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._appender = appender

    def append(self, events: list[AuditEvent]) -> None:
        """Make stand-alone events durable, or raise ServiceUnavailable (503)."""
        if self._appender is not None:
            self._appender.append(events)
            return
        with self._writing(), self._uow() as uow:
            uow.audit.append_many(events)
            uow.commit()

    def append_new(
        self, events: Sequence[AuditEvent], record: Callable[[list[AuditEvent]], AuditEvent]
    ) -> tuple[list[AuditEvent], AuditEvent]:
        """In one transaction: those of ``events`` whose ``event_id`` is not stored yet
        (events an enforcement point ships, and retries after a crash), then
        ``record(fresh)``, the event recording the call, made from exactly those. An
        id stored meanwhile by a concurrent writer is skipped too
        (``append_absent``), never an error. Returns the fresh events and the record,
        or raises ServiceUnavailable (503). Such a call is a batch already, so it gets
        its own transaction rather than a seat in the shared group commit: nothing it
        holds can fail the writes of other callers."""
        with self._writing(), self._uow() as uow:
            stored = uow.audit.existing_ids([e.event_id for e in events])
            fresh = [e for e in events if e.event_id not in stored]
            made = record(fresh)
            uow.audit.append_absent([*fresh, made])
            uow.commit()
        return fresh, made

    @staticmethod
    @contextmanager
    def _writing() -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # any storage failure means: not durable, so refuse
            raise ServiceUnavailable(
                "the audit trail cannot be written; the call was refused",
                hint="Check the database and retry.",
            ) from exc

    def record(
        self,
        ctx: CallContext,
        *,
        type: str,
        action: str,
        outcome: Outcome,
        resource: ResourceRef | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        initiating_human: str | None = None,
        delegation_chain: tuple[str, ...] = (),
    ) -> AuditEvent:
        event = ctx.event(
            type,
            now=self._clock.now(),
            action=action,
            outcome=outcome,
            resource=resource,
            reason=reason,
            details=details,
            initiating_human=initiating_human,
            delegation_chain=delegation_chain,
        )
        self.append([event])
        return event

    def find(self, query: AuditQuery) -> Page[AuditEvent]:
        with self._uow(read_only=True) as uow:
            return uow.audit.find(query)
