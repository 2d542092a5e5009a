"""The syslog exporter over real sockets on 127.0.0.1: RFC 5424 messages read back by a
strict parser written here, one datagram each over UDP (RFC 5426), octet-counted
frames over TCP (RFC 6587 §3.4.1) and TLS (RFC 5425) with certificates made for the
test (server verification, hostname checks, mutual TLS, old protocol versions refused),
reconnection after the receiver closed, oversize messages cut with a marker, hostile
strings escaped, and the strict configuration."""

from __future__ import annotations

import json
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support.tls import CLIENT_AUTH, authority, server_context

from agentiam.adapters.exporters.syslog import SETTINGS, SyslogExporter, from_config
from agentiam.core.audit.formats import native

BOM = b"\xef\xbb\xbf"
WAIT = 2.0

# -- a strict RFC 5424 parser ----------------------------------------------------------


@dataclass
class Parsed:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: str | None
    has_bom: bool


_HEADER = re.compile(rb"^<(0|[1-9][0-9]{0,2})>([1-9][0-9]{0,2}) ")
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)


def _token(data: bytes, pos: int, most: int) -> tuple[str, int]:
    """A header field: 1..most PRINTUSASCII then SP (RFC 5424 §6)."""
    end = data.index(b" ", pos)
    raw = data[pos:end]
    assert 1 <= len(raw) <= most, raw
    assert all(0x21 <= b <= 0x7E for b in raw), raw
    return raw.decode("ascii"), end + 1


def _sd_name(data: bytes, pos: int) -> tuple[str, int]:
    """SD-NAME: 1*32 PRINTUSASCII except '=', SP, ']' and '"' (§6.3)."""
    end = pos
    while end < len(data) and 0x21 <= data[end] <= 0x7E and data[end] not in b'= ]"':
        end += 1
    assert 1 <= end - pos <= 32, data[pos : end + 1]
    return data[pos:end].decode("ascii"), end


def parse(data: bytes) -> Parsed:
    match = _HEADER.match(data)
    assert match, data[:40]
    pri, version = int(match.group(1)), int(match.group(2))
    assert pri <= 191
    pos = match.end()
    timestamp, pos = _token(data, pos, 64)
    assert timestamp == "-" or _TIMESTAMP.match(timestamp), timestamp
    hostname, pos = _token(data, pos, 255)
    app_name, pos = _token(data, pos, 48)
    procid, pos = _token(data, pos, 128)
    msgid, pos = _token(data, pos, 32)
    sd: dict[str, dict[str, str]] = {}
    if data[pos : pos + 1] == b"-":
        pos += 1
    else:
        assert data[pos : pos + 1] == b"[", data[pos:]
        while data[pos : pos + 1] == b"[":
            sd_id, pos = _sd_name(data, pos + 1)
            assert sd_id not in sd, "an SD-ID appears once (§6.3.2)"
            params: dict[str, str] = {}
            while data[pos : pos + 1] == b" ":
                name, pos = _sd_name(data, pos + 1)
                assert data[pos : pos + 2] == b'="', data[pos:]
                pos += 2
                value = bytearray()
                while True:
                    byte = data[pos : pos + 1]
                    assert byte, "unterminated PARAM-VALUE"
                    if byte == b"\\" and data[pos + 1 : pos + 2] in (b'"', b"\\", b"]"):
                        value += data[pos + 1 : pos + 2]
                        pos += 2
                    elif byte == b'"':
                        pos += 1
                        break
                    else:
                        assert byte != b"]", "']' must be escaped in a PARAM-VALUE (§6.3.3)"
                        value += byte
                        pos += 1
                params[name] = value.decode("utf-8")  # strict: valid UTF-8 only
            assert data[pos : pos + 1] == b"]", data[pos:]
            pos += 1
            sd[sd_id] = params
    if pos == len(data):
        return Parsed(pri, version, timestamp, hostname, app_name, procid, msgid, sd, None, False)
    assert data[pos : pos + 1] == b" ", data[pos:]
    rest = data[pos + 1 :]
    has_bom = rest.startswith(BOM)
    text = rest[3:].decode("utf-8") if has_bom else rest.decode("utf-8")
    return Parsed(pri, version, timestamp, hostname, app_name, procid, msgid, sd, text, has_bom)


# -- receivers -----------------------------------------------------------------------


