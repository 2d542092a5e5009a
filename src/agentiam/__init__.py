"""AgentIAM: identity and access management for autonomous AI agents.

The public Python API. Everything not listed in ``__all__`` is internal and may change.
"""

from __future__ import annotations

from agentiam.config import Limits, Settings
from agentiam.errors import (
    AgentIAMError,
    AuthenticationRequired,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AgentIAMError",
    "AuthenticationRequired",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "Limits",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Settings",
    "__version__",
]
