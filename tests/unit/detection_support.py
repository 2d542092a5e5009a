"""A feed of observations for the detection tests, and benign workloads with
variation (the false-positive checks run the detectors over them)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from agentiam.core.detection.config import DetectionConfig
from agentiam.core.detection.engine import DetectionEngine
from agentiam.core.detection.model import Alert, Expectations, Observation
from agentiam.core.detection.profile import AgentInfo

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
# a short warm-up so tests stay small: 40 calls over at least 10 minutes
QUICK = {"warmup": {"min_observations": 40, "min_span_seconds": 600}}


def config(**sections: Any) -> DetectionConfig:
    data: dict[str, Any] = {**QUICK}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return DetectionConfig.from_mapping(data)


class Feed:
    """Observations in time order into one engine; every alert collected."""

    def __init__(
        self,
        engine: DetectionEngine | None = None,
        *,
        profiles: Mapping[str, AgentInfo] | None = None,
        cfg: DetectionConfig | None = None,
    ) -> None:
        known = dict(profiles or {})
        self.profiles = known
        self.engine = engine or DetectionEngine(cfg or config(), known.get)
        self.t = T0
        self.n = 0
        self.alerts: list[Alert] = []

    def wait(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)

    def observe(
        self,
        agent: str,
        kind: str = "authz.decision",
        action: str = "invoke_tool",
        resource: str | None = "Tool::search",
        *,
        allowed: bool | None = True,
        session: str | None = "s1",
        gap: float = 1.0,
        **attributes: Any,
    ) -> list[Alert]:
        self.t += timedelta(seconds=gap)
        self.n += 1
        obs = Observation(
            index=self.n,
            event_id=f"evt_{self.n}",
            time=self.t,
            kind=kind,
            agent_id=agent,
            action=action,
            resource=resource,
            allowed=allowed,
            session=session,
            attributes=attributes,
        )
        found = self.engine.observe(obs)
        self.alerts.extend(found)
        return found

    def call(self, agent: str, tool: str = "search", **kw: Any) -> list[Alert]:
        return self.observe(agent, resource=f"Tool::{tool}", **kw)

    def detectors(self) -> list[str]:
        return [a.detector for a in self.alerts]


def support_session(feed: Feed, agent: str, rng: random.Random, session: str) -> None:
    """A support agent's benign session: search the knowledge base, read one to three
    tickets (per-ticket endpoints), sometimes look up the customer, sometimes search
    again, then reply."""
    env = {"environment": "staging", "host": "tickets.internal.example"}
    feed.call(agent, "kb_search", session=session, gap=rng.uniform(1, 6))
    for _ in range(rng.randint(1, 3)):
        feed.observe(
            agent,
            action="GET",
            resource=f"Endpoint::tickets/{rng.randint(1, 9999)}",
            session=session,
            gap=rng.uniform(1, 6),
            **env,
        )
    if rng.random() < 0.5:
        feed.call(agent, "crm_lookup", session=session, gap=rng.uniform(1, 6))
    if rng.random() < 0.2:
        feed.call(agent, "kb_search", session=session, gap=rng.uniform(1, 6))
    feed.call(agent, "reply", session=session, gap=rng.uniform(1, 6))


def benign(feed: Feed, agent: str, sessions: int, *, seed: int = 7) -> None:
    """``sessions`` benign support sessions a few minutes apart."""
    rng = random.Random(seed)
    for k in range(sessions):
        support_session(feed, agent, rng, f"{agent}-s{k}")
        feed.wait(rng.uniform(30, 240))


def info(agent: str, **kw: Any) -> AgentInfo:
    expectations = kw.pop("expectations", None)
    return AgentInfo(
        agent_id=agent,
        owners=kw.pop("owners", ("hum_owner",)),
        purpose=kw.pop("purpose", "customer support"),
        environment=kw.pop("environment", "staging"),
        labels=kw.pop("labels", {}),
        expectations=expectations if expectations is not None else Expectations(),
        **kw,
    )
