"""Durable writes to local files, shared by the adapters that write to disk (the
JSONL exporter, the gateway's audit spool and its secret store)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "remove_stale_temps", "replace_file", "write_all"]

_TEMP_SUFFIX = ".tmp"
# What tempfile.mkstemp puts between prefix and suffix: letters, digits, "_" (no ".",
# so another file's temporary file, ".<name>.<more>.<random>.tmp", never matches).
_TEMP_RANDOM = r"[A-Za-z0-9_]{1,32}"


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
    fd, temp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
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


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: Path) -> int:
    """Remove the temporary files :func:`replace_file` left beside ``path`` when the
    process writing it was killed between creating and renaming one (a full copy of
    a version of the file); how many. Only for a caller that holds the lock every
    writer of ``path`` takes, so no temporary file is another writer's in flight.
    Errors (one removed meanwhile, a directory that does not list) are ignored: the
    next write tries again."""
    pattern = re.compile(re.escape(_temp_prefix(path)) + _TEMP_RANDOM + re.escape(_TEMP_SUFFIX))
    removed = 0
    with contextlib.suppress(OSError), os.scandir(path.parent) as listing:
        for entry in listing:
            if pattern.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed
