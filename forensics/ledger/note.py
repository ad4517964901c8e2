"""Signed notes (C2SP signed-note) with Ed25519 keys: sign, parse, verify, and the key files.

A signed note [1]_ is a UTF-8 text ending in a newline, a blank line, then one or more signature
lines ``— <key name> <base64(4-byte key ID || signature)>`` (em dash U+2014, space). leaktrace
signs its ledger checkpoints (:mod:`forensics.ledger.checkpoint`) this way, and a second site adds its
own signature line to witness one.

Keys
----
Only Ed25519 (RFC 8032 [2]_, signature type ``0x01`` of the note spec) is supported, through the
``cryptography`` package. The key ID is ``SHA-256(key name || 0x0A || 0x01 || public key)``,
first 4 bytes, big-endian (:func:`key_id`). Key names must be non-empty and hold no Unicode
space and no ``+``.

* A **verifier key** (public) is written as the string ``<name>+<8 hex digits of the key
  ID>+<base64(0x01 || 32-byte public key)>`` (the "vkey" of Go's ``golang.org/x/mod/sumdb/note`` [3]_,
  which Sigstore and the transparency-dev witnesses read).
* A **signing key** (private) is a file holding one line
  ``PRIVATE+KEY+<name>+<key ID hex>+<base64(0x01 || 32-byte Ed25519 seed)>``, the same
  package's signer-key encoding, created readable by its owner only (mode 0600, like the site
  key). Its public key is written beside it, in ``<file>.pub``, when it is created.

A signing key is never the site (marking) key: a file holding a site key (64 hex digits) is
refused with a message saying so, and the two are independent random secrets.

Verification follows the spec: a signature line whose name and key ID are not those of a
known key is ignored; one that matches a known key must verify, and a note is accepted only
when a known key's signature verifies (:func:`check_signatures` gives the state of each).

References
----------
.. [1] C2SP, "Note" (signed-note), https://c2sp.org/signed-note, read as the C2SP/C2SP
   repository's ``signed-note.md``.
.. [2] S. Josefsson, I. Liusvaara, "Edwards-Curve Digital Signature Algorithm (EdDSA)",
   RFC 8032, 2017. https://www.rfc-editor.org/rfc/rfc8032
.. [3] Go, ``golang.org/x/mod/sumdb/note`` (verifier and signer key encodings; the test key
   "PeterNeumann" of its tests is used in ours to check byte-for-byte agreement).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import socket
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from watermark.errors import CheckpointError, KeyFileError

__all__ = [
    "MAX_SIGNATURES",
    "SIGNING_KEY_NAME",
    "Note",
    "Signature",
    "Signer",
    "Verifier",
    "add_signature",
    "check_key_name",
    "check_signatures",
    "create_signer",
    "default_signing_key_path",
    "key_id",
    "load_or_create_signer",
    "load_signer",
    "parse_note",
    "read_verifier",
    "sign_note",
]

#: File name of the checkpoint signing key, beside the site key by default.
SIGNING_KEY_NAME = "checkpoint.key"
#: Signature lines accepted in a note (the spec asks for at least 16).
MAX_SIGNATURES = 100
_ED25519 = 0x01
_DASH = "\u2014 "
_PRIVATE_PREFIX = "PRIVATE+KEY+"


def check_key_name(name: str) -> str:
    """Return ``name`` if it can be a note key name, else raise.

    Raises
    ------
    CheckpointError
        Empty, or holding a Unicode space (any category Z character, or a control character
        such as tab or newline) or ``+``.
    """
    if not isinstance(name, str) or not name:
        raise CheckpointError("a key name must be non-empty text")
    for ch in name:
        if ch == "+" or ch.isspace() or unicodedata.category(ch)[0] in ("Z", "C"):
            raise CheckpointError(f"key name {name!r} contains {ch!r} (U+{ord(ch):04X}); a key "
                                  "name must not contain spaces, control characters or '+'")
    return name


def key_id(name: str, public_key: bytes) -> int:
    """The 32-bit key ID of an Ed25519 key: ``SHA-256(name || 0x0A || 0x01 || public_key)``,
    first 4 bytes as a big-endian integer (C2SP signed-note, "Ed25519 signatures")."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 section 4): padding required, nothing else allowed."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not base64: {text!r}") from None
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what} is not in canonical base64: {text!r}")
    return raw


