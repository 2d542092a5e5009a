"""Merkle tree of the audit log, as RFC 9162 section 2.1 defines it.

RFC 9162 (Certificate Transparency version 2.0) supersedes RFC 6962; its section 2.1
defines the same tree, so the Certificate Transparency test vectors apply unchanged.

Hashing (section 2.1.1)::

    MTH({})   = SHA-256()                       -> EMPTY_ROOT
    MTH({d0}) = SHA-256(0x00 || d0)             -> leaf_hash(d0)
    MTH(D_n)  = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   -> node_hash(left, right)

where ``k`` is the largest power of two smaller than ``n``.

**Storage model.** A log with millions of leaves cannot recompute subtrees on demand,
so it stores the hash of every *perfect, aligned* subtree once it is complete: the node
at ``(level, index)`` is ``MTH(D[index * 2**level : (index + 1) * 2**level])``; level 0
holds the leaf hashes. Such a node never changes once written, whatever is appended
later. Every range that the RFC's recursion produces (for roots, inclusion paths and
consistency proofs) is a run of at most 64 such nodes, so roots and proofs cost
O(log n) lookups, batched into one :meth:`BatchNodeStore.get_many` call when the store
offers it.

Everything here is pure (stdlib only) and fails closed: bad sizes, indices or hashes
raise :class:`ValueError` in the proof builders and make the verifiers return False;
a node the store lacks raises :class:`KeyError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "BatchNodeStore",
    "MemoryNodeStore",
    "Node",
    "NodeStore",
    "TreeBuilder",
    "compact_range_keys",
    "consistency_proof",
    "fold",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "prunable_nodes",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""SHA-256 output length; every leaf, node and root hash is this long."""

MAX_TREE_SIZE = 2**64 - 1
"""Tree sizes and leaf indices are ``uint64`` on the wire (RFC 9162 section 4.1)."""

_MAX_LEVEL = 63  # the highest level a perfect subtree of a uint64-sized tree can have

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 section 2.1.1): the root of the empty tree."""

Node = tuple[int, int, bytes]
"""A stored perfect subtree: ``(level, index, hash)``."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0), the hash of one leaf (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), an interior node (RFC 9162 section 2.1.1).

    Both children must be 32-byte hashes; anything else raises :class:`ValueError`
    rather than hashing to a value no honest tree contains.
    """
    if not (_is_hash(left) and _is_hash(right)):
        raise ValueError("node_hash takes two 32-byte hashes")
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# -- storage ---------------------------------------------------------------------------


class NodeStore(Protocol):
    """Where the log keeps its perfect subtrees (see the module docstring)."""

    def get(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree ``(level, index)``; :class:`KeyError` if the
        store does not hold it."""
        ...


@runtime_checkable
class BatchNodeStore(NodeStore, Protocol):
    """A :class:`NodeStore` that can fetch several nodes in one round trip.

    ``get_many`` may leave out keys it does not hold; the caller treats a missing key
    as :class:`KeyError`.
    """

    def get_many(self, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]: ...


