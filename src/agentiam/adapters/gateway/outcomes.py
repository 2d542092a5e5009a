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

A failure to make them durable is logged: there is no caller left to refuse. The
price is a window of at most ``linger`` seconds (plus the fsync) in which a crash of
the gateway loses outcome events of calls already answered; their decisions are on
disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from agentiam.adapters.gateway.enforcer import Enforcer
from agentiam.errors import ServiceUnavailable

__all__ = ["OUTCOME_LINGER", "OutcomeQueue"]

log = logging.getLogger("agentiam.gateway")

OUTCOME_LINGER = 0.005
"""Seconds an outcome waits in the spool's queue for the next call's write."""


class OutcomeQueue:
    """Outcome events of one gateway's calls; event loop thread only."""

    def __init__(self, enforcer: Enforcer, *, linger: float = OUTCOME_LINGER) -> None:
        self._enforcer = enforcer
        self._linger = linger
        self._events: list[dict[str, Any]] = []  # recorded in this loop turn
        self._timer: asyncio.TimerHandle | None = None

    def record(self, write: Callable[[], None]) -> None:
        """Run ``write`` (an :class:`Enforcer` method that records an outcome) with its
        events collected, and queue them at the end of this loop turn."""
        with self._enforcer.held() as events:
            write()
        if not self._events:
            asyncio.get_running_loop().call_soon(self._queue)
        self._events.extend(events)

    def taken(self) -> None:
        """A write was just started (a decision's): it takes the queued outcomes along,
        so the timer is not needed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        """Queue what this turn recorded and start the write now."""
        self._queue()
        if self._timer is not None:
            self.taken()
            self._enforcer.flush()

    def _queue(self) -> None:
        events, self._events = self._events, []
        if not events:
            return
        try:
            future = self._enforcer.write_held(events)
        except ServiceUnavailable:  # the spool refused them at once (full, closed)
            log.error("the outcomes of %d calls could not be recorded durably", len(events))
            return
        if future is not None:
            future.add_done_callback(_log_failure)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self.flush)


def _log_failure(future: Future[None]) -> None:
    if future.exception() is not None:
        log.error("outcomes of calls could not be recorded durably")
