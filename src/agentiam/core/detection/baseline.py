"""Learned behaviour: one bounded profile per agent, and per peer group.

An :class:`AgentState` is updated online, O(1) per observation, and holds:

- counts of ``(action, resource)`` pairs (resource ids with a digit in a path segment
  folded to ``*``: ``Endpoint::invoices/123`` and ``invoices/124`` are one pair);
- a first-order Markov model over its calls, per session: a state is a call's pair
  (``invoke_tool@Tool::search``; over bare actions every MCP call would be one state,
  ``invoke_tool``), with transition counts the detector smooths
  (:mod:`agentiam.core.detection.sequence`);
- the calls-per-minute rate over *active* minutes (minutes with at least one call):
  an exponentially weighted mean and variance (West's EWMA variance), so a bursty but
  regular agent is judged against its own bursts;
- the hosts, environments, data domains and tenants it reached, and its spawn count;
- the registry's view of it (:class:`~agentiam.core.detection.profile.AgentInfo`),
  cached by the engine.

Memory is bounded by :class:`~agentiam.core.detection.config.LimitsConfig`: past a cap
a new pair / transition / value is counted in ``overflow`` and not remembered (so a
flood of distinct names cannot grow a profile), and the store keeps at most
``max_agents`` agents and ``max_peer_groups`` groups, evicting the least recently seen.

A :class:`PeerGroup` (agents sharing an owner, a purpose or a label) counts, per pair,
how many of its member agents used it: "new to this agent but common among its peers".
Counts are not taken back when a member is evicted (an overestimate of commonness, so
the safer direction is a lower severity, never a missed alert).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from agentiam.core.detection.config import LimitsConfig
from agentiam.core.detection.profile import AgentInfo, CompiledExpectations

__all__ = ["AgentState", "Baselines", "Pair", "PeerGroup", "pair_of"]

Pair = tuple[str, str]
RECENT = 64  # recent calls kept per agent, for the evidence of an alert
_FOLD_MEMO = 4096
_fold_memo: dict[str, str] = {}


def pair_of(action: str, resource: str | None) -> Pair:
    """The baseline key of a call: ids that look per-object (a path segment with a
    digit) are folded to ``*`` so a per-invoice endpoint is one pair, not thousands."""
    if resource is None:
        return (action, "")
    if "/" not in resource:
        return (action, resource)
    folded = _fold_memo.get(resource)
    if folded is None:
        folded = "/".join(
            "*" if any(c.isdigit() for c in seg) else seg for seg in resource.split("/")
        )
        if len(_fold_memo) >= _FOLD_MEMO:
            _fold_memo.clear()
        _fold_memo[resource] = folded
    return (action, folded)


def _bump(counts: dict[Any, int], key: Any, cap: int) -> bool:
    """Count ``key``; False (not remembered) when it is new and the map is full."""
    n = counts.get(key)
    if n is not None:
        counts[key] = n + 1
        return True
    if len(counts) >= cap:
        return False
    counts[key] = 1
    return True


class AgentState:
    """Everything detection keeps about one agent."""

    __slots__ = (
        "agent_id",
        "calls",
        "data_domains",
        "environments",
        "expect",
        "first_seen",
        "groups",
        "hosts",
        "info",
        "info_at",
        "last_by_session",
        "last_seen",
        "minute",
        "minute_count",
        "outgoing",
        "overflow",
        "pairs",
        "rate_mean",
        "rate_minutes",
        "rate_var",
        "recent",
        "scratch",
        "seen",
        "spawns",
        "tenants",
        "transitions",
    )

    def __init__(self, agent_id: str, t: float) -> None:
        self.agent_id = agent_id
        self.first_seen = t
        self.last_seen = t
        self.calls = 0  # calls learned from
        self.pairs: dict[Pair, int] = {}
        self.outgoing: dict[Pair, int] = {}  # transitions learned from each pair
        self.transitions: dict[tuple[Pair, Pair], int] = {}
        self.last_by_session: OrderedDict[str | None, Pair] = OrderedDict()
        self.minute = -1  # the current minute (epoch // 60)
        self.minute_count = 0  # calls in it so far (all attempts)
        self.rate_mean = 0.0
        self.rate_var = 0.0
        self.rate_minutes = 0  # active minutes folded into the mean
        self.hosts: dict[str, int] = {}
        self.environments: dict[str, int] = {}
        self.data_domains: dict[str, int] = {}
        self.tenants: dict[str, int] = {}
        self.spawns = 0
        self.overflow = 0
        self.recent: deque[tuple[Pair, str, bool]] = deque(maxlen=RECENT)
        self.scratch: dict[str, Any] = {}  # detectors' own short-term state
        self.info: AgentInfo | None = None
        self.expect: CompiledExpectations | None = None
        self.groups: tuple[PeerGroup, ...] = ()
        self.info_at = float("-inf")

    # -- reading -------------------------------------------------------------------------

    def warm(self, t: float, min_observations: int, min_span: float) -> bool:
        """Past the warm-up: enough calls learned over a long enough span."""
        return self.calls >= min_observations and t - self.first_seen >= min_span

    def previous(self, session: str | None) -> Pair | None:
        return self.last_by_session.get(session)

    def recent_events(self, pair: Pair | None = None, *, denied: bool = False) -> tuple[str, ...]:
        """Event ids of the latest calls (of ``pair``; only refused ones with
        ``denied``), oldest first, at most 20."""
        out = [
            eid
            for p, eid, allowed in self.recent
            if (pair is None or p == pair) and (not denied or not allowed)
        ]
        return tuple(out[-20:])

    # -- the current minute (before detection: the current call counts) ---------------

    def count_call(self, t: float, alpha: float) -> None:
        minute = int(t // 60)
        if minute != self.minute:
            if self.minute_count:
                self._fold(self.minute_count, alpha)
            self.minute = minute
            self.minute_count = 0
        self.minute_count += 1

    def _fold(self, count: int, alpha: float) -> None:
        self.rate_minutes += 1
        if self.rate_minutes == 1:
            self.rate_mean = float(count)
            self.rate_var = 0.0
            return
        delta = count - self.rate_mean
        self.rate_mean += alpha * delta
        self.rate_var = (1 - alpha) * (self.rate_var + alpha * delta * delta)

    # -- learning (after detection: the current call is judged against history) -------

    def remember(self, session: str | None, pair: Pair, cap: int) -> None:
        """The session's last call (every attempt, allowed or not)."""
        last = self.last_by_session
        if session in last:
            last.move_to_end(session)
        elif len(last) >= cap:
            last.popitem(last=False)
        last[session] = pair

    def learn_call(
        self, pair: Pair, previous: Pair | None, limits: LimitsConfig
    ) -> tuple[bool, bool]:
        """Learn an allowed call; returns (new pair for this agent, remembered)."""
        self.calls += 1
        new = pair not in self.pairs
        kept = _bump(self.pairs, pair, limits.max_pairs)
        if not kept:
            self.overflow += 1
        if previous is not None:
            if _bump(self.transitions, (previous, pair), limits.max_transitions):
                self.outgoing[previous] = self.outgoing.get(previous, 0) + 1
            else:
                self.overflow += 1
        return new, kept

    def learn_value(self, counts: dict[str, int], value: str, cap: int) -> None:
        if not _bump(counts, value, cap):
            self.overflow += 1


