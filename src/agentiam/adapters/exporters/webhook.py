"""The signed webhook exporter: each batch of trail entries is POSTed as one JSON body,
signed as the Standard Webhooks specification defines (see
:mod:`agentiam.core.audit.webhook_signature`, which receivers can import to verify).

**Request.** ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"events": [item, ...]}``, one item per entry in log order. With ``format: native``
(the default) or ``ocsf`` an item is the formatter's JSON object (``native``:
``{"event": {...}, "log_index": n}``, the event exactly as stored, so it still verifies
against the trail); with any other format (``cef``) an item is the formatter's line
as a JSON string. The headers are ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per
configured secret), plus the configured static headers.

**Idempotency.** ``webhook-id`` is derived from the exporter's name and the first and
last log index of the request (``agentiam-<12 hex of SHA-256(name)>-<first>-<last>``),
so a batch delivered again (the runner is at-least-once) carries the same id, while the
timestamp and signature are fresh for every attempt, as the specification asks. A
batch retried after the trail grew may cover more entries and then has a new id, so a
receiver should also deduplicate items on ``log_index`` (or ``event.event_id``).

**Size.** A request body is at most ``max_body_bytes`` (default 1,000,000, under the
1 MiB that many proxies accept): a larger batch (the runner hands over up to 500
entries) is split, in order, into several requests, each with its own id. A single
entry whose item alone would not fit is replaced by a stub, ``{"log_index": n,
"event_id": ..., "type": ..., "truncated": true, "original_size": <item octets>}``
(``event_id`` and ``type`` only when they are short text), a warning is logged and
:attr:`WebhookExporter.truncated` counts it: delivery goes on, since an entry that can
never be sent would hold the exporter on it for good. The full event stays in the
trail under its log index.

**Success** is a ``2xx`` answer ("Delivery success and failure" in the specification);
anything else raises :class:`WebhookDeliveryError` and the runner retries the whole
batch with backoff. Redirects are never followed (a ``3xx`` is a failure: update the
URL). The error message holds the status code and the reason phrase (printable
ASCII, cut short), never the answer's body: a receiver's reply may echo credentials.

**Network.** The URL must be ``https`` (``http`` only with ``allow_private_network``).
Requests go through :class:`agentiam.adapters.outbound.PinnedClient`: before every
request the host is resolved and every address vetted (no loopback, private,
link-local / cloud-metadata or other non-public address unless
``allow_private_network``); the request then goes to the vetted address itself (the
URL carries the IP literal, the ``Host`` header the name, and TLS uses the name for
SNI and certificate checks), so a DNS answer that changes in between is never used.
One HTTP/1.1 connection is kept alive between batches (for up to 4 s idle). TLS
certificates are always verified (against ``ca_file`` when given, else the certifi
roots). No proxy is taken from the environment. Every connect, TLS handshake, write
and read is bounded by its timeout and all of them by one ``timeout`` deadline per
request.

**Secrets** come from ``secret_env`` (an environment variable's name) or
``secret_file`` (a file that only its owner may access, mode ``0600`` or ``0400``),
never from the configuration itself, and are read once, at start. The value is
``whsec_<base64>`` of 24-64 bytes; during a rotation it may hold several, separated by
spaces, and every request is then signed with each of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentiam.adapters.exporters._config import (
    boolean,
    check_keys,
    http_headers,
    http_url,
    integer,
    optional_path,
    seconds,
    secret_text,
    wire_format,
)
from agentiam.adapters.outbound import (
    OutboundError,
    OutboundFailed,
    PinnedClient,
    Resolver,
)
from agentiam.adapters.tls import tls_context
from agentiam.core.audit.formats import Formatter, formatter
from agentiam.core.audit.webhook_signature import (
    HEADER_ID,
    InvalidSecret,
    WebhookSecret,
    signature_headers,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "SETTINGS",
    "WebhookDeliveryError",
    "WebhookExporter",
    "from_config",
]

SETTINGS = frozenset(
    {
        "url",
        "secret_env",
        "secret_file",
        "format",
        "headers",
        "allow_private_network",
        "ca_file",
        "connect_timeout",
        "read_timeout",
        "timeout",
        "max_body_bytes",
    }
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1_000_000
_JSON_FORMATS = frozenset({"native", "ocsf"})
_USER_AGENT = "agentiam-webhook/1"
_DRAIN = 64 * 1024  # a 2xx body read to keep the connection; more and it is dropped
# short, below common servers' idle timeouts (Node's 5 s), so a connection the receiver
# already closed is rarely reused; busy exporters send every ~0.5 s
_KEEPALIVE_EXPIRY = 4.0
_URL_EXAMPLE = "https://siem.example.com/agentiam"
_HEADERS_HINT = "Authorization, Host, Cookie, framing and webhook-* headers"
_STUB_TEXT_MAX = 128  # characters of event_id and type a stub repeats
_REASON_MAX = 60  # characters of a reason phrase in an error message


class WebhookDeliveryError(OutboundError):
    """A webhook request failed or was refused; the message is safe to log."""


# -- configuration ---------------------------------------------------------------------


def _check_headers(value: Any) -> dict[str, str]:
    return http_headers(value, hint=_HEADERS_HINT, reserved_prefixes=("webhook-", "proxy-"))


def _check_url(url: Any, allow_private_network: bool) -> str:
    return http_url(url, "url", allow_private_network=allow_private_network, example=_URL_EXAMPLE)


def _load_secrets(entry: Mapping[str, Any]) -> list[WebhookSecret]:
    text, where = secret_text(entry, "secret_env", "secret_file")
    parts = text.split()
    if not parts:
        raise ValueError(f"{where} holds no secret")
    if len(parts) > 4:
        raise ValueError(f"{where} holds more than 4 secrets")
    try:
        return [WebhookSecret.parse(part) for part in parts]
    except InvalidSecret as exc:
        raise ValueError(f"{where}: {exc}") from None


def from_config(name: str, entry: Mapping[str, Any]) -> WebhookExporter:
    """A :class:`WebhookExporter` from its entry in the exporters file (keys:
    :data:`SETTINGS`); ``ValueError`` says which value is wrong and why."""
    check_keys(entry, SETTINGS, "webhook")
    allow_private = boolean(entry, "allow_private_network")
    url = _check_url(entry.get("url"), allow_private)
    fmt, _ = wire_format(entry)
    ca_file = optional_path(entry, "ca_file")
    timeout = seconds(entry, "timeout", 30.0, 1.0, 300.0)
    connect_timeout = seconds(entry, "connect_timeout", 5.0, 0.1, 60.0)
    read_timeout = seconds(entry, "read_timeout", 15.0, 0.1, 300.0)
    if connect_timeout > timeout or read_timeout > timeout:
        raise ValueError("connect_timeout and read_timeout must not exceed timeout")
    return WebhookExporter(
        name,
        url,
        _load_secrets(entry),
        format=fmt,
        headers=_check_headers(entry.get("headers")),
        allow_private_network=allow_private,
        ca_file=ca_file,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        timeout=timeout,
        max_body_bytes=integer(entry, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, 16384, 64 << 20),
    )


# -- the exporter ----------------------------------------------------------------------


class WebhookExporter:
    kind = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        secrets: Sequence[WebhookSecret],
        *,
        format: str = "native",
        headers: Mapping[str, str] | None = None,
        allow_private_network: bool = False,
        ca_file: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        timeout: float = 30.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        resolver: Resolver = socket.getaddrinfo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``secrets`` sign every request (several during a rotation). ``resolver`` and
        ``clock`` (Unix seconds, for ``webhook-timestamp``) are for tests."""
        if not secrets or not all(isinstance(s, WebhookSecret) for s in secrets):
            raise ValueError("at least one WebhookSecret is needed")
        if not 0 < connect_timeout <= timeout or not 0 < read_timeout <= timeout:
            raise ValueError("timeouts must be positive, connect and read at most timeout")
        if max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        _check_url(url, allow_private_network)
        self._name = name
        self._secrets = tuple(secrets)
        self._format_name = format
        self._format: Formatter = formatter(format)
        self._json_items = format in _JSON_FORMATS
        self._static = {
            **_check_headers(dict(headers or {})),
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": _USER_AGENT,
        }
        self._max_body = max_body_bytes
        self._clock = clock
        self._id_prefix = "agentiam-" + hashlib.sha256(name.encode()).hexdigest()[:12]
        self._client = PinnedClient(
            url,
            allow_private_network=allow_private_network,
            timeout=timeout,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            keepalive_expiry=_KEEPALIVE_EXPIRY,
            ssl_context=None if ca_file is None else tls_context(ca_file),
            resolver=resolver,
        )
        self._host = self._client.host
        # entries sent as a stub because their item alone exceeds max_body_bytes
        # (redeliveries count again)
        self.truncated = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def format(self) -> str:
        return self._format_name

    def __repr__(self) -> str:
        return f"WebhookExporter({self._name!r}, {self._host!r})"

    def close(self) -> None:
        self._client.close()

    def message_id(self, first: int, last: int) -> str:
        """The ``webhook-id`` of a request carrying log indexes ``first`` to ``last``."""
        return f"{self._id_prefix}-{first}-{last}"

    # -- bodies ------------------------------------------------------------------------

    def _item(self, index: int, event: Mapping[str, Any]) -> bytes:
        text = self._format(index, event)
        if not self._json_items:
            return json.dumps(text, ensure_ascii=False).encode("utf-8")
        text = text.strip()
        json.loads(text)  # a formatter must produce JSON for these formats
        return text.encode("utf-8")

    def _stub(self, index: int, event: Mapping[str, Any], size: int) -> bytes:
        """What stands for an entry whose item alone exceeds ``max_body_bytes``."""
        stub: dict[str, Any] = {"log_index": index}
        for key in ("event_id", "type"):
            value = event.get(key) if isinstance(event, Mapping) else None
            if isinstance(value, str) and len(value) <= _STUB_TEXT_MAX:
                stub[key] = value
        stub |= {"truncated": True, "original_size": size}
        data = json.dumps(stub).encode()  # ASCII: lone surrogates are escaped
        if len(data) + 16 > self._max_body:  # the ids make it too big for a tiny cap
            data = json.dumps(
                {"log_index": index, "truncated": True, "original_size": size}
            ).encode()
        return data

    def bodies(
        self, batch: Sequence[tuple[int, Mapping[str, Any]]]
    ) -> list[tuple[int, int, bytes]]:
        """The requests for ``batch``: ``(first log index, last log index, body)``, split
        in order so that no body exceeds ``max_body_bytes``; an entry too big for any
        body is sent as a stub (see the module docstring)."""
        head, tail = b'{"events":[', b"]}"
        out: list[tuple[int, int, bytes]] = []
        items: list[bytes] = []
        size = first = last = 0
        for index, event in batch:
            item = self._item(index, event)
            if len(head) + len(item) + len(tail) > self._max_body:
                self.truncated += 1
                logger.warning(
                    "webhook exporter %s: entry %d is %d octets, over max_body_bytes (%d): "
                    "sent as a stub",
                    self._name,
                    index,
                    len(item),
                    self._max_body,
                )
                item = self._stub(index, event, len(item))
            if items and size + 1 + len(item) > self._max_body:
                out.append((first, last, b",".join(items) + tail))
                items = []
            if not items:
                first, size = index, len(head) + len(tail)
                items.append(head + item)
                size += len(item)
            else:
                items.append(item)
                size += 1 + len(item)
            last = index
        if items:
            out.append((first, last, b",".join(items) + tail))
        return out

    # -- delivery ----------------------------------------------------------------------

    def deliver(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """POST the batch (one or more requests, in order); return once every request
        was answered ``2xx``. Raise :class:`WebhookDeliveryError` (or another
        :class:`~agentiam.adapters.outbound.OutboundError`) otherwise."""
        for first, last, body in self.bodies(batch):
            self._post(self.message_id(first, last), body)

    def _post(self, msg_id: str, body: bytes) -> None:
        headers = {
            **self._static,
            **signature_headers(self._secrets, msg_id, body, timestamp=int(self._clock())),
        }
        try:
            with self._client.stream("POST", headers, body) as (response, _):
                status = response.status_code
                reason = response.reason_phrase
                if 200 <= status < 300:
                    # read (raw, never decoded) to keep the connection; a longer answer
                    # is dropped with it
                    data = 0
                    for chunk in response.iter_raw():
                        data += len(chunk)
                        if data >= _DRAIN:
                            break
                # any other answer is left unread: it closes the connection
        except OutboundFailed as exc:
            raise WebhookDeliveryError(f"webhook: {exc}") from None
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise WebhookDeliveryError(
                f"webhook {self._host[:100]!r} answered HTTP {status}, a redirect: not "
                "followed; point url at the final address"
            )
        phrase = "".join(ch if " " <= ch <= "~" else " " for ch in reason[:_REASON_MAX])
        raise WebhookDeliveryError(
            " ".join(
                [
                    f"webhook {self._host[:100]!r} answered HTTP {status}",
                    *phrase.split(),
                    f"({HEADER_ID} {headers[HEADER_ID]})",
                ]
            )
        )
