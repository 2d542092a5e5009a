"""Response playbooks: which alerts trigger which containment actions (docs/response.md).

The playbook file (``AGENTIAM_PLAYBOOKS_FILE``, YAML or JSON) is versioned::

    version: 1
    playbooks:
      - name: runaway-loop
        mode: enforce              # or dry_run: audit what would be done, do nothing
        cooldown_seconds: 300      # per agent
        when: {detectors: [velocity.runaway_loop]}
        actions:
          - suspend: {}
          - revoke_tokens: {}
          - notify: {webhook: secops}
    webhooks:
      secops: {url: https://hooks.example.com/x, secret_env: SECOPS_WEBHOOK_SECRET}

:func:`load_playbooks` is strict: an unknown key, a wrong type, an unknown category,
severity or action kind, a number out of range, a webhook that is not declared, or a
secret written inline raises :class:`~agentiam.errors.InvalidInput` naming the
playbook (or webhook) and the key. Everything here is pure: :func:`matching` selects
the playbooks an alert triggers, :class:`Cooldowns` remembers when each playbook last
fired for each agent, with time passed in.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from agentiam.core.detection.model import Alert, Category, Severity
from agentiam.errors import InvalidInput

__all__ = [
    "ACTION_CLASSES",
    "ACTION_KINDS",
    "FILE_VERSION",
    "Action",
    "AgentFacts",
    "Condition",
    "Cooldowns",
    "Mode",
    "Playbook",
    "PlaybookFile",
    "Webhook",
    "load_playbooks",
    "matching",
]

FILE_VERSION = 1
ACTION_KINDS = (
    "notify",
    "step_up",
    "throttle",
    "suspend",
    "revoke_tokens",
    "quarantine_subtree",
)
# step_up "actions": these classes, or a list of action ids. The groups are the
# policy schema's action groups (core/policy/schema.py).
ACTION_CLASSES = (
    "any",
    "invoke_tool",
    "read_actions",
    "write_actions",
    "delete_actions",
    "http",
)
MAX_PLAYBOOKS = 100
MAX_ACTIONS = 10
MAX_LIST = 50
MAX_WEBHOOKS = 20
MAX_COOLDOWN = 7 * 24 * 3600
MAX_MINUTES = 7 * 24 * 60
MAX_COUNT = 1000
MAX_PER_MINUTE = 100_000
DEFAULT_COOLDOWN = 300
# A step-up with a count and no time still ends: after this many minutes at most.
DEFAULT_STEP_UP_MINUTES = 24 * 60
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_DETECTOR = re.compile(r"^[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63}){1,3}$")
_ACTION_ID = re.compile(r"^[A-Za-z0-9_:./-]{1,128}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SEVERITIES = {s.label: s for s in Severity}
_TOP = frozenset({"version", "playbooks", "webhooks"})
_PLAYBOOK = frozenset({"name", "mode", "cooldown_seconds", "when", "actions", "description"})
_CONDITION = frozenset(
    {
        "detectors",
        "categories",
        "min_severity",
        "agent_risk_at_least",
        "session_risk_at_least",
        "environments",
        "labels",
    }
)
_WEBHOOK = frozenset({"url", "secret_env", "secret_file", "allow_private_network", "timeout"})
_ACTION_PARAMS: Mapping[str, frozenset[str]] = {
    "notify": frozenset({"webhook"}),
    "step_up": frozenset({"actions", "count", "for_minutes"}),
    "throttle": frozenset({"per_minute", "for_minutes"}),
    "suspend": frozenset(),
    "revoke_tokens": frozenset(),
    "quarantine_subtree": frozenset(),
}
# Keys that would put a secret in the file itself: refused with a pointer to the fix.
_INLINE_SECRETS = frozenset({"secret", "secrets", "key", "token", "password", "signing_secret"})


class Mode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class AgentFacts:
    """What conditions read about the alerted agent (from the registry)."""

    environment: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Condition:
    """``when``: every key given must hold (AND); a list holds when any item does."""

    detectors: tuple[str, ...] = ()
    categories: tuple[Category, ...] = ()
    min_severity: Severity | None = None
    agent_risk_at_least: int | None = None
    session_risk_at_least: int | None = None
    environments: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def holds(
        self, alert: Alert, agent_risk: int, session_risk: int | None, agent: AgentFacts
    ) -> bool:
        if self.detectors and alert.detector not in self.detectors:
            return False
        if self.categories and alert.category not in self.categories:
            return False
        if self.min_severity is not None and alert.severity < self.min_severity:
            return False
        if self.agent_risk_at_least is not None and agent_risk < self.agent_risk_at_least:
            return False
        if self.session_risk_at_least is not None and (
            session_risk is None or session_risk < self.session_risk_at_least
        ):
            return False
        if self.environments and agent.environment not in self.environments:
            return False
        return all(agent.labels.get(k) == v for k, v in self.labels.items())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.detectors:
            out["detectors"] = list(self.detectors)
        if self.categories:
            out["categories"] = [c.value for c in self.categories]
        if self.min_severity is not None:
            out["min_severity"] = self.min_severity.label
        if self.agent_risk_at_least is not None:
            out["agent_risk_at_least"] = self.agent_risk_at_least
        if self.session_risk_at_least is not None:
            out["session_risk_at_least"] = self.session_risk_at_least
        if self.environments:
            out["environments"] = list(self.environments)
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True, slots=True)
class Action:
    """One action of a playbook: ``kind`` (one of :data:`ACTION_KINDS`) and its
    parameters, already checked: ``notify`` has ``webhook``; ``step_up`` has
    ``actions`` (a class of :data:`ACTION_CLASSES` or a tuple of action ids), ``count``
    (int or None) and ``for_minutes``; ``throttle`` has ``per_minute`` and
    ``for_minutes``."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        return {self.kind: params}


