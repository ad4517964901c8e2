"""File-level export: ledger binding of the mark, refusal of marked copies, flat films,
min..max films, one run never overwriting its own outputs, failures that do not stop a batch,
no recipient left behind by a failed export."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import typer

from conftest import write_dicom
from forensics import export as export_module
from forensics import leaks
from forensics.export import collect_sources, export_film, export_many, mark_film, site_key_for
from forensics.ledger import Ledger
from forensics.register import FilmFeatures
from forensics.trace import detect_leak
from watermark.dicomio import read_film, sha256_file
from watermark.display import render
from watermark.errors import CapacityError, InvalidInputError, LedgerKeyError
from watermark.keys import SiteKey, create_key

KEY = SiteKey(bytes(range(32)))
FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"  # small: fast to mark
NIH = "nih_cxr14_dx_8bit_1024px_nccid.dcm"  # no window, no VOI LUT: shown min..max


def _leak_png(marked_path, out_path):
    leaks.save_image(leaks.quantize_8bit(render(read_film(marked_path))), out_path)
    return out_path


def test_a_mark_is_only_found_with_the_ledger_that_recorded_it(tmp_path, dicom_films):
    """The tester's scenario: one site key, two ledgers, recipient "7" is number 1 in A and
    "Innocent Bob" is number 1 in B. A's leak must not name Bob when read with B."""
    with Ledger(tmp_path / "a.sqlite") as a, Ledger(tmp_path / "b.sqlite") as b:
        assert a.ledger_id != b.ledger_id
        rec_a = export_film(dicom_films[FUJI], tmp_path / "a.dcm", recipient="7", ledger=a, key=KEY)
        rec_b = export_film(dicom_films[FUJI], tmp_path / "b.dcm", recipient="Innocent Bob",
                            ledger=b, key=KEY)
        assert rec_a.recipient_number == rec_b.recipient_number == 1
        assert rec_a.key_fingerprint == rec_b.key_fingerprint == KEY.fingerprint  # the site key's
        assert rec_a.payload != rec_b.payload
        leak = _leak_png(rec_a.output_path, tmp_path / "leak_a.png")

        with_b = detect_leak(leak, ledger=b, key=KEY)
        assert with_b.decision == "not_found" and with_b.recipient is None
        assert with_b.detection.decoded_number is None
        assert with_b.as_dict()["ledger_id"] == b.ledger_id

        with_a = detect_leak(leak, ledger=a, key=KEY)
        assert with_a.decision == "traced" and with_a.recipient == "7"
        assert with_a.warnings == []

        other = detect_leak(leak, ledger=a, key=SiteKey(bytes(range(1, 33))))
        assert other.decision == "not_found"
        assert any("not with the key given" in w for w in other.warnings)


def test_marked_copies_are_refused(tmp_path, dicom_films):
    with Ledger(tmp_path / "l.sqlite") as book:
        rec = export_film(dicom_films[FUJI], tmp_path / "copy.dcm", recipient="Dr. Ana",
                          ledger=book, key=KEY)
        with pytest.raises(InvalidInputError,
                           match=r"copy\.dcm: is already a leaktrace-marked copy \(for 'Dr\. Ana'\); "
                                 "mark the original instead"):
            export_film(rec.output_path, tmp_path / "again.dcm", recipient="Mallory",
                        ledger=book, key=KEY)
        assert book.recipients() == {1: "Dr. Ana"} and len(book.exports()) == 1
    with Ledger(tmp_path / "other.sqlite") as other:  # not in this ledger: the description says it
        with pytest.raises(InvalidInputError, match=r"copy\.dcm: is already a leaktrace-marked copy; "):
            export_film(rec.output_path, tmp_path / "again.dcm", recipient="Mallory",
                        ledger=other, key=KEY)

    ds = pydicom.dcmread(rec.output_path)  # description removed: the ledger's UID still says it
    del ds.DerivationDescription
    ds.save_as(tmp_path / "stripped.dcm")
    with Ledger(tmp_path / "l.sqlite") as book:
        with pytest.raises(InvalidInputError, match=r"already a leaktrace-marked copy \(for 'Dr\. Ana'\)"):
            export_film(tmp_path / "stripped.dcm", tmp_path / "again.dcm", recipient="Mallory",
                        ledger=book, key=KEY)
    assert not (tmp_path / "again.dcm").exists()