class StreamReceiver:
    """A TCP (or TLS) syslog receiver reading RFC 6587 octet-counted frames strictly;
    ``close_after`` closes each connection once it delivered that many messages."""

    def __init__(self, tls: ssl.SSLContext | None = None, close_after: int | None = None):
        self.tls = tls
        self.close_after = close_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.connections = 0
        self.errors: list[BaseException] = []
        self.peer_subjects: list[str] = []
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        self._conns.append(conn)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self._conns.append(conn)
                cert = conn.getpeercert()
                if cert:
                    self.peer_subjects.append(str(cert["subject"]))
            self.connections += 1
            reader = conn.makefile("rb")
            count = 0
            while True:
                length = b""
                while (ch := reader.read(1)) != b" ":
                    if not ch:
                        assert not length, "a frame cut short"
                        return
                    assert ch.isdigit(), length + ch
                    assert len(length) < 8, length
                    length += ch
                assert length[:1] != b"0", "MSG-LEN has no leading zero"
                data = reader.read(int(length))
                assert len(data) == int(length), "a frame cut short"
                self.messages.put(data)
                count += 1
                if self.close_after is not None and count == self.close_after:
                    reader.close()
                    conn.close()
                    self.closed.set()
                    return
        except (OSError, AssertionError) as exc:
            self.errors.append(exc)
        finally:
            conn.close()

    def get(self, n: int) -> list[bytes]:
        return [self.messages.get(timeout=WAIT) for _ in range(n)]

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(WAIT)
        for conn in self._conns:
            conn.close()


def _closed_after(made: list[Any]) -> Iterator[list[Any]]:
    """Yield ``made`` to the test, then close whatever it put in."""
    yield made
    for thing in made:
        thing.close()


@pytest.fixture
def receivers() -> Iterator[list[StreamReceiver]]:
    yield from _closed_after([])


@pytest.fixture
def exporters() -> Iterator[list[SyslogExporter]]:
    yield from _closed_after([])


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


# -- certificates ----------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server: tuple[Path, Path]  # localhost and 127.0.0.1, by ca
    server_other_ca: tuple[Path, Path]  # the same names, by other_ca
    server_misnamed: tuple[Path, Path]  # syslog.example only, by ca
    client: tuple[Path, Path]  # clientAuth, by ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = authority(directory, "ca", "Test Syslog CA")
    other = authority(directory, "other-ca", "Another CA")
    local = ["localhost", "127.0.0.1"]
    return Pki(
        ca=ca.file,
        other_ca=other.file,
        server=ca.issue(directory, "server", local),
        server_other_ca=other.issue(directory, "server-other", local),
        server_misnamed=ca.issue(directory, "misnamed", ["syslog.example"]),
        client=ca.issue(directory, "agentiam-client", ["agentiam.example"], CLIENT_AUTH),
    )


# -- helpers ---------------------------------------------------------------------------


def event(i: int = 0, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": "1",
        "event_id": f"evt_{i:026d}",
        "time": "2026-03-04T05:06:07.123456Z",
        "type": "agent.registered",
        "outcome": "success",
        "actor": {"type": "admin_key", "id": "ak_1", "role": None},
        "action": "agent.register",
        "resource": {"type": "agent", "id": "agt_1"},
        "source": "api",
        "agent_id": "agt_01HZZ",
        "initiating_human": None,
        "delegation_chain": [],
        "decision_id": None,
        "policy_version": None,
        "risk_score": None,
        "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
        "reason": None,
        "details": {},
    }
    base.update(changes)
    return base


def listen(made: list[StreamReceiver], **options: Any) -> StreamReceiver:
    """A receiver, closed after the test (``made`` is the ``receivers`` fixture)."""
    receiver = StreamReceiver(**options)
    made.append(receiver)
    return receiver


def make(made: list[SyslogExporter], transport: str, port: int, **kwargs: Any) -> SyslogExporter:
    exporter = SyslogExporter(
        "siem",
        transport=transport,  # type: ignore[arg-type]
        host=kwargs.pop("host", "127.0.0.1"),
        port=port,
        formatter=native,
        format_name="native",
        hostname=kwargs.pop("hostname", "iam-1.example"),
        timeout=kwargs.pop("timeout", WAIT),
        **kwargs,
    )
    made.append(exporter)
    return exporter