@dataclass(frozen=True, slots=True)
class Playbook:
    name: str
    when: Condition
    actions: tuple[Action, ...]
    mode: Mode = Mode.ENFORCE
    cooldown_seconds: int = DEFAULT_COOLDOWN
    description: str = ""

    @property
    def dry_run(self) -> bool:
        return self.mode is Mode.DRY_RUN

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "cooldown_seconds": self.cooldown_seconds,
            "description": self.description,
            "when": self.when.to_dict(),
            "actions": [a.to_dict() for a in self.actions],
        }


@dataclass(frozen=True, slots=True)
class Webhook:
    """A notify target. The secret is named (an environment variable or an owner-only
    file), never held here; the URL's form and address are vetted by the adapter that
    sends (SSRF rules as for the audit exporters)."""

    name: str
    url: str
    secret_env: str | None = None
    secret_file: str | None = None
    allow_private_network: bool = False
    timeout: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "secret_env": self.secret_env,
            "secret_file": self.secret_file,
            "allow_private_network": self.allow_private_network,
            "timeout": self.timeout,
        }


@dataclass(frozen=True, slots=True)
class PlaybookFile:
    version: int = FILE_VERSION
    playbooks: tuple[Playbook, ...] = ()
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)

    def get(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "playbooks": [p.to_dict() for p in self.playbooks],
            "webhooks": {n: w.to_dict() for n, w in self.webhooks.items()},
        }


# -- loading ------------------------------------------------------------------------------


def _fail(where: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"{where}: {problem}", hint="See docs/response.md for the playbook file's format."
    )


def _mapping(value: Any, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise _fail(where, "must be a mapping")
    inline = sorted(str(k) for k in value if str(k).lower() in _INLINE_SECRETS)
    if inline and inline[0] not in allowed:
        raise _fail(
            f"{where}.{inline[0]}",
            "a secret never goes in the playbook file; name it with secret_env (an "
            "environment variable) or secret_file (a file only its owner can read)",
        )
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no keys"
        raise _fail(f"{where}.{unknown[0]}", f"unknown key (takes {takes})")
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"must be an integer from {low} to {high}")
    return value


