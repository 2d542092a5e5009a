"""A delegation chain human → planner agent → just-in-time worker, its trace, and its
cascade revocation, against a running control plane.

    agentiam keys generate-master-key -o agentiam.master.key   # once
    AGENTIAM_MASTER_KEY_FILE=agentiam.master.key agentiam serve &   # prints an admin key
    python docs/examples/delegation_chain.py http://127.0.0.1:8080 aiam_…

The issuer URL and the admin key may also come from ``AGENTIAM_ISSUER`` and
``AGENTIAM_ADMIN_KEY``. The admin key needs the ``admin`` role (minting a human's
subject token is admin only). Steps:

1. register a human (Hannah) and a planner agent whose key is generated here (only the
   public JWK is sent), entitled to ``tools:read tools:write`` on RESOURCE;
2. create a delegation grant (admin API): Hannah lets the planner act for her with
   those scopes, only the ``search`` and ``send_email`` tools, and one sub-agent below
   it (``max_depth`` 2);
3. mint Hannah's short-lived subject token (admin API; it names the planner in
   ``may_act``). With an external IdP, her own ID token would be used instead;
4. the planner acts for Hannah (RFC 8693 token exchange through the SDK's ``act_for``);
5. the planner spawns a just-in-time worker for a narrower task: ``tools:read`` and
   only ``search`` with a bounded ``query`` argument (RFC 9396 authorization_details).
   The worker's key pair is generated here too; a wider request is refused;
6. print both tokens' chain claims (decoded without verification, for display only)
   and the trace of the worker's token (``GET /v1/delegations/{jti}``) as a tree;
7. revoke the grant, and show by introspection that both tokens are inactive at once
   and that no new exchange can start under it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from typing import Any

import httpx
from rich.console import Console

from agentiam.adapters.http.routes.delegations import TreeOut
from agentiam.cli.trace import render
from agentiam.sdk import AccessToken, AgentClient, AgentKey, TokenError

RESOURCE = "https://tools.example.com/mcp"
GRANTED = [{"type": "tool_invocation", "tools": ["search", "send_email"]}]
TASK = [
    {
        "type": "tool_invocation",
        "tools": ["search"],
        "arguments": {"query": {"max_length": 200}},
    }
]
CHAIN_CLAIMS = ("sub", "client_id", "act", "aud", "scope", "authorization_details", "delegation")


def claims(token: str | AccessToken) -> dict[str, Any]:
    """The token's claims, decoded WITHOUT verification: for display only."""
    value = token.value if isinstance(token, AccessToken) else token
    payload = value.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def show(title: str, token: AccessToken) -> dict[str, Any]:
    decoded = claims(token)
    print(f"\n== {title} (jti {decoded['jti']}, lives {decoded['exp'] - decoded['iat']} s)")
    print(json.dumps({k: decoded[k] for k in CHAIN_CLAIMS if k in decoded}, indent=2))
    return decoded


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    if response.status_code != status:
        sys.exit(f"{response.request.method} {response.request.url.path}: {response.text}")
    return dict(response.json())


def main(argv: list[str]) -> int:
    issuer = (argv[1] if len(argv) > 1 else os.environ.get("AGENTIAM_ISSUER", "")).rstrip("/")
    admin_key = argv[2] if len(argv) > 2 else os.environ.get("AGENTIAM_ADMIN_KEY", "")
    if not issuer or not admin_key:
        print(__doc__)
        return 2
    admin = httpx.Client(
        base_url=issuer, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    )
    suffix = secrets.token_hex(3)

    # 1. The human, and the planner with a key generated here.
    human = ok(
        admin.post(
            "/v1/humans",
            json={"display_name": "Hannah", "email": f"hannah-{suffix}@example.com"},
        ),
        201,
    )
    planner_key = AgentKey.generate()  # the private key never leaves this process
    planner_agent = ok(
        admin.post(
            "/v1/agents",
            json={
                "name": f"planner-{suffix}",
                "owners": [human["id"]],
                "purpose": "plans Hannah's research tasks",
                "environment": "production",
                "activate": True,
                "keys": [planner_key.public_jwk()],
                "scopes": ["tools:read", "tools:write"],
                "audiences": [RESOURCE],
            },
        ),
        201,
    )
    print(f"human   {human['id']} ({human['display_name']})")
    print(f"planner {planner_agent['id']} ({planner_agent['name']})")

    # 2. Hannah's grant to the planner.
    grant = ok(
        admin.post(
            "/v1/delegation-grants",
            json={
                "human_id": human["id"],
                "agent_id": planner_agent["id"],
                "scopes": ["tools:read", "tools:write"],
                "audiences": [RESOURCE],
                "authorization_details": GRANTED,
                "ttl_seconds": 3600,
                "max_depth": 2,
            },
        ),
        201,
    )
    print(f"grant   {grant['id']} scopes={grant['scopes']} max_depth={grant['max_depth']}")

    # 3. Hannah's subject token, usable only by the planner (may_act).
    def subject_token() -> str:
        minted = ok(
            admin.post(
                f"/v1/humans/{human['id']}/subject-tokens",
                json={"agent_id": planner_agent["id"]},
            ),
            201,
        )
        return str(minted["subject_token"])

    # 4. The planner acts for Hannah.
    planner = AgentClient(issuer, client_id=planner_agent["id"], key=planner_key, resource=RESOURCE)
    acting = planner.act_for(subject_token())
    show("planner acting for Hannah", acting)

    # 5. A JIT worker for a narrower task; a wider one is refused.
    try:
        planner.spawn_subagent(
            ttl_seconds=600,
            on_behalf=acting,
            authorization_details=[{"type": "tool_invocation", "tools": ["send_wire"]}],
        )
        print("\nUNEXPECTED: a wider task was accepted")
        return 1
    except TokenError as exc:
        print(f"\nwider task (tool send_wire) refused: {exc.error}")
    worker = planner.spawn_subagent(
        ttl_seconds=600,
        on_behalf=acting,
        scope="tools:read",
        authorization_details=TASK,
        purpose="search the web for Hannah",
    )
    print(f"worker  {worker.agent_id} ({worker.name}), expires {worker.expires_at}")
    worker_claims = show("worker (JIT sub-agent)", worker.token)

    # 6. The trace of the worker's token, from Hannah down.
    tree = TreeOut.model_validate(ok(admin.get(f"/v1/delegations/{worker_claims['jti']}")))
    print("\n== trace")
    Console(width=200, highlight=False).print(render(tree))

    # 7. Revoke the grant: every token issued under it dies with it.
    def active(token: AccessToken) -> bool:
        return bool(ok(admin.post("/oauth2/introspect", data={"token": token.value}))["active"])

    print(f"\nbefore revocation: planner token active={active(acting)}, ", end="")
    print(f"worker token active={active(worker.token)}")
    revoked = ok(
        admin.post(f"/v1/delegation-grants/{grant['id']}/revoke", json={"reason": "task done"})
    )
    print(f"grant {revoked['id']} is {revoked['status']}")
    print(f"after revocation: planner token active={active(acting)}, ", end="")
    print(f"worker token active={active(worker.token)}")
    try:
        planner.act_for(subject_token())
        print("UNEXPECTED: an exchange under the revoked grant succeeded")
        return 1
    except TokenError as exc:
        print(f"a new exchange for Hannah is refused: {exc.error}")
    planner.close()
    admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
