"""Turning Cedar text into named policies, and named policies back into a ``.cedar``
file.

Cedar itself (via cedarpy) parses; this module adds what a multi-tenant control
plane needs before text reaches the parser:

* size limits and a lexical nesting limit (:mod:`agentiam.core.policy.lexical`):
  cedarpy's native parser overflows its stack, crashing the whole process, on a few
  hundred nested brackets, so depth is checked before Cedar sees the text;
* names: each policy's ``@id("…")`` annotation is its name, ``@mode("dry_run")``
  its mode, ``@description("…")`` its description. The stored text is the author's
  own (layout and comments kept) without those three annotations; it is checked to
  parse to exactly the policy Cedar read from the file;
* no templates: slots (``?principal``) are refused; AgentIAM's templates render to
  static policies (see :mod:`agentiam.core.policy.templates`).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cedarpy

from agentiam.core.policy.lexical import (
    MAX_NESTING,
    check_complexity,
    check_nesting,
    split_policies,
    take_annotations,
)
from agentiam.core.policy.model import Mode, PolicyRecord, check_policy_id
from agentiam.core.policy.values import cedar_string
from agentiam.errors import InvalidInput

__all__ = [
    "MAX_NESTING",
    "MAX_POLICIES_PER_TEXT",
    "MAX_POLICY_BYTES",
    "MAX_TEXT_BYTES",
    "check_nesting",
    "parse_policies",
    "parse_single",
    "render_policies",
]

MAX_POLICY_BYTES = 64 * 1024
MAX_TEXT_BYTES = 8 * 1024 * 1024
MAX_POLICIES_PER_TEXT = 20_000
MAX_DESCRIPTION = 1000
_NAMING_ANNOTATIONS = frozenset({"id", "mode", "description"})


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """A policy read from text: its record, and whether it named itself."""

    record: PolicyRecord
    named: bool


def _without_naming(policy: dict[str, Any]) -> dict[str, Any]:
    """A policy's syntax tree (JSON form) without its naming annotations."""
    out = dict(policy)
    annotations = out.pop("annotations", None) or {}
    rest = {k: v for k, v in annotations.items() if k not in _NAMING_ANNOTATIONS}
    if rest:
        out["annotations"] = rest
    return out


def _diagnostic(exc: Exception) -> str:
    return str(exc).removeprefix("cedarpy: ").strip() or "the text is not valid Cedar"


