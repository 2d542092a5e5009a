"""The audit log's Merkle tree against RFC 9162 section 2.1.

A naive reference, written straight from the RFC's recursive definitions over lists of
inputs (MTH, PATH, PROOF/SUBPROOF) with its own hashing, is the oracle: the stored-node
implementation must give the same roots and proofs for every size, its verifiers must
accept them, and any corruption must be rejected. The Certificate Transparency test
vectors (as in github.com/transparency-dev/merkle proof/verify_test.go) pin both to the
values every other RFC 6962 / RFC 9162 implementation computes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentiam.core.audit.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    MemoryNodeStore,
    TreeBuilder,
    compact_range_keys,
    consistency_proof,
    fold,
    inclusion_proof,
    leaf_hash,
    node_hash,
    prunable_nodes,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

# -- the reference: RFC 9162 section 2.1, literally ----------------------------------


def _sha256(data: bytes) -> bytes:
    digest: bytes = hashlib.sha256(data).digest()
    return digest


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D_n), section 2.1.1."""
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + d[0])
    k = _k(n)
    return _sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D_n), section 2.1.3.1."""
    n = len(d)
    if n == 1:
        assert m == 0
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D_n, b), section 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D_n) = SUBPROOF(m, D_n, true), section 2.1.4.1 (0 < m < n)."""
    assert 0 < m < len(d)
    return ref_subproof(m, d, True)


# -- helpers -----------------------------------------------------------------------------


def inputs(n: int, salt: bytes = b"") -> list[bytes]:
    return [salt + i.to_bytes(4, "big") for i in range(n)]


def build(data: Sequence[bytes]) -> tuple[MemoryNodeStore, TreeBuilder]:
    store = MemoryNodeStore()
    builder = TreeBuilder(store)
    for d in data:
        store.put_many(builder.append(leaf_hash(d)))
    return store, builder


def flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class GetOnlyStore:
    """A NodeStore with no batch read, counting lookups."""

    def __init__(self, inner: MemoryNodeStore) -> None:
        self.inner = inner
        self.lookups = 0

    def get(self, level: int, index: int) -> bytes:
        self.lookups += 1
        return self.inner.get(level, index)


class BatchCountingStore:
    """A batch NodeStore that counts round trips and keys, and, like a database,
    leaves out keys it does not hold."""

    def __init__(self, inner: MemoryNodeStore) -> None:
        self.inner = inner
        self.calls = 0
        self.keys = 0

    def get(self, level: int, index: int) -> bytes:  # pragma: no cover - not used
        raise AssertionError("a batch store should be read in batches")

    def get_many(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self.calls += 1
        self.keys += len(keys)
        out = {}
        for level, index in keys:
            with contextlib.suppress(KeyError):
                out[(level, index)] = self.inner.get(level, index)
        return out


# -- known answers: the Certificate Transparency vectors ---------------------------------

CT_INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]

CT_ROOTS = [  # MTH of the first n inputs, n = 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (0-based leaf index, tree size, PATH); the Go source lists 1-based leaf numbers.
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]

