"""Holding a long poll open until there is something new to answer.

The feeds enforcement points follow (``GET /v1/revocations``, ``GET
/v1/enforcement/bundle``) answer at once when the caller is behind, and otherwise hold
the request for up to ``wait`` seconds so a change reaches the caller as soon as it
happens, without a request per change interval. :func:`wait_until` is the one waiting
mechanism both use. A source that can signal its changes (``subscribe``) wakes the
wait from the thread that made the change, with no timer; a source that cannot is
re-checked every ``poll`` seconds. Either way the check itself is a memory read, and
the wait holds no worker thread: it is an ``await`` on the event loop.

When the process stops (:func:`drain`, called by ``agentiam serve`` as its server
begins to shut down), every held wait returns at once with what it has, so an
enforcement point's long poll gets its normal answer and the server stops within its
``shutdown_grace_seconds`` instead of being held for the poll's whole wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Protocol

import anyio

__all__ = ["Signals", "drain", "wait_until"]


class Signals(Protocol):
    """A source of change notifications: ``subscribe(wake)`` makes the source call
    ``wake()`` (from any thread) on each change, and returns the unsubscribe function."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]: ...


_draining = threading.Event()  # this process is stopping: nothing more is held
_held: set[Callable[[], None]] = set()  # the wakes of the waits held now
_held_lock = threading.Lock()


def drain() -> None:
    """This process is stopping: every held :func:`wait_until` returns now, and none
    waits from now on. Safe from any thread."""
    _draining.set()
    with _held_lock:
        wakes = list(_held)
    for wake in wakes:
        wake()


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
    if wait <= 0 or _draining.is_set() or ready():
        return ready()
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:  # on the notifying thread: hand over to the loop
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(woken.set)

    unsubscribe = changes.subscribe(wake) if changes is not None else None
    with _held_lock:
        _held.add(wake)
    try:
        deadline = loop.time() + wait
        while True:
            # Cleared before the check: a change that lands after it still wakes us.
            woken.clear()
            if ready():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0 or _draining.is_set():
                return False
            with anyio.move_on_after(remaining if poll is None else min(poll, remaining)):
                await woken.wait()
    finally:
        with _held_lock:
            _held.discard(wake)
        if unsubscribe is not None:
            unsubscribe()
