"""A gateway's histograms as the bench scripts read them from its ``GET /metrics``
(Prometheus text): the cumulative bucket counts, a phase's share above a bound."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

LATE = ("0.002", "0.005")
"""The bucket bounds (seconds) the bench tables report the share above: 2 and 5 ms."""


def histogram(base_url: str, metric: str) -> dict[str, float]:
    """One of the gateway's cumulative histograms: bucket bound -> count."""
    import httpx  # here: the load generator processes that import this never need it

    text = httpx.get(base_url + "/metrics", timeout=10).text
    found = re.findall(re.escape(metric) + r'_bucket\{le="([^"]+)"\} (\S+)', text)
    return {le: float(n) for le, n in found}


def since(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """A phase's histogram: the counts of ``after`` less those of ``before``."""
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def share_over(histogram: Mapping[str, float], bounds: Sequence[str]) -> str:
    """The share of a phase's observations above each bucket bound ("-": none)."""
    total = histogram.get("+Inf", 0.0)
    if not total:
        return "-"
    return " / ".join(f"{(total - histogram.get(le, 0.0)) / total:.1%}" for le in bounds)
