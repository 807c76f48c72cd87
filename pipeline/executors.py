"""Where shard tasks run: inline, local worker processes, or dask.distributed (a LocalCluster or a scheduler)."""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

from .config import ExecutionParams

log = logging.getLogger(__name__)


def _init_worker(threads: int) -> None:
    # set before any numeric library loads in this fresh process, so workers do not oversubscribe cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, threads)))


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], execution: ExecutionParams,
              on_result: Callable[[Any], None]) -> None:
    """Run `fn(task)` for every task, calling `on_result` in this process as each one finishes."""
    if not tasks:
        return
    if execution.executor == "dask" or execution.scheduler:
        _run_dask(fn, tasks, execution, on_result)
    elif execution.workers <= 1 or len(tasks) == 1:
        for t in tasks:
            on_result(fn(t))
    else:
        _run_processes(fn, tasks, execution, on_result)


def _run_processes(fn: Callable[[Any], Any], tasks: Sequence[Any], execution: ExecutionParams,
                   on_result: Callable[[Any], None]) -> None:
    n = min(execution.workers, len(tasks))
    threads = max(1, (multiprocessing.cpu_count() or 1) // n)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        pending = {pool.submit(fn, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                on_result(fut.result())  # re-raises a worker's exception here
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(fn: Callable[[Any], Any], tasks: Sequence[Any], execution: ExecutionParams,
              on_result: Callable[[Any], None]) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if execution.scheduler:
        log.info("connecting to dask scheduler %s", execution.scheduler)
        client = Client(execution.scheduler)
    else:
        cluster = LocalCluster(n_workers=max(1, execution.workers), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(fn, tasks, pure=False)
        for fut in as_completed(futures):
            on_result(fut.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
