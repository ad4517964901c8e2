"""The package list of pyproject.toml: a built wheel must hold every subpackage that an editable
install (which imports from the source tree) finds, or a hospital's ``pip install leaktrace``
fails where the tests pass."""

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_takes_every_subpackage_of_the_source_tree():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = config["packages"]["find"]["include"]
    taken = set(find_packages(str(ROOT), include=include))
    in_tree = {str(p.parent.relative_to(ROOT)).replace("/", ".")
               for top in ("watermark", "forensics") for p in (ROOT / top).rglob("__init__.py")}
    assert "forensics.gateway" in in_tree
    assert in_tree <= taken, sorted(in_tree - taken)
    assert not {name for name in taken if name.split(".")[0] in {"tests", "benchmarks", "docs"}}


def test_the_built_wheel_holds_the_licence_and_every_subpackage(tmp_path):
    """Built as pip builds it (PEP 517, offline: no build isolation), from a copy of the
    source tree so that no build folder is left in it."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for top in ("watermark", "forensics"):
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("leaktrace-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = zf.read(licence).decode()
    assert text.startswith("MIT License") and text == (ROOT / "LICENSE").read_text()
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert "forensics/gateway/__init__.py" in names and "watermark/__init__.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