class PeerGroup:
    """Agents sharing an owner, a purpose or a label, and the pairs they use."""

    __slots__ = ("members", "name", "pair_agents")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[str, None] = {}
        self.pair_agents: dict[Pair, int] = {}

    def join(self, agent_id: str, cap: int) -> None:
        if agent_id not in self.members and len(self.members) < cap:
            self.members[agent_id] = None

    def adopters(self, pair: Pair) -> int:
        return self.pair_agents.get(pair, 0)


class Baselines:
    """The bounded store of agent states and peer groups (least recently seen
    evicted)."""

    __slots__ = ("_agents", "_groups", "evicted", "limits")

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self._agents: OrderedDict[str, AgentState] = OrderedDict()
        self._groups: OrderedDict[str, PeerGroup] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._agents)

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def get(self, agent_id: str) -> AgentState | None:
        return self._agents.get(agent_id)

    def touch(self, agent_id: str, t: float) -> AgentState:
        """The agent's state, created if new, marked most recently seen."""
        agents = self._agents
        state = agents.get(agent_id)
        if state is None:
            if len(agents) >= self.limits.max_agents:
                agents.popitem(last=False)
                self.evicted += 1
            state = AgentState(agent_id, t)
            agents[agent_id] = state
        else:
            agents.move_to_end(agent_id)
        if t > state.last_seen:
            state.last_seen = t
        return state

    def set_profile(self, state: AgentState, info: AgentInfo | None, t: float) -> None:
        """Attach the registry's view (and join its peer groups)."""
        state.info = info
        state.info_at = t
        state.expect = (
            CompiledExpectations(info.expectations)
            if info is not None and not info.expectations.empty
            else None
        )
        if info is None:
            state.groups = ()
            return
        groups = []
        for name in info.peer_groups(self.limits.max_groups_per_agent):
            group = self._groups.get(name)
            if group is None:
                if len(self._groups) >= self.limits.max_peer_groups:
                    self._groups.popitem(last=False)
                group = PeerGroup(name)
                self._groups[name] = group
            else:
                self._groups.move_to_end(name)
            group.join(info.agent_id, self.limits.max_peer_members)
            groups.append(group)
        state.groups = tuple(groups)

    def adopt(self, state: AgentState, pair: Pair) -> None:
        """``state``'s agent used ``pair`` for the first time: tell its groups."""
        cap = self.limits.max_peer_pairs
        for group in state.groups:
            _bump(group.pair_agents, pair, cap)
