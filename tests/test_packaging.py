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
