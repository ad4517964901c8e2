"""Site key: the secret that selects every keyed pattern, and what is derived from it.

This is the only module that sees raw key bytes. Everything else receives either a
:class:`SiteKey` (and asks it for derived values) or the derived values themselves.

The key is 32 random bytes, stored hex-encoded in a file that only its owner can read
(mode 0600). Default location, first match wins:

1. the path given on the command line (``--key PATH``);
2. the environment variable ``LEAKTRACE_KEY``;
3. ``$XDG_CONFIG_HOME/leaktrace/site.key`` (``~/.config/leaktrace/site.key``).

Derived values use HMAC-SHA256 (RFC 2104) with a label per purpose, so patterns for
different purposes are independent and a different key gives unrelated patterns.

A key can be *scoped* to a label (:meth:`SiteKey.scoped`): the scoped key is a new key derived
from the site key, and everything derived from it is unrelated to what the site key, or the
same key scoped to another label, gives. leaktrace marks and detects with the site key scoped
to the ledger's random ``ledger_id``, so a mark recorded in one ledger is not found with
another ledger, even one using the same site key (recipient numbers are per ledger).

A key file that others can read is still loaded, with a warning; only the owner should be
able to read it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import KeyFileError

__all__ = ["SiteKey", "default_key_path", "key_path", "load_key", "create_key",
           "load_or_create_key"]

KEY_BYTES = 32
KEY_ENV = "LEAKTRACE_KEY"


@dataclass(frozen=True)
class SiteKey:
    """A site's secret key.

    Parameters
    ----------
    secret : bytes
        32 bytes. Never printed, logged or stored in the ledger; use :attr:`fingerprint`
        to refer to a key.
    path : Path or None
        The file the key was read from or written to (:func:`load_key`, :func:`create_key`),
        so that messages can name it; ``None`` for a key made in memory or derived
        (:meth:`scoped`). Not part of the key: two keys with the same secret are equal.
    """

    secret: bytes = field(repr=False)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise KeyFileError(f"a site key must be {KEY_BYTES} bytes, got {len(self.secret)}")

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 over a label and the key: names a key, reveals nothing."""
        return hashlib.sha256(b"leaktrace-fingerprint\x00" + self.secret).hexdigest()[:16]

    def scoped(self, label: str) -> SiteKey:
        """A key for one scope (for leaktrace: one ledger), derived from this key.

        The new key's secret is HMAC-SHA256(secret, ``"scope\\x00" + label``) (RFC 2104), so
        its patterns are unrelated to this key's and to those of any other scope, and nobody
        can get from a scoped key back to the site key. Its :attr:`fingerprint` differs from
        the site key's; the ledger records the site key's fingerprint.

        Parameters
        ----------
        label : str
            The scope, e.g. a ledger's ``ledger_id``; any non-empty string (UTF-8).

        Returns
        -------
        SiteKey

        Raises
        ------
        ValueError
            ``label`` is empty.
        """
        if not label:
            raise ValueError("a key scope label must not be empty")
        secret = hmac.new(self.secret, b"scope\x00" + label.encode("utf-8"), hashlib.sha256).digest()
        return SiteKey(secret)

    def digest(self, label: str, data: bytes = b"") -> bytes:
        """HMAC-SHA256 of ``label`` and ``data`` under the key (32 bytes)."""
        return hmac.new(self.secret, label.encode() + b"\x00" + data, hashlib.sha256).digest()

    def rng(self, label: str) -> np.random.Generator:
        """A NumPy generator seeded from the key and ``label``; same key and label, same stream."""
        seed = int.from_bytes(self.digest(label), "big")
        return np.random.Generator(np.random.PCG64(seed))

    def permute_block(self, block: bytes, *, inverse: bool = False) -> bytes:
        """Keyed pseudo-random permutation of a short even-length byte block.

        A balanced Feistel network with 6 rounds whose round function is HMAC-SHA256 under
        the key (Luby & Rackoff, SIAM J. Comput. 17(2), 1988, doi:10.1137/0217022). Used to
        make the codewords of different recipients look unrelated, so that the mark of one
        recipient does not correlate with another's.

        Parameters
        ----------
        block : bytes
            Even length, at most 64 bytes.
        inverse : bool
            Undo the permutation instead.

        Returns
        -------
        bytes
            Same length as ``block``.
        """
        if len(block) % 2 or not block:
            raise ValueError(f"block length must be even and non-zero, got {len(block)}")
        half = len(block) // 2
        left, right = block[:half], block[half:]
        rounds = range(6)
        if not inverse:
            for r in rounds:
                f = self.digest(f"feistel-{r}", right)[:half]
                left, right = right, bytes(a ^ b for a, b in zip(left, f))
            return left + right
        for r in reversed(rounds):
            f = self.digest(f"feistel-{r}", left)[:half]
            left, right = bytes(a ^ b for a, b in zip(right, f)), left
        return left + right


