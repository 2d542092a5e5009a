"""One gateway process's parts, wired from its configuration: the control-plane link
(keys, revocations, policy bundle), the durable audit spool and its shipper to
``POST /v1/audit/ingest``, the credential broker and the :class:`Enforcer`.

Both gateways (``adapters/gateway/http_proxy.py``, ``adapters/gateway/mcp_proxy.py``)
start one :class:`GatewayRuntime` and ask its enforcer about every call. It also
serves what they have in common: the RFC 9728 protected-resource metadata, health
and metrics.

:func:`resend_rejected` and :func:`discard_rejected` are the operator's side of a
spool's ``rejected.jsonl`` (``agentiam gateway spool rejected``, and ``agentiam guard
spool rejected`` for an in-process guard's spool): with the gateway or guard stopped,
send its events again through the same shipper, or discard them with an audit record
of the discard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from agentiam.adapters.gateway.approvals import ApprovalClient
from agentiam.adapters.gateway.broker import (
    CredentialBroker,
    CredentialRef,
    SecretStore,
    load_secrets_key,
)
from agentiam.adapters.gateway.config import GatewayConfig
from agentiam.adapters.gateway.dpop_nonces import NonceHeader
from agentiam.adapters.gateway.enforcer import Enforcer, SharedLimits, SharedReplay
from agentiam.adapters.gateway.link import ControlPlaneLink
from agentiam.adapters.gateway.refusal_summaries import RefusalSummaries
from agentiam.adapters.gateway.spool import (
    AuditSpool,
    DiscardRecord,
    DiscardSummary,
    Refused,
    RejectedFile,
    ResendResult,
    SpoolBatch,
)
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, ResourceRef, TraceContext
from agentiam.core.enforcement.anonymous import AnonymousRefusals
from agentiam.core.enforcement.ratelimit import RateLimiter

__all__ = [
    "DISCARD_ACTION",
    "DISCARD_EVENT_TYPE",
    "GatewayRuntime",
    "discard_records",
    "discard_rejected",
    "operator_name",
    "resend_rejected",
]

log = logging.getLogger("agentiam.gateway")


class _Shipper:
    """Sends spooled events to the control plane's ingest endpoint; anything but a 2xx
    raises, so the spool keeps them and retries. ``timeout`` bounds each request: the
    spool waits for it. A gateway ships from its event loop (:meth:`run`, on
    :meth:`AuditSpool.ship_on_loop`); the in-process guard, which may have no loop, from
    the spool's shipper thread (calling the shipper itself)."""

    def __init__(self, url: str, admin_key: str, timeout: float) -> None:
        self._url = url.rstrip("/") + "/v1/audit/ingest"
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._http: httpx.Client | None = None

    @staticmethod
    def _body(events: list[dict[str, Any]]) -> dict[str, Any]:
        body = events.json_body if isinstance(events, SpoolBatch) else None
        if body is not None:  # the spooled lines' own JSON: not encoded a second time
            return {"content": body, "headers": {"Content-Type": "application/json"}}
        return {"json": {"events": events}}

    @staticmethod
    def _check(response: httpx.Response) -> None:
        """Return on a 2xx. A 400, 413 or 422 is about the events sent (a member over
        a limit, a batch too large): :class:`Refused`, naming the event when the
        problem's ``errors`` do (``loc`` ``["body", "events", "<i>", ...]``), so the
        spool sends the others without it. Except a ``time`` too far ahead: that is
        this host's clock, and time catches up, so it is retried like anything else.
        A 403 that names an event (this key is not bound to its source or agent) is
        refused that way too; one that names none (the key itself) is retried."""
        status = response.status_code
        if status // 100 == 2:
            return
        if status in (400, 403, 413, 422):
            index, member = _refused_member(response)
            if member != "time" and (status != 403 or index is not None):
                raise Refused(f"ingest answered {status} ({member or 'the batch'})", index)
        raise RuntimeError(f"ingest answered {status}")

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if self._http is None:
            self._http = httpx.Client(headers=self._headers, timeout=self._timeout)
        self._check(self._http.post(self._url, **self._body(events)))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    async def run(self, spool: AuditSpool) -> None:
        """Ship ``spool`` until cancelled, with one client on the running loop."""
        async with httpx.AsyncClient(headers=self._headers, timeout=self._timeout) as http:

            async def ship(events: list[dict[str, Any]]) -> None:
                self._check(await http.post(self._url, **self._body(events)))

            await spool.ship_on_loop(ship)


