"""One gateway process's parts, wired from its configuration: the control-plane link
(keys, revocations, policy bundle), the durable audit spool and its shipper to
``POST /v1/audit/ingest``, the credential broker and the :class:`Enforcer`.

Both gateways (``adapters/gateway/http_proxy.py``, ``adapters/gateway/mcp_proxy.py``)
start one :class:`GatewayRuntime` and ask its enforcer about every call. It also
serves what they have in common: the RFC 9728 protected-resource metadata, health
and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from agentiam.adapters.gateway.approvals import ApprovalClient
from agentiam.adapters.gateway.broker import CredentialBroker, SecretStore, load_secrets_key
from agentiam.adapters.gateway.config import GatewayConfig
from agentiam.adapters.gateway.enforcer import Enforcer
from agentiam.adapters.gateway.link import ControlPlaneLink
from agentiam.adapters.gateway.spool import AuditSpool, SpoolBatch
from agentiam.core.enforcement.ratelimit import RateLimiter

__all__ = ["GatewayRuntime"]

log = logging.getLogger("agentiam.gateway")


class _Shipper:
    """Sends spooled events to the control plane's ingest endpoint; anything but a
    2xx raises, so the spool keeps them and retries."""

    def __init__(self, url: str, admin_key: str, timeout: float) -> None:
        self._url = url.rstrip("/") + "/v1/audit/ingest"
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        )

    def __call__(self, events: list[dict[str, Any]]) -> None:
        body = events.json_body if isinstance(events, SpoolBatch) else None
        if body is not None:  # the spooled lines' own JSON: not encoded a second time
            response = self._http.post(
                self._url, content=body, headers={"Content-Type": "application/json"}
            )
        else:
            response = self._http.post(self._url, json={"events": events})
        if response.status_code // 100 != 2:
            raise RuntimeError(f"ingest answered {response.status_code}")

    def close(self) -> None:
        self._http.close()


@dataclass
class GatewayRuntime:
    config: GatewayConfig
    link: ControlPlaneLink
    spool: AuditSpool
    broker: CredentialBroker | None
    enforcer: Enforcer
    _shipper: _Shipper

    @classmethod
    def start(cls, config: GatewayConfig) -> GatewayRuntime:
        """Connect to the control plane (keys, revocations, first bundle: failing
        loudly if it cannot be reached at start), open the spool and the broker."""
        admin_key = config.control_plane.admin_key()
        # one limiter even with no configured limits: the bundle's throttles need it
        limiter = config.rate_limits if config.rate_limits is not None else RateLimiter()
        link = ControlPlaneLink(
            config.control_plane.url,
            config.public_url,
            admin_key=admin_key,
            outage_seconds=config.control_plane.outage_seconds,
            limiter=limiter,
        ).start()
        # a batch must not hold the shipper for long: the spool waits for it
        shipper = _Shipper(config.control_plane.url, admin_key, 30.0)
        spool = AuditSpool(
            config.spool_directory,
            shipper,
            max_bytes=config.spool_max_bytes,
            linger=0.2,  # a trickle of events ships in batches, not one request each
        )
        broker = None
        if config.secrets_store is not None:
            broker = CredentialBroker(SecretStore(config.secrets_store, load_secrets_key()))
        enforcer = Enforcer(
            config.name,
            link,
            spool,
            resource_metadata=config.resource_metadata_url,
            limiter=limiter,
            approvals=ApprovalClient(config.control_plane.url, admin_key),
        )
        return cls(config, link, spool, broker, enforcer, shipper)

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
        self._shipper.close()
        self.link.close()
