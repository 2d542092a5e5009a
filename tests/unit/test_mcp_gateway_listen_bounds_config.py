"""The MCP gateway's ``listen_streams`` keys: the bounds on 2026-07-28
``subscriptions/listen`` streams open at once, in all and per agent and subject,
validated at start with a ValueError naming the key (docs/gateway.md, "MCP gateway",
"Configuration"). What the running gateway does with them:
test_mcp_gateway_listen_bounds_live.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.unit.test_mcp_gateway_config import config

from agentiam.adapters.gateway.mcp_proxy import (
    MAX_LISTEN_STREAMS,
    MAX_LISTEN_STREAMS_PER_AGENT,
    ListenStreamBounds,
    load_config,
)


def test_without_the_keys_the_bounds_are_1024_in_all_and_32_per_agent() -> None:
    assert load_config(config()).listen_streams == ListenStreamBounds(1024, 32)
    assert (MAX_LISTEN_STREAMS, MAX_LISTEN_STREAMS_PER_AGENT) == (1024, 32)
    assert load_config(config(listen_streams={})).listen_streams == ListenStreamBounds(1024, 32)


def test_both_bounds_are_set_by_the_file() -> None:
    loaded = load_config(config(listen_streams={"max_open": 4096, "max_open_per_agent": 8}))
    assert loaded.listen_streams == ListenStreamBounds(max_open=4096, max_open_per_agent=8)
    one = load_config(config(listen_streams={"max_open": 1, "max_open_per_agent": 1}))
    assert one.listen_streams == ListenStreamBounds(1, 1)


def test_a_bound_in_all_below_the_per_agent_default_lowers_that_default() -> None:
    """``max_open: 10`` alone: an agent may hold all 10 (the per-agent default, 32,
    could never be reached, and is not an error the operator made)."""
    loaded = load_config(config(listen_streams={"max_open": 10}))
    assert loaded.listen_streams == ListenStreamBounds(max_open=10, max_open_per_agent=10)
    alone = load_config(config(listen_streams={"max_open_per_agent": 4}))
    assert alone.listen_streams == ListenStreamBounds(max_open=1024, max_open_per_agent=4)


@pytest.mark.parametrize(
    ("streams", "message"),
    [
        (1024, "listen_streams: expected a mapping"),
        ({"max": 8}, "listen_streams: unknown keys max"),
        ({"max_open": 0}, "listen_streams.max_open: an integer between 1 and 100000"),
        ({"max_open": -1}, "listen_streams.max_open: an integer between 1 and 100000"),
        ({"max_open": 100_001}, "listen_streams.max_open: an integer between 1 and 100000"),
        ({"max_open": 2.5}, "listen_streams.max_open: an integer"),
        ({"max_open": "1024"}, "listen_streams.max_open: an integer"),
        ({"max_open": True}, "listen_streams.max_open: an integer"),
        ({"max_open_per_agent": 0}, "listen_streams.max_open_per_agent: an integer between 1"),
        ({"max_open_per_agent": False}, "listen_streams.max_open_per_agent: an integer"),
        ({"max_open_per_agent": 1.0}, "listen_streams.max_open_per_agent: an integer"),
        (
            {"max_open": 8, "max_open_per_agent": 9},
            "listen_streams.max_open_per_agent: an integer between 1 and max_open (8)",
        ),
        (
            {"max_open_per_agent": 1025},
            "listen_streams.max_open_per_agent: an integer between 1 and max_open (1024)",
        ),
    ],
)
def test_bad_bounds_are_refused_naming_the_key(streams: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(config(listen_streams=streams))
