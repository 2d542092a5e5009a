"""The gateway's durable audit spool: fsync before an append returns, order, group
commit under concurrency, at-least-once shipping across restarts, backoff, refusal
when full, torn tails cut on recovery, nothing acknowledged ever lost."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentiam.adapters.gateway import spool as spool_module
from agentiam.adapters.gateway.spool import AuditSpool, SpoolBatch, SpoolFull, next_backoff
from agentiam.errors import ServiceUnavailable

WAIT = 10.0
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


class Sink:
    """A control plane: records what it accepted; can be told to fail."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failing: Exception | None = None
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.calls += 1
            if self.failing is not None:
                raise self.failing
            self.batches.append(list(events))

    @property
    def ids(self) -> list[str]:
        with self.lock:
            return [e["event_id"] for batch in self.batches for e in batch]


def _events(prefix: str, n: int, pad: int = 0) -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{i}", "pad": "x" * pad} for i in range(n)]


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "spool"


class LoopShipped(AuditSpool):
    """A spool opened with ``ship=None`` and shipped by :meth:`AuditSpool.ship_on_loop`
    on an event loop of its own thread, as a gateway ships it (its loop runs the task;
    closing cancels the task first, then closes the spool). Batches are decoded two
    lines at a time, so every batch is cut across several slices."""

    def __init__(
        self, directory: Path, ship: Callable[[list[dict[str, Any]]], None], **kw: Any
    ) -> None:
        super().__init__(directory, None, **kw)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None

        async def ship_async(events: list[dict[str, Any]]) -> None:
            await asyncio.sleep(0)
            ship(events)

        self.thread = threading.Thread(target=self._run, args=(ship_async,), daemon=True)
        self.thread.start()
        _wait_for(self._shipping)  # drain() needs a running shipper

    def _run(self, ship: Any) -> None:
        self.task = self.loop.create_task(self.ship_on_loop(ship, step_lines=2, idle_poll=5))
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    def close(self, timeout: float = 10.0) -> bool:
        if self.thread.is_alive() and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(timeout)
        return super().close(timeout)


