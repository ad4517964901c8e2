"""Who looked: the access events ``detect``, ``trace``, ``ledger list``, ``ledger export`` and
``ledger audit`` record in the ledger's access log (:class:`forensics.ledger.AccessEvent`).

Who: the name given with ``--operator``, else the OS user (:func:`getpass.getuser`). What: the
leak's SHA-256, or the export ids as ranges with their count. Recorded after the query
answered, through :func:`forensics.ledger.log_access` (a second connection, its own
transaction), so a ledger the investigator may only read still answers the query.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from watermark.errors import LeaktraceError

from .store import AccessEvent

__all__ = ["operator_name", "id_ranges", "leak_sha256_of", "query_event", "MAX_OPERATOR_LENGTH"]

MAX_OPERATOR_LENGTH = 200


def operator_name(operator: str | None = None) -> str:
    """Who is recorded: ``operator`` (NFC, stripped), else the OS user.

    Raises
    ------
    LeaktraceError
        ``operator`` is empty, longer than :data:`MAX_OPERATOR_LENGTH` characters, or holds a
        control character (it goes into an audit message and a syslog line).
    """
    if operator is None:
        try:
            return getpass.getuser()
        except (KeyError, OSError):  # no LOGNAME/USER and a uid without a passwd entry
            return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    name = unicodedata.normalize("NFC", operator).strip()
    if not name:
        raise LeaktraceError("--operator is empty; give who runs the query")
    if len(name) > MAX_OPERATOR_LENGTH:
        raise LeaktraceError(f"--operator has {len(name)} characters; at most "
                             f"{MAX_OPERATOR_LENGTH} are allowed")
    for i, ch in enumerate(name, start=1):
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            raise LeaktraceError(f"--operator {name!r} contains U+{ord(ch):04X} at position "
                                 f"{i}; control characters are not allowed")
    return name


def id_ranges(ids: Iterable[int]) -> str:
    """Ids as sorted ranges, ``"1-40,45,47-48"`` (``""`` for none)."""
    out: list[str] = []
    values = sorted(set(ids))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def leak_sha256_of(path: Path) -> str | None:
    """SHA-256 of the leak file, or None when it cannot be read (a missing file)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def query_event(action: str, who: str, leak: Path, *, result: dict | None = None,
                error: str | None = None) -> AccessEvent:
    """The access event of a ``detect`` or ``trace``: the leak by SHA-256 (and file name),
    outcome ``traced`` (detail: the recipient numbers named), ``not_found`` or ``error``
    (detail: the message)."""
    sha = (result or {}).get("leak", {}).get("sha256") or leak_sha256_of(leak)
    what = {"leak_sha256": sha, "leak_name": Path(leak).name}
    if result is None:
        return AccessEvent(who, action, what, "error", error or "")
    outcome = result.get("decision") or "error"
    detail = ""
    if outcome == "traced":
        numbers = [r["recipient_number"] for r in result.get("recipients") or []
                   if r.get("recipient_number") is not None] or [result.get("recipient_number")]
        detail = ("recipient " if len(numbers) == 1 else "recipients ") + ", ".join(
            str(n) for n in numbers)
    return AccessEvent(who, action, what, outcome, detail)
