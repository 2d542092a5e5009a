"""An agent obtains a DPoP-bound token and calls a resource with DPoP proofs.

Run against a control plane where the agent is registered with this key:

    agentiam keys generate-master-key -o agentiam.master.key   # once
    AGENTIAM_MASTER_KEY_FILE=agentiam.master.key agentiam serve &
    python docs/examples/agent_client.py keygen agent.key > agent.pub.json
    agentiam agents create invoice-bot --owner hum_… --purpose "pay invoices" \\
        --environment production --key-file agent.pub.json --scope tools:read \\
        --audience https://tools.example.com --activate
    python docs/examples/agent_client.py token http://127.0.0.1:8080 agt_… agent.key \\
        https://tools.example.com

``token`` prints the token response's type, scope and lifetime and the token's claims
(decoded without verification, for display only). ``call URL`` additionally sends a GET
to URL with ``Authorization: DPoP …`` and a fresh proof, and prints the status code.
"""

from __future__ import annotations

import base64
import json
import sys
import time

from agentiam.sdk import AgentClient, AgentKey


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "keygen":
        key = AgentKey.generate()
        key.save(argv[2])  # private JWK, mode 0600; never leaves the agent
        print(json.dumps(key.public_jwk()))  # register this with the agent
        return 0
    if len(argv) in (6, 7) and argv[1] == "token":
        issuer, agent_id, key_file, resource = argv[2:6]
        agent = AgentClient(
            issuer, client_id=agent_id, key=AgentKey.load(key_file), resource=resource
        )
        token = agent.token()
        print(
            f"token_type={token.token_type} scope={token.scope!r} "
            f"expires_in={round(token.expires_at - time.time())}"
        )
        print(json.dumps(_claims(token.value), indent=2, sort_keys=True))
        if len(argv) == 7:
            with agent.http() as http:
                print("GET", argv[6], "->", http.get(argv[6]).status_code)
        agent.close()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