def parse_policies(text: str, *, default_mode: Mode = Mode.ENFORCE) -> list[ParsedPolicy]:
    """Split ``text`` into policies. Unnamed policies get ``policy<N>`` ids (N counts
    from 1 in file order); the caller decides whether unnamed ones are acceptable."""
    if not isinstance(text, str):
        raise InvalidInput("policy text must be a string")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise InvalidInput("the policy text is not valid Unicode (a lone surrogate)") from None
    if size > MAX_TEXT_BYTES:
        raise InvalidInput(f"the policy text is larger than {MAX_TEXT_BYTES} bytes")
    # Lexical guards first: cedarpy's native parser must never see text that could
    # crash it or run for minutes (see lexical.py).
    check_nesting(text)
    chunks = split_policies(text)
    tail = text[sum(len(c) for c in chunks) :]
    for chunk in (*chunks, tail):
        if len(chunk.encode()) > MAX_POLICY_BYTES + MAX_DESCRIPTION * 4 + 1024:
            raise InvalidInput(f"a policy is larger than {MAX_POLICY_BYTES} bytes")
        check_complexity(chunk)
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(
            "the policy text is not valid Cedar", errors=[{"message": _diagnostic(exc)}]
        ) from None
    if est.get("templates"):
        raise InvalidInput(
            "Cedar templates (policies with ?principal or ?resource slots) are not stored",
            hint="Use an AgentIAM template (GET /v1/policy-templates) or write the entity out.",
        )
    statics: dict[str, Any] = est.get("staticPolicies", {})
    if len(statics) > MAX_POLICIES_PER_TEXT:
        raise InvalidInput(f"more than {MAX_POLICIES_PER_TEXT} policies in one text")
    # Each policy is stored as written (less its naming).
    if len(chunks) != len(statics):  # the lexical split must agree with the parser
        raise InvalidInput("the policy text could not be split into policies")
    out: list[ParsedPolicy] = []
    seen: set[str] = set()
    # Cedar numbers policies policy0, policy1, … in file order.
    for position, chunk in enumerate(chunks):
        policy = statics[f"policy{position}"]
        annotations: dict[str, Any] = dict(policy.get("annotations") or {})
        name = annotations.get("id")
        mode_text = annotations.get("mode")
        description = annotations.get("description") or ""
        if len(description) > MAX_DESCRIPTION:
            raise InvalidInput(f"a @description is limited to {MAX_DESCRIPTION} characters")
        policy_id = check_policy_id(name) if name is not None else f"policy{position + 1}"
        if policy_id in seen:
            raise InvalidInput(f"policy id {policy_id!r} appears twice")
        seen.add(policy_id)
        try:
            mode = Mode(mode_text) if mode_text is not None else default_mode
        except ValueError:
            raise InvalidInput(
                f"policy {policy_id}: @mode must be 'enforce' or 'dry_run'"
            ) from None
        _, rest = take_annotations(chunk, _NAMING_ANNOTATIONS)
        canonical = textwrap.dedent(rest.strip("\n")).strip()
        if len(canonical.encode()) > MAX_POLICY_BYTES:
            raise InvalidInput(f"policy {policy_id} is larger than {MAX_POLICY_BYTES} bytes")
        out.append(
            ParsedPolicy(
                PolicyRecord(id=policy_id, text=canonical, mode=mode, description=description),
                named=name is not None,
            )
        )
    # What is stored must be exactly the policies the parser read (less their naming):
    # each stored text parses, alone, to one policy equal to the original.
    stored = json.loads(cedarpy.policies_to_json_str("\n".join(p.record.text for p in out)))[
        "staticPolicies"
    ]
    if len(stored) != len(out) or any(
        _without_naming(stored[f"policy{i}"]) != _without_naming(statics[f"policy{i}"])
        for i in range(len(out))
    ):
        raise InvalidInput("the policy text could not be split into policies")
    return out


def parse_single(text: str, *, policy_id: str, mode: Mode | None, description: str) -> PolicyRecord:
    """Parse the text of exactly one policy stored as ``policy_id``.

    A ``@mode`` annotation in the text counts: with no explicit ``mode`` it sets the
    mode, and an explicit ``mode`` that contradicts it is refused, so an exported
    dry-run policy pasted back never starts enforcing by accident. An explicit
    ``description`` replaces ``@description``.
    """
    parsed = parse_policies(text, default_mode=mode or Mode.ENFORCE)
    if len(parsed) != 1:
        raise InvalidInput(f"expected exactly one policy, found {len(parsed)}")
    record = parsed[0].record
    if mode is not None and record.mode is not mode:
        raise InvalidInput(
            f"the text says @mode({record.mode.value!r}) but the request says {mode.value!r}",
            hint="Drop one of them.",
        )
    return PolicyRecord(
        id=check_policy_id(policy_id),
        text=record.text,
        mode=record.mode,
        description=description or record.description,
        template=None,
    )


def render_policies(records: Iterable[PolicyRecord]) -> str:
    """The ``.cedar`` export: each policy with its ``@id``, ``@mode`` (when dry-run)
    and ``@description`` annotations, so importing the file restores the set."""
    chunks: list[str] = []
    for record in records:
        head = [f"@id({cedar_string(record.id)})"]
        if record.mode is Mode.DRY_RUN:
            head.append(f"@mode({cedar_string(record.mode.value)})")
        if record.description:
            head.append(f"@description({cedar_string(record.description)})")
        chunks.append("\n".join([*head, record.text]))
    return "\n\n".join(chunks) + ("\n" if chunks else "")
