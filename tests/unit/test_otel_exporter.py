"""The OpenTelemetry exporter against a real OTLP/HTTP receiver on 127.0.0.1 that decodes
each ``POST /v1/traces`` body as an ``ExportTraceServiceRequest`` (the OTLP protobuf):
spans follow the GenAI "execute_tool" convention for tool events, join the event's
trace under its span, carry the ``agentiam.*`` attributes and an error status for
denials; a collector's failure makes ``deliver`` raise, quickly."""

from __future__ import annotations

import gzip
import io
import random
import socket
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tests.support.audit_events import WHEN, stored_event
from tests.support.network import Handler, resolver_for, serve_http

from agentiam.adapters.exporters import otel
from agentiam.adapters.exporters.otel import OtelExportError, OtelSpanExporter
from agentiam.adapters.outbound import OutboundRefused
from agentiam.core.audit.events import Actor, ActorType, Outcome, ResourceRef, TraceContext

TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
AGENT = Actor(ActorType.AGENT, "agt_1")
WHEN_NS = int(WHEN.timestamp()) * 10**9 + 123456 * 1000


def _decision(outcome: Outcome = Outcome.SUCCESS, tool: str = "transfer") -> dict[str, Any]:
    """An ``authz.decision`` shaped as DecisionPoint writes it, for a Tool resource."""
    denied = outcome is Outcome.DENIED
    return stored_event(
        "authz.decision",
        actor=AGENT,
        action="invoke_tool",
        trace=TRACE,
        outcome=outcome,
        resource=ResourceRef("Tool", tool),
        agent_id="agt_1",
        initiating_human="hum_alice",
        delegation_chain=("hum_alice", "agt_0", "agt_1"),
        decision_id="dec_1",
        policy_version="7",
        risk_score=12.0,
        reason="policy p1 forbids" if denied else "policy p0 permits",
        details={"decision": "deny" if denied else "allow", "evaluation_us": 250.0},
    )


def _tool_call() -> dict[str, Any]:
    details = {"tool": "search", "tool_call_id": "call_42", "duration_ms": 1500}
    return stored_event(
        "tool.call",
        actor=AGENT,
        action="invoke_tool",
        source="gateway",
        trace=TRACE,
        outcome=Outcome.FAILURE,
        agent_id="agt_1",
        reason="upstream answered 502",
        details=details,
    )


def _admin_event() -> dict[str, Any]:
    trace = TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    return stored_event(trace=trace, resource=ResourceRef("Agent", "agt_9"))


# -- a real OTLP/HTTP receiver ---------------------------------------------------------


