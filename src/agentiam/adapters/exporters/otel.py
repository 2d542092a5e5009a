"""The OpenTelemetry exporter: every audit event becomes one span, exported over OTLP/HTTP
(protobuf) to a collector, so audit decisions show up inside the traces of the agents
that caused them. Needs the ``otel`` extra (``pip install 'agentiam[otel]'``: the
OpenTelemetry SDK and ``opentelemetry-exporter-otlp-proto-http``); the module imports
without it, and :func:`from_config` then refuses with a message saying so.

**Span mapping** (OpenTelemetry semantic conventions for generative AI, "Execute tool
span" of the GenAI agent spans, status Development; and the Trace API for ids and
status):

* an event about a tool, a ``tool.call`` (``details.tool``) or an ``authz.decision``
  whose resource is a ``Tool``, becomes ``execute_tool {tool}`` with
  ``gen_ai.operation.name = "execute_tool"``, ``gen_ai.tool.name``,
  ``gen_ai.tool.call.id`` (``details.tool_call_id``, when recorded) and
  ``gen_ai.agent.id``; span kind ``INTERNAL`` as the convention says;
* any other event becomes a span named by its type (``agent.created`` ...);
* every span carries ``agentiam.*`` attributes: ``event_id``, ``log_index``,
  ``event_type``, ``outcome``, ``action``, ``actor``, ``resource.type``/``resource.id``,
  ``source``, ``agent_id``, ``decision`` (``details.decision``), ``decision_id``,
  ``initiating_human``, ``delegation_chain`` (a string array), ``policy_version``,
  ``risk_score`` and ``reason``, each only when the event has it;
* the span joins the caller's trace: its trace id is the event's ``trace.trace_id`` and
  its parent the event's ``trace.span_id``; its own span id is derived from the event
  id (the first 8 bytes of SHA-256 of ``agentiam.audit.span:<event_id>``), so it is new
  in the trace but the same each time the event is delivered again (the runner is
  at-least-once) and a backend sees a duplicate, not a second span;
* it ends at the event's time and starts ``details.duration_ms`` milliseconds (or, for
  a decision, ``details.evaluation_us`` microseconds) before, else at the same time;
  an event whose time is missing, not ISO 8601 or outside what OTLP can carry (before
  1970, past 2262) ends at the time of export instead and gets
  ``agentiam.time_invalid = true``;
* status ``ERROR`` (description: the event's reason) and ``error.type`` = the outcome
  for a ``failure`` or ``denied`` event, status unset otherwise.

The resource has ``service.name`` = ``service_name`` (default ``agentiam``) and the
instrumentation scope is ``agentiam.audit``.

**Delivery** is synchronous: :meth:`OtelSpanExporter.deliver` encodes the batch and
POSTs it with the SDK's ``OTLPSpanExporter`` and raises unless the collector answered
``2xx``; the export runner then retries the whole batch with its own backoff. Every
answer but ``2xx`` (redirects included) is final for the attempt: the SDK neither
follows nor retries it. A connection error (refused, reset, timed out) is retried by
the SDK itself (1.45: once at once, then with its backoff) as long as ``timeout``,
counted from the start of the export, leaves room; every retry vets the address
again. The endpoint is the full signal URL (``https://collector:4318/v1/traces``); it
must be ``https`` unless ``allow_private_network`` is set, and before every request
its host is resolved and vetted by :func:`agentiam.adapters.outbound.vet_url` (no
loopback, private or link-local address without ``allow_private_network``). Unlike
the webhook exporter, the connection is not pinned to the vetted address (the SDK's
HTTP client resolves the name again): point it at a collector you control. No proxy
is taken from the environment; the SDK's ``OTEL_EXPORTER_OTLP_*`` variables for
headers, certificates and compression still apply.

The collector's answer is never decoded: requests ask for ``Accept-Encoding:
identity``, at most 64 KiB of a ``2xx`` body are read as sent (so the connection can
be kept) and nothing of any other answer; a failure's message holds the status code
and reason phrase only, never the body.

**Any stored event** becomes a span: :func:`span_record` never raises, whatever the
shape of the event (a bad time, huge numbers, lone surrogates, members of the wrong
type), so one malformed entry cannot hold the exporter back.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from agentiam.adapters.exporters._config import (
    boolean,
    check_keys,
    env_value,
    http_headers,
    http_url,
    optional_path,
    seconds,
)
from agentiam.adapters.outbound import OutboundError, Resolver, vet_url
from agentiam.adapters.tls import tls_context

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan
    from requests.adapters import HTTPAdapter
    from requests.models import Response

__all__ = [
    "SETTINGS",
    "OtelExportError",
    "OtelSpanExporter",
    "SpanRecord",
    "from_config",
    "span_record",
]

SETTINGS = frozenset(
    {
        "endpoint",
        "allow_private_network",
        "timeout",
        "headers",
        "authorization_env",
        "ca_file",
        "service_name",
    }
)

INSTALL_HINT = "the otel exporter needs the OpenTelemetry SDK: install agentiam[otel]"
SCOPE = "agentiam.audit"
EXECUTE_TOOL = "execute_tool"
_TOOL_EVENT = "tool.call"
_DECISION_EVENT = "authz.decision"
_MAX_DURATION_NS = 24 * 3600 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_ENDPOINT_EXAMPLE = "https://collector:4318/v1/traces"
_DRAIN = 64 * 1024  # bytes of a 2xx answer read to keep the connection
_REASON_MAX = 60  # characters of a reason phrase in an error message


class OtelExportError(OutboundError):
    """An OTLP export failed or was refused; the message is safe to log."""


# -- the mapping (pure) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """What one audit event becomes, independent of the SDK."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int
    attributes: dict[str, str | bool | int | float | tuple[str, ...]]
    error: str | None  # the status description when the status is ERROR


