"""No acknowledged audit event is lost when a gateway is killed with SIGKILL while it
appends to its spool.

A real Python process opens an :class:`AuditSpool` whose control plane is unreachable
(every ship fails) and appends from several threads, printing each event id once its
``append`` returned (acknowledged). While appends are in flight it is killed with
SIGKILL: no shutdown, possibly in the middle of a write. A new spool on the same
directory must cut any torn last line and ship every acknowledged event, each
thread's events in the order they were appended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentiam.adapters.gateway.spool import AuditSpool

pytestmark = pytest.mark.e2e

THREADS = 6
KILL_AFTER = 1500  # acknowledged events before the kill

CHILD = """
import sys, threading
from agentiam.adapters.gateway.spool import AuditSpool

def ship(events):
    raise ConnectionError("control plane unreachable")

spool = AuditSpool(sys.argv[1], ship, segment_bytes=256 * 1024, backoff_initial=0.05,
                   backoff_max=0.05)
out = threading.Lock()

def worker(t):
    n = 0
    while True:
        events = [{"event_id": f"{t}-{n}-{i}", "pad": "x" * 3000} for i in range(1 + n % 4)]
        spool.append(events)
        with out:
            sys.stdout.write("".join(e["event_id"] + "\\n" for e in events))
            sys.stdout.flush()
        n += 1

for t in range(int(sys.argv[2])):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def _order_key(event_id: str) -> tuple[int, int]:
    _, n, i = event_id.split("-")
    return int(n), int(i)


def test_sigkill_while_appending_loses_nothing_acknowledged(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(THREADS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while len(acknowledged) < KILL_AFTER:
            assert time.monotonic() < deadline, "the child did not acknowledge in time"
            line = proc.stdout.readline()
            if not line:
                _, err = proc.communicate(timeout=5)
                raise AssertionError("the child exited: " + err.decode(errors="replace"))
            acknowledged.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)  # appends are still in flight
        rest, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # only complete lines: a line cut by the kill was never fully printed
    acknowledged += [line for line in rest.decode().split("\n")[:-1] if line]

    shipped: list[dict[str, Any]] = []
    with AuditSpool(directory, shipped.extend, backoff_initial=0.01) as spool:
        assert spool.drain(20)
        assert spool.health().corrupt_lines == 0
    ids = [e["event_id"] for e in shipped]
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events were lost"
    for t in range(THREADS):
        mine = [i for i in dict.fromkeys(ids) if i.startswith(f"{t}-")]
        assert mine == sorted(mine, key=_order_key), f"thread {t}'s events out of order"
    for path in directory.glob("*.jsonl"):  # what is left ends on a whole line
        data = path.read_bytes()
        assert not data or data.endswith(b"\n")
