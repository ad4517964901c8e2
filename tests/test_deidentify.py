"""embed --deidentify: PS3.15 Annex E on the shared films and on films made here (issue 15).

Headers: every element of Table E.1-1's Basic Profile left with no identifying value, names in
ISO_IR 100, 144, 192 and without a Specific Character Set, identifiers in sequences and private
elements; the outputs still valid DICOM (dciodvfy: no new errors; DCMTK's dcmdump parses them).
Pixels: identifying text rendered into films here (several fonts, sizes, positions, contrasts,
one turned by 90 degrees) is read by no OCR of the output, while the 'L' and 'PA' markers stay;
the fail-closed refusals; the ledger's mapping back, and trace after de-identification.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from typer.testing import CliRunner

from conftest import film_params, require_tools
from forensics import burnedin, cli, leaks
from forensics.deidentify import (OPTIONS, _table, _vr, deidentify_dataset, identifying_values,
                                  mapping_key)
from forensics.external.dicomtools import dciodvfy_errors
from forensics.ledger import Ledger
from forensics.trace import trace_array
from watermark.dicomio import read_film
from watermark.display import render
from watermark.keys import SiteKey, load_key

runner = CliRunner()
FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"
NIH = "nih_cxr14_dx_8bit_1024px_nccid.dcm"
SIIM = "siim_acr_cr_jpegbaseline_8bit_1024px.dcm"
FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
KEY = SiteKey(bytes(range(32)))


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    for var in ("LEAKTRACE_KEY", "LEAKTRACE_LEDGER"):
        monkeypatch.delenv(var, raising=False)


def run(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _basic_elements(ds: Dataset):
    """(path, tag, value) of every element of the Basic Profile's table, at any depth."""
    table = {int(Tag(*t)) for t in _table() if len(t) == 2}
    out = []

    def walk(d, where):
        for elem in d:
            if int(elem.tag) in table and elem.VR != "SQ":
                out.append((where, int(elem.tag), elem.value))
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    walk(item, where + (int(elem.tag), i))

    walk(ds, ())
    return out


