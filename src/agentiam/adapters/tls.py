"""TLS client contexts for the server's outbound connections: the audit exporters'
receivers (docs/audit.md#exporters) and the gateways' upstreams (docs/gateway.md).

One rule set for all of them: the server's chain and name are always verified (to a
configured CA bundle, else the system's CAs), TLS 1.2 at least (RFC 9325 section
3.1.1), and a client certificate for peers that require one (mutual TLS)."""

from __future__ import annotations

import os
import ssl

__all__ = ["tls_context"]


def tls_context(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A TLS client context that verifies the server's chain (to ``ca_file``, else the
    system's CAs) and name, TLS 1.2 at least (RFC 9325 section 3.1.1), with the client
    certificate ``cert_file`` (its unencrypted key in ``key_file``, else in
    ``cert_file``) when given. Errors say which file failed, never what it holds."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if ca_file is None else os.fspath(ca_file)
        )
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"ca_file could not be read as PEM certificates ({_reason(exc)})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:

        def no_password() -> str:
            raise ValueError("the private key is encrypted")

        try:
            context.load_cert_chain(cert_file, key_file, no_password)
        except (OSError, ValueError) as exc:
            raise ValueError(
                "cert_file and key_file must hold a PEM certificate and its unencrypted "
                f"private key ({_reason(exc)})"
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    """A file error without its contents: the errno text or the library's reason."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "not PEM")
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)[:100]
