"""Prometheus metrics of audit ingest (``POST /v1/audit/ingest``), served on
``/metrics`` and read from :class:`~agentiam.services.enforcement_sync.EnforcementSync`
at scrape time.

``agentiam_audit_ingest_unbound_key_requests_total{binding}`` counts the ingest
requests this process let through with an unbound verifier key (counted once their
events pass the checks, before they are stored): ``legacy`` (made before
a binding was required: re-issue it bound) or ``any_source`` (unbound by its
creator's choice). Alert on ``legacy`` rising; it should fall to zero once every
enforcement point holds a bound key.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from agentiam.services.enforcement_sync import EnforcementSync

__all__ = ["register_ingest_metrics"]


class _UnboundIngestCollector(Collector):
    def __init__(self, sync: EnforcementSync) -> None:
        self._sync = sync

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "agentiam_audit_ingest_unbound_key_requests",
            "Audit ingest requests let through with a verifier key bound to no "
            "enforcement point, by why it is unbound (legacy: re-issue it; any_source: "
            "by choice)",
            labels=["binding"],
        )
        for binding, count in sorted(self._sync.unbound_ingests().items()):
            requests.add_metric([binding], count)
        yield requests


def register_ingest_metrics(registry: CollectorRegistry, sync: EnforcementSync) -> None:
    registry.register(_UnboundIngestCollector(sync))
