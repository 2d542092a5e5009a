"""The calls an enforcement point checks against a token's details (:class:`ToolCall`,
:class:`ApiCall`, :class:`CustomCall`) and the :class:`DetailsVerdict` it gets back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call, checked against ``tool_invocation`` entries.

    ``location`` is the URI of the MCP server or gateway that serves the tool; None when
    the enforcement point does not know it (then an entry that names locations does not
    permit the call)."""

    tool: str
    arguments: Mapping[str, Any]
    location: str | None = None


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One HTTP API call, checked against ``api_access`` entries. ``url`` is the full
    request URL; its query is ignored, its path must lie beneath an entry location."""

    action: str
    url: str
    datatype: str | None = None
    identifier: str | None = None


@dataclass(frozen=True, slots=True)
class CustomCall:
    """A call checked against entries of ``type`` field by field: for every field an
    entry constrains, ``values`` must hold a value the field admits (see
    :meth:`DetailTypeRegistry.permits`). Built-in types may be checked this way too,
    with the field names as keys (``tools``, ``arguments``, ``locations``...)."""

    type: str
    values: Mapping[str, Any]


Call: TypeAlias = ToolCall | ApiCall | CustomCall


@dataclass(frozen=True, slots=True)
class DetailsVerdict:
    """Whether a token's details permit a call. ``entry`` is the index of the entry that
    permits it (None when denied); ``reason`` says which entry or why none did. Reasons
    never repeat argument values from the call."""

    allowed: bool
    reason: str
    entry: int | None
