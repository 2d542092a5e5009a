"""Durable writes to local files, shared by the adapters that write to disk (the
JSONL exporter, the gateway's audit spool and its secret store)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "replace_file", "write_all"]


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


def fsync_dir(directory: Path) -> None:
    """``fsync`` a directory, so that a file created, renamed or deleted in it stays
    so after a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) atomically: a temporary file in the
    same directory (``.<name>.<random>.tmp``, removed again on failure), fsync, rename,
    directory fsync. After a crash the file is either the old one or the new one."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, data)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)
