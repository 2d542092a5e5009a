"""An agent's key pair: generated locally, private half never leaves the agent."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
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
        """Write the private JWK to ``path``, readable by the owner only (mode 0600).

        The key goes to a new temporary file (mode 0600) in the same directory, is
        flushed to disk, then renamed over ``path``: whatever was there before (a file
        of another mode, a symlink, which is replaced rather than followed) never holds
        the key, and a crash leaves either the old file or the new one whole."""
        target = Path(path)
        data = json.dumps({"alg": self.alg, "jwk": self.key.as_dict(private=True)})
        directory = target.parent
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fd = -1  # closed by the file object from now on
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, target)
        except BaseException:
            if fd != -1:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        with contextlib.suppress(OSError):  # the rename is durable too (not on Windows)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @classmethod
    def load(cls, path: str | Path) -> AgentKey:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        alg = data["alg"]
        kty = ALLOWED_ALGORITHMS[alg][0]
        key = ECKey.import_key(data["jwk"]) if kty == "EC" else OKPKey.import_key(data["jwk"])
        return cls(key, alg)