def default_key_path() -> Path:
    """Where the site key lives when ``--key`` is not given (see the module docstring)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "leaktrace" / "site.key"


def key_path(path: str | os.PathLike | None = None) -> Path:
    """The key file meant by ``path``: ``path`` itself (``~`` expanded), or
    :func:`default_key_path` when it is ``None``."""
    return Path(path).expanduser() if path is not None else default_key_path()


def load_key(path: str | os.PathLike | None = None) -> SiteKey:
    """Read a site key file.

    Parameters
    ----------
    path : path-like, optional
        The key file; default :func:`default_key_path`.

    Returns
    -------
    SiteKey
        With :attr:`SiteKey.path` set to the file.

    Raises
    ------
    KeyFileError
        The file does not exist, cannot be read, or does not hold 64 hex digits.

    Warns
    -----
    UserWarning
        The file can be read by its group or by everyone (POSIX permissions); it is used
        anyway, and the message says how to fix it.
    """
    p = key_path(path)
    _warn_if_readable_by_others(p)
    try:
        text = p.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(
            f"{p}: no site key there. Detection needs the key that marked the films "
            "(give it with --key or LEAKTRACE_KEY); `leaktrace embed` creates one on first use."
        ) from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{p}: not a leaktrace site key (expected {2 * KEY_BYTES} hex "
                           "digits; this file is binary)") from None
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read the site key ({exc})") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"{p}: not a leaktrace site key (expected {2 * KEY_BYTES} hex digits)")
    return SiteKey(secret, path=p)


def _warn_if_readable_by_others(p: Path) -> None:
    """Warn when a key file's mode lets the group or everyone read it (POSIX only)."""
    if os.name != "posix":
        return
    try:
        st = p.stat()
    except OSError:
        return  # missing or unreadable: load_key reports it
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode) and mode & 0o044:  # a folder: load_key reports that instead
        warnings.warn(f"{p} is readable by others (mode {mode:04o}); chmod 600 it",
                      UserWarning, stacklevel=3)


def create_key(path: str | os.PathLike | None = None) -> SiteKey:
    """Generate a new key and write it, readable by its owner only (mode 0600).

    To make a key for exports into a ledger, use :func:`forensics.export.site_key_for`, which
    refuses to create one beside a ledger that already holds exports.

    Parameters
    ----------
    path : path-like, optional
        The key file to create; default :func:`default_key_path`. Its folder is created
        (mode 0700) if missing.

    Returns
    -------
    SiteKey
        With :attr:`SiteKey.path` set to the file.

    Raises
    ------
    KeyFileError
        The file already exists (a key is never overwritten) or cannot be written.
    """
    p = key_path(path)
    key = SiteKey(secrets.token_bytes(KEY_BYTES), path=p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{p}: a key file exists already; it is never overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot create the site key ({exc})") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.secret.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


def load_or_create_key(path: str | os.PathLike | None = None) -> tuple[SiteKey, bool]:
    """Load the key, creating it first if it does not exist. Returns ``(key, created)``.

    This knows nothing of a ledger: to export, use :func:`forensics.export.site_key_for`,
    which never creates a key beside a ledger that holds exports made with another one (a
    missing key file there is a mistake to report, not a first run).

    Raises
    ------
    KeyFileError
        As :func:`load_key` and :func:`create_key`.
    """
    p = key_path(path)
    if p.exists():
        return load_key(p), False
    return create_key(p), True