class Opened(list[AuditSpool]):
    """The spools a test opened, and how they are shipped: "thread" or "loop"."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode


@pytest.fixture(params=["thread", "loop"])
def opened(request: pytest.FixtureRequest) -> Iterator[Opened]:
    """Every test using it runs twice: its spools shipped by their own thread, and by
    ``ship_on_loop`` (:class:`LoopShipped`). They are closed after the test."""
    spools = Opened(request.param)
    yield spools
    for s in spools:
        s.close(timeout=5)


def _open(
    opened: list[AuditSpool],
    directory: Path,
    ship: Callable[[list[dict[str, Any]]], None],
    **kw: Any,
) -> AuditSpool:
    kind = LoopShipped if getattr(opened, "mode", "thread") == "loop" else AuditSpool
    spool = kind(directory, ship, **{**FAST, **kw})
    opened.append(spool)
    return spool


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def test_events_are_shipped_in_order_and_files_are_private(
    directory: Path, opened: list[AuditSpool]
) -> None:
    sink = Sink()
    spool = _open(opened, directory, sink, batch=7)
    for n in range(10):
        spool.append(_events(f"call{n}", 3))
    assert spool.drain(WAIT)
    assert sink.ids == [f"call{n}-{i}" for n in range(10) for i in range(3)]
    assert all(len(batch) <= 7 for batch in sink.batches)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    line = json.loads(_segments(directory)[0].read_bytes().splitlines()[0])
    assert line["event"] == {"event_id": "call0-0", "pad": ""}
    assert isinstance(line["spooled_at"], float)
    health = spool.health()
    assert health.pending_events == 0
    assert health.pending_bytes == 0
    assert health.shipped_events == 30
    assert health.oldest_pending_age is None


def test_append_returns_only_after_fsync(
    directory: Path, opened: list[AuditSpool], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[int, int, bool]] = []  # (inode, size at fsync, is a directory)
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        info = os.fstat(fd)
        real_fsync(fd)
        synced.append((info.st_ino, info.st_size, stat.S_ISDIR(info.st_mode)))

    monkeypatch.setattr(os, "fsync", counting_fsync)
    sink = Sink()
    sink.failing = ConnectionError("control plane down")  # nothing shipped meanwhile
    spool = _open(opened, directory, sink)
    for n in range(5):
        spool.append(_events(f"c{n}", 2))
        segment = _segments(directory)[-1]
        info = segment.stat()
        # the segment's content, all of it, was fsynced before append returned ...
        assert (info.st_ino, info.st_size, False) in synced
    # ... and so was the directory after the segment was created
    assert any(is_dir for _ino, _size, is_dir in synced)


def test_many_threads_lose_nothing_and_share_fsyncs(
    directory: Path, opened: list[AuditSpool], monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    sink = Sink()
    spool = _open(opened, directory, sink, segment_bytes=20_000)
    threads, calls = 16, 60
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        barrier.wait()
        for n in range(calls):
            spool.append(_events(f"t{t}.{n}", 1 + n % 3))

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert spool.drain(WAIT)
    shipped = sink.ids
    expected = {
        f"t{t}.{n}-{i}" for t in range(threads) for n in range(calls) for i in range(1 + n % 3)
    }
    assert len(shipped) == len(expected)  # no duplicates in a run without failures
    assert set(shipped) == expected
    for t in range(threads):  # each caller's events in the order it appended them
        mine = [s for s in shipped if s.startswith(f"t{t}.")]
        assert mine == [f"t{t}.{n}-{i}" for n in range(calls) for i in range(1 + n % 3)]
    assert fsyncs < threads * calls  # group commit: callers shared fsyncs
    assert len(_segments(directory)) == 1  # shipped segments were deleted


@pytest.mark.parametrize("read_chunk", [64, 1 << 20])  # recovery reads in chunks
def test_at_least_once_across_restarts(
    directory: Path, opened: list[AuditSpool], monkeypatch: pytest.MonkeyPatch, read_chunk: int
) -> None:
    monkeypatch.setattr(spool_module, "_READ_CHUNK", read_chunk)
    sink = Sink()
    sink.failing = ConnectionError("down")
    first = _open(opened, directory, sink, batch=10, segment_bytes=2_000)
    for n in range(20):
        first.append(_events(f"c{n}", 5, pad=20))
    assert len(_segments(directory)) > 1
    assert first.close()

    # a second process ships part of it, then the control plane goes away again
    accepted = Sink()
    budget = [4]

    def flaky(events: list[dict[str, Any]]) -> None:
        if budget[0] == 0:
            raise ConnectionError("down again")
        budget[0] -= 1
        accepted(events)

    second = _open(opened, directory, flaky, batch=10, segment_bytes=2_000)
    _wait_for(lambda: second.health().consecutive_failures > 0)
    assert second.close()
    assert len(accepted.ids) == 40

    third_sink = Sink()
    third = _open(opened, directory, third_sink, batch=10, segment_bytes=2_000)
    assert third.drain(WAIT)
    everything = [f"c{n}-{i}" for n in range(20) for i in range(5)]
    shipped = accepted.ids + third_sink.ids
    assert set(shipped) == set(everything)
    assert len(shipped) - len(everything) <= 10  # at most the batch in flight re-sent
    assert third_sink.ids == everything[len(everything) - len(third_sink.ids) :]  # in order
    assert _segments(directory) == []  # all shipped, nothing written by the third spool


def test_backoff_doubles_up_to_its_cap_and_errors_are_redacted(
    directory: Path, opened: list[AuditSpool]
) -> None:
    assert [next_backoff(None)] == [1.0]
    delays: list[float] = []
    delay: float | None = None
    for _ in range(8):
        delay = next_backoff(delay)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]

    times: list[float] = []
    secret = "s3cr3t-value"

    def failing_three_times(events: list[dict[str, Any]]) -> None:
        times.append(time.monotonic())
        if len(times) <= 3:
            raise ConnectionError(
                f"POST https://gw:{secret}@cp.example/v1/audit/ingest: "
                f"Authorization: Bearer {secret}"
            )

    spool = _open(opened, directory, failing_three_times, backoff_initial=0.05, backoff_max=0.08)
    spool.append(_events("e", 1))
    _wait_for(lambda: spool.health().consecutive_failures >= 1)
    health = spool.health()
    assert health.last_ship_error is not None
    assert secret not in health.last_ship_error
    assert "ConnectionError" in health.last_ship_error
    assert health.pending_events == 1
    assert spool.drain(WAIT)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, [0.05, 0.08, 0.08], strict=True):
        assert gap >= expected * 0.9
    health = spool.health()
    assert health.consecutive_failures == 0
    assert health.last_ship_error is not None  # the last error stays visible
    assert health.last_ship_at is not None


def test_a_full_spool_refuses_and_frees_up_once_shipped(
    directory: Path, opened: list[AuditSpool]
) -> None:
    sink = Sink()
    sink.failing = ConnectionError("down")
    spool = _open(opened, directory, sink, max_bytes=5_000, segment_bytes=1_000)
    acknowledged: list[str] = []
    refused: SpoolFull | None = None
    for n in range(1000):
        try:
            spool.append(_events(f"c{n}", 1, pad=100))
        except SpoolFull as exc:
            refused = exc
            break
        acknowledged.append(f"c{n}-0")
    assert refused is not None
    assert refused.status == 503
    assert isinstance(refused, ServiceUnavailable)
    pending = spool.health().pending_bytes
    line = pending // len(acknowledged)
    assert pending <= 5_000 < pending + line  # filled up to its limit, not beyond
    with pytest.raises(SpoolFull):
        spool.append(_events("again", 1, pad=100))

    sink.failing = None
    assert spool.drain(WAIT)
    assert sink.ids == acknowledged  # every acknowledged event, nothing refused
    spool.append(_events("after", 1, pad=100))  # room again


def test_an_oversized_call_is_refused_not_split(directory: Path, opened: list[AuditSpool]) -> None:
    spool = _open(opened, directory, Sink(), max_bytes=1_000)
    with pytest.raises(SpoolFull):
        spool.append(_events("big", 1, pad=2_000))


def test_torn_last_line_is_cut_on_recovery(directory: Path, opened: list[AuditSpool]) -> None:
    directory.mkdir(mode=0o700)
    good = [json.dumps({"spooled_at": 1.0, "event": {"event_id": f"e{i}"}}) for i in range(3)]
    segment = directory / "0000000000000007.jsonl"
    segment.write_bytes(("\n".join(good) + "\n").encode() + b'{"spooled_at": 1.0, "ev')
    sink = Sink()
    sink.failing = RuntimeError("control plane down")  # nothing ships, the file stays
    spool = _open(opened, directory, sink)
    assert segment.read_bytes().endswith(b"\n")  # cut before anything else happens
    with sink.lock:
        sink.failing = None
    assert spool.drain(WAIT)
    assert sink.ids == ["e0", "e1", "e2"]
    spool.append(_events("new", 1))  # goes to a new segment after the old ones
    assert spool.drain(WAIT)
    assert sink.ids[-1] == "new-0"
    assert not segment.exists()
    assert _segments(directory)[0].name == "0000000000000008.jsonl"


def test_a_corrupt_line_is_skipped_and_counted(directory: Path, opened: list[AuditSpool]) -> None:
    directory.mkdir(mode=0o700)
    lines = [
        json.dumps({"spooled_at": 1.0, "event": {"event_id": "a"}}),
        "not json at all",
        json.dumps({"spooled_at": 1.0, "event": "not an object"}),
        json.dumps({"spooled_at": 1.0, "event": {"event_id": "b"}}),
    ]
    (directory / "0000000000000001.jsonl").write_text("\n".join(lines) + "\n")
    sink = Sink()
    spool = _open(opened, directory, sink)
    assert spool.drain(WAIT)
    assert sink.ids == ["a", "b"]
    assert spool.health().corrupt_lines == 2


def _keeping_bodies(sink: Sink, bodies: list[bytes | None]) -> Callable[[list[Any]], None]:
    """A shipper that keeps each batch's own JSON text, then hands the batch to ``sink``."""

    def ship(events: list[dict[str, Any]]) -> None:
        assert isinstance(events, SpoolBatch)
        bodies.append(events.json_body)
        sink(events)

    return ship


