"""The JSONL file exporter, for real on disk: one line per entry with its log index,
appended per batch, rotated by size keeping N files, owner-only permissions, no half
line left by a failed write; and the strict exporters configuration."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agentiam.adapters.exporters import JsonlFileExporter, load_exporters
from agentiam.core.audit.formats import formatter, native


def _batch(start: int, n: int) -> list[tuple[int, dict[str, Any]]]:
    return [
        (i, {"event_id": f"evt_{i}", "type": "human.created", "pad": "x" * 40})
        for i in range(start, start + n)
    ]


def _indices(path: Path) -> list[int]:
    return [json.loads(line)["log_index"] for line in path.read_text().splitlines()]


def test_appends_lines_with_the_event_and_its_index(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    sink = JsonlFileExporter("f", path, max_bytes=1 << 20, keep=3)
    sink.deliver(_batch(0, 2))
    sink.deliver(_batch(2, 1))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"log_index": 0, "event": _batch(0, 1)[0][1]}
    assert [line["log_index"] for line in lines] == [0, 1, 2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_lines_are_the_configured_format(tmp_path: Path) -> None:
    # native is the default: each line exactly as the jsonl exporter always wrote it
    [default, cef] = load_exporters(
        [
            {"name": "native", "type": "jsonl", "path": str(tmp_path / "native.jsonl")},
            {"name": "cef", "type": "jsonl", "path": str(tmp_path / "cef.log"), "format": "cef"},
        ]
    )
    assert isinstance(default, JsonlFileExporter)
    assert isinstance(cef, JsonlFileExporter)
    assert default.formatter is native
    assert cef.formatter is formatter("cef")
    batch = _batch(0, 2)
    default.deliver(batch)
    cef.deliver(batch)
    assert (tmp_path / "native.jsonl").read_bytes() == b"".join(
        json.dumps({"log_index": i, "event": e}, sort_keys=True, separators=(",", ":")).encode()
        + b"\n"
        for i, e in batch
    )
    assert (tmp_path / "cef.log").read_text().splitlines() == [
        formatter("cef")(i, e) for i, e in batch
    ]

    # any formatter: one line per entry, the formatter's text
    custom = JsonlFileExporter(
        "f", tmp_path / "custom.log", max_bytes=1 << 20, keep=1, formatter=lambda i, e: f"{i}:é"
    )
    custom.deliver(batch)
    assert (tmp_path / "custom.log").read_text(encoding="utf-8") == "0:é\n1:é\n"


def test_rotates_by_size_and_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    line = len(json.dumps({"log_index": 0, "event": _batch(0, 1)[0][1]}, separators=(",", ":"))) + 1
    sink = JsonlFileExporter("f", path, max_bytes=line * 4 + 10, keep=2)
    for start in range(0, 20, 2):  # ten batches of two lines; a file holds two batches
        sink.deliver(_batch(start, 2))
    assert _indices(path) == [16, 17, 18, 19]
    assert _indices(tmp_path / "audit.jsonl.1") == [12, 13, 14, 15]
    assert _indices(tmp_path / "audit.jsonl.2") == [8, 9, 10, 11]
    assert not (tmp_path / "audit.jsonl.3").exists()  # older ones removed
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert p.stat().st_size <= line * 4 + 10


def test_tightens_permissions_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    os.chmod(path, 0o644)
    JsonlFileExporter("f", path, max_bytes=1 << 20, keep=1).deliver(_batch(0, 1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_leaves_no_half_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlFileExporter("f", path, max_bytes=1 << 20, keep=1)
    sink.deliver(_batch(0, 1))
    real_write = os.write

    def short_then_fail(fd: int, data: Any) -> int:
        monkeypatch.setattr(os, "write", failing)
        return real_write(fd, bytes(data)[:10])

    def failing(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(OSError, match="No space"):
        sink.deliver(_batch(1, 2))
    monkeypatch.setattr(os, "write", real_write)
    sink.deliver(_batch(1, 2))
    assert _indices(path) == [0, 1, 2]


def test_a_partial_line_left_by_a_killed_process_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed in the middle of a write leaves a partial line and its batch
    undelivered (the cursor never moved): the next delivery cuts the partial line off
    instead of joining the next entry onto it, and writes the batch again whole."""
    path = tmp_path / "audit.jsonl"
    sink = JsonlFileExporter("f", path, max_bytes=1 << 20, keep=1)
    sink.deliver(_batch(0, 2))
    whole = path.read_bytes()
    cut = native(2, _batch(2, 1)[0][1]).encode()[:25]
    with path.open("ab") as f:  # what the killed process managed to write
        f.write(cut)
    with caplog.at_level("WARNING"):
        JsonlFileExporter("f", path, max_bytes=1 << 20, keep=1).deliver(_batch(2, 2))
    assert _indices(path) == [0, 1, 2, 3]
    assert path.read_bytes().startswith(whole)
    assert f"dropped its {len(cut)} bytes" in caplog.text


