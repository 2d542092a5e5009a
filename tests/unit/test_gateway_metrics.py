"""The gateways' shared metrics (``adapters/gateway/metrics.py``): the HTTP gateway's
``/metrics`` keeps every name and help text it had before they moved there (dashboards
and ``bench/gateway.py`` read them), and the MCP gateway's counting never turns a
method or outcome outside the fixed sets into a label value.

The HTTP gateway runs as in ``test_gateway_http.py`` (a real gateway, its test
upstream on a loopback port, the fake control-plane link of ``gateway_support``)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tests.unit.test_gateway_http import App

from agentiam.adapters.gateway.metrics import McpGatewayMetrics
from agentiam.adapters.gateway.outcomes import OutcomeQueue

HTTP_FAMILIES = {
    "agentiam_gateway_calls": (
        "counter",
        "Calls answered, by outcome (allowed, or the refusal or failure).",
    ),
    "agentiam_gateway_request_seconds": (
        "histogram",
        "Time from request to the end of the response, upstream included.",
    ),
    "agentiam_gateway_decision_seconds": (
        "histogram",
        "Time to authenticate, decide and make the audit event durable.",
    ),
    "agentiam_gateway_event_loop_lag_seconds": (
        "histogram",
        "How late a timer due every 10 ms ran: the delay every call in flight waited out "
        "(adapters/gateway/loop_watch.py).",
    ),
    "agentiam_gateway_outcomes_lost": (
        "counter",
        "tool.call outcome events that could not be made durable (each is logged).",
    ),
    "agentiam_gateway_spool_pending_events": (
        "gauge",
        "Audit events spooled and not yet shipped to the control plane.",
    ),
    "agentiam_gateway_spool_pending_bytes": (
        "gauge",
        "Bytes of audit events not yet shipped (bounded by spool.max_bytes).",
    ),
    "agentiam_gateway_spool_rejected_events": (
        "counter",
        "Audit events the control plane refused for good, set aside in the spool's "
        "rejected.jsonl since the gateway started.",
    ),
    "agentiam_gateway_spool_rejected_bytes": (
        "gauge",
        "Bytes rejected.jsonl holds (bounded by spool.rejected_max_bytes).",
    ),
    "agentiam_gateway_spool_rejected_full": (
        "gauge",
        "1 when rejected.jsonl reached its bound: every call is refused until an operator "
        "empties it (agentiam gateway spool rejected).",
    ),
    "agentiam_gateway_control_plane_seconds_since_contact": (
        "gauge",
        "Seconds since the control plane last answered (-1: never).",
    ),
    "agentiam_gateway_credential_echoes": (
        "counter",
        "Responses in which the upstream echoed the brokered credential, by where "
        "(field: response fields holding it dropped; body: occurrences masked).",
    ),
}


def test_the_http_gateways_metrics_keep_their_names_types_and_help_texts(
    tmp_path: Path,
) -> None:
    app = App(tmp_path)
    assert app.request("GET", "/v1/invoices/7").status_code == 200
    r = app.request("GET", "/metrics", token=False)
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {
        f.name: (f.type, f.documentation)
        for f in text_string_to_metric_families(r.text)
        if not f.name.endswith("_created")  # prometheus_client's creation times
    }
    assert families == HTTP_FAMILIES
    assert 'agentiam_gateway_calls_total{outcome="allowed"} 1.0' in r.text


def test_a_method_or_outcome_outside_the_fixed_sets_is_never_a_label(tmp_path: Path) -> None:
    gateway = App(tmp_path).gateway
    metrics = McpGatewayMetrics(
        gateway.runtime,
        OutcomeQueue(gateway.enforcer),
        methods=frozenset({"tools/call"}),
        sessions=lambda: 3,
    )
    metrics.count('evil"} 1', 'x"}', seconds=0.001, decision=None)
    metrics.count("tools/call", "forbidden", seconds=0.002, decision=0.001)
    metrics.count("ping", "allowed", seconds=None, decision=None)  # no call
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
        if not s.name.endswith("_created")
    }
    requests = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "agentiam_mcp_gateway_requests_total"
    }
    assert requests == {
        (("method", "other"), ("outcome", "error")): 1.0,
        (("method", "tools/call"), ("outcome", "forbidden")): 1.0,
        (("method", "other"), ("outcome", "allowed")): 1.0,
    }
    calls = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "agentiam_gateway_calls_total"
    }
    assert calls == {(("outcome", "error"),): 1.0, (("outcome", "forbidden"),): 1.0}
    assert samples[("agentiam_gateway_request_seconds_count", ())] == 2
    assert samples[("agentiam_gateway_decision_seconds_count", ())] == 1
    assert samples[("agentiam_mcp_gateway_sessions", ())] == 3