def _flat_films(folder):
    return {
        "black.dcm": write_dicom(folder / "black.dcm", np.zeros((256, 256), np.uint16), bits_stored=12),
        "white.dcm": write_dicom(folder / "white.dcm", np.full((256, 256), 4095, np.uint16), bits_stored=12),
        "grey_window.dcm": write_dicom(folder / "grey_window.dcm", np.full((256, 256), 128, np.uint8),
                                       window=(128, 256)),
        "black_window.dcm": write_dicom(folder / "black_window.dcm", np.zeros((256, 256), np.uint8),
                                        window=(128, 256)),
    }


def test_flat_films_are_refused_and_the_batch_goes_on(tmp_path, dicom_films):
    films = _flat_films(tmp_path)
    for path in films.values():
        with pytest.raises(CapacityError, match=f"{path.name}: flat image: nothing to carry the mark"):
            mark_film(read_film(path), 1, KEY)
    out = tmp_path / "out"
    out.mkdir()
    pairs = [(p, out / name) for name, p in films.items()] + [(dicom_films[FUJI], out / FUJI)]
    with Ledger(tmp_path / "l.sqlite") as book:
        outcomes = export_many(pairs, recipient="Ghost", ledger=book, key=KEY)
        assert [o.error is None for o in outcomes] == [False] * len(films) + [True]
        assert all("flat image" in o.error and o.source.name in o.error for o in outcomes[:-1])
        assert len(book.exports()) == 1
    assert sorted(p.name for p in out.iterdir()) == [FUJI]


def test_a_film_whose_window_shows_nothing_is_marked_as_a_viewer_shows_it(tmp_path, dicom_films):
    """A real film whose Window Center/Width lies wholly below its stored values shows every
    pixel white in that window; viewers show it by its range, and so does leaktrace (it was
    refused as flat before). The copy keeps the source's window, min and max, and a
    screenshot of the range view is traced."""
    ds = pydicom.dcmread(dicom_films[FUJI], force=True)  # this film has no File Meta
    low = int(read_film(dicom_films[FUJI]).pixels.min())
    ds.WindowCenter, ds.WindowWidth = low - 300, 200
    ds.VOILUTFunction = "LINEAR"
    src = tmp_path / "below_window.dcm"
    ds.save_as(src)
    film = read_film(src)
    assert np.ptp(render(film, window=(low - 300, 200))) == 0  # the file's window: all one value
    assert np.ptp(render(film)) == 255  # shown by its range instead
    with Ledger(tmp_path / "l.sqlite") as book:
        rec = export_film(src, tmp_path / "out.dcm", recipient="Dr. Ana", ledger=book, key=KEY)
        copy = pydicom.dcmread(rec.output_path)
        assert (float(copy.WindowCenter), float(copy.WindowWidth)) == (low - 300, 200)
        marked = read_film(rec.output_path).pixels
        assert (marked.min(), marked.max()) == (film.pixels.min(), film.pixels.max())
        leak = _leak_png(rec.output_path, tmp_path / "leak.png")
        result = detect_leak(leak, ledger=book, key=KEY)
        assert result.decision == "traced" and result.recipient == "Dr. Ana"


def test_failed_export_leaves_no_recipient(tmp_path):
    film = write_dicom(tmp_path / "black.dcm", np.zeros((256, 256), np.uint8))
    with Ledger(tmp_path / "l.sqlite") as book:
        with pytest.raises(CapacityError):
            export_film(film, tmp_path / "out.dcm", recipient="Ghost", ledger=book, key=KEY)
        assert book.recipients() == {} and book.exports() == []


