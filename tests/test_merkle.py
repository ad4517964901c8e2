"""RFC 6962 / RFC 9162 Merkle tree: published test vectors, every (m, n) up to 20 leaves against
a brute-force recomputation, and tampered proofs refused."""

import hashlib

import pytest

from forensics.ledger import merkle
from watermark.errors import InvalidInputError

# Test vectors of transparency-dev/merkle (Apache-2.0), the Go library behind Trillian, Tessera
# and Sigstore's Rekor: testonly/constants.go (leaves, roots) and proof/verify_test.go (proofs).
# Only the data is used here.
VECTOR_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
VECTOR_ROOTS = [bytes.fromhex(h) for h in (  # by tree size 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
H = bytes.fromhex
VECTOR_INCLUSION = [  # (leaf index from 0, tree size, proof)
    (0, 1, []),
    (0, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 3, [H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (1, 5, [H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]
VECTOR_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]
VECTOR_HASHES = [merkle.leaf_hash(d) for d in VECTOR_LEAVES]


def _brute_root(data):
    """MTH written straight from RFC 6962 section 2.1, on leaf data, by slicing lists."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + _brute_root(data[:k]) + _brute_root(data[k:])).digest()


def _brute_path(m, data):
    """PATH(m, D[n]) as written in RFC 6962 section 2.1.1."""
    if len(data) == 1:
        return []
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m < k:
        return _brute_path(m, data[:k]) + [_brute_root(data[k:])]
    return _brute_path(m - k, data[k:]) + [_brute_root(data[:k])]


def _brute_subproof(m, data, whole):
    """SUBPROOF(m, D[n], b) as written in RFC 6962 section 2.1.2."""
    if m == len(data):
        return [] if whole else [_brute_root(data)]
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m <= k:
        return _brute_subproof(m, data[:k], whole) + [_brute_root(data[k:])]
    return _brute_subproof(m - k, data[k:], False) + [_brute_root(data[:k])]


def test_published_roots_for_every_size():
    for size, want in enumerate(VECTOR_ROOTS):
        assert merkle.root_hash(VECTOR_HASHES[:size]) == want, size
    assert merkle.EMPTY_ROOT == VECTOR_ROOTS[0]


@pytest.mark.parametrize("index, size, proof", VECTOR_INCLUSION)
def test_published_inclusion_proofs(index, size, proof):
    assert merkle.inclusion_proof(VECTOR_HASHES[:size], index) == proof
    assert merkle.verify_inclusion(index, size, VECTOR_HASHES[index], proof, VECTOR_ROOTS[size])


@pytest.mark.parametrize("m, n, proof", VECTOR_CONSISTENCY)
def test_published_consistency_proofs(m, n, proof):
    assert merkle.consistency_proof(VECTOR_HASHES[:n], m) == proof
    assert merkle.verify_consistency(m, n, VECTOR_ROOTS[m], VECTOR_ROOTS[n], proof)


N_MAX = 20
DATA = [f"record {i}".encode() for i in range(N_MAX)]
HASHES = [merkle.leaf_hash(d) for d in DATA]
ROOTS = [_brute_root(DATA[:n]) for n in range(N_MAX + 1)]


def _flip(proof, i):
    bad = list(proof)
    bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
    return bad


def test_roots_match_the_brute_force_tree_up_to_20_leaves():
    for n in range(N_MAX + 1):
        assert merkle.root_hash(HASHES[:n]) == ROOTS[n]


def test_every_inclusion_proof_up_to_20_leaves():
    for n in range(1, N_MAX + 1):
        for i in range(n):
            proof = merkle.inclusion_proof(HASHES[:n], i)
            assert proof == _brute_path(i, DATA[:n]), (i, n)
            assert merkle.verify_inclusion(i, n, HASHES[i], proof, ROOTS[n])
            # a wrong leaf, position, size or root, or a changed or shortened proof, fails
            other = HASHES[(i + 1) % n]
            if n > 1:
                assert not merkle.verify_inclusion(i, n, other, proof, ROOTS[n])
                assert not merkle.verify_inclusion((i + 1) % n, n, HASHES[i], proof, ROOTS[n])
                assert not merkle.verify_inclusion(i, n, HASHES[i], proof[:-1], ROOTS[n])
            assert not merkle.verify_inclusion(i, n, HASHES[i], proof, ROOTS[n - 1])
            assert not merkle.verify_inclusion(i, 2 * n, HASHES[i], proof, ROOTS[n])
            assert not merkle.verify_inclusion(i, n, HASHES[i], proof + [ROOTS[n]], ROOTS[n])
            for j in range(len(proof)):
                assert not merkle.verify_inclusion(i, n, HASHES[i], _flip(proof, j), ROOTS[n])


def test_every_consistency_proof_up_to_20_leaves():
    for n in range(N_MAX + 1):
        for m in range(n + 1):
            proof = merkle.consistency_proof(HASHES[:n], m)
            want = [] if m in (0, n) else _brute_subproof(m, DATA[:n], True)
            assert proof == want, (m, n)
            assert merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], proof), (m, n)
            if 0 < m < n:  # a proof that shows something, so tampering must break it
                assert not merkle.verify_consistency(m, n, ROOTS[m - 1], ROOTS[n], proof)
                assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n - 1], proof)
                assert not merkle.verify_consistency(m, n, ROOTS[n], ROOTS[m], proof)
                assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], proof[:-1])
                assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], [])
                assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], proof + [ROOTS[m]])
                assert not merkle.verify_consistency(n, m, ROOTS[n], ROOTS[m], proof)
                for j in range(len(proof)):
                    assert not merkle.verify_consistency(m, n, ROOTS[m], ROOTS[n], _flip(proof, j))


def test_a_rewritten_prefix_has_no_consistency_proof():
    """The tree of records 0..9 with record 3 changed does not extend the tree of 0..5."""
    changed = list(HASHES[:10])
    changed[3] = merkle.leaf_hash(b"forged")
    new_root = merkle.root_hash(changed)
    proof = merkle.consistency_proof(changed, 6)
    assert not merkle.verify_consistency(6, 10, ROOTS[6], new_root, proof)


def test_bad_arguments_to_the_generators_are_refused():
    with pytest.raises(InvalidInputError, match="leaf index 3 is not in a tree of 3 leaves"):
        merkle.inclusion_proof(HASHES[:3], 3)
    with pytest.raises(InvalidInputError, match="old tree size 4 is not between 0 and"):
        merkle.consistency_proof(HASHES[:3], 4)
    with pytest.raises(InvalidInputError, match="leaf hash 1 is not 32 bytes"):
        merkle.root_hash([HASHES[0], b"short"])
    assert not merkle.verify_inclusion(0, 0, HASHES[0], [], merkle.EMPTY_ROOT)
    assert not merkle.verify_inclusion(0, 1, b"short", [], b"short")
