"""Atomic file writes, for everything leaktrace writes (DICOM copies, ledger exports,
evidence reports)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, flushed and
    fsync-ed, then moved over ``path`` with :func:`os.replace`.

    A reader sees either the old file or the complete new one, never a part. On any error the
    temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
        The file to write; its folder must exist.
    data : bytes
    mode : int
        Permission bits of the new file (default 0600: readable by its owner only, like the
        ledger whose content these files carry).

    Raises
    ------
    OSError
        The folder cannot be written, the disk is full, ...
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
