"""Durability without a blocked thread, as the HTTP gateway's event loop uses it: the
spool's and group commit's ``submit`` (a future that completes at the fsync), the
enforcer's ``deferred`` block and ``Pending``, the shipper's linger, and a key set that
refreshes in the background instead of stalling the caller."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.unit.gateway_support import AGENT, GATEWAY, Parties, QuietSink
from tests.unit.test_gateway_link import Clock, Jwks

from agentiam.adapters.gateway.enforcer import Call, Pending
from agentiam.adapters.gateway.loop_watch import watch_event_loop
from agentiam.adapters.gateway.outcomes import OutcomeQueue
from agentiam.adapters.gateway.spool import AuditSpool, SpoolFull
from agentiam.adapters.verification import JwksCache
from agentiam.core.audit.events import TraceContext
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.policy.model import EntityRef
from agentiam.errors import OAuthError, ServiceUnavailable
from agentiam.services.audit_writer import GroupCommit

URL = GATEWAY + "/v1/invoices/7"
ALLOW = f'permit (principal == Agent::"{AGENT}", action == Action::"GET", resource);'
TRACE = TraceContext.new()
CALL = Call(
    action="GET",
    resource=EntityRef("Endpoint", "invoice-7"),
    detail=ApiCall(action="GET", url=URL),
    tool="invoices.read",
)


class Shipped:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self.batches.append(events)


def _wait_for(condition: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


# -- the spool ----------------------------------------------------------------------------


def test_submit_returns_before_the_fsync_and_completes_after_it(tmp_path: Path) -> None:
    shipped = Shipped()
    gate = threading.Event()
    with AuditSpool(tmp_path, shipped) as spool:
        original = spool._write_lines

        def slow(lines: list[bytes]) -> None:
            gate.wait(5)
            original(lines)

        spool._writer._write_batch = slow  # type: ignore[attr-defined]
        future = spool.submit([{"event_id": "e1"}])
        time.sleep(0.05)
        assert not future.done()  # the fsync has not happened: not acknowledged yet
        gate.set()
        future.result(timeout=5)
        _wait_for(lambda: [e["event_id"] for b in shipped.batches for e in b] == ["e1"])
        assert spool._reserved == 0


def _parked(spool: AuditSpool) -> bool:
    """The spool's writer thread waits for work (a quiet submit will not wake it)."""
    return len(spool._writer._not_empty._waiters) == 1  # type: ignore[attr-defined]


def test_a_quiet_submit_is_written_with_the_next_write_or_on_wake_or_close(
    tmp_path: Path,
) -> None:
    with AuditSpool(tmp_path, Shipped()) as spool:
        spool.submit([{"event_id": "e0"}]).result(timeout=5)  # the writer thread is up
        _wait_for(lambda: _parked(spool))
        quiet = spool.submit([{"event_id": "q1"}], wake=False)
        time.sleep(0.2)
        assert not quiet.done()  # no write was started for it alone
        spool.submit([{"event_id": "e1"}]).result(timeout=5)
        assert quiet.done()  # it went with that write
        assert quiet.exception() is None
        segment = sorted(tmp_path.glob("*.jsonl"))[-1].read_text()
        assert segment.index('"q1"') < segment.index('"e1"')  # in the order submitted

        _wait_for(lambda: _parked(spool))
        second = spool.submit([{"event_id": "q2"}], wake=False)
        time.sleep(0.1)
        assert not second.done()
        spool.wake()
        second.result(timeout=5)

        third = spool.submit([{"event_id": "q3"}], wake=False)
    third.result(timeout=5)  # closing writes everything queued


def test_submit_refuses_at_once_when_full_or_closed(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, lambda _events: None, max_bytes=300)
    spool.submit([{"event_id": "e1", "pad": "x" * 100}]).result(timeout=5)
    with pytest.raises(SpoolFull):
        spool.submit([{"event_id": "e2", "pad": "x" * 300}])
    spool.close()
    with pytest.raises(ServiceUnavailable):
        spool.submit([{"event_id": "e3"}])


def test_a_failed_write_fails_the_future_and_releases_the_reservation(tmp_path: Path) -> None:
    with AuditSpool(tmp_path, lambda _events: None) as spool:

        def broken(_lines: list[bytes]) -> None:
            raise OSError("disk gone")

        spool._writer._write_batch = broken  # type: ignore[attr-defined]
        future = spool.submit([{"event_id": "e1"}])
        with pytest.raises(ServiceUnavailable):
            future.result(timeout=5)
        assert spool._reserved == 0


