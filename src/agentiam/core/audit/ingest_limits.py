"""What the control plane's ingest (``POST /v1/audit/ingest``) accepts of an
enforcement point's event, and how an enforcement point fits its own events to it
before spooling them.

Ingest refuses a whole batch for one event over a limit, and the spool sends its
oldest batch until it is accepted: one event the control plane can never accept
would hold every later one back. So the limits live here, once, for both sides:
:func:`agentiam.services.enforcement_sync.parse_ingested_event` checks them, and
:func:`fit_for_ingest` cuts what an enforcement point recorded down to them (caller
supplied path segments and tool argument names can be of any length), saying in
``details.truncated`` what it cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "MAX_CHAIN",
    "MAX_DETAILS_BYTES",
    "SOURCE_RE",
    "STRING_LIMITS",
    "details_size",
    "fit_for_ingest",
]

MAX_DETAILS_BYTES: Final = 64 * 1024
"""The largest ``details``, as :func:`details_size` measures it."""

MAX_CHAIN: Final = 32
"""The most ids in ``delegation_chain``."""

SOURCE_RE: Final = re.compile(r"^(gateway|guard)/[\x21-\x7e]{1,128}$")
"""An enforcement point's ``source``: ``gateway/<name>`` or ``guard/<name>``."""

STRING_LIMITS: Final[Mapping[tuple[str, ...], int]] = {
    ("actor", "id"): 255,
    ("actor", "role"): 64,
    ("action",): 512,
    ("resource", "type"): 64,
    ("resource", "id"): 512,
    ("agent_id",): 64,
    ("initiating_human",): 255,
    ("decision_id",): 64,
    ("policy_version",): 32,
    ("reason",): 2000,
}
"""The most characters of each string member (by its path in the event); each is
also at least one character, or null where the member may be null."""

# The members of details kept when the rest must go: small facts detection and
# investigations rely on, never the caller-sized ones.
_KEPT_DETAILS = (
    "decision",
    "status",
    "tool",
    "jti",
    "brokered",
    "target",
    "peer",
    "error",
    "duration_ms",
    "policies",
    "reasons",
)


# json.dumps(allow_nan=False, separators=(",", ":")) without a new encoder per call
_SIZE_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def details_size(details: Mapping[str, Any]) -> int:
    """The size ingest measures ``details`` by: compact JSON, non-ASCII escaped.
    Raises TypeError or ValueError for anything that is not plain JSON."""
    return len(_SIZE_ENCODER.encode(details))


def fit_for_ingest(event: Mapping[str, Any], *, encoded_bytes: int) -> Mapping[str, Any]:
    """``event`` (an ``AuditEvent.to_dict()``) within :data:`STRING_LIMITS`,
    :data:`MAX_CHAIN` and :data:`MAX_DETAILS_BYTES`: the same object when it already
    is, else a copy with over-long strings cut (ending in "…"), the chain cut, and
    the largest details members dropped until the rest fits, every cut member named
    in ``details.truncated``.

    ``encoded_bytes`` is the size of the event as UTF-8 JSON: details are measured
    only when that could be over the limit. Ingest escapes non-ASCII, which turns at
    most 4 UTF-8 bytes into 12 characters, so ``3 * encoded_bytes`` bounds it."""
    cut: list[str] = []
    fitted: dict[str, Any] | None = None
    for path, limit in _over_limit(event):
        fitted = fitted if fitted is not None else _copy(event)
        _set(fitted, path, _get(event, path)[: limit - 1] + "…")
        cut.append(".".join(path))
    chain = event.get("delegation_chain")
    if isinstance(chain, list) and len(chain) > MAX_CHAIN:
        fitted = fitted if fitted is not None else _copy(event)
        fitted["delegation_chain"] = chain[:MAX_CHAIN]
        cut.append("delegation_chain")
    details = event.get("details")
    if isinstance(details, Mapping) and encoded_bytes * 3 > MAX_DETAILS_BYTES:
        smaller = _fit_details(details)
        if smaller is not details:
            fitted = fitted if fitted is not None else _copy(event)
            fitted["details"] = smaller
            cut.extend(f"details.{k}" for k in details if k not in smaller)
    if fitted is None:
        return event
    details = dict(fitted.get("details") or {})
    details["truncated"] = _named(cut)
    fitted["details"] = details
    return fitted


_MAX_NAMED = 32


def _named(cut: list[str]) -> list[str]:
    """What was cut, for ``details.truncated``: at most 32 names (a details object of
    thousands of small members would otherwise need as many), then a count."""
    if len(cut) <= _MAX_NAMED:
        return cut
    return [*cut[:_MAX_NAMED], f"+{len(cut) - _MAX_NAMED} more"]


# STRING_LIMITS split by depth, for the check every spooled event takes
_TOP = tuple((path[0], n) for path, n in STRING_LIMITS.items() if len(path) == 1)
_NESTED = tuple((path, n) for path, n in STRING_LIMITS.items() if len(path) == 2)


def _over_limit(event: Mapping[str, Any]) -> list[tuple[tuple[str, ...], int]]:
    """The string members of ``event`` over their limit, with the limit."""
    try:  # the usual case, cheaply: strings or None (what AuditEvent.to_dict gives)
        over: list[tuple[tuple[str, ...], int]] = [
            ((k,), n) for k, n in _TOP if len(event.get(k) or "") > n
        ]
        for path, n in _NESTED:
            parent = event.get(path[0])
            if isinstance(parent, Mapping) and len(parent.get(path[1]) or "") > n:
                over.append((path, n))
    except TypeError:  # a value without a length: compare strings only
        over = [(p, n) for p, n in STRING_LIMITS.items() if len(_text(_get(event, p))) > n]
    return [(path, n) for path, n in over if isinstance(_get(event, path), str)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _fit_details(details: Mapping[str, Any]) -> Mapping[str, Any]:
    """``details`` if within the limit (less room for the ``truncated`` list), else
    without its largest members until it is. Members that are not plain JSON
    (which the spool could not have encoded anyway) leave only the small facts."""
    budget = MAX_DETAILS_BYTES - 4096  # the truncated list and the kept facts' slack
    try:
        if details_size(details) <= budget:
            return details
        sizes = {k: details_size({k: v}) for k, v in details.items()}
    except (TypeError, ValueError):
        return {k: details[k] for k in _KEPT_DETAILS if k in details and _plain(details[k])}
    out = dict(details)
    total = details_size(out)
    for key in sorted(sizes, key=lambda k: -sizes[k]):
        if total <= budget:
            break
        del out[key]
        total -= sizes[key] - 1  # its '"key":value' and a comma; not the braces
    if details_size(out) <= budget:
        return out
    return {k: details[k] for k in _KEPT_DETAILS if k in details and _plain(details[k])}


def _plain(value: Any) -> bool:
    try:
        return details_size({"v": value}) <= 1024
    except (TypeError, ValueError):
        return False


def _get(event: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = event
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _set(event: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _copy(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy deep enough for :func:`_set` (the nested members it may change)."""
    out = dict(event)
    for key in ("actor", "resource"):
        if isinstance(out.get(key), Mapping):
            out[key] = dict(out[key])
    return out
