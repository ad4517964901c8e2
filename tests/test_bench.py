"""``leaktrace bench``: the runner on a real film, its files, the peers, and its errors.

The film is the shared set's smallest human film (the 440 px Fuji CR), so that every method
runs in seconds. Expected values were measured on it: leaktrace's display PSNR is 55.4 dB and
stored PSNR 59.3 dB (its strength follows the film's low noise floor); invisible-watermark's 38.5 dB (dwtDct) and 38.8 dB (dwtDctSvd),
blind-watermark's 42.3 dB. The peer tests are skipped, with the reason, when the peers are not
installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from forensics.bench import harness as bench
from forensics.cli import app

FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"
PEER_NAMES = ["invisible-watermark-dwtDct", "invisible-watermark-dwtDctSvd", "blind-watermark"]


@pytest.fixture(scope="module")
def fuji_folder(data_dir, tmp_path_factory):
    """A folder holding only a link to the Fuji film (the film is not copied)."""
    folder = tmp_path_factory.mktemp("films")
    (folder / FUJI).symlink_to(data_dir / "dicom" / FUJI)
    return folder


@pytest.fixture(scope="module")
def leaktrace_run(fuji_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = bench.run_bench(bench.find_films(fuji_folder), methods=["leaktrace", "leaktrace-trace"],
                             pipelines=["viewer_png8"], recipients=1, workers=1, out=out)
    return result, out


def _peers_missing() -> str | None:
    reasons = [bench.METHODS[n]().unavailable() for n in PEER_NAMES]
    return next((r for r in reasons if r), None)


def test_leaktrace_names_the_right_recipient_of_a_clean_png_leak(leaktrace_run):
    result, _ = leaktrace_run
    rows = [q for q in result.queries if q["method"] == "leaktrace"]
    marked = [q for q in rows if q["truth"] != ""]
    control = [q for q in rows if q["truth"] == ""]
    assert len(marked) == 1 and len(control) == 1
    q = marked[0]
    assert q["right"] and not q["wrong"] and q["named"] == str(q["truth"]) and not q["error"]
    assert q["p_truth"] < 1e-20 and q["tp_at_fpr"]
    # raw accuracy of the 256 coded bits at the best hypothesis (before Reed-Solomon)
    assert 0.9 < q["bit_accuracy"] <= 1.0
    assert q["detect_s"] > 0 and q["detect_cpu_s"] > 0
    assert control[0]["named"] == "" and not control[0]["any_at_fpr"]
    assert control[0]["p_best"] > 1e-6


def test_leaktrace_imperceptibility_is_what_was_measured_on_the_film(leaktrace_run):
    result, _ = leaktrace_run
    (row,) = [e for e in result.embeds if e["method"] == "leaktrace"]
    # measured over 6 fresh ledgers (each scopes the key, so the pattern differs):
    assert 54.4 < row["psnr_display_db"] < 56.4  # 55.39-55.49 dB
    assert 58.3 < row["psnr_stored_db"] < 60.3  # 59.29-59.30 dB (peak 2**10 - 1)
    assert 0.99 < row["ssim_display"] < 1.0 and 0.99 < row["ssim_stored"] < 1.0
    assert row["embed_s"] > 0 and row["error"] == ""


def test_informed_trace_names_the_right_recipient(leaktrace_run):
    result, _ = leaktrace_run
    assert "leaktrace-trace" not in result.skipped
    (q,) = [q for q in result.queries if q["method"] == "leaktrace-trace" and q["truth"] != ""]
    assert q["right"] and not q["wrong"], q
    (control,) = [q for q in result.queries if q["method"] == "leaktrace-trace" and q["truth"] == ""]
    assert not control["wrong"] and not control["right"]


def test_files_are_written_and_parse(leaktrace_run):
    result, out = leaktrace_run
    names = {p.name for p in result.files}
    assert {"bench_queries.csv", "bench_embeds.csv", "bench_summary.csv", "bench.json",
            "bench_tradeoff.png"} <= names
    with open(out / "bench_queries.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.queries) == 4  # 2 methods x (marked copy, control)
    assert {r["pipeline"] for r in rows} == {"viewer_png8"}
    with open(out / "bench_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert {s["method"] for s in summary} == {"leaktrace", "leaktrace-trace"}
    assert all(float(s["right_rate"]) == 1.0 for s in summary)
    assert all(float(s["wrong_rate"]) == 0.0 and s["controls_named"] == "0" for s in summary)
    meta = json.loads((out / "bench.json").read_text())
    assert meta["machine"]["cpus"] >= 1 and meta["command"]
    assert meta["settings"]["recipients_per_film"] == 1 and meta["queries"] == 4
    assert (out / "bench_tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peer_payloads_are_keyed_32_bit_codewords():
    words = [bench.peer_payload(n) for n in range(1, bench.N_RECIPIENTS + 1)]
    assert all(w.shape == (32,) and w.dtype == bool for w in words)
    assert len({w.tobytes() for w in words}) == bench.N_RECIPIENTS
    assert np.array_equal(bench.peer_payload(3), words[2])
    # different recipients differ in about half their bits (random codewords)
    distances = [int(np.sum(a != b)) for i, a in enumerate(words) for b in words[i + 1:]]
    assert 10 < np.mean(distances) < 22


def test_pipelines_cover_the_robustness_issue_and_sweeps():
    table = bench.bench_pipelines()
    from forensics import leaks

    assert set(leaks.PIPELINES) <= set(table) and "raw16_stored" in table
    assert table["raw16_stored"].stored_side and table["dicom_j2k_20to1"].stored_side
    assert not table["viewer_png8"].stored_side
    jpeg = sorted(p.strength for p in table.values() if p.family == "jpeg")
    assert jpeg == [30, 50, 75, 90]
    for p in table.values():  # every step exists in the registry
        for step, _ in p.steps:
            assert step in leaks.LEAKS, (p.name, step)


def test_find_films_takes_human_films_and_png_from_each_set(data_dir):
    films = bench.find_films(data_dir, png=2)
    dicom = [f for f in films if f.suffix == ".dcm"]
    others = [f for f in films if f.suffix != ".dcm"]
    assert len(dicom) == 7 and not any("veterinary" in f.name for f in films)
    assert len(others) == 2 and len({f.parent.name for f in others}) == 2


def test_peers_mark_the_display_and_lose_a_crop(fuji_folder, tmp_path):
    reason = _peers_missing()
    if reason:
        pytest.skip(reason)
    result = bench.run_bench(bench.find_films(fuji_folder), methods=PEER_NAMES,
                             pipelines=["viewer_png8", "export16_png", "crop_centre_keep36pct"],
                             recipients=1,
                             workers=1, out=None)
    assert not result.skipped
    for name, (lo, hi) in {"invisible-watermark-dwtDct": (37, 40),
                           "invisible-watermark-dwtDctSvd": (37, 40),
                           "blind-watermark": (41, 44)}.items():
        (e,) = [e for e in result.embeds if e["method"] == name]
        assert lo < e["psnr_display_db"] < hi, (name, e)
        assert e["psnr_stored_db"] is None  # a peer marks the 8-bit display, not the film
        rows = {q["pipeline"]: q for q in result.queries if q["method"] == name and q["truth"] != ""}
        clean, crop = rows["viewer_png8"], rows["crop_centre_keep36pct"]
        assert clean["right"] and clean["bit_accuracy"] == 1.0 and clean["tp_at_fpr"], clean
        # a 16-bit PNG of the display is read as 8 bits, as OpenCV reads it: nothing lost
        assert rows["export16_png"]["right"] and rows["export16_png"]["bit_accuracy"] == 1.0
        # blind peers read blocks at fixed positions: a centre crop shifts them
        assert not crop["right"] and crop["bit_accuracy"] < 0.8 and not crop["tp_at_fpr"], crop
        controls = [q for q in result.queries if q["method"] == name and q["truth"] == ""]
        assert len(controls) == 3 and not any(q["named"] for q in controls)


runner = CliRunner()


def test_cli_bench_writes_files_and_prints_the_table(fuji_folder, tmp_path):
    out = tmp_path / "res"
    res = runner.invoke(app, ["bench", "--films", str(fuji_folder), "--methods", "leaktrace",
                              "--pipelines", "viewer_png8", "--recipients", "1", "--workers", "1",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "leaktrace" in res.stdout and "viewer_png8" in res.stdout
    assert str(out / "bench_summary.csv") in res.output
    assert (out / "bench.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--methods", "leaktrace,nope"], "unknown method 'nope'"),
    (["--pipelines", "viewer_png8", "--pipelines", "fax_machine"], "unknown pipeline 'fax_machine'"),
    (["--recipients", "0"], "--recipients must be 1..20"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--pipelines", ""], "no pipeline given"),
    (["--methods", " , "], "no method given"),
], ids=["method", "pipeline", "recipients", "workers", "no-pipeline", "no-method"])
def test_cli_bench_refuses_bad_arguments(fuji_folder, tmp_path, args, message):
    res = runner.invoke(app, ["bench", "--films", str(fuji_folder), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert "bench: 1 film" not in res.output  # refused before the run starts
    assert not (tmp_path / "o" / "bench.json").exists()


def test_cli_bench_refuses_a_missing_film_folder_or_a_file(tmp_path, fuji_folder):
    res = runner.invoke(app, ["bench", "--films", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such folder" in res.output
    res = runner.invoke(app, ["bench", "--films", str(fuji_folder / FUJI), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "is a file; give the folder" in res.output


def test_cli_bench_refuses_an_output_folder_it_cannot_write_before_the_run(fuji_folder, tmp_path):
    (tmp_path / "a_file").write_text("x")
    res = runner.invoke(app, ["bench", "--films", str(fuji_folder), "--methods", "leaktrace",
                              "--out", str(tmp_path / "a_file" / "sub")])
    assert res.exit_code == 2 and "cannot write the results there" in res.output, res.output
    assert "film file(s) found" not in res.output and "Traceback" not in res.output


def test_unreadable_and_tiny_films_are_left_out_with_a_note(fuji_folder, tmp_path):
    from PIL import Image

    folder = tmp_path / "films"
    folder.mkdir()
    (folder / FUJI).symlink_to((fuji_folder / FUJI).resolve())
    Image.fromarray(np.full((50, 50), 128, np.uint8)).save(folder / "tiny.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.dcm").write_bytes((fuji_folder / FUJI).read_bytes()[:3000])
    notes = []
    result = bench.run_bench(bench.find_films(folder), methods=["leaktrace"],
                             pipelines=["viewer_png8"], recipients=1, workers=1,
                             out=tmp_path / "o", say=notes.append)
    assert set(result.skipped_films) == {str(folder / n) for n in ("tiny.png", "empty.png", "cut.dcm")}
    assert "50 x 50 px is too small" in result.skipped_films[str(folder / "tiny.png")]
    assert sum(n.startswith("skipping ") for n in notes) == 3
    assert {q["film"] for q in result.queries} == {FUJI} and len(result.queries) == 2
    assert json.loads((tmp_path / "o" / "bench.json").read_text())["skipped_films"]


def test_trace_on_png_films_only_is_skipped_with_the_reason(data_dir, tmp_path):
    folder = tmp_path / "png"
    folder.mkdir()
    first = next(p for p in sorted((data_dir / "png").rglob("*.png")))
    (folder / first.name).symlink_to(first)
    result = bench.run_bench(bench.find_films(folder), methods=["leaktrace", "leaktrace-trace"],
                             pipelines=["viewer_png8"], recipients=1, workers=1, say=lambda t: None)
    assert "only DICOM films" in result.skipped["leaktrace-trace"]
    assert {q["method"] for q in result.queries} == {"leaktrace"}


def test_an_interrupted_run_stops_its_workers_and_writes_what_is_done(fuji_folder, tmp_path):
    import multiprocessing

    def stop(done, total):
        raise KeyboardInterrupt  # as Ctrl-C after the first task's results

    out = tmp_path / "o"
    result = bench.run_bench(bench.find_films(fuji_folder), methods=["leaktrace"],
                             pipelines=["viewer_png8", "jpeg_q50"], recipients=2, workers=2,
                             out=out, progress=stop)
    meta = json.loads((out / "bench.json").read_text())
    assert meta["interrupted"] is True and result.meta["interrupted"] is True
    assert 0 < meta["queries"] < meta["queries_planned"] == 6
    assert multiprocessing.active_children() == []  # no worker left behind


def test_cli_bench_counts_the_films_it_ran_on_apart_from_those_skipped(fuji_folder, tmp_path):
    from PIL import Image

    folder = tmp_path / "films"
    folder.mkdir()
    (folder / FUJI).symlink_to((fuji_folder / FUJI).resolve())
    Image.fromarray(np.full((50, 50), 128, np.uint8)).save(folder / "tiny.png")
    res = runner.invoke(app, ["bench", "--films", str(folder), "--methods", "leaktrace",
                              "--pipelines", "viewer_png8", "--recipients", "1", "--workers", "1",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert f"bench: 2 film file(s) in {folder}, results to" in res.output
    assert "2 queries on 1 film(s) (1 skipped) in" in res.output


def test_cli_bench_quick_banner_says_how_many_of_the_films_found_it_uses(data_dir, tmp_path, monkeypatch):
    folder = tmp_path / "films"
    folder.mkdir()
    dicoms = sorted((data_dir / "dicom").glob("*.dcm"))[:3]
    for path in dicoms:
        (folder / path.name).symlink_to(path)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_bench", stop)
    res = runner.invoke(app, ["bench", "--quick", "--films", str(folder), "--out", str(tmp_path / "o")])
    assert res.exit_code == 130, res.output
    assert f"bench: 2 of 3 film file(s) in {folder} (--quick), results to {tmp_path / 'o'}" in res.output


def test_a_method_that_cannot_run_is_named_once_in_the_note_and_the_error(fuji_folder, monkeypatch):
    from forensics.bench import peers

    def missing(self):
        raise ImportError("No module named 'imwatermark'")

    monkeypatch.setattr(peers.InvisibleWatermark, "_load", missing)
    monkeypatch.setattr(bench, "_method", lambda name: bench.METHODS[name]())  # not a cached one
    notes = []
    with pytest.raises(bench.BenchError) as caught:
        bench.run_bench(bench.find_films(fuji_folder), methods=["invisible-watermark-dwtDct"],
                        pipelines=["viewer_png8"], recipients=1, workers=1, say=notes.append)
    note = next(n for n in notes if n.startswith("skipping"))
    assert note.startswith("skipping invisible-watermark-dwtDct: invisible-watermark ")
    assert note.count("invisible-watermark-dwtDct") == 1, note
    assert str(caught.value).count("invisible-watermark-dwtDct") == 1, caught.value


def test_blind_watermark_marks_in_a_spawned_worker_and_leaves_the_start_method(data_dir):
    """A Dask worker fixes the 'spawn' start method before any task runs; blind_watermark's
    import-time ``set_start_method('fork')`` made it fail there (the nine-film bench on
    ``--scheduler local`` lost all 9 of its copies)."""
    reason = _peers_missing()
    if reason:
        pytest.skip(reason)
    script = (
        "import multiprocessing, numpy as np\n"
        "multiprocessing.set_start_method('spawn')\n"
        "from forensics.bench import peers\n"
        "peer = peers.BlindWatermark()\n"
        "display = np.random.default_rng(0).integers(40, 200, (512, 512)).astype(np.uint8)\n"
        "marked = peer.embed(display, np.arange(32) % 2 == 0)\n"
        "print(peer.available(), marked.shape == display.shape)\n"
        "print(multiprocessing.get_start_method())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True", "spawn"], done.stdout
