"""The tamper-evident trail: what is hashed, how entries chain, and the signed tree
head.

* **Leaf.** An event's leaf is the RFC 9162 section 2.1.1 leaf hash of its body in
  RFC 8785 canonical JSON, so any edit of any member changes it, while the storage's
  own JSON formatting does not matter.
* **Hash chain.** Entry ``i`` carries ``chain_i = SHA-256(chain_{i-1} || leaf_i)`` with
  ``chain_{-1}`` = 32 zero bytes: a reordering, deletion or insertion anywhere changes
  every later chain hash.
* **Merkle tree** (:mod:`agentiam.core.audit.merkle`): logarithmic inclusion proofs for
  any event and consistency proofs between any two tree heads.
* **Checkpoint** (retention): a JWS of its own type (``typ: audit-checkpoint+jwt``,
  so no ordinary tree head can pass for one) over the size below which entries were
  pruned, the root and chain hash there, and the SHA-256 of the archive holding the
  pruned segment; kept with the hashes of that tree's compact range (its perfect
  subtrees, one per set bit of the size). They fold to the root, so the log after the
  checkpoint still verifies, and proves, with the checkpoint as its start.
* **Signed tree head.** At intervals the log signs ``(tree_size, root_hash,
  chain_hash, signed_at)`` as a compact JWS (``typ: audit-sth+jwt``) with the
  authorization server's signing key, so anyone holding the published key (the JWKS)
  can check an export offline. Verifying a head pins the algorithm to the key, like
  every other JWS here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

from agentiam.core.audit.events import event_time_text
from agentiam.core.audit.merkle import leaf_hash
from agentiam.core.credentials.claims import numeric_date, string_claim
from agentiam.core.credentials.jose import (
    ALLOWED_ALGORITHMS,
    HeaderProfile,
    JoseRejected,
    VerificationKey,
    parse_compact,
    verify_signature,
)

__all__ = [
    "CHECKPOINT_PROFILE",
    "CHECKPOINT_TYP",
    "GENESIS",
    "TREE_HEAD_PROFILE",
    "TREE_HEAD_TYP",
    "Checkpoint",
    "LogEntry",
    "TreeHead",
    "canonical",
    "canonical_text",
    "chain_hash",
    "checkpoint_claims",
    "decoded_body",
    "event_leaf",
    "tree_head_claims",
    "verify_tree_head",
]

GENESIS = bytes(32)
TREE_HEAD_TYP = "audit-sth+jwt"
TREE_HEAD_PROFILE = HeaderProfile(
    name="audit tree head",
    typ=frozenset({TREE_HEAD_TYP}),
    algorithms=frozenset(ALLOWED_ALGORITHMS),
    kid_required=True,
    max_length=2048,
)
CHECKPOINT_TYP = "audit-checkpoint+jwt"
CHECKPOINT_PROFILE = HeaderProfile(
    name="audit checkpoint",
    typ=frozenset({CHECKPOINT_TYP}),
    algorithms=frozenset(ALLOWED_ALGORITHMS),
    kid_required=True,
    max_length=2048,
)
_HEX64 = frozenset("0123456789abcdef")


# The largest magnitude of an integer that RFC 8785 serialises (section 3.2.2.3: an
# IEEE 754 double holds every integer up to it exactly); ``rfc8785`` refuses beyond.
_INT_MAX = 2**53 - 1
# Within [1e-4, 1e16) the shortest round-trip digits of a non-integral double, as
# ``repr`` writes them, are also what ECMAScript's Number::toString writes (RFC 8785
# section 3.2.2.3): neither switches to exponent notation there.
_REPR_MIN, _REPR_MAX = 1e-4, 1e16
_BMP_END = "\U00010000"


class _Unsure(Exception):
    """The value holds something the fast path does not prove equal: use rfc8785."""


def _plain(value: Any) -> Any:
    """``value`` ready for ``json.dumps(sort_keys=True)`` to write exactly its RFC 8785
    form, or :class:`_Unsure`. Exact types only (decoded JSON: no subclasses); ints
    within +-(2**53 - 1); floats finite and either integral within that range (given
    back as ints, which RFC 8785 writes without a fraction) or non-integral within
    [1e-4, 1e16); object keys strings without characters beyond the Basic Multilingual
    Plane, so that code point order (Python's sort) is UTF-16 code unit order (section
    3.2.3). Lone surrogates pass here and fail the UTF-8 encoding after. Copies only
    the containers that change."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return _plain_int(value)
    if kind is float:
        return _plain_double(value)
    if kind is dict:
        out: dict[str, Any] | None = None
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) < _BMP_END):
                raise _Unsure
            new = _plain(item)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if kind is list or kind is tuple:
        copy: list[Any] | None = None if kind is list else list(value)
        for index, item in enumerate(value):
            new = _plain(item)
            if new is not item:
                if copy is None:
                    copy = list(value)
                copy[index] = new
        return value if copy is None else copy
    raise _Unsure