def _refused_member(response: httpx.Response) -> tuple[int | None, str | None]:
    """The event index and member an ingest refusal names (RFC 9457 problem with
    ``errors``), or None for what it does not name."""
    try:
        loc = response.json()["errors"][0]["loc"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None
    if not isinstance(loc, list) or loc[:2] != ["body", "events"] or len(loc) < 3:
        return None, None
    index = int(loc[2]) if isinstance(loc[2], str | int) and str(loc[2]).isdigit() else None
    member = ".".join(str(part) for part in loc[3:]) or None
    return index, member


def _shared(config: GatewayConfig) -> tuple[SharedReplay | None, SharedLimits | None]:
    """The replicas' DPoP replay cache and rate-limit buckets when ``replay_cache`` is
    configured (one Redis holds both), reached once now: a gateway that cannot
    reach it does not start (ValueError)."""
    if config.replay_cache is None:
        return None, None
    try:  # the redis package is an extra: agentiam[redis]
        from agentiam.adapters.gateway.shared_ratelimit import SharedRateLimits
        from agentiam.adapters.gateway.shared_redis import SharedRedis
        from agentiam.adapters.gateway.shared_replay import SharedReplayCache
    except ImportError:
        raise ValueError(
            "replay_cache: needs the redis package (pip install 'agentiam[redis]')"
        ) from None
    shared = SharedRedis(
        config.replay_cache.redis_url(),
        prefix=config.replay_cache.key_prefix,
        timeout=config.replay_cache.timeout_seconds,
    )
    shared.check()
    return SharedReplayCache(shared), SharedRateLimits(shared)


@dataclass
class GatewayRuntime:
    config: GatewayConfig
    link: ControlPlaneLink
    spool: AuditSpool
    broker: CredentialBroker | None
    enforcer: Enforcer
    _shipper: _Shipper
    _shipping: asyncio.Task[None] | None = None
    # the summaries of refusals naming nobody past the budget (None: no budget)
    summaries: RefusalSummaries | None = None
    # the DPoP-Nonce every answer of the protected endpoint carries (RFC 9449
    # section 9), when dpop.require_nonce is on; None: nonces are off
    nonce_header: NonceHeader | None = None

    @classmethod
    def start(
        cls,
        config: GatewayConfig,
        *,
        credentials: Iterable[tuple[str, CredentialRef, str]] = (),
    ) -> GatewayRuntime:
        """Read the DPoP nonce key (``dpop``: a missing or malformed one stops the
        start, ValueError naming the setting), open the broker and check that each of
        ``credentials`` (the configuration key, the credential, the URL of the
        upstream it is sent to) may go there (:meth:`CredentialBroker.
        check_destinations`: a secret whose ``allowed_upstreams`` refuse it stops the
        start), all before anything is reached; then connect to the control plane
        (keys, revocations, first bundle: failing loudly if it cannot be reached at
        start) and open the spool."""
        nonces = config.dpop.nonce_issuer()
        broker = None
        if config.secrets_store is not None:
            broker = CredentialBroker(SecretStore(config.secrets_store, load_secrets_key()))
            broker.check_destinations(credentials)
        admin_key = config.control_plane.admin_key()
        # one limiter even with no configured limits: the bundle's throttles need it
        limiter = config.rate_limits if config.rate_limits is not None else RateLimiter()
        link = ControlPlaneLink(
            config.control_plane.url,
            config.public_url,
            admin_key=admin_key,
            outage_seconds=config.control_plane.outage_seconds,
            limiter=limiter,
            keys_seconds=config.control_plane.jwks_refresh_seconds,
            nonces=nonces,
        ).start()
        # a batch must not hold the shipper for long: the spool waits for it
        shipper = _Shipper(config.control_plane.url, admin_key, 30.0)
        spool = AuditSpool(
            config.spool_directory,
            None,  # shipped from the gateway's event loop: start_shipping
            max_bytes=config.spool_max_bytes,
            rejected_max_bytes=config.spool_rejected_max_bytes,
            linger=0.2,  # a trickle of events ships in batches, not one request each
            body_only=True,  # _Shipper posts json_body: the lines are not decoded
        )
        shared_replay, shared_limits = _shared(config)
        limits = config.anonymous_refusals
        budget = AnonymousRefusals(limits) if limits is not None else None
        enforcer = Enforcer(
            config.name,
            link,
            spool,
            resource_metadata=config.resource_metadata_url,
            limiter=limiter,
            approvals=ApprovalClient(config.control_plane.url, admin_key),
            shared_replay=shared_replay,
            shared_limits=shared_limits,
            anonymous=budget,
        )
        summaries = RefusalSummaries(enforcer, budget) if budget is not None else None
        return cls(
            config,
            link,
            spool,
            broker,
            enforcer,
            shipper,
            summaries=summaries,
            nonce_header=None if nonces is None else NonceHeader(nonces),
        )

    def protected_resource_metadata(self) -> dict[str, Any]:
        """RFC 9728 section 2: what a client needs to get a token for this gateway."""
        return {
            "resource": self.config.public_url,
            "authorization_servers": [self.link.issuer],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
            "dpop_bound_access_tokens_required": True,
            "resource_name": f"AgentIAM gateway {self.config.name}",
        }

    def start_shipping(self) -> None:
        """Ship the spool to ``POST /v1/audit/ingest`` from a task on the running
        event loop, until :meth:`stop_shipping`. Each gateway ships while it serves: no
        shipper thread competes with its loop for the GIL (adapters/gateway/spool.py).
        The summaries of anonymous refusals start their timer too (until :meth:`stop`)."""
        if self.summaries is not None:
            self.summaries.start()
        if self._shipping is None:
            self._shipping = asyncio.create_task(self._ship(), name="audit-spool-shipper")

    async def _ship(self) -> None:
        try:
            await self._shipper.run(self.spool)
        except Exception:  # not expected: the spool keeps what it could not ship
            log.critical("audit shipping stopped; events stay in the spool", exc_info=True)

    async def stop_shipping(self) -> None:
        """Cancel the shipping task and wait for it. What it had not shipped stays in
        the spool, for the next start."""
        task, self._shipping = self._shipping, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """Stop what runs on the event loop: the summaries of anonymous refusals
        (what they counted is queued for the spool, which :meth:`close` writes), the
        shipping task (:meth:`stop_shipping`) and the connections to the replicas'
        shared Redis."""
        if self.summaries is not None:
            await self.summaries.stop()
        await self.stop_shipping()
        for shared in (self.enforcer.shared_replay, self.enforcer.shared_limits):
            if shared is not None:
                await shared.aclose()

    def health(self) -> dict[str, Any]:
        since = self.link.seconds_since_contact()
        spool = self.spool.health()
        return {
            "name": self.config.name,
            "kind": self.config.kind,
            "bundle": self.link.etag,
            "seconds_since_contact": None if since is None else round(since, 3),
            "outage_seconds": self.config.control_plane.outage_seconds,
            "deciding": since is not None and since <= self.config.control_plane.outage_seconds,
            "spool": dataclasses.asdict(spool),
        }

    def close(self) -> None:
        if self.enforcer.approvals is not None:
            self.enforcer.approvals.close()
        self.spool.close()
        self.link.close()


# -- the operator's side of the spool's rejected.jsonl -----------------------------------

DISCARD_EVENT_TYPE = "audit.discarded"
"""The type of a discard's audit record, one of the types ingest takes from an
enforcement point (``services/enforcement_sync.py``): made by an OS user (actor type
``cli``), naming no agent, so detection charges it to none; OCSF Entity Management:
Delete, the entity the enforcement point's spool."""

DISCARD_ACTION = "audit.rejected.discard"


def operator_name() -> str:
    """The OS user running this process, from its effective uid (not ``$USER``, which
    the caller sets), as ``<name>`` or ``uid:<n>`` when the uid has no name."""
    uid = os.geteuid()
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name[:64]
    except (ImportError, KeyError):
        return f"uid:{uid}"


def resend_rejected(
    directory: Path, *, url: str, admin_key: str, timeout: float = 30.0
) -> ResendResult:
    """Send the events of the ``rejected.jsonl`` of the spool in ``directory`` to
    ``url``'s ``POST /v1/audit/ingest`` again, with the enforcement point's own shipper
    and verifier key (``admin_key``: a gateway's ``control_plane.key_env``, a guard's
    ``admin_key_env``), and the spool's handling of refusals
    (:meth:`RejectedFile.resend`). Raises :class:`~agentiam.adapters.gateway.spool.
    SpoolBusy` while a gateway or guard runs on the directory."""
    shipper = _Shipper(url, admin_key, timeout)
    try:
        return RejectedFile(directory).resend(shipper)
    finally:
        shipper.close()


def discard_rejected(
    directory: Path,
    *,
    url: str,
    admin_key: str,
    source: str,
    by: str | None = None,
    timeout: float = 30.0,
) -> DiscardSummary | None:
    """Delete the ``rejected.jsonl`` of the spool in ``directory``, deliberately, once
    the control plane at ``url`` has stored the audit records of it
    (:func:`discard_records`: who, how many, every event id, as the enforcement point
    ``source``, ``gateway/<name>`` or ``guard/<name>``, with its key ``admin_key``); if
    it does not take them, nothing is deleted and the error is raised (:class:`Refused`
    or RuntimeError, as the shipper raises). ``by`` defaults to :func:`operator_name`.
    None when there was nothing to discard."""
    who = by or operator_name()
    shipper = _Shipper(url, admin_key, timeout)
    try:
        return RejectedFile(directory).discard(
            who, lambda records: shipper(discard_records(source, records))
        )
    finally:
        shipper.close()


def _discard_command(source: str) -> str:
    """The command that discards a spool's set-aside events for the enforcement point
    ``source``: ``agentiam gateway spool rejected discard`` for ``gateway/<name>``,
    ``agentiam guard spool rejected discard`` for ``guard/<name>``."""
    kind = "guard" if source.startswith("guard/") else "gateway"
    return f"agentiam {kind} spool rejected discard"


def discard_records(source: str, records: list[DiscardRecord]) -> list[dict[str, Any]]:
    """The audit events (``AuditEvent.to_dict``) recording a discard, one per part:
    the OS user as a ``cli`` actor, the enforcement point as the resource, and in
    ``details`` the counts, the reasons, the first and last refusal times, the host,
    and the ids of the events this part covers."""
    now = datetime.now(UTC)
    trace = TraceContext.new()  # the parts of one discard share a trace
    host = socket.gethostname()[:253]
    events = []
    for record in records:
        summary = record.summary
        events.append(
            AuditEvent.create(
                type=DISCARD_EVENT_TYPE,
                actor=Actor(ActorType.CLI, summary.by),
                action=DISCARD_ACTION,
                source=source,
                trace=trace,
                now=now,
                resource=ResourceRef("audit_spool", source),
                reason=(
                    f"an operator discarded {summary.events} events the control plane "
                    "had refused for good (rejected.jsonl)"
                ),
                details={
                    "command": _discard_command(source),
                    "discarded_events": summary.events,
                    "unreadable_lines": summary.unreadable,
                    "bytes": summary.bytes,
                    # a list, not a mapping: a reason is no member name the event
                    # guard could take for a secret's
                    "reasons": [{"reason": r, "events": n} for r, n in summary.reasons.items()],
                    "first_rejected_at": summary.first_rejected_at,
                    "last_rejected_at": summary.last_rejected_at,
                    "os_user": summary.by,
                    "host": host,
                    "part": record.part,
                    "parts": record.parts,
                    "event_ids": list(record.event_ids),
                },
            ).to_dict()
        )
    return events