def test_min_max_films_keep_their_displayed_range(tmp_path, dicom_films, load_film):
    film = load_film(NIH)
    assert "WindowCenter" not in film.dataset and "VOILUTSequence" not in film.dataset
    with Ledger(tmp_path / "l.sqlite") as book:
        rec = export_film(dicom_films[NIH], tmp_path / "nih.dcm", recipient="a", ledger=book, key=KEY)
    marked = read_film(rec.output_path).pixels
    assert (marked.min(), marked.max()) == (film.pixels.min(), film.pixels.max())
    assert np.count_nonzero(marked != film.pixels) > 0.1 * marked.size
    # a min..max viewer maps the copy exactly as the source: display differs by the mark only
    diff = render(read_film(rec.output_path)) - render(film, marked)
    assert np.abs(diff).max() < 1e-9


def test_one_run_never_overwrites_its_own_output(tmp_path, dicom_films):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(dicom_films[FUJI], a / "x.dcm")
    shutil.copy(dicom_films["veterinary_canine_thorax_dx_mono1_8bit.dcm"], b / "x.dcm")
    out = tmp_path / "out"
    pairs = [(a / "x.dcm", out / "x.dcm"), (b / "x.dcm", out / "x.dcm")]
    with Ledger(tmp_path / "l.sqlite") as book:
        first, second = export_many(pairs, recipient="r", ledger=book, key=KEY, overwrite=True)
        assert first.record is not None
        assert second.record is None
        assert f"{b / 'x.dcm'}: its output {out / 'x.dcm'} was already written in this run" in second.error
        assert len(book.exports()) == 1
    from watermark.dicomio import sha256_file

    assert sha256_file(out / "x.dcm") == first.record.output_sha256
    with Ledger(tmp_path / "l.sqlite") as book:  # a later run may overwrite when asked
        (again,) = export_many(pairs[1:], recipient="r", ledger=book, key=KEY, overwrite=True)
        assert again.record is not None


def test_an_unexpected_value_error_fails_one_file_only(tmp_path, dicom_films, monkeypatch):
    real = export_module.mark_film

    def flaky(film, *args, **kwargs):
        if film.path.name == "bad.dcm":
            raise ValueError("something odd")
        return real(film, *args, **kwargs)

    monkeypatch.setattr(export_module, "mark_film", flaky)
    shutil.copy(dicom_films[FUJI], tmp_path / "bad.dcm")
    pairs = [(tmp_path / "bad.dcm", tmp_path / "out" / "bad.dcm"),
             (dicom_films[FUJI], tmp_path / "out" / "good.dcm")]
    with Ledger(tmp_path / "l.sqlite") as book:
        bad, good = export_many(pairs, recipient="r", ledger=book, key=KEY)
    assert bad.error == f"{tmp_path / 'bad.dcm'}: cannot be marked (ValueError: something odd)"
    assert good.record is not None


def test_a_deliberate_exit_is_never_swallowed(tmp_path, dicom_films, monkeypatch):
    def stop(*args, **kwargs):
        raise typer.Exit(3)

    monkeypatch.setattr(export_module, "export_film", stop)
    with Ledger(tmp_path / "l.sqlite") as book:
        with pytest.raises(typer.Exit):
            export_many([(dicom_films[FUJI], tmp_path / "o.dcm")], recipient="r", ledger=book, key=KEY)


