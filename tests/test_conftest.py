"""The film folder: a missing one skips film tests locally, but fails them under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci, code, word", [(None, 0, "skipped"), ("true", 1, "error")])
def test_missing_film_folder_skips_locally_and_fails_under_ci(tmp_path, ci, code, word):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["LEAKTRACE_TEST_DATA"] = str(tmp_path / "nowhere")
    if ci:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         str(HERE / "test_export.py::test_failed_export_leaves_no_recipient"),
         str(HERE / "test_export.py::test_min_max_films_keep_their_displayed_range")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stdout + done.stderr
    assert f"test films not found: {tmp_path / 'nowhere' / 'dicom'} does not exist" in done.stdout
    assert "1 passed" in done.stdout and word in done.stdout
