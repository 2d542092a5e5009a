"""The in-process guard takes the gateways' ``rate_limits`` configuration, per_human
included: calls made with a token delegated by a human (RFC 8693 token exchange of
her subject token) count against her budget; the agent's own token names no human
and takes no per-human token. A real control plane (uvicorn in a thread)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.api.oauth_support import RESOURCE, OAuthLive, oauth_live
from tests.api.test_guard import agent_of, setup_policy, trail, verifier_env

from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.guard import Guard, ToolCallDenied
from agentiam.sdk import AgentClient

PER_HUMAN = "rate limit for search exceeded (per_human limit)"


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as server:
        setup_policy(server)
        yield server


def _delegated(live: OAuthLive, agent: AgentClient) -> str:
    """A token of ``agent`` acting for the agent's owner, who granted it."""
    with live.admin_client() as admin:
        r = admin.post(
            "/v1/delegation-grants",
            json={
                "human_id": live.owner_id,
                "agent_id": live.agent_id,
                "scopes": ["tools:read"],
                "audiences": [RESOURCE],
                "ttl_seconds": 3600,
            },
        )
        assert r.status_code == 201, r.text
        r = admin.post(
            f"/v1/humans/{live.owner_id}/subject-tokens", json={"agent_id": live.agent_id}
        )
        assert r.status_code == 201, r.text
    return agent.act_for(r.json()["subject_token"], resource=RESOURCE).value


def test_the_guard_takes_per_human_from_its_rate_limits(live: OAuthLive, tmp_path: Path) -> None:
    agent = agent_of(live)
    tokens = {"now": _delegated(live, agent)}
    limits = RateLimiter.from_config(
        {
            "per_agent": {"rate_per_second": 0.001, "burst": 10},
            "per_human": {"rate_per_second": 0.001, "burst": 2},
        }
    )
    guard = Guard.connect(
        live.url,
        resource=RESOURCE,
        spool_dir=tmp_path / "spool",
        name="test-agent",
        token=lambda: tokens["now"],
        environ=verifier_env(live),
        poll_wait=1.0,
        rate_limits=limits,
    )
    try:

        @guard.tool()
        def search() -> str:
            return "found"

        assert [search(), search()] == ["found", "found"]  # the human's burst of 2
        with pytest.raises(ToolCallDenied) as caught:
            search()
        assert (caught.value.error, caught.value.refusal_status) == ("rate_limited", 429)
        assert caught.value.retry_after is not None
        assert caught.value.retry_after >= 1
        assert PER_HUMAN in str(caught.value)
        # the agent's own token names no human: its own limit only (8 tokens left)
        tokens["now"] = agent.token().value
        assert search() == "found"
        assert guard.drain(10)
        refused = [
            e for e in trail(live, type="api.request.rejected") if e["source"] == "guard/test-agent"
        ]
        assert [(e["reason"], e["initiating_human"]) for e in refused] == [
            (PER_HUMAN, live.owner_id)
        ]
    finally:
        guard.close()
        agent.close()
