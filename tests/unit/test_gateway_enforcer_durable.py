"""One answer per way an audit write fails, whichever enforcement path wrote
(``Enforcer._durable`` and ``Pending``, adapters/gateway/enforcer.py): a call's
decision or refusal, an MCP listing's ``mcp.list`` event (the MCP gateway's own
listing code, ``McpGateway.listing``), the gateways' deferred writes. With a real
spool on a real directory:

- filled to its bound (no shipper, so nothing leaves it), a listing is refused with
  the full spool's own 503, naming what is full and how to empty it (its hint), as a
  call is, not a listing-only message without the hint;
- a write the spool takes and then fails (its disk write raises: the one fault
  injected) is refused with the spool's own 503 whether the caller waited for it or
  deferred it;
- a sink failing with something that is not a 503 is the gateway's own 503, naming
  what it refused (a call, a listing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.unit.gateway_support import GATEWAY, METADATA, Parties

from agentiam.adapters.gateway.enforcer import Enforcer
from agentiam.adapters.gateway.mcp_proxy import McpGateway, _RequestState
from agentiam.adapters.gateway.mcp_visibility import Visibility
from agentiam.adapters.gateway.spool import AuditSpool, SpoolFull
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.errors import ServiceUnavailable

TRACE = TraceContext.new()
ALLOW = "permit (principal, action, resource);"
BOUND = 2_000  # the spool's max_bytes
FULL_HINT = "Restore the connection to the control plane, or raise max_bytes."


class ListingGateway:
    """The MCP gateway's own listing code (``McpGateway.listing`` and
    ``_filter_and_record``) with what it reads: no upstream server (an empty listing
    still has its ``mcp.list`` event), a real :class:`Visibility` and a real
    :class:`Enforcer`."""

    listing = McpGateway.listing
    _filter_and_record = McpGateway._filter_and_record

    def __init__(self, enforcer: Enforcer) -> None:
        self.upstreams: dict[str, Any] = {}
        self.enforcer = enforcer
        self.visibility = Visibility(enforcer.link.authorizer, location=GATEWAY)


@pytest.fixture
def parties() -> Parties:
    return Parties(ALLOW)


@pytest.fixture
def full(tmp_path: Path) -> Iterator[AuditSpool]:
    """A spool without a shipper, filled with small events until it refuses one: no
    event of an enforcement point fits in what is left."""
    spool = AuditSpool(tmp_path / "spool", None, max_bytes=BOUND)
    try:
        for n in range(BOUND):
            try:
                spool.append([{"event_id": f"fill{n}"}])
            except SpoolFull:
                break
        else:
            raise AssertionError("the spool never filled")
        yield spool
    finally:
        spool.close()


def _access(parties: Parties, enforcer: Enforcer) -> VerifiedAccess:
    return enforcer.authenticate(
        **parties.headers("POST", GATEWAY), method="POST", url=GATEWAY, trace=TRACE
    )


def _enforcer(parties: Parties, sink: Any) -> Enforcer:
    return Enforcer("test-gw", parties.link, sink, resource_metadata=METADATA)  # type: ignore[arg-type]


def _list(enforcer: Enforcer, access: VerifiedAccess) -> _RequestState:
    state = _RequestState(access, TRACE)
    anyio.run(ListingGateway(enforcer).listing, state, "tools/list")
    return state


def test_a_listing_the_full_spool_refuses_says_what_a_call_gets(
    parties: Parties, full: AuditSpool
) -> None:
    enforcer = _enforcer(parties, full)
    access = _access(parties, enforcer)
    pending = full.health().pending_bytes
    # what a call gets from this spool, deferred as the gateways record it
    with enforcer.deferred(), pytest.raises(SpoolFull) as call:
        enforcer.refuse(access, trace=TRACE, status=404, reason="no route", action="tools/call")
    with pytest.raises(SpoolFull) as listing:
        _list(enforcer, access)
    refused = listing.value
    assert refused.status == 503
    assert refused.code == "audit-spool-full"
    assert refused.detail == call.value.detail
    assert f"its limit is {BOUND};" in refused.detail
    assert refused.hint == call.value.hint == FULL_HINT  # how the operator empties it
    assert full.health().pending_bytes == pending  # the spool took nothing more


def test_a_listing_the_full_spool_refuses_is_answered_once_it_has_room(
    parties: Parties, tmp_path: Path
) -> None:
    """The refusal is the spool's state, not the listing's: with room, the same listing
    is recorded (its ``mcp.list`` event durable) and answered."""
    spool = AuditSpool(tmp_path / "spool", None, max_bytes=BOUND)
    try:
        enforcer = _enforcer(parties, spool)
        access = _access(parties, enforcer)
        before = spool.health().pending_events
        state = _list(enforcer, access)
        assert state.listing is None  # the endpoint, not listing(), keeps what it shows
        assert spool.health().pending_events == before + 1
    finally:
        spool.close()


def test_a_write_that_fails_after_the_spool_took_it_is_the_spools_503_either_way(
    parties: Parties, tmp_path: Path
) -> None:
    spool = AuditSpool(tmp_path / "spool", None)
    try:

        def broken(_lines: list[bytes]) -> None:
            raise OSError("disk gone")

        spool._writer._write_batch = broken  # type: ignore[attr-defined]  # the fault
        enforcer = _enforcer(parties, spool)
        access = _access(parties, enforcer)
        with pytest.raises(ServiceUnavailable) as waited:  # the guard's way: append
            enforcer.refuse(access, trace=TRACE, status=404, reason="no route")
        with enforcer.deferred() as pending:  # the gateways' way: deferred, then waited
            enforcer.refuse(access, trace=TRACE, status=404, reason="no route")
        with pytest.raises(ServiceUnavailable) as deferred:
            pending.wait()
        with pytest.raises(ServiceUnavailable) as awaited:
            anyio.run(pending.durable)
        for refused in (waited.value, deferred.value, awaited.value):
            assert (refused.detail, refused.hint) == (waited.value.detail, waited.value.hint)
        assert "audit trail cannot be written" in waited.value.detail
        assert "disk gone" not in waited.value.detail  # the cause stays in the log
    finally:
        spool.close()


@pytest.mark.parametrize(
    ("what", "write"),
    [
        ("call", lambda e, a: e.refuse(a, trace=TRACE, status=404, reason="no route")),
        ("listing", lambda e, a: _list(e, a)),
    ],
)
def test_a_sink_failing_otherwise_is_the_gateways_503_naming_what_it_refused(
    parties: Parties, what: str, write: Any
) -> None:
    enforcer = _enforcer(parties, parties.sink)
    access = _access(parties, enforcer)
    parties.sink.broken = True  # it raises OSError, not a 503 of its own
    with pytest.raises(ServiceUnavailable) as refused:
        write(enforcer, access)
    assert refused.value.detail == f"the gateway cannot record this {what} durably; it was refused"
    assert refused.value.hint == "Check the gateway's audit spool (disk space, permissions)."
    assert isinstance(refused.value.__cause__, OSError)
