"""The ``notify`` response action's sender: a signed webhook per configured target
(docs/response.md#notify).

Each notification is one ``POST`` of a JSON body (the alert and the actions taken),
signed as the Standard Webhooks specification defines
(:mod:`agentiam.core.audit.webhook_signature`, which receivers can import to verify),
through :class:`~agentiam.adapters.outbound.PinnedClient`: the host is resolved and
every address vetted before each request (no loopback, private, link-local or other
non-public address unless the webhook sets ``allow_private_network``), TLS verified,
no redirects, no proxy from the environment, one deadline per request. The URL's form
and the secret are checked with the audit exporters' helpers
(:mod:`agentiam.adapters.exporters._config`): the secret comes from ``secret_env``
or an owner-only ``secret_file``, is read once at start and never logged.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from agentiam.adapters.exporters._config import http_url, secret_text
from agentiam.adapters.outbound import OutboundFailed, PinnedClient, Resolver
from agentiam.core.audit.webhook_signature import InvalidSecret, WebhookSecret, signature_headers
from agentiam.core.response.playbooks import Webhook
from agentiam.errors import InvalidInput

__all__ = ["WebhookNotifier", "check_webhook_urls"]

_EXAMPLE = "https://hooks.example.com/agentiam"
_USER_AGENT = "agentiam-response/1"


def _url(webhook: Webhook) -> str:
    try:
        return http_url(
            webhook.url,
            "url",
            allow_private_network=webhook.allow_private_network,
            example=_EXAMPLE,
        )
    except ValueError as exc:
        raise InvalidInput(
            f"webhooks.{webhook.name}.{exc}",
            hint="Use a public https URL, or set allow_private_network: true for an "
            "internal receiver.",
        ) from None


def check_webhook_urls(webhooks: Mapping[str, Webhook]) -> None:
    """Vet every webhook URL's form (no DNS, no secret read): for offline checks."""
    for webhook in webhooks.values():
        _url(webhook)


def _secrets(webhook: Webhook) -> list[WebhookSecret]:
    entry: dict[str, Any] = {}
    if webhook.secret_env is not None:
        entry["secret_env"] = webhook.secret_env
    if webhook.secret_file is not None:
        entry["secret_file"] = webhook.secret_file
    try:
        text, where = secret_text(entry, "secret_env", "secret_file")
        parts = text.split()
        if not parts or len(parts) > 4:
            raise ValueError(f"{where} must hold 1 to 4 secrets")
        return [WebhookSecret.parse(part) for part in parts]
    except (ValueError, InvalidSecret) as exc:
        raise InvalidInput(f"webhooks.{webhook.name}: {exc}") from None


class WebhookNotifier:
    """Sends notifications to the playbook file's webhooks (the service's
    :class:`~agentiam.services.response.Notifier`)."""

    def __init__(
        self, webhooks: Mapping[str, Webhook], *, resolver: Resolver = socket.getaddrinfo
    ) -> None:
        self._targets: dict[str, tuple[PinnedClient, list[WebhookSecret]]] = {}
        for name, webhook in webhooks.items():
            url = _url(webhook)
            secrets = _secrets(webhook)
            client = PinnedClient(
                url,
                allow_private_network=webhook.allow_private_network,
                timeout=webhook.timeout,
                resolver=resolver,
            )
            self._targets[name] = (client, secrets)

    def send(self, webhook: str, message_id: str, body: bytes) -> None:
        """POST ``body`` signed; raises OutboundError unless the receiver answers 2xx."""
        client, secrets = self._targets[webhook]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            **signature_headers(secrets, message_id, body),
        }
        with client.stream("POST", headers, body) as (response, _deadline):
            if not 200 <= response.status_code < 300:
                raise OutboundFailed(f"webhook {webhook} answered {response.status_code}")

    def close(self) -> None:
        for client, _ in self._targets.values():
            client.close()
