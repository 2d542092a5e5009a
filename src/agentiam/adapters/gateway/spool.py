"""A durable local audit buffer for an enforcement point.

A gateway must never allow a call whose audit event is not durable, and must not lose
events while the control plane is unreachable. :class:`AuditSpool` is the buffer
between the two: the gateway appends each call's events to local disk *before* it
lets the call through, and a shipper thread forwards them to the control plane
(``POST /v1/audit/ingest``, idempotent on ``event_id``) whenever it is reachable.

Guarantees:

- **Durable before acknowledged.** :meth:`AuditSpool.append` returns only once its
  events are written and fsynced (``fsync(2)``) to a segment file whose directory
  entry is fsynced too. Concurrent callers share one write and one fsync (group
  commit: :class:`~agentiam.services.audit_writer.GroupCommit`, the batching the
  control plane uses for its database). A call's events are written together and in
  order.
- **Refuse, never drop.** ``append`` raises :class:`~agentiam.errors.ServiceUnavailable`
  (the gateway answers 503) when the spool is full (:class:`SpoolFull`: its segments
  would exceed ``max_bytes``), closed, overloaded, or the write or fsync fails. An
  event is never silently discarded. (As with the database writer, the guarantee is
  one-sided: a refused call's events may still reach disk, and be shipped.) Events
  submitted with ``wake=False`` are for outcomes nothing waits on: a refusal or failed
  write of those has no call left to refuse, and their submitter logs and counts it
  (:mod:`agentiam.adapters.gateway.outcomes`).
- **Ordered, at least once.** Events are shipped in the order they were spooled, in
  batches of at most ``batch`` events through ``ship(events)`` (on the spool's own
  shipper thread) or ``await ship(events)`` (:meth:`AuditSpool.ship_on_loop`, on the
  owner's event loop; see below); a batch that fails is
  retried (the same batch, first) after 1 s, then 2, 4, ... up to 60 s. Progress is
  recorded in a per-segment offset file after each shipped batch, so a restart
  re-sends at most the batch in flight (and, after a power loss, possibly a few more):
  the receiver must be idempotent on ``event_id``. A batch the receiver refuses for
  what it holds (``ship`` raises :class:`Refused`) is not retried as it is: the
  refused event is set aside in :data:`REJECTED_FILE` (kept, counted, logged) and the
  others are sent without it, so one event never holds the rest back. Events are
  fitted to the control plane's ingest limits before they are spooled
  (:func:`~agentiam.core.audit.ingest_limits.fit_for_ingest`), so that is rare.
- **The set-aside file is bounded, and fails closed.** :data:`REJECTED_FILE` may
  hold at most ``rejected_max_bytes`` (its own bound, apart from ``max_bytes``: the
  events it keeps are not waiting for the control plane to come back, and must not
  eat the buffer sized for an outage). Its size is counted when the spool opens. An
  event that would not fit is not set aside, nor dropped: it stays in its segment
  (shipping retries it, with backoff), and from then on, as once the file reaches its
  bound, :meth:`AuditSpool.append` refuses every call with :class:`SpoolFull` (503),
  naming the file. Nothing in the file is ever overwritten or deleted by the spool;
  an operator sends its events again, or discards them deliberately (and audited),
  with :class:`RejectedFile` (``agentiam gateway spool rejected``, or ``agentiam
  guard spool rejected`` for an in-process guard's spool), while no gateway or guard
  holds the directory, and restarts it. The refusal's hint says how
  (``rejected_hint``: a guard names its own command).
- **Crash safety.** After a crash (SIGKILL, power loss) the last line of a segment may
  be torn: it was never acknowledged, so recovery cuts it off. Everything acknowledged
  is shipped after the restart.

Layout of ``directory`` (mode 0700): segment files ``<seq>.jsonl`` (mode 0600, JSON
Lines, each line ``{"spooled_at": <unix seconds>, "event": {...}}``), rotated once
they reach ``segment_bytes``; ``<seq>.offset`` holds the byte offset shipped so far
(written atomically: temp file, fsync, rename). A segment is deleted once all its
events are shipped and a newer segment exists. Each process starts a new segment;
older ones are shipped and then deleted. ``.lock`` is held (``flock``) by the one spool
using the directory; a second one, in this process or another, is refused, and so is
an operator's :class:`RejectedFile` command while a spool holds it (and the other way
round). :data:`REJECTED_FILE` (mode 0600) holds one line per event set aside:
``{"rejected_at": <unix seconds>, "reason": "...", "event": {...}}``;
:data:`DISCARDED_FILE` counts the events an operator discarded from it.

**Shipping on an event loop.** A gateway answers calls on one asyncio loop, and a
shipper thread doing Python work (decoding lines, an HTTP request) competes with that
loop and with the spool's writer thread for the GIL: while it holds it, a call waits,
up to the interpreter's switch interval (5 ms) at a time (docs/gateway.md, Performance,
has what this was measured to change). So a gateway opens its
spool with ``ship=None`` and runs :meth:`AuditSpool.ship_on_loop` as a task: the batch
is read in a worker thread (file I/O, GIL released), decoded on the loop in slices of
``step_lines`` lines between calls, sent with an async client, and its offset fsynced
in a worker thread. The guarantees above are the same in both modes.

Not done: the spool does not deduplicate (the ingest endpoint does); a line that is
not valid JSON in the middle of a segment (disk corruption, never written by this
code) is skipped, logged and counted (``corrupt_lines``): with ``body_only`` (the
gateways' and the guard's shippers) lines are not decoded, only checked for the spool's
own form, so such a line is found once the receiver refuses the batch holding it (a
line corrupted into two complete events would be received as two); ``ship`` must bound its own
time (the shipper waits for it); opening a spool reads every segment once to count
its events (about a second per GiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentiam.errors import Forbidden, ServiceUnavailable

try:  # POSIX: one spool per directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
from agentiam.adapters.files import fsync_dir as _fsync_dir
from agentiam.adapters.files import replace_file, write_all
from agentiam.core.audit.ingest_limits import fit_for_ingest
from agentiam.services.audit_export import redact
from agentiam.services.audit_writer import GroupCommit

__all__ = [
    "DISCARDED_FILE",
    "REJECTED_FILE",
    "REJECTED_HINT",
    "AsyncShip",
    "AuditSpool",
    "DiscardRecord",
    "DiscardSummary",
    "Refused",
    "RejectedEntry",
    "RejectedFile",
    "RejectedFileFull",
    "ResendResult",
    "Ship",
    "SpoolBatch",
    "SpoolBusy",
    "SpoolFull",
    "SpoolHealth",
    "next_backoff",
]

log = logging.getLogger("agentiam.gateway.spool")

Ship = Callable[[list[dict[str, Any]]], None]
"""Sends one batch of events, in order; raises if they were not all accepted
(:class:`Refused` when sending them again cannot succeed)."""

REJECTED_FILE = "rejected.jsonl"
"""Where, in the spool's directory, events the receiver refused for good are kept."""

DISCARDED_FILE = "rejected.discarded.json"
"""In the spool's directory: how many events an operator discarded from
:data:`REJECTED_FILE` (:meth:`RejectedFile.discard`), kept across restarts."""

DEFAULT_REJECTED_MAX_BYTES = 64 << 20
"""The default bound of :data:`REJECTED_FILE` (``spool.rejected_max_bytes``)."""