def test_group_commit_submit_refuses_when_the_queue_is_full() -> None:
    gate = threading.Event()
    writer = GroupCommit[int](lambda _items: gate.wait(5), queue_limit=2, max_wait=0)
    first = writer.submit([1])  # taken by the writer, which blocks on the gate
    _wait_for(lambda: writer.stats.queue_depth == 0)
    writer.submit([2, 3])  # fills the queue
    with pytest.raises(ServiceUnavailable, match="overloaded"):
        writer.submit([4])
    gate.set()
    first.result(timeout=5)
    writer.close(5)
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        writer.submit([5])


def test_linger_sends_a_trickle_in_fewer_requests(tmp_path: Path) -> None:
    counts = {}
    for linger in (0.0, 0.3):
        shipped = Shipped()
        with AuditSpool(tmp_path / str(linger), shipped, linger=linger) as spool:
            for i in range(20):
                spool.append([{"event_id": f"e{i}"}])
                time.sleep(0.01)
            assert spool.drain(5)
        assert sum(len(b) for b in shipped.batches) == 20
        counts[linger] = len(shipped.batches)
    assert counts[0.3] <= 3 < counts[0.0]


# -- the enforcer -------------------------------------------------------------------------


class SlowSink:
    """A sink whose events become durable only when the test says so."""

    def __init__(self) -> None:
        self.futures: list[Future[None]] = []
        self.events: list[dict[str, Any]] = []

    def append(self, events: list[dict[str, Any]]) -> None:  # pragma: no cover - unused
        raise AssertionError("a deferred block must not block on append")

    def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]:
        self.events.extend(events)
        future: Future[None] = Future()
        self.futures.append(future)
        return future


def _parties(sink: Any) -> Parties:
    parties = Parties(ALLOW)
    parties.enforcer._sink = sink
    return parties


def test_a_deferred_decision_returns_with_its_event_pending() -> None:
    sink = SlowSink()
    parties = _parties(sink)
    with parties.enforcer.deferred() as pending:
        access = parties.enforcer.authenticate(
            **parties.headers("GET", URL), method="GET", url=URL, trace=TRACE
        )
        verdict = parties.enforcer.decide(access, CALL, trace=TRACE)
    assert verdict.allowed
    assert [e["type"] for e in sink.events] == ["authz.decision"]
    assert pending.futures == sink.futures

    async def durable() -> None:
        await pending.durable(timeout=0.2)

    with pytest.raises(ServiceUnavailable):
        asyncio.run(durable())  # not durable in time: the call must be refused
    assert not sink.futures[0].cancelled()  # giving up does not cancel the write
    sink.futures[0].set_result(None)
    asyncio.run(durable())
    pending.wait()


def test_a_deferred_refusal_is_collected_although_the_method_raises() -> None:
    sink = SlowSink()
    parties = _parties(sink)
    with pytest.raises(OAuthError), parties.enforcer.deferred() as pending:
        parties.enforcer.authenticate(authorization=[], dpop=[], method="GET", url=URL, trace=TRACE)
    assert [e["type"] for e in sink.events] == ["api.request.rejected"]
    sink.futures[0].set_exception(OSError("disk full"))
    with pytest.raises(ServiceUnavailable):
        pending.wait()


def test_outside_a_deferred_block_methods_wait_and_a_plain_sink_still_works() -> None:
    parties = Parties(ALLOW)  # its sink has no submit: append, as before
    with parties.enforcer.deferred() as pending:
        parties.enforcer.refuse(None, trace=TRACE, status=404, reason="no route")
    assert pending.futures == []
    assert parties.sink.types() == ["api.request.rejected"]
    parties.sink.broken = True
    with pytest.raises(ServiceUnavailable), parties.enforcer.deferred():
        parties.enforcer.refuse(None, trace=TRACE, status=404, reason="no route")


def test_pending_with_nothing_is_durable_at_once() -> None:
    asyncio.run(Pending().durable())
    Pending().wait()


# -- keys in the background ---------------------------------------------------------------


