"""Group commit for audit events that stand alone (decision logs, reads, denials).

Events that record a change are written inside that change's own transaction. Events
that stand alone would each cost one transaction, so one commit (and on PostgreSQL one
WAL flush) per call. :class:`GroupCommitWriter` instead queues them, and a single
background thread writes whatever has gathered in one transaction:

- :meth:`GroupCommitWriter.append` returns only once the transaction holding its events
  has committed. A caller never goes on (allows an action, serves a read) on an event
  that is not durable.
- It raises :class:`~agentiam.errors.ServiceUnavailable` (503) when the queue stays full
  for ``enqueue_timeout`` (back-pressure), when the batch's transaction fails (every
  caller of that batch gets the error; the transaction is rolled back, so none of its
  events is stored), when no commit comes within ``commit_timeout``, or once the writer
  is closed.
- The events of one call are written together, in order, in one transaction; a call
  larger than ``max_batch`` (or than ``queue_limit``) is still taken whole, on its own.
- A failed batch does not stop the writer: the next batch is tried afresh.

A 503 does not always mean "not written": if a commit fails at the wire after the
database applied it, or a caller stops waiting (``commit_timeout``) while its batch is
already being written, the events may be stored although the caller was refused. The
guarantee is one-sided, as the audit trail needs: nothing is acknowledged that is not
durable. A call still queued when its wait times out is withdrawn and never written.

The batching itself is :class:`GroupCommit`, generic over what it stores and how: it
takes one ``write(items)`` function that makes a whole batch durable or raises. The
gateway's local audit spool (``agentiam.adapters.gateway.spool``) reuses it with a
write that appends to a segment file and fsyncs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Generic, TypeVar

from agentiam.core.audit.events import AuditEvent
from agentiam.errors import ServiceUnavailable
from agentiam.ports import UnitOfWorkFactory

__all__ = ["GroupCommit", "GroupCommitWriter", "WriterStats"]

log = logging.getLogger("agentiam.audit")

_HINT = "Check the database and retry."

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer's counters, for metrics."""

    batches: int  # committed transactions
    events: int  # events in committed transactions
    calls: int  # append calls acknowledged
    failed_batches: int  # transactions that failed (their callers got 503)
    failed_events: int
    rejected: int  # calls refused without a failed transaction: full, closed, timed out
    last_batch_size: int  # events in the last committed transaction
    last_commit_latency: float | None  # seconds from opening to committing it
    queue_depth: int  # events waiting for the writer
    queued_calls: int  # calls waiting for the writer
    running: bool  # the writer thread is alive
    closed: bool  # close() was called: appends are refused


class _Pending(Generic[T]):
    """One append call: its events and the future its caller waits on."""

    __slots__ = ("events", "future", "taken")

    def __init__(self, events: tuple[T, ...]) -> None:
        self.events = events
        self.future: Future[None] = Future()
        self.taken = False  # the writer took it into a batch (guarded by the lock)