class Refused(Exception):
    """Raised by a ship function: the receiver refused the batch for what it holds
    (its events, not its own state), so sending the same batch again cannot succeed.
    ``index`` is the event it named, when it named one. The spool then sends the
    rest without it and keeps it in :data:`REJECTED_FILE`."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


AsyncShip = Callable[[list[dict[str, Any]]], Awaitable[None]]
"""The same, as a coroutine function (:meth:`AuditSpool.ship_on_loop`)."""

_SEGMENT = re.compile(r"^(\d{16})\.jsonl$")
_OFFSET = re.compile(r"^(\d{16})\.offset$")
_HINT = "Check the gateway's audit spool directory (disk space, permissions)."
REJECTED_HINT = (
    f"{REJECTED_FILE}, in the spool directory, is full. Fix why the control plane refused "
    "its events (the gateway key's binding, the control plane's version), stop the gateway, "
    "run 'agentiam gateway spool rejected resend --config FILE' (or discard), then start it."
)
_READ_CHUNK = 1 << 20  # recovery reads segments in chunks of this size
_SHIP_CHUNK = 256 << 10  # the shipper reads a batch's lines in chunks of this size
_BATCH_BYTES = 4 << 20  # a shipped batch is cut before this many bytes (one line at least)
_IDLE_POLL = 1.0  # seconds the shipper sleeps when idle (it is woken on every commit)
# A line as _encode writes it, up to the event: {"spooled_at":<JSON number>,"event":
_LINE_HEAD = re.compile(
    rb'\{"spooled_at":-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?,"event":'
)
_EVENT_DECODER = json.JSONDecoder()


class SpoolBatch(list[dict[str, Any]]):
    """The events of one shipped batch (a list, in spool order) and, when every line
    was as the spool writes it, ``json_body``: ``{"events": [...]}`` as JSON built from
    the lines' own event text, so a shipper need not encode the events again.

    For a shipper that reads only ``json_body`` (``body_only``, see
    :class:`AuditSpool`), a batch with ``json_body`` comes with its events not
    decoded: the list is empty. The spool decodes them only if the receiver refuses
    the batch (it then needs them to find the refused one)."""

    json_body: bytes | None = None


def _line_text(line: bytes) -> bytes | None:
    """The event's JSON text within ``line`` when the line has the form
    :meth:`AuditSpool._encode` writes (``{"spooled_at":<number>,"event":`` … ``}``
    and a newline), else None. Not decoded: :func:`_line_event` proves it is one
    object."""
    head = _LINE_HEAD.match(line)
    if head is not None and line.endswith(b"}\n"):
        return line[head.end() : -2]
    return None


def _line_event(line: bytes) -> tuple[dict[str, Any], bytes | None]:
    """The event of one spool line, and its JSON text within the line when the line
    is exactly ``{"spooled_at":<number>,"event":<object>}`` (what :meth:`AuditSpool.
    _encode` writes): then decoding the event from its first byte must end just before
    the closing ``}``, which proves the text is that one object. Any other line is
    decoded whole. Raises ValueError, KeyError or TypeError for a corrupt line."""
    text = _line_text(line)
    if text is not None:
        whole = line.decode("utf-8")  # the head is ASCII: byte and character offsets agree
        start = len(line) - len(text) - 2
        event, end = _EVENT_DECODER.raw_decode(whole, start)
        if end == len(whole) - 2 and isinstance(event, dict):
            return event, text
    record = json.loads(line)
    event = record["event"]
    if not isinstance(event, dict):
        raise TypeError("event is not an object")
    return event, None


class SpoolFull(ServiceUnavailable):
    """The spool holds ``max_bytes`` of events not yet shipped, nothing more is taken
    until the control plane accepts some; or :data:`REJECTED_FILE` reached its bound,
    nothing more is taken until an operator empties it (see the module docstring)."""

    code = "audit-spool-full"
    title = "Audit spool full"


class SpoolBusy(ServiceUnavailable):
    """The spool directory's lock is held: by a gateway's spool, or by an operator's
    :class:`RejectedFile` command."""

    code = "audit-spool-busy"
    title = "Audit spool in use"


class RejectedFileFull(Exception):
    """Setting an event aside would take :data:`REJECTED_FILE` past its bound: the
    shipper keeps the event in its segment and retries (its message becomes the
    spool's ``last_ship_error``)."""


@dataclass(frozen=True, slots=True)
class SpoolHealth:
    """A snapshot for the gateway's ``/metrics`` and health check."""

    pending_events: int  # spooled, not yet shipped
    pending_bytes: int  # bytes of those events' lines (what max_bytes bounds)
    disk_bytes: int  # bytes of all segment files, shipped parts awaiting deletion included
    max_bytes: int
    segments: int
    oldest_pending_age: float | None  # seconds since the oldest unshipped event was spooled
    shipped_events: int  # since this spool was opened
    consecutive_failures: int  # ship attempts failed in a row (0 when shipping works)
    last_ship_error: str | None  # redacted; kept after a later success
    last_ship_error_at: float | None  # unix seconds
    last_ship_at: float | None  # unix seconds of the last successful ship
    corrupt_lines: int  # lines skipped because they were not valid JSON (see module doc)
    closed: bool
    rejected_events: int = 0  # set aside in REJECTED_FILE since this spool was opened
    rejected_kept: int = 0  # lines REJECTED_FILE holds now (earlier runs' included)
    rejected_bytes: int = 0  # its size (what rejected_max_bytes bounds)
    rejected_max_bytes: int = DEFAULT_REJECTED_MAX_BYTES
    # REJECTED_FILE reached its bound (or an event did not fit): every append is refused
    rejected_full: bool = False
    discarded_events: int = 0  # discarded by an operator from REJECTED_FILE, ever


def next_backoff(previous: float | None, *, initial: float = 1.0, maximum: float = 60.0) -> float:
    """The wait before the next attempt: ``initial`` after the first failure, then
    doubling, never more than ``maximum``."""
    return initial if previous is None else min(previous * 2, maximum)


class _Segment:
    """One segment file. ``size`` counts only acknowledged (or recovered) bytes."""

    __slots__ = ("lines", "path", "sealed", "seq", "shipped", "shipped_lines", "size")

    def __init__(self, path: Path, seq: int) -> None:
        self.path = path
        self.seq = seq
        self.size = 0  # bytes durable (acknowledged)
        self.lines = 0  # events in those bytes
        self.shipped = 0  # byte offset shipped so far
        self.shipped_lines = 0
        self.sealed = False  # no more writes: shipped in full, then deleted

    @property
    def offset_path(self) -> Path:
        return self.path.with_suffix(".offset")

    @property
    def done(self) -> bool:
        return self.sealed and self.shipped >= self.size


def _name(seq: int) -> str:
    return f"{seq:016d}.jsonl"


def _lock(directory: Path, message: str, hint: str) -> int:
    """An exclusive ``flock`` on ``directory/.lock``, or :class:`SpoolBusy`. The
    kernel releases it when its holder closes the descriptor or dies."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolBusy(message, hint=hint) from None
    return fd


def _refused_index(batch: list[Any], exc: Refused) -> int | None:
    """The member of ``batch`` a refusal names (the only one of a batch of one), or
    None: then the batch is halved, and each half sent, down to the refused event."""
    if len(batch) == 1:
        return 0
    return exc.index if exc.index is not None and 0 <= exc.index < len(batch) else None


def _rejected_line(record: Mapping[str, Any]) -> bytes:
    """One line of :data:`REJECTED_FILE`: compact JSON, as the spool writes it."""
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass") + b"\n"


def _append_line(path: Path, data: bytes, directory: Path) -> None:
    """Append ``data`` (whole lines) to ``path`` (mode 0600) and fsync it, and the
    directory when the file is new. A failed write is cut off again (best effort),
    so that the next line does not run on from half a line."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            write_all(fd, data)  # and fsync
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
    if created:
        _fsync_dir(directory)


def _cut_torn_tail(path: Path) -> tuple[int, int]:
    """Lines and bytes of ``path`` once a torn last line (no newline: a write cut
    short by a crash, never acknowledged) is cut off. FileNotFoundError if absent."""
    with open(path, "r+b") as handle:
        os.fchmod(handle.fileno(), 0o600)
        lines, position, good = 0, 0, 0
        while chunk := handle.read(_READ_CHUNK):
            count = chunk.count(b"\n")
            if count:
                lines += count
                good = position + chunk.rfind(b"\n") + 1
            position += len(chunk)
        if position != good:
            log.warning(
                "audit spool: cutting %d bytes of a torn last line from %s",
                position - good,
                path.name,
            )
            handle.truncate(good)
            handle.flush()
            os.fsync(handle.fileno())
    return lines, good


def _read_discarded(directory: Path) -> dict[str, int]:
    """:data:`DISCARDED_FILE`'s counters (zeros when absent or unreadable)."""
    try:
        with open(directory / DISCARDED_FILE, "rb") as handle:
            data = json.loads(handle.read(4096))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k, v in data.items()
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
    }


