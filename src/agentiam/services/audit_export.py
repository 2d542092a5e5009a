"""Delivery of the audit trail to SIEMs and archives (the exporters).

Each configured exporter has a durable cursor in the database: the next log index it
delivers. A pass reads the entries from the cursor on, in log order (so only events
the integrator has already placed in the trail, and always in the trail's order),
hands at most ``batch`` of them to the exporter, and advances the cursor only once
the exporter returned. Delivery is therefore **at least once**: a crash or a failure
between delivery and the cursor update delivers that batch again, and a consumer
deduplicates by ``log_index`` (or the event's ``event_id``).

A failing exporter is retried with exponential backoff (``backoff_initial`` doubling
up to ``backoff_max``); each exporter runs in its own loop, so one that fails or
hangs does not hold up the others. :meth:`ExportRunner.health` reports every
exporter's position, lag, last success, consecutive failures and last error.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentiam.ports import Clock, UnitOfWorkFactory

log = logging.getLogger("agentiam.audit")

__all__ = ["ExportPolicy", "ExportRunner", "Exporter", "ExporterHealth"]

Batch = Sequence[tuple[int, dict[str, Any]]]

_ERROR_MAX = 300
_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_SECRETISH = re.compile(
    r"(?i)\b(authorization|bearer|token|password|secret|api[_-]?key)\b\s*[:=]?\s*\S+"
)


class Exporter(Protocol):
    """A destination of audit events. ``deliver`` gets a batch of (log index, event as
    stored), in log order, and returns only once the destination has it durably;
    any exception means the batch was not (or not surely) delivered."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str:
        """The configured ``type`` (``jsonl``, ...)."""

    def deliver(self, batch: Batch) -> None: ...


@dataclass(frozen=True, slots=True)
class ExportPolicy:
    # Entries per delivery.
    batch: int = 500
    # Retry delay after the first failure, doubled after each further one, up to max.
    backoff_initial: timedelta = field(default_factory=lambda: timedelta(seconds=1))
    backoff_max: timedelta = field(default_factory=lambda: timedelta(seconds=60))
    # Unhealthy when this many entries behind the trail ...
    max_lag: int = 10_000
    # ... or when failing without a success for this long.
    failing_for: timedelta = field(default_factory=lambda: timedelta(seconds=60))


@dataclass(frozen=True, slots=True)
class ExporterHealth:
    name: str
    type: str
    position: int
    lag: int
    delivered: int
    last_success_at: datetime | None
    consecutive_failures: int
    failing_since: datetime | None
    last_error: str | None
    retry_at: datetime | None
    healthy: bool

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "name": self.name,
            "type": self.type,
            "position": self.position,
            "lag": self.lag,
            "delivered": self.delivered,
            "last_success_at": iso(self.last_success_at),
            "consecutive_failures": self.consecutive_failures,
            "failing_since": iso(self.failing_since),
            "last_error": self.last_error,
            "retry_at": iso(self.retry_at),
            "healthy": self.healthy,
        }


@dataclass
class _State:
    exporter: Exporter
    lock: threading.Lock = field(default_factory=threading.Lock)
    delivered: int = 0
    last_success_at: datetime | None = None
    failures: int = 0
    failing_since: datetime | None = None
    last_error: str | None = None
    retry_at: datetime | None = None


def redact(exc: BaseException) -> str:
    """An exporter's error for the API, the database and logs: the exception's class
    and message, with URL user info and anything that looks like a credential
    removed, cut to a bounded length."""
    text = f"{type(exc).__name__}: {exc}"
    text = _USERINFO.sub(r"\1***@", text)
    text = _SECRETISH.sub(lambda m: f"{m.group(1)} ***", text)
    return text[:_ERROR_MAX]


