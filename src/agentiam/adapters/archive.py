"""A local directory for archived audit segments (see services/audit_retention.py).

Each archive is written to a temporary file of its own (mode 0600) in the directory,
fsynced, hard-linked into place (which never replaces an existing file) and the
directory fsynced, so a crash leaves either no archive or a whole one, never a partial
file under the final name, and a second pass can never overwrite an archive that a
checkpoint already names.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ArchiveConflict", "DirectoryArchive"]


class ArchiveConflict(Exception):
    """An archive of that name exists with other content."""


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
        # A name of its own per attempt: two passes never write the same temporary file.
        partial = self.directory / f".{name}.{secrets.token_hex(8)}.partial"
        digest = hashlib.sha256()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                for line in lines:
                    data = line.encode() + b"\n"
                    digest.update(data)
                    out.write(data)
                out.flush()
            os.fsync(fd)
            os.close(fd)
            fd = -1
            reference = f"{name} sha256:{digest.hexdigest()}"
            try:
                os.link(partial, final)  # never replaces an existing archive
            except FileExistsError:
                if _sha256(final) != digest.hexdigest():
                    raise ArchiveConflict(
                        f"{name} exists with other content; it is kept and nothing is pruned"
                    ) from None
            self._sync_directory()
            return reference
        finally:
            if fd >= 0:
                os.close(fd)
            partial.unlink(missing_ok=True)

    def _sync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