CT_CONSISTENCY = [  # (first, second, PROOF)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def test_hash_primitives_match_the_rfc() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"").hex() == CT_ROOTS[1]  # a one-leaf tree's root is its leaf hash
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    left, right = _sha256(b"l"), _sha256(b"r")
    assert node_hash(left, right) == _sha256(b"\x01" + left + right)
    with pytest.raises(ValueError, match="32-byte"):
        node_hash(left, right[:31])


def test_the_reference_reproduces_the_ct_vectors() -> None:
    """The oracle itself agrees with the published values before it judges anything."""
    for n, expected in enumerate(CT_ROOTS):
        assert ref_mth(CT_INPUTS[:n]).hex() == expected
    for index, size, path in CT_INCLUSION:
        assert [p.hex() for p in ref_path(index, CT_INPUTS[:size])] == path
    for first, second, proof in CT_CONSISTENCY:
        if first < second:
            assert [p.hex() for p in ref_proof(first, CT_INPUTS[:second])] == proof


def test_ct_vectors() -> None:
    store, builder = build(CT_INPUTS)
    roots = [bytes.fromhex(r) for r in CT_ROOTS]
    assert builder.root() == roots[8]
    for n in range(9):
        assert builder.root(n) == roots[n]
        assert subtree_root(store, 0, n) == roots[n]
        assert TreeBuilder.resume(store, n).root() == roots[n]
    for index, size, path in CT_INCLUSION:
        proof = inclusion_proof(store, index, size)
        assert [p.hex() for p in proof] == path
        assert verify_inclusion(leaf_hash(CT_INPUTS[index]), index, size, proof, roots[size])
    for first, second, expected in CT_CONSISTENCY:
        proof = consistency_proof(store, first, second)
        assert [p.hex() for p in proof] == expected
        assert verify_consistency(first, second, roots[first], roots[second], proof)


def test_ct_vectors_reject_the_go_suite_corruptions() -> None:
    """The corruptions transparency-dev/merkle applies to each vector, all refused."""
    roots = [bytes.fromhex(r) for r in CT_ROOTS]
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    for index, size, hexes in CT_INCLUSION:
        proof = [bytes.fromhex(h) for h in hexes]
        leaf, root = leaf_hash(CT_INPUTS[index]), roots[size]
        bad = [
            (leaf, index - 1, size, proof, root),
            (leaf, index + 1, size, proof, root),
            (leaf, index ^ 2, size, proof, root),
            (leaf, index, size * 2, proof, root),
            (leaf, index, size // 2, proof, root),
            (b"WrongLeaf", index, size, proof, root),
            (leaf, index, size, proof, EMPTY_ROOT),
            (leaf, index, size, proof, some),
            (leaf, index, size, [*proof, b""], root),
            (leaf, index, size, [*proof, root], root),
            (leaf, index, size, [b"", *proof], root),
            (leaf, index, size, [root, *proof], root),
        ]
        bad += [
            (leaf, index, size, [*proof[:i], flip(p, 3), *proof[i + 1 :]], root)
            for i, p in enumerate(proof)
        ]
        if proof:
            bad.append((leaf, index, size, proof[:-1], root))
        if len(proof) > 1:
            bad.append((leaf, index, size, [proof[0], some, *proof[1:]], root))
        for args in bad:
            assert not verify_inclusion(*args), args
    for first, second, hexes in CT_CONSISTENCY:
        proof = [bytes.fromhex(h) for h in hexes]
        if not proof:
            continue
        r1, r2 = roots[first], roots[second]
        bad_c = [
            (first - 1, second, r1, r2, proof),
            (first + 1, second, r1, r2, proof),
            (first ^ 2, second, r1, r2, proof),
            (first, second * 2, r1, r2, proof),
            (first, second // 2, r1, r2, proof),
            (first, second, b"WrongRoot", r2, proof),
            (first, second, r1, b"WrongRoot", proof),
            (first, second, r2, r1, proof),
            (first, second, r1, r2, []),
            (first, second, r1, r2, [*proof, b""]),
            (first, second, r1, r2, [*proof, r1]),
            (first, second, r1, r2, [*proof, r2]),
            (first, second, r1, r2, [b"", *proof]),
            (first, second, r1, r2, [r1, *proof]),
            (first, second, r1, r2, [r2, *proof]),
            (first, second, r1, r2, [proof[0], *proof]),
            (first, second, r1, r2, proof[:-1]),
        ]
        bad_c += [
            (first, second, r1, r2, [*proof[:i], flip(p, 4), *proof[i + 1 :]])
            for i, p in enumerate(proof)
        ]
        for cargs in bad_c:
            assert not verify_consistency(*cargs), cargs


# -- exhaustive over small trees ------------------------------------------------------


def test_every_root_path_and_proof_up_to_32_leaves() -> None:
    data = inputs(32, b"exhaustive")
    store, _ = build(data)
    for n in range(33):
        root = ref_mth(data[:n])
        assert subtree_root(store, 0, n) == root
        for i in range(n):
            proof = inclusion_proof(store, i, n)
            assert proof == ref_path(i, data[:n])
            assert verify_inclusion(leaf_hash(data[i]), i, n, proof, root)
            for j in range(n):  # the same proof at any other index of the same tree
                if j != i:
                    assert not verify_inclusion(leaf_hash(data[i]), j, n, proof, root)
        for m in range(1, n):
            proof = consistency_proof(store, m, n)
            assert proof == ref_proof(m, data[:n])
            assert verify_consistency(m, n, ref_mth(data[:m]), root, proof)


def test_append_emits_each_completed_subtree_once() -> None:
    data = inputs(70, b"nodes")
    builder = TreeBuilder()
    seen: dict[tuple[int, int], bytes] = {}
    for i, d in enumerate(data):
        nodes = builder.append(leaf_hash(d))
        assert nodes[0] == (0, i, leaf_hash(d))
        assert [level for level, _, _ in nodes] == list(range(len(nodes)))
        # one node for the leaf plus one per trailing 1 bit of its index
        assert len(nodes) == 1 + ((i ^ (i + 1)).bit_length() - 1)
        for level, index, value in nodes:
            assert (level, index) not in seen
            assert value == ref_mth(data[index << level : (index + 1) << level])
            seen[(level, index)] = value
        assert builder.size == i + 1
        assert builder.root() == ref_mth(data[: i + 1])
    assert len(seen) == 2 * 70 - bin(70).count("1")


# -- properties against the reference, sizes 0..300 -------------------------------------

sizes = st.integers(min_value=0, max_value=300)
salts = st.binary(max_size=8)


@settings(max_examples=200, deadline=None)
@given(n=sizes, salt=salts, split=st.integers(min_value=0, max_value=300), data=st.data())
def test_roots_match_the_reference(n: int, salt: bytes, split: int, data: st.DataObject) -> None:
    leaves = inputs(n, salt)
    store, builder = build(leaves)
    assert builder.size == n
    assert store.size == n
    assert builder.root() == ref_mth(leaves)
    # resuming part-way from the store and carrying on builds the same tree
    split = min(split, n)
    resumed = TreeBuilder.resume(store, split)
    assert resumed.root() == ref_mth(leaves[:split])
    rest = resumed.extend(leaf_hash(d) for d in leaves[split:])
    assert resumed.root() == builder.root()
    assert all(store.get(level, index) == value for level, index, value in rest)
    for m in data.draw(st.lists(st.integers(0, n), max_size=5)):
        assert builder.root(m) == ref_mth(leaves[:m])
        assert subtree_root(GetOnlyStore(store), 0, m) == ref_mth(leaves[:m])


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=1, max_value=300), salt=salts, data=st.data())
def test_inclusion_matches_the_reference_and_rejects_tampering(
    n: int, salt: bytes, data: st.DataObject
) -> None:
    leaves = inputs(n, salt)
    store, builder = build(leaves)
    index = data.draw(st.integers(0, n - 1), label="index")
    size = data.draw(st.integers(index + 1, n), label="size")
    d = leaves[:size]
    root, leaf = ref_mth(d), leaf_hash(leaves[index])
    proof = inclusion_proof(store, index, size)
    assert proof == ref_path(index, d)
    assert builder.root(size) == root
    assert verify_inclusion(leaf, index, size, proof, root)
    assert verify_inclusion(leaf, index, size, tuple(proof), root)

    # any single flipped bit: in the leaf, the root, or any proof element
    bit = data.draw(st.integers(0, 255), label="bit")
    assert not verify_inclusion(flip(leaf, bit), index, size, proof, root)
    assert not verify_inclusion(leaf, index, size, proof, flip(root, bit))
    for i in range(len(proof)):
        bad = [*proof]
        bad[i] = flip(bad[i], bit)
        assert not verify_inclusion(leaf, index, size, bad, root)
    # another leaf's hash at this position
    other = data.draw(st.integers(0, size - 1), label="other")
    if other != index:
        assert not verify_inclusion(leaf_hash(leaves[other]), index, size, proof, root)
    # a wrong index in the same tree, or out of range
    wrong = data.draw(st.integers(0, size - 1), label="wrong index")
    if wrong != index:
        assert not verify_inclusion(leaf, wrong, size, proof, root)
    assert not verify_inclusion(leaf, size, size, proof, root)
    assert not verify_inclusion(leaf, index + size, size, proof, root)
    # a wrong size, with the root of that size: the head a lie would have to cite
    wrong_size = data.draw(st.integers(index + 1, n), label="wrong size")
    if wrong_size != size:
        assert not verify_inclusion(leaf, index, wrong_size, proof, ref_mth(leaves[:wrong_size]))
    # truncated or extended
    if proof:
        assert not verify_inclusion(leaf, index, size, proof[:-1], root)
        assert not verify_inclusion(leaf, index, size, proof[1:], root)
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    assert not verify_inclusion(leaf, index, size, [*proof, extra], root)
    assert not verify_inclusion(leaf, index, size, [extra, *proof], root)
    assert not verify_inclusion(leaf, index, size, [*proof, root], root)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=2, max_value=300), salt=salts, data=st.data())