class ExportRunner:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        exporters: Sequence[Exporter],
        *,
        policy: ExportPolicy | None = None,
    ) -> None:
        names = [e.name for e in exporters]
        if len(set(names)) != len(names):
            raise ValueError("exporter names must be unique")
        self._uow = uow
        self._clock = clock
        self.policy = policy or ExportPolicy()
        self._states = {e.name: _State(e) for e in exporters}

    @property
    def names(self) -> list[str]:
        return list(self._states)

    def run(self, name: str) -> int:
        """Deliver what is due for exporter ``name``: batches until it caught up with
        the trail, it fails, or (to stay responsive) ten batches were sent. Returns
        the number of entries delivered; 0 while waiting out a backoff."""
        state = self._states[name]
        if not state.lock.acquire(blocking=False):
            return 0  # a previous pass is still running (a slow destination)
        try:
            total = 0
            for _ in range(10):
                sent = self._pass(state)
                total += sent
                if sent < self.policy.batch:
                    break
            return total
        finally:
            state.lock.release()

    def run_all(self) -> int:
        return sum(self.run(name) for name in self._states)

    def _pass(self, state: _State) -> int:
        now = self._clock.now()
        if state.retry_at is not None and now < state.retry_at:
            return 0
        name = state.exporter.name
        with self._uow(read_only=True) as uow:
            position = uow.trail.cursor(name)
            page = uow.trail.entries(position, self.policy.batch)
        if not page:
            return 0
        batch = [(entry.index, json.loads(body) if body else {}) for entry, body in page]
        try:
            state.exporter.deliver(batch)
        except Exception as exc:
            self._failed(state, exc, now)
            return 0
        done = self._clock.now()
        # The delivery succeeded: say so before the cursor moves, so health never shows
        # a position without the success that reached it.
        state.delivered += len(batch)
        state.last_success_at = done
        state.failures = 0
        state.failing_since = None
        state.last_error = None
        state.retry_at = None
        with self._uow() as uow:
            uow.trail.advance(name, batch[-1][0] + 1, done)
            uow.commit()
        return len(batch)

    def _failed(self, state: _State, exc: Exception, now: datetime) -> None:
        error = redact(exc)
        state.failures += 1
        state.failing_since = state.failing_since or now
        state.last_error = error
        state.retry_at = now + self.backoff(state.failures)
        with self._uow() as uow:
            uow.trail.record_failure(state.exporter.name, error, now)
            uow.commit()

    def backoff(self, failures: int) -> timedelta:
        """The wait after the ``failures``-th consecutive failure."""
        p = self.policy
        if failures <= 0:
            return timedelta(0)
        # capped before multiplying so a long outage cannot overflow
        steps = min(failures - 1, 32)
        delay: timedelta = p.backoff_initial * (2**steps)
        return min(delay, p.backoff_max)

    def close(self) -> None:
        """Release the exporters' connections (sockets, HTTP clients) at shutdown;
        one that fails to close does not keep the others open."""
        for state in self._states.values():
            closer = getattr(state.exporter, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception as exc:  # shutting down: log it and go on
                    log.warning("exporter %s did not close: %s", state.exporter.name, redact(exc))

    def health(self) -> list[ExporterHealth]:
        now = self._clock.now()
        with self._uow(read_only=True) as uow:
            size, _ = uow.trail.head()
            positions = {name: uow.trail.cursor(name) for name in self._states}
        result = []
        for name, s in self._states.items():
            lag = max(size - positions[name], 0)
            failing_too_long = (
                s.failing_since is not None and now - s.failing_since >= self.policy.failing_for
            )
            result.append(
                ExporterHealth(
                    name=name,
                    type=s.exporter.kind,
                    position=positions[name],
                    lag=lag,
                    delivered=s.delivered,
                    last_success_at=s.last_success_at,
                    consecutive_failures=s.failures,
                    failing_since=s.failing_since,
                    last_error=s.last_error,
                    retry_at=s.retry_at,
                    healthy=lag <= self.policy.max_lag and not failing_too_long,
                )
            )
        return result
