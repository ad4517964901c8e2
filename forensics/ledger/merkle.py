"""Merkle tree hash, inclusion proofs and consistency proofs of RFC 6962 / RFC 9162.

Arrays of bytes in, bytes out: this module knows nothing of the ledger. The tree is the one
Certificate Transparency and Sigstore's Rekor use, so their tools can check our roots:

* a leaf is hashed as ``SHA-256(0x00 || data)`` (:func:`leaf_hash`), an inner node as
  ``SHA-256(0x01 || left || right)`` (:func:`node_hash`); the two prefixes keep a leaf from
  being passed off as a node (second-preimage attacks);
* the Merkle Tree Hash of ``n > 1`` leaves splits them at ``k``, the largest power of two
  smaller than ``n``: ``MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))``; of one leaf it is
  its leaf hash, of no leaf ``SHA-256()`` of the empty string.

Functions take the **leaf hashes** (32 bytes each, from :func:`leaf_hash`), not the leaf data,
so a caller hashes its records once and asks for several proofs. Proofs are lists of 32-byte
node hashes, in the order of the RFCs (from the leaf upwards).

Generating proofs follows the recursive definitions of RFC 6962 [1]_ section 2.1.1 (``PATH``) and
2.1.2 (``PROOF``/``SUBPROOF``). Verifying them follows the iterative algorithms of RFC 9162 [2]_
sections 2.1.3.2 and 2.1.4.2, which need only the sizes, the hashes and the proof. A verifier
returns ``False`` for any proof that does not prove what is claimed (also for impossible sizes
or indices); only malformed arguments to the generators raise.

References
----------
.. [1] B. Laurie, A. Langley, E. Kasper, "Certificate Transparency", RFC 6962, section 2.1
   (Merkle Hash Trees), 2013. https://www.rfc-editor.org/rfc/rfc6962#section-2.1
.. [2] B. Laurie, E. Messeri, R. Stradling, "Certificate Transparency Version 2.0", RFC 9162,
   section 2.1 (Merkle Trees; 2.1.3 inclusion proofs, 2.1.4 consistency proofs), 2021.
   https://www.rfc-editor.org/rfc/rfc9162#section-2.1
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from watermark.errors import InvalidInputError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

#: Bytes in a SHA-256 hash, the size of every hash in a tree and a proof.
HASH_SIZE = 32
#: The Merkle Tree Hash of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of a leaf holding ``data`` (RFC 6962 section 2.1)."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an inner node (RFC 6962 section 2.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """The Merkle Tree Hash of the leaves ``hashes[lo:hi]`` (leaf hashes, ``hi > lo``)."""
    if hi - lo == 1:
        return hashes[lo]
    k = _split(hi - lo)
    return node_hash(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def _check_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
            raise InvalidInputError(f"leaf hash {i} is not {HASH_SIZE} bytes "
                                    f"(got {type(h).__name__} of length {len(h)})")


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash (root) of a tree with these leaves.

    Parameters
    ----------
    leaf_hashes : sequence of bytes
        Each leaf's :func:`leaf_hash`, oldest first.

    Returns
    -------
    bytes
        32 bytes; :data:`EMPTY_ROOT` for no leaf.

    Raises
    ------
    InvalidInputError
        A leaf hash that is not 32 bytes.
    """
    _check_hashes(leaf_hashes)
    return _mth(leaf_hashes, 0, len(leaf_hashes)) if leaf_hashes else EMPTY_ROOT


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaf_hashes`` (RFC 6962 section 2.1.1).

    Parameters
    ----------
    leaf_hashes : sequence of bytes
        Every leaf hash of the tree, oldest first.
    index : int
        The leaf, counted from 0.

    Returns
    -------
    list of bytes
        The sibling hashes from the leaf up to the root (empty for a one-leaf tree).

    Raises
    ------
    InvalidInputError
        ``index`` is not a leaf of the tree (``0 <= index < len(leaf_hashes)``), or a leaf hash
        is not 32 bytes.
    """
    _check_hashes(leaf_hashes)
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise InvalidInputError(f"leaf index {index} is not in a tree of {n} leaves "
                                f"(0 to {n - 1})")
    path: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:  # descend to the leaf, noting the sibling subtree at each split
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(leaf_hashes, lo, lo + k))
            lo = lo + k
    return path[::-1]  # the RFC lists them from the leaf upwards


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of ``size`` leaves
    whose root is ``root`` (RFC 9162 section 2.1.3.2).

    Parameters
    ----------
    index : int
        The leaf, counted from 0.
    size : int
        Leaves in the tree.
    leaf : bytes
        The leaf's :func:`leaf_hash`.
    proof : sequence of bytes
        The audit path (:func:`inclusion_proof`).
    root : bytes
        The tree's root hash.

    Returns
    -------
    bool
        False for any proof that does not verify, also for ``index >= size``.
    """
    if not 0 <= index < size or not _all_hashes([leaf, root, *proof]):
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of the tree of all
    ``leaf_hashes`` (RFC 6962 section 2.1.2, ``PROOF(m, D[n])``).

    Parameters
    ----------
    leaf_hashes : sequence of bytes
        Every leaf hash of the newer tree, oldest first.
    old_size : int
        Leaves in the older tree, ``0 <= old_size <= len(leaf_hashes)``.

    Returns
    -------
    list of bytes
        Empty when ``old_size`` is 0 or equals the newer size (nothing to prove).

    Raises
    ------
    InvalidInputError
        ``old_size`` is negative or larger than the newer tree, or a leaf hash is not 32 bytes.
    """
    _check_hashes(leaf_hashes)
    n = len(leaf_hashes)
    if not 0 <= old_size <= n:
        raise InvalidInputError(f"old tree size {old_size} is not between 0 and the newer "
                                f"tree's size {n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    m, lo, hi, whole = old_size, 0, n, True
    while m != hi - lo:  # SUBPROOF(m, D[lo:hi], whole), unrolled
        k = _split(hi - lo)
        if m <= k:
            proof.append(_mth(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(leaf_hashes, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        proof.append(_mth(leaf_hashes, lo, hi))
    return proof[::-1]  # the recursion appends from the root down; the RFC lists leaf first


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows that the tree of ``old_size`` leaves with root ``old_root`` is a
    prefix of the tree of ``new_size`` leaves with root ``new_root`` (RFC 9162 section 2.1.4.2).

    Parameters
    ----------
    old_size, new_size : int
        Leaves in the older and the newer tree.
    old_root, new_root : bytes
        Their root hashes.
    proof : sequence of bytes
        From :func:`consistency_proof`.

    Returns
    -------
    bool
        For ``old_size == new_size`` true when the roots are equal and the proof empty; for
        ``old_size == 0`` true when the proof is empty (the empty tree is a prefix of every
        tree); false for ``old_size > new_size`` and for any proof that does not verify.
    """
    if not 0 <= old_size <= new_size or not _all_hashes([old_root, new_root, *proof]):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


def _all_hashes(values: Sequence) -> bool:
    return all(isinstance(v, (bytes, bytearray)) and len(v) == HASH_SIZE for v in values)
