"""Durable writes to local files, shared by the adapters that append to disk (the
JSONL exporter, the gateway's audit spool)."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes, *, sync: bool = True) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer), then
    ``fsync`` it unless ``sync`` is False. Raises OSError as the system does; the
    caller decides what a partial write means for its file."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    if sync:
        os.fsync(fd)
