"""Checks shared by the exporters' settings (one entry of the exporters file, see
docs/audit.md#exporters). Each takes the entry (or a value) and the key, returns the
value in the type the exporter uses, and raises ``ValueError`` whose message names the
key and what it takes; :func:`agentiam.adapters.exporters.load_exporters` prefixes it
with the exporter's name. None of them ever puts a secret in a message."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from agentiam.adapters.outbound import OutboundError, vet_url_form
from agentiam.core.audit.formats import FORMATS, Formatter, formatter

__all__ = [
    "absolute_path",
    "boolean",
    "check_keys",
    "env_value",
    "http_headers",
    "http_url",
    "integer",
    "optional_path",
    "seconds",
    "secret_text",
    "wire_format",
]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}$")  # RFC 9110 section 5.6.2
_MAX_HEADERS = 20
_MAX_HEADER_VALUE = 1024
_SECRET_FILE_MAX = 4096
# Set by the exporters, or framing and authentication of a request: never configured.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "cookie",
    }
)


def check_keys(entry: Mapping[str, Any], allowed: frozenset[str], kind: str) -> None:
    """Refuse any key but ``name``, ``type`` and ``allowed``."""
    unknown = sorted(set(entry) - allowed - {"name", "type"}, key=str)
    if unknown:
        listed = ", ".join(map(str, unknown))
        raise ValueError(f"unknown keys {listed}; {kind} takes {', '.join(sorted(allowed))}")


def integer(
    entry: Mapping[str, Any], key: str, default: int, low: int, high: int, *, note: str = ""
) -> int:
    """An integer from ``low`` to ``high`` (``note`` ends the message)."""
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer between {low} and {high}{note}")
    return value


def seconds(entry: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A number of seconds from ``low`` to ``high``."""
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{key} must be a number of seconds between {low:g} and {high:g}")
    return float(value)


def boolean(entry: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def absolute_path(value: Any, key: str) -> str:
    """``value``, an absolute file path."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ValueError(f"{key} must be an absolute file path")
    return value


def optional_path(entry: Mapping[str, Any], key: str) -> str | None:
    """An absolute file path, or ``None`` when the key is absent."""
    value = entry.get(key)
    return None if value is None else absolute_path(value, key)


def wire_format(entry: Mapping[str, Any]) -> tuple[str, Formatter]:
    """The ``format`` (default ``native``, see :mod:`agentiam.core.audit.formats`): its
    name and its formatter."""
    name = entry.get("format", "native")
    if not isinstance(name, str):
        raise ValueError(f"format must be one of {', '.join(sorted(FORMATS))}")
    try:
        return name, formatter(name)
    except ValueError as exc:
        raise ValueError(f"format: {exc}") from None


def http_url(value: Any, key: str, *, allow_private_network: bool, example: str) -> str:
    """An ``https`` URL (or ``http`` with ``allow_private_network``) as
    :func:`~agentiam.adapters.outbound.vet_url_form` checks it, without DNS: a host
    name is resolved and vetted before every request."""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string holding a URL, such as {example}")
    try:
        vet_url_form(value, allow_private_network=allow_private_network)
    except OutboundError as exc:
        raise ValueError(f"{key} refused: {exc}") from None
    return value


def http_headers(
    value: Any, *, hint: str, reserved_prefixes: tuple[str, ...] = ("proxy-",)
) -> dict[str, str]:
    """``headers``: a mapping of at most 20 HTTP field names to printable ASCII values,
    none that the exporter sets or that frames or authenticates the request (``hint``
    says what to use instead), none given twice."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > _MAX_HEADERS:
        raise ValueError(f"headers must be a mapping of at most {_MAX_HEADERS} names to values")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"header name {str(name)[:64]!r} is not a valid HTTP field name")
        lower = name.lower()
        if lower in _RESERVED_HEADERS or lower.startswith(reserved_prefixes):
            raise ValueError(f"header {name!r} is set by the exporter or not allowed ({hint})")
        if lower in {h.lower() for h in headers}:
            raise ValueError(f"header {name!r} is given twice")
        if (
            not isinstance(text, str)
            or len(text) > _MAX_HEADER_VALUE
            or not text.isascii()
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)
        ):
            raise ValueError(
                f"header {name!r} needs a value of at most {_MAX_HEADER_VALUE} printable ASCII"
            )
        headers[name] = text
    return headers


def env_value(entry: Mapping[str, Any], key: str) -> str | None:
    """The value of the environment variable that ``key`` names (a secret is configured
    by its variable's name, never by value); ``None`` when the key is absent."""
    name = entry.get(key)
    if name is None:
        return None
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise ValueError(f"{key} must be an environment variable name")
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"{key}: the environment variable {name} is not set")
    return value


def _read_secret_file(path: str, key: str) -> str:
    try:
        info = os.stat(path)  # follows links (Kubernetes mounts secrets through them)
    except OSError as exc:
        raise ValueError(f"{key} {path!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{key} {path!r} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ValueError(
            f"{key} {path!r} has mode {mode:04o}: group and others must have no "
            "access (chmod 600, or defaultMode 0400 for a Kubernetes secret)"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(_SECRET_FILE_MAX + 1)
    except OSError as exc:
        raise ValueError(f"{key} {path!r} cannot be read: {exc.strerror}") from None
    if len(data) > _SECRET_FILE_MAX:
        raise ValueError(f"{key} {path!r} is larger than {_SECRET_FILE_MAX} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{key} {path!r} must hold ASCII text") from None


def secret_text(entry: Mapping[str, Any], env_key: str, file_key: str) -> tuple[str, str]:
    """A secret from exactly one of ``env_key`` (an environment variable's name) or
    ``file_key`` (a file only its owner may access): the text, and where it came from
    for messages (``secret_env NAME``, ``secret_file '/path'``)."""
    env, path = entry.get(env_key), entry.get(file_key)
    if (env is None) == (path is None):
        raise ValueError(
            f"give exactly one of {env_key} (an environment variable's name) or "
            f"{file_key} (a path); the secret itself never goes in this file"
        )
    value = env_value(entry, env_key)
    if value is not None:
        return value, f"{env_key} {env}"
    file = absolute_path(path, file_key)
    return _read_secret_file(file, file_key), f"{file_key} {file!r}"