class MemoryNodeStore:
    """An in-memory :class:`BatchNodeStore`, for tests and for verifying an export.

    Each level is one contiguous byte array (32 bytes a node), so a tree of a million
    leaves takes about 64 MB. Levels only grow at their end, which is the order in which
    :meth:`TreeBuilder.append` emits nodes; a stored node is immutable, so writing a
    different hash over it raises :class:`ValueError`, as does leaving a gap.
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[bytearray] = []

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MemoryNodeStore:
        """A store holding every perfect subtree of a tree of these leaves."""
        store = cls()
        builder = TreeBuilder()
        for leaf in leaf_hashes:
            store.put_many(builder.append(leaf))
        return store

    @property
    def size(self) -> int:
        """The number of leaves stored."""
        return self.count(0)

    def count(self, level: int) -> int:
        """The number of nodes stored at ``level``."""
        if 0 <= level < len(self._levels):
            return len(self._levels[level]) // HASH_SIZE
        return 0

    def get(self, level: int, index: int) -> bytes:
        if not (_is_int(level) and _is_int(index)) or index < 0:
            raise KeyError((level, index))
        if not 0 <= level < len(self._levels):
            raise KeyError((level, index))
        row = self._levels[level]
        offset = index * HASH_SIZE
        if offset + HASH_SIZE > len(row):
            raise KeyError((level, index))
        return bytes(row[offset : offset + HASH_SIZE])

    def get_many(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return {(level, index): self.get(level, index) for level, index in keys}

    def put(self, level: int, index: int, value: bytes) -> None:
        if not (_is_int(level) and 0 <= level <= _MAX_LEVEL):
            raise ValueError(f"level must be an int in [0, {_MAX_LEVEL}]")
        if not (_is_int(index) and 0 <= index <= MAX_TREE_SIZE >> level):
            raise ValueError("index out of range for its level")
        if not _is_hash(value):
            raise ValueError("a node is a 32-byte hash")
        while len(self._levels) <= level:
            self._levels.append(bytearray())
        row = self._levels[level]
        count = len(row) // HASH_SIZE
        if index == count:
            row += value
        elif index < count:
            offset = index * HASH_SIZE
            if row[offset : offset + HASH_SIZE] != value:
                raise ValueError(f"node ({level}, {index}) is already stored with another hash")
        else:
            raise ValueError(f"node ({level}, {index}) would leave a gap after {count} nodes")

    def put_many(self, nodes: Iterable[Node]) -> None:
        for level, index, value in nodes:
            self.put(level, index, value)


# -- building --------------------------------------------------------------------------


class TreeBuilder:
    """Appends leaves one at a time, holding only the tree's right edge.

    The right edge is the list of perfect subtrees a tree of ``size`` leaves splits
    into, one per set bit of ``size``, largest first: O(log n) hashes. :meth:`append`
    returns the nodes each leaf completes, for the caller to persist; :meth:`resume`
    rebuilds the edge from a :class:`NodeStore` with O(log n) lookups.
    """

    __slots__ = ("_edge", "_size", "_store")

    def __init__(self, store: NodeStore | None = None) -> None:
        """An empty tree. ``store`` (optional) serves :meth:`root` for earlier sizes."""
        self._store = store
        self._size = 0
        self._edge: list[tuple[int, bytes]] = []  # (level, hash), levels decreasing

    @classmethod
    def resume(cls, store: NodeStore, size: int) -> TreeBuilder:
        """The builder of a tree of ``size`` leaves whose nodes ``store`` holds."""
        _check_size(size, "size")
        keys = _range_keys(0, size)
        values = _fetch(store, keys)
        builder = cls(store)
        builder._size = size
        builder._edge = [(level, values[(level, index)]) for level, index in keys]
        return builder

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> list[Node]:
        """Add one leaf hash (see :func:`leaf_hash`); return the perfect subtrees it
        completes as ``(level, index, hash)``, the leaf itself first, levels rising."""
        if not _is_hash(leaf):
            raise ValueError("append takes a 32-byte leaf hash (see leaf_hash)")
        if self._size >= MAX_TREE_SIZE:
            raise ValueError("the tree is full")
        position = self._size
        level, value = 0, bytes(leaf)
        nodes: list[Node] = [(0, position, value)]
        edge = self._edge
        while edge and edge[-1][0] == level:
            _, left = edge.pop()
            value = node_hash(left, value)
            level += 1
            nodes.append((level, position >> level, value))
        edge.append((level, value))
        self._size = position + 1
        return nodes

    def extend(self, leaves: Iterable[bytes]) -> list[Node]:
        """:meth:`append` each leaf hash; return all the nodes they complete, in order."""
        nodes: list[Node] = []
        for leaf in leaves:
            nodes.extend(self.append(leaf))
        return nodes

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all), RFC 9162 section 2.1.1.

        The current size is answered from the right edge with no lookups; an earlier
        size reads O(log n) nodes from the store given to the constructor or to
        :meth:`resume` (so those nodes must have been persisted).
        """
        if size is None or (_is_int(size) and size == self._size):
            return _fold([value for _, value in self._edge])
        _check_size(size, "size")
        if size > self._size:
            raise ValueError(f"the tree has only {self._size} leaves, not {size}")
        if self._store is None:
            raise ValueError("the root of an earlier size needs a NodeStore")
        return subtree_root(self._store, 0, size)


# -- pruning (retention) ---------------------------------------------------------------


def compact_range_keys(size: int) -> list[tuple[int, int]]:
    """The aligned perfect subtrees the first ``size`` leaves split into, largest first
    (one per set bit of ``size``). Their hashes, folded with :func:`fold`, give the
    root of the tree of ``size`` leaves; they are all a log pruned below ``size`` must
    keep of its first ``size`` leaves."""
    _check_size(size, "size")
    return _range_keys(0, size)


def fold(values: Sequence[bytes]) -> bytes:
    """The MTH of consecutive perfect subtrees given largest first (for example the
    hashes of :func:`compact_range_keys`), RFC 9162 section 2.1.1."""
    if not all(_is_hash(v) for v in values):
        raise ValueError("fold takes 32-byte hashes")
    return _fold(values)


