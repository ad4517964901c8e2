"""What the benchmark scripts share: where the films are and how a run describes itself."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

DATA_ENV = "LEAKTRACE_TEST_DATA"


def film_data_dir() -> Path:
    """The shared film folder: ``$LEAKTRACE_TEST_DATA``, else ``<repo>/../shared/data/cxr``
    (the same rule as the tests' ``conftest.film_data_dir``)."""
    base = os.environ.get(DATA_ENV)
    return Path(base) if base else Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"


def run_description(**extra) -> dict:
    """The command line and the machine, recorded with every benchmark's numbers."""
    return {"command": " ".join([Path(sys.executable).name] + sys.argv),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version(), "cpus": os.cpu_count(), **extra}}


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
