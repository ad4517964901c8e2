"""Re-encode DICOM files with other projects' encoders: DCMTK, GDCM and OpenJPH.

A PACS stores and sends films in many transfer syntaxes (PS3.5 Annex A), written by encoders
that are not ours. The tests and benchmarks check that leaktrace reads what those encoders
write (as sources for ``embed`` and as leaks for ``detect``/``trace``); this module is the one
list of how such files are made. It belongs to the lab side (tests, benchmarks, leak
simulation): the product never calls it.

Every encoding in :data:`ENCODINGS` starts from an uncompressed file: the source itself, or a
copy pydicom writes after decoding it, because DCMTK's free build reads neither JPEG 2000 nor
every syntax a source may come in. DCMTK and GDCM are run as the command-line tools Debian ships
(packages ``dcmtk`` and ``libgdcm-tools``); HTJ2K, which neither writes, is coded by
OpenJPH through imagecodecs and put into the file by pydicom (``pydicom.encaps``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import uid

from watermark import dicomio  # noqa: F401  (registers the imagecodecs decoder with pydicom)
from watermark.errors import LeaktraceError

__all__ = ["Encoding", "ENCODINGS", "ToolMissingError", "dcmtk_jpeg_extended", "reencode",
           "missing_tools", "dciodvfy_errors"]


class ToolMissingError(LeaktraceError):
    """The command-line tool an encoding needs is not on ``PATH``."""


@dataclass(frozen=True)
class Encoding:
    """One way a PACS writes a film.

    Attributes
    ----------
    name : str
        Identifier, ``<tool>_<codec>``.
    argv : tuple of str
        The command, without the input and output paths (appended in that order). Empty for
        the in-process OpenJPH encoding.
    transfer_syntax : pydicom.uid.UID
        The (0002,0010) Transfer Syntax UID the tool writes.
    lossless : bool
        The tool's output decodes to the input's values exactly (when Bits Stored fits).
    max_bits : int
        Most Bits Stored the codec keeps; above it the tool rescales the values to this
        many bits (DCMTK's JPEG: 8 for baseline, 12 for extended).
    package : str
        The Debian package (or pip requirement) that provides the tool.
    """

    name: str
    argv: tuple[str, ...]
    transfer_syntax: uid.UID
    lossless: bool
    max_bits: int
    package: str

    @property
    def command(self) -> str:
        """The command line as a user would type it (``IN`` and ``OUT`` for the files)."""
        if not self.argv:
            return "imagecodecs.htj2k_encode (OpenJPH), encapsulated with pydicom"
        return " ".join((*self.argv, "IN", "OUT"))


def _e(name, argv, syntax, lossless, max_bits, package):
    return name, Encoding(name, tuple(argv), uid.UID(syntax), lossless, max_bits, package)


def dcmtk_jpeg_extended(quality: int) -> Encoding:
    """DCMTK's 12-bit lossy JPEG (``dcmcjpeg +ee +q QUALITY``, JPEG Extended, Process 2 and 4)
    at an IJG ``quality`` of 1..100."""
    return Encoding(f"dcmtk_jpeg_extended_q{quality}", ("dcmcjpeg", "+ee", "+q", str(quality)),
                    uid.JPEGExtended12Bit, False, 12, "dcmtk")


ENCODINGS: dict[str, Encoding] = dict([
    _e("dcmtk_jpeg_baseline", ["dcmcjpeg", "+eb"], uid.JPEGBaseline8Bit, False, 8, "dcmtk"),
    ("dcmtk_jpeg_extended_q80", dcmtk_jpeg_extended(80)),
    _e("dcmtk_jpeg_lossless", ["dcmcjpeg", "+el"], uid.JPEGLossless, True, 16, "dcmtk"),
    _e("dcmtk_jpeg_lossless_sv1", ["dcmcjpeg", "+e1"], uid.JPEGLosslessSV1, True, 16, "dcmtk"),
    # one frame in many fragments of at most 16 KB (PS3.5 A.4), as some archives write them
    _e("dcmtk_jpeg_lossless_fragments", ["dcmcjpeg", "+el", "+fs", "16"], uid.JPEGLossless, True,
       16, "dcmtk"),
    _e("dcmtk_jpegls_lossless", ["dcmcjpls", "+el"], uid.JPEGLSLossless, True, 16, "dcmtk"),
    _e("dcmtk_jpegls_near2", ["dcmcjpls", "+en"], uid.JPEGLSNearLossless, False, 16, "dcmtk"),
    _e("dcmtk_rle", ["dcmcrle"], uid.RLELossless, True, 16, "dcmtk"),
    _e("dcmtk_deflated", ["dcmconv", "+td"], uid.DeflatedExplicitVRLittleEndian, True, 16,
       "dcmtk"),
    _e("dcmtk_big_endian", ["dcmconv", "+tb"], uid.ExplicitVRBigEndian, True, 16, "dcmtk"),
    _e("gdcm_j2k", ["gdcmconv", "--j2k"], uid.JPEG2000Lossless, True, 16, "libgdcm-tools"),
    _e("gdcm_jpegls", ["gdcmconv", "--jpegls"], uid.JPEGLSLossless, True, 16, "libgdcm-tools"),
    _e("gdcm_jpeg", ["gdcmconv", "--jpeg"], uid.JPEGLosslessSV1, True, 16, "libgdcm-tools"),
    _e("openjph_htj2k", [], uid.HTJ2KLossless, True, 16, "imagecodecs"),
])
"""Encoding name -> :class:`Encoding`, in the order of the docs' table."""


def missing_tools(names: list[str] | None = None) -> list[str]:
    """The command-line tools that ``names`` (default: every encoding) need and ``PATH`` lacks."""
    tools = {ENCODINGS[n].argv[0] for n in (names or ENCODINGS) if ENCODINGS[n].argv}
    return sorted(t for t in tools if shutil.which(t) is None)


def reencode(source: str | os.PathLike, output: str | os.PathLike,
             encoding: str | Encoding) -> Path:
    """Write ``source`` re-encoded as ``encoding`` to ``output``.

    Parameters
    ----------
    source : str or os.PathLike
        A single-frame DICOM file pydicom can decode (any syntax leaktrace reads).
    output : str or os.PathLike
        The file to write; replaced if present. ``source`` is never modified.
    encoding : str or Encoding
        A key of :data:`ENCODINGS`, or an :class:`Encoding` (another quality, say).

    Returns
    -------
    pathlib.Path
        ``output``.

    Raises
    ------
    KeyError
        Unknown ``encoding`` (the message lists the known ones).
    ToolMissingError
        The tool is not installed; the message names the package.
    LeaktraceError
        The tool failed, or wrote another transfer syntax than expected; the message has the
        command and the tool's error output.
    """
    if isinstance(encoding, Encoding):
        recipe = encoding
    elif encoding in ENCODINGS:
        recipe = ENCODINGS[encoding]
    else:
        raise KeyError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
    source, output = Path(source), Path(output)
    if recipe.argv and shutil.which(recipe.argv[0]) is None:
        raise ToolMissingError(f"{recipe.argv[0]} is not on PATH: install the "
                               f"'{recipe.package}' package (Debian: apt install {recipe.package})")
    with tempfile.TemporaryDirectory(prefix="leaktrace-reencode-") as work:
        native = _native(source, Path(work) / "native.dcm")
        if recipe.argv:
            argv = [*recipe.argv, str(native), str(output)]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0 or not output.exists():
                raise LeaktraceError(f"{source}: '{' '.join(argv)}' failed (exit "
                                     f"{done.returncode}): {done.stderr.strip() or done.stdout}")
        else:
            _htj2k(native, output)
    written = pydicom.dcmread(output, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if written != recipe.transfer_syntax:
        raise LeaktraceError(f"{output}: {recipe.command} wrote {written.name}, "
                             f"not {recipe.transfer_syntax.name}")
    return output


def _native(source: Path, spare: Path) -> Path:
    """``source`` itself if it is an uncompressed file with File Meta, else an uncompressed
    copy of it written to ``spare``."""
    ds = pydicom.dcmread(source, force=True)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_compressed and ds.preamble is not None:
        return source
    if syntax is not None and syntax.is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.save_as(spare, enforce_file_format=True)
    return spare


def dciodvfy_errors(path: str | os.PathLike) -> set[str]:
    """The errors dicom3tools' IOD validator ``dciodvfy`` reports for a file.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM file.

    Returns
    -------
    set of str
        Its lines that start with ``Error``, with the quoted values (``<...>``) and value
        indices (``[1]``) cut out, so that two copies of one object can be compared: the
        errors of an output that its input does not have are the ones the writer added.

    Raises
    ------
    ToolMissingError
        ``dciodvfy`` is not on ``PATH`` (Debian package ``dicom3tools``).
    """
    if shutil.which("dciodvfy") is None:
        raise ToolMissingError("dciodvfy is not on PATH: install the 'dicom3tools' package "
                               "(Debian: apt install dicom3tools)")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                          errors="replace")  # values it quotes may be in any character set
    return {re.sub(r"<[^>]*>|\[\d+\]", "", line).strip()
            for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


def _htj2k(native: Path, output: Path) -> None:
    """HTJ2K lossless (1.2.840.10008.1.2.4.201) by OpenJPH (through imagecodecs)."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(native)
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(ds.pixel_array, level=0)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = uid.HTJ2KLossless
    ds.save_as(output, enforce_file_format=True)
