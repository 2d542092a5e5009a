"""The group-commit audit writer on both stores: concurrent calls land exactly once,
each call's events together and in order; calls share transactions; a full queue
pushes back with 503; a failed transaction refuses every caller of its batch and
stores none of it, and the writer goes on; close() drains what was queued."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.core.audit.events import AuditEvent
from agentiam.errors import ServiceUnavailable
from agentiam.ports import AuditQuery, UnitOfWork
from agentiam.services.audit_writer import GroupCommitWriter
from agentiam.services.context import CallContext

CTX = CallContext.system("audit-writer-test")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WAIT = 10.0  # generous bound for anything that should happen promptly


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    yield e
    e.dispose()


def _events(call: str, n: int) -> list[AuditEvent]:
    return [
        CTX.event("authz.decision", now=NOW, details={"call": call, "index": i}) for i in range(n)
    ]


def _stored(engine: Engine) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    after: str | None = None
    with SqlUnitOfWork(engine, read_only=True) as uow:
        while True:
            page = uow.audit.find(AuditQuery(limit=500, after=after))
            out.extend(page.items)
            if page.next_after is None:
                return out
            after = page.next_after


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


class FailingUnitOfWork(SqlUnitOfWork):
    """Writes for real, then fails to commit (the disk filled up, the server went)."""

    def commit(self) -> None:
        raise RuntimeError("disk full")


class Store:
    """A unit-of-work factory the test steers: ``hold`` parks the writer before it
    opens its next transaction; ``fail_units`` names the write units (counted from 1)
    whose commit fails."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()  # the writer is parked at the gate
        self.fail_units: set[int] = set()
        self.write_units = 0

    def hold(self) -> None:
        self.waiting.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        if not read_only:
            self.write_units += 1
            if not self.gate.is_set():
                self.waiting.set()
                assert self.gate.wait(WAIT)
            if self.write_units in self.fail_units:
                return FailingUnitOfWork(self.engine)
        return SqlUnitOfWork(self.engine, read_only=read_only)


class Caller(threading.Thread):
    """One append call on its own thread; keeps what it raised."""

    def __init__(self, writer: GroupCommitWriter, events: list[AuditEvent]) -> None:
        super().__init__(daemon=True)
        self.writer = writer
        self.events = events
        self.error: BaseException | None = None
        self.returned = False

    def run(self) -> None:
        try:
            self.writer.append(self.events)
            self.returned = True
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Caller:
        self.join(WAIT)
        assert not self.is_alive()
        return self


def _ids(events: list[AuditEvent]) -> list[str]:
    return [e.event_id for e in events]


def test_concurrent_calls_land_once_together_and_in_order(engine: Engine) -> None:
    sizes: list[int] = []
    writer = GroupCommitWriter(
        lambda read_only=False: SqlUnitOfWork(engine, read_only=read_only),
        max_batch=64,
        on_commit=lambda n, _latency: sizes.append(n),
    )
    writer.start()
    threads, calls_per_thread = 16, 20
    calls = {
        f"t{t}c{c}": _events(f"t{t}c{c}", 1 + (t + c) % 5)
        for t in range(threads)
        for c in range(calls_per_thread)
    }
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        start.wait()
        try:
            for c in range(calls_per_thread):
                writer.append(calls[f"t{t}c{c}"])
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(60)
    assert errors == []
    assert writer.close(WAIT)

    stored = _ids(_stored(engine))
    expected = [e.event_id for events in calls.values() for e in events]
    assert sorted(stored) == sorted(expected)  # every event, exactly once
    position = {event_id: i for i, event_id in enumerate(stored)}
    for events in calls.values():  # each call's events contiguous and in order
        first = position[events[0].event_id]
        assert [position[e.event_id] for e in events] == list(range(first, first + len(events)))

    stats = writer.stats
    assert stats.events == len(expected)
    assert stats.calls == len(calls)
    assert stats.batches == len(sizes)
    assert sum(sizes) == len(expected)
    assert max(sizes) <= 64
    assert stats.batches < len(calls)  # calls shared transactions
    assert stats.failed_batches == stats.rejected == stats.queue_depth == 0
    assert stats.last_commit_latency is not None
    assert not stats.running