@dataclass
class Collector:
    status: int = 200
    requests: list[tuple[str, dict[str, str], ExportTraceServiceRequest]] = field(
        default_factory=list
    )
    peers: set[tuple[str, int]] = field(default_factory=set)  # client connections

    def spans(self) -> list[Span]:
        return [
            span
            for _, _, request in self.requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


def _handler(collector: Collector) -> type[Handler]:
    class Collecting(Handler):
        def do_POST(self) -> None:
            headers, body = self.request_body()
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            collector.requests.append((self.path, headers, request))
            collector.peers.add(self.client_address)
            answer = ExportTraceServiceResponse().SerializeToString()
            extra = {"Content-Type": "application/x-protobuf"}
            if collector.status != 200:
                answer = b"collector says no \x00" * 20
            if 300 <= collector.status < 400:
                extra["Location"] = f"http://127.0.0.1:{self.server.server_address[1]}/x"
            self.answer(collector.status, answer, extra)

    return Collecting


@dataclass
class Server:
    collector: Collector
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"


@pytest.fixture
def server() -> Iterator[Server]:
    collector = Collector()
    with serve_http(_handler(collector)) as port:
        yield Server(collector, port)


def _exporter(endpoint: str, **kwargs: Any) -> OtelSpanExporter:
    kwargs.setdefault("allow_private_network", True)
    kwargs.setdefault("timeout", 1.5)
    return OtelSpanExporter("traces", endpoint, **kwargs)


def _attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        which = value.WhichOneof("value")
        if which == "array_value":
            out[kv.key] = [v.string_value for v in value.array_value.values]
        else:
            out[kv.key] = getattr(value, which)
    return out


# -- delivery --------------------------------------------------------------------------


def test_a_tool_decision_becomes_an_execute_tool_span_in_the_callers_trace(
    server: Server,
) -> None:
    sink = _exporter(server.endpoint, service_name="agentiam-test")
    event = _decision()
    sink.deliver([(41, event)])
    [(path, headers, request)] = server.collector.requests
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    [span] = server.collector.spans()
    assert span.name == "execute_tool transfer"
    assert span.kind == Span.SPAN_KIND_INTERNAL
    assert span.trace_id.hex() == TRACE.trace_id
    assert span.parent_span_id.hex() == TRACE.span_id
    assert span.span_id.hex() not in (TRACE.span_id, "0" * 16)
    assert span.end_time_unix_nano == WHEN_NS
    assert span.start_time_unix_nano == WHEN_NS - 250_000  # details.evaluation_us
    assert span.status.code == Status.STATUS_CODE_UNSET
    attrs = _attrs(span)
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "transfer"
    assert attrs["gen_ai.agent.id"] == "agt_1"
    assert attrs["agentiam.event_id"] == event["event_id"]
    assert attrs["agentiam.log_index"] == 41
    assert attrs["agentiam.event_type"] == "authz.decision"
    assert attrs["agentiam.decision"] == "allow"
    assert attrs["agentiam.decision_id"] == "dec_1"
    assert attrs["agentiam.initiating_human"] == "hum_alice"
    assert attrs["agentiam.delegation_chain"] == ["hum_alice", "agt_0", "agt_1"]
    assert attrs["agentiam.policy_version"] == "7"
    assert attrs["agentiam.risk_score"] == 12.0
    assert "error.type" not in attrs
    resource = {
        kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "agentiam-test"
    assert request.resource_spans[0].scope_spans[0].scope.name == "agentiam.audit"
    sink.close()


def test_denied_and_failed_events_have_an_error_status(server: Server) -> None:
    sink = _exporter(server.endpoint)
    sink.deliver([(1, _decision(Outcome.DENIED)), (2, _tool_call())])
    denied, failed = server.collector.spans()
    assert denied.name == "execute_tool transfer"
    assert denied.status.code == Status.STATUS_CODE_ERROR
    assert denied.status.message == "policy p1 forbids"
    assert _attrs(denied)["error.type"] == "denied"
    assert _attrs(denied)["agentiam.decision"] == "deny"
    # a tool.call names its tool in details, and may record its duration and call id
    assert failed.name == "execute_tool search"
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert _attrs(failed)["error.type"] == "failure"
    assert _attrs(failed)["gen_ai.tool.call.id"] == "call_42"
    assert failed.end_time_unix_nano - failed.start_time_unix_nano == 1_500_000_000
    sink.close()


def test_other_events_are_spans_named_by_their_type(server: Server) -> None:
    sink = _exporter(server.endpoint)
    sink.deliver([(5, _admin_event())])
    [span] = server.collector.spans()
    assert span.name == "agent.created"
    attrs = _attrs(span)
    assert "gen_ai.operation.name" not in attrs
    assert attrs["agentiam.resource.type"] == "Agent"
    assert attrs["agentiam.actor"] == "admin_key:adm_1"
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert span.start_time_unix_nano == span.end_time_unix_nano == WHEN_NS
    sink.close()


def test_a_redelivered_event_is_the_same_span(server: Server) -> None:
    sink = _exporter(server.endpoint)
    batch = [(1, _decision()), (2, _admin_event())]
    sink.deliver(batch)
    sink.deliver(batch)  # at least once: the runner may send a batch again
    spans = server.collector.spans()
    assert [s.span_id for s in spans[:2]] == [s.span_id for s in spans[2:]]
    assert spans[0].span_id != spans[1].span_id
    sink.close()


def test_an_event_without_trace_context_gets_a_trace_of_its_own() -> None:
    event = _admin_event()
    event["trace"] = {"trace_id": "0" * 32, "span_id": "zz"}
    record = otel.span_record(3, event)
    assert record.trace_id != 0
    assert record.parent_span_id is None
    assert otel.span_record(3, event).trace_id == record.trace_id  # stable


# -- failures --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 400, 302])
def test_a_collector_failure_raises_quickly(server: Server, status: int) -> None:
    server.collector.status = status
    sink = _exporter(server.endpoint)
    started = time.monotonic()
    with pytest.raises(OtelExportError, match=f"HTTP {status}") as caught:
        sink.deliver([(1, _decision())])
    assert time.monotonic() - started < 2
    assert len(server.collector.requests) == 1  # neither retried nor redirected
    assert len(str(caught.value)) < 300
    assert "\x00" not in str(caught.value)
    assert "collector says no" not in str(caught.value)  # status and reason only
    sink.close()


def test_a_collector_that_is_down_raises_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        sink = _exporter(f"http://127.0.0.1:{port}/v1/traces", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(OtelExportError, match="Connection"):
            sink.deliver([(1, _decision())])
        assert time.monotonic() - started < 2.5
        sink.close()


def test_a_name_resolving_to_loopback_is_refused_at_export(server: Server) -> None:
    sink = OtelSpanExporter(
        "traces",
        f"https://collector.example.com:{server.port}/v1/traces",
        resolver=resolver_for("collector.example.com", "127.0.0.1"),
    )
    with pytest.raises(OutboundRefused, match="loopback"):
        sink.deliver([(1, _decision())])
    assert server.collector.requests == []
    sink.close()


def _bomb(inflated: int) -> bytes:
    """A gzip body of ``inflated`` zero bytes (a few tens of KiB on the wire)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as g:
        chunk = bytes(1 << 20)
        for _ in range(inflated >> 20):
            g.write(chunk)
    return buf.getvalue()


@pytest.mark.parametrize("status", [200, 400])
def test_a_compressed_answer_is_never_inflated(status: int) -> None:
    """A collector answering a small gzip body that inflates to 32 MiB: the exporter
    asks for identity, reads at most a bounded excerpt as sent, and never inflates it
    (reading ``response.content`` did, for any status)."""
    bomb = _bomb(32 << 20)
    seen: list[dict[str, str]] = []

    class Bomber(Handler):
        def do_POST(self) -> None:
            headers, _ = self.request_body()
            seen.append(headers)
            extra = {"Content-Encoding": "gzip", "Content-Type": "application/x-protobuf"}
            self.answer(status, bomb, extra)

    with serve_http(Bomber) as port:
        sink = _exporter(f"http://127.0.0.1:{port}/v1/traces")
        tracemalloc.start()
        try:
            if status == 200:
                sink.deliver([(1, _decision())])
            else:
                with pytest.raises(OtelExportError, match="HTTP 400 Bad Request") as caught:
                    sink.deliver([(1, _decision())])
                assert "\x1f" not in str(caught.value)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        sink.close()
    assert seen[0]["accept-encoding"] == "identity"
    assert peak < 4 << 20


def test_a_small_answer_keeps_the_connection(server: Server) -> None:
    """The bounded read takes all of a usual (small) answer, so the connection is
    kept for the next export."""
    sink = _exporter(server.endpoint)
    for i in range(3):
        sink.deliver([(i, _decision())])
    assert len(server.collector.requests) == 3
    assert len(server.collector.peers) == 1
    sink.close()


def test_an_error_carries_the_reason_phrase_cleaned() -> None:
    class Odd(Handler):
        def do_POST(self) -> None:
            self.request_body()
            self.send_response(401, "Denied token=abc\x7f\u00e9 " + "x" * 200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"secret")

    with serve_http(Odd) as port:
        sink = _exporter(f"http://127.0.0.1:{port}/v1/traces")
        with pytest.raises(OtelExportError) as caught:
            sink.deliver([(1, _decision())])
        sink.close()
    message = str(caught.value)
    assert "HTTP 401 Denied" in message
    assert "secret" not in message
    assert all(" " <= ch <= "~" for ch in message)
    assert len(message) < 150


# -- malformed events ------------------------------------------------------------------


def _hostile_value(rng: random.Random, depth: int = 0) -> Any:
    alphabet = "az09:T+-.Z \u2028\x85\ud800\udfff\x00\u202e\U0001d11e"
    scalars: list[Any] = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))),
        rng.randint(-(10**30), 10**30),
        10**400,
        -(10**400),
        rng.random() * 1e308,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        None,
    ]
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rng.choice(scalars)
    if r < 0.75:
        return [_hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "tool", "decision"]): _hostile_value(rng, depth + 1)}


_TIMES = [
    "2026-11-23T12:00:00.123456Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "1969-12-31T23:59:59Z",
    "2262-04-12T00:00:00Z",
    "not a time",
    "",
    "2026-13-45",
    "9" * 100,
]


def _hostile_event(rng: random.Random) -> Any:
    def pick(*options: Any) -> Any:
        return rng.choice([*options, _hostile_value(rng)])

    if rng.random() < 0.05:
        return rng.choice([[], "event", 7, None, [1, 2]])  # not even an object
    return {
        "event_id": pick("evt_1", "", "\ud800"),
        "time": pick(*_TIMES),
        "type": pick("tool.call", "authz.decision", "agent.created", "\udfff"),
        "outcome": pick("success", "denied", "failure"),
        "actor": pick({"type": "agent", "id": "a\ud800"}, {"type": 1, "id": None}),
        "action": pick("invoke_tool"),
        "resource": pick({"type": "Tool", "id": "t\ud800"}, {"type": "Tool", "id": 10**400}),
        "source": pick("api"),
        "trace": pick(
            {"trace_id": TRACE.trace_id, "span_id": TRACE.span_id},
            {"trace_id": 10**400, "span_id": ["x"]},
            {"trace_id": "\u0664" * 32},  # digits int() accepts, not hex
        ),
        "agent_id": pick("agt_1"),
        "delegation_chain": pick(["a", "\ud800"], [None, 10**400, {"a": 1}]),
        "decision_id": pick("dec"),
        "policy_version": pick("7"),
        "risk_score": pick(1.5, 10**400),
        "reason": pick("because"),
        "details": pick(
            {"duration_ms": 10**400},
            {"duration_ms": -1e308, "tool": "search"},
            {"evaluation_us": float("inf"), "decision": "allow"},
            {"tool": 10**400, "tool_call_id": "\ud800"},
        ),
    }


def test_span_building_is_total_over_hostile_events() -> None:
    """No stored event shape makes the span, or its OTLP encoding, raise: one bad entry
    must not hold the exporter back for good."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    rng = random.Random(20261123)
    sink = _exporter("http://127.0.0.1:9/v1/traces")
    batch = [(i, _hostile_event(rng)) for i in range(1500)]
    spans = sink.spans(batch)
    assert len(spans) == len(batch)
    data = encode_spans(spans).SerializeToString()
    decoded = ExportTraceServiceRequest()
    decoded.ParseFromString(data)
    assert len(decoded.resource_spans[0].scope_spans[0].spans) == len(batch)
    for span in decoded.resource_spans[0].scope_spans[0].spans:
        assert 0 <= span.start_time_unix_nano <= span.end_time_unix_nano < 2**63
    sink.close()


@pytest.mark.parametrize(
    "time_value",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "bad", None, 10**400, ["x"]],
    ids=["year-9999", "year-1", "text", "none", "huge-int", "list"],
)
def test_an_unusable_time_ends_the_span_at_export_time(time_value: Any) -> None:
    event = _admin_event()
    event["time"] = time_value
    event["details"] = {"duration_ms": 10**400}
    event["risk_score"] = 10**400
    record = otel.span_record(3, event, now_ns=5 * 10**18)
    assert record.end_ns == 5 * 10**18
    assert record.start_ns == record.end_ns  # a duration past a float is no duration
    assert record.attributes["agentiam.time_invalid"] is True
    assert "agentiam.risk_score" not in record.attributes
    assert "agentiam.time_invalid" not in otel.span_record(3, _admin_event()).attributes
    event["details"] = {"duration_ms": 1e300}
    record = otel.span_record(3, event, now_ns=5 * 10**18)
    assert record.end_ns - record.start_ns == 24 * 3600 * 10**9  # capped at a day


def test_a_batch_with_a_malformed_event_is_delivered(server: Server) -> None:
    sink = _exporter(server.endpoint)
    bad = {"event_id": "evt_bad", "time": "yesterday", "type": "x\ud800", "actor": ["?"]}
    sink.deliver([(1, bad), (2, _decision())])
    first, second = server.collector.spans()
    assert first.name == "x\ufffd"
    assert _attrs(first)["agentiam.time_invalid"] is True
    assert second.name == "execute_tool transfer"
    sink.close()


# -- configuration ---------------------------------------------------------------------


def test_configuration_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    ok = "https://collector.example.com/v1/traces"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": None}, "endpoint must be"),
        ({"endpoint": "http://collector.example.com/v1/traces"}, "only https"),
        ({"endpoint": "https://127.0.0.1:4318/v1/traces"}, "loopback"),
        ({"endpoint": "https://169.254.169.254/v1/traces"}, "link-local"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"allow_private_network": 1}, "true or false"),
        ({"headers": {"Authorization": "Bearer x"}}, "authorization_env"),
        ({"headers": {"X-A": "a\nb"}}, "printable"),
        ({"ca_file": "rel.pem"}, "absolute"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file could not be read"),
        ({"service_name": ""}, "service_name"),
        ({"authorization_env": "NOT_SET_ANYWHERE_123"}, "is not set"),
        ({"authorization_env": "bad name"}, "variable name"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            otel.from_config("t", {"endpoint": ok, **extra})
    monkeypatch.setenv("AGENTIAM_TEST_OTLP_AUTH", "Basic c2VjcmV0")
    sink = otel.from_config(
        "t",
        {
            "endpoint": "http://127.0.0.1:4318/v1/traces",
            "allow_private_network": True,
            "authorization_env": "AGENTIAM_TEST_OTLP_AUTH",
            "headers": {"X-Tenant": "a"},
        },
    )
    assert sink.kind == "otel"
    assert sink.name == "t"
    assert "c2VjcmV0" not in repr(sink)
    sink.close()
    assert {"endpoint", "timeout", "headers", "authorization_env"} <= otel.SETTINGS


def test_the_authorization_header_reaches_the_collector(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTIAM_TEST_OTLP_AUTH", "Bearer collector-token")
    sink = otel.from_config(
        "t",
        {
            "endpoint": server.endpoint,
            "allow_private_network": True,
            "authorization_env": "AGENTIAM_TEST_OTLP_AUTH",
            "headers": {"X-Tenant": "a"},
            "timeout": 2,
        },
    )
    sink.deliver([(1, _admin_event())])
    [(_, headers, _)] = server.collector.requests
    assert headers["authorization"] == "Bearer collector-token"
    assert headers["x-tenant"] == "a"
    sink.close()


def test_without_the_sdk_the_exporter_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ValueError, match=r"install agentiam\[otel\]"):
        otel.from_config("t", {"endpoint": "https://collector.example.com/v1/traces"})
