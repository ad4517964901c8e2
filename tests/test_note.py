"""C2SP signed notes with Ed25519: the Go reference key and note byte for byte, parsing, the
verification rules of the spec, and the signing key files."""

import stat

import pytest

from forensics.ledger import note
from watermark.errors import CheckpointError, KeyFileError

# The example key pair and note of golang.org/x/mod/sumdb/note's tests (note_test.go), which the
# C2SP signed-note spec describes; Ed25519 is deterministic (RFC 8032), so our signature must be
# the published one exactly.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + ("\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1F"
                     "FYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")


def test_go_reference_key_and_note_byte_for_byte():
    signer = note.Signer.from_skey(GO_SKEY)
    assert signer.verifier.vkey == GO_VKEY
    assert signer.key_id == 0xc74f20a3 == note.key_id("PeterNeumann", signer.verifier.public_key)
    assert note.sign_note(GO_TEXT, signer) == GO_NOTE
    assert signer._skey() == GO_SKEY
    verifier = note.Verifier.from_vkey(GO_VKEY)
    parsed = note.parse_note(GO_NOTE)
    assert parsed.text == GO_TEXT and str(parsed) == GO_NOTE
    assert note.check_signatures(parsed, [verifier]) == {verifier: "valid"}
    assert "AYEKFALV" not in repr(signer)  # the private key never shows


def test_a_changed_text_or_signature_does_not_verify():
    verifier = note.Verifier.from_vkey(GO_VKEY)
    changed = note.parse_note(GO_NOTE.replace("cryptography", "cryptographY"))
    assert note.check_signatures(changed, [verifier]) == {verifier: "invalid"}
    other = note.Signer("PeterNeumann", bytes(32))  # same name, another key: another key ID
    forged = note.parse_note(note.sign_note(GO_TEXT, other))
    assert note.check_signatures(forged, [verifier]) == {verifier: "absent"}


def test_unknown_signature_lines_are_ignored_and_witness_lines_added():
    go = note.Signer.from_skey(GO_SKEY)
    witness = note.Signer("witness.example/w1", bytes(range(32)))
    cosigned = note.add_signature(GO_NOTE, witness)
    assert cosigned.startswith(GO_NOTE) and cosigned.count("\n\u2014 ") == 2
    parsed = note.parse_note(cosigned)
    states = note.check_signatures(parsed, [go.verifier, witness.verifier])
    assert states == {go.verifier: "valid", witness.verifier: "valid"}
    assert note.check_signatures(parsed, [go.verifier]) == {go.verifier: "valid"}
    with pytest.raises(CheckpointError, match="already signed by witness.example/w1"):
        note.add_signature(cosigned, witness)


@pytest.mark.parametrize("bad, message", [
    (GO_TEXT, "no blank line"),
    (GO_TEXT + "\n", "no signature line"),
    (GO_NOTE[:-1], "does not end with a newline"),
    (GO_NOTE.replace("\u2014", "-"), "not a signature line"),
    (GO_NOTE.replace("problem,", "problem,\t"), "control character U\\+0009"),
    (GO_NOTE.replace("x08go", "x08g!"), "not base64"),
    (GO_TEXT + "\n\u2014 PeterNeumann AAAA\n", "too short"),
    (b"\xff\xfe" + GO_NOTE.encode(), "not UTF-8"),
])
def test_malformed_notes_are_refused(bad, message):
    with pytest.raises(CheckpointError, match=message):
        note.parse_note(bad)


@pytest.mark.parametrize("bad", [
    GO_VKEY.replace("c74f20a3", "c74f20a4"),  # key ID of another key
    GO_VKEY.replace("+ARpc", "+AhpC"),        # another algorithm byte
    "PeterNeumann+c74f20a3",                  # no key
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in the name
    GO_VKEY[:-1],                             # truncated base64
])
def test_mangled_verifier_keys_are_refused(bad):
    with pytest.raises(CheckpointError):
        note.Verifier.from_vkey(bad)


def test_signing_key_file_is_private_has_its_public_key_and_is_never_overwritten(tmp_path):
    path = tmp_path / "keys" / "checkpoint.key"
    signer, created = note.load_or_create_signer(path, "site-a.example/leaktrace")
    assert created and signer.name == "site-a.example/leaktrace"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pub = path.with_name("checkpoint.key.pub")
    assert pub.read_text() == signer.verifier.vkey + "\n"
    assert note.read_verifier(pub) == signer.verifier == note.read_verifier(signer.verifier.vkey)
    again, created = note.load_or_create_signer(path)
    assert not created and again.verifier == signer.verifier
    with pytest.raises(KeyFileError, match="exists already"):
        note.create_signer(path)
    with pytest.raises(KeyFileError, match="named 'site-a.example/leaktrace', not 'other'"):
        note.load_or_create_signer(path, "other")
    with pytest.raises(CheckpointError, match="private signing key"):
        note.read_verifier(path)


def test_the_site_key_is_never_a_signing_key(tmp_path, monkeypatch):
    from watermark.keys import create_key

    site = tmp_path / "site.key"
    create_key(site)
    with pytest.raises(KeyFileError, match="leaktrace site key \\(the marking key\\)"):
        note.load_signer(site)
    monkeypatch.setenv("LEAKTRACE_KEY", str(site))
    assert note.default_signing_key_path() == tmp_path / "checkpoint.key"
    with pytest.raises(KeyFileError, match="that is the site key's file"):
        note.create_signer(site)


def test_a_changed_signing_key_file_is_refused(tmp_path):
    path = tmp_path / "checkpoint.key"
    note.create_signer(path, "a")
    text = path.read_text()
    path.write_text(text.replace("PRIVATE+KEY+a+", "PRIVATE+KEY+b+"))
    with pytest.raises(KeyFileError, match="does not belong to this key"):
        note.load_signer(path)
    path.write_text("hello\n")
    with pytest.raises(KeyFileError, match="not a checkpoint signing key"):
        note.load_signer(path)
    with pytest.raises(KeyFileError, match="no checkpoint signing key there"):
        note.load_signer(tmp_path / "none.key")