def test_calls_queued_during_a_commit_share_the_next_transaction(engine: Engine) -> None:
    store = Store(engine)
    sizes: list[int] = []
    writer = GroupCommitWriter(store, max_batch=10, on_commit=lambda n, _l: sizes.append(n))
    store.hold()
    first = Caller(writer, _events("first", 2))
    first.start()
    assert store.waiting.wait(WAIT)  # the writer holds the first call alone
    queued = [Caller(writer, _events(f"q{i}", 3)) for i in range(5)]  # 15 events
    for c in queued:
        c.start()
    _wait_for(lambda: writer.stats.queue_depth == 15)
    store.release()
    for c in [first, *queued]:
        assert c.finish().returned, c.error

    # 2 | 3+3+3 | 3+3: a batch is cut at max_batch, and never inside a call
    assert sizes == [2, 9, 6]
    assert writer.stats.batches == 3
    assert store.write_units == 3
    assert len(_stored(engine)) == 17
    assert writer.close(WAIT)


def test_a_call_larger_than_max_batch_or_the_queue_is_written_whole(engine: Engine) -> None:
    sizes: list[int] = []
    writer = GroupCommitWriter(
        lambda read_only=False: SqlUnitOfWork(engine, read_only=read_only),
        max_batch=3,
        queue_limit=4,
        on_commit=lambda n, _l: sizes.append(n),
    )
    events = _events("big", 7)
    writer.append(events)
    assert sizes == [7]
    assert _ids(_stored(engine)) == _ids(events)
    assert writer.close(WAIT)


def test_a_full_queue_refuses_within_the_enqueue_timeout(engine: Engine) -> None:
    store = Store(engine)
    writer = GroupCommitWriter(store, queue_limit=2, enqueue_timeout=0.2, commit_timeout=WAIT)
    store.hold()
    in_flight = Caller(writer, _events("in-flight", 1))
    in_flight.start()
    assert store.waiting.wait(WAIT)
    queued = Caller(writer, _events("queued", 2))
    queued.start()
    _wait_for(lambda: writer.stats.queue_depth == 2)  # the queue is full

    refused_events = _events("refused", 1)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        writer.append(refused_events)
    waited = time.monotonic() - started
    assert info.value.status == 503
    assert 0.15 <= waited < WAIT  # it waited for room, then gave up
    assert writer.stats.rejected == 1

    store.release()
    assert in_flight.finish().returned, in_flight.error
    assert queued.finish().returned, queued.error
    assert _ids(_stored(engine)) == _ids(in_flight.events + queued.events)
    assert writer.close(WAIT)


def test_a_caller_waiting_for_room_is_admitted_once_the_writer_drains(
    engine: Engine,
) -> None:
    store = Store(engine)
    writer = GroupCommitWriter(store, queue_limit=1, enqueue_timeout=WAIT)
    store.hold()
    in_flight = Caller(writer, _events("in-flight", 1))
    in_flight.start()
    assert store.waiting.wait(WAIT)
    queued = Caller(writer, _events("queued", 1))
    queued.start()
    _wait_for(lambda: writer.stats.queue_depth == 1)
    waiting = Caller(writer, _events("waiting", 1))
    waiting.start()
    time.sleep(0.05)
    assert waiting.is_alive()  # blocked for room, not queued
    assert writer.stats.queued_calls == 1
    store.release()
    for c in (in_flight, queued, waiting):
        assert c.finish().returned, c.error
    assert len(_stored(engine)) == 3
    assert writer.close(WAIT)