def test_a_renamed_recipient_is_reported_by_its_recorded_name(tmp_path, dicom_films):
    """Editing the recipients table (not covered by the hash chain) must not move an
    accusation onto another name: detect reports the name the export was recorded under."""
    import sqlite3

    path = tmp_path / "l.sqlite"
    with Ledger(path) as book:
        rec = export_film(dicom_films[FUJI], tmp_path / "bob.dcm", recipient="Bob", ledger=book, key=KEY)
    leak = _leak_png(rec.output_path, tmp_path / "leak.png")
    db = sqlite3.connect(path)
    db.execute("UPDATE recipients SET name = 'Mallory' WHERE name = 'Bob'")
    db.commit()
    db.close()
    with Ledger(path, create=False) as book:
        report = detect_leak(leak, ledger=book, key=KEY)
    assert report.recipient == "Bob"
    assert report.as_dict()["recipients"][0]["recipient"] == "Bob"
    assert any("recorded for 'Bob'" in w for w in report.warnings)


VET = "veterinary_canine_thorax_dx_mono1_8bit.dcm"


def _folder_of_three_and_a_flat_one(tmp_path, dicom_films):
    src = tmp_path / "src"
    src.mkdir()
    for name in (FUJI, NIH, VET):
        shutil.copy(dicom_films[name], src / name)
    write_dicom(src / "black.dcm", np.zeros((256, 256), np.uint8))
    return src


def test_workers_mark_a_folder_in_parallel_and_keep_per_file_failures(tmp_path, dicom_films):
    src = _folder_of_three_and_a_flat_one(tmp_path, dicom_films)
    out = tmp_path / "out"
    with Ledger(tmp_path / "l.sqlite") as book:
        outcomes = export_many(list(collect_sources([src], out)), recipient="Dr. Par",
                               ledger=book, key=KEY, workers=2)
        assert [o.source.name for o in outcomes] == sorted(["black.dcm", FUJI, NIH, VET])
        (failed,) = [o for o in outcomes if o.error]
        assert failed.error.startswith(f"{src / 'black.dcm'}: flat image: nothing to carry the mark")
        records = book.exports()
        assert len(records) == 3 and book.verify() == []
        # the workers computed each source film's keypoint features for `trace`
        assert set(book.source_features()) == {r.source_sha256 for r in records}
        assert {r.recipient_number for r in records} == {1} and book.recipients() == {1: "Dr. Par"}
        for o in outcomes:
            if o.record is None:
                continue
            assert o.record.output_sha256 == sha256_file(o.output)
            report = detect_leak(_leak_png(o.output, tmp_path / f"{o.source.stem}.png"),
                                 ledger=book, key=KEY)
            assert report.decision == "traced" and report.recipient == "Dr. Par", o.source.name
    assert sorted(p.name for p in out.iterdir()) == sorted([FUJI, NIH, VET])  # no temporary files

    # the same marks as one process makes
    with Ledger(tmp_path / "l.sqlite") as book:
        serial = export_many([(src / FUJI, tmp_path / "serial" / FUJI)], recipient="Dr. Par",
                             ledger=book, key=KEY)
    assert np.array_equal(read_film(serial[0].output).pixels, read_film(out / FUJI).pixels)


def test_workers_mark_again_when_the_ledger_assigns_another_number(tmp_path, dicom_films, monkeypatch):
    """Workers mark for the number a new recipient is expected to get; when the transaction
    assigns another (here: a recipient the prediction did not see), the file is marked again
    for the number actually recorded."""
    src = _folder_of_three_and_a_flat_one(tmp_path, dicom_films)
    (src / NIH).unlink()
    with Ledger(tmp_path / "l.sqlite") as book:
        book.recipient_number("Someone else", create=True)  # number 1
        monkeypatch.setattr(book, "recipients", lambda: {})  # so the workers expect 1 too
        outcomes = export_many(list(collect_sources([src], tmp_path / "out")), recipient="Dr. Par",
                               ledger=book, key=KEY, workers=2)
        monkeypatch.undo()
        good = [o for o in outcomes if o.record is not None]
        assert len(good) == 2 and {o.record.recipient_number for o in good} == {2}
        for o in good:
            report = detect_leak(_leak_png(o.output, tmp_path / f"{o.source.stem}.png"),
                                 ledger=book, key=KEY)
            assert report.decision == "traced" and report.recipient == "Dr. Par"
            assert report.detection.recipient_number == 2


