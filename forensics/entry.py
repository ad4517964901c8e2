"""The ``leaktrace`` console script.

It imports the command line (:mod:`forensics.cli`, which loads numpy, SciPy, pydicom and
scikit-image: about half a second) inside the entry point, so that Ctrl-C during that time
ends with a message and exit code 130, not a traceback. Ctrl-C that lands outside a command
(after it printed its result, while it exits) also ends with exit code 130 and one line on
stderr, unless the command already printed its own.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: load :mod:`forensics.cli` and run it."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("leaktrace: interrupted while starting", file=sys.stderr)
        if "--json" in sys.argv[1:]:  # still exactly one JSON object on stdout
            print('{"error": "interrupted while starting", "interrupted": true}')
        raise SystemExit(130) from None
    try:
        run()
    except KeyboardInterrupt:
        from .cli import common

        if not common.interrupt_reported:
            print("leaktrace: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
