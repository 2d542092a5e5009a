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
- **Crash safety.** After a crash (SIGKILL, power loss) the last line of a segment may
  be torn: it was never acknowledged, so recovery cuts it off. Everything acknowledged
  is shipped after the restart.

Layout of ``directory`` (mode 0700): segment files ``<seq>.jsonl`` (mode 0600, JSON
Lines, each line ``{"spooled_at": <unix seconds>, "event": {...}}``), rotated once
they reach ``segment_bytes``; ``<seq>.offset`` holds the byte offset shipped so far
(written atomically: temp file, fsync, rename). A segment is deleted once all its
events are shipped and a newer segment exists. Each process starts a new segment;
older ones are shipped and then deleted. ``.lock`` is held (``flock``) by the one spool
using the directory; a second one, in this process or another, is refused.

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
code) is skipped, logged and counted (``corrupt_lines``); ``ship`` must bound its own
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
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentiam.errors import ServiceUnavailable

try:  # POSIX: one spool per directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
from agentiam.adapters.files import write_all
from agentiam.core.audit.ingest_limits import fit_for_ingest
from agentiam.services.audit_export import redact
from agentiam.services.audit_writer import GroupCommit

__all__ = [
    "REJECTED_FILE",
    "AsyncShip",
    "AuditSpool",
    "Refused",
    "Ship",
    "SpoolBatch",
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
    the lines' own event text, so a shipper need not encode the events again."""

    json_body: bytes | None = None


def _line_event(line: bytes) -> tuple[dict[str, Any], bytes | None]:
    """The event of one spool line, and its JSON text within the line when the line
    is exactly ``{"spooled_at":<number>,"event":<object>}`` (what :meth:`AuditSpool.
    _encode` writes): then decoding the event from its first byte must end just before
    the closing ``}``, which proves the text is that one object. Any other line is
    decoded whole. Raises ValueError, KeyError or TypeError for a corrupt line."""
    head = _LINE_HEAD.match(line)
    if head is not None and line.endswith(b"}\n"):
        text = line.decode("utf-8")  # the head is ASCII: byte and character offsets agree
        event, end = _EVENT_DECODER.raw_decode(text, head.end())
        if end == len(text) - 2 and isinstance(event, dict):
            return event, line[head.end() : -2]
    record = json.loads(line)
    event = record["event"]
    if not isinstance(event, dict):
        raise TypeError("event is not an object")
    return event, None


class SpoolFull(ServiceUnavailable):
    """The spool holds ``max_bytes`` of events not yet shipped; nothing more is taken
    until the control plane accepts some."""

    code = "audit-spool-full"
    title = "Audit spool full"


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
    rejected_events: int = 0  # refused by the receiver for good, kept in REJECTED_FILE


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Read(enum.Enum):
    DONE = "done"  # the batch is complete
    MORE = "more"  # decode again: more lines are in the buffer
    FILL = "fill"  # read more of the file first


class _BatchReader:
    """Cuts one shipped batch out of a segment: up to ``batch`` events from ``start``,
    not past ``limit`` (an acknowledged size, so a line end) and, after the first line,
    not past ``_BATCH_BYTES``. Reading (:meth:`fill`: blocking file I/O) and decoding
    (:meth:`decode`: CPU) are separate steps, so that an event loop can read in a worker
    thread and decode in slices between the calls it serves."""

    def __init__(
        self, segment: _Segment, start: int, limit: int, batch: int, corrupt: Callable[[], None]
    ) -> None:
        self.segment = segment
        self.start = start
        self._limit = limit
        self._batch = batch
        self._corrupt = corrupt
        self._fd: int | None = None
        self._buffer = b""  # bytes read; those from _cursor on are not decoded yet
        self._cursor = 0  # _buffer[_cursor] is the byte at self.position
        self._read_to = start  # file offset the next fill reads from
        self.position = start  # offset after the last line taken
        self.count = 0  # lines taken, corrupt ones included
        self.events = SpoolBatch()
        self._texts: list[bytes] | None = []

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
        try:
            event, text = _line_event(line)
        except (ValueError, KeyError, TypeError):
            log.error(
                "audit spool: skipping a corrupt line in %s at byte %d",
                self.segment.path.name,
                self.position - len(line),
            )
            self._corrupt()
            return
        self.events.append(event)
        if self._texts is not None:
            if text is None:
                self._texts = None
            else:
                self._texts.append(text)

    def result(self) -> SpoolBatch:
        """The batch's events (with ``json_body`` when every line had the spool's form)."""
        if self._texts:
            self.events.json_body = b'{"events":[' + b",".join(self._texts) + b"]}"
        return self.events

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
    ``spooled_at`` of each line). A shipper thread starts at once; :meth:`close` stops
    it and the writer thread (events not shipped stay on disk for the next start).
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
    ) -> None:
        if max_bytes < 1 or segment_bytes < 1 or batch < 1 or linger < 0:
            raise ValueError("max_bytes, segment_bytes and batch must be at least 1")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.batch = batch
        self._backoff = (backoff_initial, backoff_max)
        self._linger = linger
        self._clock = clock

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
        self._rejected = 0
        self._on_loop = False  # ship_on_loop is running
        self._wake_loop: Callable[[], None] | None = None  # set while it waits for work

        self._lock_fd = self._lock_directory()
        try:
            self._recover()
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
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ServiceUnavailable(
                    f"the audit spool {self.directory} is in use by another spool",
                    hint="Give each gateway process a directory of its own.",
                ) from None
        return fd

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
                reader = _BatchReader(*work, self.batch, self._count_corrupt)
                try:
                    while (state := reader.decode(self.batch)) is not _Read.DONE:
                        if state is _Read.FILL:
                            reader.fill()
                finally:
                    reader.close()
                events = reader.result()
                aside = self._send(ship, events) if events else 0
                if aside is None:
                    return  # stopped while retrying
                self._advance(reader.segment, reader.position, reader.count, len(events) - aside)
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
                    reader = _BatchReader(*work, self.batch, self._count_corrupt)
                    try:
                        while (state := reader.decode(step_lines)) is not _Read.DONE:
                            if state is _Read.FILL:
                                await loop.run_in_executor(None, reader.fill)
                            else:
                                await asyncio.sleep(0)  # let the loop serve calls
                    finally:
                        reader.close()
                    events = reader.result()
                    aside = await self._send_async(ship, events) if events else 0
                    if aside is None:
                        return
                    await loop.run_in_executor(
                        None,
                        self._advance,
                        reader.segment,
                        reader.position,
                        reader.count,
                        len(events) - aside,
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

    def _send(self, ship: Ship, events: list[dict[str, Any]]) -> int | None:
        """Ship one batch until it is accepted, what the receiver refuses for good set
        aside (:meth:`_without_refused`): how many were set aside; None if the spool
        closed first."""
        todo, aside = [events], 0
        delay: float | None = None
        while todo:
            if self._stop.is_set():
                return None
            try:
                ship(todo[0])
            except Refused as exc:
                parts = self._without_refused(todo[0], exc)
                aside += len(todo[0]) - sum(map(len, parts))
                todo[:1] = parts
                continue
            except Exception as exc:
                delay = self._send_failed(exc, delay, len(todo[0]))
                self._stop.wait(delay)
                continue
            todo.pop(0)
        return aside

    async def _send_async(self, ship: AsyncShip, events: list[dict[str, Any]]) -> int | None:
        """:meth:`_send` on the event loop (setting an event aside, a file write and
        fsync, in the loop's default executor)."""
        loop = asyncio.get_running_loop()
        todo, aside = [events], 0
        delay: float | None = None
        while todo:
            if self._stop.is_set():
                return None
            try:
                await ship(todo[0])
            except Refused as exc:
                parts = await loop.run_in_executor(None, self._without_refused, todo[0], exc)
                aside += len(todo[0]) - sum(map(len, parts))
                todo[:1] = parts
                continue
            except Exception as exc:
                delay = self._send_failed(exc, delay, len(todo[0]))
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
        fsynced, counted and logged. It is not shipped again, and not lost."""
        index = exc.index if exc.index is not None and 0 <= exc.index < len(batch) else None
        if len(batch) == 1:
            index = 0
        if index is None:
            half = len(batch) // 2
            return [batch[:half], batch[half:]]
        self._set_aside(batch[index], exc)
        return [part for part in (batch[:index], batch[index + 1 :]) if part]

    def _set_aside(self, event: dict[str, Any], exc: Refused) -> None:
        reason = redact(exc)
        line = json.dumps(
            {"rejected_at": self._clock(), "reason": reason, "event": event},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        path = self.directory / REJECTED_FILE
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, line.encode("utf-8", "surrogatepass") + b"\n")  # and fsync
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory)
        with self._lock:
            self._rejected += 1
            self._last_error = f"refused for good: {reason}"
            self._last_error_at = self._clock()
        log.error(
            "audit spool: the control plane refused event %s (%s) for good: %s; kept in %s",
            event.get("event_id"),
            event.get("type"),
            reason,
            path,
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
