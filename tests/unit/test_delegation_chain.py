"""Delegation chain claims (RFC 8693 section 4.1 ``act``), scope narrowing, and the
revocation set's cascade rules: lineage jtis and party cut-offs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentiam.core.credentials.jose import JoseRejected
from agentiam.core.credentials.revocations import Revocation, RevocationKind, RevocationSet
from agentiam.core.delegation.chain import (
    MAX_DEPTH_CAP,
    ChainClaims,
    build_act,
    narrow_scope,
    parse_act,
    parse_chain,
)

AGENTS = st.lists(
    st.from_regex(r"agt_[0-9A-Z]{26}", fullmatch=True), min_size=1, max_size=8, unique=True
)


@given(AGENTS)
def test_act_round_trips_with_the_current_actor_outermost(actors: list[str]) -> None:
    act = build_act(actors)
    assert act is not None
    assert act["sub"] == actors[0]
    assert parse_act(act) == tuple(actors)


def test_no_actors_is_no_act_claim() -> None:
    assert build_act([]) is None
    assert parse_act(None) == ()
    assert ChainClaims().to_claims() == {}


@pytest.mark.parametrize(
    "act",
    [
        "agt_x",  # not an object
        {"sub": ""},
        {"sub": 7},
        {"sub": "a" * 300},
        {"sub": "a", "iss": "https://x"},  # extra members are refused in our tokens
        {"sub": "a", "act": "b"},
        {"act": {"sub": "a"}},
    ],
)
def test_malformed_act_is_refused(act: Any) -> None:
    with pytest.raises(JoseRejected):
        parse_act(act)


def test_act_deeper_than_the_hard_cap_is_refused() -> None:
    act = build_act([f"agt_{i}" for i in range(MAX_DEPTH_CAP + 1)])
    with pytest.raises(JoseRejected, match="too deep"):
        parse_act(act)


def test_parse_chain_requires_the_current_actor_to_be_the_client() -> None:
    claims = ChainClaims(actors=("agt_worker", "agt_planner")).to_claims()
    assert parse_chain(claims, client_id="agt_worker").actors == ("agt_worker", "agt_planner")
    with pytest.raises(JoseRejected, match="client_id"):
        parse_chain(claims, client_id="agt_planner")


def test_parse_chain_refuses_a_cycle_and_malformed_members() -> None:
    with pytest.raises(JoseRejected, match="twice"):
        parse_chain({"act": build_act(["agt_a", "agt_b", "agt_a"])}, client_id="agt_a")
    for bad in (
        {"delegation": "x"},
        {"delegation": {"grant": 5}},
        {"delegation": {"lineage": "tok_1"}},
        {"delegation": {"lineage": ["tok"] * 100}},
        {"delegation": {"other": 1}},
        {"authorization_details": {"type": "x"}},
        {"may_act": "agt_a"},
    ):
        with pytest.raises(JoseRejected):
            parse_chain(bad, client_id="agt_a")


def test_chain_claims_round_trip() -> None:
    chain = ChainClaims(
        actors=("agt_w", "agt_p"),
        grant_id="grt_1",
        lineage=("tok_1", "tok_2"),
        authorization_details=({"type": "tool_invocation", "tools": ["search"]},),
        may_act={"sub": "agt_x"},
    )
    assert parse_chain(chain.to_claims(), client_id="agt_w") == chain


@pytest.mark.parametrize(
    ("requested", "held", "granted", "beyond"),
    [
        (None, [{"a", "b"}, {"b", "c"}], ("b",), ()),
        (("b",), [{"a", "b"}, {"b"}], ("b",), ()),
        (("a",), [{"a", "b"}, {"b"}], (), ("a",)),
        (("z",), [{"a"}], (), ("z",)),
        (None, [{"a"}, set()], (), ()),
    ],
)
def test_narrow_scope_stays_inside_every_bound(
    requested: tuple[str, ...] | None,
    held: list[set[str]],
    granted: tuple[str, ...],
    beyond: tuple[str, ...],
) -> None:
    assert narrow_scope(requested, *held) == (granted, beyond)


@given(
    st.lists(st.sampled_from("abcdef"), unique=True),
    st.lists(st.sets(st.sampled_from("abcdef")), min_size=1, max_size=3),
)
def test_narrow_scope_never_grants_outside_the_intersection(
    requested: list[str], held: list[set[str]]
) -> None:
    granted, beyond = narrow_scope(tuple(requested), *held)
    allowed = set.intersection(*held)
    assert set(granted) <= allowed
    assert (not beyond) == (set(requested) <= allowed)


def _set(*entries: tuple[RevocationKind, str, int]) -> RevocationSet:
    revoked = RevocationSet(max_staleness=10)
    revoked.apply(
        [
            Revocation(seq=i + 1, kind=k, subject=s, cutoff=c, expires=10_000)
            for i, (k, s, c) in enumerate(entries)
        ],
        now=0,
    )
    return revoked


def test_revoking_an_ancestor_token_revokes_its_descendants() -> None:
    revoked = _set((RevocationKind.TOKEN, "tok_parent", 0))
    assert revoked.is_revoked(
        jti="tok_child", agent_id="agt_w", issued_at=100, lineage=("tok_root", "tok_parent")
    )
    assert not revoked.is_revoked(
        jti="tok_other", agent_id="agt_w", issued_at=100, lineage=("tok_root",)
    )


@pytest.mark.parametrize(
    "kind_and_party",
    [
        (RevocationKind.AGENT, "agt_planner"),  # an actor earlier in the chain
        (RevocationKind.HUMAN, "hum_hannah"),  # the human acted for
        (RevocationKind.GRANT, "grt_1"),  # the grant the chain was issued under
    ],
)
def test_a_party_cut_off_revokes_tokens_issued_at_or_before_it(
    kind_and_party: tuple[RevocationKind, str],
) -> None:
    kind, party = kind_and_party
    revoked = _set((kind, party, 100))
    parties = ("hum_hannah", "agt_worker", "agt_planner", "grt_1")
    for issued_at, expected in ((99, True), (100, True), (101, False)):
        assert (
            revoked.is_revoked(
                jti="tok_x", agent_id="agt_worker", issued_at=issued_at, parties=parties
            )
            is expected
        )
    # A token that does not involve the party is untouched.
    assert not revoked.is_revoked(
        jti="tok_y", agent_id="agt_other", issued_at=50, parties=("agt_other",)
    )