def test_a_batch_carries_its_events_own_json_text(
    directory: Path, opened: list[AuditSpool]
) -> None:
    """What the shipper posts without encoding again: ``{"events": [...]}`` from the
    spooled lines, equal as JSON to the events (non-ASCII and escapes included)."""
    bodies: list[bytes | None] = []
    sink = Sink()
    ship = _keeping_bodies(sink, bodies)

    spool = _open(opened, directory, ship, batch=4)
    tricky = {"event_id": "t", "s": 'é "q" \\ \n \u2028 \U0001f600', "n": [1, 2.5, None, True]}
    spool.append([*_events("a", 3), tricky, *_events("b", 2)])
    assert spool.drain(WAIT)
    assert all(body is not None for body in bodies)
    shipped = [e for body in bodies for e in json.loads(body or b"")["events"]]
    assert shipped == [e for batch in sink.batches for e in batch]
    assert shipped[3] == tricky


def test_a_line_not_as_the_spool_writes_it_is_shipped_by_value(
    directory: Path, opened: list[AuditSpool]
) -> None:
    """Other formatting, an extra member, a repeated "event" member: the batch has no
    JSON text of its own (the shipper encodes the events), and nothing is lost."""
    directory.mkdir(mode=0o700)
    lines = [
        '{"spooled_at":1.5,"event":{"event_id":"a"}}',
        '{"spooled_at": 1.5, "event": {"event_id": "b"}}',
        '{"spooled_at":1.5,"event":{"event_id":"c"},"extra":1}',
        '{"spooled_at":1.5,"event":{"event_id":"x"},"event":{"event_id":"d"}}',
        '{"spooled_at":1e400x,"event":{"event_id":"bad"}}',
    ]
    (directory / "0000000000000001.jsonl").write_text("\n".join(lines) + "\n")
    bodies: list[bytes | None] = []
    sink = Sink()
    ship = _keeping_bodies(sink, bodies)

    spool = _open(opened, directory, ship, batch=1)
    assert spool.drain(WAIT)
    assert sink.ids == ["a", "b", "c", "d"]
    assert spool.health().corrupt_lines == 1
    assert bodies[0] == b'{"events":[{"event_id":"a"}]}'
    assert bodies[1:] == [None, None, None]