def test_workers_skip_the_features_the_ledger_keeps_and_renew_old_ones(tmp_path, dicom_films):
    """A worker computes a film's features for `trace` (several times the cost of marking
    it) only for a source the ledger has none for; features of leaktrace 0.2.0 (no
    thumbnail) are renewed by the parent."""
    src = tmp_path / "src"
    src.mkdir()
    for name in (FUJI, NIH):
        shutil.copy(dicom_films[name], src / name)
    fuji_sha = sha256_file(src / FUJI)
    fresh = export_module._mark_in_worker(src / FUJI, tmp_path / "a.dcm", 1, KEY, False)
    export_module._init_worker(frozenset({fuji_sha}))  # as a worker started for this ledger
    try:
        skipped = export_module._mark_in_worker(src / FUJI, tmp_path / "b.dcm", 1, KEY, False)
    finally:
        export_module._init_worker(frozenset())
    assert FilmFeatures.from_bytes(fresh.features).thumbnail is not None
    assert skipped.features == b"" and skipped.encoded is not None and skipped.error is None

    with Ledger(tmp_path / "l.sqlite") as book:
        export_many(list(collect_sources([src], tmp_path / "out1")), recipient="Dr. One",
                    ledger=book, key=KEY, workers=2)
        first = book.source_features()
        assert book.sources_with_features() == set(first) == {fuji_sha, sha256_file(src / NIH)}
        # the Fuji film's features as leaktrace 0.2.0 kept them: no thumbnail
        old = FilmFeatures.from_bytes(first[fuji_sha])
        book.store_source_features(fuji_sha, FilmFeatures(old.shape, old.sets).to_bytes(),
                                   replace=True)
        outcomes = export_many(list(collect_sources([src], tmp_path / "out2")),
                               recipient="Dr. Two", ledger=book, key=KEY, workers=2)
        assert all(o.record is not None for o in outcomes)
        second = book.source_features()
    nih_sha = sha256_file(src / NIH)
    assert second[nih_sha] == first[nih_sha]  # kept as it was
    renewed = FilmFeatures.from_bytes(second[fuji_sha])
    assert renewed.thumbnail is not None
    assert np.array_equal(renewed.thumbnail, FilmFeatures.from_bytes(first[fuji_sha]).thumbnail)


def test_negative_workers_are_refused(tmp_path, dicom_films):
    with Ledger(tmp_path / "l.sqlite") as book:
        with pytest.raises(ValueError, match="workers must be >= 0"):
            export_many([(dicom_films[FUJI], tmp_path / "o.dcm")], recipient="r", ledger=book,
                        key=KEY, workers=-1)


def test_a_relative_output_is_recorded_as_an_absolute_path(tmp_path, monkeypatch, dicom_films):
    """`leaktrace embed ... --out exports/` run from some folder: the ledger records where the
    copy is, not where it was relative to a shell long gone - by export_film and by the
    workers of export_many alike."""
    monkeypatch.chdir(tmp_path)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        one = export_film(dicom_films[FUJI], "one.dcm", recipient="Ann", ledger=ledger, key=KEY)
        assert one.output_path == str(tmp_path / "one.dcm")
        src = tmp_path / "src"
        src.mkdir()
        shutil.copy(dicom_films[FUJI], src / "fuji.dcm")
        (outcome,) = export_many(collect_sources(["src"], "out"), recipient="Bea", ledger=ledger,
                                 key=KEY, workers=2)
        assert outcome.record is not None, outcome
        assert outcome.record.output_path == str(tmp_path / "out" / "fuji.dcm")
        recorded = [r.output_path for r in ledger.exports()]
        assert recorded == [str(tmp_path / "one.dcm"), str(tmp_path / "out" / "fuji.dcm")]


