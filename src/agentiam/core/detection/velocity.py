"""Velocity: runaway loops, rate spikes and spawning bursts (docs/detection.md,
"Velocity").

- ``velocity.runaway_loop`` (HIGH, no warm-up): the same ``(action, resource)`` pair
  attempted ``loop_repeats`` times within about ``loop_window_seconds``. Each pair has a
  leaky bucket that drains ``loop_repeats`` per window and fills by one per attempt
  (allowed or refused); it fires when it holds ``loop_repeats``. A loop at machine speed
  is therefore caught at exactly ``loop_repeats`` calls, however fast it runs.
- ``velocity.rate_ceiling`` (HIGH, no warm-up): more calls in the current minute than
  the declared ``max_calls_per_minute``. When declared, it replaces the learned rule.
- ``velocity.rate_spike`` (MEDIUM): once warm and with at least ``rate_min_minutes``
  active minutes learned, more calls in the current minute than
  ``max(rate_min_calls, mean + rate_z·sd, mean·rate_factor)`` of the learned
  active-minute rate.
- ``velocity.spawn_burst`` (HIGH): ``spawn_burst`` sub-agents created within
  ``spawn_window_seconds``; with a declared ``max_spawns_per_hour``,
  ``velocity.spawn_ceiling`` instead (more than that many in the current clock hour).
"""

from __future__ import annotations

import math
from collections import deque

from agentiam.core.detection.config import VelocityConfig
from agentiam.core.detection.detector import DetectionState
from agentiam.core.detection.model import Alert, Category, Observation, Severity
from agentiam.core.detection.observation import AGENT_CREATED

__all__ = ["VelocityDetector"]

_LOOP = "loop"
_SPAWNS = "spawns"
_SPAWN_HOUR = "spawn_hour"


class VelocityDetector:
    name = "velocity"

    def __init__(self, config: VelocityConfig, max_pairs: int) -> None:
        self.config = config
        self._leak = config.loop_repeats / config.loop_window_seconds
        # half a call of slack: a burst at machine speed fires at exactly the threshold
        self._fire_at = config.loop_repeats - 0.5
        self._max_pairs = max_pairs

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]:
        if state.call:
            alerts = self._loop(obs, state)
            rate = self._rate(obs, state)
            return alerts + rate if rate else alerts
        if obs.kind == AGENT_CREATED:
            return self._spawns(obs, state)
        return []

    # -- runaway loops -------------------------------------------------------------------

    def _loop(self, obs: Observation, state: DetectionState) -> list[Alert]:
        scratch = state.agent.scratch
        buckets = scratch.get(_LOOP)
        if buckets is None:
            buckets = scratch[_LOOP] = {}
        t = state.t
        pair = state.pair
        bucket = buckets.get(pair)
        if bucket is None:
            if len(buckets) >= self._max_pairs:
                del buckets[next(iter(buckets))]  # the oldest pair's bucket
            bucket = buckets[pair] = [0.0, t, 0, t]
        level = bucket[0] - (t - bucket[1]) * self._leak
        if level <= 0.0:
            level = 0.0
            bucket[2] = 0
            bucket[3] = t
        level += 1.0
        bucket[0] = level
        bucket[1] = t
        bucket[2] += 1
        if level < self._fire_at:
            return []
        repeats = bucket[2]
        seconds = t - bucket[3]
        return state.alert(
            obs,
            "velocity.runaway_loop",
            Category.VELOCITY,
            Severity.HIGH,
            pair,
            f"{obs.action} on {obs.resource} repeated {repeats} times in {seconds:.2f} s",
            {
                "action": obs.action,
                "resource": obs.resource,
                "repeats": repeats,
                "seconds": round(seconds, 3),
                "threshold_repeats": self.config.loop_repeats,
                "window_seconds": self.config.loop_window_seconds,
            },
            state.agent.recent_events(pair),
        )

    # -- call rate -----------------------------------------------------------------------

    def _rate(self, obs: Observation, state: DetectionState) -> list[Alert]:
        agent = state.agent
        count = agent.minute_count
        expect = agent.expect
        ceiling = expect.max_calls_per_minute if expect is not None else None
        if ceiling is not None:
            if count <= ceiling:
                return []
            return state.alert(
                obs,
                "velocity.rate_ceiling",
                Category.VELOCITY,
                Severity.HIGH,
                "ceiling",
                f"{count} calls this minute, above the declared {ceiling}",
                {"calls_this_minute": count, "max_calls_per_minute": ceiling, "rule": "declared"},
                agent.recent_events(),
            )
        cfg = self.config
        if not state.warm or agent.rate_minutes < cfg.rate_min_minutes:
            return []
        if count <= cfg.rate_min_calls:
            return []
        mean = agent.rate_mean
        sd = math.sqrt(agent.rate_var)
        limit = max(float(cfg.rate_min_calls), mean + cfg.rate_z * sd, mean * cfg.rate_factor)
        if count <= limit:
            return []
        return state.alert(
            obs,
            "velocity.rate_spike",
            Category.VELOCITY,
            Severity.MEDIUM,
            "rate",
            f"{count} calls this minute against a usual {mean:.1f} (sd {sd:.1f})",
            {
                "calls_this_minute": count,
                "baseline_mean": round(mean, 3),
                "baseline_sd": round(sd, 3),
                "threshold": round(limit, 3),
                "active_minutes_learned": agent.rate_minutes,
                "rule": "learned",
            },
            agent.recent_events(),
        )

    # -- spawning ------------------------------------------------------------------------

    def _spawns(self, obs: Observation, state: DetectionState) -> list[Alert]:
        agent = state.agent
        scratch = agent.scratch
        t = state.t
        expect = agent.expect
        ceiling = expect.max_spawns_per_hour if expect is not None else None
        if ceiling is not None:
            hour = int(t // 3600)
            slot = scratch.get(_SPAWN_HOUR)
            if slot is None or slot[0] != hour:
                slot = scratch[_SPAWN_HOUR] = [hour, 0]
            slot[1] += 1
            if slot[1] <= ceiling:
                return []
            return state.alert(
                obs,
                "velocity.spawn_ceiling",
                Category.VELOCITY,
                Severity.HIGH,
                "ceiling",
                f"{slot[1]} sub-agents this hour, above the declared {ceiling}",
                {
                    "spawns_this_hour": slot[1],
                    "max_spawns_per_hour": ceiling,
                    "spawns_total": agent.spawns + 1,
                    "rule": "declared",
                },
            )
        cfg = self.config
        times = scratch.get(_SPAWNS)
        if times is None:
            times = scratch[_SPAWNS] = deque(maxlen=cfg.spawn_burst)
        times.append((t, obs.event_id))
        if len(times) < cfg.spawn_burst or t - times[0][0] > cfg.spawn_window_seconds:
            return []
        return state.alert(
            obs,
            "velocity.spawn_burst",
            Category.VELOCITY,
            Severity.HIGH,
            "burst",
            f"{len(times)} sub-agents created in {t - times[0][0]:.1f} s",
            {
                "spawns": len(times),
                "seconds": round(t - times[0][0], 3),
                "threshold": cfg.spawn_burst,
                "window_seconds": cfg.spawn_window_seconds,
                "spawns_total": agent.spawns + 1,
            },
            tuple(eid for _, eid in times),
        )
