"""notebooks/walkthrough.ipynb: it runs top to bottom on this environment's python3 kernel
and says the right things, and it is committed with its outputs stripped.

The notebook is executed once per test session with ``nbclient`` in a temporary working
folder; its temporary files, the Jupyter and IPython folders and the default key and ledger
locations all point into pytest's temporary folder, so the run touches nothing of the user's.
It needs no shared film (its film comes from the ``pydicom-data`` package).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"
REPORTED = REPO / "benchmarks" / "reported"
#: Seconds one cell may take, and the kernel to start: generous limits against a hung kernel
#: on a loaded machine, not speed targets.
CELL_TIMEOUT = 600
STARTUP_TIMEOUT = 180
THRESHOLD = 1e-6


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> dict[str, Path]:
    """Point every folder the kernel could write to into ``root``; returns the default key and
    ledger paths, which the notebook must never create."""
    for var, sub in (("TMPDIR", "tmp"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
                     ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("IPYTHONDIR", "ipython"),
                     ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(root / sub))
    defaults = {"key": root / "default-site.key", "ledger": root / "default-ledger.sqlite"}
    mp.setenv("LEAKTRACE_KEY", str(defaults["key"]))
    mp.setenv("LEAKTRACE_LEDGER", str(defaults["ledger"]))
    return defaults


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The executed notebook (cells by id), its sandbox root and the default key/ledger paths."""
    root = tmp_path_factory.mktemp("walkthrough")
    workdir = root / "cwd"
    workdir.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        defaults = _isolate(mp, root)
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,
                                kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}})
        client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    return {"cells": {c.id: c for c in nb.cells}, "root": root, "defaults": defaults, "nb": nb}


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def _field(text: str, name: str) -> str:
    found = re.findall(rf"^{re.escape(name)}: (.*)$", text, flags=re.M)
    assert len(found) == 1, f"expected one '{name}:' line in:\n{text}"
    return found[0]


def _pngs(cell) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
            for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]


def _recipients(run) -> dict[int, str]:
    lines = re.findall(r"^recipient (\d+): '(.+)' -> ", _stdout(run["cells"]["export"]), flags=re.M)
    return {int(n): name for n, name in lines}