# -- key binding (issue 16) -----------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_an_export_under_a_key_the_ledger_has_not_seen_is_refused(tmp_path, dicom_films, workers):
    """Through the Python API too: export_film and export_many refuse, nothing is written;
    new_key=True is the deliberate way, after which both halves trace with their own key."""
    other = SiteKey(bytes(range(1, 33)))
    with Ledger(tmp_path / "l.sqlite") as book:
        first = export_film(dicom_films[FUJI], tmp_path / "ana.dcm", recipient="Dr. Ana",
                            ledger=book, key=KEY)
        message = (f"the ledger at {tmp_path / 'l.sqlite'} has 1 export made with key "
                   f"{KEY.fingerprint}; the key given has fingerprint {other.fingerprint}, "
                   "which made none of them")
        with pytest.raises(LedgerKeyError, match=message):
            export_film(dicom_films[FUJI], tmp_path / "bob.dcm", recipient="Bob", ledger=book,
                        key=other)
        with pytest.raises(LedgerKeyError, match=message):  # the batch, not one failure per file
            export_many([(dicom_films[FUJI], tmp_path / "b1.dcm"), (dicom_films[NIH], tmp_path / "b2.dcm")],
                        recipient="Bob", ledger=book, key=other, workers=workers)
        assert not any((tmp_path / n).exists() for n in ("bob.dcm", "b1.dcm", "b2.dcm"))
        assert book.export_count() == 1 and book.recipients() == {1: "Dr. Ana"}

        (outcome,) = export_many([(dicom_films[FUJI], tmp_path / "bob.dcm")], recipient="Bob",
                                 ledger=book, key=other, workers=workers, new_key=True)
        assert outcome.error is None and outcome.record.key_fingerprint == other.fingerprint
        assert book.key_usage() == {KEY.fingerprint: 1, other.fingerprint: 1}
        assert book.verify() == []

        ana_leak = _leak_png(first.output_path, tmp_path / "ana.png")
        bob_leak = _leak_png(outcome.record.output_path, tmp_path / "bob.png")
        assert detect_leak(ana_leak, ledger=book, key=KEY).recipient == "Dr. Ana"
        assert detect_leak(bob_leak, ledger=book, key=other).recipient == "Bob"
        missed = detect_leak(bob_leak, ledger=book, key=KEY)  # the other half: says so
        assert missed.decision == "not_found" and missed.key_in_ledger is True
        assert any(f"exported under key {other.fingerprint} is found only with that key" in w
                   for w in missed.warnings)


def test_site_key_for_creates_a_key_only_beside_a_ledger_without_exports(tmp_path, dicom_films):
    first_run = tmp_path / "keys" / "site.key"
    with Ledger(tmp_path / "l.sqlite") as book:
        key, created = site_key_for(book, first_run)
        assert created and key.path == first_run and first_run.is_file()
        assert site_key_for(book, first_run) == (key, False)
        export_film(dicom_films[FUJI], tmp_path / "a.dcm", recipient="a", ledger=book, key=key)

        lost = tmp_path / "keys" / "lost.key"
        with pytest.raises(LedgerKeyError) as caught:
            site_key_for(book, lost)
        assert str(caught.value).startswith(
            f"the ledger at {tmp_path / 'l.sqlite'} has 1 export made with key {key.fingerprint}; "
            f"the key file {lost} does not exist, and no new key is created beside a ledger "
            "that holds exports")
        assert caught.value.key_fingerprint is None and caught.value.key_path == str(lost)
        assert not lost.exists()

        other = create_key(tmp_path / "keys" / "other.key")
        with pytest.raises(LedgerKeyError, match=f"the key given \\({tmp_path / 'keys' / 'other.key'}\\) "
                                                  f"has fingerprint {other.fingerprint}"):
            site_key_for(book, other.path)

        rotated, created = site_key_for(book, lost, new_key=True)  # a key rotation, on purpose
        assert created and lost.is_file() and rotated.fingerprint != key.fingerprint
        assert book.export_count() == 1
