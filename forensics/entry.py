"""The ``leaktrace`` console script.

It imports the command line (:mod:`forensics.cli`, which loads numpy, SciPy, pydicom and
scikit-image: about half a second) inside the entry point, so that Ctrl-C during that time
ends with a message and exit code 130, not a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: load :mod:`forensics.cli` and run it."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("leaktrace: interrupted while starting", file=sys.stderr)
        raise SystemExit(130) from None
    run()
