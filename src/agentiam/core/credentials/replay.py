"""An in-memory, bounded cache of seen ``jti`` values for verifiers (RFC 9449 section
11.1: a resource server keeps proof ``jti`` values for as long as it would accept the
proof). The token endpoint uses the database-backed store instead, which works across
replicas (see ``ports.ReplayGuard``).

When the cache is full of unexpired entries it refuses new proofs rather than forget
old ones: it fails closed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["ReplayCache"]


class ReplayCache:
    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, int] = OrderedDict()  # key -> expiry, insertion order
        self._max = max_entries

    def first_use(self, key: str, *, expires: int, now: int) -> bool:
        """Record ``key``; True the first time, False on replay or when full."""
        with self._lock:
            while self._seen:
                oldest_key, oldest_expiry = next(iter(self._seen.items()))
                if oldest_expiry > now:
                    break
                del self._seen[oldest_key]
            if key in self._seen:
                return False
            if len(self._seen) >= self._max:
                return False
            self._seen[key] = expires
            return True

    def __len__(self) -> int:
        return len(self._seen)
