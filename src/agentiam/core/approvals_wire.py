"""The wire names of human approval (step-up) between an agent and an enforcement
point, shared by the gateways, the in-process guard and the agent SDK
(docs/approvals.md): a pure module with no imports, so agent code does not pull in the
policy engine.

**HTTP** (the HTTP gateway): the pending answer is a 403 problem with the headers
``AgentIAM-Approval`` and ``AgentIAM-Approval-State``; the retry sends
``AgentIAM-Approval: apr_…``.

**MCP** (the MCP gateway and a guarded MCP server): the pending answer to a
``tools/call`` is a tool result with ``isError: true`` whose ``_meta[META_KEY]`` is the
object :func:`mcp_result_meta` builds (``id``, ``state``, ``code``, ``expires_at``,
``retry_after``, ``status_url``, ``decision_id``); the retry is the same
``tools/call`` with ``params._meta[META_KEY]`` set to the approval id (a string).
Keys of ``_meta`` follow the MCP convention ``prefix/name`` (MCP 2025-06-18,
"General fields": ``_meta``).
"""

from __future__ import annotations

__all__ = [
    "APPROVAL_HEADER",
    "APPROVAL_STATE_HEADER",
    "META_KEY",
    "PROBLEM_CODES",
    "REFUSED_STATES",
    "WAITING_STATES",
    "mcp_result_meta",
    "mcp_result_text",
    "read_mcp_result_meta",
]

# Request: the approval to use for this call. Response: the approval the call waits on.
APPROVAL_HEADER = "AgentIAM-Approval"
# Response: pending, approved, denied, expired, consumed or mismatch.
APPROVAL_STATE_HEADER = "AgentIAM-Approval-State"
# MCP: the key in a tools/call's ``params._meta`` carrying the approval id, and in the
# pending (or refused) tool result's ``_meta`` carrying the approval's state.
META_KEY = "agentiam/approval"
# The RFC 9457 problem code (after the problem base URL) per approval state.
PROBLEM_CODES = {
    "pending": "approval-pending",
    "approved": "approval-pending",  # approved, not yet used by this call: retry it
    "denied": "approval-denied",
    "expired": "approval-expired",
    "consumed": "approval-used",
    "mismatch": "approval-mismatch",
}
# States an agent waits on (retry the same call with the approval id) ...
WAITING_STATES = frozenset({"pending", "approved"})
# ... and states that refuse the call for good (denied; used; for another call; expired).
REFUSED_STATES = frozenset({"denied", "consumed", "mismatch", "expired"})
_MAX_TEXT = 200  # characters of a wire string read back from an untrusted result


def mcp_result_meta(
    approval_id: str,
    state: str,
    *,
    expires_at: str | None = None,
    retry_after: int | None = None,
    status_url: str | None = None,
    decision_id: str | None = None,
) -> dict[str, object]:
    """The ``_meta`` of an MCP tool result that answers a call waiting on (or refused
    by) a human's approval: ``{META_KEY: {...}}``. ``retry_after`` (seconds) only
    while the call waits."""
    body: dict[str, object] = {
        "id": approval_id,
        "state": state,
        "code": PROBLEM_CODES.get(state, "approval-denied"),
    }
    if expires_at is not None:
        body["expires_at"] = expires_at
    if retry_after is not None and state in WAITING_STATES:
        body["retry_after"] = retry_after
    if status_url is not None:
        body["status_url"] = status_url
    if decision_id is not None:
        body["decision_id"] = decision_id
    return {META_KEY: body}


def mcp_result_text(tool: str, approval_id: str, state: str) -> str:
    """The human-readable content of that result, saying what to do next."""
    if state in WAITING_STATES:
        return (
            f"AgentIAM: the call to {tool} waits for a human's approval ({approval_id}). "
            f'Retry the same tools/call with params._meta["{META_KEY}"] = "{approval_id}" '
            "once it is approved."
        )
    if state == "mismatch":
        return f"AgentIAM refused the call to {tool}: approval {approval_id} is for another call."
    if state == "consumed":
        return f"AgentIAM refused the call to {tool}: approval {approval_id} was already used."
    return f"AgentIAM refused the call to {tool}: the approval request {approval_id} is {state}."


def read_mcp_result_meta(meta: object) -> tuple[str, str, float | None] | None:
    """``(approval id, state, retry_after)`` from a tool result's ``_meta``, or None
    when it names no approval. Bounded: strings longer than 200 characters and
    unknown states are not an approval answer."""
    if not isinstance(meta, dict):
        return None
    body = meta.get(META_KEY)
    if not isinstance(body, dict):
        return None
    approval_id, state = body.get("id"), body.get("state")
    if not isinstance(approval_id, str) or not 0 < len(approval_id) <= _MAX_TEXT:
        return None
    if state not in WAITING_STATES and state not in REFUSED_STATES:
        return None
    retry = body.get("retry_after")
    retry_after = (
        float(retry)
        if isinstance(retry, int | float) and not isinstance(retry, bool) and retry >= 0
        else None
    )
    return approval_id, str(state), retry_after