_SURROGATES = re.compile(r"[\ud800-\udfff]")
_MAX_TIME_NS = 2**63 - 1  # what a signed 64-bit nanosecond clock holds (2262-04-11)
_TEXT_MAX = 4096  # characters of one attribute value


def _clean(text: str) -> str:
    """``text`` as OTLP can carry it (valid UTF-8), cut to a bounded length."""
    return _SURROGATES.sub("\ufffd", text[:_TEXT_MAX])


def _str(value: Any) -> str | None:
    return _clean(value) if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)  # an int past 1.8e308 overflows
    except OverflowError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _tool_name(event: Mapping[str, Any]) -> str | None:
    details = _mapping(event.get("details"))
    resource = _mapping(event.get("resource"))
    kind = event.get("type")
    if kind == _TOOL_EVENT:
        return _str(details.get("tool")) or (
            _str(resource.get("id")) if resource.get("type") == "Tool" else None
        )
    if kind == _DECISION_EVENT and resource.get("type") == "Tool":
        return _str(resource.get("id"))
    return None


def _time_ns(value: Any) -> int | None:
    """The event time in nanoseconds since the epoch; ``None`` unless it is ISO 8601
    text within what OTLP carries (1970 to 2262)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # the trail writes UTC
        ns = (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    except (ValueError, OverflowError, TypeError):
        return None
    return ns if 0 <= ns <= _MAX_TIME_NS else None


def _duration_ns(event: Mapping[str, Any]) -> int:
    details = _mapping(event.get("details"))
    ns: float | None = None
    if (ms := _number(details.get("duration_ms"))) is not None:
        ns = ms * 1e6
    elif (
        event.get("type") == _DECISION_EVENT
        and (us := _number(details.get("evaluation_us"))) is not None
    ):
        ns = us * 1e3
    if ns is None or not ns > 0:
        return 0
    return int(min(ns, _MAX_DURATION_NS))


def _derived_id(label: str, event_id: str, size: int) -> int:
    digest = hashlib.sha256(f"agentiam.audit.{label}:{event_id}".encode()).digest()
    return int.from_bytes(digest[:size], "big") or 1  # an all-zero id is invalid


def _hex(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


def span_record(
    log_index: int, event: Mapping[str, Any], *, now_ns: int | None = None
) -> SpanRecord:
    """The span for trail entry ``log_index`` (see the module docstring). Total: any
    stored event, however malformed, gives a span. ``now_ns`` (default: the current
    time) is the end of a span whose event has no usable time."""
    event = _mapping(event)
    raw_id = event.get("event_id")
    event_id = _clean(raw_id) if isinstance(raw_id, str) and raw_id else ""
    event_id = event_id or f"log-index-{log_index}"
    trace = _mapping(event.get("trace"))
    trace_hex = _hex(trace.get("trace_id"))
    parent_hex = _hex(trace.get("span_id"))
    parent: int | None = None
    if _HEX32.match(trace_hex) and int(trace_hex, 16):
        trace_id = int(trace_hex, 16)
        if _HEX16.match(parent_hex) and int(parent_hex, 16):
            parent = int(parent_hex, 16)
    else:  # no usable trace context: a trace of its own, stable across deliveries
        trace_id = _derived_id("trace", event_id, 16)
    span_id = _derived_id("span", event_id, 8)

    kind = _str(event.get("type")) or "audit.event"
    outcome = _str(event.get("outcome"))
    details = _mapping(event.get("details"))
    resource = _mapping(event.get("resource"))
    actor = _mapping(event.get("actor"))
    chain = event.get("delegation_chain")

    attributes: dict[str, str | bool | int | float | tuple[str, ...]] = {}

    def put(key: str, value: str | bool | int | float | tuple[str, ...] | None) -> None:
        if value is not None:
            attributes[key] = value

    tool = _tool_name(event)
    if tool is not None:
        name = f"{EXECUTE_TOOL} {tool}"
        put("gen_ai.operation.name", EXECUTE_TOOL)
        put("gen_ai.tool.name", tool)
        put("gen_ai.tool.call.id", _str(details.get("tool_call_id")))
        put("gen_ai.agent.id", _str(event.get("agent_id")))
    else:
        name = kind
    put("agentiam.event_id", event_id)
    put("agentiam.log_index", log_index)
    put("agentiam.event_type", kind)
    put("agentiam.outcome", outcome)
    put("agentiam.action", _str(event.get("action")))
    actor_type, actor_id = _str(actor.get("type")), _str(actor.get("id"))
    if actor_type and actor_id:
        put("agentiam.actor", f"{actor_type}:{actor_id}")
    put("agentiam.resource.type", _str(resource.get("type")))
    put("agentiam.resource.id", _str(resource.get("id")))
    put("agentiam.source", _str(event.get("source")))
    put("agentiam.agent_id", _str(event.get("agent_id")))
    put("agentiam.decision", _str(details.get("decision")))
    put("agentiam.decision_id", _str(event.get("decision_id")))
    put("agentiam.initiating_human", _str(event.get("initiating_human")))
    if isinstance(chain, list) and chain:
        links = tuple(_str(a) or "" for a in chain[:64] if isinstance(a, str))
        put("agentiam.delegation_chain", links or None)
    put("agentiam.policy_version", _str(event.get("policy_version")))
    put("agentiam.risk_score", _number(event.get("risk_score")))
    reason = _str(event.get("reason"))
    put("agentiam.reason", reason)

    error: str | None = None
    if outcome in ("failure", "denied"):
        error = (reason or outcome)[:200]
        put("error.type", outcome)

    end = _time_ns(event.get("time"))
    if end is None:
        end = time.time_ns() if now_ns is None else now_ns
        put("agentiam.time_invalid", True)
    return SpanRecord(
        name=name,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        start_ns=max(end - _duration_ns(event), 0),
        end_ns=end,
        attributes=attributes,
        error=error,
    )


# -- configuration ---------------------------------------------------------------------


def _sdk_available() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
        import requests.adapters  # noqa: F401
    except ImportError:
        return False
    return True


def _check_endpoint(url: Any, allow_private_network: bool) -> str:
    return http_url(
        url, "endpoint", allow_private_network=allow_private_network, example=_ENDPOINT_EXAMPLE
    )


def _authorization(entry: Mapping[str, Any]) -> str | None:
    value = env_value(entry, "authorization_env")
    if value is not None and (
        len(value) > 8192 or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)
    ):
        name = entry["authorization_env"]
        raise ValueError(f"authorization_env: {name} must hold one line of printable text")
    return value


def from_config(name: str, entry: Mapping[str, Any]) -> OtelSpanExporter:
    """An :class:`OtelSpanExporter` from its entry in the exporters file (keys:
    :data:`SETTINGS`); ``ValueError`` says which value is wrong and why."""
    check_keys(entry, SETTINGS, "otel")
    if not _sdk_available():
        raise ValueError(INSTALL_HINT)
    allow_private = boolean(entry, "allow_private_network")
    endpoint = _check_endpoint(entry.get("endpoint"), allow_private)
    timeout = seconds(entry, "timeout", 10.0, 0.5, 120.0)
    ca_file = optional_path(entry, "ca_file")
    if ca_file is not None:
        tls_context(ca_file)  # readable PEM certificates, checked at start
    service = entry.get("service_name", "agentiam")
    if not isinstance(service, str) or not 0 < len(service) <= 128 or not service.isprintable():
        raise ValueError("service_name must be 1-128 printable characters")
    headers = http_headers(entry.get("headers"), hint="use authorization_env for Authorization")
    authorization = _authorization(entry)
    if authorization is not None:
        headers["Authorization"] = authorization
    return OtelSpanExporter(
        name,
        endpoint,
        allow_private_network=allow_private,
        timeout=timeout,
        headers=headers,
        ca_file=ca_file,
        service_name=service,
    )


# -- the SDK side (imported lazily) ----------------------------------------------------


class _Guard:
    """What the HTTP adapter under the SDK's session enforces: the endpoint's addresses
    are vetted before each request, and any answer but ``2xx`` (a redirect too) is an
    exception, so the SDK neither follows nor retries it. Keeps the last failure, which
    the SDK only logs."""

    def __init__(self, allow_private_network: bool, resolver: Resolver) -> None:
        self.allow_private_network = allow_private_network
        self.resolver = resolver
        self.error: OutboundError | None = None

    def vet(self, url: str) -> None:
        try:
            vet_url(url, allow_private_network=self.allow_private_network, resolver=self.resolver)
        except OutboundError as exc:
            self.error = exc
            raise

    def failed(self, exc: Exception) -> None:
        self.error = OtelExportError(f"{type(exc).__name__}: {str(exc)[:150]}")

    def answer(self, status: int, reason: str | None) -> None:
        """Raise unless ``status`` is ``2xx``; the error has the status code and the
        reason phrase (printable ASCII, cut short), never the body."""
        if 200 <= status < 300:
            return
        phrase = "".join(ch if " " <= ch <= "~" else " " for ch in (reason or "")[:_REASON_MAX])
        what = "a redirect, not followed" if 300 <= status < 400 else "refused"
        words = " ".join([f"HTTP {status}", *phrase.split(), f"({what})"])
        self.error = OtelExportError(words)
        raise self.error


def _settle(response: Response) -> None:
    """Read the answer's body without decoding it, bounded: at most ``_DRAIN`` bytes
    of a ``2xx`` answer, so a small one keeps the connection for the next export, and
    nothing of any other. Whatever is left unread closes the connection. The SDK then
    finds the body already read and reads no more (it would inflate a compressed body
    in full)."""
    data = b""
    complete = False
    if 200 <= response.status_code < 300:
        try:
            data = response.raw.read(_DRAIN + 1, decode_content=False) or b""
            complete = len(data) <= _DRAIN
        except Exception:  # the answer is in: a body cut short does not change it
            data = b""
    if not complete:
        with contextlib.suppress(Exception):
            response.raw.close()  # drops the connection instead of reusing it
    response._content = data[:_DRAIN]
    response._content_consumed = True


def _adapter(guard: _Guard) -> HTTPAdapter:
    """A ``requests`` transport adapter enforcing ``guard`` (built here: requests comes
    with the otel extra)."""
    from requests.adapters import HTTPAdapter
    from requests.exceptions import RequestException
    from requests.models import PreparedRequest

    class GuardedAdapter(HTTPAdapter):
        def __init__(self, guard: _Guard) -> None:
            super().__init__(max_retries=0)
            self.guard = guard

        def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
            self.guard.vet(str(request.url))
            try:
                response = super().send(request, *args, **kwargs)
            except RequestException as exc:
                self.guard.failed(exc)
                raise
            _settle(response)
            try:
                self.guard.answer(response.status_code, response.reason)
            except OtelExportError:
                response.close()
                raise
            return response

    return GuardedAdapter(guard)


class OtelSpanExporter:
    kind = "otel"

    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        allow_private_network: bool = False,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
        service_name: str = "agentiam",
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        """``resolver`` is for tests. Raise ``ValueError`` if the SDK is missing."""
        if not _sdk_available():
            raise ValueError(INSTALL_HINT)
        import requests
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from agentiam import __version__

        _check_endpoint(endpoint, allow_private_network)
        self._name = name
        self._endpoint = endpoint
        self._guard = _Guard(allow_private_network, resolver)
        adapter = _adapter(self._guard)
        session = requests.Session()
        session.trust_env = False  # no proxy or .netrc from the environment
        session.headers["Accept-Encoding"] = "identity"  # an answer is never inflated
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._exporter: OTLPSpanExporter = OTLPSpanExporter(
            endpoint=endpoint,
            certificate_file=ca_file,
            headers=dict(headers or {}),
            timeout=timeout,
            session=session,
        )
        self._resource = Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope(SCOPE, __version__)

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"OtelSpanExporter({self._name!r})"

    def close(self) -> None:
        cast("Callable[[], None]", self._exporter.shutdown)()

    def spans(self, batch: Sequence[tuple[int, Mapping[str, Any]]]) -> list[ReadableSpan]:
        """The SDK spans of ``batch``, in order."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        sampled = TraceFlags(TraceFlags.SAMPLED)
        out = []
        for index, event in batch:
            record = span_record(index, event)
            parent = (
                SpanContext(record.trace_id, record.parent_span_id, True, sampled)
                if record.parent_span_id is not None
                else None
            )
            out.append(
                ReadableSpan(
                    name=record.name,
                    context=SpanContext(record.trace_id, record.span_id, False, sampled),
                    parent=parent,
                    resource=self._resource,
                    attributes=record.attributes,
                    kind=SpanKind.INTERNAL,
                    status=(
                        Status(StatusCode.ERROR, record.error)
                        if record.error is not None
                        else Status(StatusCode.UNSET)
                    ),
                    start_time=record.start_ns,
                    end_time=record.end_ns,
                    instrumentation_scope=self._scope,
                )
            )
        return out

    def deliver(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Export the batch's spans in one OTLP request; return once the collector
        answered ``2xx``, else raise :class:`OtelExportError` (or another
        :class:`~agentiam.adapters.outbound.OutboundError`)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        if not batch:
            return
        spans = self.spans(batch)
        self._guard.error = None
        try:
            result = self._exporter.export(spans)
        except OutboundError:
            raise
        except Exception as exc:  # older SDKs let the session's errors through
            raise OtelExportError(
                f"OTLP export failed: {type(exc).__name__}: {str(exc)[:150]}"
            ) from None
        if result is not SpanExportResult.SUCCESS:
            error = self._guard.error
            if isinstance(error, OtelExportError):
                raise OtelExportError(f"OTLP export of {len(spans)} spans failed: {error}")
            if error is not None:
                raise error  # a refusal of the endpoint (OutboundRefused ...)
            raise OtelExportError(
                f"OTLP export of {len(spans)} spans failed (see the OpenTelemetry log)"
            )
