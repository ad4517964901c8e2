"""The evidence report: a real film marked for two recipients (one with markup in the name),
one copy leaked with its top quarter cut off, detected blind; the report is written with the
original and the leak placed in its frame (known exactly from the crop), and without them."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from forensics import leaks
from forensics.export import export_film
from forensics.ledger import Ledger
from forensics.report import (ReportError, _plain, blind_evidence, p_value_in_words,
                              write_report)
from forensics.trace import detect_leak
from watermark.dicomio import read_film
from watermark.display import render
from watermark.imageio import read_leak
from watermark.keys import SiteKey

NIH = "nih_cxr14_dx_8bit_1024px_nccid.dcm"
FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"  # small: a fast not-found
KEY = SiteKey(bytes(range(7, 39)))
LEAKER = "Dr. Ana Alvarez"
HOSTILE = '<script>alert("x")</script> & Co'
CUT = 0.25


class _Page(HTMLParser):
    """Collects the text, the tags and the image sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.text, self.tags, self.images, self.stack = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _pngs(page: _Page) -> list:
    out = []
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        im.load()
        out.append(im)
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory, dicom_films):
    """The ledger, the leak and its blind detection with the informed fields known here."""
    folder = tmp_path_factory.mktemp("report")
    with Ledger(folder / "ledger.sqlite") as book:
        export_film(dicom_films[NIH], folder / "hostile.dcm", recipient=HOSTILE, ledger=book,
                    key=KEY)
        record = export_film(dicom_films[NIH], folder / "ana.dcm", recipient=LEAKER,
                             ledger=book, key=KEY)
    display = render(read_film(record.output_path))
    leak_path = folder / "leak.jpg"
    leaks.save_image(leaks.crop_top(leaks.quantize_8bit(display), fraction=CUT), leak_path,
                     quality=85)
    with Ledger(folder / "ledger.sqlite", create=False) as book:
        detection = detect_leak(leak_path, ledger=book, key=KEY)
        check = book.check()
    assert detection.decision == "traced" and detection.recipient == LEAKER
    leak = read_leak(leak_path)
    original = leaks.to_uint8(render(read_film(dicom_films[NIH])))
    cut = original.shape[0] - leak.gray.shape[0]
    aligned = np.full(original.shape, np.nan)
    aligned[cut:] = leak.gray  # the crop removed exactly the top `cut` rows
    evidence = blind_evidence(detection.as_dict(), check.as_dict())
    informed = dict(evidence, mode="informed", source={
        "sop_instance_uid": record.source_sop_uid, "path": record.source_path,
        "export": record.as_dict(), "export_time": record.created_utc,
    }, alignment={"transform": [[1.0, 0.0, 0.0], [0.0, 1.0, float(cut)], [0.0, 0.0, 1.0]],
                  "overlap_fraction": leak.gray.shape[0] / original.shape[0],
                  "inliers": None, "method": "known crop (test)"})
    return {"folder": folder, "evidence": evidence, "informed": informed, "leak": leak,
            "original": original, "aligned": aligned, "record": record}


def _common_checks(files, evidence):
    html_text = files.html.read_text(encoding="utf-8")
    json_text = files.json.read_text(encoding="utf-8")
    page = _parse(files.html)
    text = " ".join(page.text)
    for secret in (KEY.secret.hex(), KEY.secret.hex().upper()):
        assert secret not in html_text and secret not in json_text
    assert evidence["leak"]["sha256"] in text
    assert KEY.fingerprint in text and evidence["key_fingerprint"] == KEY.fingerprint
    assert "script" not in page.tags  # self-contained and inert: no script, no link
    assert not any(t in page.tags for t in ("link", "iframe", "object", "embed"))
    assert "http://" not in html_text and "https://" not in html_text
    assert "default-src 'none'" in html_text
    doc = json.loads(json_text)
    meta = doc.pop("report_metadata")
    assert doc == _plain(evidence)  # the evidence round-trips
    assert meta["leak_sha256"] == evidence["leak"]["sha256"]
    assert meta["key_fingerprint"] == KEY.fingerprint
    assert meta["html_sha256"] == hashlib.sha256(files.html.read_bytes()).hexdigest()
    assert meta["written_utc"].endswith("+00:00")
    assert meta["leak_file"]["sha256_matches_file"] is True
    assert oct(files.html.stat().st_mode & 0o777) == oct(files.json.stat().st_mode & 0o777) == "0o600"
    return page, text, meta


def test_informed_report_has_every_part(case, tmp_path):
    ev = case["informed"]
    files = write_report(tmp_path / "new" / "report", ev, leak_image=case["leak"].gray,
                         original_image=case["original"], aligned_leak=case["aligned"])
    page, text, meta = _common_checks(files, ev)
    assert LEAKER in text and "TRACED" in text
    pngs = _pngs(page)
    assert len(pngs) == 3 and meta["figures"] == ["leak", "alignment", "scores"]
    assert all(im.format == "PNG" and min(im.size) > 100 for im in pngs)
    overlay = np.asarray(pngs[1].convert("RGB")).astype(int)
    assert (overlay[..., 1] - overlay[..., 0]).std() > 1  # two channels really differ somewhere
    record = case["record"]
    for value in (record.output_sop_uid, record.record_hash, record.source_sop_uid,
                  ev["ledger_check"]["head_hash"]):
        assert value in text
    words = meta["p_value_in_words"]
    assert len(words) == 1 and words[0].startswith(f"If this copy had not been marked for {LEAKER}")
    assert "1 in a million" in words[0] and words[0] in text
    assert "hash chain" in text and "intact" in text


