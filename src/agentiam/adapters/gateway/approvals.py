"""An enforcement point's side of human approval (step-up; docs/approvals.md).

When the local decision is a deny that a human's approval would lift
(:func:`agentiam.core.approvals.approvable`), the gateway opens an approval request
at the control plane (``POST /v1/approvals``) and answers the agent with a pending
status naming it. The agent retries the same call with ``AgentIAM-Approval: apr_…``
(MCP: ``_meta``); the gateway then asks the control plane to use the approval for
exactly that call (``POST /v1/approvals/{id}/use``: approved, unexpired, same agent
and fingerprint, once) and, when it is consumed, decides the call as approved. Both
requests carry the parents the gateway placed the call's resource in
(``resource_parents``: the route's ``Api``, the tool's ``McpServer``) and the
attributes the gateway derived for the resource (``resource_attributes``: a tool's
``read_only`` / ``destructive`` from a trusted server's annotations), so the control
plane sees the call where and as the gateway decided it.

The wire names are here, shared by both gateways and the SDK: the request header, the
response headers, the problem types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from agentiam.core.approvals import Approver
from agentiam.core.approvals_wire import (
    APPROVAL_HEADER,
    APPROVAL_STATE_HEADER,
    META_KEY,
    PROBLEM_CODES,
)
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.errors import PROBLEM_BASE, Forbidden, ServiceUnavailable

__all__ = [
    "APPROVAL_HEADER",
    "APPROVAL_STATE_HEADER",
    "META_KEY",
    "PROBLEM_TYPES",
    "ApprovalClient",
    "ApprovalTicket",
    "ApprovedUse",
    "NotApprovable",
]

# RFC 9457 problem type per state the agent is told about.
PROBLEM_TYPES = {state: PROBLEM_BASE + code for state, code in PROBLEM_CODES.items()}


@dataclass(frozen=True, slots=True)
class ApprovalTicket:
    """What the agent is told about an approval request."""

    id: str
    state: str
    expires_at: str
    status_url: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> ApprovalTicket:
        return cls(
            id=str(body["id"]),
            state=str(body["state"]),
            expires_at=str(body["expires_at"]),
            status_url=str(body["status_url"]),
        )


@dataclass(frozen=True, slots=True)
class ApprovedUse:
    """An approval consumed for this call: the decision it allows carries
    ``decision_id``, and ``approver`` (a human) in ``context.approval``."""

    approval_id: str
    decision_id: str
    approver: Approver | None


class NotApprovable(Exception):
    """The control plane would not open a request (its policy says approval would not
    allow the call, or the agent has too many pending): the call stays denied."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _body(request: AuthzRequest) -> dict[str, Any]:
    """The call as this enforcement point decided it, for the control plane: with the
    parents it placed the resource in (``resource_parents``, from its configuration:
    :attr:`Call.resource_parents <agentiam.adapters.gateway.enforcer.Call>`) and the
    attributes it derived for it (``resource_attributes``: the MCP gateway's from a
    trusted server's tool annotations, :attr:`Call.resource_attributes
    <agentiam.adapters.gateway.enforcer.Call>`), so that the control plane decides,
    records and binds the call placed and attributed alike. Either is left out when
    there is none (the request as it was before they were sent)."""
    body: dict[str, Any] = {
        "principal": {"type": request.principal.type, "id": request.principal.id},
        "action": request.action,
        "resource": {"type": request.resource.type, "id": request.resource.id},
        "context": dict(request.context),
    }
    if request.resource_parents:
        body["resource_parents"] = [p.to_json() for p in request.resource_parents]
    if request.resource_attributes:
        body["resource_attributes"] = dict(request.resource_attributes)
    return body


def _unreachable(exc: Exception | None = None) -> ServiceUnavailable:
    what = type(exc).__name__ if exc is not None else "an error"
    return ServiceUnavailable(
        f"the control plane could not be asked about the approval ({what})",
        hint="Retry shortly.",
    )


class ApprovalClient:
    """Calls the control plane's approvals API with the gateway's verifier-role key.
    Blocking (httpx): a gateway calls it from a worker thread."""

    def __init__(self, issuer: str, admin_key: str, *, timeout: float = 10.0) -> None:
        self._base = issuer.rstrip("/") + "/v1/approvals"
        self._timeout = timeout
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        )

    def open(self, request: AuthzRequest, decision_id: str | None) -> ApprovalTicket:
        """Open (or find the pending) request for the call; NotApprovable on 409."""
        body = {**_body(request), "decision_id": decision_id}
        response = self._send("POST", self._base, json=body)
        if response.status_code == 409:
            raise NotApprovable(_detail(response))
        return ApprovalTicket.of(self._json(response))

    def use(self, approval_id: str, request: AuthzRequest) -> ApprovedUse | ApprovalTicket:
        """Use the approval for the call: ApprovedUse once consumed, else the request
        as it stands; Forbidden if it is not for this call (or does not exist)."""
        response = self._send("POST", f"{self._base}/{approval_id}/use", json=_body(request))
        if response.status_code in (403, 404):
            raise Forbidden("the approval is not for this call")
        body = self._json(response)
        if body.get("consumed") and isinstance(body.get("decision_id"), str):
            approver = body.get("approver")
            return ApprovedUse(
                approval_id=approval_id,
                decision_id=body["decision_id"],
                approver=Approver("human", approver) if isinstance(approver, str) else None,
            )
        return ApprovalTicket.of(body["approval"])

    def wait(self, approval_id: str, seconds: float) -> ApprovalTicket:
        """The request once decided, or as it is after ``seconds`` (a long poll)."""
        response = self._send(
            "GET",
            f"{self._base}/{approval_id}",
            params={"wait": seconds},
            timeout=seconds + self._timeout,
        )
        return ApprovalTicket.of(self._json(response))

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise _unreachable()
        try:
            body = response.json()
        except ValueError:
            raise _unreachable() from None
        if not isinstance(body, dict):
            raise _unreachable()
        return body

    def close(self) -> None:
        self._http.close()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail)[:300] if detail else "the call cannot be approved"
