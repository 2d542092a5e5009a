"""The gateways' summaries of anonymous refusals past the audit budget.

Both gateways give their :class:`~agentiam.adapters.gateway.enforcer.Enforcer` a
budget of refusals naming nobody that get an event of their own
(:class:`~agentiam.core.enforcement.anonymous.AnonymousRefusals`, configured by
``audit.anonymous_refusals``). :class:`RefusalSummaries` writes what the budget
counted instead: every ``summary_seconds``, and once more when the gateway stops, one
``api.request.rejected.summary`` event per peer with refusals pending
(:meth:`Enforcer.record_refusal_summary`).

They go through the spool the way the calls' ``tool.call`` outcomes do
(:class:`~agentiam.adapters.gateway.outcomes.OutcomeQueue`, a queue of their own): no
caller waits on them, so a write that fails is logged with the events' ids and counted
(:attr:`RefusalSummaries.lost`, the ``agentiam_gateway_refusal_summaries_lost``
metric), and the refusals they counted are logged too, by number only.

:func:`client_host` is the budget's key as the transports read it: the address of the
connection's peer as the server saw it (ASGI ``scope["client"]``), never a header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from agentiam.adapters.gateway.enforcer import Enforcer
from agentiam.adapters.gateway.outcomes import OutcomeQueue
from agentiam.core.enforcement.anonymous import AnonymousRefusals, RefusalSummary

__all__ = ["RefusalSummaries", "client_host"]

log = logging.getLogger("agentiam.gateway")


def client_host(client: Any) -> str | None:
    """The host of an ASGI ``scope["client"]`` (``(host, port)`` or None)."""
    if isinstance(client, list | tuple) and client and isinstance(client[0], str):
        return client[0]
    return None


class RefusalSummaries:
    """Writes the budget's pending summaries; event loop thread only."""

    def __init__(self, enforcer: Enforcer, budget: AnonymousRefusals) -> None:
        self._enforcer = enforcer
        self.budget = budget
        self._queue = OutcomeQueue(enforcer, what="refusal summary")
        self._task: asyncio.Task[None] | None = None

    @property
    def lost(self) -> int:
        """Summary events that could not be made durable since start (each logged)."""
        return self._queue.lost

    def start(self) -> None:
        """Write the summaries every ``summary_seconds`` from a task on the running
        loop, until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._every(), name="refusal-summaries")

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.budget.limits.summary_seconds)
            try:
                self.write()
            except Exception:  # not expected: the next round tries again
                log.exception("the refusal summaries could not be written")

    def write(self) -> int:
        """Queue one event per pending summary and start their write; the number of
        refusals they count."""
        summaries = self.budget.drain()
        for summary in summaries:
            self._queue.record(self._recorder(summary))
        if summaries:
            self._queue.flush()
            counted = sum(s.count for s in summaries)
            log.warning(
                "%d refusals of requests naming nobody past the audit budget, from %d peers, "
                "counted in summary events",
                counted,
                len(summaries),
            )
            return counted
        return 0

    def _recorder(self, summary: RefusalSummary) -> Any:
        return lambda: self._enforcer.record_refusal_summary(summary)

    async def stop(self) -> None:
        """Stop the timer and write what is pending now (the gateway is stopping)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.write()