def test_a_failed_commit_refuses_its_whole_batch_and_the_writer_goes_on(
    engine: Engine,
) -> None:
    store = Store(engine)
    writer = GroupCommitWriter(store, max_batch=100)
    warm = _events("warm", 1)
    writer.append(warm)

    store.hold()
    parked = Caller(writer, _events("parked", 1))
    parked.start()
    assert store.waiting.wait(WAIT)
    doomed = [Caller(writer, _events(f"doomed{i}", 2)) for i in range(4)]
    for c in doomed:
        c.start()
    _wait_for(lambda: writer.stats.queued_calls == 4)
    store.fail_units = {3}  # warm-up, parked, then the four doomed calls together
    store.release()

    assert parked.finish().returned, parked.error
    for c in doomed:
        c.finish()
        assert not c.returned
        assert isinstance(c.error, ServiceUnavailable)
        assert c.error.status == 503
        assert isinstance(c.error.__cause__, RuntimeError)
    stats = writer.stats
    assert stats.failed_batches == 1
    assert stats.failed_events == 8

    after = _events("after", 3)
    writer.append(after)  # the writer survived and writes the next batch
    assert _ids(_stored(engine)) == _ids(warm + parked.events + after)
    assert writer.stats.batches == 3
    assert writer.close(WAIT)


def test_a_store_that_cannot_be_reached_refuses_with_503(engine: Engine) -> None:
    def broken(*, read_only: bool = False) -> UnitOfWork:
        raise ConnectionError("database unreachable")

    writer = GroupCommitWriter(broken)
    for _ in range(2):  # and keeps refusing, without dying
        with pytest.raises(ServiceUnavailable):
            writer.append(_events("x", 1))
    assert writer.stats.failed_batches == 2
    assert writer.stats.running
    assert writer.close(WAIT)
    assert _stored(engine) == []


def test_a_call_still_queued_at_its_commit_timeout_is_withdrawn(engine: Engine) -> None:
    store = Store(engine)
    writer = GroupCommitWriter(store, commit_timeout=0.2)
    store.hold()
    in_flight = Caller(writer, _events("in-flight", 1))
    in_flight.start()
    assert store.waiting.wait(WAIT)
    with pytest.raises(ServiceUnavailable):
        writer.append(_events("withdrawn", 1))
    assert in_flight.finish().error is not None  # its caller stopped waiting too
    assert writer.stats.queue_depth == 0
    store.release()
    assert writer.close(WAIT)
    # The in-flight batch was already being written, so it may land (unacknowledged);
    # the withdrawn call was still queued and never does.
    assert _ids(_stored(engine)) == _ids(in_flight.events)


def test_close_drains_the_queue_then_refuses(engine: Engine) -> None:
    store = Store(engine)
    writer = GroupCommitWriter(store, max_batch=4)
    store.hold()
    callers = [Caller(writer, _events(f"c{i}", 2)) for i in range(6)]
    callers[0].start()
    assert store.waiting.wait(WAIT)
    for c in callers[1:]:
        c.start()
    _wait_for(lambda: writer.stats.queued_calls == 5)

    assert writer.close(timeout=0.05) is False  # held: not stopped yet, but closed
    assert writer.stats.closed
    with pytest.raises(ServiceUnavailable):
        writer.append(_events("late", 1))
    store.release()
    assert writer.close(WAIT) is True
    for c in callers:
        assert c.finish().returned, c.error
    assert sorted(_ids(_stored(engine))) == sorted(e for c in callers for e in _ids(c.events))
    assert writer.stats.events == 12
    assert not writer.stats.running
    with pytest.raises(ServiceUnavailable):
        writer.append(_events("later", 1))
    with pytest.raises(RuntimeError):
        writer.start()


def test_empty_appends_and_a_failing_callback_are_harmless(engine: Engine) -> None:
    def explode(_n: int, _latency: float) -> None:
        raise ValueError("metrics backend down")

    writer = GroupCommitWriter(
        lambda read_only=False: SqlUnitOfWork(engine, read_only=read_only), on_commit=explode
    )
    writer.append([])
    assert writer.stats.batches == 0
    assert not writer.stats.running  # nothing started
    writer.append(_events("one", 1))
    writer.append(_events("two", 1))
    assert writer.stats.batches == 2
    assert writer.close(WAIT)
    assert writer.close(WAIT)  # twice is fine
    assert len(_stored(engine)) == 2
