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

Retention (:mod:`agentiam.services.audit_retention`) may prune entries an exporter has
not delivered yet. The runner then finds the first entry it reads past its cursor: it
logs a warning once per gap, counts the entries lost in ``skipped`` (health and
``/metrics``) and goes on from the first entry still there. An exporter that never
delivered anything (no cursor yet) simply starts at the trail's first entry.
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
_REDACT_INPUT = 4 * _ERROR_MAX  # an error is cut to this before it is searched
_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@")
# A name that says its value is a credential, with any "-"/"_" words around it
# (X-Api-Key, access_token, x-splunk-token, client_secret, Set-Cookie, ...).
_CREDENTIAL_NAME = (
    r"(?<![\w-])[\w-]*?(?:token|secret|passw(?:or)?d|authori[sz]ation|api[ _-]?key"
    r"|credential|cookie|session)[\w-]*"
)
# name, separator, value: header-like ("Authorization: Bearer X"), query-like
# ("access_token=X"), JSON or repr-like ('"x-splunk-token": "Splunk X"'). A quoted value
# is consumed whole (to its closing quote, or to the end of a cut text); an unquoted
# one with its scheme (a word and a space before the credential) and auth-params.
_PLAIN = r"[^\s\"'&,;()\[\]{}<>]"  # a character of an unquoted credential
_PARAM = rf"(?:\"[^\"]*\"|{_PLAIN}+)"  # a credential, or one auth-param's value
_CREDENTIAL = re.compile(
    rf"(?is)(?P<name>{_CREDENTIAL_NAME})(?P<sep>\\?[\"']?\s*[:=]\s*)"
    r"(?:(?P<q>[\"'])(?:\\.|(?!(?P=q)).)*(?:(?P=q)|$)"
    # [scheme SP] credential, then any ", name=value" auth-params (Digest)
    rf"|(?:[A-Za-z][\w.+/~-]*[ \t]+)?(?:\"[^\"]*\"|{_PLAIN})+"
    rf"(?:\s*,\s*[\w-]+={_PARAM})*)"
)
# a cookie header's value is a list ("a=b; c=d"): all of it, to the end of the line
_COOKIE_HEADER = re.compile(r"(?i)(?<![\w-])((?:set-)?cookie\s*:\s*)[^\r\n\"']+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[\w.~+/=-]+")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _mask(match: re.Match[str]) -> str:
    quote = match.group("q") or ""
    return f"{match.group('name')}{match.group('sep')}{quote}***{quote}"


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
    # entries pruned by retention before this exporter delivered them
    skipped: int = 0
    # entries delivered cut short or as a stub (syslog, webhook: too big to send whole)
    truncated: int = 0

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
            "skipped": self.skipped,
            "truncated": self.truncated,
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
    skipped: int = 0
    # the next log index this process expects to deliver (None until it read any),
    # and how far gaps were counted
    expected: int | None = None
    skipped_to: int = 0


def redact(exc: BaseException) -> str:
    """An exporter's error for the API, the database and logs: the exception's class
    and message, with URL user info and every credential removed (a value after a
    name like ``Authorization``, ``*_token``, ``*-secret``, ``password``, ``api key``,
    ``cookie`` or ``session``, in header, query or JSON shape, scheme and all; any
    ``Bearer`` token), cut to a bounded length."""
    text = f"{type(exc).__name__}: {exc}"[:_REDACT_INPUT]
    text = _USERINFO.sub(r"\1***@", text)
    text = _COOKIE_HEADER.sub(r"\1***", text)
    text = _CREDENTIAL.sub(_mask, text)
    text = _BEARER.sub(r"\1 ***", text)
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
        self._check_gap(state, position, page[0][0].index)
        try:
            batch = [(entry.index, json.loads(body) if body else {}) for entry, body in page]
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
        state.expected = batch[-1][0] + 1
        with self._uow() as uow:
            uow.trail.advance(name, batch[-1][0] + 1, done)
            uow.commit()
        return len(batch)

    def _check_gap(self, state: _State, position: int, first: int) -> None:
        """Count (once) the entries retention pruned before this exporter delivered
        them: those from where it was to deliver next (its cursor, or what this process
        last read or delivered, whichever is further) to ``first``, the first entry
        still in the trail. An exporter without a cursor that this process has not run
        yet starts wherever the trail does."""
        if position == 0 and state.expected is None:
            state.expected = first
            return
        start = max(position, state.expected or 0, state.skipped_to)
        state.expected = first
        if first <= start:
            return
        state.skipped += first - start
        state.skipped_to = first
        log.warning(
            "audit exporter %s: entries %d to %d were pruned by retention before it "
            "delivered them; %d skipped, delivering on from %d",
            state.exporter.name,
            start,
            first - 1,
            first - start,
            first,
        )

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
                    skipped=s.skipped,
                    truncated=_count(getattr(s.exporter, "truncated", 0)),
                )
            )
        return result
