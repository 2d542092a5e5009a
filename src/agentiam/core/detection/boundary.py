"""Boundary crossings (docs/detection.md, "Boundaries").

Reads the target's ``environment``, ``data_domain``, ``tenant`` and ``host`` from the
observation's attributes (only events that carry them; nothing is guessed). For each,
the first rule that applies decides:

1. declared (``expectations.environments`` / ``data_domains`` / ``tenants`` /
   ``hosts``, hosts as ``*.example.com`` patterns): a value outside them raises
   ``boundary.<field>`` (HIGH), from the first call; a value inside is fine;
2. environment only: the agent's own registered environment: a target in another one
   (a staging agent touching production) raises ``boundary.environment`` (HIGH);
3. learned, once warm: a value the agent never reached raises ``boundary.new_<field>``
   (MEDIUM).
"""

from __future__ import annotations

from agentiam.core.detection.config import BoundaryConfig
from agentiam.core.detection.detector import DetectionState
from agentiam.core.detection.model import Alert, Category, Observation, Severity

__all__ = ["BoundaryDetector"]


class BoundaryDetector:
    name = "boundary_crossing"

    def __init__(self, config: BoundaryConfig, max_values: int) -> None:
        self.config = config
        self._max_values = max_values

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]:
        attributes = obs.attributes
        if not attributes:
            return []
        alerts: list[Alert] = []
        agent = state.agent
        expect = agent.expect
        env = attributes.get("environment")
        if env is not None:
            declared = expect.environments if expect is not None else None
            own = agent.info.environment if agent.info is not None else None
            if declared is not None:
                if env not in declared:
                    alerts += self._declared(obs, state, "environment", env, sorted(declared))
            elif own is not None:
                if env != own:
                    alerts += state.alert(
                        obs,
                        "boundary.environment",
                        Category.BOUNDARY,
                        Severity.HIGH,
                        env,
                        f"an agent of {own} reached {env}",
                        {"observed": env, "expected": own, "rule": "agent environment"},
                    )
            else:
                alerts += self._learned(obs, state, "environment", env, agent.environments)
        domain = attributes.get("data_domain")
        if domain is not None:
            declared = expect.data_domains if expect is not None else None
            if declared is not None:
                if domain not in declared:
                    alerts += self._declared(obs, state, "data_domain", domain, sorted(declared))
            else:
                alerts += self._learned(obs, state, "data_domain", domain, agent.data_domains)
        tenant = attributes.get("tenant")
        if tenant is not None:
            declared = expect.tenants if expect is not None else None
            if declared is not None:
                if tenant not in declared:
                    alerts += self._declared(obs, state, "tenant", tenant, sorted(declared))
            else:
                alerts += self._learned(obs, state, "tenant", tenant, agent.tenants)
        host = attributes.get("host")
        if host is not None:
            hosts = expect.hosts if expect is not None else None
            if hosts is not None:
                if host not in hosts:
                    alerts += self._declared(
                        obs, state, "host", host, list(expect.source.hosts[:20]) if expect else []
                    )
            else:
                alerts += self._learned(obs, state, "host", host, agent.hosts)
        return alerts

    def _declared(
        self, obs: Observation, state: DetectionState, field: str, value: str, declared: list[str]
    ) -> list[Alert]:
        return state.alert(
            obs,
            f"boundary.{field}",
            Category.BOUNDARY,
            Severity.HIGH,
            value,
            f"{field.replace('_', ' ')} {value} is outside the declared ones",
            {"observed": value, "expected": declared[:20], "rule": "declared"},
        )

    def _learned(
        self,
        obs: Observation,
        state: DetectionState,
        field: str,
        value: str,
        known: dict[str, int],
    ) -> list[Alert]:
        if not state.warm or value in known or len(known) >= self._max_values:
            return []
        return state.alert(
            obs,
            f"boundary.new_{field}",
            Category.BOUNDARY,
            Severity.MEDIUM,
            value,
            f"first time this agent reached {field.replace('_', ' ')} {value}",
            {"observed": value, "known": sorted(known)[:20], "rule": "learned"},
        )
