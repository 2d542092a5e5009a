"""What enforcement points (the HTTP and MCP gateways, the in-process guard) decide
locally, without I/O: rate limits today."""

from __future__ import annotations

from agentiam.core.enforcement.ratelimit import RateLimit, RateLimiter

__all__ = ["RateLimit", "RateLimiter"]