def offline(**kwargs: Any) -> SyslogExporter:
    """An exporter that only builds messages here (UDP to port 514, never sent)."""
    return SyslogExporter(
        "s",
        transport="udp",
        host="127.0.0.1",
        port=514,
        formatter=native,
        format_name="native",
        **kwargs,
    )


def sd(parsed: Parsed) -> dict[str, str]:
    return parsed.sd["agentiam@32473"]


# -- the message -----------------------------------------------------------------------


def test_udp_sends_one_rfc5424_message_per_datagram(
    udp: socket.socket, exporters: list[SyslogExporter]
) -> None:
    exporter = make(exporters, "udp", udp.getsockname()[1])
    batch = [(7, event(7)), (8, event(8, agent_id=None)), (9, event(9))]
    exporter.deliver(batch)
    got = [parse(udp.recv(65535)) for _ in batch]
    first = got[0]
    assert first.pri == 10 * 8 + 5  # authpriv.notice
    assert first.version == 1
    assert first.timestamp == "2026-03-04T05:06:07.123456Z"
    assert (first.hostname, first.app_name, first.msgid) == (
        "iam-1.example",
        "agentiam",
        "agent.registered",
    )
    assert first.procid.isdigit()
    assert list(first.sd) == ["agentiam@32473"]
    assert sd(first) == {
        "logIndex": "7",
        "eventId": "evt_" + "0" * 25 + "7",
        "eventType": "agent.registered",
        "outcome": "success",
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "agentId": "agt_01HZZ",
        "format": "native",
    }
    assert first.has_bom
    assert first.msg == native(7, batch[0][1])
    assert json.loads(first.msg) == {"log_index": 7, "event": batch[0][1]}
    assert [sd(p)["logIndex"] for p in got] == ["7", "8", "9"]
    assert "agentId" not in sd(got[1])  # a missing value leaves its parameter out
    assert exporter.truncated == 0


@pytest.mark.parametrize(
    ("kind", "outcome", "severity"),
    [
        ("agent.registered", "success", 5),
        ("authz.decision", "denied", 4),
        ("token.issued", "failure", 3),
        ("detection.anomaly", "success", 1),
        ("detection.burst", "denied", 1),
        ("agent.registered", "weird", 4),
        ("agent.registered", None, 4),
    ],
)
def test_severity_from_outcome_and_type(kind: str, outcome: Any, severity: int) -> None:
    exporter = offline()
    parsed = parse(exporter.message(1, event(type=kind, outcome=outcome)))
    assert parsed.pri == 10 * 8 + severity


@pytest.mark.parametrize(("facility", "code"), [("authpriv", 10), ("auth", 4), ("local5", 21)])
def test_facility_by_name(facility: str, code: int) -> None:
    exporter = offline(facility=facility)
    assert parse(exporter.message(1, event(outcome="denied"))).pri == code * 8 + 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-04T05:06:07.123456Z", "2026-03-04T05:06:07.123456Z"),
        ("2026-03-04T05:06:07Z", "2026-03-04T05:06:07Z"),
        ("2026-03-04T07:06:07.5+02:00", "2026-03-04T05:06:07.500000Z"),
        ("2026-03-04T05:06:07", "2026-03-04T05:06:07Z"),
        ("yesterday", "-"),
        ("0001-01-01T00:00:00+01:00", "-"),
        (None, "-"),
        (12, "-"),
    ],
)
def test_timestamp_is_the_event_time_in_utc(value: Any, expected: str) -> None:
    exporter = offline()
    assert parse(exporter.message(1, event(time=value))).timestamp == expected


