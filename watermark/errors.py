"""Errors raised by leaktrace.

Every error a user can cause derives from :class:`LeaktraceError`, so a command-line front end
can catch exactly this class, print the message and exit with a documented code, without a
traceback. Messages name the file and the problem (and, for DICOM, the element and its value).
"""

from __future__ import annotations

__all__ = [
    "LeaktraceError",
    "InvalidInputError",
    "UnsupportedImageError",
    "CapacityError",
    "KeyFileError",
    "LedgerError",
    "LedgerKeyError",
    "CheckpointError",
]


class LeaktraceError(Exception):
    """Base class of every error leaktrace raises on purpose."""


class InvalidInputError(LeaktraceError, ValueError):
    """A file cannot be read or is not an image (missing, truncated, not DICOM, no pixels)."""


class UnsupportedImageError(LeaktraceError, ValueError):
    """A readable image that leaktrace does not handle (RGB DICOM, multi-frame, bit depth...)."""


class CapacityError(LeaktraceError, ValueError):
    """An image too small to carry the payload (embed) or to hold a detectable mark (detect)."""


class KeyFileError(LeaktraceError):
    """The site key is missing, unreadable or malformed."""


class LedgerError(LeaktraceError):
    """The export ledger cannot be opened, is not a leaktrace ledger, or failed a check."""


class LedgerKeyError(KeyFileError, LedgerError):
    """An export under a site key that does not belong to the ledger, refused.

    Raised when a ledger that holds exports is asked to record one made with a key none of its
    exports were made with, or when the key file is missing beside such a ledger (no new key
    is created then). The message names the ledger, the key file and both fingerprints.

    Attributes
    ----------
    ledger_path : str
        The ledger.
    key_fingerprint : str or None
        The fingerprint of the key given; ``None`` when its file does not exist.
    key_path : str or None
        The key file, when known.
    ledger_fingerprints : dict
        ``{fingerprint: number of exports}`` of the keys the ledger's exports were made with,
        oldest first.
    """

    def __init__(self, message: str, *, ledger_path: str = "", key_fingerprint: str | None = None,
                 key_path: str | None = None, ledger_fingerprints: dict | None = None):
        super().__init__(message)  # only the message in args: the error pickles like the others
        self.ledger_path = ledger_path
        self.key_fingerprint = key_fingerprint
        self.key_path = key_path
        self.ledger_fingerprints = dict(ledger_fingerprints or {})


class CheckpointError(LeaktraceError):
    """A signed ledger checkpoint, signed note or verifier key that is malformed or cannot be
    used (not a note, not a checkpoint, a bad key string, a ledger that cannot be
    checkpointed). A checkpoint that is well formed but does not match the ledger, or whose
    signature does not verify, is not an error: it is a finding of the check."""
