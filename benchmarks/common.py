"""What the benchmark scripts share: where the films are and how a run describes itself.

Both live in :mod:`forensics.bench` (``leaktrace bench`` uses them too); this module keeps
the scripts' imports working.
"""

from __future__ import annotations

from forensics.bench import DATA_ENV, film_data_dir, run_description

__all__ = ["DATA_ENV", "film_data_dir", "run_description"]