def test_the_alignment_and_a_recipients_several_copies_are_said_in_words(case, tmp_path):
    import copy

    ev = copy.deepcopy(case["informed"])
    cut = int(ev["alignment"]["transform"][1][2])
    ev["source"]["recipient_exports"] = [{"id": i, "created_utc": "", "output_path": "",
                                          "output_sop_uid": ""} for i in (3, 5, 9)]
    files = write_report(tmp_path / "r", ev, leak_image=case["leak"].gray,
                         original_image=case["original"], aligned_leak=case["aligned"])
    text = " ".join(" ".join(_parse(files.html).text).split())
    assert (f"scaling it by 1 (the leak's pixels are 1 of the original's), turning it by "
            f"0.00 degrees and shifting it by 0.0 px across and {cut}.0 px down") in text
    assert "green and magenta fringes" in text
    assert "This recipient received 3 copies of this image (exports 3, 5, 9)" in text
    assert "not from which" in text


def test_markup_in_names_is_escaped(case, tmp_path):
    files = write_report(tmp_path, case["evidence"], leak_image=case["leak"].gray)
    html_text = files.html.read_text(encoding="utf-8")
    page = _parse(files.html)
    assert "<script" not in html_text
    assert html.escape(HOSTILE) in html_text and HOSTILE in " ".join(page.text)
    assert "script" not in page.tags


def test_a_name_the_figure_font_cannot_draw_gives_no_warning(case, tmp_path):
    """An emoji in a recipient's name: the bar chart shows "?" for it, silently; the text
    of the report has the name as it is."""
    import copy
    import warnings

    evidence = copy.deepcopy(case["evidence"])
    name = "Dr. \U0001F9B4 Bone"
    for candidate in evidence["candidates"]:
        candidate["recipient"] = name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = write_report(tmp_path, evidence, leak_image=case["leak"].gray)
    assert not [w for w in caught if "missing from" in str(w.message)], \
        [str(w.message) for w in caught]
    assert name in " ".join(_parse(files.html).text)


def test_blind_report_without_original(case, tmp_path):
    ev = case["evidence"]
    files = write_report(tmp_path, ev, leak_image=case["leak"].gray.astype(np.uint8))
    page, text, meta = _common_checks(files, ev)
    assert len(_pngs(page)) == 2 and meta["figures"] == ["leak", "scores"]
    assert "No alignment figure: no original film is known (blind detection" in text
    assert "alignment" in meta["figures_left_out"]
    assert "after correcting for the" in meta["p_value_in_words"][0]  # blind: n_tests stated


def test_not_found_report(case, tmp_path, dicom_films):
    """An unmarked film: nobody named, and the report says so."""
    path = tmp_path / "unmarked.png"
    leaks.save_image(leaks.quantize_8bit(render(read_film(dicom_films[FUJI]))), path)
    with Ledger(case["folder"] / "ledger.sqlite", create=False) as book:
        detection = detect_leak(path, ledger=book, key=KEY)
        ev = blind_evidence(detection.as_dict(), book.check().as_dict())
    assert detection.decision == "not_found"
    files = write_report(tmp_path / "r", ev, leak_image=read_leak(path).gray)
    page, text, meta = _common_checks(files, ev)
    assert "NOT FOUND" in text and "nobody is named" in meta["p_value_in_words"][0]


def test_an_existing_report_is_not_overwritten_unless_asked(case, tmp_path):
    ev, gray = case["evidence"], case["leak"].gray
    first = write_report(tmp_path, ev, leak_image=gray)
    before = first.html.read_bytes()
    with pytest.raises(ReportError, match="holds a report already"):
        write_report(tmp_path, ev, leak_image=gray)
    assert first.html.read_bytes() == before
    again = write_report(tmp_path, ev, leak_image=gray, overwrite=True)
    assert again == first and sorted(p.name for p in tmp_path.iterdir()) == ["report.html",
                                                                             "report.json"]


@pytest.mark.parametrize("change, message", [
    (lambda c: {"original_image": None, "aligned_leak": c["aligned"]}, "needs original_image"),
    (lambda c: {"original_image": c["original"], "aligned_leak": c["aligned"][:-1]},
     "must be in the original's frame"),
    (lambda c: {"leak_image": c["leak"].gray[None]}, "leak_image must be a non-empty 2-D"),
    (lambda c: {"evidence": {"decision": "traced"}}, "the evidence lacks p_value"),
])
def test_bad_inputs_are_refused(case, tmp_path, change, message):
    kwargs = {"evidence": case["evidence"], "leak_image": case["leak"].gray}
    kwargs.update(change(case))
    evidence = kwargs.pop("evidence")
    with pytest.raises(ReportError, match=message):
        write_report(tmp_path / "r", evidence, **kwargs)
    assert not (tmp_path / "r").exists()


def test_p_value_in_words():
    text = p_value_in_words(3.7e-42, 1e-6, "Dr. X", named=True)
    assert "less than once in 10^41 (a 1 followed by 41 zeros) tries" in text
    assert "at most 1 in a million" in text
    assert "once in a thousand tries" in p_value_in_words(5e-4, 1e-6 / 3, "Y", named=True)
    low = p_value_in_words(0.2, 1e-6, "Z", named=False, n_tests=12)
    assert "up to 20 % of cases (once in about 5 tries)" in low and "nobody is named" in low
    assert "after correcting for the 12 hypotheses" in low
    assert "1 in 3,000,000" in p_value_in_words(1e-9, 1e-6 / 3, "Y", named=True)


