"""What the benchmark scripts share: where the films are and how a run describes itself."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

DATA_ENV = "LEAKTRACE_TEST_DATA"


def film_data_dir() -> Path:
    """The shared film folder: ``$LEAKTRACE_TEST_DATA``, else ``<repo>/../shared/data/cxr``
    (the same rule as the tests' ``conftest.film_data_dir``)."""
    base = os.environ.get(DATA_ENV)
    return Path(base) if base else Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"


def run_description(**extra) -> dict:
    """The command line and the machine, recorded with every benchmark's numbers."""
    return {"command": " ".join([Path(sys.executable).name] + sys.argv),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version(), "cpus": os.cpu_count(), **extra}}