def _check_no_identity_left(source: Dataset, out: Dataset) -> None:
    """No element of the table keeps a non-empty source value, and no name or ID of the
    source appears in any text element of the output."""
    kept = {(w, t): v for w, t, v in _basic_elements(out)}
    for where, tag, value in _basic_elements(source):
        if value in (None, "", b"") or (where, tag) not in kept:
            continue
        if str(value).strip() in ("", "00010101", "000000.00", "ANONYMIZED"):
            continue
        assert str(kept[(where, tag)]) != str(value), (f"{Tag(tag)} kept {value!r}")
    names = set()  # person names and their parts, patient IDs, accession, institution, device
    for _, tag, value in _basic_elements(source):
        if value in (None, "") or not (Tag(tag).group == 0x0010 or _vr(tag) == "PN" or tag in (
                0x00080050, 0x00080080, 0x00081010, 0x00181000)):
            continue
        text = str(value).strip()
        names |= {p for p in [text, *text.split("^")] if len(p) >= 4 and not p.isdigit()}
    text = " ".join(str(e.value) for e in out.iterall()
                    if e.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"))
    for v in names:
        assert v not in text, f"{v!r} left in the output"


@pytest.mark.parametrize("name", film_params())
def test_basic_profile_leaves_no_identifying_value_on_the_shared_films(dicom_films, name):
    source = pydicom.dcmread(dicom_films[name], force=True)
    result = deidentify_dataset(source, key=KEY, options=(), pixels_clean=False)
    out = result.dataset
    _check_no_identity_left(source, out)
    assert out.PatientIdentityRemoved == "NO"  # pixels neither cleaned nor known clean
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM")]
    assert not any(e.tag.is_private for e in out.iterall())
    assert out.StudyInstanceUID.startswith("2.25.") and out.StudyInstanceUID != source.StudyInstanceUID
    # the same key gives the same UIDs and pseudonym; another recipient's key others
    again = deidentify_dataset(source, key=KEY, options=(), pixels_clean=False).dataset
    other = deidentify_dataset(source, key=mapping_key(KEY, "x", "bob"), options=(),
                               pixels_clean=False).dataset
    assert (again.StudyInstanceUID, again.PatientID) == (out.StudyInstanceUID, out.PatientID)
    assert other.StudyInstanceUID != out.StudyInstanceUID and other.PatientID != out.PatientID


def test_options_keep_what_they_name_and_are_coded(dicom_films):
    source = pydicom.dcmread(dicom_films["philips_cr_mono1_15bit_RG1_UNCR.dcm"], force=True)
    source.PatientSex, source.InstitutionName, source.StationName = "F", "St Elsewhere", "CR1"
    out = deidentify_dataset(source, key=KEY, options=list(OPTIONS), pixels_clean=True).dataset
    assert (out.PatientSex, out.InstitutionName, out.StationName) == ("F", "St Elsewhere", "CR1")
    assert out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108", "113109", "113112", "113105", "113101"]
    shift = (np.datetime64("2004-08-26") - np.datetime64(
        f"{out.StudyDate[:4]}-{out.StudyDate[4:6]}-{out.StudyDate[6:]}")).astype(int)
    assert 1 <= shift <= 3650 and out.LongitudinalTemporalInformationModified == "MODIFIED"
    plain = deidentify_dataset(source, key=KEY, options=(), pixels_clean=True).dataset
    assert "InstitutionName" not in plain or plain.InstitutionName != "St Elsewhere"
    assert plain.get("PatientSex", "") == ""


def test_clean_descriptors_keeps_a_descriptor_less_the_other_elements_identities(dicom_films):
    """clean-descriptors takes the header's identifying values out of a descriptor, not the
    descriptor's own text (QA: every descriptor came out empty)."""
    source = pydicom.dcmread(dicom_films["veterinary_canine_thorax_dx_mono1_8bit.dcm"])
    source.PatientName, source.PatientID = "Doe^Johnathan", "MRN884422"
    source.StudyDescription = "Thorax, Johnathan Doe, MRN884422"
    out = deidentify_dataset(source, key=KEY, options=["clean-descriptors"],
                             pixels_clean=True).dataset
    assert out.SeriesDescription == source.SeriesDescription == "CHEST"
    assert out.AcquisitionDeviceProcessingDescription == "CANINE LATERAL THORAX 0-15cm"
    assert out.StudyDescription.startswith("Thorax")
    for gone in ("Johnathan", "Doe", "MRN884422"):
        assert gone not in out.StudyDescription


def test_references_keep_their_sop_class_and_get_keyed_instance_uids(dicom_films):
    """A Referenced SOP Class UID names a kind of object, not a patient: kept (QA: the
    table's action on the sequence replaced it with a random 2.25 UID at every export); the
    Referenced SOP Instance UID gets the recipient's keyed UID, the same at every export."""
    source = pydicom.dcmread(dicom_films["veterinary_canine_thorax_dx_mono1_8bit.dcm"])
    [ref] = source.ReferencedPerformedProcedureStepSequence
    outs = [deidentify_dataset(source, key=KEY, options=(), pixels_clean=True).dataset
            for _ in range(2)]
    got = [o.ReferencedPerformedProcedureStepSequence[0] for o in outs]
    assert all(g.ReferencedSOPClassUID == ref.ReferencedSOPClassUID for g in got)
    assert got[0].ReferencedSOPInstanceUID == got[1].ReferencedSOPInstanceUID
    assert got[0].ReferencedSOPInstanceUID != ref.ReferencedSOPInstanceUID


# -- films made here: character sets, sequences, private elements ---------------------------

NAMES = {"ISO_IR 100": "Müller^Jürgen", "ISO_IR 144": "Иванов^Иван",
         "ISO_IR 192": "山田^太郎", None: "Ångström^Øyvind"}


def _header_film(dicom_films, folder: Path, charset) -> Path:
    ds = pydicom.dcmread(dicom_films[FUJI], force=True)
    name = NAMES[charset]
    ds.PatientID, ds.AccessionNumber, ds.StudyDate = "MRN-884422", "ACC-7781", "20240312"
    ds.InstitutionName, ds.BurnedInAnnotation = "Hôpital Saint-Éloi", "NO"
    if charset:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.OtherPatientNames = name
    else:  # non-ASCII bytes (Latin-1) and no Specific Character Set
        ds.pop("SpecificCharacterSet", None)
        ds.add(DataElement(0x00100010, "PN", name.encode("latin-1")))
    item = Dataset()  # an identifier in a sequence the table does not name
    item.PatientName, item.PatientID = "Doe^Jane", "MRN-884422"
    ds.ViewCodeSequence = [item]
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "OLD-55", "Elsewhere"
    ds.OtherPatientIDsSequence = [other]
    block = ds.private_block(0x0029, "ACME PATIENT 1.0", create=True)
    block.add_new(0x10, "LO", "MRN-884422")
    block.add_new(0x11, "PN", "Doe^Jane")
    path = folder / f"header_{(charset or 'none').replace(' ', '_')}.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("charset", list(NAMES), ids=lambda c: c or "no-charset")
def test_names_in_character_sets_sequences_and_private_elements_are_removed(
        dicom_films, tmp_path, charset):
    require_tools("dciodvfy", "dcmdump")
    src = _header_film(dicom_films, tmp_path, charset)
    site = ["--key", tmp_path / "k.key", "--ledger", tmp_path / "l.db"]
    done = run("embed", src, "--recipient", "alice", "--out", tmp_path / "out", *site,
               "--deidentify", "--json")
    assert done.exit_code == 0, done.output
    out_path = tmp_path / "out" / src.name
    source, out = pydicom.dcmread(src, force=True), pydicom.dcmread(out_path)
    _check_no_identity_left(source, out)
    raw = out_path.read_bytes()
    for needle in (NAMES[charset].split("^")[0], "MRN-884422", "ACC-7781", "Doe", "OLD-55",
                   "Saint", "20240312", "ACME"):
        for codec in ("utf-8", "latin-1", "iso8859-5"):
            try:
                assert needle.encode(codec) not in raw, (needle, codec)
            except UnicodeEncodeError:
                pass
    assert out.PatientIdentityRemoved == "YES"  # Burned In Annotation NO: known clean
    assert out.ViewCodeSequence[0].PatientName == out.PatientName
    assert not any(e.tag.is_private for e in out.iterall())
    assert dciodvfy_errors(out_path) <= dciodvfy_errors(src)
    assert subprocess.run(["dcmdump", str(out_path)], capture_output=True).returncode == 0


# -- the ledger: mapping back, per recipient, trace, older ledgers ----------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory, dicom_films):
    """One study exported de-identified twice for alice and once for bob (Burned In
    Annotation NO), plus the key and ledger."""
    folder = tmp_path_factory.mktemp("deid-ledger")
    ds = pydicom.dcmread(dicom_films[NIH], force=True)
    ds.BurnedInAnnotation, ds.PatientName = "NO", "Doe^John"
    src = folder / "nih.dcm"
    ds.save_as(src)
    site = ["--key", folder / "k.key", "--ledger", folder / "l.db"]
    outs = {}
    for who, out in (("alice", "a1"), ("alice", "a2"), ("bob", "b1")):
        done = run("embed", src, "--recipient", who, "--out", folder / out, *site,
                   "--deidentify", "--deid-option", "retain-longitudinal-modified-dates",
                   "--json")
        assert done.exit_code == 0, done.output
        outs[out] = folder / out / "nih.dcm"
    return folder, src, site, outs


def test_one_recipients_copies_keep_their_relations_and_others_do_not(exported):
    _, src, _, outs = exported
    a1, a2, b1 = (pydicom.dcmread(outs[k]) for k in ("a1", "a2", "b1"))
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "StudyDate"):
        assert a1.get(attr) == a2.get(attr), attr
    assert a1.StudyInstanceUID != b1.StudyInstanceUID and a1.PatientID != b1.PatientID
    assert a1.SOPInstanceUID != a2.SOPInstanceUID  # two marked copies, two instances
    assert a1.SourceImageSequence[-1].ReferencedSOPInstanceUID.startswith("2.25.")