@dataclass(frozen=True)
class Verifier:
    """A public key that checks note signatures.

    Attributes
    ----------
    name : str
    key_id : int
    public_key : bytes
        32 bytes (RFC 8032 encoding).
    """

    name: str
    key_id: int
    public_key: bytes

    @property
    def vkey(self) -> str:
        """The verifier key string ``<name>+<key ID hex>+<base64(0x01 || public key)>``."""
        material = base64.b64encode(bytes([_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{material}"

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse a verifier key string.

        Raises
        ------
        CheckpointError
            Not three ``+``-separated parts, a bad name, a key ID that is not 8 hex digits, key
            material that is not base64 of ``0x01`` and 32 bytes, or a key ID that does not
            belong to that name and key.
        """
        text = vkey.strip()
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise CheckpointError(f"not a verifier key (<name>+<key id>+<key>): {text!r}")
        name, hex_id, material = parts
        check_key_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise CheckpointError(f"verifier key {text!r}: key ID {hex_id!r} is not 8 lower-case "
                                  "hex digits")
        raw = _b64decode(material, f"verifier key {text!r}: the key")
        if len(raw) != 33 or raw[0] != _ED25519:
            raise CheckpointError(f"verifier key {text!r}: not an Ed25519 key (type 0x01 and 32 "
                                  "bytes)")
        verifier = cls(name, int(hex_id, 16), raw[1:])
        if key_id(name, verifier.public_key) != verifier.key_id:
            raise CheckpointError(f"verifier key {text!r}: key ID {hex_id} does not belong to "
                                  "this name and key")
        try:
            verifier._key()
        except ValueError:
            raise CheckpointError(f"verifier key {text!r}: not a valid Ed25519 public key") \
                from None
        return verifier

    def _key(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (64 bytes, without the key ID) is this key's over ``text``."""
        from cryptography.exceptions import InvalidSignature

        try:
            self._key().verify(signature, text)
        except (InvalidSignature, ValueError):
            return False
        return True


class Signer:
    """An Ed25519 signing key with its note key name (:func:`load_signer`,
    :func:`create_signer`).

    Attributes
    ----------
    name : str
    key_id : int
    path : Path or None
        The key file, when the key came from one.
    verifier : Verifier
        The public half.
    """

    def __init__(self, name: str, seed: bytes, *, path: Path | None = None):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        check_key_name(name)
        if len(seed) != 32:
            raise KeyFileError(f"an Ed25519 private key is 32 bytes, got {len(seed)}")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed
        public = self._private.public_key().public_bytes_raw()
        self.name = name
        self.key_id = key_id(name, public)
        self.verifier = Verifier(name, self.key_id, public)
        self.path = path

    def __repr__(self) -> str:  # never the key
        return f"Signer({self.verifier.vkey!r}, path={str(self.path) if self.path else None!r})"

    def sign(self, text: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``text``."""
        return self._private.sign(text)

    def _skey(self) -> str:
        material = base64.b64encode(bytes([_ED25519]) + self._seed).decode()
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id:08x}+{material}"

    @classmethod
    def from_skey(cls, skey: str, *, path: Path | None = None) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<key ID hex>+<base64(0x01 || seed)>``.

        Raises
        ------
        KeyFileError
            Not that form, or a key ID that does not belong to the name and key.
        """
        where = f"{path}: " if path is not None else ""
        text = skey.strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise KeyFileError(f"{where}this is a leaktrace site key (the marking key), not a "
                               "checkpoint signing key; the two must stay separate: give the "
                               f"signing key ({SIGNING_KEY_NAME}, or a new file to create one)")
        parts = text[len(_PRIVATE_PREFIX):].split("+", 2) if text.startswith(_PRIVATE_PREFIX) \
            else []
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise KeyFileError(f"{where}not a checkpoint signing key (expected one line "
                               "PRIVATE+KEY+<name>+<key id>+<key>)")
        try:
            raw = _b64decode(parts[2], "the key")
            signer = cls(parts[0], raw[1:], path=path) if len(raw) == 33 and raw[0] == _ED25519 \
                else None
        except CheckpointError as exc:
            raise KeyFileError(f"{where}not a checkpoint signing key ({exc})") from None
        if signer is None:
            raise KeyFileError(f"{where}not an Ed25519 checkpoint signing key")
        if signer.key_id != int(parts[1], 16):
            raise KeyFileError(f"{where}the key ID {parts[1]} does not belong to this key "
                               "(the file was changed)")
        return signer


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key ID and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id.to_bytes(4, "big") + self.signature).decode()
        return f"{_DASH}{self.name} {blob}\n"


@dataclass(frozen=True)
class Note:
    """A parsed signed note: ``text`` (ending in a newline) and its signature lines in order."""

    text: str
    signatures: tuple[Signature, ...]

    def __str__(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_note(data: str | bytes) -> Note:
    """Split a signed note into its text and signature lines (C2SP signed-note, "Format").

    Raises
    ------
    CheckpointError
        Not UTF-8, a control character other than newline, no blank line before the
        signatures, no signature, a signature line not of the form ``— <name> <base64>``, a
        signature shorter than its 4-byte key ID, or more than :data:`MAX_SIGNATURES`.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"not a signed note: not UTF-8 ({exc})") from None
    bad = next((c for c in data if ord(c) < 0x20 and c != "\n"), None)
    if bad is not None:
        raise CheckpointError(f"not a signed note: it holds the control character "
                              f"U+{ord(bad):04X} (only newlines are allowed)")
    if not data.endswith("\n"):
        raise CheckpointError("not a signed note: it does not end with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise CheckpointError("not a signed note: no blank line between the text and the "
                              "signatures")
    text, block = data[:split + 1], data[split + 2:]
    lines = block.split("\n")[:-1]
    if not lines:
        raise CheckpointError("not a signed note: no signature line after the blank line")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"the note has {len(lines)} signatures; at most {MAX_SIGNATURES} "
                              "are accepted")
    signatures = []
    for line in lines:
        if not line.startswith(_DASH) or line.count(" ") != 2:
            raise CheckpointError(f"not a signature line (— <key name> <signature>): {line!r}")
        name, blob = line[len(_DASH):].split(" ")
        check_key_name(name)
        raw = _b64decode(blob, f"the signature of {name}")
        if len(raw) < 5:
            raise CheckpointError(f"the signature of {name} is too short ({len(raw)} bytes)")
        signatures.append(Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    return Note(text, tuple(signatures))


def sign_note(text: str, *signers: Signer) -> str:
    """``text`` signed by each of ``signers``, as a signed note.

    Raises
    ------
    CheckpointError
        ``text`` is empty, does not end with a newline, or holds a control character other than
        newline.
    """
    if not text or not text.endswith("\n"):
        raise CheckpointError("a note text must be non-empty and end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("a note text must not hold control characters besides newline")
    sigs = tuple(Signature(s.name, s.key_id, s.sign(text.encode())) for s in signers)
    return str(Note(text, sigs))


def add_signature(note: Note | str, signer: Signer) -> str:
    """The note with one more signature line, by ``signer``, over the same text.

    Raises
    ------
    CheckpointError
        The note is malformed, or already has a signature by this key.
    """
    if isinstance(note, str):
        note = parse_note(note)
    if any((s.name, s.key_id) == (signer.name, signer.key_id) for s in note.signatures):
        raise CheckpointError(f"the note is already signed by {signer.name} "
                              f"(key {signer.key_id:08x})")
    extra = Signature(signer.name, signer.key_id, signer.sign(note.text.encode()))
    return str(Note(note.text, note.signatures + (extra,)))


def check_signatures(note: Note, verifiers: list[Verifier]) -> dict[Verifier, str]:
    """The state of each verifier's signature on ``note``.

    Returns
    -------
    dict
        Per verifier: ``"valid"`` (a signature line with its name and key ID verifies over the
        text), ``"invalid"`` (one has its name and ID but does not verify: the text was changed
        after signing, or the line forged) or ``"absent"`` (no line with its name and ID; lines
        of other keys are ignored, as the spec requires). A verifier with several lines is
        ``"invalid"`` if any of them fails.
    """
    states = {}
    text = note.text.encode()
    for v in verifiers:
        mine = [s for s in note.signatures if (s.name, s.key_id) == (v.name, v.key_id)]
        if not mine:
            states[v] = "absent"
        else:
            states[v] = "valid" if all(v.verify(text, s.signature) for s in mine) else "invalid"
    return states


def default_signing_key_path() -> Path:
    """``checkpoint.key`` beside the site key (:func:`watermark.keys.default_key_path`:
    ``$LEAKTRACE_KEY``'s folder, else ``$XDG_CONFIG_HOME/leaktrace``)."""
    from watermark.keys import default_key_path

    return default_key_path().with_name(SIGNING_KEY_NAME)


def _public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def load_signer(path: str | os.PathLike) -> Signer:
    """Read a signing key file.

    Raises
    ------
    KeyFileError
        Missing, unreadable, a site key, or not a signing key (:meth:`Signer.from_skey`).
    """
    from watermark.keys import _warn_if_readable_by_others

    p = Path(path).expanduser()
    _warn_if_readable_by_others(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{p}: no checkpoint signing key there (`leaktrace ledger "
                           "checkpoint` creates one on first use)") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise KeyFileError(f"{p}: cannot read the checkpoint signing key ({exc})") from None
    return Signer.from_skey(text, path=p)


def default_key_name() -> str:
    """``<host name>/leaktrace``, with anything a key name cannot hold replaced by ``-``."""
    host = re.sub(r"[\s+]", "-", socket.gethostname() or "") or "localhost"
    return f"{host}/leaktrace"


def create_signer(path: str | os.PathLike, name: str | None = None) -> Signer:
    """Generate a new Ed25519 signing key, write it (mode 0600) and its public key
    (``<path>.pub``, the verifier key string, mode 0644).

    Parameters
    ----------
    path : path-like
        The key file to create; its folder is created (mode 0700) if missing.
    name : str, optional
        The key name; default :func:`default_key_name`.

    Raises
    ------
    KeyFileError
        The file exists (a key is never overwritten), is the site key's path, or cannot be
        written.
    CheckpointError
        A ``name`` that cannot be a key name.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    from watermark.keys import default_key_path

    p = Path(path).expanduser()
    if p.resolve() == default_key_path().resolve():
        raise KeyFileError(f"{p}: that is the site key's file; the checkpoint signing key must "
                           "be a separate file")
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                                      NoEncryption())
    signer = Signer(check_key_name(name) if name is not None else default_key_name(), seed,
                    path=p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{p}: a key file exists already; it is never overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot create the checkpoint signing key ({exc})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(signer._skey() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        from watermark._files import atomic_write

        atomic_write(_public_path(p), (signer.verifier.vkey + "\n").encode(), mode=0o644)
    except OSError as exc:
        raise KeyFileError(f"{_public_path(p)}: the signing key was created but its public key "
                           f"could not be written ({exc})") from None
    return signer


def load_or_create_signer(path: str | os.PathLike | None = None,
                          name: str | None = None) -> tuple[Signer, bool]:
    """Load the signing key at ``path`` (default :func:`default_signing_key_path`), creating it
    first if it does not exist. Returns ``(signer, created)``.

    Raises
    ------
    KeyFileError
        As :func:`load_signer` and :func:`create_signer`, or an existing key whose name is not
        ``name`` (when given).
    """
    p = Path(path).expanduser() if path is not None else default_signing_key_path()
    if p.exists():
        signer = load_signer(p)
        if name is not None and signer.name != name:
            raise KeyFileError(f"{p}: this signing key is named {signer.name!r}, not {name!r}; "
                               "a key's name is fixed when it is created")
        return signer, False
    return create_signer(p, name), True


def read_verifier(value: str | os.PathLike) -> Verifier:
    """A verifier key given as the string itself or as a file holding it (``<key>.pub``).

    Raises
    ------
    CheckpointError
        Neither a readable file nor a verifier key string, or a malformed key.
    """
    text = str(value)
    if text.count("+") >= 2 and not Path(text).exists():
        return Verifier.from_vkey(text)
    p = Path(text).expanduser()
    try:
        content = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{text}: neither a verifier key (<name>+<key id>+<key>) nor a "
                              "file holding one") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{p}: cannot read the public key ({exc})") from None
    if content.startswith(_PRIVATE_PREFIX):
        raise CheckpointError(f"{p}: this is a private signing key; give its public key "
                              f"({_public_path(p).name}, or the verifier key string)")
    try:
        return Verifier.from_vkey(content)
    except CheckpointError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
