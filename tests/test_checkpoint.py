"""Signed ledger checkpoints on a real ledger (5 real exports of shared films): the checkpoint's
root recomputed independently, every kind of tampering caught by a checkpoint taken before it
(also the full rewrite with recomputed hashes that the chain alone misses), honest appends still
verifying, forged checkpoints refused, witness cosignatures, and the CLI's exit codes."""

import base64
import hashlib
import json

import pytest

# the real ledger and the raw-row helpers of the ledger's own tamper tests
from test_ledger import CONTENT, _attacker_hash, _record, _rows, _sql, real_ledger  # noqa: F401
from pgserver import copy_ledger, raw_connect
from typer.testing import CliRunner

from forensics import cli
from forensics.ledger import merkle
from forensics.ledger.checkpoint import (
    read_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    witness,
)
from forensics.ledger import Ledger
from forensics.ledger.note import Signer, Verifier, sign_note
from watermark.errors import CheckpointError

runner = CliRunner()
SITE_A = Signer("site-a.example/leaktrace", hashlib.sha256(b"site A test key").digest())
SITE_B = Signer("site-b.example/witness", hashlib.sha256(b"site B test key").digest())
MALLORY = Signer("site-a.example/leaktrace", hashlib.sha256(b"Mallory's key").digest())


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Default key paths inside tmp_path: the real site key and signing key are never touched."""
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("LEAKTRACE_KEY", str(tmp_path / "keys" / "site.key"))
    monkeypatch.delenv("LEAKTRACE_LEDGER", raising=False)


@pytest.fixture
def ledger_and_checkpoint(real_ledger, tmp_path, request):  # noqa: F811
    """A copy of the real ledger (on each backend) and a checkpoint of it signed by site A
    (before any tampering)."""
    path = copy_ledger(real_ledger, tmp_path, request)
    with Ledger(path, create=False) as book:
        note, _ = sign_checkpoint(book, SITE_A)
    cp_file = tmp_path / "before.checkpoint"
    cp_file.write_text(note)
    return path, cp_file


def _check(path, cp_file, key=SITE_A.verifier, witnesses=()):
    with Ledger(path, create=False) as book:
        return book.check(), verify_checkpoint(book, cp_file.read_bytes(), key,
                                               witness_keys=list(witnesses))


def run(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _independent_root(path, size=None):
    """RFC 6962 root over the raw rows' content, as the checkpoint module docstring describes."""
    db = raw_connect(path)
    rows = list(_rows(db).values())[:size]
    db.close()
    leaves = [json.dumps({k: r[k] for k in CONTENT}, sort_keys=True,
                         separators=(",", ":")).encode() for r in rows]

    def mth(d):
        if len(d) == 1:
            return hashlib.sha256(b"\x00" + d[0]).digest()
        k = 1 << ((len(d) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()
    return mth(leaves)


def test_checkpoint_text_is_the_c2sp_format_with_the_ledgers_root(ledger_and_checkpoint):
    path, cp_file = ledger_and_checkpoint
    text = cp_file.read_text()
    with Ledger(path, create=False) as book:
        ledger_id = book.ledger_id
    origin, size, root, blank, sig, end = text.split("\n")
    assert (origin, size, blank, end) == (f"leaktrace/ledger/{ledger_id}", "5", "", "")
    assert base64.b64decode(root) == _independent_root(path)
    blob = base64.b64decode(sig.removeprefix("\u2014 site-a.example/leaktrace "))
    assert blob[:4] == SITE_A.key_id.to_bytes(4, "big") and len(blob) == 68
    cp, note = read_checkpoint(text)
    assert (cp.origin, cp.size, cp.root) == (origin, 5, base64.b64decode(root))
    assert SITE_A.verifier.verify(note.text.encode(), blob[4:])
    chain, check = _check(path, cp_file)
    assert chain.ok and check.ok and check.problems == [] and check.records_since == 0
    assert check.signatures == [{"name": SITE_A.name, "key_id": f"{SITE_A.key_id:08x}",
                                 "role": "log", "state": "valid"}]


def _rewrite_from(path, export_id, **changes):
    """Change export ``export_id`` and recompute its hash and every later one: a chain that
    verifies, from a writer who knows the (unkeyed) hash rule."""
    db = raw_connect(path)
    rows = _rows(db)
    prev = rows[export_id]["prev_hash"]
    for i in sorted(r for r in rows if r >= export_id):
        row = rows[i]
        if i == export_id:
            row.update(changes)
        row["prev_hash"], row["record_hash"] = prev, _attacker_hash(prev, row)
        db.execute("UPDATE exports SET recipient_number = ?, recipient_name = ?, prev_hash = ?, "
                   "record_hash = ? WHERE id = ?", (row["recipient_number"],
                                                    row["recipient_name"], row["prev_hash"],
                                                    row["record_hash"], i))
        prev = row["record_hash"]
    db.commit()
    db.close()


def _edit(path):
    _sql(path, "UPDATE exports SET recipient_number = 2, recipient_name = 'Innocent Bob' "
         "WHERE id = 3")


def _edit_own_hash(path):
    db = raw_connect(path)
    row = _rows(db)[3]
    row.update(recipient_number=2, recipient_name="Innocent Bob")
    db.execute("UPDATE exports SET recipient_number = 2, recipient_name = 'Innocent Bob', "
               "record_hash = ? WHERE id = 3", (_attacker_hash(row["prev_hash"], row),))
    db.commit()
    db.close()


def _delete(path):
    _sql(path, "DELETE FROM exports WHERE id = 3")


def _delete_renumber(path):
    _sql(path, "DELETE FROM exports WHERE id = 3", "UPDATE exports SET id = id - 1 WHERE id = 4",
         "UPDATE exports SET id = id - 1 WHERE id = 5")


def _insert(path):
    db = raw_connect(path)
    rows = _rows(db)
    for i in (5, 4, 3):
        db.execute("UPDATE exports SET id = ? WHERE id = ?", (i + 1, i))
    forged = dict(rows[2], id=3, recipient_number=2, recipient_name="Innocent Bob",
                  output_sop_uid="1.2.826.0.1.3680043.8.498.1", prev_hash=rows[2]["record_hash"])
    forged["record_hash"] = _attacker_hash(forged["prev_hash"], forged)
    db.execute(f"INSERT INTO exports ({', '.join(forged)}) VALUES "
               f"({', '.join('?' * len(forged))})", list(forged.values()))
    db.commit()
    db.close()


def _reorder(path):
    _sql(path, "UPDATE exports SET id = 100 WHERE id = 2", "UPDATE exports SET id = 2 WHERE id = 4",
         "UPDATE exports SET id = 4 WHERE id = 100")


def _truncate(path):
    _sql(path, "DELETE FROM exports WHERE id >= 4")


def _full_rewrite(path):
    """Mallory's export 3 reassigned to Innocent Bob, every hash from it on recomputed."""
    _rewrite_from(path, 3, recipient_number=2, recipient_name="Innocent Bob")


def _truncate_and_refill(path):
    """The newest export deleted and a forged one appended in its place, correctly chained: the
    same number of records as the checkpoint."""
    db = raw_connect(path)
    rows = _rows(db)
    db.execute("DELETE FROM exports WHERE id = 5")
    forged = dict(rows[5], recipient_number=2, recipient_name="Innocent Bob",
                  prev_hash=rows[4]["record_hash"])
    forged["record_hash"] = _attacker_hash(forged["prev_hash"], forged)
    db.execute(f"INSERT INTO exports ({', '.join(forged)}) VALUES "
               f"({', '.join('?' * len(forged))})", list(forged.values()))
    db.commit()
    db.close()


# name: (tampering, the chain alone catches it, the checkpoint's problem)
TAMPERING = {
    "edit": (_edit, True, "do not have the checkpoint's root hash"),
    "edit_with_own_hash_recomputed": (_edit_own_hash, True, "do not have the checkpoint's root"),
    "delete": (_delete, True, "fewer than the 5 the checkpoint covers: records were deleted"),
    "delete_and_renumber": (_delete_renumber, True, "(truncated)"),
    "insert": (_insert, True, "edited, deleted, inserted or reordered since"),
    "reorder": (_reorder, True, "do not have the checkpoint's root hash"),
    "truncate": (_truncate, False, "the ledger has 3 export record(s), fewer than the 5"),
    "full_rewrite_with_recomputed_hashes": (_full_rewrite, False, "history rewritten"),
    "truncate_and_append_forged": (_truncate_and_refill, False, ("first 5 export record(s) do "
                                   "not have the checkpoint's root hash")),
}


@pytest.mark.parametrize("kind", TAMPERING)
def test_every_tampering_is_caught_by_a_checkpoint_taken_before(kind, ledger_and_checkpoint):
    path, cp_file = ledger_and_checkpoint
    tamper, chain_catches, expected = TAMPERING[kind]
    tamper(path)
    chain, check = _check(path, cp_file)
    assert chain.ok is not chain_catches, chain.problems  # what the chain alone can tell
    assert not check.ok and len(check.problems) == 1, check.problems
    assert expected in check.problems[0]
    assert check.signatures[0]["state"] == "valid"  # the checkpoint itself is genuine
    # the CLI: exit 1, the problem named, in JSON and in words
    result = run("ledger", "verify", "--ledger", path, "--checkpoint", cp_file,
                 "--public-key", SITE_A.verifier.vkey, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["checkpoint"]["ok"] is False
    assert doc["checkpoint"]["problems"] == check.problems
    assert f"checkpoint: {check.problems[0]}" in doc["problems"]
    human = run("ledger", "verify", "--ledger", path, "--checkpoint", cp_file,
                "--public-key", SITE_A.verifier.vkey)
    assert human.exit_code == 1 and "checkpoint: FAILED (1 problem(s)" in human.stdout


def test_a_rewritten_ledger_re_signed_with_another_key_is_refused(ledger_and_checkpoint):
    """Mallory rewrites the history and signs a fresh checkpoint of it with a key of her own
    under site A's key name: with site A's public key it does not verify."""
    path, cp_file = ledger_and_checkpoint
    _full_rewrite(path)
    with Ledger(path, create=False) as book:
        forged, _ = sign_checkpoint(book, MALLORY)
    forged_file = cp_file.with_name("forged.checkpoint")
    forged_file.write_text(forged)
    chain, check = _check(path, forged_file)
    assert chain.ok  # the rewritten chain verifies, and the forged checkpoint matches it
    assert not check.ok and check.signatures[0]["state"] == "absent"
    assert check.problems == [(f"the checkpoint has no signature by {SITE_A.name} (key "
                              f"{SITE_A.key_id:08x}); it is signed by {MALLORY.name} "
                              f"({MALLORY.key_id:08x}): a checkpoint signed with another key "
                              "(forged), or the wrong public key given")]
    result = run("ledger", "verify", "--ledger", path, "--checkpoint", forged_file,
                 "--public-key", SITE_A.verifier.vkey)
    assert result.exit_code == 1 and "no signature by site-a.example/leaktrace" in result.stdout


def test_a_checkpoint_edited_to_match_the_ledger_has_a_bad_signature(ledger_and_checkpoint):
    """After truncating to 3 records, the checkpoint's size and root are edited to match: the
    signature no longer verifies."""
    path, cp_file = ledger_and_checkpoint
    _truncate(path)
    cp, note = read_checkpoint(cp_file.read_text())
    new_root = base64.b64encode(_independent_root(path)).decode()
    edited = str(note).replace(f"\n5\n{base64.b64encode(cp.root).decode()}\n", f"\n3\n{new_root}\n")
    cp_file.write_text(edited)
    _, check = _check(path, cp_file)
    assert check.size == 3 and check.signatures[0]["state"] == "invalid"
    assert check.problems == [(f"the signature of {SITE_A.name} (key {SITE_A.key_id:08x}) does not "
                              "verify: the checkpoint was changed after it was signed, or the "
                              "signature is forged")]


def test_honest_exports_after_a_checkpoint_still_verify(ledger_and_checkpoint, tmp_path):
    path, cp_file = ledger_and_checkpoint
    with Ledger(path) as book:
        (fingerprint,) = book.key_usage()
        for n in range(3):
            _record(book, tmp_path, f"Dave {n}", n=n, key_fingerprint=fingerprint)
    chain, check = _check(path, cp_file)
    assert chain.ok and check.ok and (check.size, check.n_records, check.records_since) == (5, 8, 3)
    assert base64.b64decode(check.root_hash_now) == _independent_root(path)
    proof = [base64.b64decode(h) for h in check.consistency_proof]
    old_root = base64.b64decode(check.root_hash)
    new_root = base64.b64decode(check.root_hash_now)
    assert merkle.verify_consistency(5, 8, old_root, new_root, proof)
    assert not merkle.verify_consistency(5, 8, old_root, _independent_root(path, 7), proof)
    # a new checkpoint covers the new records, with the root the consistency proof led to
    with Ledger(path, create=False) as book:
        _note, cp = sign_checkpoint(book, SITE_A)
    assert cp.size == 8 and cp.root == new_root


def test_a_checkpoint_of_another_ledger_is_refused(ledger_and_checkpoint, tmp_path):
    _path, cp_file = ledger_and_checkpoint
    other = tmp_path / "other.sqlite"
    with Ledger(other) as book:
        _record(book, tmp_path, "x")
    _, check = _check(other, cp_file)
    assert not check.ok and any("not of this ledger" in p for p in check.problems)


def test_witness_cosignature_verifies_and_a_tampered_note_fails(ledger_and_checkpoint):
    path, cp_file = ledger_and_checkpoint
    cosigned = witness(cp_file.read_text(), log_key=SITE_A.verifier, signer=SITE_B)
    assert cosigned.startswith(cp_file.read_text()) and cosigned.count("\n\u2014 ") == 2
    cp_file.write_text(cosigned)
    _chain, check = _check(path, cp_file, witnesses=[SITE_B.verifier])
    assert check.ok and [s["state"] for s in check.signatures] == ["valid", "valid"]
    assert [s["role"] for s in check.signatures] == ["log", "witness"]
    # the witness required but absent (the checkpoint before cosigning)
    plain = cosigned[:cosigned.rindex("\u2014 site-b")]
    cp_file.write_text(plain)
    _, check = _check(path, cp_file, witnesses=[SITE_B.verifier])
    assert not check.ok and check.signatures[1]["state"] == "absent"
    # the text tampered with: both signatures fail
    cp_file.write_text(cosigned.replace("\n5\n", "\n4\n"))
    _, check = _check(path, cp_file, witnesses=[SITE_B.verifier])
    assert [s["state"] for s in check.signatures] == ["invalid", "invalid"]
    # a witness refuses a checkpoint whose log signature fails, and its own key as the log's
    with pytest.raises(CheckpointError, match="not cosigned: the signature of site-a"):
        witness(cosigned.replace("\n5\n", "\n4\n"), log_key=SITE_A.verifier, signer=SITE_B)
    with pytest.raises(CheckpointError, match="no signature by site-a.example/leaktrace"):
        witness(cosigned, log_key=MALLORY.verifier, signer=SITE_B)
    with pytest.raises(CheckpointError, match="the witness key is the log's own key"):
        witness(cosigned, log_key=SITE_A.verifier, signer=SITE_A)


def test_a_broken_ledger_is_not_signed(ledger_and_checkpoint):
    path, _ = ledger_and_checkpoint
    _edit(path)
    with Ledger(path, create=False) as book, pytest.raises(CheckpointError,
                                                           match="no checkpoint was signed"):
        sign_checkpoint(book, SITE_A)


def test_cli_checkpoint_verify_and_witness(ledger_and_checkpoint, tmp_path):
    path, _ = ledger_and_checkpoint
    out = tmp_path / "cp.txt"
    result = run("ledger", "checkpoint", "--ledger", path, "--out", out)
    assert result.exit_code == 0, result.output
    key = tmp_path / "keys" / "checkpoint.key"  # beside the site key ($LEAKTRACE_KEY)
    vkey = key.with_name("checkpoint.key.pub").read_text().strip()
    assert result.stdout == out.read_text() and "created the checkpoint signing key" in result.stderr
    assert f"public key: {vkey}" in result.stderr
    assert not (tmp_path / "keys" / "site.key").exists()  # no site key created by this
    again = run("ledger", "checkpoint", "--ledger", path, "--out", out)
    assert again.exit_code == 0 and "created" not in again.stderr
    # verify with the default public key (beside the default signing key)
    result = run("ledger", "verify", "--ledger", path, "--checkpoint", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["checkpoint"]["ok"] and doc["checkpoint"]["size"] == 5
    assert set(doc) == {"ok", "problems", "n_records", "head_hash", "ledger_id", "anchor",
                        "checkpoint", "access"}  # access: the access log's chain check
    # a second site witnesses it with its own key, given site A's public key as a file
    cosigned = tmp_path / "cosigned.txt"
    b_key = tmp_path / "site-b" / "witness.key"
    result = run("ledger", "witness", "--checkpoint", out, "--public-key",
                 key.with_name("checkpoint.key.pub"), "--signing-key", b_key,
                 "--key-name", "site-b.example/witness", "--out", cosigned)
    assert result.exit_code == 0, result.output
    b_vkey = b_key.with_name("witness.key.pub").read_text().strip()
    assert b_vkey.startswith("site-b.example/witness+")
    result = run("ledger", "verify", "--ledger", path, "--checkpoint", cosigned,
                 "--public-key", vkey, "--witness-key", b_vkey)
    assert result.exit_code == 0 and "site-b.example/witness valid" in result.stdout
    assert run("ledger", "verify", "--ledger", path, "--checkpoint", out,
               "--witness-key", b_vkey).exit_code == 1  # the witness's line is required
    # a checkpoint that fails its signature is not witnessed
    out.write_text(out.read_text().replace("\n5\n", "\n4\n"))
    result = run("ledger", "witness", "--checkpoint", out, "--public-key", vkey,
                 "--signing-key", b_key, "--out", tmp_path / "nope.txt")
    assert result.exit_code == 1 and "is invalid: not cosigned" in result.stderr
    assert not (tmp_path / "nope.txt").exists()


def test_cli_errors(ledger_and_checkpoint, tmp_path):
    path, cp_file = ledger_and_checkpoint
    vkey = SITE_A.verifier.vkey
    no_key = run("ledger", "verify", "--ledger", path, "--checkpoint", cp_file)
    assert no_key.exit_code == 2 and "no public key given" in no_key.stderr
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("hello\n")
    result = run("ledger", "verify", "--ledger", path, "--checkpoint", garbage, "--public-key",
                 vkey, "--json")
    error = json.loads(result.stdout)["error"]
    assert result.exit_code == 2 and error.startswith(f"{garbage}: not a signed note"), error
    cosign = run("ledger", "witness", "--checkpoint", garbage, "--public-key", vkey, "--out",
                 tmp_path / "w.txt", "--signing-key", tmp_path / "w.key")
    assert cosign.exit_code == 2 and f"{garbage}: not a signed note" in cosign.stderr
    result = run("ledger", "verify", "--ledger", path, "--checkpoint", tmp_path / "none",
                 "--public-key", vkey)
    assert result.exit_code == 2 and "cannot read the checkpoint" in result.stderr
    assert run("ledger", "verify", "--ledger", path, "--public-key", vkey).exit_code == 2
    bad = run("ledger", "verify", "--ledger", path, "--checkpoint", cp_file, "--public-key",
              vkey.replace("+", "-", 1))
    assert bad.exit_code == 2
    (tmp_path / "afile").write_text("")
    unwritable = run("ledger", "checkpoint", "--ledger", path, "--out",
                     tmp_path / "afile" / "x.txt")
    assert unwritable.exit_code == 2, unwritable.output
    assert unwritable.stderr.startswith(f"error: {tmp_path / 'afile' / 'x.txt'}: cannot write "
                                        "the checkpoint"), unwritable.stderr
    site_key = run("ledger", "checkpoint", "--ledger", path, "--out", tmp_path / "x.txt",
                   "--signing-key", tmp_path / "keys" / "site.key")
    assert site_key.exit_code == 2 and "that is the site key's file" in site_key.stderr
    _edit(path)
    refused = run("ledger", "checkpoint", "--ledger", path, "--out", tmp_path / "x.txt")
    assert refused.exit_code == 1 and "no checkpoint was signed" in refused.stderr
    assert "export 3: content does not match its hash (edited)" in refused.stderr
    assert not (tmp_path / "x.txt").exists()


def test_parsed_checkpoint_roundtrip_and_malformed_texts():
    from forensics.ledger.checkpoint import Checkpoint

    cp = Checkpoint("leaktrace/ledger/ab", 0, merkle.EMPTY_ROOT)
    assert cp.text() == ("leaktrace/ledger/ab\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")
    assert Checkpoint.from_text(cp.text()) == cp
    parsed, note = read_checkpoint(sign_note(cp.text(), SITE_A))
    assert parsed == cp and str(note) == sign_note(cp.text(), SITE_A)
    for bad, message in [("a\n05\n" + cp.text().split("\n")[2] + "\n", "leading zeros"),
                         ("a\n1\nAAAA\n", "not base64 of 32 bytes"),
                         ("a\n1\n", "at least three non-empty lines"),
                         ("a\n\n1\nAAAA\n", "at least three non-empty lines")]:
        with pytest.raises(CheckpointError, match=message):
            Checkpoint.from_text(bad)
    assert Verifier.from_vkey(SITE_A.verifier.vkey) == SITE_A.verifier


def test_cli_never_signs_a_checkpoint_inconsistent_with_the_last_one(ledger_and_checkpoint,
                                                                      tmp_path):
    """C2SP tlog-checkpoint: a log must not sign two inconsistent checkpoints. After honest
    exports a new checkpoint is signed; after a full rewrite with recomputed hashes (a chain that
    verifies) it is refused."""
    path, _ = ledger_and_checkpoint
    key = tmp_path / "keys" / "checkpoint.key"
    assert run("ledger", "checkpoint", "--ledger", path, "--out", tmp_path / "1.cp").exit_code == 0
    with Ledger(path, create=False) as book:
        kept = key.parent / "checkpoints" / f"{book.ledger_id}.checkpoint"
        (fingerprint,) = book.key_usage()
    assert kept.read_text() == (tmp_path / "1.cp").read_text()
    with Ledger(path) as book:
        _record(book, tmp_path, "Dave", key_fingerprint=fingerprint)
    assert run("ledger", "checkpoint", "--ledger", path, "--out", tmp_path / "2.cp").exit_code == 0
    assert kept.read_text().split("\n")[1] == "6"
    _full_rewrite(path)
    with Ledger(path, create=False) as book:
        assert book.check().ok  # the chain cannot tell
    result = run("ledger", "checkpoint", "--ledger", path, "--out", tmp_path / "3.cp")
    assert result.exit_code == 1, result.output
    assert "does not extend the last checkpoint this key signed" in result.stderr
    assert "history rewritten" in result.stderr
    assert not (tmp_path / "3.cp").exists() and kept.read_text().split("\n")[1] == "6"
