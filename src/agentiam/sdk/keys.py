"""An agent's key pair: generated locally, private half never leaves the agent."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, OKPKey

from agentiam.core.credentials.jose import ALLOWED_ALGORITHMS, PUBLIC_MEMBERS

__all__ = ["AgentKey"]


class AgentKey:
    """A private signing key with its pinned algorithm (ES256 or Ed25519)."""

    def __init__(self, key: ECKey | OKPKey, alg: str) -> None:
        if alg not in ALLOWED_ALGORITHMS:
            raise ValueError(f"alg must be one of {', '.join(ALLOWED_ALGORITHMS)}")
        if not key.is_private:
            raise ValueError("AgentKey needs a private key")
        self.key = key
        self.alg = alg
        self.kid = key.thumbprint()

    def __repr__(self) -> str:
        return f"AgentKey(alg={self.alg}, kid={self.kid})"

    @classmethod
    def generate(cls, alg: str = "ES256") -> AgentKey:
        if alg == "ES256":
            return cls(ECKey.generate_key("P-256", private=True), alg)
        if alg == "Ed25519":
            return cls(OKPKey.generate_key("Ed25519", private=True), alg)
        raise ValueError(f"alg must be one of {', '.join(ALLOWED_ALGORITHMS)}")

    def public_jwk(self) -> dict[str, str]:
        """The public JWK to register with the agent (``kid`` = RFC 7638 thumbprint)."""
        kty = ALLOWED_ALGORITHMS[self.alg][0]
        full: dict[str, Any] = self.key.as_dict(private=False)
        public = {m: str(full[m]) for m in PUBLIC_MEMBERS[kty]}
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def save(self, path: str | Path) -> None:
        """Write the private JWK to ``path``, readable by the owner only."""
        data = json.dumps({"alg": self.alg, "jwk": self.key.as_dict(private=True)})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)

    @classmethod
    def load(cls, path: str | Path) -> AgentKey:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        alg = data["alg"]
        kty = ALLOWED_ALGORITHMS[alg][0]
        key = ECKey.import_key(data["jwk"]) if kty == "EC" else OKPKey.import_key(data["jwk"])
        return cls(key, alg)
