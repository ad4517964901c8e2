"""Signed checkpoints of the export ledger: a Merkle tree head that a writer cannot rewrite
silently.

The ledger's hash chain (:mod:`forensics.ledger`) is not keyed: whoever can write the file can
recompute every hash. A checkpoint is the ledger's Merkle tree head (its number of export
records and the RFC 6962 root over them, :mod:`forensics.ledger.merkle`) in the C2SP tlog-checkpoint
format, signed with an Ed25519 key (:mod:`forensics.ledger.note`). Kept outside the ledger (another
system, another site that witnesses it), it lets anyone with the public key prove later that
today's ledger still begins with exactly the records the checkpoint covered: an edited,
deleted, inserted or reordered record, a truncated ledger, and a chain rewritten from scratch
with every hash recomputed all change that root, and a forged checkpoint does not carry a
valid signature.

Leaves
------
Leaf ``i`` is the canonical content of the ``i``-th export record, oldest first
(:func:`forensics.ledger.record_content`: the JSON the record hash covers, recomputed from the
record's fields), hashed as an RFC 6962 leaf [3]_. Why the content and not the stored
``record_hash``: the stored hash is a column like the others, so a leaf taken from it would
let an edited record with its old hash left in place keep the root; the content is what a
record says, recomputed each time. The order is the tree's, so ``prev_hash`` and the row id
are left out (a renumbering that keeps every record and its order keeps the root; one that
reorders changes it). An auditor can recompute the leaves from ``leaktrace ledger export``.

Checkpoint text
---------------
Three lines, each ending in a newline (C2SP tlog-checkpoint [1]_, "Note text")::

    leaktrace/ledger/<ledger_id>
    <number of export records, decimal>
    <base64 of the 32-byte root hash>

The origin names the ledger (its random ``ledger_id``), so a checkpoint of one ledger is never
taken for another's; it has no space and no ``+``, as the spec recommends. The spec also
recommends that the signing key's name match the origin; leaktrace's signing key belongs to the
site and signs the checkpoints of each of its ledgers, so its name is the site's
(:func:`forensics.ledger.note.default_key_name`), and the origin is checked on its own. No extension
lines are written; ones read are kept and ignored.

Witnesses
---------
Another site verifies the checkpoint's signature with the first site's public key and adds its
own signature line (:func:`witness`), a plain Ed25519 note signature over the same text, which
the signed-note spec [2]_ allows (extra lines of unknown keys are ignored by verifiers). It is not
the timestamped C2SP tlog-cosignature (signature type 0x04), and the witness keeps no state:
it does not check that the checkpoint is consistent with the previous one it cosigned (that
needs the C2SP tlog-witness protocol and consistency proofs served by the log).

Never two inconsistent checkpoints
----------------------------------
The spec says a log must not sign a checkpoint inconsistent with one it signed before.
``leaktrace ledger checkpoint`` keeps the newest checkpoint it signed of each ledger beside
the signing key (:func:`last_checkpoint_path`) and refuses to sign when the ledger no longer
extends it (:func:`check_against_last`), so a rewrite since then is reported instead of
signed.

What it cannot do
-----------------
Whoever holds the signing key can sign a checkpoint of a rewritten ledger: the protection is
the copies of earlier checkpoints kept where the ledger's writers cannot reach (and their
witnesses' cosignatures), which a rewritten ledger no longer matches. Records added after the
newest checkpoint are covered only by the next one.

References
----------
.. [1] C2SP, "Transparency Log Checkpoints" (tlog-checkpoint), https://c2sp.org/tlog-checkpoint,
   read as the C2SP/C2SP repository's ``tlog-checkpoint.md``.
.. [2] C2SP, "Note" (signed-note), https://c2sp.org/signed-note.
.. [3] RFC 6962 section 2.1 and RFC 9162 section 2.1 (the Merkle tree; :mod:`forensics.ledger.merkle`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from watermark.errors import CheckpointError

from . import merkle
from .store import Ledger, record_content
from .note import (
    Note,
    Signer,
    Verifier,
    add_signature,
    check_signatures,
    parse_note,
    sign_note,
)

__all__ = [
    "ORIGIN_PREFIX",
    "Checkpoint",
    "CheckpointCheck",
    "check_against_last",
    "last_checkpoint_path",
    "ledger_checkpoint",
    "ledger_leaves",
    "ledger_origin",
    "read_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
    "witness",
]

#: The origin line of a ledger's checkpoints, before its ledger_id.
ORIGIN_PREFIX = "leaktrace/ledger/"


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, tree size and root hash (32 bytes), plus any extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The note text (C2SP tlog-checkpoint)."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text.

        Raises
        ------
        CheckpointError
            Fewer than three lines, an empty line, a size that is not a decimal without leading
            zeros, or a root that is not base64 of 32 bytes.
        """
        lines = text.split("\n")
        if lines[-1] != "" or len(lines) < 4 or any(line == "" for line in lines[:-1]):
            raise CheckpointError("not a checkpoint: its text must be at least three non-empty "
                                  "lines (origin, tree size, root hash)")
        origin, size, root, *ext = lines[:-1]
        if not re.fullmatch(r"0|[1-9][0-9]*", size):
            raise CheckpointError(f"not a checkpoint: tree size {size!r} is not a decimal number "
                                  "without leading zeros")
        try:
            raw = base64.b64decode(root, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != merkle.HASH_SIZE or base64.b64encode(raw).decode() != root:
            raise CheckpointError(f"not a checkpoint: root hash {root!r} is not base64 of "
                                  f"{merkle.HASH_SIZE} bytes")
        return cls(origin, int(size), raw, tuple(ext))


@dataclass(frozen=True)
class CheckpointCheck:
    """The result of :func:`verify_checkpoint`.

    Attributes
    ----------
    ok : bool
        No problem: the signatures asked for verify and the ledger's first ``size`` records
        have the checkpoint's root.
    origin : str
    size : int
        Records the checkpoint covers.
    root_hash : str
        Its root, base64.
    n_records : int
        Export records in the ledger now.
    records_since : int or None
        Records added after the checkpoint (``None`` when the ledger is shorter).
    signatures : list of dict
        Per key asked for: ``name``, ``key_id`` (8 hex digits), ``role`` (``"log"`` or
        ``"witness"``) and ``state`` (``"valid"``, ``"invalid"``, ``"absent"``).
    problems : list of str
        What failed, in words.
    root_hash_now : str
        The root over every record now (base64): the head of a checkpoint taken today.
    consistency_proof : list of str or None
        When the ledger extends the checkpoint: the RFC 9162 consistency proof (base64 hashes)
        from the checkpoint's tree to today's, for someone who holds only the two tree heads.
    """

    ok: bool
    origin: str
    size: int
    root_hash: str
    n_records: int
    records_since: int | None
    signatures: list
    problems: list
    root_hash_now: str
    consistency_proof: list | None = field(default=None)

    def as_dict(self) -> dict:
        return asdict(self)


def ledger_origin(ledger_id: str) -> str:
    """``leaktrace/ledger/<ledger_id>``."""
    return ORIGIN_PREFIX + ledger_id


def ledger_leaves(ledger: Ledger) -> list[bytes]:
    """The RFC 6962 leaf hash of every export record of ``ledger``, oldest first (see "Leaves"
    in the module docstring)."""
    return [merkle.leaf_hash(record_content(r, schema_version=ledger.schema_version))
            for r in ledger.exports()]


def _require_id(ledger: Ledger) -> str:
    if not ledger.ledger_id:
        raise CheckpointError(f"{ledger.path}: a schema-1 ledger (leaktrace 0.1.0) has no "
                              "ledger_id to name in a checkpoint; checkpoint a new ledger")
    return ledger.ledger_id


def ledger_checkpoint(ledger: Ledger) -> Checkpoint:
    """The checkpoint of the ledger as it is (unsigned).

    Raises
    ------
    CheckpointError
        A schema-1 ledger (no ``ledger_id``).
    """
    origin = ledger_origin(_require_id(ledger))
    leaves = ledger_leaves(ledger)
    return Checkpoint(origin, len(leaves), merkle.root_hash(leaves))


def sign_checkpoint(ledger: Ledger, signer: Signer) -> tuple[str, Checkpoint]:
    """Check the ledger and sign its checkpoint.

    A ledger whose hash chain or recipient names have problems (:meth:`Ledger.check`) is not
    signed: a signature would vouch for the damage.

    Returns
    -------
    note : str
        The signed checkpoint (C2SP signed note), to write to a file and keep elsewhere.
    checkpoint : Checkpoint

    Raises
    ------
    CheckpointError
        The ledger check found problems (the message lists them), or a schema-1 ledger.
    """
    check = ledger.check()
    if not check.ok:
        raise CheckpointError(f"{ledger.path}: the ledger check found {len(check.problems)} "
                              "problem(s), so no checkpoint was signed: "
                              + "; ".join(check.problems))
    cp = ledger_checkpoint(ledger)
    return sign_note(cp.text(), signer), cp


def last_checkpoint_path(signer: Signer, ledger_id: str) -> Path | None:
    """Where ``leaktrace ledger checkpoint`` keeps the newest checkpoint ``signer`` signed of
    the ledger ``ledger_id``: ``checkpoints/<ledger_id>.checkpoint`` beside the key file
    (``None`` for a key that has no file)."""
    if signer.path is None:
        return None
    return signer.path.parent / "checkpoints" / f"{ledger_id}.checkpoint"


def check_against_last(ledger: Ledger, signer: Signer) -> CheckpointCheck | None:
    """The ledger checked against the newest checkpoint this key signed of it, if one is kept
    (:func:`last_checkpoint_path`).

    The C2SP tlog-checkpoint spec says a log must never sign a checkpoint inconsistent with
    one it signed before; ``leaktrace ledger checkpoint`` refuses to sign when this check
    fails, so a rewrite since the last checkpoint is reported to the operator instead of
    signed. Whoever can delete the kept file defeats this guard (not the copies kept
    elsewhere).

    Returns
    -------
    CheckpointCheck or None
        ``None`` when no checkpoint is kept for this ledger.

    Raises
    ------
    CheckpointError
        The kept file cannot be read or is not a checkpoint.
    """
    path = last_checkpoint_path(signer, _require_id(ledger))
    if path is None or not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the last checkpoint ({exc})") from None
    return verify_checkpoint(ledger, data, signer.verifier)


def read_checkpoint(data: str | bytes) -> tuple[Checkpoint, Note]:
    """Parse a signed checkpoint (without checking any signature).

    Raises
    ------
    CheckpointError
        Not a signed note, or its text is not a checkpoint.
    """
    note = parse_note(data)
    return Checkpoint.from_text(note.text), note


def _signature_states(note: Note, log: Verifier, witnesses: list[Verifier]) -> tuple[list, list]:
    keys = [log, *witnesses]
    states = check_signatures(note, keys)
    rows, problems = [], []
    present = ", ".join(f"{s.name} ({s.key_id:08x})" for s in note.signatures)
    for i, v in enumerate(keys):
        role = "log" if i == 0 else "witness"
        state = states[v]
        rows.append({"name": v.name, "key_id": f"{v.key_id:08x}", "role": role, "state": state})
        what = "signature" if role == "log" else "witness cosignature"
        if state == "invalid":
            problems.append(f"the {what} of {v.name} (key {v.key_id:08x}) does not verify: the "
                            "checkpoint was changed after it was signed, or the signature is "
                            "forged")
        elif state == "absent":
            problems.append(f"the checkpoint has no {what} by {v.name} (key {v.key_id:08x}); it "
                            f"is signed by {present}: a checkpoint signed with another key "
                            "(forged), or the wrong public key given")
    return rows, problems


def verify_checkpoint(ledger: Ledger, data: str | bytes, log_key: Verifier, *,
                      witness_keys: list[Verifier] | tuple = ()) -> CheckpointCheck:
    """Whether ``ledger`` extends the signed checkpoint ``data``.

    Checks, and names each failure in :attr:`CheckpointCheck.problems`:

    * the signature of ``log_key`` and of each of ``witness_keys`` verifies over the
      checkpoint's text (signature lines of other keys are ignored);
    * the checkpoint is of this ledger (its origin names this ``ledger_id``);
    * the ledger holds at least as many export records as the checkpoint covers (fewer:
      records were deleted, the ledger truncated);
    * the Merkle root of its first ``size`` records is the checkpoint's (otherwise records the
      checkpoint covers were edited, deleted, inserted, reordered or the history rewritten).

    Records added after the checkpoint are fine. The ledger's own hash chain is checked by
    :meth:`Ledger.check`, not here.

    Parameters
    ----------
    ledger : Ledger
    data : str or bytes
        The signed checkpoint, as written by :func:`sign_checkpoint` (and :func:`witness`).
    log_key : Verifier
        The public key of the site that signed it.
    witness_keys : sequence of Verifier
        Public keys of witnesses whose cosignatures are required.

    Returns
    -------
    CheckpointCheck

    Raises
    ------
    CheckpointError
        ``data`` is not a signed checkpoint, or the ledger is of schema 1.
    """
    cp, note = read_checkpoint(data)
    sigs, problems = _signature_states(note, log_key, list(witness_keys))
    ledger_id = _require_id(ledger)
    if cp.origin != ledger_origin(ledger_id):
        problems.append(f"the checkpoint is of {cp.origin!r}, not of this ledger "
                        f"({ledger_origin(ledger_id)!r})")
    leaves = ledger_leaves(ledger)
    n = len(leaves)
    now = merkle.root_hash(leaves)
    proof = None
    if n < cp.size:
        problems.append(f"the ledger has {n} export record(s), fewer than the {cp.size} the "
                        "checkpoint covers: records were deleted since (truncated)")
    elif merkle.root_hash(leaves[:cp.size]) != cp.root:
        problems.append(f"the ledger's first {cp.size} export record(s) do not have the "
                        "checkpoint's root hash: records it covers were edited, deleted, "
                        "inserted or reordered since, or the history rewritten")
    else:
        proof = [base64.b64encode(h).decode() for h in merkle.consistency_proof(leaves, cp.size)]
    return CheckpointCheck(
        ok=not problems, origin=cp.origin, size=cp.size,
        root_hash=base64.b64encode(cp.root).decode(), n_records=n,
        records_since=n - cp.size if n >= cp.size else None, signatures=sigs,
        problems=problems, root_hash_now=base64.b64encode(now).decode(),
        consistency_proof=proof)


def witness(data: str | bytes, *, log_key: Verifier, signer: Signer) -> str:
    """Cosign a checkpoint as a witness: check the log's signature, then add ``signer``'s line.

    Parameters
    ----------
    data : str or bytes
        The signed checkpoint.
    log_key : Verifier
        The public key of the site whose checkpoint it is.
    signer : Signer
        The witness's own signing key (not the log's).

    Returns
    -------
    str
        The checkpoint with the witness's signature line added after the others.

    Raises
    ------
    CheckpointError
        Not a signed checkpoint, the log's signature is absent or does not verify, the signer
        is the log's key, or the witness has signed it already.
    """
    _cp, note = read_checkpoint(data)
    if (signer.name, signer.key_id) == (log_key.name, log_key.key_id):
        raise CheckpointError("the witness key is the log's own key; a witness signs with its "
                              "own key")
    state = check_signatures(note, [log_key])[log_key]
    if state != "valid":
        _, problems = _signature_states(note, log_key, [])
        raise CheckpointError(f"not cosigned: {problems[0]}")
    return add_signature(note, signer)