def prunable_nodes(size: int) -> list[tuple[int, int]]:
    """What a log may delete once it keeps no leaf below ``size``: a list of
    ``(level, bound)``, meaning the nodes ``(level, index)`` with ``index < bound``.

    Those are the perfect subtrees lying wholly within the first ``size`` leaves,
    except the ones of :func:`compact_range_keys`. No root of a tree of ``size`` or
    more leaves, no inclusion proof of a leaf at or after ``size`` and no consistency
    proof between two such trees needs them: each sibling or subtree those use that
    lies wholly before ``size`` is a *maximal* aligned subtree there (its parent
    reaches past ``size``), and the maximal ones are exactly the compact range.
    """
    _check_size(size, "size")
    bounds: list[tuple[int, int]] = []
    for level in range(size.bit_length()):
        bound = size >> level
        if bound & 1:
            bound -= 1  # keep this level's node of the compact range
        if bound:
            bounds.append((level, bound))
    return bounds


# -- proofs ----------------------------------------------------------------------------


def subtree_root(store: NodeStore, start: int, end: int) -> bytes:
    """MTH(D[start:end]) (RFC 9162 section 2.1.1) from stored perfect subtrees.

    Defined for the ranges the RFC's recursion produces: ``start`` must be a multiple
    of the largest power of two not above ``end - start``, so the range splits into
    at most 64 aligned perfect subtrees (the binary digits of its length); otherwise
    :class:`ValueError`. The empty range is allowed only at 0 (the empty tree).
    """
    _check_range(start, end)
    keys = _range_keys(start, end)
    values = _fetch(store, keys)
    return _fold([values[key] for key in keys])


def inclusion_proof(store: NodeStore, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]), the inclusion proof of RFC 9162 section 2.1.3.1::

        PATH(0, {d0}) = {}
        PATH(m, D_n)  = PATH(m, D[0:k]) : MTH(D[k:n])     for m < k
        PATH(m, D_n)  = PATH(m - k, D[k:n]) : MTH(D[0:k])  for m >= k

    Requires ``0 <= index < size``. O(log n) nodes, fetched in one batch.
    """
    _check_size(index, "index")
    _check_size(size, "size")
    if index >= size:
        raise ValueError(f"index {index} is not below the tree size {size}")
    ranges: list[tuple[int, int]] = []  # outermost first
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()  # PATH lists the innermost sibling first
    return _range_roots(store, ranges)


def consistency_proof(store: NodeStore, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[0:second]), the consistency proof of RFC 9162 section 2.1.4.1::

        PROOF(m, D_n)            = SUBPROOF(m, D_n, true)
        SUBPROOF(m, D_m, true)   = {}
        SUBPROOF(m, D_m, false)  = {MTH(D_m)}
        SUBPROOF(m, D_n, b)      = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          m <= k
        SUBPROOF(m, D_n, b)      = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  m > k

    The RFC defines it for ``0 < first < second``. ``first == second`` gives ``[]``,
    the base case SUBPROOF(m, D_m, true); ``first == 0`` also gives ``[]``: the empty
    tree is a prefix of every tree and there is nothing to prove (see
    :func:`verify_consistency`). ``first > second`` raises :class:`ValueError`.
    """
    _check_size(first, "first")
    _check_size(second, "second")
    if first > second:
        raise ValueError(f"first ({first}) is larger than second ({second})")
    if first == 0 or first == second:
        return []
    ranges: list[tuple[int, int]] = []  # outermost first
    start, end, m, whole = 0, second, first, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                ranges.append((start, end))
            break
        k = _split(n)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            whole = False
    ranges.reverse()  # SUBPROOF lists the innermost node first
    return _range_roots(store, ranges)


