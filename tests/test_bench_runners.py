"""``leaktrace bench`` on its runners: the process pool, a Dask LocalCluster, a cluster whose
workers die, and ``--resume``; film manifests and their per-group summary.

The sweep is small but real: the shared set's two smallest human films (the 440 px Fuji CR
and the 1024 px SIIM CR), leaktrace's blind detection, two leak pipelines, one recipient per
film, so 4 tasks (2 marked copies, 2 controls) of 2 queries each, about 15 s per run on 2
cores. Every runner must give the same rows but for the measured times and memory: the
ledger's id and the key are fixed, and each leak's random seed is a function of (film,
pipeline, recipient).
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import running_in_ci
from forensics.bench import harness as bench, runners as benchrun
from forensics.cli import app

FILMS = ("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm", "siim_acr_cr_jpegbaseline_8bit_1024px.dcm")
PIPELINES = ["jpeg_q50", "crop_centre_keep50pct"]
MEASURED = {"detect_s", "detect_cpu_s", "detect_peak_mb", "embed_s", "embed_cpu_s",
            "embed_peak_mb", "detect_s_median", "detect_cpu_s_median", "detect_peak_mb_max",
            "embed_s_median", "embed_cpu_s_median", "embed_peak_mb_max",
            "detect_s_median_controls"}


def _films(data_dir) -> list[Path]:
    return [data_dir / "dicom" / name for name in FILMS]


def _run(data_dir, out, **kw):
    return bench.run_bench(_films(data_dir), methods=["leaktrace"], pipelines=PIPELINES,
                           recipients=1, out=out, plots=False, **{"workers": 1, **kw})


def _rows(folder: Path, name: str) -> list[dict]:
    with open(folder / name, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in MEASURED} for r in csv.DictReader(fh)]


def _same_results(a: Path, b: Path) -> None:
    for name in ("bench_queries.csv", "bench_embeds.csv", "bench_summary.csv"):
        rows_a, rows_b = _rows(a, name), _rows(b, name)
        assert rows_a and len(rows_a) == len(rows_b), name
        for x, y in zip(rows_a, rows_b):
            assert x == y, (name, {k: (x[k], y[k]) for k in x if x[k] != y[k]})


def _dask():
    try:
        return benchrun._import_dask()
    except benchrun.RunnerError as exc:
        if running_in_ci():
            pytest.fail(f"{exc} [CI is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The sweep in this process: the rows every other runner must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = _run(data_dir, out)
    return result, out


def test_the_reference_sweep_is_a_real_result(reference):
    result, out = reference
    assert result.meta["tasks"] == 4 and len(result.queries) == 8 and not result.meta["interrupted"]
    marked = [q for q in result.queries if q["truth"] != ""]
    # both copies survive JPEG q50 with the ledger's recipient named at p < 1e-6
    assert all(q["right"] and q["tp_at_fpr"] for q in marked if q["pipeline"] == "jpeg_q50")
    assert not any(q["wrong"] for q in result.queries)
    assert not any(q["named"] for q in result.queries if q["truth"] == "")
    meta = json.loads((out / "bench.json").read_text())
    assert meta["settings"]["ledger_id"] == bench.BENCH_LEDGER_ID
    assert meta["machine"]["scheduler"] == "processes"
    # the run's ledger and journal are kept beside the results, for --resume
    assert (out / "bench_ledger.sqlite").is_file()
    lines = (out / "bench_journal.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 4 and json.loads(lines[0])["plan"]["ledger_id"] == bench.BENCH_LEDGER_ID
    # TPR at both operating points; 1e-3 is never below 1e-6
    for s in result.summary:
        assert s["tpr_at_fpr_1e-3"] >= s["tpr_at_fpr_1e-6"]


def test_a_second_run_in_the_same_process_pool_repeats_every_row(data_dir, reference, tmp_path):
    _run(data_dir, tmp_path / "again", workers=2)
    _same_results(reference[1], tmp_path / "again")


def test_a_dask_local_cluster_gives_the_same_rows_as_the_process_pool(data_dir, reference, tmp_path):
    _dask()
    result = _run(data_dir, tmp_path / "dask", workers=2, scheduler="local")
    assert result.meta["machine"]["scheduler"] == "local"
    _same_results(reference[1], tmp_path / "dask")


def test_tasks_of_a_killed_dask_worker_are_run_again(data_dir, reference, tmp_path):
    dask, distributed = _dask()
    benchrun._tune_dask(dask)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        before = client.run(os.getpid)
        killed = []

        def kill_the_workers(done, total):  # after the first task: the other is still running
            if not killed:
                for pid in before.values():
                    os.kill(pid, signal.SIGKILL)
                killed.extend(before.values())

        result = _run(data_dir, tmp_path / "killed", scheduler=cluster.scheduler_address,
                      progress=kill_the_workers)
        client.wait_for_workers(2, timeout=60)
        after = set(client.run(os.getpid).values())
    assert killed and not after & set(killed)  # the nannies started new worker processes
    assert not any(q["error"] for q in result.queries)
    _same_results(reference[1], tmp_path / "killed")


def test_an_interrupted_run_resumes_with_only_the_missing_tasks(data_dir, reference, tmp_path,
                                                                monkeypatch):
    out = tmp_path / "run"

    def stop_after_the_first_task(done, total):
        raise KeyboardInterrupt

    first = _run(data_dir, out, progress=stop_after_the_first_task)
    assert first.meta["interrupted"] and first.meta["queries"] == 2
    journal = (out / "bench_journal.jsonl").read_text().splitlines()
    assert len(journal) == 2  # the plan and the one finished task

    ran = []
    real = bench._run_task
    monkeypatch.setattr(bench, "_run_task", lambda task: ran.append(task) or real(task))
    notes = []
    second = _run(data_dir, out, resume=True, say=notes.append)
    assert len(ran) == 3 and second.meta["resumed_tasks"] == 1
    assert not second.meta["interrupted"] and second.meta["queries"] == 8
    assert any("1 task(s) already done" in n for n in notes)
    _same_results(reference[1], out)
    # the journal now holds every task: a further --resume runs nothing
    ran.clear()
    _run(data_dir, out, resume=True)
    assert ran == []


def test_resume_refuses_another_plan_and_needs_an_output_folder(data_dir, reference, tmp_path):
    out = tmp_path / "run"

    def stop(done, total):
        raise KeyboardInterrupt

    _run(data_dir, out, progress=stop)
    with pytest.raises(bench.BenchError, match=r"other settings \(pipelines differ\)"):
        bench.run_bench(_films(data_dir), methods=["leaktrace"], pipelines=["jpeg_q50"],
                        recipients=1, out=out, resume=True)
    with pytest.raises(bench.BenchError, match="--resume needs the output folder"):
        bench.run_bench(_films(data_dir), methods=["leaktrace"], out=None, resume=True)


def test_cli_bench_resume_without_an_earlier_run_says_so_and_runs(data_dir, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / FILMS[0]).symlink_to(data_dir / "dicom" / FILMS[0])
    res = CliRunner().invoke(app, ["bench", "--films", str(folder), "--methods", "leaktrace",
                                   "--pipelines", "jpeg_q50", "--recipients", "1", "--workers",
                                   "1", "--out", str(tmp_path / "o"), "--resume"])
    assert res.exit_code == 0, res.output
    assert "nothing to resume" in res.output
    assert len((tmp_path / "o" / "bench_journal.jsonl").read_text().splitlines()) == 3


def test_a_manifest_gives_per_group_results(data_dir, reference, tmp_path):
    films = tmp_path / "set #1"  # a '#' in a path is part of the path
    films.mkdir()
    for name in FILMS:
        (films / name).symlink_to(data_dir / "dicom" / name)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,dataset,view,patient\n"
                        f"set #1/{FILMS[0]},fuji-demo,PA,p1\n"
                        f"{films / FILMS[1]},siim,PA,p2\n")
    found, groups = bench.read_manifest(manifest)
    assert found == [films / FILMS[0], films / FILMS[1]]
    assert groups[films / FILMS[1]] == {"dataset": "siim", "view": "PA", "patient": "p2"}
    out = tmp_path / "o"
    result = bench.run_bench(found, methods=["leaktrace"], pipelines=PIPELINES, recipients=1,
                             workers=1, out=out, plots=False, groups=groups)
    by_film = {q["film"]: q["dataset"] for q in result.queries}
    assert by_film == {FILMS[0]: "fuji-demo", FILMS[1]: "siim"}
    with open(out / "bench_summary_by_group.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["group"], r["value"]) for r in rows} == {("dataset", "fuji-demo"),
                                                        ("dataset", "siim"), ("view", "PA")}
    # the 'view' group holds both films: its rates are the whole run's
    overall = {s["pipeline"]: s for s in result.summary}
    for r in rows:
        if r["group"] == "view":
            assert float(r["right_rate"]) == overall[r["pipeline"]]["right_rate"]
            assert int(r["queries"]) == overall[r["pipeline"]]["queries"] == 2
        else:
            assert int(r["queries"]) == 1
    # the same rows as the same films given as a folder, plus the manifest's columns
    ref = _rows(reference[1], "bench_queries.csv")
    got = [{k: v for k, v in r.items() if k not in ("dataset", "view", "patient")}
           for r in _rows(out, "bench_queries.csv")]
    assert got == ref


@pytest.mark.parametrize("text, message", [
    ("film,view\nx.dcm,PA\n", "needs a 'path' column"),
    ("path,view\nnot-there.dcm,PA\n", "no such film"),
    ("path,view\n,PA\n", "line 2 has an empty path"),
    ("path,method\n{film},x\n", "clash with the benchmark's own result columns"),
])
def test_cli_bench_refuses_a_bad_manifest_in_one_line(data_dir, tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text.format(film=data_dir / "dicom" / FILMS[0]))
    res = CliRunner().invoke(app, ["bench", "--films", str(manifest), "--methods", "leaktrace",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "bench.json").exists()


def test_a_new_ledger_takes_a_given_id_and_refuses_a_malformed_one(tmp_path):
    from forensics.ledger import Ledger
    from watermark.errors import LedgerError

    with Ledger(tmp_path / "a.sqlite", ledger_id=bench.BENCH_LEDGER_ID) as book:
        assert book.ledger_id == bench.BENCH_LEDGER_ID
    with Ledger(tmp_path / "a.sqlite", ledger_id="0" * 32) as book:  # exists: its own id stays
        assert book.ledger_id == bench.BENCH_LEDGER_ID
    with pytest.raises(LedgerError, match="32 lowercase hex digits"):
        Ledger(tmp_path / "b.sqlite", ledger_id="not-hex")
    assert not (tmp_path / "b.sqlite").exists()


def test_strengths_give_one_method_per_embedding_strength_and_the_field_s_curves(data_dir, tmp_path):
    film = data_dir / "dicom" / FILMS[1]
    out = tmp_path / "o"
    result = bench.run_bench([film], methods=["leaktrace"], pipelines=["viewer_jpeg_q75", "jpeg_q50"],
                             recipients=1, workers=1, out=out, strengths=[0.5, 1, 2])
    psnr = {m["method"]: m["psnr_display_db_median"] for m in result.methods}
    assert list(psnr) == ["leaktrace", "leaktrace@0.5", "leaktrace@2"]
    # half the strength: ~6 dB more PSNR; twice: ~6 dB less (the mark's RMS scales with it)
    assert 4.5 < psnr["leaktrace@0.5"] - psnr["leaktrace"] < 7.5
    assert 4.5 < psnr["leaktrace"] - psnr["leaktrace@2"] < 7.5
    for name in ("bench_strength.png", "bench_tpr_1e-6.png", "bench_tpr_1e-3.png",
                 "bench_tradeoff.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with open(out / "bench_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"tpr_at_fpr_1e-6", "tpr_at_fpr_1e-3", "controls_at_fpr_1e-3"} <= set(rows[0])
    assert {r["method"] for r in rows} == set(psnr)
    with pytest.raises(bench.BenchError, match=r"must be in \(0, 8\]"):
        bench.strength_methods([0])


def test_cli_bench_refuses_a_strength_that_is_not_a_number(data_dir, tmp_path):
    res = CliRunner().invoke(app, ["bench", "--films", str(data_dir), "--strengths", "0.5,big",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "'big' is not a number" in res.output