def test_a_failed_write_is_refused_and_the_next_one_uses_a_new_segment(
    directory: Path, opened: list[AuditSpool], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Sink()
    sink.failing = ConnectionError("down")
    spool = _open(opened, directory, sink)
    spool.append(_events("before", 2))
    real_write = os.write
    fail_next = [True]

    def disk_full(fd: int, data: Any) -> int:
        if fail_next[0] and not stat.S_ISDIR(os.fstat(fd).st_mode):
            fail_next[0] = False
            real_write(fd, bytes(data)[:7])  # a torn partial line, then the error
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(ServiceUnavailable):
        spool.append(_events("refused", 2))
    spool.append(_events("after", 2))
    assert len(_segments(directory)) == 2
    monkeypatch.setattr(os, "write", real_write)
    sink.failing = None
    assert spool.drain(WAIT)
    assert sink.ids == ["before-0", "before-1", "after-0", "after-1"]


def test_health_counts_pending_events_and_their_age(
    directory: Path, opened: list[AuditSpool]
) -> None:
    now = [1_000.0]
    sink = Sink()
    sink.failing = ConnectionError("down")
    spool = _open(opened, directory, sink, clock=lambda: now[0])
    spool.append(_events("a", 3))
    now[0] = 1_030.0
    spool.append(_events("b", 2))
    now[0] = 1_100.0
    health = spool.health()
    assert health.pending_events == 5
    assert health.pending_bytes == health.disk_bytes > 0
    assert health.oldest_pending_age == pytest.approx(100.0)
    assert health.segments == 1
    assert not health.closed


def test_closed_spool_refuses_and_bad_events_are_refused(
    directory: Path, opened: list[AuditSpool]
) -> None:
    spool = _open(opened, directory, Sink())
    with pytest.raises(ValueError, match="JSON"):
        spool.append([{"value": float("nan")}])
    with pytest.raises(ValueError, match="JSON"):
        spool.append([{"value": object()}])
    with pytest.raises(ValueError, match="object"):
        spool.append(["not a mapping"])  # type: ignore[list-item]
    spool.append([])  # nothing to do
    spool.close()
    with pytest.raises(ServiceUnavailable):
        spool.append(_events("late", 1))
    assert spool.health().closed


def test_one_spool_per_directory(directory: Path, opened: list[AuditSpool]) -> None:
    first = _open(opened, directory, Sink())
    with pytest.raises(ServiceUnavailable, match="in use"):
        AuditSpool(directory, Sink())
    assert first.close()
    _open(opened, directory, Sink()).append(_events("next", 1))


# -- shipping on an event loop (ship_on_loop), as the gateways ship ---------------------


def test_lines_longer_than_a_read_chunk_are_shipped_whole(
    directory: Path, opened: list[AuditSpool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_SHIP_CHUNK", 64)  # every line spans several reads
    bodies: list[bytes | None] = []
    sink = Sink()
    spool = _open(opened, directory, _keeping_bodies(sink, bodies), batch=3)
    events = _events("long", 8, pad=300)
    spool.append(events)
    assert spool.drain(WAIT)
    assert [e for batch in sink.batches for e in batch] == events
    assert [len(batch) for batch in sink.batches] == [3, 3, 2]
    assert [e for body in bodies for e in json.loads(body or b"")["events"]] == events


def _run_loop(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


def test_the_loop_serves_other_tasks_while_a_batch_is_decoded(directory: Path) -> None:
    """A batch of 120 events decoded 4 lines at a time yields to the loop between the
    slices: a task counting its turns runs about 30 times before the batch is sent."""
    spool = AuditSpool(directory, None, batch=120)
    spool.append(_events("e", 120))
    turns = [0]
    seen: list[int] = []

    async def main() -> None:
        async def count() -> None:
            while True:
                turns[0] += 1
                await asyncio.sleep(0)

        async def ship(events: list[dict[str, Any]]) -> None:
            seen.append(turns[0])

        counter = asyncio.create_task(count())
        shipping = asyncio.create_task(spool.ship_on_loop(ship, step_lines=4))
        while not seen:
            await asyncio.sleep(0.001)
        shipping.cancel()
        counter.cancel()
        await asyncio.gather(shipping, counter, return_exceptions=True)

    try:
        _run_loop(main())
    finally:
        spool.close()
    assert seen
    assert seen[0] >= 25


def test_a_write_wakes_the_idle_loop_shipper(directory: Path) -> None:
    spool = AuditSpool(directory, None)
    shipped: list[float] = []

    async def main() -> float:
        async def ship(events: list[dict[str, Any]]) -> None:
            shipped.append(time.monotonic())

        task = asyncio.create_task(spool.ship_on_loop(ship, idle_poll=60))
        await asyncio.sleep(0.1)  # the shipper finds nothing and waits
        written = time.monotonic()
        await asyncio.to_thread(spool.append, _events("e", 1))
        while not shipped:
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return written

    try:
        written = _run_loop(main())
    finally:
        spool.close()
    assert shipped[0] - written < 5  # woken by the write, not by the 60 s poll


def test_stopping_the_loop_shipper_as_a_write_wakes_it_stops_it(directory: Path) -> None:
    """A gateway stops shipping (cancels the task) one loop turn after a write woke the
    idle shipper: the cancellation must end the task. With ``asyncio.wait_for`` on
    Python 3.11 the woken wait completing in that same turn swallowed it (CPython
    gh-86296), and the shipper went back to waiting, so the shutdown hung."""
    spool = AuditSpool(directory, None)

    async def main() -> bool:
        async def ship(events: list[dict[str, Any]]) -> None:
            pass

        task = asyncio.create_task(spool.ship_on_loop(ship, idle_poll=60))
        await asyncio.sleep(0.1)  # the shipper finds nothing and waits
        # Written from the loop's own thread: the writer thread has queued the wake-up
        # on the loop by the time append returns; the next turn runs it.
        spool.append(_events("e", 1))
        await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        return task in done and task.cancelled()

    try:
        stopped = _run_loop(main())
    finally:
        spool.close()
    assert stopped


def test_closing_ends_an_idle_loop_shipper(directory: Path) -> None:
    spool = AuditSpool(directory, None)

    async def main() -> None:
        async def ship(events: list[dict[str, Any]]) -> None:
            raise AssertionError("nothing to ship")

        task = asyncio.create_task(spool.ship_on_loop(ship, idle_poll=60))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(spool.close)
        await asyncio.wait_for(task, 5)  # returns: not cancelled, not the 60 s poll

    _run_loop(main())
    assert spool.health().closed


def test_one_shipper_per_spool(directory: Path) -> None:
    threaded = AuditSpool(directory, Sink())
    try:

        async def ship(events: list[dict[str, Any]]) -> None:
            return None

        with pytest.raises(RuntimeError, match="already"):
            _run_loop(threaded.ship_on_loop(ship))
    finally:
        threaded.close()
    spool = AuditSpool(directory, None)

    async def twice() -> None:
        first = asyncio.create_task(spool.ship_on_loop(ship))
        await asyncio.sleep(0.05)
        try:
            with pytest.raises(RuntimeError, match="already"):
                await spool.ship_on_loop(ship)
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)

    try:
        _run_loop(twice())
    finally:
        spool.close()


def test_a_batch_cut_off_by_cancellation_is_sent_again_after_a_restart(
    directory: Path,
) -> None:
    """The gateway stops shipping at shutdown, maybe mid-request: that batch was not
    recorded as shipped, so the next spool on the directory sends it (at least once)."""
    spool = AuditSpool(directory, None)
    spool.append(_events("e", 3))
    started = asyncio.Event()

    async def main() -> None:
        async def hanging(events: list[dict[str, Any]]) -> None:
            started.set()
            await asyncio.Event().wait()  # the control plane never answers

        task = asyncio.create_task(spool.ship_on_loop(hanging))
        await started.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    _run_loop(main())
    assert spool.health().pending_events == 3
    assert spool.close()
    sink = Sink()
    with AuditSpool(directory, sink, **FAST) as again:
        assert again.drain(WAIT)
    assert sink.ids == ["e-0", "e-1", "e-2"]


def test_failed_writes_to_new_segments_leave_no_empty_files_behind(
    directory: Path, opened: list[AuditSpool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk with the control plane away, each failed write abandons the
    segment it started; one that holds nothing acknowledged is deleted at once rather
    than waiting, sealed and empty, behind the older unshipped segment."""
    sink = Sink()
    sink.failing = ConnectionError("down")
    spool = _open(opened, directory, sink)
    spool.append(_events("before", 2))
    real_write = os.write
    failing = [True]

    def disk_full(fd: int, data: Any) -> int:
        if failing[0] and not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(ServiceUnavailable):
        spool.append(_events("first", 1))  # abandons the segment holding "before"
    for i in range(5):
        with pytest.raises(ServiceUnavailable):
            spool.append(_events(f"refused-{i}", 1))  # each in a new, empty segment
    assert len(_segments(directory)) == 1  # the one holding "before" only
    assert spool.health().segments == 1
    failing[0] = False
    spool.append(_events("after", 1))
    sink.failing = None
    assert spool.drain(WAIT)
    assert sink.ids == ["before-0", "before-1", "after-0"]


# -- body_only: lines not decoded unless the receiver refuses ---------------------------------


class StrictReceiver:
    """A control plane as ``_Shipper`` posts to it (``json_body`` when the batch has
    one, else the events encoded), strict: a body that is not JSON is
    refused whole (no event named), an event without an ``event_id`` or named
    ``refused`` by its index, as ingest names ``events[i]``. Records what it saw."""

    def __init__(self) -> None:
        self.sizes: list[int] = []  # len() of each batch handed over
        self.refusals = 0
        self.ids: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        body = events.json_body if isinstance(events, SpoolBatch) else None
        if body is None:  # what _Shipper posts then: the events encoded
            body = json.dumps({"events": events}).encode()
        with self.lock:
            self.sizes.append(len(events))
            try:
                got = json.loads(body)["events"]
            except ValueError:
                self.refusals += 1
                raise spool_module.Refused("ingest answered 400 (the batch)") from None
            for i, event in enumerate(got):
                if not isinstance(event.get("event_id"), str) or event["event_id"] == "refused":
                    self.refusals += 1
                    raise spool_module.Refused(f"ingest answered 422 (events.{i})", i)
            self.ids.extend(e["event_id"] for e in got)


def test_body_only_hands_a_batch_over_undecoded_with_its_json_text(
    directory: Path, opened: list[AuditSpool]
) -> None:
    """What the gateways' shipper posts is the lines' own text, as before; the events
    are not decoded for it (the list it gets is empty), and every one is counted."""
    receiver = StrictReceiver()
    spool = _open(opened, directory, receiver, batch=4, body_only=True)
    tricky = {"event_id": "t", "s": 'é "q" \\ \n \u2028 \U0001f600', "n": [1, 2.5, None, True]}
    spool.append([*_events("a", 3), tricky, *_events("b", 3)])
    assert spool.drain(WAIT)
    assert receiver.ids == ["a-0", "a-1", "a-2", "t", "b-0", "b-1", "b-2"]
    assert receiver.sizes == [0, 0]  # two batches (4 + 3), neither decoded
    assert spool.health().shipped_events == 7
    assert spool.health().corrupt_lines == 0


def test_body_only_a_corrupt_line_is_found_once_the_receiver_refuses_its_batch(
    directory: Path, opened: list[AuditSpool]
) -> None:
    """Lines in the spool's form that are not one event object: the receiver refuses
    the batch; the spool then decodes it, skips and counts those lines, sets nothing
    aside and sends the rest, in order."""
    directory.mkdir(mode=0o700)
    lines = [
        '{"spooled_at":1.5,"event":{"event_id":"a"}}',
        '{"spooled_at":1.5,"event":{"event_id":"x",}}',  # not JSON
        '{"spooled_at":1.5,"event":{"event_id":"b"}}',
        '{"spooled_at":1.5,"event":{"event_id":"y"},{"z":1}}',  # two objects
        '{"spooled_at":1.5,"event":{"event_id":"c"}}',
    ]
    (directory / "0000000000000001.jsonl").write_text("\n".join(lines) + "\n")
    receiver = StrictReceiver()
    spool = _open(opened, directory, receiver, body_only=True)
    assert spool.drain(WAIT)
    assert receiver.ids == ["a", "b", "c"]
    assert receiver.refusals == 1
    health = spool.health()
    assert (health.corrupt_lines, health.rejected_events, health.shipped_events) == (2, 0, 3)
    assert not (directory / spool_module.REJECTED_FILE).exists()


def test_body_only_an_event_refused_for_good_is_set_aside_as_before(
    directory: Path, opened: list[AuditSpool]
) -> None:
    """The receiver names an event of an undecoded batch: the spool decodes the batch,
    sets that event aside in rejected.jsonl and sends the others."""
    receiver = StrictReceiver()
    spool = _open(opened, directory, receiver, batch=10, body_only=True)
    events = [*_events("a", 2), {"event_id": "refused", "n": 1}, *_events("b", 2)]
    spool.append(events)
    assert spool.drain(WAIT)
    assert receiver.ids == ["a-0", "a-1", "b-0", "b-1"]
    health = spool.health()
    assert (health.rejected_events, health.shipped_events, health.corrupt_lines) == (1, 4, 0)
    kept = (directory / spool_module.REJECTED_FILE).read_text().splitlines()
    assert [json.loads(line)["event"] for line in kept] == [{"event_id": "refused", "n": 1}]
