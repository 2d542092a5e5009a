"""Prometheus metrics of the policy decision point, served on ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agentiam.core.policy.authorizer import Decision
from agentiam.core.policy.engine import PolicyEngine

__all__ = ["PolicyMetrics"]


class PolicyMetrics:
    """Decisions by outcome, evaluation time, dry-run disagreements, and (read at
    scrape time) the policy version and the slice cache."""

    def __init__(
        self, registry: CollectorRegistry, engine: Callable[[], PolicyEngine | None]
    ) -> None:
        self._decisions = Counter(
            "agentiam_policy_decisions_total",
            "Policy decisions made (and audited) through the decision point",
            ["decision"],
            registry=registry,
        )
        self._would_change = Counter(
            "agentiam_policy_dry_run_would_change_total",
            "Decisions that dry-run policies would have changed",
            registry=registry,
        )
        self._latency = Histogram(
            "agentiam_policy_evaluation_seconds",
            "Time to evaluate one decision (without the audit write)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=registry,
        )
        registry.register(_EngineCollector(engine))

    def observe(self, decision: Decision) -> None:
        self._decisions.labels(decision.decision).inc()
        self._latency.observe(decision.evaluation_us / 1e6)
        if decision.would_change:
            self._would_change.inc()


class _EngineCollector(Collector):
    def __init__(self, engine: Callable[[], PolicyEngine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self._engine()
        if engine is None:
            return
        yield GaugeMetricFamily(
            "agentiam_policy_version", "Policy set version in memory", value=engine.version
        )
        yield GaugeMetricFamily(
            "agentiam_policy_count", "Policies in the set in memory", value=len(engine.policies)
        )
        info = engine.slice_cache_info()
        cache = GaugeMetricFamily(
            "agentiam_policy_slice_cache", "Parsed Cedar sets: size and counters", labels=["kind"]
        )
        cache.add_metric(["size"], info.currsize)
        cache.add_metric(["hits"], info.hits)
        cache.add_metric(["misses"], info.misses)
        yield cache
