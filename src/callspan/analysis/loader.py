"""Reading all inputs into one ``Model``, in parallel worker processes for big inputs.

Each task (a byte range of a big JSON-lines file, or a whole file) becomes one ``Batch`` in a
worker; batches come back in task order (deterministic results) and are merged. Parsing JSON is
what costs (the standard library's ``json`` at ~100 MB/s per core), so big inputs use one
worker per core; small ones are read in this process.
"""

from __future__ import annotations

import collections
import gc
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from callspan.analysis.model import Batch, Model
from callspan.analysis.progress import Progress
from callspan.analysis.readers import (
    CHUNK_BYTES,
    MAX_LINE_BYTES,
    Task,
    expand_inputs,
    plan,
    read_bytes,
    run_task,
)

PARALLEL_MIN_BYTES = 24 << 20
WINDOW = 3  # tasks in flight per worker process


class _Windowed:
    """Results of ``func`` over ``items`` in a pool, in order, with a bounded number in flight."""

    def __init__(self, pool: Any, func: Callable[[Any], Any], items: Iterator[Any], window: int) -> None:
        self._pool = pool
        self._func = func
        self._items = items
        self._pending: collections.deque[Any] = collections.deque()
        for _ in range(window):
            if not self._submit():
                break

    def _submit(self) -> bool:
        for item in self._items:
            self._pending.append(self._pool.apply_async(self._func, (item,)))
            return True
        return False

    def __iter__(self) -> _Windowed:
        return self

    def __next__(self) -> Any:
        if not self._pending:
            raise StopIteration
        result = self._pending.popleft()
        self._submit()
        return result.get()


@dataclass(slots=True)
class LoadOptions:
    want_calls: bool = True
    want_rows: bool = True
    slow_keep: int = 0
    jobs: int = 0  # 0 = automatic
    chunk_bytes: int = CHUNK_BYTES
    max_line: int = MAX_LINE_BYTES
    memory_budget: int = 0  # bytes of per-call/per-span arrays kept in memory; beyond, spilled (0: never)
    spill_dir: str | None = None


def new_model(options: LoadOptions) -> Model:
    return Model(options.want_calls, options.want_rows, options.slow_keep, options.memory_budget, options.spill_dir)


def _work(job: tuple[Task, bool, bool, int, int]) -> Batch:
    task, want_calls, want_rows, slow_keep, max_line = job
    batch = run_task(task, Batch(want_calls, want_rows, slow_keep), max_line)
    batch.resolve_links()  # here, in the worker, rather than in the merging process
    return batch


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Decoded JSON has no reference cycles; the cyclic GC only re-scans the growing heap of
    # parsed objects (it halves json.loads throughput on big lines).
    gc.disable()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Workers:
    """A pool of worker processes (or none: ``imap`` is then the builtin ``map``)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self._pool: Any = None
        if self.jobs > 1:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._pool = multiprocessing.get_context(method).Pool(self.jobs, initializer=_worker_init)

    def imap(self, func: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``map`` in the workers, results in order; starts right away, runs ahead through all
        ``items`` (for small results: the analyses')."""
        if self._pool is None:
            return map(func, items)
        return iter(self._pool.imap(func, items, chunksize=1))

    def imap_windowed(self, func: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Like ``imap``, with at most ``WINDOW`` items per worker in flight, so that big results
        the caller has not taken yet (batches read from the input) stay few."""
        if self._pool is None:
            return map(func, items)
        return _Windowed(self._pool, func, iter(items), self.jobs * WINDOW)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auto_jobs(paths: list[str], requested: int) -> int:
    """Worker processes for reading ``paths``: ``requested``, or one per CPU for big inputs."""
    if requested > 0:
        return requested
    total = 0
    for path in paths:
        try:
            if os.path.isdir(path):
                total += sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
            else:
                total += os.path.getsize(path)
        except OSError:
            pass
    return 1 if total < PARALLEL_MIN_BYTES else min(cpu_count(), 8)


def load_files(paths: list[str], options: LoadOptions, model: Model | None = None,
               progress: Progress | None = None, workers: Workers | None = None) -> Model:
    """Read every input file (and directory) named in ``paths`` into ``model``."""
    model = model if model is not None else new_model(options)
    sources = expand_inputs(paths)
    model.sources.extend(s.path for s in sources)
    tasks = plan(sources, options.chunk_bytes, options.max_line)
    total = sum(s.size for s in sources)
    done = 0
    if progress is not None:
        progress.total = total
    gc_was_enabled = gc.isenabled()
    gc.disable()
    jobs = [(t, options.want_calls, options.want_rows, options.slow_keep, options.max_line) for t in tasks]
    owned = workers is None
    if workers is None:
        workers = Workers(1 if len(tasks) < 2 else auto_jobs(paths, options.jobs))
    try:
        for task, batch in zip(tasks, workers.imap_windowed(_work, jobs), strict=True):
            model.merge(batch)
            done += task[3] - task[2]
            if progress is not None:
                progress.update(done, model.spans)
    finally:
        if owned:
            workers.close()
        if gc_was_enabled:
            gc.enable()
    return model


def load_bytes(model: Model, data: bytes, name: str) -> Model:
    """Fold a fetched response body (Jaeger) into ``model``."""
    batch = model.new_batch()
    read_bytes(batch, data, name)
    model.sources.append(name)
    model.merge(batch)
    return model
