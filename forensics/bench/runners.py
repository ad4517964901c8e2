"""Where a benchmark's tasks run, and what a run keeps so that it can be resumed.

:mod:`forensics.bench` decides *what* to run (tasks: one film, one method, one recipient or
the unmarked control, every leak pipeline); this module decides *where*:

* :func:`execute` with ``scheduler=None`` runs the tasks in this process (``workers=1``) or in a
  pool of local processes (:class:`concurrent.futures.ProcessPoolExecutor`);
* with ``scheduler="local"`` it starts a Dask ``LocalCluster`` of ``workers`` single-threaded
  worker processes on this machine, and with ``scheduler="tcp://host:8786"`` it submits to an
  existing Dask cluster (``dask.distributed``, the ``dask`` extra). A worker that dies has its
  task run again on another worker (Dask's ``distributed.scheduler.allowed-failures``, 3 by
  default); a task that kills its worker every time comes back as :class:`TaskLost`, which
  the benchmark records as failed queries.

Every runner yields ``(index, result)`` pairs as tasks finish, in any order; the benchmark
sorts its rows afterwards, so the files do not depend on the runner.

:class:`Journal` is the ``--resume`` record: one JSON line per finished task in
``bench_journal.jsonl`` beside the results, written and flushed as each task finishes, after a
first line that fixes the run's plan (films, methods, pipelines, recipients, ledger id). A run
started again with ``--resume`` reads it and runs only the tasks it does not hold.

Dask's worker defaults that slow NumPy-heavy tasks (see :func:`_tune_dask`) are changed for
the clusters this module starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from watermark.errors import LeaktraceError

__all__ = ["LOCAL", "Journal", "TaskLost", "execute", "task_id"]

LOCAL = "local"
"""``--scheduler local``: start a Dask LocalCluster on this machine."""
JOURNAL_NAME = "bench_journal.jsonl"
_JOURNAL_FORMAT = 1
_CONNECT_TIMEOUT_S = 30


class RunnerError(LeaktraceError):
    """The scheduler cannot be reached, Dask is not installed, or a journal cannot be used."""


class TaskLost:
    """A task that did not come back: its worker died every time it ran it (Dask's
    ``KilledWorker``), or the cluster failed it. ``message`` says what happened."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self) -> str:
        return f"TaskLost({self.message!r})"


