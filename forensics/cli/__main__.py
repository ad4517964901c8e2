"""``python -m forensics.cli``: the ``leaktrace`` command line."""

import sys

from . import main

sys.exit(main())
