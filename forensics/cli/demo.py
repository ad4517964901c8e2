"""``leaktrace demo``: the main job end to end on a real film.

The film is NEMA's DICOM WG04 compression sample "RG1" (a Philips CR chest PA, 1841 x 1955,
15 bits stored), installed from PyPI with the MIT-licensed ``pydicom-data`` package. The demo
uses a key and a ledger of its own inside the demo folder, never the site's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from watermark.dicomio import read_film
from watermark.display import render
from watermark.errors import InvalidInputError

from .. import leaks
from ..export import export_film, site_key_for
from ..ledger import Ledger
from ..trace import detect_leak

__all__ = ["demo_film_path", "prepare_folder", "scratch_folder", "run_demo", "RECIPIENTS"]

RECIPIENTS = ("Dr. Ana Alvarez (referring physician)", "Northside Insurance Ltd.")


def demo_film_path() -> Path:
    """Path of RG1_UNCR.dcm from the ``pydicom-data`` package.

    Raises
    ------
    InvalidInputError
        ``pydicom-data`` is not installed.
    """
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file("RG1_UNCR.dcm")
    except Exception:  # pydicom's data manager raises several kinds when a source is missing
        path = None
    if not path:
        raise InvalidInputError("RG1_UNCR.dcm not found: install it with `pip install pydicom-data`")
    return Path(path)


def prepare_folder(folder: str | os.PathLike) -> Path:
    """Create the demo folder (and its ``exports`` sub-folder) if needed; return it.

    Raises
    ------
    InvalidInputError
        The path exists and is not a folder, or the folder cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"{folder}: exists and is not a folder; give a folder for the "
                                "demo's files")
    try:
        (folder / "exports").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"{folder}: cannot create the demo folder "
                                f"({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{folder}: the demo folder is not writable")
    return folder


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """A new temporary folder for the demo (``/tmp/leaktrace-demo-*``), kept when the block
    ends normally (the demo printed its files' paths) and removed, with the demo key and
    ledger in it, when the block raises (an error, Ctrl-C)."""
    folder = Path(tempfile.mkdtemp(prefix="leaktrace-demo-"))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def run_demo(folder: Path, say: Callable[[str], None] = print) -> bool:
    """Run the demo in ``folder``; returns True when the leak was traced to the right recipient.

    Raises
    ------
    LeaktraceError
        The folder cannot be created or written (``InvalidInputError``, naming it), the demo
        film is missing, or a step of the demo failed.
    """
    folder = prepare_folder(folder)
    source = demo_film_path()
    say(f"leaktrace demo in {folder}")
    say(f"film: {source.name} (NEMA WG04 RG1, Philips CR chest PA, from pydicom-data)")
    with Ledger(folder / "ledger.sqlite") as book:
        key, _ = site_key_for(book, folder / "demo.key")  # never a new key beside old exports
        copies = {}
        for i, name in enumerate(RECIPIENTS, start=1):
            out = folder / "exports" / f"copy-{i}" / source.name
            out.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            rec = export_film(source, out, recipient=name, ledger=book, key=key, overwrite=True)
            copies[name] = out
            say(f"  marked a copy for {name!r} (recipient number {rec.recipient_number}): {out} "
                f"({time.perf_counter() - start:.1f} s, SOP Instance UID {rec.output_sop_uid})")

        leaker = RECIPIENTS[0]
        film = read_film(copies[leaker])
        screenshot = leaks.apply(render(film), [("png8", {}), ("long_edge", {"pixels": 1280}),
                                                ("jpeg", {"quality": 70, "colour": True})])
        leak_path = folder / "leaked_on_social_media.jpg"
        leaks.save_image(screenshot, leak_path, quality=95)
        say(f"leak: the copy for {leaker!r} shown with the default window, 8-bit screenshot, "
            f"shrunk to a 1280 px long edge and re-sent as JPEG q70 4:2:0: {leak_path}")

        start = time.perf_counter()
        report = detect_leak(leak_path, ledger=book, key=key)
        say(f"detect ({time.perf_counter() - start:.1f} s): {report.summary()}")

        control = folder / "unmarked_control.jpg"
        leaks.save_image(leaks.apply(render(read_film(source)), [("long_edge", {"pixels": 1280})]),
                         control, quality=70)
        ctrl = detect_leak(control, ledger=book, key=key)
        say(f"control, the unmarked original leaked the same way: {ctrl.decision} "
            f"(p-value {ctrl.detection.p_value:.2g})")
    ok = report.recipient == leaker and ctrl.decision == "not_found"
    say("demo " + ("succeeded: the leaker was named, the unmarked control was not traced"
                   if ok else "FAILED"))
    return ok
