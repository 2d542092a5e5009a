"""Verify a trail: recompute every leaf from its event, the hash chain, and the Merkle
root at every signed tree head, and check each head's signature against trusted keys.

It works the same over the database (the service streams entries) and over an export
file (:func:`verify_export`), so an auditor needs only the export and the published
keys. Every problem is a :class:`Finding` naming its kind and position:

* ``edited-event``: an event no longer hashes to its leaf;
* ``deleted-event``: a logged event is gone;
* ``missing-entry``: log entries are missing (deleted);
* ``broken-chain``: the chain breaks (an entry removed, inserted or reordered);
* ``root-mismatch``: the entries do not hash to a signed head's root;
* ``bad-signature``: a tree head's signature does not verify;
* ``bad-checkpoint``: the checkpoint a pruned trail starts from is not signed, or its
  compact range does not hash to its root;
* ``pruned``: the tree head the caller holds is older than the checkpoint (check it
  against the archive);
* ``truncated``: a signed head (or the one the caller holds) covers more entries than
  the trail has;
* ``unlogged``: stored events were never integrated (inserted around the service).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentiam.core.audit.merkle import fold, leaf_hash, node_hash
from agentiam.core.audit.trail import (
    CHECKPOINT_PROFILE,
    GENESIS,
    TREE_HEAD_PROFILE,
    Checkpoint,
    LogEntry,
    TreeHead,
    canonical,
    chain_hash,
    event_leaf,
    verify_tree_head,
)
from agentiam.core.credentials.jose import (
    HeaderProfile,
    JoseRejected,
    VerificationKey,
    import_public_jwk,
    parse_compact,
)

__all__ = [
    "CompactRange",
    "Finding",
    "VerifyReport",
    "key_map",
    "read_checkpoint",
    "read_tree_head",
    "verify_entries",
    "verify_export",
]


class CompactRange:
    """The right edge of a Merkle tree being built leaf by leaf: the roots of its
    perfect subtrees, largest first. :meth:`root` is the RFC 9162 section 2.1.1 MTH
    of the leaves so far, in O(log n) memory, so a million-entry export verifies in
    constant space."""

    def __init__(self) -> None:
        self._edge: list[tuple[int, bytes]] = []  # (height, hash), heights decreasing

    @classmethod
    def resume(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """The right edge of a tree of ``size`` leaves from its compact range (one hash
        per set bit of ``size``, largest first), as a checkpoint carries it."""
        heights = [h for h in range(size.bit_length() - 1, -1, -1) if size >> h & 1]
        if len(heights) != len(hashes):
            raise ValueError(f"a tree of {size} leaves has {len(heights)} compact range hashes")
        edge = cls()
        edge._edge = list(zip(heights, hashes, strict=True))
        return edge

    def append(self, leaf: bytes) -> None:
        height, value = 0, leaf
        while self._edge and self._edge[-1][0] == height:
            _, left = self._edge.pop()
            value = node_hash(left, value)
            height += 1
        self._edge.append((height, value))

    def root(self) -> bytes:
        if not self._edge:
            raise ValueError("an empty tree has no root here")
        value = self._edge[-1][1]
        for _, left in reversed(self._edge[:-1]):
            value = node_hash(left, value)
        return value


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    index: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "detail": self.detail}


@dataclass(slots=True)
class VerifyReport:
    entries: int = 0
    tree_heads: int = 0
    heads_verified: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "tree_heads": self.tree_heads,
            "heads_verified": self.heads_verified,
            "findings": [f.to_dict() for f in self.findings],
        }


def read_tree_head(signature: str, profile: HeaderProfile = TREE_HEAD_PROFILE) -> TreeHead:
    """What a tree head (or checkpoint) states, before its signature is checked."""
    claims = parse_compact(signature, profile).claims
    try:
        return TreeHead(
            tree_size=int(claims["tree_size"]),
            root_hash=bytes.fromhex(str(claims["root_hash"])),
            chain_hash=bytes.fromhex(str(claims["chain_hash"])),
            signed_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
            signature=signature,
        )
    except (KeyError, TypeError, ValueError):
        raise JoseRejected("tree head claims are malformed") from None


def read_checkpoint(item: Mapping[str, Any]) -> Checkpoint:
    """A checkpoint as an export carries it, before its signature is checked."""
    try:
        hashes = tuple(bytes.fromhex(str(h)) for h in item["compact_range"])
        if any(len(h) != 32 for h in hashes):
            raise ValueError("a compact range hash is not 32 bytes")
        archive = item.get("archive")
        return Checkpoint(
            head=read_tree_head(str(item["tree_head"]), CHECKPOINT_PROFILE),
            compact_range=hashes,
            archive=None if archive is None else str(archive),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise JoseRejected(f"checkpoint is malformed: {exc}") from None


def _check_checkpoint(
    start: Checkpoint, keys: Mapping[str, VerificationKey], issuer: str
) -> str | None:
    """Why ``start`` cannot be trusted as the trail's beginning, or None."""
    try:
        stated = verify_tree_head(
            start.head.signature, keys, issuer=issuer, profile=CHECKPOINT_PROFILE
        )
        digest = parse_compact(start.head.signature, CHECKPOINT_PROFILE).claims.get(
            "archive_sha256"
        )
    except JoseRejected as exc:
        return f"checkpoint: {exc}"
    if start.archive is not None and not start.archive.endswith(f" sha256:{digest}"):
        return "the checkpoint's archive digest differs from the one it signed"
    if (stated.tree_size, stated.root_hash, stated.chain_hash) != (
        start.head.tree_size,
        start.head.root_hash,
        start.head.chain_hash,
    ):
        return "the stored checkpoint differs from its JWS"
    try:
        CompactRange.resume(stated.tree_size, start.compact_range)
    except ValueError as exc:
        return str(exc)
    if fold(start.compact_range) != stated.root_hash:
        return "the checkpoint's compact range does not hash to its signed root"
    return None


