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
    recipient_names: dict = field(default_factory=dict)
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
        if d.decision == "traced" and len(d.recipient_numbers) > 1:
            named = " and ".join(f"'{self.recipient_names[n]}' (number {n}, p-value "
                                 f"{self._p(n):.2e})" for n in d.recipient_numbers)
            return (f"TRACED to {len(d.recipient_numbers)} recipients: {named}. The leak shows "
                    "copies marked for each of them (for example two films side by side); each "
                    "p-value bounds the probability that a copy not marked for that recipient "
                    "scores this high.")
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

    def _p(self, number: int) -> float:
        return next((c.p_value for c in self.detection.candidates if c.number == number), 1.0)

    def as_dict(self) -> dict:
        """Plain JSON-ready dict; ``recipient``, ``p_value`` and ``decision`` are the contract.

        ``recipient`` is the best-scoring named recipient; ``recipients`` lists every named one
        (two when a leak shows two recipients' copies), each with its own p-value.
        """
        d = self.detection
        return {
            "recipient": self.recipient,
            "p_value": d.p_value,
            "decision": d.decision,
            "recipient_number": d.recipient_number,
            "recipients": [{"recipient": self.recipient_names.get(n), "recipient_number": n,
                            "p_value": self._p(n)} for n in d.recipient_numbers],
            "z": d.z,
            "polarity": "as_marked" if d.polarity > 0 else "inverted",
            "search": d.search,
            "geometry": d.geometry,
            "working_grid_long_edge": d.long_edge or None,
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
    # a named recipient is called by the name its exports were recorded under (covered by the
    # hash chain), not by the editable recipients table, whenever the two disagree
    recorded_names = ledger.recorded_names()
    recipient_names = {}
    for number in detection.recipient_numbers:
        table_name = names.get(number)
        recorded = recorded_names.get(number, set())
        recipient_names[number] = table_name
        if recorded and recorded != {table_name}:
            if len(recorded) == 1:
                recipient_names[number] = next(iter(recorded))
            warnings.append(f"the ledger's recipients table names recipient {number} "
                            f"{table_name!r}, but its exports were recorded for "
                            f"{', '.join(repr(n) for n in sorted(recorded))}: the ledger was "
                            "changed; the recorded name is reported; run `leaktrace ledger verify`")
    recipient = recipient_names.get(detection.recipient_number)
    return LeakReport(
        leak_path=Path(path), leak_sha256=leak.sha256, leak_format=leak.format,
        width=leak.gray.shape[1], height=leak.gray.shape[0], detection=detection,
        recipient=recipient, names=names, recipient_names=recipient_names,
        key_fingerprint=key.fingerprint,
        ledger_path=str(ledger.path), ledger_id=ledger.ledger_id, warnings=warnings,
    )
