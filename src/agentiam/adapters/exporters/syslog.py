"""The syslog exporter: each trail entry as one RFC 5424 message, over UDP (RFC 5426),
TCP (RFC 6587 octet counting) or TLS (RFC 5425).

The message (RFC 5424 §6)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [agentiam@32473 …] BOM MSG

- ``PRI`` (§6.2.1) is ``facility * 8 + severity``. The facility is configured by name
  (default ``authpriv``, 10: audit records name identities, and syslog daemons keep
  ``authpriv`` in an owner-only file). The severity comes from the event: see
  :func:`severity`.
- ``TIMESTAMP`` (§6.2.3) is the event's own ``time`` in UTC with microseconds, not the
  time of sending (a redelivered entry keeps its time); ``-`` when the event has none.
- ``HOSTNAME``, ``APP-NAME``, ``PROCID`` and ``MSGID`` (§6.2.4-§6.2.7) are printable
  US-ASCII cut to 255, 48, 128 and 32 characters, any other character replaced by
  ``_``, and ``-`` when empty. ``PROCID`` is the exporting process id; ``MSGID`` is the
  event type.
- ``STRUCTURED-DATA`` (§6.3) is one element, ``agentiam@<enterprise_id>`` (32473 is
  the example number of RFC 5612, configurable), whose parameters say what the entry
  is without parsing MSG: ``logIndex`` (the key to deduplicate on), ``eventId``,
  ``eventType``, ``outcome``, ``traceId``, ``agentId``, ``format`` and, on a cut
  message, ``truncated``. A missing value leaves its parameter out. Values are
  escaped per §6.3.3 (``"``, ``\\`` and ``]`` get a backslash); control characters
  (C0, DEL and C1, NEL included), U+2028 and U+2029 and lone surrogates become
  U+FFFD (so a value cannot break a line-based log file);
  each value is cut to 128 octets. RFC 5424's own ``meta sequenceId`` (§7.3.1) is not
  sent: it wraps at 2^31-1 and counts sends, not entries, while ``logIndex`` never
  wraps and shows gaps directly.
- ``MSG`` (§6.4) is a UTF-8 byte order mark and the configured formatter's text.

A message longer than ``max_message`` octets has its MSG cut at a character boundary
so that the whole message fits, gets ``truncated="<original MSG octets>"`` and is
counted in :attr:`SyslogExporter.truncated`; it is never refused, because a refused
entry would stop the exporter on it for good. The full event is in the trail under its
``logIndex``.

Delivery: a batch is sent in log order and :meth:`SyslogExporter.deliver` returns
once all of it was written. Over UDP that only means the datagrams left this host:
RFC 5426 has no acknowledgement, so a lost datagram is lost silently (§3.6). Over TCP
and TLS it means the whole batch was written, within ``timeout`` for all of it (one
deadline for the batch, however slowly the receiver reads), on a connection that was
open and silent when the batch started (a receiver never speaks on a syslog
connection, RFC 6587 §3.4, RFC 5425 §4.3), so a receiver that closed the kept
connection is noticed before the batch is written, and the exporter reconnects.
Neither has application-level acknowledgements, so a receiver that crashes after the
kernel took the data can still lose it; the entries are not redelivered then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from agentiam.adapters.exporters._config import (
    check_keys,
    integer,
    optional_path,
    seconds,
    wire_format,
)
from agentiam.adapters.tls import tls_context
from agentiam.core.audit.formats import Formatter

__all__ = [
    "FACILITIES",
    "SETTINGS",
    "SyslogExporter",
    "Transport",
    "from_config",
    "severity",
]

logger = logging.getLogger(__name__)

Transport = Literal["udp", "tcp", "tls"]
_TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")

# RFC 5424 §6.2.1, table 1 (names as syslog daemons spell them).
FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "clock": 15,
    **{f"local{n}": 16 + n for n in range(8)},
}

# RFC 5424 §6.2.1, table 2
ALERT, ERROR, WARNING, NOTICE = 1, 3, 4, 5

# Default ports: RFC 5426 §3.3 (UDP 514), RFC 5425 §4.1 (TLS 6514); RFC 6587 has none
# assigned, and 514 is what TCP receivers listen on by convention.
DEFAULT_PORTS: dict[Transport, int] = {"udp": 514, "tcp": 514, "tls": 6514}
DEFAULT_MAX_MESSAGE = 8192  # RFC 5425 §4.3.1: receivers SHOULD accept 8192 octets
MIN_MAX_MESSAGE = 2048  # RFC 5425 §4.3.1 MUST, RFC 5426 §3.2 SHOULD
# RFC 5426 §3.2: the largest UDP payload over IPv6 (IPv4 allows 65,507)
MAX_UDP_MESSAGE = 65_487
MAX_STREAM_MESSAGE = 1 << 20
DEFAULT_TIMEOUT = 10.0
DEFAULT_ENTERPRISE_ID = "32473"  # RFC 5612: the enterprise number for documentation

# After a TLS 1.3 handshake the client has sent its certificate but not heard the
# server's verdict (RFC 8446 §4.4.2); wait this long at most for it, see _confirm.
_VERDICT_WAIT = 1.0
_SD_VALUE_MAX = 128  # octets of one escaped SD-PARAM value
_SD_NAME = "agentiam"
_BOM = b"\xef\xbb\xbf"

_PRINTUSASCII = re.compile(r"^[\x21-\x7e]+$")
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
# C0, DEL, C1 (NEL, U+0085, among them), the line and paragraph separators (a log
# viewer or a JSON-lines tool may break a line on them) and lone surrogates
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_ENTERPRISE_ID = re.compile(r"^[1-9][0-9]{0,9}(\.[0-9]{1,9})*$")
_HOST = re.compile(r"^[A-Za-z0-9._:%-]{1,253}$")

SETTINGS = frozenset(
    {
        "transport",
        "host",
        "port",
        "format",
        "hostname",
        "app_name",
        "facility",
        "enterprise_id",
        "timeout",
        "max_message",
        "ca_file",
        "cert_file",
        "key_file",
        "server_name",
    }
)
_TLS_ONLY = ("ca_file", "cert_file", "key_file", "server_name")


def severity(event: Mapping[str, Any]) -> int:
    """The RFC 5424 severity (§6.2.1, table 2) of an event.

    ``detection.*`` events (behavioural alerts) are 1, alert: someone should act now,
    whatever their outcome. Otherwise by ``outcome``: ``failure`` is 3, error;
    ``denied`` is 4, warning; ``success`` is 5, notice (every audit record is a
    "normal but significant condition"). An event without a known outcome is 4,
    warning, so a malformed record is not filed away as routine.
    """
    kind = event.get("type")
    if isinstance(kind, str) and kind.startswith("detection."):
        return ALERT
    return {"success": NOTICE, "denied": WARNING, "failure": ERROR}.get(
        str(event.get("outcome")), WARNING
    )


def _header_field(value: str, limit: int) -> str:
    """A header field of RFC 5424 §6: PRINTUSASCII, at most ``limit``, ``-`` if empty."""
    return _NOT_PRINTUSASCII.sub("_", value)[:limit] or "-"


def _timestamp(value: Any) -> str:
    """RFC 5424 §6.2.3: ``FULL-DATE "T" FULL-TIME`` in UTC, ``-`` when unknown."""
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # the trail writes UTC
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):  # not a time, or out of range once in UTC
        return "-"
    frac = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}{frac}Z"


def _param_value(value: str) -> bytes:
    """An SD-PARAM value (RFC 5424 §6.3.3): ``"``, ``\\`` and ``]`` escaped, control
    characters, line and paragraph separators and lone surrogates replaced by U+FFFD,
    cut to ``_SD_VALUE_MAX`` octets
    between characters (never inside an escape or a UTF-8 sequence)."""
    out = bytearray()
    for char in _UNSAFE_TEXT.sub("\ufffd", value):
        piece = ("\\" + char if char in '"\\]' else char).encode()
        if len(out) + len(piece) > _SD_VALUE_MAX:
            break
        out += piece
    return bytes(out)


def _text(value: Any) -> str | None:
    """A scalar event member as SD-PARAM text; ``None`` (left out) for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


