"""Garbage collection in the long-running processes (control plane, gateways).

Once a server has started, most objects it holds live as long as it does: modules,
the policy set, compiled routes, key sets, the app. CPython's full (generation 2)
collection walks every tracked object each time it runs, so those hundreds of
thousands of objects make each full collection a pause of tens of milliseconds, which
every request in flight then waits out: the tail of a latency distribution. After
start-up, :func:`settle_heap` collects once and moves what survives to the permanent
generation (:func:`gc.freeze`), which collections skip; what requests allocate later
is collected as before (https://docs.python.org/3/library/gc.html#gc.freeze)."""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Collect, then leave everything alive now out of later collections."""
    gc.collect()
    gc.freeze()
