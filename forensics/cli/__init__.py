"""The ``leaktrace`` command line (typer), one module per user group.

:mod:`~forensics.cli.hospital` (``embed``, ``gateway``, the ledger's administration),
:mod:`~forensics.cli.investigator` (``detect``, ``trace``, ``ledger reidentify``) and
:mod:`~forensics.cli.research` (``bench``, ``demo``) add their commands to the app of
:mod:`~forensics.cli.common`, which every group shares (options, errors, Ctrl-C). Each command parses its options, calls one function of the library, prints, and exits with a
documented code. Human-readable text and progress go to stderr; ``--json`` output goes to
stdout, one JSON object, so it can be piped into ``jq``.

Exit codes
----------
``detect`` and ``trace``: 0 traced (a recipient is named), 1 not found, 2 error (bad file,
bad arguments, key or ledger, not enough memory, or a ``--report`` that could not be
written: the result is still printed, and its JSON then has ``report.error``).
``embed``: 0 every file exported, 1 at least one file failed (the others were still exported)
or no file was found, 2 error before any file (bad arguments, output folder, key or ledger,
among them a key the ledger's exports were not made with, or a missing key file beside a
ledger that holds exports, without ``--new-key``).
``ledger list``: 0, or 2 when the ledger cannot be read. ``ledger verify``: 0 intact, 1 a
problem found (``--expect-head`` not in the chain, and with ``--checkpoint`` a signature that
is absent or does not verify, a ledger shorter than the checkpoint or a different root,
included), 2 the ledger, checkpoint or public key cannot be read. ``ledger checkpoint``: 0
written, 1 the ledger check found problems or the ledger does not extend the last checkpoint
the key signed of it (nothing signed), 2 the ledger, signing key or output cannot be used. ``ledger witness``: 0 cosigned, 1 the checkpoint's signature is absent
or does not verify (nothing written), 2 a file or key cannot be used.
``ledger export``: 0 written and intact, 1 written but the chain check found problems, 2 the
ledger cannot be read or the output cannot be written.
``ledger audit``: 0 written or sent and the access log intact, 1 written or sent but the
access log's chain check found problems, 2 the ledger, output or syslog receiver cannot be
used.

``detect``, ``trace``, ``ledger list``, ``ledger export`` and ``ledger audit`` record who ran
them (``--operator NAME``, else the OS user) in the ledger's access log, after their read-only
query and through a write of its own (:func:`forensics.ledger.log_access`). A ledger the user
may read but not write still answers; one warning line on stderr says the access was not
recorded (with ``--json``: ``"access_recorded": false``).
``demo``: 0 when the demo traced the right recipient, 1 otherwise, 2 for a bad ``--out``.
``gateway``: serves until Ctrl-C or SIGTERM (then 130); 2 when it cannot start (configuration,
key, ledger, address); with ``--check``: 0 every node answered C-ECHO, 1 some did not, 2 a
configuration, key or ledger error.
``bench``: 0 when the run finished (failed queries are recorded in its files), 2 for bad
arguments (unknown method or pipeline, no films, no method that can run, unwritable ``--out``).
Every command: 130 when interrupted (Ctrl-C, at any time, also while starting): one line on
stderr says what was done and what was not (``embed``: how many files were exported and
recorded; ``detect``/``trace``: that nothing was named, and whether a ``--report`` was left
incomplete; ``demo``: its temporary folder is removed).

With ``--json``, ``embed``, ``detect`` and ``trace`` print exactly one JSON object on stdout, also when
they fail before doing anything (it then has an ``error`` field) and when interrupted (it then
has ``error`` and ``"interrupted": true``; ``embed``'s still lists the files exported so far).
"""

from __future__ import annotations

from . import hospital, investigator, research  # noqa: F401  (they add their commands to app)
from .common import app, ledger_app, main, one_line_help

__all__ = ["app", "main"]

one_line_help(app, ledger_app)