def task_id(*parts) -> str:
    """A stable id for a task from its defining parts (film path, method, recipient,
    pipeline names): 20 hex digits of SHA-256 over their JSON."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# -- runners -------------------------------------------------------------------------------

def execute(fn: Callable, tasks: Sequence, *, workers: int, scheduler: str | None = None,
            keys: Sequence[str] | None = None) -> Iterator[tuple[int, object]]:
    """Run ``fn(task)`` for every task; yield ``(index into tasks, result)`` as each finishes.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled to the worker processes).
    tasks : sequence
        Picklable task objects, already in the order they should start (largest first).
    workers : int
        Processes (``scheduler=None``: 1 runs in this process), or the LocalCluster's worker
        processes (``scheduler="local"``); not used with a scheduler address (the cluster has
        its own workers).
    scheduler : str, optional
        ``None`` (process pool), ``"local"``, or a Dask scheduler address
        (``tcp://host:8786``; ``host:8786`` is taken as TCP).
    keys : sequence of str, optional
        One unique name per task (the Dask task keys); default: the task indices.

    Yields
    ------
    (int, object)
        The task's index and ``fn``'s return value, or a :class:`TaskLost`.

    Closing the generator (the caller stopped, or Ctrl-C reached it) stops the work: the pool's
    workers are terminated, or the cluster's tasks cancelled and a LocalCluster shut down.

    Raises
    ------
    RunnerError
        Dask is not installed, or the scheduler cannot be reached within 30 s.
    """
    if scheduler:
        yield from _dask_runs(fn, tasks, workers, scheduler, keys)
    elif workers == 1:
        for i, task in enumerate(tasks):
            yield i, fn(task)
    else:
        yield from _pool_runs(fn, tasks, workers)


def _pool_runs(fn, tasks, workers):
    # peers are imported before any process exists (blind_watermark fixes the start method
    # when imported); the forked workers inherit them
    pool = ProcessPoolExecutor(workers, initializer=_worker_init)
    try:
        futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
        for f in as_completed(futures):
            yield futures[f], f.result()
    except BaseException:  # Ctrl-C, SIGTERM turned into it, or the caller stopped early
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _worker_init() -> None:
    """In a worker: Ctrl-C (sent to the whole process group) is left to the parent, which
    stops the workers; SIGTERM ends the worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: tasks not started are cancelled, running workers terminated."""
    # the executor's own process table (Python 3.14 has pool.terminate_workers() for this)
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
    pool.shutdown(wait=True)


def _import_dask():
    try:
        import dask
        import distributed
    except ImportError:
        raise RunnerError("--scheduler needs Dask's distributed scheduler: "
                          "pip install 'leaktrace[dask]'") from None
    return dask, distributed


def _tune_dask(dask) -> None:
    """Dask worker settings for NumPy-heavy tasks, for the clusters started here.

    * ``MALLOC_TRIM_THRESHOLD_``: the nanny sets 65536 in every worker's environment
      (``distributed.nanny.pre-spawn-environ``), which also switches off glibc's dynamic mmap
      threshold (mallopt(3)). Left unset, the workers allocate as the process pool's do
      (measured by ``benchmarks/bench_scaling.py``: no difference visible on the benchmark's
      tasks). It has to be removed from the config after ``distributed`` is imported
      (dask/distributed#8143).
    * ``OMP_NUM_THREADS`` and the BLAS thread counts stay 1, as Dask sets them: one task per
      worker process, one process per core.
    * Work stealing and ``distributed.scheduler.allowed-failures`` (3) stay as configured;
      tasks are whole (film, method, recipient) units of seconds to minutes, so the
      scheduler's overhead per task is negligible.

    A cluster started elsewhere (``dask worker``) has its own settings: start its workers with
    ``--nthreads 1`` and without ``MALLOC_TRIM_THRESHOLD_`` (docs/researcher/benchmarks.md).
    """
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default=None)
    if isinstance(environ, dict):  # the config's own dict: removing the key is what counts
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)


def _dask_runs(fn, tasks, workers, scheduler, keys):
    dask, distributed = _import_dask()
    _tune_dask(dask)
    address = scheduler if scheduler == LOCAL or "://" in scheduler else f"tcp://{scheduler}"
    cluster = client = None
    futures = {}
    try:
        try:
            if address == LOCAL:
                cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.ERROR)
                client = distributed.Client(cluster)
            else:
                client = distributed.Client(address, timeout=_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise RunnerError(f"--scheduler {scheduler}: cannot reach the Dask scheduler "
                              f"({exc})") from None
        names = list(keys) if keys is not None else [str(i) for i in range(len(tasks))]
        for i, (task, name) in enumerate(zip(tasks, names)):
            future = client.submit(fn, task, key=f"leaktrace-bench-{name}", retries=2,
                                   priority=len(tasks) - i)
            futures[future] = i
        for future in distributed.as_completed(list(futures)):
            i = futures[future]
            try:
                yield i, future.result()
            except distributed.KilledWorker as exc:
                yield i, TaskLost(f"its worker died every time it ran this task ({exc})")
            except Exception as exc:  # noqa: BLE001 - the task failed on the cluster
                yield i, TaskLost(f"{type(exc).__name__}: {exc}")
            future.release()
    finally:
        if client is not None:
            if futures:
                client.cancel(list(futures))
            client.close()
        if cluster is not None:
            cluster.close()


# -- the journal ---------------------------------------------------------------------------

class Journal:
    """The record of a run's finished tasks, for ``--resume`` (``OUT/bench_journal.jsonl``).

    Parameters
    ----------
    folder : Path
        The run's output folder.
    plan : dict
        What fixes the run's results (JSON-able): films, methods, pipelines, recipients,
        ledger id, leaktrace version. A journal of another plan is not resumed.
    resume : bool
        Read the finished tasks of an earlier run with this plan (:attr:`done`); otherwise
        an earlier journal is removed.

    Attributes
    ----------
    done : dict of str to object
        Task id -> the result recorded for it (empty when not resuming).
    resumed : bool
        An earlier run's journal with this plan was found (and its prepared ledger may be
        used as it is).

    Raises
    ------
    RunnerError
        ``resume`` and the journal in ``folder`` is of another plan, or cannot be read.
    """

    def __init__(self, folder: Path, plan: dict, *, resume: bool):
        self.path = Path(folder) / JOURNAL_NAME
        self.plan = json.loads(json.dumps(plan, default=str))
        self.done: dict = {}
        self.resumed = False
        self._fh = None
        if resume and self.path.exists():
            self._read()
        elif not resume:
            self.path.unlink(missing_ok=True)

    def _read(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RunnerError(f"--resume: cannot read {self.path} ({exc})") from None
        header = None
        for n, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) - 1:
                    break  # the last line of a run killed while writing it
                raise RunnerError(f"--resume: {self.path} line {n + 1} is not JSON") from None
            if n == 0:
                header = entry
                if header.get("journal") != _JOURNAL_FORMAT or "plan" not in header:
                    raise RunnerError(f"--resume: {self.path} is not a leaktrace bench journal")
                if header["plan"] != self.plan:
                    changed = sorted(k for k in set(header["plan"]) | set(self.plan)
                                     if header["plan"].get(k) != self.plan.get(k))
                    raise RunnerError(
                        f"--resume: the earlier run in {self.path.parent} had other settings "
                        f"({', '.join(changed)} differ); run without --resume to start over")
                continue
            self.done[entry["task"]] = entry["result"]
        self.resumed = header is not None

    def open(self) -> None:
        """Start recording (after the run's set-up, so that a journal exists only for a run
        whose ledger is complete); resuming appends to the earlier journal."""
        try:
            if not self.resumed:
                tmp = self.path.with_name(f".{self.path.name}.tmp")
                tmp.write_text(json.dumps({"journal": _JOURNAL_FORMAT, "plan": self.plan}) + "\n")
                os.replace(tmp, self.path)
            self._fh = open(self.path, "a")
        except OSError as exc:
            raise RunnerError(f"cannot write {self.path} ({exc.strerror or exc})") from None

    def record(self, task: str, result) -> None:
        """Append one finished task (flushed to disk before returning)."""
        self._fh.write(json.dumps({"task": task, "result": result}) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