def test_hostile_strings_are_escaped_and_bounded(
    receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    receiver = listen(receivers)
    exporter = make(exporters, "tcp", receiver.port, enterprise_id="12345.7")
    hostile_type = 'detection."]\\ \u00e9\u6f22\n\x00\x7f\u0085' + "T" * 300
    quoted = 'evt_"quoted"]\\[x] \\"'
    surrogate = "agt_\ud800x"
    batch = [
        (
            1,
            event(
                1,
                type=hostile_type,
                event_id=quoted,
                agent_id=surrogate,
                trace={"trace_id": "\u00e9" * 200, "span_id": "x"},
                outcome='den"ied]',
                details={"note": "line\nbreak \u2028 \ud800"},
            ),
        ),
        (2, event(2, trace="not a mapping", event_id=12345, agent_id=["a"])),
    ]
    exporter.deliver(batch)
    first, second = (parse(m) for m in receiver.get(2))
    params = first.sd["agentiam@12345.7"]
    # §6.3.3 escapes round-trip exactly
    assert params["eventId"] == quoted
    assert params["outcome"] == 'den"ied]'
    # control characters and lone surrogates become U+FFFD, values stop at 128 octets
    clean_type = 'detection."]\\ \u00e9\u6f22\ufffd\ufffd\ufffd\ufffd' + "T" * 300
    assert clean_type.startswith(params["eventType"])
    assert len(params["eventType"]) > 100
    escaped = params["eventType"].replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    assert 120 < len(escaped.encode()) <= 128
    assert params["agentId"] == "agt_\ufffdx"
    assert params["traceId"] == "\u00e9" * 64  # 2 octets each, cut between characters
    # the header fields are PRINTUSASCII, cut to their limits
    assert first.msgid == ('detection."]\\' + "_" * 7 + "T" * 300)[:32]
    assert first.pri == 10 * 8 + 1  # still a detection
    # MSG is the formatter's text (lone surrogates replaced), BOM first
    assert first.has_bom
    assert first.msg == native(1, batch[0][1]).replace("\ud800", "\ufffd")
    # non-scalar members are left out, numbers written as text
    assert second.sd["agentiam@12345.7"]["eventId"] == "12345"
    assert "traceId" not in second.sd["agentiam@12345.7"]
    assert "agentId" not in second.sd["agentiam@12345.7"]
    assert not receiver.errors


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_unicode_line_separators_never_reach_a_value_or_a_header(separator: str) -> None:
    """A log viewer or JSON-lines tool may break a line on U+2028, U+2029 or NEL."""
    exporter = offline()
    data = exporter.message(
        1,
        event(
            event_id=f"evt{separator}x",
            type=f"agent{separator}registered",
            outcome=f"ok{separator}",
            agent_id=f"{separator}agt",
            trace={"trace_id": f"t{separator}", "span_id": "s"},
        ),
    )
    head, _, msg = data.partition(BOM)
    assert separator.encode() not in head
    parsed = parse(data)
    assert sd(parsed)["eventId"] == "evt\ufffdx"
    assert sd(parsed)["eventType"] == "agent\ufffdregistered"
    assert sd(parsed)["agentId"] == "\ufffdagt"
    assert sd(parsed)["traceId"] == "t\ufffd"
    assert parsed.msgid == "agent_registered"
    assert json.loads(msg)["event"]["event_id"] == f"evt{separator}x"  # MSG is as stored


def test_hostname_default_is_sanitized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "my host\u00e9" + "h" * 300)
    exporter = offline()
    assert exporter.hostname == ("my_host_" + "h" * 300)[:255]
    assert parse(exporter.message(1, event())).hostname == exporter.hostname


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_oversize_message_is_cut_marked_and_counted(
    transport: str,
    udp: socket.socket,
    receivers: list[StreamReceiver],
    exporters: list[SyslogExporter],
) -> None:
    big = event(3, details={"text": "\u00e9" * 3000 + "a" * 10})
    full = native(3, big).encode()
    if transport == "udp":
        exporter = make(exporters, "udp", udp.getsockname()[1], max_message=2048)
        exporter.deliver([(3, big), (4, event(4))])
        data, small = udp.recv(65535), udp.recv(65535)
    else:
        receiver = listen(receivers)
        exporter = make(exporters, "tcp", receiver.port, max_message=2048)
        exporter.deliver([(3, big), (4, event(4))])
        data, small = receiver.get(2)
    assert 2040 <= len(data) <= 2048
    parsed = parse(data)  # still valid UTF-8: cut between characters
    assert sd(parsed)["truncated"] == str(len(full))
    assert parsed.msg is not None
    assert full.decode().startswith(parsed.msg)
    assert "truncated" not in sd(parse(small))
    assert exporter.truncated == 1


# -- TCP -------------------------------------------------------------------------------