def test_a_background_key_set_never_makes_the_caller_wait() -> None:
    jwks, clock = Jwks(), Clock()
    cache = JwksCache(
        "https://iam.example/jwks",
        httpx.Client(transport=httpx.MockTransport(jwks)),
        max_age=30,
        min_refresh_interval=5,
        max_stale=300,
        background=True,
        monotonic=clock,
    )
    cache.refresh()
    clock.now += 31
    jwks.hold.clear()  # the refresh hangs
    started = time.monotonic()
    assert cache.get("k1") is not None
    assert cache.get("k1") is not None
    assert time.monotonic() - started < 0.5
    _wait_for(lambda: jwks.fetches == 2)
    jwks.hold.set()
    _wait_for(lambda: not cache._lock.locked())  # the refresh finished
    # An unknown kid is refused at once; a fetch goes on in the background.
    clock.now += 6
    assert cache.get("k2") is None
    _wait_for(lambda: jwks.fetches == 3)


# -- outcome events (adapters/gateway/outcomes.py) ------------------------------------------


def test_the_outcomes_of_one_loop_turn_are_queued_together_without_a_write() -> None:
    parties = _parties(sink := QuietSink())
    queue = OutcomeQueue(parties.enforcer, linger=60.0)

    def outcome(n: int) -> None:
        parties.enforcer._durable([{"type": "tool.call", "n": n}])

    async def run() -> None:
        for n in range(3):
            queue.record(lambda n=n: outcome(n))
        assert sink.submits == []  # nothing before the turn ends
        await asyncio.sleep(0)
        assert sink.submits == [(["tool.call"] * 3, False)]  # one hand-over, no write
        assert sink.wakes == 0
        queue.record(lambda: outcome(3))
        queue.flush()  # as at shutdown: queued and written now
        assert sink.submits[-1] == (["tool.call"], False)
        assert sink.wakes == 1

    asyncio.run(run())


def test_the_timer_stays_unless_a_write_was_started_in_the_same_turn() -> None:
    parties = _parties(sink := QuietSink())
    queue = OutcomeQueue(parties.enforcer, linger=0.05)

    def outcome() -> None:
        parties.enforcer._durable([{"type": "tool.call"}])

    async def run() -> None:
        queue.record(outcome)
        await asyncio.sleep(0)  # queued quietly; the timer is armed
        queue.taken_by([])  # a step that wrote nothing: nothing takes the outcome along
        await asyncio.sleep(0.3)
        assert sink.wakes == 1  # so the timer still started the write
        queue.record(outcome)
        await asyncio.sleep(0)
        queue.taken_by([object()])  # a decision's write started: it takes the outcome
        await asyncio.sleep(0.3)
        assert sink.wakes == 1  # no second write for it

    asyncio.run(run())


def test_outcomes_the_spool_refuses_are_logged_by_id_and_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Refusing(QuietSink):
        def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]:
            raise ServiceUnavailable("the audit spool is full")

    parties = _parties(Refusing())
    queue = OutcomeQueue(parties.enforcer, linger=60.0)
    event = {"type": "tool.call", "event_id": "evt_1", "trace": {"trace_id": "ab" * 16}}

    async def run() -> None:
        queue.record(lambda: parties.enforcer._durable([event]))
        await asyncio.sleep(0)

    asyncio.run(run())
    assert "1 outcome events could not be recorded durably" in caplog.text
    assert "evt_1" in caplog.text
    assert "ab" * 16 in caplog.text
    assert queue.lost == 1


def test_outcomes_whose_write_fails_later_are_counted_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spool took them, then the write failed on its writer thread."""
    futures: list[Future[None]] = []

    class Failing(QuietSink):
        def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]:
            super().submit(events, wake=wake)
            futures.append(Future())
            return futures[-1]

    parties = _parties(Failing())
    queue = OutcomeQueue(parties.enforcer, linger=60.0)

    async def run() -> None:
        for n in range(2):
            queue.record(lambda n=n: parties.enforcer._durable([{"type": "tool.call", "n": n}]))
        await asyncio.sleep(0)

    asyncio.run(run())
    assert queue.lost == 0  # handed over; not written yet
    writer = threading.Thread(target=futures[0].set_exception, args=(OSError("disk full"),))
    writer.start()
    writer.join()
    assert queue.lost == 2
    assert "2 outcome events could not be recorded durably" in caplog.text


def test_a_blocked_event_loop_is_seen_as_lag() -> None:
    delays: list[float] = []

    async def run() -> None:
        watch = asyncio.create_task(watch_event_loop(delays.append, interval=0.01))
        await asyncio.sleep(0.1)  # the probe runs on time
        time.sleep(0.08)  # the stall the probe must see
        await asyncio.sleep(0.03)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch

    asyncio.run(run())
    assert len(delays) >= 4
    assert max(delays) >= 0.06  # the stall, less the probe's 10 ms interval at most
    assert sorted(delays)[len(delays) // 2] < 0.04  # most wake-ups were on time
