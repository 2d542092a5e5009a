"""A gateway's ``tool.call`` outcome events, written without holding the answer.

A call's decision event must be durable before the call goes out (nothing unlogged is
allowed). Its outcome event is different: the call was allowed and answered already,
and nothing waits on the record. :class:`OutcomeQueue` therefore keeps outcomes off
the path of every call:

- the outcomes recorded in one turn of the event loop are handed to the spool
  together at the end of that turn (one encoding pass, one queue entry);
- they are queued without starting a write for them alone
  (``AuditSpool.submit(..., wake=False)``): the next call's decision, whose write the
  event loop awaits anyway, takes them along, so both share one write and one fsync;
- when no call comes, a timer starts the write after at most ``linger`` seconds, and
  :meth:`OutcomeQueue.flush` (at shutdown) starts it at once. Closing the spool
  writes everything queued.

A failure to make them durable is logged with the events' ids and traces, and counted
(:attr:`OutcomeQueue.lost`, both gateways' ``agentiam_gateway_outcomes_lost``
metric): there is no caller left to refuse. The price is a window in which a crash
of the gateway loses outcome events of calls already answered (their decisions are
on disk): about ``linger`` seconds after the loop turn, plus any delay of the event
loop, plus up to two writes (one in progress, then theirs).

The gateways' summaries of anonymous refusals (``adapters/gateway/refusal_summaries.py``)
take the same path, in a queue of their own (``what`` names them in the log).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from agentiam.adapters.gateway.enforcer import Enforcer
from agentiam.errors import ServiceUnavailable

__all__ = ["OUTCOME_LINGER", "OutcomeQueue"]

log = logging.getLogger("agentiam.gateway")

OUTCOME_LINGER = 0.005
"""Seconds an outcome waits in the spool's queue for the next call's write."""


class OutcomeQueue:
    """Outcome events of one gateway's calls; event loop thread only."""

    def __init__(
        self, enforcer: Enforcer, *, linger: float = OUTCOME_LINGER, what: str = "outcome"
    ) -> None:
        """``what`` the events are, for the log line of a loss."""
        self._enforcer = enforcer
        self._what = what
        self._linger = linger
        self._events: list[dict[str, Any]] = []  # recorded in this loop turn
        self._timer: asyncio.TimerHandle | None = None
        self._lost = 0
        self._lost_lock = threading.Lock()  # a failed write is reported on the writer thread

    @property
    def lost(self) -> int:
        """Outcome events that could not be made durable since start (each logged)."""
        with self._lost_lock:
            return self._lost

    def record(self, write: Callable[[], None]) -> None:
        """Run ``write`` (an :class:`Enforcer` method that records an outcome) with its
        events collected, and queue them at the end of this loop turn."""
        with self._enforcer.held() as events:
            write()
        if not self._events:
            asyncio.get_running_loop().call_soon(self._queue)
        self._events.extend(events)

    def taken_by(self, writes: Sequence[object]) -> None:
        """Call right after handing ``writes`` to the sink, in the same loop turn. If
        there is one, it starts a write that takes every queued outcome along, so the
        timer is not needed; if the step wrote nothing, the timer stays."""
        if writes:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        """Queue what this turn recorded and start the write now."""
        self._queue()
        if self._timer is not None:
            self._cancel_timer()
            self._enforcer.flush()

    def _queue(self) -> None:
        events, self._events = self._events, []
        if not events:
            return
        try:
            future = self._enforcer.write_held(events)
        except ServiceUnavailable:  # the spool refused them at once (full, closed)
            self._lose(events)
            return
        if future is not None:
            future.add_done_callback(lambda done: self._lose(events) if done.exception() else None)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self.flush)

    def _lose(self, events: list[dict[str, Any]]) -> None:
        """Count what was lost, and name it in the log: the count and the first
        events' ids and traces."""
        with self._lost_lock:
            self._lost += len(events)
        named = ", ".join(
            f"{e.get('event_id')} (trace {(e.get('trace') or {}).get('trace_id')})"
            for e in events[:5]
        )
        more = f" and {len(events) - 5} more" if len(events) > 5 else ""
        log.error(
            "%d %s events could not be recorded durably: %s%s", len(events), self._what, named, more
        )