def test_ledger_reidentify_maps_pseudonyms_back(exported):
    _, src, site, outs = exported
    a1 = pydicom.dcmread(outs["a1"])
    done = run("ledger", "reidentify", a1.PatientID, "--ledger", site[3], "--json")
    assert done.exit_code == 0, done.output
    found = json.loads(done.stdout.splitlines()[0])["found"]
    assert [f["recipient_name"] for f in found] == ["alice", "alice"]
    source = pydicom.dcmread(src, stop_before_pixels=True)
    m = found[0]["mapping"]
    assert m["patient_id"] == [source.PatientID, a1.PatientID]
    assert m["study_uid"] == [source.StudyInstanceUID, a1.StudyInstanceUID]
    assert m["patient_name"][0] == "Doe^John"
    assert found[0]["options"] == ["retain-longitudinal-modified-dates"]
    assert isinstance(m["date_shift_days"], int)
    by_uid = run("ledger", "reidentify", a1.SOPInstanceUID, "--ledger", site[3], "--json")
    assert [f["export_id"] for f in json.loads(by_uid.stdout)["found"]] == [found[0]["export_id"]]
    assert run("ledger", "reidentify", "LTNOSUCH", "--ledger", site[3]).exit_code == 1
    with Ledger(site[3], create=False) as book:
        assert book.accesses()[-1].action == "ledger reidentify"