# -- verification ----------------------------------------------------------------------


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of ``size``
    leaves whose root is ``root``: RFC 9162 section 2.1.3.2, step by step.

    Fails closed: False for ``index >= size``, sizes outside ``uint64``, hashes that
    are not 32 bytes, or a proof of the wrong length (which the RFC's steps 4a and 5
    reject too; checking the length first only bounds the work).

    The root binds the tree size only through a signed tree head, which must carry
    both: the proof of leaf 2 in a 3-leaf tree also passes as leaf 1 of a 2-leaf tree
    with the same root, a pair no honest 2-leaf tree has.
    """
    if not (_is_size(index) and _is_size(size)):
        return False
    if not (_is_hash(leaf) and _is_hash(root) and _is_proof(proof)):
        return False
    # 1. If leaf_index is greater than or equal to tree_size, fail.
    if index >= size:
        return False
    if len(proof) != _inclusion_length(index, size):
        return False
    # 2. Set fn to leaf_index and sn to tree_size - 1.  3. Set r to hash.
    fn, sn, r = index, size - 1, bytes(leaf)
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        # a. If sn is 0, stop the iteration and fail.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, right-shift fn and sn equally until either
            #     LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: i. Set r to HASH(0x01 || r || p).
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r must equal root_hash.
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree of ``first`` leaves with root ``first_root`` is
    a prefix of the tree of ``second`` leaves with root ``second_root``: RFC 9162
    section 2.1.4.2, step by step, for ``0 < first < second``.

    The two cases the RFC leaves to the caller, decided here fail-closed:

    * ``first == second``: only an empty proof (SUBPROOF(m, D_m, true) = {}) and
      ``first_root == second_root`` pass.
    * ``first == 0`` (and ``second > 0``): only an empty proof and
      ``first_root == EMPTY_ROOT`` (MTH({}), section 2.1.1) pass; the empty tree is a
      prefix of every tree, so ``second_root`` is not constrained.

    False for ``first > second``, sizes outside ``uint64``, hashes that are not 32
    bytes, or a proof of the wrong length.
    """
    if not (_is_size(first) and _is_size(second)):
        return False
    if not (_is_hash(first_root) and _is_hash(second_root) and _is_proof(proof)):
        return False
    if first > second:
        return False
    if first == second:
        return len(proof) == 0 and hmac.compare_digest(first_root, second_root)
    if first == 0:
        return len(proof) == 0 and hmac.compare_digest(first_root, EMPTY_ROOT)
    # 1. If consistency_path is an empty array, stop and fail.
    if len(proof) == 0:
        return False
    if len(proof) != _consistency_length(first, second):
        return False
    path = [bytes(c) for c in proof]
    # 2. If first is an exact power of 2, prepend first_hash to consistency_path.
    if first & (first - 1) == 0:
        path.insert(0, bytes(first_root))
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, right-shift fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, stop the iteration and fail.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr); set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # ii. If LSB(fn) is not set, right-shift fn and sn equally until either
            #     LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: i. Set sr to HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. fr must equal first_hash, sr must equal second_hash, and sn must be 0.
    first_ok = hmac.compare_digest(fr, first_root)
    second_ok = hmac.compare_digest(sr, second_root)
    return first_ok and second_ok and sn == 0


# -- internals -------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_proof(proof: object) -> bool:
    if not isinstance(proof, (list, tuple)) or len(proof) > 2 * (_MAX_LEVEL + 1):
        return False
    return all(_is_hash(p) for p in proof)


def _check_size(value: object, name: str) -> None:
    if not _is_size(value):
        raise ValueError(f"{name} must be an int in [0, 2**64 - 1]")


def _check_range(start: int, end: int) -> None:
    _check_size(start, "start")
    _check_size(end, "end")
    if start > end:
        raise ValueError(f"start ({start}) is past end ({end})")
    n = end - start
    if n == 0:
        if start != 0:
            raise ValueError("only the whole empty tree has a root")
        return
    if start % (1 << (n.bit_length() - 1)):
        raise ValueError(f"[{start}, {end}) is not a subtree the RFC 9162 recursion produces")


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_keys(start: int, end: int) -> list[tuple[int, int]]:
    """The aligned perfect subtrees [start, end) splits into, largest first."""
    keys: list[tuple[int, int]] = []
    position, n = start, end - start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            keys.append((level, position >> level))
            position += 1 << level
    return keys


def _fold(values: Sequence[bytes]) -> bytes:
    """The MTH of consecutive perfect subtrees, largest first (right to left)."""
    if not values:
        return EMPTY_ROOT
    value = values[-1]
    for left in reversed(values[:-1]):
        value = node_hash(left, value)
    return value


def _fetch(store: NodeStore, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Read ``keys`` (one batch when the store can); KeyError for a missing node and
    ValueError for a stored value that is not a 32-byte hash."""
    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}
    if isinstance(store, BatchNodeStore):
        got = store.get_many(unique)
        values: dict[tuple[int, int], bytes] = {}
        for key in unique:
            if key not in got:
                raise KeyError(key)
            values[key] = got[key]
    else:
        values = {key: store.get(*key) for key in unique}
    for key, value in values.items():
        if not _is_hash(value):
            raise ValueError(f"the store holds a malformed hash at {key}")
    return values


def _range_roots(store: NodeStore, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH of each range, with every node fetched in one batch."""
    plans = [_range_keys(start, end) for start, end in ranges]
    values = _fetch(store, [key for plan in plans for key in plan])
    return [_fold([values[key] for key in plan]) for plan in plans]


def _inclusion_length(index: int, size: int) -> int:
    """len(PATH(index, D[0:size])), by the recursion of RFC 9162 section 2.1.3.1."""
    length, start, end = 0, 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            end = start + k
        else:
            start += k
        length += 1
    return length


def _consistency_length(first: int, second: int) -> int:
    """len(PROOF(first, D[0:second])) for 0 < first < second (section 2.1.4.1)."""
    length, n, m, whole = 0, second, first, True
    while m != n:
        k = _split(n)
        if m <= k:
            n = k
        else:
            n -= k
            m -= k
            whole = False
        length += 1
    return length + (0 if whole else 1)
