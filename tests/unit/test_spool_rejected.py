"""The spool's rejected.jsonl (task h2): bounded, counted across restarts, never
torn, and the operator's RejectedFile (resend, discard) safe against a running spool
and a crash. Before, the file had no bound (a stream of refused events grew it until
the disk was full), a restart did not know its size, a line cut short by a crash ran
on into the next one, and nothing could send its events again.

The ship functions here stand in for the control plane (the boundary a unit test
cannot run); tests/api/test_spool_rejected_resend.py does the same against a live
one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentiam.adapters.gateway import spool as spool_module
from agentiam.adapters.gateway.config import load_gateway_config
from agentiam.adapters.gateway.spool import (
    DISCARDED_FILE,
    REJECTED_FILE,
    AuditSpool,
    DiscardRecord,
    Refused,
    RejectedFile,
    SpoolBusy,
    SpoolFull,
)
from agentiam.errors import Forbidden

WAIT = 10.0
# a fixed clock: every set-aside line of the same event shape has the same size
FAST: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "clock": lambda: 1_700_000_000.5,
}
BODY = "body-marker-not-for-listing"


class Crash(BaseException):
    """The process dying at that point."""


class Ingest:
    """A control plane that refuses for good (naming it) every event whose id starts
    with ``bad``, accepts the others, and can be told to fail outright."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.failing: Exception | None = None
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.requests += 1
            if self.failing is not None:
                raise self.failing
            for i, event in enumerate(events):
                if str(event["event_id"]).startswith("bad"):
                    raise Refused("ingest answered 403 (source)", i)
            self.accepted.extend(e["event_id"] for e in events)


def _events(prefix: str, n: int, pad: int = 200) -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{i}", "type": "tool.call", "pad": "x" * pad} for i in range(n)]


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


class LoopShipped(AuditSpool):
    """Shipped by ship_on_loop on a loop of its own thread, as a gateway ships."""

    def __init__(self, directory: Path, ship: Callable[..., None], **kw: Any) -> None:
        super().__init__(directory, None, **kw)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None

        async def ship_async(events: list[dict[str, Any]]) -> None:
            ship(events)

        self.thread = threading.Thread(target=self._run, args=(ship_async,), daemon=True)
        self.thread.start()

    def _run(self, ship: Any) -> None:
        self.task = self.loop.create_task(self.ship_on_loop(ship, idle_poll=5))
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    def close(self, timeout: float = 10.0) -> bool:
        if self.thread.is_alive() and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(timeout)
        return super().close(timeout)


@pytest.fixture(params=["thread", "loop"])
def open_spool(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., AuditSpool]]:
    """Opens spools on tmp_path/spool, shipped by their thread or on a loop; closes
    them after the test."""
    opened: list[AuditSpool] = []

    def open_(ship: Callable[..., None] | None, **kw: Any) -> AuditSpool:
        directory = tmp_path / "spool"
        if ship is None:
            spool = AuditSpool(directory, None, **{**FAST, **kw})
        elif request.param == "loop":
            spool = LoopShipped(directory, ship, **{**FAST, **kw})
        else:
            spool = AuditSpool(directory, ship, **{**FAST, **kw})
        opened.append(spool)
        return spool

    yield open_
    for spool in opened:
        spool.close(timeout=5)


def _line_size(directory: Path) -> int:
    """The size of one set-aside line of an event of _events (they are all alike)."""
    return len((directory / REJECTED_FILE).read_bytes().splitlines()[0]) + 1


# -- the bound ------------------------------------------------------------------------------


def test_the_file_stops_at_its_bound_and_then_every_call_is_refused(
    open_spool: Callable[..., AuditSpool], tmp_path: Path
) -> None:
    """Three refused events fit, the fourth does not: it is not written, not dropped
    (it stays in the spool, and the events behind it wait with it), and the spool
    takes no more calls, naming rejected.jsonl in its 503."""
    directory = tmp_path / "spool"
    ingest = Ingest()
    probe = open_spool(ingest)
    probe.append(_events("bad", 1))
    _wait_for(lambda: probe.health().rejected_events == 1)
    _wait_for(lambda: probe.health().pending_events == 0)  # not sent again after it
    one = _line_size(directory)
    probe.close()
    (directory / REJECTED_FILE).unlink()

    bound = 3 * one + one // 2
    spool = open_spool(ingest, rejected_max_bytes=bound)
    spool.append(_events("bad", 4) + _events("good", 2))  # one write: before any shipping
    _wait_for(lambda: spool.health().rejected_full)
    time.sleep(0.2)  # the shipper keeps retrying the held event
    health = spool.health()
    kept = _lines(directory / REJECTED_FILE)
    assert [k["event"]["event_id"] for k in kept] == ["bad-0", "bad-1", "bad-2"]
    assert (directory / REJECTED_FILE).stat().st_size == 3 * one <= bound
    assert (health.rejected_bytes, health.rejected_kept, health.rejected_events) == (3 * one, 3, 3)
    assert health.rejected_max_bytes == bound
    assert health.pending_events >= 3  # bad-3 and the two good events behind it
    assert health.last_ship_error is not None
    assert REJECTED_FILE in health.last_ship_error
    assert health.consecutive_failures >= 1
    with pytest.raises(SpoolFull, match=REJECTED_FILE) as refused:
        spool.append(_events("later", 1))
    assert REJECTED_FILE in str(refused.value.hint)
    assert "resend" in str(refused.value.hint)
    assert "good-0" not in ingest.accepted


