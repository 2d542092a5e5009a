"""A local directory for archived audit segments (see services/audit_retention.py).

Each archive is written to a temporary file (mode 0600) in the directory, fsynced,
renamed into place and the directory fsynced, so a crash leaves either no archive or
a whole one, never a partial file under the final name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DirectoryArchive"]

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class DirectoryArchive:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_absolute():
            raise ValueError("the audit archive directory must be an absolute path")

    def write(self, name: str, lines: Iterable[str]) -> str:
        if not name or not set(name) <= _NAME_OK or name.startswith("."):
            raise ValueError(f"bad archive name {name!r}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.directory / name
        partial = self.directory / f".{name}.partial"
        digest = hashlib.sha256()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                for line in lines:
                    data = line.encode() + b"\n"
                    digest.update(data)
                    out.write(data)
                out.flush()
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(partial, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return f"{name} sha256:{digest.hexdigest()}"