def test_tcp_octet_counted_frames_on_one_connection(
    receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    receiver = listen(receivers)
    exporter = make(exporters, "tcp", receiver.port)
    exporter.deliver([(i, event(i)) for i in range(3)])
    exporter.deliver([(i, event(i)) for i in range(3, 5)])
    exporter.deliver([])
    got = [parse(m) for m in receiver.get(5)]
    assert [sd(p)["logIndex"] for p in got] == ["0", "1", "2", "3", "4"]
    assert [p.msg for p in got] == [native(i, event(i)) for i in range(5)]
    assert receiver.connections == 1
    assert exporter.connections == 1
    assert not receiver.errors


def test_tcp_receiver_down_raises(exporters: list[SyslogExporter]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it once closed
    exporter = make(exporters, "tcp", port)
    with pytest.raises(ConnectionError, match=f"syslog over tcp to 127.0.0.1:{port}"):
        exporter.deliver([(0, event())])
    assert exporter.connections == 0


@pytest.mark.parametrize("tls", [False, True])
def test_a_receiver_that_closed_between_batches_gets_the_next_one_on_a_new_connection(
    tls: bool, pki: Pki, receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    context = server_context(pki.server) if tls else None
    receiver = listen(receivers, tls=context, close_after=2)
    options: dict[str, Any] = {"ca_file": pki.ca} if tls else {}
    exporter = make(exporters, "tls" if tls else "tcp", receiver.port, **options)
    exporter.deliver([(0, event(0)), (1, event(1))])
    assert [sd(parse(m))["logIndex"] for m in receiver.get(2)] == ["0", "1"]
    assert receiver.closed.wait(WAIT)
    exporter.deliver([(2, event(2)), (3, event(3))])  # noticed before writing: reconnects
    assert [sd(parse(m))["logIndex"] for m in receiver.get(2)] == ["2", "3"]
    assert receiver.connections == 2
    assert exporter.connections == 2


class _BrokenSocket:
    """Open and silent, but every write fails (a reset in the middle of a batch)."""

    def __init__(self) -> None:
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def settimeout(self, value: float) -> None:
        pass

    def recv(self, size: int, flags: int = 0) -> bytes:
        raise BlockingIOError

    def send(self, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def close(self) -> None:
        self.closed = True


def test_a_write_error_drops_the_connection_and_the_retry_reconnects(
    receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    receiver = listen(receivers)
    exporter = make(exporters, "tcp", receiver.port)
    exporter.deliver([(0, event(0))])
    real, broken = exporter._sock, _BrokenSocket()
    assert real is not None
    exporter._sock = broken  # type: ignore[assignment]
    try:
        with pytest.raises(ConnectionError, match="Broken pipe"):
            exporter.deliver([(1, event(1))])
    finally:
        real.close()
    assert broken.closed
    assert exporter._sock is None
    exporter.deliver([(1, event(1))])
    # two connections, read by two threads of the receiver: either may come first
    assert sorted(sd(parse(m))["logIndex"] for m in receiver.get(2)) == ["0", "1"]
    assert exporter.connections == 2


# -- TLS -------------------------------------------------------------------------------


class _SlowTlsReceiver:
    """A TLS receiver that reads 4 KiB every 20 ms (a receiver falling behind, or one
    stalling on purpose) for at most ``patience`` seconds, then closes."""

    def __init__(self, context: ssl.SSLContext, patience: float) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port: int = self.listener.getsockname()[1]
        self.context = context
        self.patience = patience
        self.stop = threading.Event()
        self.read = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(self.patience)
                ends = time.monotonic() + self.patience
                while not self.stop.is_set() and time.monotonic() < ends:
                    data = tls.recv(4096)
                    if not data:
                        return
                    self.read += len(data)
                    time.sleep(0.02)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        self.listener.close()


def test_tls_a_slow_reader_cannot_stall_a_batch_past_the_timeout(
    pki: Pki, exporters: list[SyslogExporter]
) -> None:
    """``timeout`` bounds the batch, not each TLS record: SSLSocket.sendall gives every
    send of its loop the whole timeout, so a receiver that keeps reading a little held
    the exporter for as long as it liked."""
    receiver = _SlowTlsReceiver(server_context(pki.server), patience=6.0)
    try:
        exporter = make(
            exporters, "tls", receiver.port, ca_file=pki.ca, timeout=0.5, max_message=1 << 20
        )
        pad = "x" * 900_000
        batch = [(i, event(i, details={"pad": pad})) for i in range(12)]  # ~11 MB
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=r"not written within 0\.5 s"):
            exporter.deliver(batch)
        elapsed = time.monotonic() - started
        assert elapsed < 2.5
        assert receiver.read > 0  # it was reading, slowly
        assert exporter._sock is None  # dropped: a frame was cut
    finally:
        receiver.close()


def test_tls_verifies_the_server_and_delivers(
    pki: Pki, receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    receiver = listen(receivers, tls=server_context(pki.server))
    exporter = make(exporters, "tls", receiver.port, ca_file=pki.ca)
    exporter.deliver([(0, event(0)), (1, event(1, outcome="failure"))])
    exporter.deliver([(2, event(2))])
    got = [parse(m) for m in receiver.get(3)]
    assert [sd(p)["logIndex"] for p in got] == ["0", "1", "2"]
    assert got[1].pri == 10 * 8 + 3
    assert receiver.connections == 1
    assert exporter._sock is not None
    assert isinstance(exporter._sock, ssl.SSLSocket)
    assert exporter._sock.version() in ("TLSv1.2", "TLSv1.3")


def test_tls_by_host_name(
    pki: Pki, receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    receiver = listen(receivers, tls=server_context(pki.server))
    exporter = make(exporters, "tls", receiver.port, host="localhost", ca_file=pki.ca)
    exporter.deliver([(0, event(0))])
    assert sd(parse(receiver.get(1)[0]))["logIndex"] == "0"


@pytest.mark.parametrize("certificate", ["server_other_ca", "server_misnamed"])
def test_tls_refuses_an_untrusted_or_misnamed_server_certificate(
    certificate: str, pki: Pki, receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    receiver = listen(receivers, tls=server_context(getattr(pki, certificate)))
    exporter = make(exporters, "tls", receiver.port, ca_file=pki.ca)
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        exporter.deliver([(0, event(0))])
    assert exporter.connections == 0
    assert exporter._sock is None
    assert receiver.messages.empty()
    if certificate == "server_misnamed":
        # the same server, with the name it does have: server_name overrides host
        named = make(exporters, "tls", receiver.port, ca_file=pki.ca, server_name="syslog.example")
        named.deliver([(0, event(0))])
        assert sd(parse(receiver.get(1)[0]))["logIndex"] == "0"


@pytest.mark.parametrize(
    "maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_mutual_tls(
    maximum: ssl.TLSVersion,
    pki: Pki,
    receivers: list[StreamReceiver],
    exporters: list[SyslogExporter],
) -> None:
    context = server_context(pki.server, client_ca=pki.ca, maximum=maximum)
    receiver = listen(receivers, tls=context)
    cert, key = pki.client
    exporter = make(exporters, "tls", receiver.port, ca_file=pki.ca, cert_file=cert, key_file=key)
    exporter.deliver([(0, event(0))])
    assert sd(parse(receiver.get(1)[0]))["logIndex"] == "0"
    assert "agentiam-client" in receiver.peer_subjects[0]
    # without a client certificate the server refuses: an error, never a silent loss
    # (in TLS 1.3 the client's handshake ends before the server's verdict)
    anonymous = make(exporters, "tls", receiver.port, ca_file=pki.ca)
    with pytest.raises(ConnectionError):
        anonymous.deliver([(1, event(1))])
    assert anonymous.connections == 0
    assert receiver.messages.empty()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_refuses_a_server_that_speaks_only_tls_1_1(
    pki: Pki, receivers: list[StreamReceiver], exporters: list[SyslogExporter]
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot serve TLS 1.1")
    context.load_cert_chain(*pki.server)
    receiver = listen(receivers, tls=context)
    # control: a client that allows TLS 1.1 does connect to it
    permissive = ssl.create_default_context(cafile=str(pki.ca))
    permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with (
            socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as raw,
            permissive.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            assert conn.version() == "TLSv1.1"
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot speak TLS 1.1")
    exporter = make(exporters, "tls", receiver.port, ca_file=pki.ca)
    with pytest.raises(ConnectionError):
        exporter.deliver([(0, event(0))])
    assert receiver.messages.empty()


# -- configuration ---------------------------------------------------------------------


def test_from_config_defaults() -> None:
    exporter = from_config("siem", {"name": "siem", "type": "syslog", "host": "logs.example"})
    assert exporter.name == "siem"
    assert exporter.kind == "syslog"
    assert (exporter.transport, exporter.port) == ("tls", 6514)
    assert exporter.format_name == "native"
    assert (exporter.facility, exporter.app_name, exporter.enterprise_id) == (
        "authpriv",
        "agentiam",
        "32473",
    )
    assert (exporter.timeout, exporter.max_message) == (10.0, 8192)
    assert exporter.server_name == "logs.example"
    assert from_config("u", {"host": "h", "transport": "udp"}).port == 514
    assert from_config("t", {"host": "h", "transport": "tcp"}).port == 514


def test_from_config_takes_every_setting(pki: Pki) -> None:
    entry = {
        "transport": "tls",
        "host": "127.0.0.1",
        "port": 16514,
        "format": "native",
        "hostname": "iam-1",
        "app_name": "agentiam-prod",
        "facility": "local4",
        "enterprise_id": 12345,
        "timeout": 2.5,
        "max_message": 65536,
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client[0]),
        "key_file": str(pki.client[1]),
        "server_name": "localhost",
    }
    assert set(entry) == SETTINGS
    exporter = from_config("siem", entry)
    assert (exporter.port, exporter.hostname, exporter.app_name) == (
        16514,
        "iam-1",
        "agentiam-prod",
    )
    assert (exporter.facility, exporter.enterprise_id, exporter.timeout) == ("local4", "12345", 2.5)
    assert (exporter.max_message, exporter.server_name) == (65536, "localhost")
    parsed = parse(exporter.message(0, event()))
    assert parsed.pri == 20 * 8 + 5
    assert "agentiam@12345" in parsed.sd


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"transport": "http"}, "transport"),
        ({"host": None}, "host"),
        ({"host": "two words"}, "host"),
        ({"host": 7}, "host"),
        ({"port": 0}, "port"),
        ({"port": "514"}, "port"),
        ({"port": True}, "port"),
        ({"format": "xml"}, "format"),
        ({"format": 3}, "format"),
        ({"facility": "local8"}, "facility"),
        ({"facility": 10}, "facility"),
        ({"enterprise_id": "acme"}, "enterprise_id"),
        ({"enterprise_id": "0"}, "enterprise_id"),
        ({"enterprise_id": "1" * 30}, "enterprise_id"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": 301}, "timeout"),
        ({"max_message": 100}, "max_message"),
        ({"max_message": 70_000}, "max_message"),
        ({"max_message": True}, "max_message"),
        ({"hostname": "a b"}, "hostname"),
        ({"hostname": ""}, "hostname"),
        ({"hostname": "h" * 256}, "hostname"),
        ({"hostname": "h\u00e9"}, "hostname"),
        ({"app_name": "a" * 49}, "app_name"),
        ({"ca_file": "/etc/ssl/ca.pem"}, "ca_file"),  # with transport udp
        ({"transport": "tls", "ca_file": "relative.pem"}, "ca_file"),
        ({"transport": "tls", "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"transport": "tls", "key_file": "/k.pem"}, "key_file"),
        ({"transport": "tls", "server_name": "bad name"}, "server_name"),
        ({"transport": "tcp", "server_name": "ok"}, "server_name"),
        ({"colour": "blue"}, "unknown keys colour"),
    ],
)
def test_from_config_refuses_bad_values(changes: dict[str, Any], key: str) -> None:
    entry = {"transport": "udp", "host": "127.0.0.1", **changes}
    with pytest.raises(ValueError, match=key):
        from_config("siem", entry)


def test_a_bad_client_key_is_refused_without_its_contents(pki: Pki, tmp_path: Path) -> None:
    bogus = tmp_path / "client.key"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRETVALUE\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="cert_file and key_file") as caught:
        from_config(
            "siem",
            {"host": "h", "cert_file": str(pki.client[0]), "key_file": str(bogus)},
        )
    assert "SUPERSECRETVALUE" not in str(caught.value)
    # an encrypted key is refused too, never prompted for
    key = serialization.load_pem_private_key(pki.client[1].read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    with pytest.raises(ValueError, match="the private key is encrypted"):
        from_config(
            "siem",
            {"host": "h", "cert_file": str(pki.client[0]), "key_file": str(encrypted)},
        )