class SyslogExporter:
    """Delivers audit entries to a syslog receiver; see the module docstring.

    One caller at a time (the export runner serialises deliveries per exporter; a lock
    makes concurrent calls wait). TCP and TLS keep one connection across batches and
    drop it on any error, so the next delivery reconnects. ``timeout`` bounds the
    connect, the TLS handshake and the writing of one batch as a whole (name resolution
    uses the system resolver and its own timeouts).
    """

    kind = "syslog"

    def __init__(
        self,
        name: str,
        *,
        transport: Transport,
        host: str,
        port: int,
        formatter: Formatter,
        format_name: str,
        hostname: str | None = None,
        app_name: str = "agentiam",
        facility: str = "authpriv",
        enterprise_id: str = DEFAULT_ENTERPRISE_ID,
        timeout: float = DEFAULT_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> None:
        """``hostname`` defaults to this machine's name (RFC 5424 §6.2.4); the TLS
        options: ``ca_file`` (PEM CAs to trust; the system's CAs when unset),
        ``cert_file``/``key_file`` (a client certificate for receivers that require
        one; the key in ``cert_file`` when ``key_file`` is unset, and unencrypted) and
        ``server_name`` (the name to verify and send as SNI instead of ``host``).
        The server certificate and its name are always verified; TLS 1.2 at least."""
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(_TRANSPORTS)}")
        if not 1 <= port <= 65535:
            raise ValueError("port must be between 1 and 65535")
        limit = MAX_UDP_MESSAGE if transport == "udp" else MAX_STREAM_MESSAGE
        if not MIN_MAX_MESSAGE <= max_message <= limit:
            raise ValueError(f"max_message must be between {MIN_MAX_MESSAGE} and {limit}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if facility not in FACILITIES:
            raise ValueError(f"facility must be one of {', '.join(FACILITIES)}")
        sd_id = f"{_SD_NAME}@{enterprise_id}"
        if not _ENTERPRISE_ID.match(enterprise_id) or len(sd_id) > 32:
            raise ValueError(
                "enterprise_id must be a private enterprise number (digits, optionally "
                f"dotted), at most {32 - len(_SD_NAME) - 1} characters"
            )
        for key, value, most in (("hostname", hostname, 255), ("app_name", app_name, 48)):
            if value is not None and (len(value) > most or not _PRINTUSASCII.match(value)):
                raise ValueError(f"{key} must be 1-{most} printable US-ASCII characters")
        if transport != "tls" and any((ca_file, cert_file, key_file, server_name)):
            raise ValueError("ca_file, cert_file, key_file and server_name need transport tls")
        if key_file is not None and cert_file is None:
            raise ValueError("key_file needs cert_file")
        self._name = name
        self.transport: Transport = transport
        self.host = host
        self.port = port
        self.format_name = format_name
        self.hostname = hostname or _header_field(socket.gethostname(), 255)
        self.app_name = app_name
        self.facility = facility
        self.enterprise_id = enterprise_id
        self.timeout = float(timeout)
        self.max_message = max_message
        self.server_name = server_name or host
        # messages whose MSG was cut to fit max_message (redeliveries count again)
        self.truncated = 0
        # connections opened (TCP and TLS), for health and tests
        self.connections = 0
        self._formatter = formatter
        self._sd_id = sd_id.encode()
        self._facility_code = FACILITIES[facility]
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        # RFC 5425 §5: the server is authenticated by its certificate (chained to
        # ca_file or the system's CAs) and its name
        self._context = tls_context(ca_file, cert_file, key_file) if transport == "tls" else None

    @property
    def name(self) -> str:
        return self._name

    # -- the message ---------------------------------------------------------------

    def message(self, log_index: int, event: Mapping[str, Any]) -> bytes:
        """The RFC 5424 message of one entry, at most ``max_message`` octets."""
        pri = self._facility_code * 8 + severity(event)
        kind = event.get("type")
        head = " ".join(
            (
                f"<{pri}>1",
                _timestamp(event.get("time")),
                self.hostname,
                self.app_name,
                _header_field(str(os.getpid()), 128),
                _header_field(kind if isinstance(kind, str) else "", 32),
            )
        ).encode()
        trace = event.get("trace")
        params: list[tuple[str, str | None]] = [
            ("logIndex", str(log_index)),
            ("eventId", _text(event.get("event_id"))),
            ("eventType", _text(kind)),
            ("outcome", _text(event.get("outcome"))),
            ("traceId", _text(trace.get("trace_id")) if isinstance(trace, Mapping) else None),
            ("agentId", _text(event.get("agent_id"))),
            ("format", self.format_name),
        ]
        text = self._formatter(log_index, event)
        body = _SURROGATES.sub("\ufffd", text).encode()
        whole = head + b" " + self._structured_data(params) + b" " + _BOM + body
        if len(whole) <= self.max_message:
            return whole
        params.append(("truncated", str(len(body))))
        prefix = head + b" " + self._structured_data(params) + b" " + _BOM
        room = max(self.max_message - len(prefix), 0)
        # body is valid UTF-8, so only a sequence cut at the end can be broken
        cut = body[:room].decode("utf-8", "ignore").encode()
        self.truncated += 1
        logger.warning(
            "syslog exporter %s: entry %d cut from %d to %d octets (max_message %d)",
            self._name,
            log_index,
            len(whole),
            len(prefix) + len(cut),
            self.max_message,
        )
        return prefix + cut

    def _structured_data(self, params: Sequence[tuple[str, str | None]]) -> bytes:
        """One SD-ELEMENT (RFC 5424 §6.3.1); parameters without a value are left out."""
        parts = [self._sd_id]
        for key, value in params:
            if value is not None:
                parts.append(key.encode() + b'="' + _param_value(value) + b'"')
        return b"[" + b" ".join(parts) + b"]"

    # -- delivery ------------------------------------------------------------------

    def deliver(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Send ``batch`` in order; returns once all of it was written (see the module
        docstring for what that guarantees per transport). Raises
        :class:`ConnectionError` when it could not, with the connection dropped."""
        if not batch:
            return
        with self._lock:
            messages = [self.message(index, event) for index, event in batch]
            if self.transport == "udp":
                self._send_datagrams(messages)
            else:
                # RFC 6587 §3.4.1 octet counting: MSG-LEN SP SYSLOG-MSG
                self._send_stream(b"".join(b"%d %b" % (len(m), m) for m in messages))

    def close(self) -> None:
        """Drop the connection (a later delivery opens a new one)."""
        with self._lock:
            self._drop()

    def _where(self) -> str:
        return f"syslog over {self.transport} to {self.host}:{self.port}"

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    @contextlib.contextmanager
    def _dropped_on_error(self) -> Iterator[None]:
        """Any error drops the socket (a write cut anywhere leaves a partial frame: never
        reuse the connection); an ``OSError`` becomes a :class:`ConnectionError` that
        names the receiver."""
        try:
            yield
        except OSError as exc:
            self._drop()
            raise ConnectionError(f"{self._where()}: {exc}") from exc
        except BaseException:
            self._drop()
            raise

    def _send_datagrams(self, messages: Sequence[bytes]) -> None:
        """RFC 5426 §3.1: one message per datagram, on a connected socket so that an
        ICMP port unreachable reported by the kernel fails a later send."""
        with self._dropped_on_error():
            if self._sock is None:
                family, kind, proto, _, address = socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_DGRAM
                )[0]
                sock = socket.socket(family, kind, proto)
                self._sock = sock
                sock.settimeout(self.timeout)
                sock.connect(address)
            for data in messages:
                if self._sock.send(data) != len(data):
                    raise OSError("datagram cut short")

    def _send_stream(self, data: bytes) -> None:
        with self._dropped_on_error():
            if self._sock is not None and not self._still_open(self._sock):
                self._drop()
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._send_within(self._sock, data)

    def _send_within(self, sock: socket.socket, data: bytes) -> None:
        """Write all of ``data`` within one ``timeout`` deadline. ``sendall`` will not
        do: over TLS it is a loop of ``send`` calls, each with the whole timeout, so a
        receiver reading a little at a time would hold the exporter indefinitely."""
        deadline = time.monotonic() + self.timeout
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                view = view[sock.send(view) :]
            except TimeoutError:
                raise TimeoutError(
                    f"the batch was not written within {self.timeout:g} s "
                    f"({len(data) - len(view)} of {len(data)} octets)"
                ) from None
        sock.settimeout(self.timeout)

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self._context is not None:
            # RFC 5425 §4.2 / RFC 9525: the certificate must name server_name
            secure = self._context.wrap_socket(sock, server_hostname=self.server_name)
            self._sock = secure  # the wrapped socket owns the descriptor from now on
            if secure.version() == "TLSv1.3":
                self._confirm(secure)
        self.connections += 1

    def _confirm(self, sock: ssl.SSLSocket) -> None:
        """Wait (briefly) for the server's verdict on a TLS 1.3 handshake.

        In TLS 1.3 the client finishes its handshake before the server has checked the
        client's certificate (RFC 8446 §4.4.2); a server that rejects it (or requires
        one that was not sent) answers with an alert. Writing the batch straight away
        would hand it to a connection that is already refused, and the batch would be
        lost without an error. So wait until the server speaks: a session ticket
        (RFC 8446 §4.6.1, sent once the handshake is accepted) ends the wait, an alert
        or a close fails the connection, and silence for ``min(timeout, 1 s)`` is taken
        as acceptance (a server that sends no tickets).
        """
        readable, _, _ = select.select([sock], [], [], min(self.timeout, _VERDICT_WAIT))
        if not readable:
            return
        try:
            silent = _peek(sock)  # an alert raises its SSLError, with its reason
        finally:
            sock.settimeout(self.timeout)
        if not silent:
            raise ConnectionError("the receiver closed the connection after the handshake")
        # it spoke, and said nothing but handshake messages (session tickets)

    def _still_open(self, sock: socket.socket) -> bool:
        """True when the connection is open and the receiver said nothing, checked
        without waiting. A receiver that closed it (or sent anything: it never should,
        RFC 6587 §3.4, RFC 5425 §4.3) makes it unusable: data written to it would be
        lost or answered by a reset."""
        try:
            return _peek(sock)
        except OSError:
            return False
        finally:
            sock.settimeout(self.timeout)


def _peek(sock: socket.socket) -> bool:
    """Without waiting: True when nothing was received, False when the receiver closed
    the connection or sent application data; raises the ``OSError`` (a TLS alert:
    ``SSLError``) of a connection that failed. Leaves the socket non-blocking."""
    sock.setblocking(False)
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.recv(1)  # processes post-handshake records; data or EOF: unusable
        else:
            sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return True
    return False


# -- configuration -------------------------------------------------------------------


def _printable(entry: Mapping[str, Any], key: str, most: int) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > most or not _PRINTUSASCII.match(value):
        raise ValueError(f"{key} must be 1-{most} printable US-ASCII characters")
    return value


def from_config(name: str, entry: Mapping[str, Any]) -> SyslogExporter:
    """A :class:`SyslogExporter` from one entry of the exporters file; ``ValueError``
    names the key that is wrong and what it takes. TLS files are read here, so a
    missing or unreadable CA or client certificate is refused at start-up."""
    check_keys(entry, SETTINGS, "syslog")
    transport = entry.get("transport", "tls")
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(_TRANSPORTS)}")
    host = entry.get("host")
    if not isinstance(host, str) or not _HOST.match(host):
        raise ValueError("host must be a host name or IP address")
    port = integer(entry, "port", DEFAULT_PORTS[transport], 1, 65535)
    format_name, render = wire_format(entry)
    facility = entry.get("facility", "authpriv")
    if facility not in FACILITIES:
        raise ValueError(f"facility must be one of {', '.join(FACILITIES)}")
    enterprise_id = entry.get("enterprise_id", DEFAULT_ENTERPRISE_ID)
    if isinstance(enterprise_id, int) and not isinstance(enterprise_id, bool):
        enterprise_id = str(enterprise_id)
    if not isinstance(enterprise_id, str) or not _ENTERPRISE_ID.match(enterprise_id):
        raise ValueError("enterprise_id must be a private enterprise number, such as 32473")
    if len(enterprise_id) > 32 - len(_SD_NAME) - 1:
        raise ValueError(f"enterprise_id must be at most {32 - len(_SD_NAME) - 1} characters")
    timeout = seconds(entry, "timeout", DEFAULT_TIMEOUT, 0.1, 300)
    limit = MAX_UDP_MESSAGE if transport == "udp" else MAX_STREAM_MESSAGE
    max_message = integer(
        entry,
        "max_message",
        DEFAULT_MAX_MESSAGE,
        MIN_MAX_MESSAGE,
        limit,
        note=f" for transport {transport}",
    )
    hostname = _printable(entry, "hostname", 255)
    app_name = _printable(entry, "app_name", 48) or "agentiam"
    if transport != "tls":
        for key in _TLS_ONLY:
            if entry.get(key) is not None:
                raise ValueError(f"{key} only applies to transport tls")
    ca_file = optional_path(entry, "ca_file")
    cert_file = optional_path(entry, "cert_file")
    key_file = optional_path(entry, "key_file")
    if key_file is not None and cert_file is None:
        raise ValueError("key_file needs cert_file (the client certificate)")
    server_name = entry.get("server_name")
    if server_name is not None and (
        not isinstance(server_name, str) or not _HOST.match(server_name)
    ):
        raise ValueError("server_name must be a host name or IP address")
    return SyslogExporter(
        name,
        transport=transport,
        host=host,
        port=port,
        formatter=render,
        format_name=format_name,
        hostname=hostname,
        app_name=app_name,
        facility=facility,
        enterprise_id=enterprise_id,
        timeout=timeout,
        max_message=max_message,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        server_name=server_name,
    )