class GroupCommit(Generic[T]):
    """Batches items of concurrent callers into shared durable writes; see the module
    doc. ``write(items)`` makes one batch durable (one transaction, one fsync) or
    raises; it runs on the writer thread only. ``hint`` is the next step a refused
    caller is given; ``thread_name`` names the writer thread.

    ``max_batch`` caps the events of one transaction; after the first call of a batch
    the writer waits at most ``max_wait`` seconds for more. ``queue_limit`` caps the
    events waiting; a full queue makes callers wait up to ``enqueue_timeout``, then
    refuses them. ``on_commit(events, latency_seconds)`` runs on the writer thread after
    each committed transaction (after its callers were released); it must be quick and
    its errors are logged and ignored.

    :meth:`start` starts the writer thread; the first :meth:`append` starts it too.
    :meth:`close` drains the queue and stops it.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        max_batch: int = 500,
        max_wait: float = 0.002,
        queue_limit: int = 10_000,
        enqueue_timeout: float = 1.0,
        commit_timeout: float = 5.0,
        on_commit: Callable[[int, float], None] | None = None,
        hint: str = _HINT,
        thread_name: str = "audit-group-commit",
    ) -> None:
        if max_batch < 1 or queue_limit < 1:
            raise ValueError("max_batch and queue_limit must be at least 1")
        if max_wait < 0 or enqueue_timeout < 0 or commit_timeout <= 0:
            raise ValueError("max_wait and enqueue_timeout must be >= 0, commit_timeout > 0")
        self._write_batch = write
        self._hint = hint
        self._thread_name = thread_name
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue_limit = queue_limit
        self._enqueue_timeout = enqueue_timeout
        self._commit_timeout = commit_timeout
        self._on_commit = on_commit

        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._queue: deque[_Pending[T]] = deque()
        self._depth = 0  # events in the queue
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_calls = 1  # calls in the last batch: how many to wait for (see below)

        self._batches = 0
        self._events = 0
        self._calls = 0
        self._failed_batches = 0
        self._failed_events = 0
        self._rejected = 0
        self._last_batch_size = 0
        self._last_latency: float | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (once; later calls do nothing)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closed:
            raise RuntimeError("the audit writer was closed; it cannot be restarted")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new appends, let the writer commit everything already queued, and
        stop it. True if it stopped within ``timeout`` seconds; if not, it goes on
        draining in the background (queued callers still wait at most their
        ``commit_timeout``). Safe to call more than once."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()  # callers waiting for room are refused now
            thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False  # called from on_commit: the thread stops once it returns
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                batches=self._batches,
                events=self._events,
                calls=self._calls,
                failed_batches=self._failed_batches,
                failed_events=self._failed_events,
                rejected=self._rejected,
                last_batch_size=self._last_batch_size,
                last_commit_latency=self._last_latency,
                queue_depth=self._depth,
                queued_calls=len(self._queue),
                running=self._thread is not None and self._thread.is_alive(),
                closed=self._closed,
            )

    # -- callers --------------------------------------------------------------------

    def append(self, events: Sequence[T]) -> None:
        """Write ``events`` in one transaction shared with other callers; return once
        it has committed. Raises ServiceUnavailable if that cannot be done in time."""
        batch = tuple(events)
        if not batch:
            return
        if self._thread is not None and self._thread is threading.current_thread():
            raise RuntimeError("append called on the audit writer thread would deadlock")
        item = _Pending(batch)
        size = len(batch)
        deadline = time.monotonic() + self._enqueue_timeout
        with self._lock:
            while True:
                if self._closed:
                    self._rejected += 1
                    raise ServiceUnavailable(
                        "the audit trail is shutting down; the call was refused",
                        hint="Retry against another replica.",
                    )
                # A call bigger than the whole queue still gets in when the queue is empty.
                if self._depth == 0 or self._depth + size <= self._queue_limit:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._rejected += 1
                    raise ServiceUnavailable(
                        "the audit trail is overloaded; the call was refused",
                        hint="Retry after a short wait.",
                    )
                self._not_full.wait(remaining)
            self._start_locked()
            self._queue.append(item)
            self._depth += size
            self._not_empty.notify()
        try:
            item.future.result(timeout=self._commit_timeout)
        except TimeoutError:
            with self._lock:
                if not item.taken:  # still queued: withdraw it, so it is never written
                    self._queue.remove(item)
                    self._depth -= size
                    self._not_full.notify_all()
                elif item.future.done() and item.future.exception() is None:
                    return  # committed just as the wait ran out
                self._rejected += 1
            raise ServiceUnavailable(
                "the audit trail did not confirm the write in time; the call was refused",
                hint=self._hint,
            ) from None

    def submit(self, events: Sequence[T], *, wake: bool = True) -> Future[None]:
        """Queue ``events`` for the next shared transaction and return at once: the
        future completes once it has committed, or fails with ServiceUnavailable. For
        callers that must not block a thread on the commit (an event loop awaits the
        future). Never waits for room: a full queue or a closed writer raises
        ServiceUnavailable here. A caller that gives up waiting cannot withdraw its
        events; they may still be written (the guarantee stays one-sided).

        With ``wake=False`` an idle writer thread is not woken for these events: they
        go with the next batch another call (or :meth:`wake`, or :meth:`close`) starts.
        For events nothing waits on, so that they share that batch's write."""
        batch = tuple(events)
        item = _Pending(batch)
        if not batch:
            item.future.set_result(None)
            return item.future
        if self._thread is not None and self._thread is threading.current_thread():
            raise RuntimeError("submit called on the audit writer thread")
        size = len(batch)
        with self._lock:
            if self._closed or not (self._depth == 0 or self._depth + size <= self._queue_limit):
                self._rejected += 1
                raise ServiceUnavailable(
                    "the audit trail is shutting down; the call was refused"
                    if self._closed
                    else "the audit trail is overloaded; the call was refused",
                    hint=self._hint,
                )
            self._start_locked()
            self._queue.append(item)
            self._depth += size
            if wake:
                self._not_empty.notify()
        return item.future

    def wake(self) -> None:
        """Start a batch now for events queued with ``submit(..., wake=False)``."""
        with self._lock:
            if self._queue:
                self._not_empty.notify()

    # -- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        batch: list[_Pending[T]] = []
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    return
                self._write(batch)
                batch = []
        except BaseException as exc:  # the thread is dying: release everyone waiting
            with self._lock:
                self._closed = True
                waiting = [*batch, *self._queue]
                for item in self._queue:
                    item.taken = True
                self._queue.clear()
                self._depth = 0
                self._not_full.notify_all()
            for item in waiting:
                if not item.future.done():
                    item.future.set_exception(self._unavailable(exc))
            if not isinstance(exc, Exception):
                raise
            log.exception("the audit writer stopped")

    def _take(self) -> _Pending[T]:
        item = self._queue.popleft()
        item.taken = True
        self._depth -= len(item.events)
        self._not_full.notify_all()
        return item

    def _next_batch(self) -> list[_Pending[T]]:
        """Wait for a call, then gather more for at most ``max_wait``. Empty once the
        writer is closed and the queue drained."""
        with self._lock:
            while not self._queue:
                if self._closed:
                    return []
                self._not_empty.wait()
            batch = [self._take()]
            size = len(batch[0].events)
            deadline = time.monotonic() + self._max_wait
            while size < self._max_batch:
                if self._queue:
                    if size + len(self._queue[0].events) > self._max_batch:
                        break  # calls are never split; the next one starts the next batch
                    size += len(self._queue[0].events)
                    batch.append(self._take())
                    continue
                # Callers released by the last commit come back with their next call;
                # once as many calls as last time are here, waiting longer mostly adds
                # latency. (An idle writer thus commits a lone call at once.)
                if len(batch) >= self._last_calls:
                    break
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    break
                self._not_empty.wait(remaining)
            self._last_calls = len(batch)
            return batch

    def _write(self, batch: list[_Pending[T]]) -> None:
        size = sum(len(item.events) for item in batch)
        started = time.perf_counter()
        try:
            self._write_batch([event for item in batch for event in item.events])
        except Exception as exc:  # nothing of the batch is acknowledged
            # Type only: driver messages can quote the statement's parameters.
            log.warning(
                "audit batch of %d events failed: %s; its callers were refused",
                size,
                type(exc).__name__,
            )
            with self._lock:
                self._failed_batches += 1
                self._failed_events += size
            for item in batch:
                _settle(item.future, self._unavailable(exc))
            return
        latency = time.perf_counter() - started
        with self._lock:
            self._batches += 1
            self._events += size
            self._calls += len(batch)
            self._last_batch_size = size
            self._last_latency = latency
        for item in batch:
            _settle(item.future, None)
        if self._on_commit is not None:
            try:
                self._on_commit(size, latency)
            except Exception:
                log.warning("audit on_commit callback failed", exc_info=True)

    def _unavailable(self, cause: BaseException) -> ServiceUnavailable:
        """A fresh error per caller (callers re-raise it on their own threads)."""
        error = ServiceUnavailable(
            "the audit trail cannot be written; the call was refused", hint=self._hint
        )
        error.__cause__ = cause
        return error


def _settle(future: Future[None], error: BaseException | None) -> None:
    """Complete a caller's future, unless the caller cancelled it (a submitted
    future's owner may): the writer must never fail on that."""
    if future.done():
        return
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:  # cancelled between the check and the call
        pass


class GroupCommitWriter(GroupCommit[AuditEvent]):
    """Batches stand-alone audit events into shared database transactions (one unit of
    work per batch, rolled back if it fails); see the module doc and
    :class:`GroupCommit` for the parameters."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        max_batch: int = 500,
        max_wait: float = 0.002,
        queue_limit: int = 10_000,
        enqueue_timeout: float = 1.0,
        commit_timeout: float = 5.0,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__(
            self._store,
            max_batch=max_batch,
            max_wait=max_wait,
            queue_limit=queue_limit,
            enqueue_timeout=enqueue_timeout,
            commit_timeout=commit_timeout,
            on_commit=on_commit,
        )
        self._uow = uow

    def _store(self, events: list[AuditEvent]) -> None:
        with self._uow() as uow:  # rolled back on leaving if append or commit raised
            uow.audit.append_many(events)
            uow.commit()