@pytest.mark.parametrize("pipeline", ["screenshot_ui_messenger_1280px_jpeg_q70",
                                      "viewer_png8"])
def test_a_leak_of_a_de_identified_copy_names_its_recipient(exported, pipeline):
    _, _, site, outs = exported
    leak = leaks.apply(render(read_film(outs["b1"])), leaks.PIPELINES[pipeline],
                       np.random.default_rng(3))
    with Ledger(site[3], create=False) as book:
        report = trace_array(leak, ledger=book, key=load_key(site[1])).as_dict()
    assert report["decision"] == "traced" and report["recipient"] == "bob"


def test_an_older_ledger_gets_the_table_and_a_reader_copes_without_it(tmp_path):
    path = tmp_path / "old.db"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE deidentifications")
    with Ledger(path, create=False) as book:  # a reader copes without the table
        assert book.deidentification_of(1) is None and book.reidentify("LT0") == []
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT name FROM sqlite_master WHERE name='deidentifications'"
                              ).fetchone()
    with Ledger(path) as book:  # a writable open adds it
        assert book.deidentification_of(1) is None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name='deidentifications'"
                          ).fetchone()


# -- fail closed ---------------------------------------------------------------------------

def test_burned_in_annotation_missing_or_yes_is_refused_without_clean_pixel_data(
        dicom_films, tmp_path):
    ds = pydicom.dcmread(dicom_films[FUJI], force=True)
    ds.BurnedInAnnotation = "YES"
    yes = tmp_path / "yes.dcm"
    ds.save_as(yes)
    site = ["--key", tmp_path / "k.key", "--ledger", tmp_path / "l.db"]
    for src, said in ((dicom_films[FUJI], "is missing"), (yes, "is YES")):
        done = run("embed", src, "--recipient", "alice", "--out", tmp_path / "out", *site,
                   "--deidentify")
        assert done.exit_code == 2
        assert f"Burned In Annotation {said}" in done.output
        assert "--deid-option clean-pixel-data" in done.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with Ledger(tmp_path / "l.db", create=False) as book:
        assert book.exports() == []