def test_consistency_matches_the_reference_and_rejects_tampering(
    n: int, salt: bytes, data: st.DataObject
) -> None:
    leaves = inputs(n, salt)
    store, _ = build(leaves)
    second = data.draw(st.integers(2, n), label="second")
    first = data.draw(st.integers(1, second - 1), label="first")
    r1, r2 = ref_mth(leaves[:first]), ref_mth(leaves[:second])
    proof = consistency_proof(store, first, second)
    assert proof == ref_proof(first, leaves[:second])
    assert proof  # never empty for 0 < first < second
    assert verify_consistency(first, second, r1, r2, proof)

    bit = data.draw(st.integers(0, 255), label="bit")
    assert not verify_consistency(first, second, flip(r1, bit), r2, proof)
    assert not verify_consistency(first, second, r1, flip(r2, bit), proof)
    assert not verify_consistency(first, second, r2, r1, proof)
    for i in range(len(proof)):
        bad = [*proof]
        bad[i] = flip(bad[i], bit)
        assert not verify_consistency(first, second, r1, r2, bad)
    # wrong sizes, each with the root a tree of that size has
    f2 = data.draw(st.integers(1, second - 1), label="wrong first")
    if f2 != first:
        assert not verify_consistency(f2, second, ref_mth(leaves[:f2]), r2, proof)
    s2 = data.draw(st.integers(first + 1, n), label="wrong second")
    if s2 != second:
        assert not verify_consistency(first, s2, r1, ref_mth(leaves[:s2]), proof)
    assert not verify_consistency(second, first, r2, r1, proof)
    # a history that differs in one leaf is not consistent
    changed = data.draw(st.integers(0, first - 1), label="changed leaf")
    forked = [*leaves[:second]]
    forked[changed] = b"forked" + forked[changed]
    assert not verify_consistency(first, second, r1, ref_mth(forked), proof)
    # truncated or extended
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    assert not verify_consistency(first, second, r1, r2, proof[:-1])
    assert not verify_consistency(first, second, r1, r2, proof[1:])
    assert not verify_consistency(first, second, r1, r2, [*proof, extra])
    assert not verify_consistency(first, second, r1, r2, [extra, *proof])
    assert not verify_consistency(first, second, r1, r2, [r1, *proof])
    assert not verify_consistency(first, second, r1, r2, [])