class _Read(enum.Enum):
    DONE = "done"  # the batch is complete
    MORE = "more"  # decode again: more lines are in the buffer
    FILL = "fill"  # read more of the file first


class _BatchReader:
    """Cuts one shipped batch out of a segment: up to ``batch`` events from ``start``,
    not past ``limit`` (an acknowledged size, so a line end) and, after the first line,
    not past ``_BATCH_BYTES``. Reading (:meth:`fill`: blocking file I/O) and decoding
    (:meth:`decode`: CPU) are separate steps, so that an event loop can read in a worker
    thread and decode in slices between the calls it serves. ``lazy`` (a shipper that
    reads only ``json_body``): lines in the spool's own form are kept, not decoded,
    until :meth:`decoded` is asked for; a line in any other form decodes them all
    (the batch then has no ``json_body``)."""

    def __init__(
        self,
        segment: _Segment,
        start: int,
        limit: int,
        batch: int,
        corrupt: Callable[[], None],
        *,
        lazy: bool = False,
    ) -> None:
        self.segment = segment
        self.start = start
        self._limit = limit
        self._batch = batch
        self._corrupt = corrupt
        self._lazy = lazy
        self._fd: int | None = None
        self._buffer = b""  # bytes read; those from _cursor on are not decoded yet
        self._cursor = 0  # _buffer[_cursor] is the byte at self.position
        self._read_to = start  # file offset the next fill reads from
        self.position = start  # offset after the last line taken
        self.count = 0  # lines taken, corrupt ones included
        self.events = SpoolBatch()
        self._texts: list[bytes] | None = []
        self._kept: list[tuple[int, bytes]] = []  # lazy: (offset, line), not decoded yet

    @property
    def size(self) -> int:
        """The events of the batch, decoded or kept (corrupt lines found excluded)."""
        return len(self.events) + len(self._kept)

    @property
    def undecoded(self) -> bool:
        return bool(self._kept)

    def fill(self) -> None:
        """Read the next chunk of the segment (blocking)."""
        if self._fd is None:
            self._fd = os.open(self.segment.path, os.O_RDONLY)
        size = min(_SHIP_CHUNK, self._limit - self._read_to)
        chunk = os.pread(self._fd, size, self._read_to)
        if not chunk:  # cannot happen below an acknowledged size
            raise OSError(f"{self.segment.path.name} is shorter than its acknowledged size")
        self._read_to += len(chunk)
        self._buffer = self._buffer[self._cursor :] + chunk
        self._cursor = 0

    def decode(self, lines: int) -> _Read:
        """Take up to ``lines`` more lines from what was read."""
        taken, cursor, buffer = 0, self._cursor, self._buffer
        state = _Read.MORE
        while True:
            if self.count >= self._batch or self.position >= self._limit:
                state = _Read.DONE
                break
            if taken >= lines:
                break
            newline = buffer.find(b"\n", cursor)
            if newline == -1:
                state = _Read.FILL
                break
            line = buffer[cursor : newline + 1]
            if self.count and self.position + len(line) - self.start > _BATCH_BYTES:
                state = _Read.DONE
                break
            cursor = newline + 1
            self.position += len(line)
            self.count += 1
            taken += 1
            self._take(line)
        self._cursor = cursor
        return state

    def _take(self, line: bytes) -> None:
        offset = self.position - len(line)
        if self._lazy and self._texts is not None:
            text = _line_text(line)
            if text is not None:
                self._kept.append((offset, line))
                self._texts.append(text)
                return
            self._decode_kept()  # this line has no text of its own: decode them all
        self._decode(offset, line)

    def _decode(self, offset: int, line: bytes) -> None:
        try:
            event, text = _line_event(line)
        except (ValueError, KeyError, TypeError):
            log.error(
                "audit spool: skipping a corrupt line in %s at byte %d",
                self.segment.path.name,
                offset,
            )
            self._corrupt()
            return
        self.events.append(event)
        if self._texts is not None:
            if text is None:
                self._texts = None
            else:
                self._texts.append(text)

    def _decode_kept(self) -> None:
        kept, self._kept = self._kept, []
        if self._texts is not None:
            self._texts = []  # again, from the lines that decode
        for offset, line in kept:
            self._decode(offset, line)

    def result(self) -> SpoolBatch:
        """The batch's events (with ``json_body`` when every line had the spool's form;
        lazy: not decoded yet, see :meth:`decoded`)."""
        self.events.json_body = None
        if self._texts:
            self.events.json_body = b'{"events":[' + b",".join(self._texts) + b"]}"
        return self.events

    def decoded(self) -> SpoolBatch:
        """The batch with every event decoded: the lines :meth:`result` left as text
        are decoded now, a corrupt one skipped, logged and counted as :meth:`decode`
        does, and ``json_body`` made again from the lines that decoded."""
        self._decode_kept()
        return self.result()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class AuditSpool:
    """Durable local audit buffer and its shipper; see the module docstring.

    ``ship(events)`` runs on the shipper thread with at most ``batch`` events (the
    guard POSTs them to the control plane); it raises to report a failure. With
    ``ship=None`` there is no shipper thread: the owner runs :meth:`ship_on_loop` on
    its event loop instead (both gateways do).
    ``backoff_initial`` / ``backoff_max`` bound the retry delays, ``commit_timeout``
    how long :meth:`append` waits for its fsync, ``linger`` how long the shipper waits
    after sending a batch that was not full (so that a steady trickle of events is sent
    in fewer, larger requests), ``clock`` gives unix seconds (the
    ``spooled_at`` of each line). ``rejected_max_bytes`` bounds :data:`REJECTED_FILE`
    (see the module docstring); ``rejected_hint`` is what a call refused at that bound
    tells the operator to do (default :data:`REJECTED_HINT`, a gateway's commands).
    ``body_only``: the ship function (either kind) posts a batch's ``json_body`` when
    it has one and reads nothing else of it, so such a batch is handed over without
    its events decoded (:class:`SpoolBatch`); they are decoded only if the receiver
    refuses it. A shipper thread starts at once; :meth:`close` stops it and the writer
    thread (events not shipped stay on disk for the next start).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        ship: Ship | None,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 4 << 20,
        batch: int = 500,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        commit_timeout: float = 5.0,
        linger: float = 0.0,
        clock: Callable[[], float] = time.time,
        rejected_max_bytes: int = DEFAULT_REJECTED_MAX_BYTES,
        rejected_hint: str = REJECTED_HINT,
        body_only: bool = False,
    ) -> None:
        if max_bytes < 1 or segment_bytes < 1 or batch < 1 or linger < 0:
            raise ValueError("max_bytes, segment_bytes and batch must be at least 1")
        if rejected_max_bytes < 1:
            raise ValueError("rejected_max_bytes must be at least 1")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rejected_max_bytes = rejected_max_bytes
        self.rejected_hint = rejected_hint
        self.segment_bytes = segment_bytes
        self.batch = batch
        self._backoff = (backoff_initial, backoff_max)
        self._linger = linger
        self._clock = clock
        self._body_only = body_only

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # commits, shipping, close
        self._stop = threading.Event()
        self._segments: deque[_Segment] = deque()
        self._current: _Segment | None = None  # written by the writer thread only
        self._fd: int | None = None  # the current segment's file, O_APPEND
        self._disk_bytes = 0  # sum of segment sizes
        self._pending_bytes = 0  # of those, bytes not yet shipped (what max_bytes bounds)
        self._reserved = 0  # bytes of calls accepted but not yet written
        self._closed = False
        self._shipped_events = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_ship_at: float | None = None
        self._corrupt = 0
        self._rejected = 0  # set aside since opened
        self._rejected_kept = 0  # lines in REJECTED_FILE
        self._rejected_bytes = 0  # its size
        self._rejected_full = False  # it reached its bound, or an event did not fit
        self._discarded = 0  # DISCARDED_FILE's count
        self._on_loop = False  # ship_on_loop is running
        self._wake_loop: Callable[[], None] | None = None  # set while it waits for work

        self._lock_fd = self._lock_directory()
        try:
            self._recover()
            self._recover_rejected()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._writer = GroupCommit[bytes](
            self._write_lines,
            max_batch=500,
            # no batching window: calls that arrive during one write and fsync form the
            # next batch (natural group commit), so a lone call never waits for company
            max_wait=0.0,
            queue_limit=10_000,
            commit_timeout=commit_timeout,
            hint=_HINT,
            thread_name="audit-spool-writer",
        )
        self._shipper: threading.Thread | None = None
        if ship is not None:
            self._shipper = threading.Thread(
                target=self._ship_loop, args=(ship,), name="audit-spool-shipper", daemon=True
            )
            self._shipper.start()

    # -- callers --------------------------------------------------------------------

    def append(self, events: list[dict[str, Any]]) -> None:
        """Spool ``events`` (JSON objects) and return once they are fsynced; see the
        module docstring. Raises :class:`SpoolFull` or
        :class:`~agentiam.errors.ServiceUnavailable` when they cannot be made durable,
        and ValueError for an event that is not a JSON-serialisable object."""
        if not events:
            return
        lines, size = self._encode(events)
        self._reserve(size)
        try:
            self._writer.append(lines)
        finally:
            self._release(size)

    def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]:
        """Like :meth:`append` but without waiting: the future completes once the
        events are fsynced (or fails with ServiceUnavailable). A full, closed or
        overloaded spool raises here, at once. For an event loop, which awaits the
        future instead of blocking a thread on it. ``wake=False`` leaves them for the
        next write another call (or :meth:`wake`, or :meth:`close`) starts
        (:meth:`GroupCommit.submit <agentiam.services.audit_writer.GroupCommit.submit>`)."""
        lines, size = self._encode(events)
        self._reserve(size)
        try:
            future = self._writer.submit(lines, wake=wake)
        except BaseException:
            self._release(size)
            raise
        future.add_done_callback(lambda _done: self._release(size))
        return future

    def wake(self) -> None:
        """Write events submitted with ``wake=False`` now."""
        self._writer.wake()

    def _reserve(self, size: int) -> None:
        with self._lock:
            if self._closed:
                raise ServiceUnavailable(
                    "the audit spool is closed; the call was refused", hint=_HINT
                )
            if self._rejected_full:
                raise SpoolFull(
                    f"the audit spool's {REJECTED_FILE} holds {self._rejected_bytes} bytes "
                    "of events the control plane refused for good, its limit is "
                    f"{self.rejected_max_bytes}; the call was refused",
                    hint=self.rejected_hint,
                )
            if self._pending_bytes + self._reserved + size > self.max_bytes:
                raise SpoolFull(
                    f"the audit spool holds {self._pending_bytes} bytes of events not yet "
                    f"shipped, its limit is {self.max_bytes}; the call was refused",
                    hint="Restore the connection to the control plane, or raise max_bytes.",
                )
            self._reserved += size

    def _release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size
            self._changed.notify_all()

    def _encode(self, events: list[dict[str, Any]]) -> tuple[list[bytes], int]:
        now = self._clock()
        lines: list[bytes] = []
        for event in events:
            if not isinstance(event, Mapping):
                raise ValueError("an audit event must be a JSON object (a mapping)")
            try:
                line = self._line(now, event)
                # within what ingest accepts, else it would hold every later event back
                fitted = fit_for_ingest(event, encoded_bytes=len(line))
                lines.append(line if fitted is event else self._line(now, fitted))
            except (TypeError, ValueError, RecursionError) as exc:
                raise ValueError(f"audit event is not JSON-serialisable: {exc}") from None
        return lines, sum(len(line) for line in lines)

    @staticmethod
    def _line(now: float, event: Mapping[str, Any]) -> bytes:
        text = json.dumps(
            {"spooled_at": now, "event": event},
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return text.encode("utf-8") + b"\n"  # a lone surrogate raises here

    def health(self) -> SpoolHealth:
        """Counters and the age of the oldest event not yet shipped."""
        with self._lock:
            pending = [s for s in self._segments if s.shipped < s.size]
            oldest = pending[0] if pending else None
            snapshot = SpoolHealth(
                pending_events=sum(s.lines - s.shipped_lines for s in self._segments),
                pending_bytes=self._pending_bytes,
                disk_bytes=self._disk_bytes,
                max_bytes=self.max_bytes,
                segments=len(self._segments),
                oldest_pending_age=None,
                shipped_events=self._shipped_events,
                consecutive_failures=self._failures,
                last_ship_error=self._last_error,
                last_ship_error_at=self._last_error_at,
                last_ship_at=self._last_ship_at,
                corrupt_lines=self._corrupt,
                closed=self._closed,
                rejected_events=self._rejected,
                rejected_kept=self._rejected_kept,
                rejected_bytes=self._rejected_bytes,
                rejected_max_bytes=self.rejected_max_bytes,
                rejected_full=self._rejected_full,
                discarded_events=self._discarded,
            )
            where = None if oldest is None else (oldest.path, oldest.shipped)
        if where is None:
            return snapshot
        spooled_at = self._spooled_at(*where)
        if spooled_at is None:
            return snapshot
        age = max(0.0, self._clock() - spooled_at)
        return replace(snapshot, oldest_pending_age=age)

    def drain(self, timeout: float) -> bool:
        """Wait until every spooled event was shipped; False if ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(s.shipped < s.size for s in self._segments) or self._reserved:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._shipping():
                    return False
                self._changed.wait(remaining)
            return True

    def _shipping(self) -> bool:
        return self._on_loop or (self._shipper is not None and self._shipper.is_alive())

    def close(self, timeout: float = 10.0) -> bool:
        """Refuse new events, write those already accepted, stop shipping. Events not
        shipped stay on disk for the next :class:`AuditSpool` on this directory. True
        if its threads stopped within ``timeout``. (A :meth:`ship_on_loop` task
        should be cancelled, and awaited, first: its owner's loop runs it.)"""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
        stopped = self._writer.close(timeout)
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
            wake, self._wake_loop = self._wake_loop, None
        if wake is not None:  # ship_on_loop, waiting for work, ends
            wake()
        if self._shipper is not None:
            self._shipper.join(max(0.0, deadline - time.monotonic()))
        done = stopped and not (self._shipper is not None and self._shipper.is_alive())
        if done and self._lock_fd != -1:  # only then may another spool take the directory
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd, self._lock_fd = None, -1
        return done

    def __enter__(self) -> AuditSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditSpool({str(self.directory)!r})"

    # -- recovery -------------------------------------------------------------------

    def _lock_directory(self) -> int:
        """One spool per directory: an exclusive lock on ``.lock``, held until closed
        (the kernel releases it when the process dies)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        return _lock(
            self.directory,
            f"the audit spool {self.directory} is in use by another spool "
            "(or an 'agentiam gateway spool' or 'agentiam guard spool' command)",
            "Give each gateway or guard process a directory of its own.",
        )

    def _recover_rejected(self) -> None:
        """Count :data:`REJECTED_FILE` (its bytes bound it; a restart must not reset
        that) and :data:`DISCARDED_FILE`. A torn last line (a set-aside cut short by a
        crash) is cut off: it was never acknowledged, the event is still in its segment
        and is set aside again."""
        path = self.directory / REJECTED_FILE
        with contextlib.suppress(FileNotFoundError):
            kept, size = _cut_torn_tail(path)
            self._rejected_kept, self._rejected_bytes = kept, size
        self._discarded = _read_discarded(self.directory).get("events", 0)
        if self._rejected_bytes >= self.rejected_max_bytes:
            self._rejected_full = True
            log.error(
                "audit spool %s: %s holds %d bytes, its limit is %d: every call is refused "
                "until an operator empties it",
                self.directory,
                REJECTED_FILE,
                self._rejected_bytes,
                self.rejected_max_bytes,
            )
        elif self._rejected_kept:
            log.warning(
                "audit spool %s: %s holds %d events the control plane refused (%d of %d bytes)",
                self.directory,
                REJECTED_FILE,
                self._rejected_kept,
                self._rejected_bytes,
                self.rejected_max_bytes,
            )

    def _recover(self) -> None:
        """Open the directory: cut torn tails, read offsets, count what is pending."""
        seqs: list[int] = []
        for entry in self.directory.iterdir():
            if entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)  # an offset write cut short
                continue
            match = _SEGMENT.match(entry.name)
            if match:
                seqs.append(int(match.group(1)))
        for seq in sorted(seqs):
            segment = _Segment(self.directory / _name(seq), seq)
            self._recover_segment(segment)
            if segment.size == 0 or segment.done:
                self._delete(segment)
                continue
            self._segments.append(segment)
            self._disk_bytes += segment.size
            self._pending_bytes += segment.size - segment.shipped
        for entry in self.directory.iterdir():  # offsets whose segment is gone
            match = _OFFSET.match(entry.name)
            if match and not (self.directory / _name(int(match.group(1)))).exists():
                entry.unlink(missing_ok=True)
        self._next_seq = max(seqs, default=0) + 1
        if self._segments:
            log.info(
                "audit spool %s: %d segments recovered, %d events to ship",
                self.directory,
                len(self._segments),
                sum(s.lines - s.shipped_lines for s in self._segments),
            )

    def _recover_segment(self, segment: _Segment) -> None:
        segment.sealed = True  # a new process never appends to an old segment
        offset = 0
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            offset = int(segment.offset_path.read_text(encoding="ascii").strip() or 0)
        with open(segment.path, "r+b") as handle:
            os.fchmod(handle.fileno(), 0o600)
            good, lines, shipped, shipped_lines = 0, 0, 0, 0
            position = 0
            while chunk := handle.read(_READ_CHUNK):
                count = chunk.count(b"\n")
                if count:
                    last = position + chunk.rfind(b"\n") + 1
                    if last <= offset:  # every line of the chunk was shipped
                        shipped, shipped_lines = last, lines + count
                    elif position < offset:  # the offset falls in this chunk
                        # an offset is always a line end; snap it down if it is not
                        start, done = 0, lines
                        while (newline := chunk.find(b"\n", start)) != -1:
                            if position + newline + 1 > offset:
                                break
                            done += 1
                            shipped, shipped_lines = position + newline + 1, done
                            start = newline + 1
                    lines += count
                    good = last
                position += len(chunk)
            if position != good:  # a torn last line: never acknowledged
                log.warning(
                    "audit spool: cutting %d bytes of a torn last line from %s",
                    position - good,
                    segment.path.name,
                )
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())
        segment.size = good
        segment.lines = lines
        segment.shipped = shipped
        segment.shipped_lines = shipped_lines

    # -- the writer thread (GroupCommit's write) --------------------------------------

    def _write_lines(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        segment = self._current
        if (
            segment is None
            or self._fd is None  # a rotation failed half-way
            or (segment.size > 0 and segment.size + len(data) > self.segment_bytes)
        ):
            segment = self._rotate()
        fd = self._fd
        assert fd is not None
        try:
            write_all(fd, data)
        except BaseException:
            self._abandon(segment)
            raise
        with self._lock:
            segment.size += len(data)
            segment.lines += len(lines)
            self._disk_bytes += len(data)
            self._pending_bytes += len(data)
            self._changed.notify_all()
            wake, self._wake_loop = self._wake_loop, None
        if wake is not None:
            wake()

    def _rotate(self) -> _Segment:
        """Seal the current segment and start the next one (its directory entry
        fsynced before anything written to it is acknowledged)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        segment = _Segment(self.directory / _name(self._next_seq), self._next_seq)
        self._next_seq += 1
        fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                segment.path.unlink()
            raise
        self._fd = fd
        with self._lock:
            if self._current is not None:
                self._current.sealed = True
            self._current = segment
            self._segments.append(segment)
            self._changed.notify_all()
        return segment

    def _abandon(self, segment: _Segment) -> None:
        """A write or fsync failed: the file may now hold a partial line and (after a
        failed fsync) pages the kernel no longer means to write. Stop writing to it;
        the next batch starts a new segment. What it held before stays acknowledged;
        a segment that held nothing acknowledged is deleted at once (it would otherwise
        wait behind every older unshipped one: a file per failed write on a full disk)."""
        log.warning("audit spool: write to %s failed; starting a new segment", segment.path.name)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with self._lock:
            segment.sealed = True
            self._current = None
            empty = segment.size == 0
            if empty:
                self._segments.remove(segment)
            self._changed.notify_all()
        if empty:
            self._delete(segment)

    # -- shipping: the shipper thread, or ship_on_loop ---------------------------------

    def _ship_loop(self, ship: Ship) -> None:
        delay: float | None = None
        while not self._stop.is_set():
            try:
                with self._lock:
                    work = self._take_ready()
                    if work is None:
                        self._changed.wait(_IDLE_POLL)  # woken by writes and close
                        continue
                reader = self._reader(work)
                try:
                    while (state := reader.decode(self.batch)) is not _Read.DONE:
                        if state is _Read.FILL:
                            reader.fill()
                finally:
                    reader.close()
                aside = self._send(ship, reader) if reader.size else 0
                if aside is None:
                    return  # stopped while retrying
                self._advance(reader.segment, reader.position, reader.count, reader.size - aside)
                delay = None
                if self._linger and reader.count < self.batch:
                    self._stop.wait(self._linger)  # let the next batch fill up
            except Exception as exc:  # reading the spool failed: keep trying, visibly
                delay = self._read_failed(exc, delay)
                self._stop.wait(delay)

    async def ship_on_loop(
        self, ship: AsyncShip, *, step_lines: int = 50, idle_poll: float = _IDLE_POLL
    ) -> None:
        """Ship on the running event loop until cancelled (or the spool is closed), for
        a spool opened with ``ship=None``; see the module docstring. Decoding a batch
        holds the loop for at most ``step_lines`` lines at a time; file reads and the
        offset's fsync run in the loop's default executor. Waiting for work, it is woken
        by the next write, or after ``idle_poll`` seconds."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._shipper is not None or self._on_loop:
                raise RuntimeError("this spool is already being shipped")
            self._on_loop = True
        delay: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    work = self._take()
                    if work is None:
                        await self._idle(loop, idle_poll)
                        continue
                    reader = self._reader(work)
                    try:
                        while (state := reader.decode(step_lines)) is not _Read.DONE:
                            if state is _Read.FILL:
                                await loop.run_in_executor(None, reader.fill)
                            else:
                                await asyncio.sleep(0)  # let the loop serve calls
                    finally:
                        reader.close()
                    aside = await self._send_async(ship, reader) if reader.size else 0
                    if aside is None:
                        return
                    await loop.run_in_executor(
                        None,
                        self._advance,
                        reader.segment,
                        reader.position,
                        reader.count,
                        reader.size - aside,
                    )
                    delay = None
                    if self._linger and reader.count < self.batch:
                        await asyncio.sleep(self._linger)  # let the next batch fill up
                except Exception as exc:  # reading the spool failed: keep trying, visibly
                    delay = self._read_failed(exc, delay)
                    await asyncio.sleep(delay)
        finally:
            with self._lock:
                self._on_loop = False
                self._wake_loop = None
                self._changed.notify_all()

    async def _idle(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Wait for the next write (which calls ``_wake_loop`` from the writer thread).

        ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11, ``wait_for``
        swallows a cancellation that arrives in the loop turn in which the awaited
        event is set (CPython gh-86296, fixed in 3.12), so a write landing as the
        owner stops shipping left this task waiting for more work instead of ending."""
        woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(woken.set)

        with self._lock:
            if self._take_ready() is not None:
                return
            self._wake_loop = wake
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await woken.wait()
        finally:
            with self._lock:
                if self._wake_loop is wake:
                    self._wake_loop = None

    def _take(self) -> tuple[_Segment, int, int] | None:
        """Where the next batch lies (segment, start, acknowledged end), deleting
        segments shipped in full; None when everything is shipped."""
        with self._lock:
            return self._take_ready()

    def _take_ready(self) -> tuple[_Segment, int, int] | None:
        self._prune_locked()
        segment = next((s for s in self._segments if s.shipped < s.size), None)
        return None if segment is None else (segment, segment.shipped, segment.size)

    def _count_corrupt(self) -> None:
        with self._lock:
            self._corrupt += 1

    def _read_failed(self, exc: Exception, delay: float | None) -> float:
        delay = next_backoff(delay, initial=self._backoff[0], maximum=self._backoff[1])
        self._record_failure(exc)
        log.error(
            "audit spool: the shipper cannot read the spool: %s; retrying in %g s",
            redact(exc),
            delay,
        )
        return delay

    def _reader(self, work: tuple[_Segment, int, int]) -> _BatchReader:
        return _BatchReader(*work, self.batch, self._count_corrupt, lazy=self._body_only)

    @staticmethod
    def _refused_whole(reader: _BatchReader, todo: list[list[dict[str, Any]]]) -> bool:
        """The receiver refused the batch as first sent; if its events were not
        decoded (``body_only``), decode them now, as ``todo[0]``. True when that found
        corrupt lines (skipped, logged, counted): they are what was refused, so the
        rest is sent again as it is, not searched for a refused event."""
        if not reader.undecoded:
            return False
        before = reader.size
        todo[0] = reader.decoded()
        if reader.size == before:
            return False
        if not todo[0]:
            todo.pop(0)
        return True

    @staticmethod
    def _count(reader: _BatchReader, batch: list[dict[str, Any]]) -> int:
        return reader.size if reader.undecoded else len(batch)

    def _send(self, ship: Ship, reader: _BatchReader) -> int | None:
        """Ship the batch ``reader`` cut until it is accepted, what the receiver
        refuses for good set aside (:meth:`_without_refused`): how many were set
        aside; None if the spool closed first."""
        todo: list[list[dict[str, Any]]] = [reader.result()]
        aside = 0
        delay: float | None = None
        while todo:
            if self._stop.is_set():
                return None
            try:
                ship(todo[0])
            except Refused as exc:
                if self._refused_whole(reader, todo):
                    continue
                try:
                    parts = self._without_refused(todo[0], exc)
                except (RejectedFileFull, OSError) as failure:  # kept in its segment: retried
                    delay = self._send_failed(failure, delay, len(todo[0]))
                    self._stop.wait(delay)
                    continue
                aside += len(todo[0]) - sum(map(len, parts))
                todo[:1] = parts
                continue
            except Exception as exc:
                delay = self._send_failed(exc, delay, self._count(reader, todo[0]))
                self._stop.wait(delay)
                continue
            todo.pop(0)
        return aside

    async def _send_async(self, ship: AsyncShip, reader: _BatchReader) -> int | None:
        """:meth:`_send` on the event loop (setting an event aside, a file write and
        fsync, in the loop's default executor)."""
        loop = asyncio.get_running_loop()
        todo: list[list[dict[str, Any]]] = [reader.result()]
        aside = 0
        delay: float | None = None
        while todo:
            if self._stop.is_set():
                return None
            try:
                await ship(todo[0])
            except Refused as exc:
                if self._refused_whole(reader, todo):
                    continue
                try:
                    parts = await loop.run_in_executor(None, self._without_refused, todo[0], exc)
                except (RejectedFileFull, OSError) as failure:  # kept in its segment: retried
                    delay = self._send_failed(failure, delay, len(todo[0]))
                    await asyncio.sleep(delay)
                    continue
                aside += len(todo[0]) - sum(map(len, parts))
                todo[:1] = parts
                continue
            except Exception as exc:
                delay = self._send_failed(exc, delay, self._count(reader, todo[0]))
                await asyncio.sleep(delay)
                continue
            todo.pop(0)
        return aside

    def _without_refused(
        self, batch: list[dict[str, Any]], exc: Refused
    ) -> list[list[dict[str, Any]]]:
        """What to send instead of ``batch``, which the receiver refused for good: the
        events around the one it named, that one set aside; without a name, the two
        halves (each is sent, and split again if refused, down to the refused event).
        An event refused alone is set aside: appended to :data:`REJECTED_FILE` and
        fsynced, counted and logged. It is not shipped again, and not lost. Raises
        (:class:`RejectedFileFull`, OSError) when it cannot be set aside: then nothing
        was, and the caller retries the batch later."""
        index = _refused_index(batch, exc)
        if index is None:
            half = len(batch) // 2
            return [batch[:half], batch[half:]]
        self._set_aside(batch[index], exc)
        return [part for part in (batch[:index], batch[index + 1 :]) if part]

    def _set_aside(self, event: dict[str, Any], exc: Refused) -> None:
        """Append ``event`` to :data:`REJECTED_FILE`, or raise
        :class:`RejectedFileFull` (it would pass ``rejected_max_bytes``: the spool
        refuses calls from now on) or OSError (the write failed); then it stays in its
        segment."""
        reason = redact(exc)
        data = _rejected_line({"rejected_at": self._clock(), "reason": reason, "event": event})
        with self._lock:
            size = self._rejected_bytes
            room = size + len(data) <= self.rejected_max_bytes
            newly_full = not room and not self._rejected_full
            if not room:
                self._rejected_full = True
        if not room:
            if newly_full:
                self._log_full(event.get("event_id"))
            raise RejectedFileFull(
                f"{REJECTED_FILE} is full ({size} of {self.rejected_max_bytes} bytes); "
                "a refused event stays in the spool"
            )
        path = self.directory / REJECTED_FILE
        _append_line(path, data, self.directory)
        with self._lock:
            self._rejected += 1
            self._rejected_kept += 1
            self._rejected_bytes += len(data)
            newly_full = not self._rejected_full and (
                self._rejected_bytes >= self.rejected_max_bytes
            )
            if newly_full:
                self._rejected_full = True
            self._last_error = f"refused for good: {reason}"
            self._last_error_at = self._clock()
        if newly_full:
            self._log_full(None)
        log.error(
            "audit spool: the control plane refused event %s (%s) for good: %s; kept in %s",
            event.get("event_id"),
            event.get("type"),
            reason,
            path,
        )

    def _log_full(self, held: Any) -> None:
        log.critical(
            "audit spool %s: %s reached its limit (%d bytes): every call is refused until an "
            "operator empties it%s. %s",
            self.directory,
            REJECTED_FILE,
            self.rejected_max_bytes,
            "" if held is None else f"; event {held}, refused for good, stays in the spool",
            self.rejected_hint,
        )

    def _send_failed(self, exc: Exception, delay: float | None, count: int) -> float:
        """Record a failed attempt; the wait before the next one."""
        delay = next_backoff(delay, initial=self._backoff[0], maximum=self._backoff[1])
        message, failures = self._record_failure(exc)
        if failures == 1 or failures % 10 == 0:
            log.warning(
                "audit spool: shipping %d events failed (%d in a row): %s; retrying in %g s",
                count,
                failures,
                message,
                delay,
            )
        return delay

    def _record_failure(self, exc: Exception) -> tuple[str, int]:
        message = redact(exc)
        with self._lock:
            self._failures += 1
            self._last_error = message
            self._last_error_at = self._clock()
            return message, self._failures

    def _advance(self, segment: _Segment, end: int, count: int, shipped: int) -> None:
        try:
            self._write_offset(segment, end)
        except OSError as exc:  # progress is kept in memory; a restart re-sends
            log.warning(
                "audit spool: cannot record progress in %s: %s",
                segment.offset_path.name,
                type(exc).__name__,
            )
        with self._lock:
            self._pending_bytes -= end - segment.shipped
            segment.shipped = end
            segment.shipped_lines += count
            self._shipped_events += shipped
            self._failures = 0
            self._last_ship_at = self._clock()
            self._prune_locked()  # before drain() can see it shipped
            self._changed.notify_all()

    def _write_offset(self, segment: _Segment, offset: int) -> None:
        temp = segment.offset_path.with_suffix(".offset.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{offset}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, segment.offset_path)

    def _spooled_at(self, path: Path, offset: int) -> float | None:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                value = json.loads(handle.readline(_BATCH_BYTES)).get("spooled_at")
        except (OSError, ValueError, AttributeError):
            return None
        return float(value) if isinstance(value, int | float) else None

    # -- deletion ----------------------------------------------------------------------

    def _prune_locked(self) -> None:
        """Delete the oldest segments while they are sealed and shipped in full."""
        while self._segments and self._segments[0].done:
            self._delete_locked(self._segments.popleft())

    def _delete_locked(self, segment: _Segment) -> None:
        self._disk_bytes -= segment.size
        self._delete(segment)
        self._changed.notify_all()

    def _delete(self, segment: _Segment) -> None:
        """Segment first, then its offset: a crash in between leaves a stray offset
        file (removed at the next start), never a segment that would be re-sent."""
        try:
            segment.path.unlink(missing_ok=True)
            segment.offset_path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("audit spool: cannot delete %s: %s", segment.path.name, type(exc).__name__)


# -- the operator's side of REJECTED_FILE ---------------------------------------------------

_TEXT = 128  # characters of an id, type, source, action or reason an entry shows
_IDS_PER_RECORD = 256  # event ids named by one discard record (its details stay ~20 KB)
_RECORDS_PER_CALL = 16  # discard records handed to ``record`` at once (one request)
_MAX_REASONS = 32  # distinct reasons counted; the others count as "(other)"


def _text(value: Any) -> str | None:
    return value[:_TEXT] if isinstance(value, str) and value else None


def _stamp(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """One line of :data:`REJECTED_FILE` as an operator sees it: where the event came
    from and why it was refused, never its body (``details``, arguments). Strings are
    cut to 128 characters. ``readable`` is False for a line that is not a set-aside
    event (disk corruption): then only ``line`` is known."""

    line: int  # 1-based line number in the file
    readable: bool
    rejected_at: float | None = None  # unix seconds it was first set aside
    retried_at: float | None = None  # unix seconds an operator last sent it again
    reason: str | None = None
    event_id: str | None = None
    type: str | None = None
    time: str | None = None  # the event's own time
    source: str | None = None
    action: str | None = None
    agent_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class ResendResult:
    """What :meth:`RejectedFile.resend` did. Every line is in exactly one of ``sent``
    (accepted by the control plane: removed from the file), ``refused`` (refused for
    good again: kept, with the new reason), ``unsent`` (not tried because sending
    failed: kept as it was), ``unreadable`` (kept as it was) and ``torn`` (a last line
    cut short by a crash: cut off, as a spool opening the directory does)."""

    sent: int = 0
    refused: int = 0
    unsent: int = 0
    unreadable: int = 0
    torn: int = 0
    error: str | None = None  # why sending stopped (redacted); None: every event was tried

    @property
    def kept(self) -> int:
        return self.refused + self.unsent + self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in self.__slots__}, "kept": self.kept}