def test_a_batch_is_refused_naming_every_film_that_must_be_cleaned(dicom_films, tmp_path):
    ds = pydicom.dcmread(dicom_films[FUJI], force=True)
    for value in ("YES", "NO"):
        ds.BurnedInAnnotation = value
        ds.save_as(tmp_path / f"{value}.dcm")
    done = run("embed", dicom_films[FUJI], tmp_path / "YES.dcm", tmp_path / "NO.dcm",
               "--recipient", "alice", "--out", tmp_path / "out", "--key", tmp_path / "k.key",
               "--ledger", tmp_path / "l.db", "--deidentify")
    assert done.exit_code == 2
    assert f"{dicom_films[FUJI]} (missing)" in done.output and "YES.dcm (YES)" in done.output
    assert "2 films have" in done.output and "NO.dcm" not in done.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_clean_pixel_data_without_an_ocr_engine_is_refused(dicom_films, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # not importable
    assert burnedin.engine_available() is None
    done = run("embed", dicom_films[FUJI], "--recipient", "alice", "--out", tmp_path / "out",
               "--key", tmp_path / "k.key", "--ledger", tmp_path / "l.db", "--deidentify",
               "--deid-option", "clean-pixel-data")
    assert done.exit_code == 2 and "needs an OCR engine" in done.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unknown_option_or_an_option_without_deidentify_is_a_bad_argument(
        dicom_films, tmp_path):
    site = ["--key", tmp_path / "k.key", "--ledger", tmp_path / "l.db"]
    done = run("embed", dicom_films[FUJI], "--recipient", "a", "--out", tmp_path / "o", *site,
               "--deidentify", "--deid-option", "retain-everything")
    assert done.exit_code == 2 and "unknown --deid-option 'retain-everything'" in done.output
    done = run("embed", dicom_films[FUJI], "--recipient", "a", "--out", tmp_path / "o", *site,
               "--deid-option", "clean-descriptors")
    assert done.exit_code == 2 and "give both" in done.output


# -- burned-in text ------------------------------------------------------------------------

# (text, font file, size px, (x, y) as fractions of the film, grey level, turned 90 degrees)
LABELS = [
    ("DOE^JOHN", "DejaVuSans.ttf", 34, (0.04, 0.04), 255, False),
    ("MRN 884422", "DejaVuSansMono.ttf", 26, (0.55, 0.05), 230, False),
    ("12.03.2024", "DejaVuSerif.ttf", 24, (0.05, 0.14), 170, False),
    ("ST ELSEWHERE", "DejaVuSans-Bold.ttf", 28, (0.90, 0.30), 255, True),
]
MARKERS = [("L", (0.80, 0.62)), ("PA", (0.70, 0.80))]


def _label_film(dicom_films, folder: Path, name: str) -> tuple[Path, dict]:
    ds = pydicom.dcmread(dicom_films[name], force=True)
    ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
    ds.PatientName, ds.PatientID, ds.StudyDate = "Doe^John", "MRN884422", "20240312"
    ds.InstitutionName = "St Elsewhere"
    ds.pop("BurnedInAnnotation", None)
    pixels = ds.pixel_array.astype(np.uint8)
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    im = Image.fromarray(pixels)
    rows, cols = pixels.shape
    marker_boxes = {}
    for text, font, size, (fx, fy), grey, turned in LABELS:
        f = ImageFont.truetype(str(FONTS / font), size)
        left, top, right, bottom = f.getbbox(text)
        tile = Image.new("L", (right + 4, bottom + 4), 0)
        ImageDraw.Draw(tile).text((2, 2), text, fill=255, font=f)
        tile = tile.rotate(90, expand=True) if turned else tile
        x, y = int(fx * cols), int(fy * rows)
        x, y = min(x, cols - tile.width - 2), min(y, rows - tile.height - 2)
        value = 255 - grey if inverted else grey
        im.paste(Image.new("L", tile.size, value), (x, y), tile)
    for text, (fx, fy) in MARKERS:
        f = ImageFont.truetype(str(FONTS / "DejaVuSans-Bold.ttf"), 56)
        x, y = int(fx * cols), int(fy * rows)
        box = ImageDraw.Draw(im).textbbox((x, y), text, font=f)
        ImageDraw.Draw(im).text((x, y), text, fill=0 if inverted else 255, font=f)
        marker_boxes[text] = box
    ds.PixelData = np.asarray(im, dtype=np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.LossyImageCompression = ds.get("LossyImageCompression", "00")
    path = folder / f"labels_{name}"
    ds.save_as(path, enforce_file_format=True)
    return path, marker_boxes


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, dicom_films):
    """The NIH and SIIM films with labels burned in, exported with clean-pixel-data."""
    if burnedin.engine_available() is None:
        pytest.skip("RapidOCR is not installed (pip install 'leaktrace[ocr]')")
    folder = tmp_path_factory.mktemp("deid-pixels")
    site = ["--key", folder / "k.key", "--ledger", folder / "l.db"]
    films = {}
    for name in (NIH, SIIM):
        src, markers = _label_film(dicom_films, folder, name)
        done = run("embed", src, "--recipient", "carol", "--out", folder / "out", *site,
                   "--deidentify", "--deid-option", "clean-pixel-data", "--json")
        assert done.exit_code == 0, done.output
        films[name] = (src, folder / "out" / src.name, markers)
    return folder, site, films


@pytest.mark.parametrize("name", [NIH, SIIM])
def test_the_ocr_reads_the_rendered_labels_in_the_source(cleaned, name):
    src, _, _ = cleaned[2][name]
    film = read_film(src)
    image, scale = burnedin._display(film)
    values = identifying_values(film.dataset)
    read = [b for b in burnedin.read_text(image, scale=scale)
            if burnedin.matches_header(b.text, values)]
    assert len(read) >= 3, [b.text for b in burnedin.read_text(image, scale=scale)]


@pytest.mark.parametrize("name", [NIH, SIIM])
def test_burned_in_labels_are_removed_and_markers_kept(cleaned, name):
    folder, site, films = cleaned
    src, out, markers = films[name]
    source, copy = read_film(src), read_film(out)
    image, scale = burnedin._display(copy)
    values = identifying_values(source.dataset)
    texts = [b.text for b in burnedin.read_text(image, scale=scale)]
    assert not [t for t in texts if burnedin.matches_header(t, values)], texts
    for label, *_ in LABELS:  # none of the rendered text is read in the output
        assert not any(label.replace(" ", "") in t.replace(" ", "").upper() for t in texts)
    shown_src, shown_out = render(source), render(copy)
    for text, (x0, y0, x1, y1) in markers.items():  # the markers' bright strokes are still there
        strokes = shown_src[y0:y1, x0:x1] > 240
        assert strokes.sum() > 50
        assert np.mean(shown_out[y0:y1, x0:x1][strokes]) > 220, text
    assert copy.dataset.BurnedInAnnotation == "NO" and copy.dataset.PatientIdentityRemoved == "YES"
    assert "113101" in [i.CodeValue for i in copy.dataset.DeidentificationMethodCodeSequence]
    with Ledger(site[3], create=False) as book:
        record = book.export_by_output_path(out)
        entry = book.deidentification_of(record.id)
    assert entry["options"] == ["clean-pixel-data"] and entry["mapping"]["text_blanked"] >= 4


def test_ocr_runs_offline(dicom_films, tmp_path):
    """RapidOCR reads from its wheel's models with no network (a new network namespace)."""
    if burnedin.engine_available() is None:
        pytest.skip("RapidOCR is not installed")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    code = ("import numpy as np; from PIL import Image, ImageDraw, ImageFont;"
            "from forensics import burnedin;"
            f"f = ImageFont.truetype({str(FONTS / 'DejaVuSans.ttf')!r}, 32);"
            "im = Image.new('L', (400, 80), 0); ImageDraw.Draw(im).text((10, 20), 'DOE JOHN', fill=255, font=f);"
            "print([b.text for b in burnedin.read_text(np.asarray(im))])")
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "DOE" in done.stdout.replace("0", "O")
