"""Throughput of the export ledger with 1 and 8 writer processes, on SQLite and PostgreSQL.

Each writer records ``--exports`` exports through :meth:`forensics.ledger.Ledger.record_export`
with a cheap ``write_output`` (a 1-byte file, no marking), so the figure is the ledger's own
cost per record: one write transaction holding the ledger's lock (SQLite ``BEGIN
IMMEDIATE``, PostgreSQL the site's advisory lock), the chain head read, the row inserted and
committed. All writers start together; the time runs from the start to the last commit.
After each run the chain is checked (``Ledger.check``) and the records counted: a run with a
lost record or a broken chain is reported as such.

PostgreSQL: the server given with ``--postgresql URL`` (a new site per run is made in it),
else a temporary one started for the run from Debian's ``postgresql`` package with
``tests/pgserver.py`` (``fsync=off``: the figures are then an upper bound for a real server,
whose commits wait for the disk; SQLite's are measured with its default ``synchronous=FULL``
on the disk of ``--dir``).

Writes ``ledger_concurrency.json`` to ``--out`` and prints one line per run.

Usage::

    python benchmarks/ledger_concurrency.py [--exports N] [--writers 1,8]
        [--postgresql URL] [--dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_description  # noqa: E402

from forensics.ledger import Ledger  # noqa: E402


def _writer(location, tag: str, folder: str, n: int, start, done) -> None:
    with Ledger(location) as book:
        start.wait()
        for i in range(n):
            out = Path(folder) / f"{tag}-{i}"

            def write(number, out=out, i=i):
                out.write_bytes(b"x")
                return {"output_path": str(out), "output_sop_uid": f"2.25.{number}.{i}",
                        "output_sha256": "0" * 64, "payload": f"{number:08x}"}

            book.record_export(write, recipient=tag, source_sop_uid="1.2.3",
                               source_path="/src.dcm", source_sha256="cd" * 32,
                               key_fingerprint="f" * 16)
    done.put(time.perf_counter())


def run(location, writers: int, exports: int, folder: Path) -> dict:
    """One run: ``writers`` processes x ``exports`` records into a new ledger at ``location``."""
    Ledger(location).close()
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(location, f"w{k}", str(folder), exports, start,
                                               done)) for k in range(writers)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    ends = [done.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    seconds = max(ends) - t0
    with Ledger(location, create=False) as book:
        check = book.check()
    expected = writers * exports
    return {"writers": writers, "exports_each": exports, "records": check.n_records,
            "lost": expected - check.n_records, "chain_ok": check.ok,
            "seconds": round(seconds, 3), "records_per_s": round(expected / seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exports", type=int, default=100, help="exports per writer (100)")
    ap.add_argument("--writers", default="1,8", help="writer counts to run (1,8)")
    ap.add_argument("--postgresql", metavar="URL", help="a PostgreSQL server to use; default: "
                    "a temporary one (tests/pgserver.py)")
    ap.add_argument("--dir", type=Path, help="folder for the SQLite ledgers and output files")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/reported"))
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.writers.split(",")]
    server = None
    if args.postgresql is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from pgserver import PostgresServer, server_bin_dir

        bin_dir = server_bin_dir()
        if bin_dir is None:
            print("no PostgreSQL server programs (Debian package postgresql); give --postgresql",
                  file=sys.stderr)
            return 2
        server = PostgresServer(bin_dir)
        server.start()
        base = server.url
    else:
        base = args.postgresql.split("?")[0]
    results = []
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            for backend in ("sqlite", "postgresql"):
                for writers in counts:
                    folder = Path(tmp) / f"{backend}-{writers}"
                    folder.mkdir()
                    location = (folder / "ledger.sqlite" if backend == "sqlite"
                                else f"{base}?site=bench_{secrets.token_hex(4)}")
                    row = {"backend": backend, **run(location, writers, args.exports, folder)}
                    results.append(row)
                    print(f"{backend:10s} {writers} writer(s) x {args.exports}: "
                          f"{row['records_per_s']:8.1f} records/s ({row['records']} records, "
                          f"{row['lost']} lost, chain {'ok' if row['chain_ok'] else 'BROKEN'})")
    finally:
        if server is not None:
            server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {**run_description(postgresql=("temporary server, fsync=off" if server is not None
                                         else "given server")), "runs": results}
    (args.out / "ledger_concurrency.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(r["lost"] == 0 and r["chain_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