def test_every_cell_ran_without_error(run):
    code = [c for c in run["nb"].cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    errors = [(c.id, o.get("ename"), o.get("evalue")) for c in code for o in c.outputs
              if o.output_type == "error"]
    assert errors == []


def test_three_recipients_are_marked(run):
    recipients = _recipients(run)
    assert sorted(recipients) == [1, 2, 3]
    assert len(set(recipients.values())) == 3
    psnr = float(re.search(r"display PSNR of .*: ([\d.]+) dB", _stdout(run["cells"]["visibility"]))[1])
    assert 40 < psnr < 60  # invisible, but the copy does differ from the original


def test_blind_and_informed_detection_name_the_leaker(run):
    cells = run["cells"]
    leaker = _field(_stdout(cells["leak"]), "leaked copy")
    assert leaker in _recipients(run).values()

    blind = _stdout(cells["detect"])
    assert _field(blind, "recipient") == leaker
    assert float(_field(blind, "p-value")) <= THRESHOLD
    assert _field(blind, "mode") == "blind"

    traced = _stdout(cells["trace"])
    assert _field(traced, "recipient") == leaker
    assert float(_field(traced, "p-value")) <= THRESHOLD
    # a screenshot shows UI around the film: the blind search runs beside the informed test
    assert _field(traced, "mode") == "informed+blind"
    alignment = _field(traced, "alignment")
    scale = float(re.search(r"scale ([\d.]+) film px per leak px", alignment)[1])
    # the 1841 x 1955 film fills about 600 px of height in the 1280 x 720 screenshot
    assert 2.5 < scale < 4.0
    assert "mirrored False, inverted False" in alignment
    assert _field(traced, "original found") == "RG1_UNCR.dcm"
    candidates = re.findall(r"^\s+'(.+?)'\s+score\s+(-?[\d.]+)\s+p-value\s+(\S+)$", traced, flags=re.M)
    assert sorted(name for name, _, _ in candidates) == sorted(_recipients(run).values())
    for name, _, p in candidates:
        assert (float(p) <= THRESHOLD) == (name == leaker), (name, p)


def test_the_evidence_report_is_written_and_shown(run):
    cells = run["cells"]
    leaker = _field(_stdout(cells["leak"]), "leaked copy")
    out = _stdout(cells["report"])
    html_path, json_path = Path(_field(out, "report")), Path(_field(out, "evidence"))
    assert html_path.is_relative_to(run["root"] / "tmp")  # in the notebook's temporary folder
    evidence = json.loads(json_path.read_text())
    assert evidence["recipient"] == leaker
    assert evidence["decision"] == "traced"
    assert evidence["mode"] == "informed+blind"
    assert evidence["ledger_check"]["ok"] is True
    assert evidence["report_metadata"]["html_sha256"] == hashlib.sha256(html_path.read_bytes()).hexdigest()
    assert "alignment" in evidence["report_metadata"]["figures"]
    shown = [o.data["text/html"] for o in cells["show-report"].outputs
             if o.output_type == "display_data" and "text/html" in o.data]
    assert len(shown) == 1 and "<iframe srcdoc=" in shown[0]
    assert leaker in shown[0]


def test_figures_are_drawn(run):
    for cell_id in ("visibility", "show-leak", "benchmark"):
        images = _pngs(run["cells"][cell_id])
        assert len(images) == 1, cell_id
        assert min(images[0].size) > 200, (cell_id, images[0].size)


def test_benchmark_cell_reads_the_committed_results(run):
    with open(REPORTED / "robustness_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = _stdout(run["cells"]["benchmark"])
    line = _field(out, "blind")
    assert line.startswith(f"{len(rows)} pipelines, {sum(int(r['queries']) for r in rows)} leaks, "
                           f"{sum(int(r['wrong']) for r in rows)} named the wrong recipient")
    informed = _field(out, "informed")
    if (REPORTED / "trace" / "trace_summary.json").is_file():
        assert "pipelines from" in informed
    else:
        assert informed == "no reported trace run in this checkout"


def test_the_user_key_and_ledger_are_never_touched(run):
    assert not run["defaults"]["key"].exists()
    assert not run["defaults"]["ledger"].exists()
    work = Path(_field(_stdout(run["cells"]["sandbox"]), "working folder"))
    assert work.parent == run["root"] / "tmp"
    assert (work / "site.key").stat().st_mode & 0o077 == 0
    assert (work / "ledger.sqlite").is_file()
    # the notebook writes nothing into the working directory it is run from
    assert list((run["root"] / "cwd").iterdir()) == []


def test_committed_notebook_is_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    assert nb.metadata["kernelspec"]["name"] == "python3"
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids))
    for cell in nb.cells:
        assert set(cell.metadata) <= {"tags"}, (cell.id, dict(cell.metadata))
        if cell.cell_type == "code":
            assert cell.outputs == [], cell.id
            assert cell.execution_count is None, cell.id


def test_python3_kernel_is_this_environment(tmp_path, monkeypatch):
    """``pip install -e '.[test]'`` gives a python3 kernelspec that runs this interpreter."""
    _isolate(monkeypatch, tmp_path)
    spec = KernelSpecManager().get_kernel_spec("python3")
    # jupyter_client runs a spec whose argv[0] is "python"/"python3"/"python3.X" with the
    # interpreter that starts it (sys.executable), i.e. this environment's
    version = sys.version_info
    generic = {"python", f"python{version[0]}", f"python{version[0]}.{version[1]}"}
    assert spec.argv[0] in generic or Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()
    assert spec.argv[1:3] == ["-m", "ipykernel_launcher"]
