"""The Prometheus metrics both gateways serve at ``GET /metrics``.

Each gateway has a registry of its own (:class:`GatewayMetrics`): the calls counter,
the request, decision and event-loop lag histograms, the outcome events lost
(:class:`OutcomesCollector`), the anonymous refusals counted in summaries
(:class:`RefusalSummariesCollector`) and the runtime's state (:class:`RuntimeCollector`:
the spool, its set-aside events, the control plane's last contact), and the responses
in which an upstream echoed the brokered credential (:meth:`GatewayMetrics.echoed`).
The MCP gateway adds one family split by JSON-RPC method and a gauge of its open
sessions (:class:`McpGatewayMetrics`). Names, labels and help texts are an interface:
dashboards, alerts and ``bench/gateway.py`` read them.

Every label value comes from a fixed set (:data:`OUTCOMES`, and the MCP gateway's
methods): never a tool name, an agent or session id, or anything else a client
chooses, so a client can neither grow the series without bound nor put its words
into them. The exposition is Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agentiam.adapters.gateway.outcomes import OutcomeQueue
from agentiam.adapters.gateway.refusal_summaries import RefusalSummaries
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.core.approvals_wire import PROBLEM_CODES

__all__ = [
    "CONTENT_TYPE",
    "ECHO_WHERE",
    "OTHER_METHOD",
    "OUTCOMES",
    "OUTCOME_OF_STATUS",
    "GatewayMetrics",
    "ListChangesCollector",
    "McpGatewayMetrics",
    "OutcomesCollector",
    "RefusalSummariesCollector",
    "RuntimeCollector",
    "approval_outcome",
    "refusal_outcome",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

ECHO_WHERE: Final = frozenset({"field", "body"})
"""Every value of the credential echo counter's ``where`` label."""

OUTCOME_OF_STATUS: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",  # the MCP transport's answers (the HTTP gateway makes none)
    406: "bad_request",
    408: "client_timeout",
    413: "too_large",
    414: "bad_request",
    415: "bad_request",
    429: "rate_limited",
    431: "bad_request",
    501: "bad_request",  # a request transfer coding the HTTP gateway does not take
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}
"""The outcome of a call refused with an HTTP status (``error`` for any other)."""

OUTCOMES: Final = frozenset(
    {
        "allowed",
        "client_gone",
        "error",
        *OUTCOME_OF_STATUS.values(),
        *(code.replace("-", "_") for code in PROBLEM_CODES.values()),
    }
)
"""Every value of the ``outcome`` label."""

OTHER_METHOD: Final = "other"
"""The MCP ``method`` label of every request whose method is not one of the fixed set."""


def refusal_outcome(status: int) -> str:
    """The outcome label of a call refused with HTTP ``status``."""
    return OUTCOME_OF_STATUS.get(status, "error")


def approval_outcome(state: str) -> str:
    """The outcome label of a call that waits on, or was refused by, an approval in
    ``state`` (``approval_pending``, ``approval_denied``, ...): its problem code's."""
    return PROBLEM_CODES.get(state, "approval-denied").replace("-", "_")


class GatewayMetrics:
    """The Prometheus metrics of one gateway, in a registry of its own."""

    def __init__(self, runtime: GatewayRuntime, outcomes: OutcomeQueue) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "agentiam_gateway_calls",
            "Calls answered, by outcome (allowed, or the refusal or failure).",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agentiam_gateway_request_seconds",
            "Time from request to the end of the response, upstream included.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.decision = Histogram(
            "agentiam_gateway_decision_seconds",
            "Time to authenticate, decide and make the audit event durable.",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "agentiam_gateway_event_loop_lag_seconds",
            "How late a timer due every 10 ms ran: the delay every call in flight waited "
            "out (adapters/gateway/loop_watch.py).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.credential_echoes = Counter(
            "agentiam_gateway_credential_echoes",
            "Responses in which the upstream echoed the brokered credential, by where "
            "(field: response fields holding it dropped; body: occurrences masked).",
            ["where"],
            registry=self.registry,
        )
        self.registry.register(OutcomesCollector(outcomes))
        if runtime.summaries is not None:
            self.registry.register(RefusalSummariesCollector(runtime.summaries))
        self.registry.register(RuntimeCollector(runtime))

    def echoed(self, where: str) -> None:
        """Count a response in which the upstream echoed the brokered credential, in
        ``where`` (:data:`ECHO_WHERE`: ``field``, response fields holding it dropped,
        HTTP gateway only; ``body``, occurrences masked in the body). A response that
        did both counts once for each."""
        if where not in ECHO_WHERE:
            raise ValueError(f"not a place an echo is counted: {where!r}")
        self.credential_echoes.labels(where).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (:data:`CONTENT_TYPE`). It reads the
        spool's health, so the gateways call it on a worker thread."""
        return generate_latest(self.registry)