def _strings(value: Any, where: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_LIST:
        raise _fail(where, f"must be a list of 1 to {MAX_LIST} names")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > 128:
            raise _fail(f"{where}[{i}]", "must be a non-empty string")
        if pattern is not None and not pattern.fullmatch(item):
            raise _fail(f"{where}[{i}]", f"{item!r} is not a valid name")
    return tuple(dict.fromkeys(value))


def _condition(value: Any, where: str, detectors: Collection[str] | None) -> Condition:
    raw = _mapping(value, where, _CONDITION)
    if not raw:
        raise _fail(
            where,
            "give at least one condition (a playbook that should fire on every alert "
            "says so: min_severity: low)",
        )
    names = (
        _strings(raw["detectors"], f"{where}.detectors", _DETECTOR) if "detectors" in raw else ()
    )
    if detectors is not None:
        for i, name in enumerate(names):
            if name not in detectors:
                raise _fail(f"{where}.detectors[{i}]", f"unknown detector {name!r}")
    categories: tuple[Category, ...] = ()
    if "categories" in raw:
        items = _strings(raw["categories"], f"{where}.categories")
        known = {c.value: c for c in Category}
        for i, item in enumerate(items):
            if item not in known:
                raise _fail(
                    f"{where}.categories[{i}]",
                    f"unknown category {item!r} (one of {', '.join(known)})",
                )
        categories = tuple(known[i] for i in items)
    severity = None
    if "min_severity" in raw:
        text = raw["min_severity"]
        if not isinstance(text, str) or text not in _SEVERITIES:
            raise _fail(f"{where}.min_severity", f"must be one of {', '.join(_SEVERITIES)}")
        severity = _SEVERITIES[text]
    labels_raw = raw.get("labels")
    labels: dict[str, str] = {}
    if labels_raw is not None:
        if not isinstance(labels_raw, Mapping) or not labels_raw or len(labels_raw) > MAX_LIST:
            raise _fail(f"{where}.labels", f"must map 1 to {MAX_LIST} label names to values")
        for k, v in labels_raw.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k or len(k) + len(v) > 256:
                raise _fail(f"{where}.labels", "label names and values must be strings")
            labels[k] = v
    return Condition(
        detectors=names,
        categories=categories,
        min_severity=severity,
        agent_risk_at_least=(
            _integer(raw["agent_risk_at_least"], f"{where}.agent_risk_at_least", 0, 100)
            if "agent_risk_at_least" in raw
            else None
        ),
        session_risk_at_least=(
            _integer(raw["session_risk_at_least"], f"{where}.session_risk_at_least", 0, 100)
            if "session_risk_at_least" in raw
            else None
        ),
        environments=(
            _strings(raw["environments"], f"{where}.environments") if "environments" in raw else ()
        ),
        labels=labels,
    )


def _action(value: Any, where: str, webhooks: Mapping[str, Webhook]) -> Action:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise _fail(where, f"an action is a mapping with one key: {', '.join(ACTION_KINDS)}")
    ((kind, params),) = value.items()
    if kind not in _ACTION_PARAMS:
        raise _fail(f"{where}.{kind}", f"unknown action kind (one of {', '.join(ACTION_KINDS)})")
    where = f"{where}.{kind}"
    raw = _mapping(params, where, _ACTION_PARAMS[kind])
    checked: dict[str, Any] = {}
    if kind == "notify":
        target = raw.get("webhook")
        if not isinstance(target, str) or target not in webhooks:
            declared = ", ".join(sorted(webhooks)) or "none are declared"
            raise _fail(f"{where}.webhook", f"must name a webhook under webhooks ({declared})")
        checked["webhook"] = target
    elif kind == "step_up":
        scope = raw.get("actions", "any")
        if isinstance(scope, list):
            checked["actions"] = _strings(scope, f"{where}.actions", _ACTION_ID)
        elif scope in ACTION_CLASSES:
            checked["actions"] = scope
        else:
            raise _fail(
                f"{where}.actions",
                f"must be one of {', '.join(ACTION_CLASSES)} or a list of action ids",
            )
        if "count" not in raw and "for_minutes" not in raw:
            raise _fail(where, "give count (the next N actions), for_minutes, or both")
        checked["count"] = (
            _integer(raw["count"], f"{where}.count", 1, MAX_COUNT) if "count" in raw else None
        )
        checked["for_minutes"] = _integer(
            raw.get("for_minutes", DEFAULT_STEP_UP_MINUTES), f"{where}.for_minutes", 1, MAX_MINUTES
        )
    elif kind == "throttle":
        for key in ("per_minute", "for_minutes"):
            if key not in raw:
                raise _fail(f"{where}.{key}", "missing")
        checked["per_minute"] = _integer(
            raw["per_minute"], f"{where}.per_minute", 1, MAX_PER_MINUTE
        )
        checked["for_minutes"] = _integer(
            raw["for_minutes"], f"{where}.for_minutes", 1, MAX_MINUTES
        )
    return Action(kind, checked)


def _webhook(name: Any, value: Any) -> Webhook:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(f"webhooks.{name}", "a webhook name is 1-63 of a-z 0-9 _ . -")
    where = f"webhooks.{name}"
    raw = _mapping(value, where, _WEBHOOK)
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 2048:
        raise _fail(f"{where}.url", "must be an https URL")
    env, path = raw.get("secret_env"), raw.get("secret_file")
    if (env is None) == (path is None):
        raise _fail(
            where,
            "give exactly one of secret_env (an environment variable's name) or "
            "secret_file (an absolute path); the secret itself never goes in this file",
        )
    if env is not None and (not isinstance(env, str) or not _ENV_NAME.fullmatch(env)):
        raise _fail(f"{where}.secret_env", "must be an environment variable name")
    if path is not None and (
        not isinstance(path, str) or not path.startswith("/") or "\x00" in path
    ):
        raise _fail(f"{where}.secret_file", "must be an absolute file path")
    private = raw.get("allow_private_network", False)
    if not isinstance(private, bool):
        raise _fail(f"{where}.allow_private_network", "must be true or false")
    timeout = raw.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 60:
        raise _fail(f"{where}.timeout", "must be a number of seconds from 1 to 60")
    return Webhook(name, url, env, path, private, float(timeout))


def _playbook(
    value: Any, index: int, webhooks: Mapping[str, Webhook], detectors: Collection[str] | None
) -> Playbook:
    if not isinstance(value, Mapping):
        raise _fail(f"playbooks[{index}]", "must be a mapping")
    name = value.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(f"playbooks[{index}].name", "a playbook name is 1-63 of a-z 0-9 _ . -")
    where = f"playbook {name}"
    raw = _mapping(value, where, _PLAYBOOK)
    mode_text = raw.get("mode", Mode.ENFORCE.value)
    if mode_text not in {m.value for m in Mode}:
        raise _fail(f"{where}.mode", "must be enforce or dry_run")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise _fail(f"{where}.description", "must be text of at most 500 characters")
    if "when" not in raw:
        raise _fail(f"{where}.when", "missing")
    actions = raw.get("actions")
    if not isinstance(actions, list) or not actions or len(actions) > MAX_ACTIONS:
        raise _fail(f"{where}.actions", f"must be a list of 1 to {MAX_ACTIONS} actions")
    return Playbook(
        name=name,
        mode=Mode(mode_text),
        cooldown_seconds=_integer(
            raw.get("cooldown_seconds", DEFAULT_COOLDOWN),
            f"{where}.cooldown_seconds",
            0,
            MAX_COOLDOWN,
        ),
        when=_condition(raw["when"], f"{where}.when", detectors),
        actions=tuple(_action(a, f"{where}.actions[{i}]", webhooks) for i, a in enumerate(actions)),
        description=description,
    )


def load_playbooks(data: Any, *, detectors: Collection[str] | None = None) -> PlaybookFile:
    """The playbook file from its parsed content (None: no playbooks). ``detectors``,
    when given, is every detector name that exists: any other is refused."""
    if data is None:
        return PlaybookFile()
    top = _mapping(data, "playbook file", _TOP)
    version = top.get("version")
    if version != FILE_VERSION or isinstance(version, bool):
        raise _fail("version", f"must be {FILE_VERSION}")
    hooks_raw = top.get("webhooks") or {}
    if not isinstance(hooks_raw, Mapping) or len(hooks_raw) > MAX_WEBHOOKS:
        raise _fail("webhooks", f"must map at most {MAX_WEBHOOKS} names to webhooks")
    webhooks = {str(n): _webhook(n, v) for n, v in hooks_raw.items()}
    raw_books = top.get("playbooks") or []
    if not isinstance(raw_books, list) or len(raw_books) > MAX_PLAYBOOKS:
        raise _fail("playbooks", f"must be a list of at most {MAX_PLAYBOOKS} playbooks")
    books: list[Playbook] = []
    for i, raw in enumerate(raw_books):
        book = _playbook(raw, i, webhooks, detectors)
        if any(b.name == book.name for b in books):
            raise _fail(f"playbook {book.name}.name", "appears twice")
        books.append(book)
    return PlaybookFile(FILE_VERSION, tuple(books), webhooks)


# -- matching and cool-downs ----------------------------------------------------------------


def matching(
    playbooks: Iterable[Playbook],
    alert: Alert,
    agent_risk: int,
    session_risk: int | None,
    agent_info: AgentFacts,
) -> list[Playbook]:
    """The playbooks whose ``when`` holds for this alert, in file order."""
    return [p for p in playbooks if p.when.holds(alert, agent_risk, session_risk, agent_info)]


class Cooldowns:
    """When each playbook last fired for each agent; thread-safe. A playbook with a
    cool-down of N seconds does not fire again for the same agent until N seconds
    after it last fired. At most ``max_entries`` are kept: past that, entries whose
    cool-down has ended are dropped first, then the oldest (which can only make a
    playbook fire again early, never hold it back for good)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._fired: dict[tuple[str, str], tuple[datetime, int]] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def ready(self, playbook: Playbook, agent_id: str, now: datetime) -> bool:
        with self._lock:
            last = self._fired.get((playbook.name, agent_id))
        if last is None:
            return True
        return now >= last[0] + timedelta(seconds=playbook.cooldown_seconds)

    def claim(self, playbook: Playbook, agent_id: str, now: datetime) -> bool:
        """If the playbook is ready for the agent, mark it fired now and return True
        (atomic: of two concurrent alerts only one fires)."""
        key = (playbook.name, agent_id)
        with self._lock:
            last = self._fired.get(key)
            if last is not None and now < last[0] + timedelta(seconds=playbook.cooldown_seconds):
                return False
            self._fired[key] = (now, playbook.cooldown_seconds)
            self._bound(now)
            return True

    def restore(
        self, fired: Iterable[tuple[str, str, datetime]], playbooks: Sequence[Playbook]
    ) -> int:
        """Remember firings (playbook name, agent id, time) read back from the trail;
        names no longer in ``playbooks`` are ignored. Returns how many were kept."""
        cooldown = {p.name: p.cooldown_seconds for p in playbooks}
        kept = 0
        with self._lock:
            for name, agent_id, at in fired:
                if name not in cooldown:
                    continue
                key = (name, agent_id)
                current = self._fired.get(key)
                if current is None or current[0] < at:
                    self._fired[key] = (at, cooldown[name])
                    kept += 1
        return kept

    def __len__(self) -> int:
        with self._lock:
            return len(self._fired)

    def _bound(self, now: datetime) -> None:
        if len(self._fired) <= self._max:
            return
        live = {k: v for k, v in self._fired.items() if now < v[0] + timedelta(seconds=v[1])}
        if len(live) > self._max:
            live = dict(sorted(live.items(), key=lambda kv: kv[1][0])[-self._max :])
        self._fired = live