def _plain_double(value: float) -> float | int:
    """A float RFC 8785 writes as the C encoder would: integral within +-(2**53 - 1)
    (given back as an int), or non-integral within [1e-4, 1e16); else :class:`_Unsure`."""
    if value.is_integer():
        if -_INT_MAX <= value <= _INT_MAX:
            return int(value)
    elif _REPR_MIN <= abs(value) < _REPR_MAX:  # NaN and infinities fail here
        return value
    raise _Unsure


def _plain_int(value: int) -> int:
    if -_INT_MAX <= value <= _INT_MAX:
        return value
    raise _Unsure


def _no_constant(text: str) -> Any:
    raise _Unsure  # NaN, Infinity, -Infinity: rfc8785 refuses them


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# ``json.loads``'s number hooks for :func:`event_leaf`: :func:`_plain`'s rules as the
# decoder meets each number.
_PLAIN_DECODER = json.JSONDecoder(
    parse_float=lambda text: _plain_double(float(text)),
    parse_int=lambda text: _plain_int(int(text)),
    parse_constant=_no_constant,
)


def canonical(body: Any) -> bytes:
    """RFC 8785 canonical JSON of a decoded JSON value.

    When :func:`_plain` proves it equivalent, the C JSON encoder writes it: sorted
    keys (section 3.2.3), no whitespace (3.2.1), strings with only the escapes RFC
    8785 section 3.2.2.2 requires (``ensure_ascii=False`` escapes exactly ``"``, ``\\``
    and U+0000-U+001F, with the same short forms and lowercase hex), UTF-8 (3.2.4).
    Anything else (large numbers, exponent-range floats, keys beyond the BMP, other
    types, lone surrogates) goes to ``rfc8785``, which also raises what it raised
    before. A property test checks the two agree."""
    try:
        return _ENCODER.encode(_plain(body)).encode("utf-8")
    except (_Unsure, UnicodeEncodeError, RecursionError, ValueError, TypeError):
        return rfc8785.dumps(body)


class _WrittenTexts:
    """Texts this process wrote as canonical JSON (:func:`canonical_text`), each with
    the value it encodes, until detection reads it: a bounded memo of two facts about
    each text, that it is its own RFC 8785 form and what it decodes to. The oldest
    are forgotten first; a forgotten or unknown text is only slower to log and to
    read (:func:`event_leaf` proves it again, :func:`decoded_body` decodes it), never
    read differently. The store's writer, the trail's integrator and detection are
    different threads, hence the lock."""

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._texts: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, text: str, value: Any) -> None:
        with self._lock:
            self._texts[text] = value
            if len(self._texts) > self._bound:
                del self._texts[next(iter(self._texts))]

    def __contains__(self, text: str) -> bool:
        with self._lock:
            return text in self._texts

    def take(self, text: str) -> tuple[bool, Any]:
        """Whether :meth:`add` held ``text``, and its value (then forgotten)."""
        with self._lock:
            if text not in self._texts:
                return False, None
            return True, self._texts.pop(text)


# Detection reads the trail every 0.1 s by default (and logs pending events first),
# so this holds a second's worth at a few thousand events a second; at about 1.5 KB
# of text and 5 KB of decoded value each, some 27 MB at most.
_WRITTEN = _WrittenTexts(4096)


def canonical_text(body: Any) -> str | None:
    """``body``, a decoded JSON value, as its RFC 8785 canonical JSON text when
    :func:`_plain` proves the C encoder writes exactly that (else None: the caller
    stores its own encoding, which :func:`event_leaf` canonicalises when logging).
    The text is remembered with the value it encodes, so that :func:`event_leaf`
    hashes it as it stands and :func:`decoded_body` need not decode it. Valid JSON
    for any reader: it differs from ``json.dumps(sort_keys=True)`` only in writing
    integral floats as integers (RFC 8785 section 3.2.2.3), as a decoder of the text
    gives them back. The caller must not change ``body`` afterwards."""
    try:
        plain = _plain(body)
        text = _ENCODER.encode(plain)
    except (_Unsure, RecursionError, ValueError, TypeError):
        return None
    _WRITTEN.add(text, plain)
    return text


def decoded_body(body_json: str) -> Any:
    """``json.loads(body_json)``: the value :func:`canonical_text` encoded, when this
    process wrote the text and nothing read it this way yet (it is then forgotten;
    the value is shared, so it must not be changed), else the text decoded. Raises
    ValueError for a text that is not JSON."""
    found, value = _WRITTEN.take(body_json)
    return value if found else json.loads(body_json)