# -- the edges of consistency --------------------------------------------------------------


def test_consistency_of_equal_sizes_and_of_the_empty_tree() -> None:
    store, builder = build(inputs(5))
    r3, r5 = builder.root(3), builder.root(5)
    # first == second: the base case SUBPROOF(m, D_m, true) = {}
    assert consistency_proof(store, 3, 3) == []
    assert verify_consistency(3, 3, r3, r3, [])
    assert not verify_consistency(3, 3, r3, r5, [])
    assert not verify_consistency(3, 3, r3, r3, [r3])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, r3, [])
    # first == 0: the empty tree is a prefix of every tree; nothing to prove
    assert consistency_proof(store, 0, 5) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, r5, [])
    assert not verify_consistency(0, 5, r3, r5, [])  # only the empty tree's root
    assert not verify_consistency(0, 5, EMPTY_ROOT, r5, [EMPTY_ROOT])
    # first > second
    assert not verify_consistency(5, 3, r5, r3, [])
    with pytest.raises(ValueError, match="larger"):
        consistency_proof(store, 5, 3)


def test_the_root_binds_the_size_only_with_a_signed_head() -> None:
    """Documented limit of RFC 9162 section 2.1.3.2: leaf 2's proof in a 3-leaf tree
    also passes as leaf 1 of a 2-leaf tree with the same root (no honest 2-leaf tree
    has it). A tree head must sign the size with the root; against the root of the
    real 2-leaf tree the claim fails."""
    store, builder = build(inputs(3))
    proof = inclusion_proof(store, 2, 3)
    leaf = leaf_hash(inputs(3)[2])
    assert verify_inclusion(leaf, 2, 3, proof, builder.root(3))
    assert verify_inclusion(leaf, 1, 2, proof, builder.root(3))
    assert not verify_inclusion(leaf, 1, 2, proof, builder.root(2))


