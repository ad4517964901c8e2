"""Shared test set-up: where the real chest films live, and a cached reader for them.

The films are not part of the repository. They sit in the shared data folder described by its
``PROVENANCE.md`` (``dicom/`` and ``png/`` sub-folders). :func:`film_data_dir` is the one place
that decides where that folder is:

* the environment variable ``LEAKTRACE_TEST_DATA``, if set;
* otherwise ``<repo>/../shared/data/cxr``, computed from this file's location (not the CWD).

When the folder is missing, every test that needs a film is skipped with the reason, except
under CI (the environment variable ``CI`` set to anything but empty, ``0``, ``false`` or ``no``,
as CI services do with ``CI=true``): there the same message is a failure, so a wrong data path
can never give a green run. When the folder exists, all films listed in :data:`DICOM_FILMS`
must be there (a missing one fails).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

DATA_ENV = "LEAKTRACE_TEST_DATA"

#: The DICOM films of the shared set (PROVENANCE.md, table "DICOM files").
DICOM_FILMS = (
    "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm",
    "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm",
    "nih_cxr14_dx_8bit_1024px_nccid.dcm",
    "philips_cr_mono1_15bit_RG1_J2KI.dcm",
    "philips_cr_mono1_15bit_RG1_JLSN.dcm",
    "philips_cr_mono1_15bit_RG1_UNCR.dcm",
    "siim_acr_cr_jpegbaseline_8bit_1024px.dcm",
    "veterinary_canine_thorax_dx_mono1_8bit.dcm",
)


def film_data_dir() -> Path:
    """The shared film folder: ``$LEAKTRACE_TEST_DATA``, else ``<repo>/../shared/data/cxr``."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    repo = Path(__file__).resolve().parent.parent
    return repo.parent / "shared" / "data" / "cxr"


def film_params(names: tuple[str, ...] | list[str] = DICOM_FILMS) -> list:
    """``pytest.param`` per film name, with the file name as the test id."""
    return [pytest.param(name, id=name) for name in names]


def running_in_ci() -> bool:
    """True when the environment variable ``CI`` is set to a true-ish value (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tools(*tools: str) -> None:
    """Skip the calling test when a command-line tool is not on PATH (fail it under CI, whose
    ``.ci/run`` installs every tool: DCMTK, GDCM's tools, dicom3tools' dciodvfy)."""
    import shutil

    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = (f"{', '.join(missing)} not on PATH (Debian packages: dcmtk, libgdcm-tools, "
               "dicom3tools)")
    if running_in_ci():
        pytest.fail(message + " [CI is set, so this fails instead of skipping]", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared film folder; skips the test when it does not exist (fails it under CI)."""
    folder = film_data_dir()
    if not (folder / "dicom").is_dir():
        message = (f"test films not found: {folder / 'dicom'} does not exist; set {DATA_ENV} to "
                   "the folder holding dicom/ and png/ (see its PROVENANCE.md)")
        if running_in_ci():
            pytest.fail(message + " [CI is set, so this fails instead of skipping]",
                        pytrace=False)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def dicom_films(data_dir: Path) -> dict[str, Path]:
    """{file name: path} of the 8 shared DICOM films; fails if one is missing."""
    films = {name: data_dir / "dicom" / name for name in DICOM_FILMS}
    missing = [name for name, path in films.items() if not path.is_file()]
    if missing:
        pytest.fail(f"{data_dir / 'dicom'} lacks films listed in PROVENANCE.md: {missing}")
    return films


@pytest.fixture(scope="session")
def load_film(dicom_films: dict[str, Path]):
    """``load_film(name) -> Film``, each film read once per session (films are read-only)."""
    from watermark.dicomio import read_film

    @functools.cache
    def _load(name: str):
        return read_film(dicom_films[name])

    return _load


def write_dicom(path: Path, pixels, *, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, bits_stored: int | None = None,
                frames: int | None = None, transfer_syntax: str | None = None) -> Path:
    """Write a small synthetic Secondary Capture DICOM file for tests and return its path.

    ``pixels`` is (rows, columns) for grayscale, (rows, columns, 3) for RGB/YBR_FULL, or with a
    leading frame axis when ``frames`` is given; uint8 or uint16. Written uncompressed
    (Explicit VR Little Endian) unless ``transfer_syntax`` says otherwise.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.ascontiguousarray(pixels)
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    shape = pixels.shape[1:] if frames else pixels.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.ImageType = "TEST", "OT", ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


# -- ledger backends: every ledger-level test runs on SQLite and on a real PostgreSQL --------

#: The ledger backends the ``ledger_url`` fixture runs a test on.
LEDGER_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of this machine's ``postgresql`` package, started for the session in
    a temporary folder on a free loopback port and removed at the end (:mod:`pgserver`).
    Skips the test when the server programs or psycopg are missing (fails it under CI, whose
    ``.ci/run`` installs both)."""
    import importlib.util

    from pgserver import PostgresServer, server_bin_dir

    bin_dir = server_bin_dir()
    missing = []
    if bin_dir is None:
        missing.append("the PostgreSQL server (initdb, pg_ctl; Debian package postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        missing.append("psycopg 3 (pip install 'leaktrace[postgresql]')")
    if missing:
        message = f"{' and '.join(missing)} not installed"
        if running_in_ci():
            pytest.fail(message + " [CI is set, so this fails instead of skipping]",
                        pytrace=False)
        pytest.skip(message)
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - shown with the server's own log
        server.stop()
        detail = getattr(exc, "stderr", "") or ""
        pytest.fail(f"could not start PostgreSQL from {bin_dir}: {exc}\n{detail}\n{server.log()}",
                    pytrace=False)
    yield server
    server.stop()


def new_ledger_location(backend: str, request, folder: Path, name: str = "l"):
    """Where a fresh, empty ledger goes on ``backend``: ``folder/<name>.sqlite``, or a new
    site of the session's PostgreSQL database (``...?site=t<random>``)."""
    if backend == "sqlite":
        return folder / f"{name}.sqlite"
    import secrets

    server = request.getfixturevalue("postgres_server")
    return server.site_url(f"t{secrets.token_hex(6)}")


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_url(request, tmp_path):
    """A fresh ledger location, once per backend (the test id says which): a SQLite path or a
    ``postgresql://`` URL of its own site."""
    return new_ledger_location(request.param, request, tmp_path)
