"""The JSON Lines file exporter: one line per trail entry in the configured ``format``
(default ``native``: ``{"event": {...}, "log_index": n}`` with the event exactly as
stored, so each line still verifies against the trail; see
:mod:`agentiam.core.audit.formats`), appended and fsynced per batch, rotated by size.

A write that fails is cut back to where it started. A process killed in the middle of
a write cannot do that, and leaves a partial last line; so before each batch the file
is checked, and a last line without its newline is cut off (a warning says how many
bytes). Its batch's cursor never moved, so that batch is delivered again whole."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentiam.adapters.exporters._config import absolute_path, check_keys, integer, wire_format
from agentiam.adapters.files import write_all
from agentiam.core.audit.formats import Formatter, native

__all__ = ["SETTINGS", "JsonlFileExporter", "from_config"]

SETTINGS = frozenset({"path", "format", "max_bytes", "keep"})

logger = logging.getLogger(__name__)

_FILE_MODE = 0o600
_DIR_MODE = 0o700
_TAIL_CHUNK = 64 * 1024  # read backwards in steps of this to find the last newline


class JsonlFileExporter:
    kind = "jsonl"

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        max_bytes: int,
        keep: int,
        formatter: Formatter = native,
    ) -> None:
        """``path`` is the live file; when it reaches ``max_bytes`` it is renamed to
        ``path.1`` (the older ones shift to ``.2`` … ``.keep``; the oldest is removed).
        Each entry is written as ``formatter(log_index, event)`` and a newline."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._name = name
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.formatter = formatter

    @property
    def name(self) -> str:
        return self._name

    def deliver(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> None:
        if not batch:
            return
        data = b"".join(self.formatter(index, event).encode() + b"\n" for index, event in batch)
        self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._drop_partial_line()  # before a rotation, so no rotated file keeps one
        if self._size() > 0 and self._size() + len(data) > self.max_bytes:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # an existing file made by someone else too
            start = os.fstat(fd).st_size
            try:
                write_all(fd, data)
            except BaseException:
                # no half line left behind: the batch is written again on retry
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def _drop_partial_line(self) -> None:
        """Cut the live file back to just after its last newline when it does not end
        with one: the rest is a line a killed process was writing, and appending to it
        would join the next entry onto it."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                return
            keep, end = 0, size
            while end > 0:
                start = max(end - _TAIL_CHUNK, 0)
                newline = os.pread(fd, end - start, start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        logger.warning(
            "jsonl exporter %s: %s ended in a partial line (a write cut short); dropped "
            "its %d bytes, the batch they belong to is delivered again",
            self._name,
            self.path,
            size - keep,
        )

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _rotate(self) -> None:
        self._rotated(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            older = self._rotated(n)
            if older.exists():
                older.rename(self._rotated(n + 1))
        self.path.rename(self._rotated(1))
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the renames survive a crash
        finally:
            os.close(dir_fd)


def from_config(name: str, entry: Mapping[str, Any]) -> JsonlFileExporter:
    """A :class:`JsonlFileExporter` from its entry in the exporters file (keys:
    :data:`SETTINGS`); ``ValueError`` says which value is wrong and why."""
    check_keys(entry, SETTINGS, "jsonl")
    path = absolute_path(entry.get("path"), "path")
    max_bytes = integer(entry, "max_bytes", 100 * 1024 * 1024, 1024, 2**40)
    keep = integer(entry, "keep", 10, 1, 1000)
    _, render = wire_format(entry)
    return JsonlFileExporter(name, path, max_bytes=max_bytes, keep=keep, formatter=render)
