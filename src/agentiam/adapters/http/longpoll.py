"""Holding a long poll open until there is something new to answer.

The feeds enforcement points follow (``GET /v1/revocations``, ``GET
/v1/enforcement/bundle``) answer at once when the caller is behind, and otherwise hold
the request for up to ``wait`` seconds so a change reaches the caller as soon as it
happens, without a request per change interval. :func:`wait_until` is the one waiting
mechanism both use. A source that can signal its changes (``subscribe``) wakes the
wait from the thread that made the change, with no timer; a source that cannot is
re-checked every ``poll`` seconds. Either way the check itself is a memory read, and
the wait holds no worker thread: it is an ``await`` on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

import anyio

__all__ = ["Signals", "wait_until"]


class Signals(Protocol):
    """A source of change notifications: ``subscribe(wake)`` makes the source call
    ``wake()`` (from any thread) on each change, and returns the unsubscribe function."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]: ...


async def wait_until(
    ready: Callable[[], bool],
    *,
    wait: float,
    changes: Signals | None = None,
    poll: float | None = None,
) -> bool:
    """Return once ``ready()`` holds or ``wait`` seconds have passed; the result is
    ``ready()``'s last value. With ``changes`` each notification re-checks at once;
    with ``poll`` (for a source without notifications) the check repeats every
    ``poll`` seconds. ``ready`` must be cheap: it runs on the event loop."""
    if wait <= 0 or ready():
        return ready()
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:  # on the notifying thread: hand over to the loop
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(woken.set)

    unsubscribe = changes.subscribe(wake) if changes is not None else None
    try:
        deadline = loop.time() + wait
        while True:
            # Cleared before the check: a change that lands after it still wakes us.
            woken.clear()
            if ready():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with anyio.move_on_after(remaining if poll is None else min(poll, remaining)):
                await woken.wait()
    finally:
        if unsubscribe is not None:
            unsubscribe()
