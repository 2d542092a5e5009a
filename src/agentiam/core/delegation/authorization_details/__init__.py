"""Rich authorization requests (RFC 9396) for task-scoped tokens.

A client asks for a task-scoped token with the ``authorization_details`` parameter: a
JSON array of objects, each with a ``type`` that decides what else it may hold (RFC 9396
section 2). It travels as a form parameter holding JSON text on the authorization and
token endpoints (sections 3 and 6), comes back in the token response (section 7) and
sits in the JWT access token as the ``authorization_details`` claim (section 9.1).

This module is the pure part of that: the types this server understands, parsing and
normalising a request, deciding whether one set of details is *narrower* than another
(section 6.1: a token request, or a delegation hop, may only ask for what is already
held), and deciding whether a token's details permit one concrete call. No I/O.

Types
-----
``tool_invocation`` (ours)
    ``tools`` (required): the tool names the token may call. ``locations``: the MCP
    servers or gateways it may call them on. ``arguments``: per argument, a constraint
    built from ``enum``, ``const``, ``min``, ``max``, ``max_length`` and ``prefix``
    (no regular expressions: they invite ReDoS and are hard to compare).
``api_access`` (ours)
    ``locations`` (required, http(s) URIs), ``actions`` (required: HTTP methods, kept
    in upper case, or action names), ``datatypes``, ``identifier``: the section 2.2
    common data fields with their usual meaning.
Operator types
    Registered with :meth:`DetailTypeRegistry.with_types` as data: a name and typed
    fields (``set``, ``uri_set``, ``exact``, ``max_number``, ``min_number``).

Decisions that make it fail closed
----------------------------------
* Unknown types and unknown members are refused, as section 5 requires. The section
  2.2 ``privileges`` field is not declared by the built-in types, so it is refused too.
* No wildcards and no patterns: every set member, URI and number means what it says.
* An empty list or object where a constraint is expected is refused rather than
  guessed at ("nothing" and "anything" are both plausible readings).
* JSON numbers are kept apart from booleans; NaN, infinities and integers beyond
  2^53 - 1 (I-JSON, RFC 7493 section 2.2) are refused; duplicate member names in JSON
  text are refused.
* URIs are compared on scheme, host and port exactly and on the path segment by
  segment, after removing default ports and needless percent-encoding (RFC 3986
  section 6.2.2). Anything a server might read differently is refused: userinfo,
  fragments, queries in granted locations, backslashes, encoded ``/`` or ``\\``, and
  ``.`` or ``..`` segments (also ``..;``).
* Size is bounded (section 11.4 warns about large requests): :data:`MAX_ENTRIES`
  entries, :data:`MAX_JSON_BYTES` of JSON, :data:`MAX_DEPTH` levels of nesting,
  :data:`MAX_LIST` items a list, :data:`MAX_STRING` characters a string.
"""

from __future__ import annotations

from agentiam.core.delegation.authorization_details._calls import (
    ApiCall,
    Call,
    CustomCall,
    DetailsVerdict,
    ToolCall,
)
from agentiam.core.delegation.authorization_details._detail_types import CUSTOM_FIELD_KINDS
from agentiam.core.delegation.authorization_details._field_kinds import HTTP_METHODS
from agentiam.core.delegation.authorization_details._limits import (
    MAX_CUSTOM_TYPES,
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_FIELDS,
    MAX_JSON_BYTES,
    MAX_LIST,
    MAX_STRING,
    DetailsRejected,
)
from agentiam.core.delegation.authorization_details._registry import (
    BUILTIN,
    DetailTypeRegistry,
    permits,
    policy_context,
)

__all__ = [
    "BUILTIN",
    "CUSTOM_FIELD_KINDS",
    "HTTP_METHODS",
    "MAX_CUSTOM_TYPES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_FIELDS",
    "MAX_JSON_BYTES",
    "MAX_LIST",
    "MAX_STRING",
    "ApiCall",
    "Call",
    "CustomCall",
    "DetailTypeRegistry",
    "DetailsRejected",
    "DetailsVerdict",
    "ToolCall",
    "permits",
    "policy_context",
]
