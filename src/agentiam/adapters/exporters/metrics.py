"""Prometheus metrics of the audit exporters, read from the runner at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentiam.services.audit_export import ExportRunner

__all__ = ["register_export_metrics"]

log = logging.getLogger("agentiam.audit.export")


class _ExportCollector(Collector):
    def __init__(self, runner: ExportRunner) -> None:
        self._runner = runner

    def collect(self) -> Iterator[Metric]:
        if not self._runner.names:
            return
        try:
            health = self._runner.health()
        except Exception:  # a scrape must not fail with the database
            log.warning("could not read the audit exporters' health", exc_info=True)
            return
        lag = GaugeMetricFamily(
            "agentiam_audit_exporter_lag",
            "Trail entries not yet delivered by the exporter",
            labels=["exporter"],
        )
        healthy = GaugeMetricFamily(
            "agentiam_audit_exporter_healthy",
            "1 when the exporter keeps up and is not failing, else 0",
            labels=["exporter"],
        )
        delivered = CounterMetricFamily(
            "agentiam_audit_exporter_delivered_events",
            "Trail entries delivered by the exporter since this process started",
            labels=["exporter"],
        )
        failures = GaugeMetricFamily(
            "agentiam_audit_exporter_consecutive_failures",
            "Deliveries that failed in a row",
            labels=["exporter"],
        )
        skipped = CounterMetricFamily(
            "agentiam_audit_exporter_skipped_entries",
            "Trail entries pruned by retention before the exporter delivered them, "
            "counted since this process started",
            labels=["exporter"],
        )
        truncated = CounterMetricFamily(
            "agentiam_audit_exporter_truncated_entries",
            "Trail entries delivered cut short or as a stub (too big to send whole), "
            "counted since this process started",
            labels=["exporter"],
        )
        for h in health:
            lag.add_metric([h.name], h.lag)
            healthy.add_metric([h.name], 1 if h.healthy else 0)
            delivered.add_metric([h.name], h.delivered)
            failures.add_metric([h.name], h.consecutive_failures)
            skipped.add_metric([h.name], h.skipped)
            truncated.add_metric([h.name], h.truncated)
        yield from (lag, healthy, delivered, failures, skipped, truncated)


def register_export_metrics(registry: CollectorRegistry, runner: ExportRunner) -> None:
    registry.register(_ExportCollector(runner))
