"""What the benchmark scripts share: where the films are and how a run describes itself.

Both live in :mod:`forensics.bench` (``leaktrace bench`` uses them too); this module keeps
the scripts' imports working.
"""

from __future__ import annotations

from pathlib import Path

from forensics.bench import DATA_ENV, film_data_dir, run_description

__all__ = ["DATA_ENV", "film_data_dir", "run_description", "png_film_as_dicom", "plot_right_rates"]


def png_film_as_dicom(png: Path, out: Path) -> Path:
    """Wrap a shared PNG/JPEG film as an 8-bit MONOCHROME2 Secondary Capture DICOM file, so that
    it can be exported through the ledger like a DICOM film. UIDs are derived from the file
    name (the same film always gets the same SOP Instance UID)."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[png.name, "sop"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[png.name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[png.name, "series"])
    ds.PatientID, ds.Modality, ds.ImageType = png.stem[:64], "OT", ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def plot_right_rates(summary: list[dict], path: Path, *, target: float, title: str) -> None:
    """Horizontal bars per pipeline: right-recipient rate (tan: stretch pipelines), wrong rate
    in red, the target as a dashed line; ``summary`` rows need ``pipeline``, ``stretch``,
    ``right_rate``, ``wrong`` and ``queries``. Written to ``path`` (PNG)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["pipeline"] for s in summary]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y, [100 * s["right_rate"] for s in summary],
            color=["#c98" if s["stretch"] else "#4a7" for s in summary])
    ax.barh(y, [100 * s["wrong"] / s["queries"] for s in summary], color="#d22")
    ax.axvline(target, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"right recipient, % of leaks (red: wrong recipient; dashed: {target:g} %)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
