"""The benchmark lab: ``leaktrace bench`` and the peers it compares.

:mod:`~forensics.bench.harness` runs every method on the same films and leaks and writes the
tables and plots; :mod:`~forensics.bench.runners` runs its tasks on a process pool or on Dask,
with a journal for ``--resume``; :mod:`~forensics.bench.peers` wraps the other watermarking
libraries; :mod:`~forensics.bench.plots` draws the figures. The product (export, trace, the
ledger, the gateway) never imports this package.
"""

from .harness import (BENCH_LEDGER_ID, DATA_ENV, FPR, FPRS, METHODS, N_RECIPIENTS, QUICK,
                      BenchError, BenchPipeline, Method, bench_pipelines, film_data_dir,
                      find_films, leak_image, peer_payload, read_manifest, run_bench,
                      run_description, strength_methods)

__all__ = ["BenchError", "BenchPipeline", "Method", "METHODS", "QUICK", "FPR", "N_RECIPIENTS",
           "bench_pipelines", "find_films", "leak_image", "peer_payload", "run_bench",
           "film_data_dir", "run_description", "read_manifest", "DATA_ENV", "BENCH_LEDGER_ID",
           "FPRS", "strength_methods"]