# -- fail-closed inputs ----------------------------------------------------------------------


def test_verifiers_refuse_malformed_input() -> None:
    store, builder = build(inputs(6))
    root, leaf = builder.root(), leaf_hash(inputs(6)[3])
    proof = inclusion_proof(store, 3, 6)
    assert verify_inclusion(leaf, 3, 6, proof, root)
    assert not verify_inclusion(leaf, 3, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(leaf, -1, 6, proof, root)
    assert not verify_inclusion(leaf, True, 6, proof, root)
    assert not verify_inclusion(leaf, 3, 6.0, proof, root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3, MAX_TREE_SIZE + 1, proof, root)
    assert not verify_inclusion(leaf[:31], 3, 6, proof, root)
    assert not verify_inclusion(leaf, 3, 6, proof, root + b"\x00")
    assert not verify_inclusion(bytearray(leaf), 3, 6, proof, root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3, 6, iter(proof), root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3, 6, b"".join(proof), root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3, 6, [p.hex() for p in proof], root)  # type: ignore[misc]
    assert not verify_inclusion(leaf, 3, 6, [proof[0]] * 10_000, root)

    r2, r6 = builder.root(2), builder.root(6)
    cproof = consistency_proof(store, 2, 6)
    assert verify_consistency(2, 6, r2, r6, cproof)
    assert not verify_consistency(-1, 6, r2, r6, cproof)
    assert not verify_consistency(2, MAX_TREE_SIZE + 1, r2, r6, cproof)
    assert not verify_consistency(False, 6, r2, r6, cproof)
    assert not verify_consistency(2, 6, r2[:16], r6, cproof)
    assert not verify_consistency(2, 6, r2, r6, [*cproof[:-1], cproof[-1][:31]])
    assert not verify_consistency(2, 6, r2, r6, tuple(cproof) * 100)


def test_builders_refuse_bad_sizes_and_ranges() -> None:
    store, builder = build(inputs(6))
    for index, size in [(6, 6), (0, 0), (7, 6)]:
        with pytest.raises(ValueError, match="not below the tree size"):
            inclusion_proof(store, index, size)
    with pytest.raises(ValueError, match="index must be an int"):
        inclusion_proof(store, -1, 6)
    with pytest.raises(ValueError, match="index must be an int"):
        inclusion_proof(store, True, 6)
    with pytest.raises(ValueError, match="first must be an int"):
        consistency_proof(store, -1, 6)
    with pytest.raises(ValueError, match="second must be an int"):
        consistency_proof(store, 1, MAX_TREE_SIZE + 1)
    with pytest.raises(ValueError, match="only 6 leaves"):
        builder.root(7)
    with pytest.raises(ValueError, match="needs a NodeStore"):
        _builder_without_store().root(1)
    with pytest.raises(ValueError, match="size must be an int"):
        TreeBuilder.resume(store, -1)
    with pytest.raises(ValueError, match="32-byte"):
        builder.append(b"not a hash")
    # ranges the RFC recursion never produces
    assert subtree_root(store, 4, 6) == ref_mth(inputs(6)[4:6])
    assert subtree_root(store, 2, 5) == ref_mth(inputs(6)[2:5])
    for start, end in [(1, 3), (2, 6), (3, 5), (3, 2), (1, 1)]:
        with pytest.raises(ValueError, match=r"not a subtree|past end|empty tree"):
            subtree_root(store, start, end)
    assert subtree_root(store, 0, 0) == EMPTY_ROOT


def _builder_without_store() -> TreeBuilder:
    builder = TreeBuilder()
    builder.extend(leaf_hash(d) for d in inputs(3))
    return builder


def test_a_missing_or_malformed_node_fails_closed() -> None:
    store, _ = build(inputs(5))
    with pytest.raises(KeyError):
        inclusion_proof(store, 0, 8)  # the store has only 5 leaves
    with pytest.raises(KeyError):
        inclusion_proof(BatchCountingStore(store), 0, 8)  # get_many leaves it out
    with pytest.raises(KeyError):
        TreeBuilder.resume(store, 6)
    with pytest.raises(KeyError):
        consistency_proof(GetOnlyStore(store), 3, 7)

    class Corrupt:
        def get(self, level: int, index: int) -> bytes:
            return b"short"

    with pytest.raises(ValueError, match="malformed"):
        inclusion_proof(Corrupt(), 0, 4)
    with pytest.raises(ValueError, match="malformed"):
        TreeBuilder.resume(Corrupt(), 3)


def test_memory_store_nodes_are_immutable_and_contiguous() -> None:
    store = MemoryNodeStore()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    store.put(0, 0, a)
    store.put(0, 0, a)  # the same value again is fine (an idempotent retry)
    with pytest.raises(ValueError, match="another hash"):
        store.put(0, 0, b)
    with pytest.raises(ValueError, match="gap"):
        store.put(0, 2, b)
    with pytest.raises(ValueError, match="level must be"):
        store.put(64, 0, a)
    with pytest.raises(ValueError, match="index out of range"):
        store.put(0, -1, a)
    with pytest.raises(ValueError, match="32-byte"):
        store.put(0, 1, a[:31])
    assert store.get(0, 0) == a
    assert store.count(0) == 1
    assert store.count(5) == 0
    for key in [(0, 1), (1, 0), (-1, 0), (0, -1)]:
        with pytest.raises(KeyError):
            store.get(*key)
    assert MemoryNodeStore.from_leaf_hashes([a, b]).get(1, 0) == node_hash(a, b)


def test_proofs_cost_one_batch_of_logarithmic_lookups() -> None:
    n = 1000
    store, builder = build(inputs(n))
    batch = BatchCountingStore(store)
    for index in (0, 1, 511, 512, 998, 999):
        batch.calls = batch.keys = 0
        inclusion_proof(batch, index, n)
        assert batch.calls == 1
        assert batch.keys <= 2 * n.bit_length()
    batch.calls = batch.keys = 0
    consistency_proof(batch, 333, n)
    assert batch.calls == 1
    assert batch.keys <= 2 * n.bit_length()
    plain = GetOnlyStore(store)
    TreeBuilder.resume(plain, n)
    assert plain.lookups == bin(n).count("1")
    plain.lookups = 0
    assert TreeBuilder(plain).root(0) == EMPTY_ROOT
    assert TreeBuilder.resume(plain, n).root(777) == builder.root(777)


# -- scale -------------------------------------------------------------------------------


def test_a_hundred_thousand_leaves() -> None:
    n = 100_000
    data = inputs(n, b"scale")
    store = MemoryNodeStore()
    builder = TreeBuilder(store)
    for d in data:
        store.put_many(builder.append(leaf_hash(d)))
    assert store.size == n
    root = builder.root()
    assert root == ref_mth(data)
    for index in (0, 1, 65_535, 65_536, 99_998, n - 1):
        proof = inclusion_proof(store, index, n)
        assert len(proof) <= 17
        assert verify_inclusion(leaf_hash(data[index]), index, n, proof, root)
        assert not verify_inclusion(leaf_hash(data[index]), index, n, proof, flip(root, 0))
    for first in (1, 2**16, 12_345, n - 1):
        proof = consistency_proof(store, first, n)
        assert verify_consistency(first, n, builder.root(first), root, proof)
    resumed = TreeBuilder.resume(store, 54_321)
    assert resumed.root() == builder.root(54_321)


# -- pruning (retention) -------------------------------------------------------------


class _PrunedStore:
    """A store from which everything :func:`prunable_nodes` allows was deleted."""

    def __init__(self, full: MemoryNodeStore, size: int) -> None:
        self._full = full
        self._bounds = dict(prunable_nodes(size))
        self.deleted = 0

    def get(self, level: int, index: int) -> bytes:
        if index < self._bounds.get(level, 0):
            raise KeyError((level, index))
        return self._full.get(level, index)


def test_a_pruned_tree_still_proves_everything_after_the_prune_point() -> None:
    """Every root, inclusion proof and consistency proof that concerns only leaves at
    or after the prune point is built from what pruning keeps, and verifies."""
    n = 40
    data = [bytes([i]) for i in range(n)]
    leaves = [leaf_hash(d) for d in data]
    full = MemoryNodeStore.from_leaf_hashes(leaves)
    for k in range(n + 1):
        store = _PrunedStore(full, k)
        keys = compact_range_keys(k)
        assert fold([full.get(lv, i) for lv, i in keys]) == ref_mth(data[:k])
        for size in range(max(k, 1), n + 1):
            root = subtree_root(store, 0, size)
            assert root == ref_mth(data[:size])
            for index in range(k, size):
                path = inclusion_proof(store, index, size)
                assert verify_inclusion(leaves[index], index, size, path, root)
            for first in range(max(k, 1), size + 1):
                proof = consistency_proof(store, first, size)
                assert verify_consistency(first, size, ref_mth(data[:first]), root, proof)


def test_pruning_deletes_what_it_may_and_fails_closed_before_the_prune_point() -> None:
    n = 40
    leaves = [leaf_hash(bytes([i])) for i in range(n)]
    full = MemoryNodeStore.from_leaf_hashes(leaves)
    # 37 = 0b100101: level 0 keeps leaf 36 only, level 2 keeps node 8, level 5 node 0.
    assert prunable_nodes(37) == [(0, 36), (1, 18), (2, 8), (3, 4), (4, 2)]
    assert compact_range_keys(37) == [(5, 0), (2, 8), (0, 36)]
    assert prunable_nodes(0) == []
    store = _PrunedStore(full, 37)
    with pytest.raises(KeyError):
        inclusion_proof(store, 3, 40)  # a pruned leaf has no proof any more
    with pytest.raises(KeyError):
        consistency_proof(store, 20, 40)  # nor a tree head before the prune point
    with pytest.raises(ValueError, match="32-byte"):
        fold([b"short"])
