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