class McpGatewayMetrics(GatewayMetrics):
    """The MCP gateway's metrics: the shared ones, every request to the MCP endpoint
    by JSON-RPC method and outcome, and its open handshake-era sessions.

    ``methods`` is the fixed set of ``method`` label values (any other method counts
    as :data:`OTHER_METHOD`); ``sessions`` reads the number of open sessions."""

    def __init__(
        self,
        runtime: GatewayRuntime,
        outcomes: OutcomeQueue,
        *,
        methods: frozenset[str],
        sessions: Callable[[], int],
        list_changes: Callable[[], Iterable[ListChanges]] | None = None,
    ) -> None:
        """``list_changes``: each upstream server's list_changed notifications and the
        refetches they caused, read at scrape time (:class:`ListChangesCollector`)."""
        super().__init__(runtime, outcomes)
        if list_changes is not None:
            self.registry.register(ListChangesCollector(list_changes))
        self._methods = methods
        self.requests = Counter(
            "agentiam_mcp_gateway_requests",
            "Requests to the MCP endpoint answered, by JSON-RPC method (tools/call, "
            "resources/read, prompts/get, the four listings, initialize, or other) and "
            "outcome (allowed, or the refusal or failure).",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.sessions = Gauge(
            "agentiam_mcp_gateway_sessions",
            "Handshake-era MCP sessions (protocol 2024-11-05 to 2025-11-25) open now.",
            registry=self.registry,
        )
        self.sessions.set_function(lambda: float(sessions()))
        self.listens = Gauge(
            "agentiam_mcp_gateway_listen_streams",
            "subscriptions/listen streams (protocol 2026-07-28) open now, every agent's.",
            registry=self.registry,
        )
        self.agents_told = Counter(
            "agentiam_mcp_gateway_agents_told",
            "list_changed notifications sent to agents, by list (tools, resources, prompts) "
            "and carrier (session: a handshake-era session's standalone stream; listen: a "
            "2026-07-28 subscriptions/listen stream).",
            ["list", "via"],
            registry=self.registry,
        )
        self.policy_rounds = Counter(
            "agentiam_mcp_gateway_policy_rounds",
            "Rounds of list_changed notifications sent because a new policy set came "
            "into force (at most one a second; each notification sent is counted in "
            "agentiam_mcp_gateway_agents_told).",
            registry=self.registry,
        )
        self.streams_ended = Counter(
            "agentiam_mcp_gateway_streams_ended",
            "Streams (listen streams and handshake-era GET streams) the gateway ended "
            "because their token stopped passing, by reason (expired, revoked, "
            "unavailable: the control plane past the outage bound; invalid).",
            ["reason"],
            registry=self.registry,
        )

    def watch_listens(self, listens: Callable[[], int]) -> None:
        """Read the open listen streams from ``listens`` at scrape time."""
        self.listens.set_function(lambda: float(listens()))

    def told(self, group: str, *, sessions: int, streams: int) -> None:
        """``group``'s list_changed was sent to ``sessions`` handshake-era sessions
        and ``streams`` listen streams."""
        if sessions:
            self.agents_told.labels(group, "session").inc(sessions)
        if streams:
            self.agents_told.labels(group, "listen").inc(streams)

    def policy_round(self) -> None:
        """One round of notifications for a new policy set was sent."""
        self.policy_rounds.inc()

    def stream_ended(self, reason: str) -> None:
        """The gateway ended a stream for ``reason`` (a fixed word, see the help)."""
        self.streams_ended.labels(reason).inc()

    def count(
        self, method: str, outcome: str, *, seconds: float | None, decision: float | None
    ) -> None:
        """Count one request answered by method and outcome, and in
        ``agentiam_gateway_calls_total`` unless it is an allowed request of none of
        the fixed methods (a notification, a GET stream, a DELETE: not a call; their
        refusals count). A method or outcome outside the fixed sets is counted as
        ``other`` or ``error``, never as itself. ``seconds`` (the whole request) and
        ``decision`` (until it was refused or decided) are observed when given."""
        method = method if method in self._methods else OTHER_METHOD
        outcome = outcome if outcome in OUTCOMES else "error"
        self.requests.labels(method, outcome).inc()
        if method != OTHER_METHOD or outcome != "allowed":
            self.calls.labels(outcome).inc()
        if seconds is not None:
            self.latency.observe(seconds)
        if decision is not None:
            self.decision.observe(decision)


# one upstream server's list changes: its name, the list_changed notifications it sent,
# the listings fetched again after them, and how many of those fetches failed
ListChanges = tuple[str, int, int, int]


class ListChangesCollector(Collector):
    """Each upstream server's ``notifications/*/list_changed`` and the listings the MCP
    gateway fetched again after them (at most one per kind a second, however many
    notifications), read at scrape time. The ``server`` label takes the configured
    names only."""

    def __init__(self, read: Callable[[], Iterable[ListChanges]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily]:
        notices = CounterMetricFamily(
            "agentiam_mcp_gateway_upstream_list_changed",
            "list_changed notifications (tools, resources, prompts) received from each "
            "upstream server.",
            labels=["server"],
        )
        refetches = CounterMetricFamily(
            "agentiam_mcp_gateway_upstream_refetches",
            "Listings fetched again from each upstream server after a list_changed, by "
            "outcome (fetched, failed).",
            labels=["server", "outcome"],
        )
        for server, noticed, fetched, failed in self._read():
            notices.add_metric([server], noticed)
            refetches.add_metric([server, "fetched"], fetched - failed)
            refetches.add_metric([server, "failed"], failed)
        yield notices
        yield refetches


class OutcomesCollector(Collector):
    """``tool.call`` outcome events lost (:attr:`OutcomeQueue.lost`), read at scrape time."""

    def __init__(self, outcomes: OutcomeQueue) -> None:
        self._outcomes = outcomes

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "agentiam_gateway_outcomes_lost",
            "tool.call outcome events that could not be made durable (each is logged).",
            value=self._outcomes.lost,
        )


class RefusalSummariesCollector(Collector):
    """Refusals naming nobody that got no event of their own, counted in a summary
    event instead (``core/enforcement/anonymous.py``), by the ``outcome`` label of
    their status as ``agentiam_gateway_calls_total`` counts them; and the summary
    events lost. Read at scrape time."""

    def __init__(self, summaries: RefusalSummaries) -> None:
        self._summaries = summaries

    def collect(self) -> Iterable[CounterMetricFamily]:
        summarized = CounterMetricFamily(
            "agentiam_gateway_refusals_summarized",
            "Refusals of requests naming nobody past the audit budget: counted in an "
            "api.request.rejected.summary event instead of an event of their own, by outcome.",
            labels=["outcome"],
        )
        by_outcome: dict[str, int] = {}
        for status, count in self._summaries.budget.summarized().items():
            label = refusal_outcome(status)
            by_outcome[label] = by_outcome.get(label, 0) + count
        for label, count in sorted(by_outcome.items()):
            summarized.add_metric([label], count)
        yield summarized
        yield CounterMetricFamily(
            "agentiam_gateway_refusal_summaries_lost",
            "api.request.rejected.summary events that could not be made durable (each is logged).",
            value=self._summaries.lost,
        )


class RuntimeCollector(Collector):
    """The runtime's state, read at scrape time: the spool's backlog and set-aside
    events (``rejected.jsonl``), and the control plane's last contact."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        spool = self._runtime.spool.health()
        since = self._runtime.link.seconds_since_contact()
        yield GaugeMetricFamily(
            "agentiam_gateway_spool_pending_events",
            "Audit events spooled and not yet shipped to the control plane.",
            value=spool.pending_events,
        )
        yield GaugeMetricFamily(
            "agentiam_gateway_spool_pending_bytes",
            "Bytes of audit events not yet shipped (bounded by spool.max_bytes).",
            value=spool.pending_bytes,
        )
        yield CounterMetricFamily(
            "agentiam_gateway_spool_rejected_events",
            "Audit events the control plane refused for good, set aside in the spool's "
            "rejected.jsonl since the gateway started.",
            value=spool.rejected_events,
        )
        yield GaugeMetricFamily(
            "agentiam_gateway_spool_rejected_bytes",
            "Bytes rejected.jsonl holds (bounded by spool.rejected_max_bytes).",
            value=spool.rejected_bytes,
        )
        yield GaugeMetricFamily(
            "agentiam_gateway_spool_rejected_full",
            "1 when rejected.jsonl reached its bound: every call is refused until an "
            "operator empties it (agentiam gateway spool rejected).",
            value=1.0 if spool.rejected_full else 0.0,
        )
        yield GaugeMetricFamily(
            "agentiam_gateway_control_plane_seconds_since_contact",
            "Seconds since the control plane last answered (-1: never).",
            value=-1.0 if since is None else since,
        )
