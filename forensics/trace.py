"""Tracing a leaked file back to a recipient in the ledger.

:func:`detect_leak` is the blind path (the leak alone, with the key and the ledger's list of
recipients); it composes :func:`watermark.imageio.read_leak` and :func:`watermark.detect.detect`
and attaches the ledger's names. Marks are tied to the ledger that recorded them: they are
looked for with the site key scoped to the ledger's ``ledger_id``, so another ledger, even one
with the same site key, finds nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from watermark import __version__
from watermark.detect import Detection, detect
from watermark.errors import CapacityError
from watermark.imageio import read_leak
from watermark.keys import SiteKey
from watermark.stats import FALSE_ACCUSATION_RATE

from .ledger import Ledger

__all__ = ["LeakReport", "detect_leak"]


@dataclass(frozen=True)
class LeakReport:
    """A detection result with names, ready to print or to serialise.

    ``recipient`` is the ledger name of the traced recipient, or ``None``.
    """

    leak_path: Path
    leak_sha256: str
    leak_format: str
    width: int
    height: int
    detection: Detection
    recipient: str | None
    names: dict = field(default_factory=dict)
    key_fingerprint: str = ""
    ledger_path: str = ""
    ledger_id: str | None = None
    warnings: list = field(default_factory=list)

    @property
    def decision(self) -> str:
        return self.detection.decision

    def summary(self) -> str:
        """One or two plain sentences for an investigator."""
        d = self.detection
        if d.decision == "traced":
            return (f"TRACED to recipient '{self.recipient}' (number {d.recipient_number}). "
                    f"p-value {d.p_value:.2e}: the probability that a copy not marked for this "
                    f"recipient scores this high is at most {d.p_value:.2e}.")
        text = ("NOT FOUND: no recipient's mark is present at the designed false-accusation "
                f"rate {FALSE_ACCUSATION_RATE:g} (best p-value {d.p_value:.2e}).")
        if d.decoded_number is not None and d.decoded_p_value <= FALSE_ACCUSATION_RATE:
            text += (f" The payload decodes to recipient number {d.decoded_number}, which this "
                     "ledger does not list: is it the right ledger?")
        return text

    def as_dict(self) -> dict:
        """Plain JSON-ready dict; ``recipient``, ``p_value`` and ``decision`` are the contract."""
        d = self.detection
        return {
            "recipient": self.recipient,
            "p_value": d.p_value,
            "decision": d.decision,
            "recipient_number": d.recipient_number,
            "z": d.z,
            "polarity": "as_marked" if d.polarity > 0 else "inverted",
            "working_grid_long_edge": d.long_edge,
            "n_tests": d.n_tests,
            "false_accusation_rate": FALSE_ACCUSATION_RATE,
            "decoded_number": d.decoded_number,
            "decoded_p_value": d.decoded_p_value,
            "candidates": [
                {"recipient": self.names.get(c.number), "recipient_number": c.number,
                 "score": c.z, "p_value": c.p_value}
                for c in d.candidates[:10]
            ],
            "leak": {"path": str(self.leak_path), "sha256": self.leak_sha256,
                     "format": self.leak_format, "width": self.width, "height": self.height},
            "key_fingerprint": self.key_fingerprint,
            "ledger": self.ledger_path,
            "ledger_id": self.ledger_id,
            "summary": self.summary(),
            "warnings": list(self.warnings),
            "leaktrace_version": __version__,
        }


def detect_leak(path: str | os.PathLike, *, ledger: Ledger, key: SiteKey,
                alpha: float = FALSE_ACCUSATION_RATE) -> LeakReport:
    """Blind detection of a leaked file against every recipient in the ledger.

    The marks are looked for with ``key`` scoped to the ledger's ``ledger_id`` (the key the
    exports of this ledger were made with, see :func:`forensics.export.export_film`); a
    schema-1 ledger, which predates ledger binding, is read with ``key`` itself.

    Raises
    ------
    LeaktraceError
        The file cannot be read, or is too small (``CapacityError``); the message names the
        file.
    """
    leak = read_leak(path)
    names = ledger.recipients()
    mark_key = key.scoped(ledger.ledger_id) if ledger.ledger_id is not None else key
    try:
        detection = detect(leak.gray, mark_key, list(names), alpha=alpha)
    except CapacityError as exc:
        raise CapacityError(f"{path}: {exc}") from None
    warnings = []
    used = ledger.key_fingerprints()
    if used and key.fingerprint not in used:
        warnings.append(f"this ledger's exports were made with key(s) {', '.join(sorted(used))}, "
                        f"not with the key given ({key.fingerprint}): no mark can be found with it")
    if not names:
        warnings.append("the ledger lists no recipients: nobody can be named")
    if ledger.ledger_id is None:
        warnings.append("this ledger was made by leaktrace 0.1.0 (schema 1): its marks are not "
                        "tied to it, so a mark recorded in another ledger under the same key "
                        "would be read as one of its recipients")
    recipient = None
    if detection.recipient_number is not None:
        recipient = names.get(detection.recipient_number)
        recorded = ledger.recorded_names().get(detection.recipient_number, set())
        if recorded and recorded != {recipient}:
            warnings.append(f"the ledger's recipients table names recipient "
                            f"{detection.recipient_number} {recipient!r}, but its exports were "
                            f"recorded for {', '.join(repr(n) for n in sorted(recorded))}: the "
                            "ledger was changed; run `leaktrace ledger verify`")
    return LeakReport(
        leak_path=Path(path), leak_sha256=leak.sha256, leak_format=leak.format,
        width=leak.gray.shape[1], height=leak.gray.shape[0], detection=detection,
        recipient=recipient, names=names, key_fingerprint=key.fingerprint,
        ledger_path=str(ledger.path), ledger_id=ledger.ledger_id, warnings=warnings,
    )