def test_the_file_reaching_its_bound_exactly_refuses_calls_too(
    open_spool: Callable[..., AuditSpool], tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    ingest = Ingest()
    probe = open_spool(ingest)
    probe.append(_events("bad", 1))
    _wait_for(lambda: probe.health().rejected_events == 1)
    _wait_for(lambda: probe.health().pending_events == 0)  # not sent again after it
    one = _line_size(directory)
    probe.close()
    (directory / REJECTED_FILE).unlink()

    spool = open_spool(ingest, rejected_max_bytes=2 * one)
    spool.append(_events("bad", 2))
    # both fit, nothing is held back, and the file is at its bound
    _wait_for(lambda: spool.health().rejected_full and spool.health().pending_events == 0)
    assert spool.health().rejected_bytes == 2 * one
    with pytest.raises(SpoolFull, match=REJECTED_FILE):
        spool.append(_events("good", 1))


def test_a_restart_counts_the_file_and_does_not_reset_the_bound(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    ingest = Ingest()
    with AuditSpool(directory, ingest, **FAST) as spool:
        spool.append(_events("bad", 3))
        _wait_for(lambda: spool.health().rejected_events == 3)
    size = (directory / REJECTED_FILE).stat().st_size

    with AuditSpool(directory, None, rejected_max_bytes=size, **FAST) as full:
        health = full.health()
        assert (health.rejected_bytes, health.rejected_kept, health.rejected_full) == (
            size,
            3,
            True,
        )
        assert health.rejected_events == 0  # since this spool was opened
        with pytest.raises(SpoolFull, match=REJECTED_FILE):
            full.append(_events("good", 1))
    with AuditSpool(directory, None, rejected_max_bytes=size + 1, **FAST) as roomy:
        roomy.append(_events("good", 1))
        assert not roomy.health().rejected_full


def test_a_torn_last_line_is_cut_when_the_spool_opens(tmp_path: Path) -> None:
    """A set-aside cut short by a crash (never acknowledged: the event is still in its
    segment) must not run on into the next line the spool appends."""
    directory = tmp_path / "spool"
    ingest = Ingest()
    with AuditSpool(directory, ingest, **FAST) as spool:
        spool.append(_events("bad", 2))
        _wait_for(lambda: spool.health().rejected_events == 2)
        _wait_for(lambda: spool.health().pending_events == 0)
    path = directory / REJECTED_FILE
    whole = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"rejected_at":1,"reason":"x","event":{"event_id":"torn')
    with AuditSpool(directory, ingest, **FAST) as spool:
        assert path.read_bytes() == whole
        assert spool.health().rejected_bytes == len(whole)
        spool.append(_events("bad-next", 1))
        _wait_for(lambda: spool.health().rejected_events == 1)
    ids = [k["event"]["event_id"] for k in _lines(path)]  # every line parses
    assert ids == ["bad-0", "bad-1", "bad-next-0"]


def test_a_failed_set_aside_leaves_no_half_line_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills during the write: the half line is cut off again, the event
    stays in the spool, and once the write works it is set aside whole."""
    directory = tmp_path / "spool"
    ingest = Ingest()
    real_write = os.write
    fail_next = [True]

    def disk_full(fd: int, data: Any) -> int:
        if fail_next[0] and os.readlink(f"/proc/self/fd/{fd}").endswith(REJECTED_FILE):
            fail_next[0] = False
            real_write(fd, bytes(data)[:9])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    with AuditSpool(directory, ingest, **FAST) as spool:
        spool.append(_events("bad", 1) + _events("good", 1))
        _wait_for(lambda: spool.health().rejected_events == 1 and "good-0" in ingest.accepted)
        _wait_for(lambda: spool.health().pending_events == 0)  # the batch is done
        assert spool.health().consecutive_failures == 0
    assert not fail_next[0]
    assert [k["event"]["event_id"] for k in _lines(directory / REJECTED_FILE)] == ["bad-0"]


# -- the operator's side: RejectedFile -------------------------------------------------------


def _rejected(directory: Path, *ids: str) -> Path:
    """A rejected.jsonl holding events with these ids, as the spool writes it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / REJECTED_FILE
    with open(path, "ab") as handle:
        for i, event_id in enumerate(ids):
            record = {
                "rejected_at": 1_700_000_000 + i,
                "reason": "RuntimeError: ingest answered 403 (source)",
                "event": {"event_id": event_id, "type": "tool.call", "details": {"k": BODY}},
            }
            handle.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    os.chmod(path, 0o600)
    return path


def test_resend_removes_what_is_accepted_and_keeps_what_is_refused_again(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    path = _rejected(directory, "good-0", "bad-0", "good-1", "good-2", "bad-1")
    with open(path, "ab") as handle:
        handle.write(b"not json\n")
    ingest = Ingest()
    result = RejectedFile(directory, batch=3, clock=lambda: 1_800_000_000.0).resend(ingest)
    assert (result.sent, result.refused, result.unsent, result.unreadable) == (3, 2, 0, 1)
    assert result.error is None
    assert ingest.accepted == ["good-0", "good-1", "good-2"]
    kept = path.read_bytes().splitlines()
    assert kept[-1] == b"not json"  # what cannot be read is never deleted
    again = [json.loads(line) for line in kept[:-1]]
    assert [k["event"]["event_id"] for k in again] == ["bad-0", "bad-1"]
    assert [k["retried_at"] for k in again] == [1_800_000_000.0] * 2
    assert again[0]["rejected_at"] == 1_700_000_001  # when first set aside
    assert "403" in again[0]["reason"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not (directory / (REJECTED_FILE + ".tmp")).exists()


def test_resend_of_everything_accepted_removes_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    path = _rejected(directory, "good-0", "good-1")
    result = RejectedFile(directory).resend(Ingest())
    assert (result.sent, result.kept) == (2, 0)
    assert not path.exists()


def test_resend_stops_at_a_failure_and_keeps_every_event_not_accepted(tmp_path: Path) -> None:
    """The control plane goes away after the first batch: that batch leaves the file,
    the rest stay as they were, and the reason is given (redacted)."""
    directory = tmp_path / "spool"
    path = _rejected(directory, *(f"good-{i}" for i in range(5)))
    before = path.read_bytes().splitlines()
    ingest = Ingest()

    def ship(events: list[dict[str, Any]]) -> None:
        if ingest.requests >= 1:
            ingest.failing = ConnectionError("connect to http://user:pw@cp failed")
        ingest(events)

    result = RejectedFile(directory, batch=2).resend(ship)
    assert (result.sent, result.unsent, result.refused) == (2, 3, 0)
    assert result.error is not None
    assert "ConnectionError" in result.error
    assert "pw@" not in result.error
    assert path.read_bytes().splitlines() == before[2:]


def test_a_crash_before_the_rename_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewrite is atomic: interrupted before its rename, the file is unchanged
    (the accepted events are sent again next time: ingest skips ids it stored)."""
    directory = tmp_path / "spool"
    path = _rejected(directory, "good-0", "bad-0")
    before = path.read_bytes()

    def crash(*_: Any) -> None:
        raise Crash

    monkeypatch.setattr(spool_module.os, "replace", crash)
    with pytest.raises(Crash):
        RejectedFile(directory).resend(Ingest())
    assert path.read_bytes() == before
    monkeypatch.undo()
    # the temporary file left behind is removed when a spool opens the directory
    with AuditSpool(directory, None, **FAST):
        assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_resend_and_discard_are_refused_while_a_spool_holds_the_directory(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    path = _rejected(directory, "good-0")
    before = path.read_bytes()
    ingest = Ingest()
    calls: list[list[DiscardRecord]] = []
    with AuditSpool(directory, None, **FAST):
        with pytest.raises(SpoolBusy, match="in use") as busy:
            RejectedFile(directory).resend(ingest)
        assert "Stop the gateway" in str(busy.value.hint)
        with pytest.raises(SpoolBusy):
            RejectedFile(directory).discard("ops", calls.append)
    assert path.read_bytes() == before
    assert ingest.requests == 0
    assert calls == []
    # and the other way round: while a command holds the lock, no spool opens
    fd = spool_module._lock(directory, "busy", "hint")
    try:
        with pytest.raises(SpoolBusy, match="agentiam gateway spool"):
            AuditSpool(directory, None, **FAST)
    finally:
        os.close(fd)


def test_discard_records_every_id_before_deleting_and_counts_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    ids = [f"evt-{i}" for i in range(600)]
    path = _rejected(directory, *ids)
    with open(path, "ab") as handle:
        handle.write(b"garbage\n")
    size = path.stat().st_size
    recorded: list[DiscardRecord] = []

    def record(parts: list[DiscardRecord]) -> None:
        assert path.exists()  # recorded first, deleted after
        recorded.extend(parts)

    summary = RejectedFile(directory).discard("alice", record)
    assert summary is not None
    assert (summary.events, summary.unreadable, summary.bytes, summary.by) == (
        600,
        1,
        size,
        "alice",
    )
    assert summary.reasons == {"RuntimeError: ingest answered 403 (source)": 600}
    assert [(r.part, r.parts) for r in recorded] == [(1, 3), (2, 3), (3, 3)]
    assert [i for r in recorded for i in r.event_ids] == ids
    assert not path.exists()
    counters = json.loads((directory / DISCARDED_FILE).read_bytes())
    assert (counters["events"], counters["unreadable_lines"], counters["discards"]) == (600, 1, 1)
    with AuditSpool(directory, None, **FAST) as spool:
        assert spool.health().discarded_events == 600
    assert RejectedFile(directory).discard("alice", record) is None  # nothing left


def test_discard_deletes_nothing_when_its_record_is_not_stored(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    path = _rejected(directory, "a", "b")
    before = path.read_bytes()

    def refused(_: list[DiscardRecord]) -> None:
        raise RuntimeError("ingest answered 503")

    with pytest.raises(RuntimeError):
        RejectedFile(directory).discard("alice", refused)
    assert path.read_bytes() == before
    assert not (directory / DISCARDED_FILE).exists()


def test_entries_never_show_an_event_body_and_skip_a_line_being_written(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    path = _rejected(directory, "evt-1")
    with open(path, "ab") as handle:
        handle.write(b'{"rejected_at":2,"event":{"event_id":"half')
    [entry] = RejectedFile(directory).entries()
    assert entry.event_id == "evt-1"
    assert entry.reason == "RuntimeError: ingest answered 403 (source)"
    assert BODY in path.read_text()
    assert BODY not in json.dumps(entry.to_dict())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_only_the_directory_owner_may_rewrite_the_file(tmp_path: Path) -> None:
    """root running resend on a gateway user's spool would leave rejected.jsonl
    root's, and the gateway unable to append to it: refused, nothing touched."""
    directory = tmp_path / "spool"
    path = _rejected(directory, "good-0")
    before = path.read_bytes()
    os.chown(directory, 65534, 65534)
    ingest = Ingest()
    with pytest.raises(Forbidden, match="uid 65534") as refused:
        RejectedFile(directory).resend(ingest)
    assert "sudo -u" in str(refused.value.hint)
    with pytest.raises(Forbidden):
        RejectedFile(directory).discard("root", lambda _: None)
    assert path.read_bytes() == before
    assert ingest.requests == 0


BAD_BOUNDS = [
    (1 << 19, "between 1 MiB and 1 TiB"),
    ((1 << 20) - 1, "between 1 MiB and 1 TiB"),
    ((1 << 40) + 1, "between 1 MiB and 1 TiB"),
    ("64MiB", "an integer"),
    (True, "an integer"),
    (2.0**20, "an integer"),
]


@pytest.mark.parametrize(("value", "rule"), BAD_BOUNDS)
def test_the_bound_is_a_configuration_key_checked_at_start(value: Any, rule: str) -> None:
    message = f"spool.rejected_max_bytes: {rule}"
    base = {
        "name": "gw",
        "public_url": "https://gw.example.com",
        "control_plane": {"url": "https://cp.example.com"},
        "spool": {"directory": "/var/lib/gw"},
    }
    assert load_gateway_config(base, "http", section_keys=frozenset()).spool_rejected_max_bytes == (
        64 << 20
    )
    ok = {**base, "spool": {"directory": "/var/lib/gw", "rejected_max_bytes": 2 << 20}}
    assert load_gateway_config(ok, "http", section_keys=frozenset()).spool_rejected_max_bytes == (
        2 << 20
    )
    bad = {**base, "spool": {"directory": "/var/lib/gw", "rejected_max_bytes": value}}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_gateway_config(bad, "http", section_keys=frozenset())


@pytest.mark.parametrize(("value", "rule"), BAD_BOUNDS)
def test_the_guard_checks_its_bound_as_the_gateway_does_before_connecting(
    tmp_path: Path, value: Any, rule: str
) -> None:
    """Guard.connect's spool_rejected_max_bytes: the gateway key's rule and message
    (one function), refused before anything connects or any directory is made (the
    control plane URL here answers nothing)."""
    from agentiam.adapters.gateway.guard import Guard

    with pytest.raises(ValueError, match=f"^spool_rejected_max_bytes: {rule}$"):
        Guard.connect(
            "http://127.0.0.1:9",
            resource="https://agent.example/tools",
            spool_dir=tmp_path / "spool",
            name="g",
            environ={"AGENTIAM_GUARD_KEY": "a-key"},
            spool_rejected_max_bytes=value,
        )
    assert not (tmp_path / "spool").exists()