def test_a_file_holding_only_a_partial_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event":' + b"x" * 200_000)  # longer than one backward read
    JsonlFileExporter("f", path, max_bytes=1 << 20, keep=1).deliver(_batch(0, 1))
    assert _indices(path) == [0]


def test_a_partial_line_is_cut_before_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlFileExporter("f", path, max_bytes=300, keep=2)
    sink.deliver(_batch(0, 2))
    with path.open("ab") as f:
        f.write(b'{"event":{"ev')
    sink.deliver(_batch(2, 2))  # rotates: the rotated file has whole lines only
    assert _indices(path.with_name("audit.jsonl.1")) == [0, 1]
    assert _indices(path) == [2, 3]


def test_config_builds_jsonl_exporters_with_defaults() -> None:
    [a, b] = load_exporters(
        [
            {"name": "siem-file", "type": "jsonl", "path": "/var/log/a.jsonl"},
            {"name": "b", "type": "jsonl", "path": "/tmp/b", "max_bytes": 4096, "keep": 3},
        ]
    )
    assert isinstance(a, JsonlFileExporter)
    assert isinstance(b, JsonlFileExporter)
    assert (a.name, a.max_bytes, a.keep) == ("siem-file", 104857600, 10)
    assert (b.max_bytes, b.keep) == (4096, 3)
    assert load_exporters(None) == []


@pytest.mark.parametrize(
    ("definitions", "message"),
    [
        ({"name": "a"}, "must hold a list"),
        (["a"], "must be a mapping"),
        ([{"type": "jsonl", "path": "/x"}], "name must be"),
        ([{"name": "Bad Name", "type": "jsonl", "path": "/x"}], "name must be"),
        (
            [{"name": "a", "type": "splunk"}],
            "unknown type 'splunk'; supported: jsonl, otel, syslog, webhook",
        ),
        ([{"name": "a", "path": "/x"}], "unknown type None; supported: jsonl"),
        ([{"name": "a", "type": "jsonl", "path": "/x", "url": "u"}], "unknown keys url"),
        ([{"name": "a", "type": "jsonl", "path": "rel.jsonl"}], "absolute file path"),
        ([{"name": "a", "type": "jsonl", "path": "/x", "keep": 0}], "keep must be"),
        ([{"name": "a", "type": "jsonl", "path": "/x", "max_bytes": True}], "max_bytes must"),
        ([{"name": "a", "type": "jsonl", "path": "/x", "max_bytes": "1"}], "max_bytes must"),
        ([{"name": "a", "type": "jsonl", "path": "/x", "format": "xml"}], "format: unknown"),
        ([{"name": "a", "type": "jsonl", "path": "/x", "format": 1}], "format must be one of"),
        (
            [
                {"name": "a", "type": "jsonl", "path": "/x"},
                {"name": "a", "type": "jsonl", "path": "/y"},
            ],
            "used twice",
        ),
    ],
)
def test_config_is_validated_strictly(definitions: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_exporters(definitions)
