"""How late a gateway's event loop runs: the delay every call in flight waits out.

A gateway decides and forwards on one event loop. Whatever holds that loop (a long
computation on it, another thread holding the GIL, the process waiting for a CPU)
delays every call at once, so this lag is the floor of the gateway's tail latency.
:func:`watch_event_loop` measures it the usual way: a timer due every ``interval``
seconds, and each wake-up's delay past its due time is observed (Node.js's
``monitorEventLoopDelay`` works alike). The delays include the loop's own timer
resolution (1 ms under uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LOOP_PROBE_SECONDS", "watch_event_loop"]

LOOP_PROBE_SECONDS = 0.01
"""How often the probe is due: 100 wake-ups a second, a negligible cost."""


async def watch_event_loop(
    observe: Callable[[float], None], *, interval: float = LOOP_PROBE_SECONDS
) -> None:
    """Observe each probe's delay in seconds until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))