def key_map(jwks: Iterable[Mapping[str, Any]]) -> dict[str, VerificationKey]:
    """Published JWKs by kid, each pinned to its algorithm; unusable ones skipped."""
    keys: dict[str, VerificationKey] = {}
    for jwk in jwks:
        try:
            kid = str(jwk["kid"])
            public = {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")}
            keys[kid] = import_public_jwk(public, str(jwk.get("alg", "ES256")), kid=kid)
        except (KeyError, TypeError, JoseRejected):
            continue
    return keys


def _verified_heads(
    heads: Sequence[TreeHead],
    keys: Mapping[str, VerificationKey],
    issuer: str,
    report: VerifyReport,
) -> dict[int, TreeHead]:
    verified: dict[int, TreeHead] = {}
    for head in heads:
        try:
            stated = verify_tree_head(head.signature, keys, issuer=issuer)
        except JoseRejected as exc:
            report.findings.append(Finding("bad-signature", head.tree_size, str(exc)))
            continue
        if (stated.tree_size, stated.root_hash, stated.chain_hash) != (
            head.tree_size,
            head.root_hash,
            head.chain_hash,
        ):
            report.findings.append(
                Finding("bad-signature", head.tree_size, "the stored head differs from its JWS")
            )
            continue
        verified[stated.tree_size] = stated
    return verified


def verify_entries(
    entries: Iterable[tuple[LogEntry, str | Mapping[str, Any]]],
    heads: Sequence[TreeHead],
    keys: Mapping[str, VerificationKey],
    *,
    issuer: str,
    expected: TreeHead | None = None,
    start: Checkpoint | None = None,
) -> VerifyReport:
    """Recompute the trail from its entries (in index order, each with its event as
    JSON text or already decoded, "" when the event is gone) and check it against the
    signed ``heads``.
    ``expected`` is a head the caller kept from earlier (a witness's copy); ``start``
    the checkpoint a pruned trail begins at (its entries then start at its size)."""
    report = VerifyReport(tree_heads=len(heads))
    verified = _verified_heads(heads, keys, issuer, report)
    tree = CompactRange()
    chain = GENESIS
    size = 0
    if start is not None:
        problem = _check_checkpoint(start, keys, issuer)
        if problem is not None:
            report.findings.append(Finding("bad-checkpoint", start.tree_size, problem))
        size, chain = start.tree_size, start.head.chain_hash
        try:
            tree = CompactRange.resume(size, start.compact_range)
        except ValueError:
            tree = CompactRange()  # reported above; the roots will not match either
    for entry, body in entries:
        if entry.index != size:
            report.findings.append(
                Finding("missing-entry", size, f"log entries {size}..{entry.index - 1} are gone")
            )
        if not body:
            report.findings.append(Finding("deleted-event", entry.index, "the event is gone"))
            leaf = entry.leaf_hash
        else:
            try:
                leaf = event_leaf(body) if isinstance(body, str) else leaf_hash(canonical(body))
            except ValueError:
                leaf = b"unreadable"
            if leaf != entry.leaf_hash:
                report.findings.append(
                    Finding("edited-event", entry.index, "the event no longer matches its leaf")
                )
        chain = chain_hash(chain, leaf)
        if chain != entry.chain_hash:
            report.findings.append(
                Finding(
                    "broken-chain",
                    entry.index,
                    "the hash chain breaks here: an entry was removed, inserted or reordered",
                )
            )
            chain = entry.chain_hash  # report a break once, not at every later entry
        tree.append(leaf)
        size += 1
        head = verified.get(size)
        if head is not None:
            if tree.root() != head.root_hash or chain != head.chain_hash:
                report.findings.append(
                    Finding("root-mismatch", size, "the entries do not hash to the signed root")
                )
            else:
                report.heads_verified += 1
    report.entries = size - (start.tree_size if start is not None else 0)
    covered = max(verified, default=0)
    if expected is not None and start is not None and expected.tree_size < start.tree_size:
        report.findings.append(
            Finding(
                "pruned",
                expected.tree_size,
                f"the head you hold is older than the checkpoint at {start.tree_size}: "
                "verify it against the archive of the pruned entries",
            )
        )
        expected = None
    if expected is not None:
        covered = max(covered, expected.tree_size)
        held = verified.get(expected.tree_size)
        if expected.tree_size <= size and (held is None or held.root_hash != expected.root_hash):
            report.findings.append(
                Finding("root-mismatch", expected.tree_size, "the trail lacks the head you hold")
            )
    if covered > size:
        report.findings.append(
            Finding("truncated", size, f"{size} entries, but a signed head covers {covered}")
        )
    return report


def verify_export(
    lines: Iterable[str], *, issuer: str, jwks: Mapping[str, Any] | None = None
) -> VerifyReport:
    """Verify an export offline, in one pass and constant memory: a ``keys`` line, the
    ``checkpoint`` line of a pruned trail (or of an archive: the checkpoint it
    continues from), the ``tree_head`` lines, then one line per entry with its event (the order
    :meth:`AuditTrail.export` writes). ``jwks`` is the published key set to trust;
    without it, the keys the export carries are used."""
    carried: list[Mapping[str, Any]] = []
    heads: list[TreeHead] = []
    start: Checkpoint | None = None
    malformed: list[Finding] = []
    numbered = enumerate(lines, 1)
    first: tuple[int, Any] | None = None
    for number, line in numbered:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if "keys" in item:
                carried = list(item["keys"])
            elif "checkpoint" in item:
                start = read_checkpoint(item["checkpoint"])
            elif "tree_head" in item:
                heads.append(read_tree_head(str(item["tree_head"])))
            else:
                first = (number, item)
                break
        except (ValueError, KeyError, TypeError, JoseRejected) as exc:
            malformed.append(Finding("malformed", number, f"line {number}: {exc}"[:200]))

    def entries() -> Iterator[tuple[LogEntry, str | Mapping[str, Any]]]:
        pending = [first] if first is not None else []
        for number, item in itertools.chain(
            pending, ((n, line) for n, line in numbered if line.strip())
        ):
            try:
                if isinstance(item, str):
                    item = json.loads(item)
                if "index" not in item:
                    raise ValueError("a key or tree head line among the entries")
                event = item.get("event")
                yield (
                    LogEntry(
                        index=int(item["index"]),
                        event_seq=-1,
                        leaf_hash=bytes.fromhex(item["leaf_hash"]),
                        chain_hash=bytes.fromhex(item["chain_hash"]),
                    ),
                    event if isinstance(event, Mapping) else "",
                )
            except (ValueError, KeyError, TypeError) as exc:
                malformed.append(Finding("malformed", number, f"line {number}: {exc}"[:200]))

    trusted = list(jwks.get("keys", [])) if jwks is not None else carried
    report = verify_entries(entries(), heads, key_map(trusted), issuer=issuer, start=start)
    report.findings[:0] = malformed
    return report