def event_leaf(body_json: str) -> bytes:
    """The leaf hash of a stored event body (its JSON text, in any formatting).

    A text this process wrote as canonical JSON (:func:`canonical_text`) is hashed as
    it stands. An ASCII text without ``\\u`` escapes can hold no key beyond the BMP
    and no lone surrogate, so :func:`_plain`'s checks reduce to its numbers, which the
    decoder's hooks make as it meets them; anything else takes :func:`canonical`'s
    path."""
    if body_json in _WRITTEN:
        try:
            return leaf_hash(body_json.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: canonical() raises as before
            pass
    if body_json.isascii() and "\\u" not in body_json:
        try:
            plain = _PLAIN_DECODER.decode(body_json)
        except _Unsure:
            pass
        else:
            return leaf_hash(_ENCODER.encode(plain).encode("utf-8"))
    return leaf_hash(canonical(json.loads(body_json)))


def chain_hash(previous: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(previous + leaf).digest()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One event's place in the trail."""

    index: int
    event_seq: int
    leaf_hash: bytes
    chain_hash: bytes


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed statement of the trail's state: its first ``tree_size`` entries have
    Merkle root ``root_hash`` and end with ``chain_hash``."""

    tree_size: int
    root_hash: bytes
    chain_hash: bytes
    signed_at: datetime
    signature: str  # the compact JWS over tree_head_claims

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "chain_hash": self.chain_hash.hex(),
            "signed_at": event_time_text(self.signed_at),
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The start of a pruned trail: entries before ``head.tree_size`` were archived
    and removed; ``compact_range`` are the hashes of the perfect subtrees of the first
    ``head.tree_size`` leaves, largest first (see ``merkle.compact_range_keys``).
    ``head.signature`` is the checkpoint JWS (:data:`CHECKPOINT_TYP`), whose
    ``archive_sha256`` claim pins the archive's digest."""

    head: TreeHead
    compact_range: tuple[bytes, ...]
    archive: str | None = None  # the archive file's name and SHA-256, when known

    @property
    def tree_size(self) -> int:
        return self.head.tree_size

    def describe(self) -> dict[str, Any]:
        """For people and the API: what the head states, with the range and archive."""
        return {
            **self.head.to_dict(),
            "compact_range": [h.hex() for h in self.compact_range],
            "archive": self.archive,
        }

    def to_dict(self) -> dict[str, Any]:
        """As an export or archive carries it (the JWS, not its decoded claims)."""
        return {
            "tree_head": self.head.signature,
            "compact_range": [h.hex() for h in self.compact_range],
            "archive": self.archive,
        }


def tree_head_claims(
    *, issuer: str, tree_size: int, root_hash: bytes, chain: bytes, signed_at: int
) -> dict[str, Any]:
    """The JWT claims a tree head's JWS carries."""
    return {
        "iss": issuer,
        "iat": signed_at,
        "tree_size": tree_size,
        "root_hash": root_hash.hex(),
        "chain_hash": chain.hex(),
    }


def checkpoint_claims(
    *, issuer: str, tree_size: int, root_hash: bytes, chain: bytes, signed_at: int, archive: bytes
) -> dict[str, Any]:
    """The JWT claims a checkpoint's JWS carries: a tree head's, and the archive's
    SHA-256 (``archive_sha256``)."""
    claims = tree_head_claims(
        issuer=issuer, tree_size=tree_size, root_hash=root_hash, chain=chain, signed_at=signed_at
    )
    claims["archive_sha256"] = archive.hex()
    return claims


def _hex32(claims: Mapping[str, Any], name: str) -> bytes:
    value = string_claim(claims, name, max_length=64)
    if len(value) != 64 or not set(value) <= _HEX64:
        raise JoseRejected(f"{name} is not a SHA-256 hex digest")
    return bytes.fromhex(value)


def verify_tree_head(
    signature: str,
    keys: Mapping[str, VerificationKey],
    *,
    issuer: str,
    profile: HeaderProfile = TREE_HEAD_PROFILE,
) -> TreeHead:
    """Check a tree head's JWS (or, with :data:`CHECKPOINT_PROFILE`, a checkpoint's)
    against the published keys (by ``kid``, algorithm pinned) and return what it
    states; raise :class:`JoseRejected` otherwise."""
    parsed = parse_compact(signature, profile)
    key = keys.get(parsed.kid or "")
    if key is None:
        raise JoseRejected("tree head signed by an unknown key")
    verify_signature(parsed, key)
    claims = parsed.claims
    if claims.get("iss") != issuer:
        raise JoseRejected("tree head from another issuer")
    size = claims.get("tree_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**62:
        raise JoseRejected("tree_size is not a count")
    return TreeHead(
        tree_size=size,
        root_hash=_hex32(claims, "root_hash"),
        chain_hash=_hex32(claims, "chain_hash"),
        signed_at=datetime.fromtimestamp(numeric_date(claims, "iat"), UTC),
        signature=signature,
    )
