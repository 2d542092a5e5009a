"""The in-process guard against a real control plane: the agent's token verified
locally, the policy bundle pushed to the guard, decisions and outcomes spooled and
shipped to the control plane's trail, revocation within a second, and fail closed
when the spool or the control plane is lost. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from tests.api.oauth_support import CTX, RESOURCE, OAuthLive, oauth_live

from agentiam.adapters.gateway.link import KEYS_SECONDS
from agentiam.adapters.gateway.spool import AuditSpool
from agentiam.core.access.admin_keys import Role
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, ResourceRef, TraceContext
from agentiam.core.credentials.revocations import staleness_clock
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.guard import Guard, GuardUnavailable, ToolCallDenied
from agentiam.sdk import AgentClient

ALLOW_SEARCH = (
    'permit (principal is Agent, action == Action::"invoke_tool", resource == Tool::"search");'
)
KEY_ENV = "AGENTIAM_GUARD_KEY"


def setup_policy(live: OAuthLive) -> None:
    """One tool allowed (search), everything else denied by default."""
    with live.admin_client() as admin:
        for tool in ("search", "delete"):
            r = admin.put(f"/v1/resources/Tool/{tool}", json={"attributes": {}})
            assert r.status_code == 200, r.text
        r = admin.put("/v1/policies/allow-search", json={"text": ALLOW_SEARCH})
        assert r.status_code == 200, r.text


def verifier_env(live: OAuthLive, guard: str = "test-agent") -> dict[str, str]:
    key = live.container.admin_keys.create(
        CTX, name="guard", role=Role.VERIFIER, sources=[f"guard/{guard}"]
    ).secret
    return {KEY_ENV: key}


def agent_of(live: OAuthLive) -> AgentClient:
    return AgentClient(live.url, client_id=live.agent_id, key=live.key, resource=RESOURCE)


def connect(live: OAuthLive, spool: Path, agent: AgentClient, **kwargs: Any) -> Guard:
    return Guard.connect(
        live.url,
        resource=RESOURCE,
        spool_dir=spool,
        name="test-agent",
        token=lambda: agent.token().value,
        environ=verifier_env(live),
        poll_wait=1.0,  # a held long poll would delay the test server's shutdown
        **kwargs,
    )


def trail(live: OAuthLive, **params: str) -> list[dict[str, Any]]:
    with live.admin_client() as admin:
        r = admin.get("/v1/audit/events", params={"limit": "200", **params})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with oauth_live(sqlite_url) as server:
        setup_policy(server)
        yield server


# -- allowed and denied, sync ---------------------------------------------------------------


def test_an_allowed_call_runs_and_its_decision_and_outcome_reach_the_trail(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[str] = []

    @guard.tool()
    def search(query: str, limit: int = 5) -> str:
        ran.append(query)
        return f"{limit} results for {query}"

    assert search("invoices") == "5 results for invoices"
    assert ran == ["invoices"]
    assert search.__name__ == "search"  # functools.wraps: frameworks see the function
    assert guard.drain(10)
    events = trail(live, agent_id=live.agent_id, resource_type="Tool", resource_id="search")
    decision = [e for e in events if e["type"] == "authz.decision"]
    outcome = [e for e in events if e["type"] == "tool.call"]
    assert len(decision) == 1, events
    assert len(outcome) == 1, events
    assert decision[0]["source"] == outcome[0]["source"] == "guard/test-agent"
    assert decision[0]["outcome"] == "success"
    assert decision[0]["details"]["argument_names"] == ["limit", "query"]  # defaults bound
    assert decision[0]["details"]["arguments"] == {}  # values only through redaction rules
    assert outcome[0]["outcome"] == "success"
    assert outcome[0]["decision_id"] == decision[0]["decision_id"]
    assert outcome[0]["trace"]["trace_id"] == decision[0]["trace"]["trace_id"]
    assert outcome[0]["details"]["error"] is None
    assert outcome[0]["delegation_chain"] == [live.agent_id]


def test_a_denied_call_raises_and_its_body_never_runs(live: OAuthLive, guard: Guard) -> None:
    ran: list[str] = []

    @guard.tool("delete")
    def remove(path: str) -> None:
        ran.append(path)

    with pytest.raises(ToolCallDenied) as caught:
        remove("/etc/passwd")
    assert ran == []
    denied = caught.value
    assert denied.tool == "delete"
    assert denied.error == "insufficient_scope"
    assert denied.refusal_status == 403
    assert denied.decision_id is not None
    assert denied.decision_id.startswith("dec")
    assert denied.decision_id in str(denied)
    assert guard.drain(10)
    events = trail(live, trace_id=denied.trace_id or "")
    assert [e["type"] for e in events] == ["authz.decision"]  # no outcome: nothing ran
    assert events[0]["outcome"] == "denied"
    assert events[0]["decision_id"] == denied.decision_id


def test_an_exception_in_the_body_is_recorded_by_class_and_re_raised(
    live: OAuthLive, guard: Guard
) -> None:
    @guard.tool("search")
    def failing(query: str) -> None:
        raise LookupError(f"secret detail about {query}")

    with pytest.raises(LookupError):
        failing("x")
    assert guard.drain(10)
    events = trail(live, agent_id=live.agent_id, action="invoke_tool", outcome="failure")
    assert len(events) == 1
    assert events[0]["type"] == "tool.call"
    assert events[0]["details"]["error"] == "LookupError"
    assert "secret detail" not in str(events[0])  # the class, never the message


def test_the_context_manager_decides_before_the_block(live: OAuthLive, guard: Guard) -> None:
    with guard.call("search", {"query": "q"}) as call:
        assert call.agent_id == live.agent_id
        assert call.decision_id is not None
    entered = False
    with pytest.raises(ToolCallDenied), guard.call("delete", {"path": "/"}):
        entered = True
    assert not entered


# -- async -----------------------------------------------------------------------------------


def test_async_functions_and_async_with(live: OAuthLive, guard: Guard) -> None:
    ran: list[str] = []

    @guard.tool()
    async def search(query: str) -> str:
        await asyncio.sleep(0)
        ran.append(query)
        return query.upper()

    @guard.tool("delete")
    async def delete(path: str) -> None:
        ran.append(path)

    async def main() -> None:
        assert await search("a") == "A"
        with pytest.raises(ToolCallDenied):
            await delete("/")
        async with guard.call("search", {"query": "b"}) as call:
            assert call.decision_id is not None
        with pytest.raises(ToolCallDenied):
            async with guard.call("delete"):
                ran.append("block")
        # concurrent calls share the spool's group commit
        assert await asyncio.gather(*(search(str(i)) for i in range(10))) == [
            str(i) for i in range(10)
        ]

    asyncio.run(main())
    assert ran[:1] == ["a"]
    assert "/" not in ran
    assert "block" not in ran
    assert guard.drain(10)
    outcomes = trail(live, agent_id=live.agent_id, resource_id="search", outcome="success")
    assert len([e for e in outcomes if e["type"] == "tool.call"]) == 12


# -- who the principal is ---------------------------------------------------------------------


def test_no_token_a_foreign_token_or_garbage_is_refused_and_audited(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    with Guard.connect(
        live.url,
        resource=RESOURCE,
        spool_dir=tmp_path / "s",
        name="no-token",
        environ=verifier_env(live, "no-token"),
    ) as guard:
        ran: list[int] = []

        @guard.tool("search")
        def search() -> None:
            ran.append(1)

        with pytest.raises(ToolCallDenied) as caught:
            search()
        assert (caught.value.error, caught.value.refusal_status) == ("invalid_token", 401)

        with guard.acting_as("not-a-jwt"), pytest.raises(ToolCallDenied) as caught:
            search()
        assert caught.value.error == "invalid_token"

        def boom() -> str:
            raise RuntimeError("token endpoint down")

        with guard.acting_as(boom), pytest.raises(ToolCallDenied) as caught:
            search()
        assert "token source failed (RuntimeError)" in caught.value.reason

        # a token for another audience (the control plane's own) is not for this guard
        with live.admin_client() as admin:
            r = admin.patch(
                f"/v1/agents/{live.agent_id}",
                json={"audiences": [RESOURCE, "https://other.example.com"]},
            )
            assert r.status_code == 200, r.text
        other = agent.token("https://other.example.com").value
        with guard.acting_as(other), pytest.raises(ToolCallDenied) as caught:
            search()
        assert caught.value.error == "invalid_token"

        # the real token, through acting_as, is accepted
        with guard.acting_as(agent.token().value):
            search()
        assert ran == [1]
        assert guard.drain(10)
    refused = trail(live, action="authenticate", outcome="denied")
    assert len([e for e in refused if e["source"] == "guard/no-token"]) == 2  # bad tokens
    anonymous = trail(live, action="invoke_tool", outcome="denied")
    reasons = {e["reason"] for e in anonymous if e["source"] == "guard/no-token"}
    assert reasons == {"no agent access token", "the token source failed (RuntimeError)"}


def test_revoking_the_agents_tokens_cuts_it_off_within_a_second(
    live: OAuthLive, guard: Guard
) -> None:
    @guard.tool()
    def search() -> str:
        return "ok"

    assert search() == "ok"
    with live.admin_client() as admin:
        r = admin.post(f"/v1/agents/{live.agent_id}/revoke-tokens", json={"reason": "test"})
        assert r.status_code == 200, r.text
    started = time.monotonic()
    refused: ToolCallDenied | None = None
    while refused is None:
        try:
            search()
        except ToolCallDenied as denied:
            refused = denied
            break
        assert time.monotonic() - started < 1.0, "still allowed a second after revocation"
        time.sleep(0.02)
    assert time.monotonic() - started < 1.0
    assert refused.error == "invalid_token"


def test_a_policy_change_reaches_the_guard_within_a_second(live: OAuthLive, guard: Guard) -> None:
    @guard.tool()
    def delete() -> str:
        return "deleted"

    with pytest.raises(ToolCallDenied):
        delete()
    allow = ALLOW_SEARCH.replace('"search"', '"delete"')
    with live.admin_client() as admin:
        assert admin.put("/v1/policies/allow-delete", json={"text": allow}).status_code == 200
    started = time.monotonic()
    while True:
        try:
            assert delete() == "deleted"
            break
        except ToolCallDenied:
            assert time.monotonic() - started < 1.0, "the new policy took over a second"
            time.sleep(0.02)


# -- the JWKS safety net (jwks_refresh_seconds) ---------------------------------------------


def test_the_jwks_safety_net_defaults_to_the_gateways(guard: Guard) -> None:
    """Unset, the guard re-reads the JWKS every 60 s, as a gateway does by default
    (its control plane pushes retirements, so the every-second legacy re-read is off)."""
    assert guard.enforcer.link.remote.feed.pushes_key_retirements
    assert guard.enforcer.link.keys_interval() == KEYS_SECONDS == 60


def _a_new_key_is_picked_up_unasked(live: OAuthLive, guard: Guard, bound: float) -> None:
    """Add a signing key at the control plane (a rotation that signs at once; nothing is
    retired, so the revocation feed pushes nothing): the guard's copy of the JWKS is
    re-read within ``bound`` seconds although no token asked for the new key (seen
    through the copy's age, which does not fetch), and the first call with a token the
    new key signed is allowed. Had the copy not been re-read, that call would be
    refused: an unknown ``kid`` is fetched in the background, not waited for."""
    keys = guard.enforcer.link.remote.keys
    signing = live.container.signing_keys
    (old,) = [k["kid"] for k in signing.jwks()["keys"]]
    new = signing.rotate(CTX, immediate=True)
    rotated = staleness_clock()
    while True:
        age = keys.age()
        since = staleness_clock() - rotated
        if age is not None and age < since:
            break  # the copy was read after the rotation
        assert since < bound, f"the JWKS was not re-read within {bound} s of the rotation"
        time.sleep(0.02)
    assert not guard.enforcer.link.remote.revoked.is_key_retired(old)  # no push did it
    fresh = agent_of(live)  # its own token cache: a token the new key signs
    try:
        token = fresh.token().value
    finally:
        fresh.close()
    assert pyjwt.get_unverified_header(token)["kid"] == new.kid
    ran: list[int] = []
    with guard.call("search", token=token):
        ran.append(1)
    assert ran == [1]


def test_a_short_jwks_refresh_brings_a_new_signing_key_without_a_retirement_push(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """``jwks_refresh_seconds=1``: the new key is in the guard's copy within about a
    second (the default would take up to a minute)."""
    with connect(live, tmp_path / "s", agent, jwks_refresh_seconds=1) as guard:
        assert guard.enforcer.link.keys_interval() == 1
        _a_new_key_is_picked_up_unasked(live, guard, bound=2.0)


def test_a_jwks_refresh_over_a_quarter_of_the_outage_bound_is_capped(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """As a gateway's: an hour asked with a 4 s outage bound, 1 s used (a quarter of
    the bound, so a quiet guard's copy never goes stale), and the new key comes
    within that."""
    with connect(live, tmp_path / "s", agent, outage_seconds=4, jwks_refresh_seconds=3600) as guard:
        assert guard.enforcer.link.keys_interval() == 1
        _a_new_key_is_picked_up_unasked(live, guard, bound=2.0)


def test_rate_limits_refuse_with_retry_after(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    limits = RateLimiter.from_config({"per_agent": {"rate_per_second": 0.01, "burst": 1}})
    with connect(live, tmp_path / "s", agent, rate_limits=limits) as guard:

        @guard.tool()
        def search() -> None:
            pass

        search()
        with pytest.raises(ToolCallDenied) as caught:
            search()
        assert (caught.value.error, caught.value.refusal_status) == ("rate_limited", 429)
        assert caught.value.retry_after is not None
        assert caught.value.retry_after >= 1


# -- fail closed ------------------------------------------------------------------------------


def _unshippable_backlog(live: OAuthLive, directory: Path, size: int) -> None:
    """At least ``size`` bytes of events in the spool at ``directory`` that the control
    plane keeps refusing for now: dated a year ahead, past its allowance for clock
    skew, which the guard's shipper retries (this host's clock) rather than sets
    aside. So they stay pending, and the spool stays full."""
    event = AuditEvent.create(
        type="authz.decision",
        actor=Actor(ActorType.AGENT, live.agent_id),
        action="invoke_tool",
        source="guard/test-agent",
        trace=TraceContext.new(),
        now=datetime.now(UTC) + timedelta(days=365),
        resource=ResourceRef("Tool", "search"),
        agent_id=live.agent_id,
        details={"decision": "allow"},
    ).to_dict()
    directory.mkdir()
    with AuditSpool(directory, None) as spool:
        while spool.health().pending_bytes < size:
            spool.append([event] * 200)


def test_a_spool_that_cannot_take_the_event_refuses_the_call(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    ran: list[int] = []
    # full: a backlog the control plane will not take fills the smallest bound allowed
    _unshippable_backlog(live, tmp_path / "full", 1 << 20)
    with connect(live, tmp_path / "full", agent, spool_max_bytes=1 << 20) as guard:

        @guard.tool()
        def search() -> None:
            ran.append(1)

        with pytest.raises(GuardUnavailable) as caught:
            search()
        assert caught.value.refusal_status == 503
        assert caught.value.error == "temporarily_unavailable"
        assert "its limit is 1048576" in caught.value.reason  # full, not another failure
    # closed (or broken): every call is refused
    guard = connect(live, tmp_path / "closed", agent)
    try:

        @guard.tool()
        def search_again() -> None:
            ran.append(2)

        assert guard.spool is not None
        guard.spool.close()
        with pytest.raises(GuardUnavailable):
            search_again()

        async def main() -> None:
            async with guard.call("search"):
                ran.append(3)

        with pytest.raises(GuardUnavailable):
            asyncio.run(main())
    finally:
        guard.close()
    assert ran == []


def test_past_the_outage_bound_every_call_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    """Stop the control plane: the guard decides from cache for outage_seconds, then
    refuses everything."""
    with oauth_live(sqlite_url) as live:
        setup_policy(live)
        agent = agent_of(live)
        token = agent.token().value
        guard = Guard.connect(
            live.url,
            resource=RESOURCE,
            spool_dir=tmp_path / "s",
            name="outage",
            token=token,
            outage_seconds=3,
            environ=verifier_env(live, "outage"),
            poll_wait=1.0,
        )
        with guard.call("search"):
            pass
    stopped = time.monotonic()
    try:
        ran: list[int] = []
        with guard.call("search"):  # within the bound: decided from cache
            ran.append(1)
        assert time.monotonic() - stopped < 3
        deadline = stopped + 8
        while True:
            try:
                with guard.call("search"):
                    ran.append(2)
            except GuardUnavailable:
                break
            assert time.monotonic() < deadline, "still deciding long past the outage bound"
            time.sleep(0.1)
        assert time.monotonic() - stopped >= 2.5
        with pytest.raises(GuardUnavailable), guard.call("search"):
            ran.append(3)
        assert 3 not in ran
        assert guard.spool is not None
        assert guard.spool.health().pending_events >= 1
    finally:
        guard.close()


def test_events_spooled_during_an_outage_ship_when_the_control_plane_returns(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """The shipper keeps events on disk while ingest fails and sends them after."""
    blocked = threading.Event()
    blocked.set()
    real_post = httpx.Client.post

    def flaky_post(self: httpx.Client, url: Any, *args: Any, **kwargs: Any) -> httpx.Response:
        if blocked.is_set() and str(url).endswith("/v1/audit/ingest"):
            raise httpx.ConnectError("control plane unreachable")
        return real_post(self, url, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx.Client, "post", flaky_post)
        with connect(live, tmp_path / "s", agent) as guard:
            with guard.call("search") as call:
                trace = call.trace_id
            assert not guard.drain(0.5)
            assert guard.spool is not None
            assert guard.spool.health().pending_events == 2
            blocked.clear()
            assert guard.drain(15)
    assert trace is not None
    assert {e["type"] for e in trail(live, trace_id=trace)} == {"authz.decision", "tool.call"}