@dataclass(frozen=True, slots=True)
class DiscardSummary:
    """What :meth:`RejectedFile.discard` discards (or discarded)."""

    events: int  # set-aside events
    unreadable: int  # lines that are not one (a torn last line included)
    bytes: int  # the file's size
    reasons: Mapping[str, int]  # events per refusal reason (at most 32, then "(other)")
    by: str  # who discards them (the caller says: the OS user)
    first_rejected_at: float | None = None
    last_rejected_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {
            "reasons": dict(self.reasons)
        }


@dataclass(frozen=True, slots=True)
class DiscardRecord:
    """One audit record of a discard: part ``part`` of ``parts``, naming up to 256 of
    the discarded events' ids (every id is named by exactly one part)."""

    summary: DiscardSummary
    part: int  # 1-based
    parts: int
    event_ids: tuple[str, ...]


_SENT = object()  # a verdict of RejectedFile._deliver: accepted
_UNSENT = object()  # not tried


class RejectedFile:
    """:data:`REJECTED_FILE` of one spool directory, for the operator: list what it
    holds (:meth:`entries`, read-only, safe while a gateway runs), send it again
    (:meth:`resend`), or discard it, leaving a record (:meth:`discard`).

    :meth:`resend` and :meth:`discard` take the directory's lock (the one an open
    :class:`AuditSpool` holds) for their whole run, and raise :class:`SpoolBusy` when
    a gateway holds it: a gateway appends to the file while it runs, and counts its
    size once, at start. A gateway started meanwhile is refused the directory. Only
    the directory's owner may run them (the gateway's user: files they rewrite stay
    its own). They never leave a line half-written: the file is replaced atomically (temporary file,
    fsync, rename, directory fsync), so a crash leaves it as before or as after (an
    event the control plane accepted just before a crash is sent again next time, and
    ingest skips an ``event_id`` it already stored)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        batch: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.directory = Path(directory)
        self.path = self.directory / REJECTED_FILE
        self.batch = batch
        self._clock = clock

    def size(self) -> int:
        """The file's size in bytes (0 when absent)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def discarded(self) -> dict[str, int]:
        """The counters of :data:`DISCARDED_FILE` (``events``, ``unreadable_lines``,
        ``discards``, ``last_discarded_at``), empty when nothing was ever discarded."""
        return _read_discarded(self.directory)

    def entries(self) -> Iterator[RejectedEntry]:
        """Every line, in order, without the events' bodies. Takes no lock: a line a
        running gateway is appending (no newline yet) is not shown."""
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed below, as a generator
        except FileNotFoundError:
            return
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    return
                yield _entry(number, _parse_rejected(line))

    # -- resend ----------------------------------------------------------------------

    def resend(self, ship: Ship) -> ResendResult:
        """Send every set-aside event again through ``ship`` (a gateway's own shipper,
        with the gateway's key), in batches of at most ``batch`` events (and 4 MiB),
        with the spool's refusal handling: what the receiver refuses for good
        (:class:`Refused`) is found by halving, as the spool does, and kept with the
        new reason; what it accepts leaves the file. The first other failure (the
        control plane unreachable, a 5xx, a key it does not know) stops sending: the
        events not yet accepted stay as they were, and ``error`` says why."""
        fd = self._lock()
        if fd is None:
            return ResendResult()
        try:
            return self._resend(ship)
        finally:
            os.close(fd)

    def _resend(self, ship: Ship) -> ResendResult:
        try:
            source = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return ResendResult()
        temp = self.path.with_name(self.path.name + ".tmp")
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        counts = {"sent": 0, "refused": 0, "unsent": 0, "unreadable": 0, "torn": 0}
        error: Exception | None = None
        pending: list[tuple[bytes, dict[str, Any] | None]] = []
        pending_events = pending_bytes = 0

        def flush() -> None:
            nonlocal error, pending_events, pending_bytes
            events = [record["event"] for _, record in pending if record is not None]
            verdicts: list[object] = [_UNSENT] * len(events)
            if events and error is None:
                verdicts, error = self._deliver(ship, events)
            now = self._clock()
            chunks: list[bytes] = []
            index = 0
            for line, record in pending:
                if record is None:
                    counts["unreadable"] += 1
                    chunks.append(line)
                    continue
                verdict = verdicts[index]
                index += 1
                if verdict is _SENT:
                    counts["sent"] += 1
                elif isinstance(verdict, Refused):
                    counts["refused"] += 1
                    again = {**record, "reason": redact(verdict), "retried_at": now}
                    chunks.append(_rejected_line(again))
                else:
                    counts["unsent"] += 1
                    chunks.append(line)
            if chunks:
                write_all(out, b"".join(chunks), sync=False)
            pending.clear()
            pending_events = pending_bytes = 0

        try:
            with source:
                for line in source:
                    if not line.endswith(b"\n"):  # never acknowledged: cut, as on recovery
                        counts["torn"] += 1
                        break
                    record = _parse_rejected(line)
                    pending.append((line, record))
                    if record is not None:
                        pending_events += 1
                        pending_bytes += len(line)
                    if pending_events >= self.batch or pending_bytes >= _BATCH_BYTES:
                        flush()
                flush()
            os.fsync(out)
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        os.close(out)
        result = ResendResult(
            sent=counts["sent"],
            refused=counts["refused"],
            unsent=counts["unsent"],
            unreadable=counts["unreadable"],
            torn=counts["torn"],
            error=None if error is None else redact(error),
        )
        if result.kept:
            os.replace(temp, self.path)
        else:
            self.path.unlink()
            temp.unlink()
        _fsync_dir(self.directory)
        log.warning(
            "audit spool %s: %s sent again: %d accepted, %d refused again, %d not sent, "
            "%d unreadable kept%s",
            self.directory,
            REJECTED_FILE,
            result.sent,
            result.refused,
            result.unsent,
            result.unreadable,
            "" if result.error is None else f"; stopped: {result.error}",
        )
        return result

    @staticmethod
    def _deliver(ship: Ship, events: list[dict[str, Any]]) -> tuple[list[object], Exception | None]:
        """Each event's verdict (``_SENT``, the :class:`Refused` that names it, or
        ``_UNSENT``), sending the parts the receiver does not refuse; the failure that
        stopped it, if any. The halving is :meth:`AuditSpool._without_refused`'s."""
        verdicts: list[object] = [_UNSENT] * len(events)
        todo = [list(range(len(events)))]
        while todo:
            part = todo[0]
            try:
                ship([events[i] for i in part])
            except Refused as exc:
                index = _refused_index(part, exc)
                if index is None:
                    half = len(part) // 2
                    todo[:1] = [part[:half], part[half:]]
                    continue
                verdicts[part[index]] = exc
                todo[:1] = [p for p in (part[:index], part[index + 1 :]) if p]
                continue
            except Exception as exc:
                return verdicts, exc
            for i in part:
                verdicts[i] = _SENT
            todo.pop(0)
        return verdicts, None

    # -- discard ---------------------------------------------------------------------

    def discard(
        self, by: str, record: Callable[[list[DiscardRecord]], None]
    ) -> DiscardSummary | None:
        """Delete the file, deliberately: first ``record`` (which ships the audit
        records of the discard: it must raise unless they were accepted) is called with
        the :class:`DiscardRecord` parts, at most 16 at a time, naming every discarded
        event's id; only once every call returned is the file deleted, the deletion
        logged and counted in :data:`DISCARDED_FILE`. When ``record`` raises, nothing is
        deleted (parts already recorded stay recorded). None when there was nothing
        to discard."""
        fd = self._lock()
        if fd is None:
            return None
        try:
            return self._discard(by, record)
        finally:
            os.close(fd)

    def _discard(
        self, by: str, record: Callable[[list[DiscardRecord]], None]
    ) -> DiscardSummary | None:
        summary = self._summarise(by)
        if summary is None:
            return None
        parts = max(1, -(-summary.events // _IDS_PER_RECORD))
        batch: list[DiscardRecord] = []
        ids: list[str] = []
        part = 0

        def add(chunk: list[str]) -> None:
            nonlocal part
            part += 1
            batch.append(DiscardRecord(summary, part, parts, tuple(chunk)))
            if len(batch) >= _RECORDS_PER_CALL:
                record(list(batch))
                batch.clear()

        for entry in self.entries():  # the lock is held: nothing appends meanwhile
            if entry.readable:
                ids.append(_record_id(entry.event_id))
                if len(ids) >= _IDS_PER_RECORD:
                    add(ids)
                    ids = []
        if ids or part == 0:
            add(ids)
        if batch:
            record(batch)
        self.path.unlink()
        _fsync_dir(self.directory)
        counters = _read_discarded(self.directory)
        now = int(self._clock())
        replace_file(
            self.directory / DISCARDED_FILE,
            json.dumps(
                {
                    "events": counters.get("events", 0) + summary.events,
                    "unreadable_lines": counters.get("unreadable_lines", 0) + summary.unreadable,
                    "discards": counters.get("discards", 0) + 1,
                    "last_discarded_at": now,
                },
                separators=(",", ":"),
            ).encode("ascii")
            + b"\n",
        )
        log.warning(
            "audit spool %s: %s discarded by %s: %d events, %d unreadable lines (%d bytes)",
            self.directory,
            REJECTED_FILE,
            by,
            summary.events,
            summary.unreadable,
            summary.bytes,
        )
        return summary

    def _summarise(self, by: str) -> DiscardSummary | None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return None
        events = unreadable = 0
        reasons: dict[str, int] = {}
        first: float | None = None
        last: float | None = None
        for entry in self.entries():
            if not entry.readable:
                unreadable += 1
                continue
            events += 1
            reason = entry.reason or "(none)"
            if reason not in reasons and len(reasons) >= _MAX_REASONS:
                reason = "(other)"
            reasons[reason] = reasons.get(reason, 0) + 1
            if entry.rejected_at is not None:
                first = entry.rejected_at if first is None else min(first, entry.rejected_at)
                last = entry.rejected_at if last is None else max(last, entry.rejected_at)
        if size:  # a torn last line (entries() stops before it) is discarded too
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                unreadable += handle.read(1) != b"\n"
        if events == 0 and unreadable == 0:  # an empty file: nothing to record
            self.path.unlink(missing_ok=True)
            _fsync_dir(self.directory)
            return None
        return DiscardSummary(events, unreadable, size, reasons, by, first, last)

    def _lock(self) -> int | None:
        """The directory's lock (None when there is no directory: nothing to do).
        Refused (:class:`~agentiam.errors.Forbidden`) to a user other than the
        directory's owner: the files a command rewrites would become that user's, and
        the gateway (root's, say) could no longer append to them."""
        try:
            owner = self.directory.stat().st_uid
        except FileNotFoundError:
            return None
        if owner != os.geteuid():
            raise Forbidden(
                f"the audit spool {self.directory} belongs to uid {owner}, not to this "
                f"user (uid {os.geteuid()})",
                hint=(
                    "Run the command as the user the gateway or the guarded agent runs as "
                    "(e.g. sudo -u <user>)."
                ),
            )
        return _lock(
            self.directory,
            f"the audit spool {self.directory} is in use: a gateway or a guard (or another "
            "'agentiam gateway spool' or 'agentiam guard spool' command) holds its lock",
            "Stop the gateway, or the agent whose guard uses this spool directory, run the "
            "command again, then start it.",
        )


def _record_id(value: str | None) -> str:
    """An event id as a discard record names it: ASCII, at most 64 characters (an id
    ingest would take is left as it is)."""
    if value is None:
        return "(none)"
    return value if value.isascii() and len(value) <= 64 else ascii(value)[:64]


def _parse_rejected(line: bytes) -> dict[str, Any] | None:
    """A line of :data:`REJECTED_FILE` as the spool writes it, or None."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), dict):
        return None
    return record


def _entry(number: int, record: dict[str, Any] | None) -> RejectedEntry:
    if record is None:
        return RejectedEntry(line=number, readable=False)
    event = record["event"]
    return RejectedEntry(
        line=number,
        readable=True,
        rejected_at=_stamp(record.get("rejected_at")),
        retried_at=_stamp(record.get("retried_at")),
        reason=_text(record.get("reason")),
        event_id=_text(event.get("event_id")),
        type=_text(event.get("type")),
        time=_text(event.get("time")),
        source=_text(event.get("source")),
        action=_text(event.get("action")),
        agent_id=_text(event.get("agent_id")),
    )
