"""Detection settings: typed, validated, with the defaults docs/detection.md lists.

:meth:`DetectionConfig.from_mapping` reads the ``detection`` section of the YAML
settings. Every number has a range; a value of the wrong type or out of range, or a key
nobody knows, raises :class:`~agentiam.errors.InvalidInput` naming the field
(``detection.velocity.loop_repeats: ...``), so a typo never silently disables a rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar, get_type_hints

from agentiam.core.detection.model import Severity
from agentiam.errors import InvalidInput

__all__ = [
    "BoundaryConfig",
    "DetectionConfig",
    "EscalationConfig",
    "LimitsConfig",
    "RiskConfig",
    "SequenceConfig",
    "SeverityScores",
    "UnexpectedUseConfig",
    "VelocityConfig",
    "WarmupConfig",
]


def _range(low: float, high: float) -> dict[str, Any]:
    return {"range": (low, high)}


@dataclass(frozen=True, slots=True)
class WarmupConfig:
    """A learned baseline judges nothing until it holds ``min_observations`` calls
    spanning at least ``min_span_seconds``."""

    min_observations: int = field(default=50, metadata=_range(1, 10**7))
    min_span_seconds: float = field(default=1800.0, metadata=_range(0, 90 * 86400))


@dataclass(frozen=True, slots=True)
class SeverityScores:
    """Risk points an alert of each severity adds (0-100)."""

    low: int = field(default=10, metadata=_range(0, 100))
    medium: int = field(default=25, metadata=_range(0, 100))
    high: int = field(default=50, metadata=_range(0, 100))
    critical: int = field(default=80, metadata=_range(0, 100))

    def of(self, severity: Severity) -> int:
        return int(getattr(self, severity.label))


@dataclass(frozen=True, slots=True)
class RiskConfig:
    half_life_seconds: float = field(default=900.0, metadata=_range(1, 30 * 86400))
    max_agents: int = field(default=100_000, metadata=_range(1, 10**7))
    max_sessions: int = field(default=100_000, metadata=_range(1, 10**7))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Memory bounds. Past a cap the least recently seen entry is evicted (agents,
    sessions, peer groups) or the new value is counted as an overflow and not
    remembered (pairs, transitions, hosts ...)."""

    max_agents: int = field(default=10_000, metadata=_range(1, 10**7))
    max_pairs: int = field(default=512, metadata=_range(1, 10**6))
    max_transitions: int = field(default=1024, metadata=_range(1, 10**6))
    max_values: int = field(default=64, metadata=_range(1, 10**5))
    max_sessions_per_agent: int = field(default=32, metadata=_range(1, 10**5))
    max_peer_groups: int = field(default=10_000, metadata=_range(1, 10**7))
    max_peer_pairs: int = field(default=2048, metadata=_range(1, 10**6))
    max_peer_members: int = field(default=10_000, metadata=_range(1, 10**7))
    max_groups_per_agent: int = field(default=8, metadata=_range(0, 1000))
    max_cooldowns: int = field(default=100_000, metadata=_range(1, 10**7))
    max_token_roots: int = field(default=100_000, metadata=_range(1, 10**7))


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    enabled: bool = True
    deny_burst: int = field(default=5, metadata=_range(1, 10**6))
    deny_window_seconds: float = field(default=60.0, metadata=_range(0.001, 86400))


@dataclass(frozen=True, slots=True)
class UnexpectedUseConfig:
    enabled: bool = True
    rare_frequency: float = field(default=0.001, metadata=_range(0, 1))
    peer_common_fraction: float = field(default=0.2, metadata=_range(0, 1))
    peer_min_agents: int = field(default=2, metadata=_range(1, 10**6))


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    enabled: bool = True
    min_probability: float = field(default=0.01, metadata=_range(0, 1))
    min_support: int = field(default=30, metadata=_range(1, 10**7))
    smoothing: float = field(default=1.0, metadata=_range(0.0001, 1000))


@dataclass(frozen=True, slots=True)
class BoundaryConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class VelocityConfig:
    enabled: bool = True
    rate_alpha: float = field(default=0.1, metadata=_range(0.001, 1))
    rate_z: float = field(default=4.0, metadata=_range(0.5, 100))
    rate_factor: float = field(default=3.0, metadata=_range(1, 1000))
    rate_min_calls: int = field(default=30, metadata=_range(1, 10**7))
    rate_min_minutes: int = field(default=5, metadata=_range(1, 10**6))
    loop_repeats: int = field(default=15, metadata=_range(2, 10**6))
    loop_window_seconds: float = field(default=10.0, metadata=_range(0.001, 86400))
    spawn_burst: int = field(default=10, metadata=_range(2, 10**4))
    spawn_window_seconds: float = field(default=60.0, metadata=_range(0.001, 86400))


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    """Everything detection reads; the defaults are the documented ones."""

    enabled: bool = True
    cooldown_seconds: float = field(default=300.0, metadata=_range(0, 30 * 86400))
    profile_refresh_seconds: float = field(default=60.0, metadata=_range(0, 86400))
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    scores: SeverityScores = field(default_factory=SeverityScores)
    risk: RiskConfig = field(default_factory=RiskConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    unexpected_use: UnexpectedUseConfig = field(default_factory=UnexpectedUseConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    velocity: VelocityConfig = field(default_factory=VelocityConfig)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DetectionConfig:
        """Build from the ``detection`` section of the settings (None: defaults)."""
        return _build(cls, data or {}, "detection")


T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{where}: expected a mapping")
    assert is_dataclass(cls)
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InvalidInput(
            f"{where}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = known[name]
        kind = hints[name]
        path = f"{where}.{name}"
        if is_dataclass(kind):
            assert isinstance(kind, type)
            values[name] = _build(kind, value, path)
            continue
        values[name] = _scalar(kind, value, path, spec.metadata.get("range"))
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise InvalidInput(f"{where}: {exc}") from None


def _scalar(kind: Any, value: Any, path: str, bounds: tuple[float, float] | None) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{path}: expected true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{path}: expected a number")
    if kind is int:
        if not isinstance(value, int) and not float(value).is_integer():
            raise InvalidInput(f"{path}: expected a whole number")
        value = int(value)
    else:
        value = float(value)
        if value != value:  # NaN
            raise InvalidInput(f"{path}: expected a number")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        low, high = bounds
        raise InvalidInput(f"{path}: expected a value from {_num(low)} to {_num(high)}")
    return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
