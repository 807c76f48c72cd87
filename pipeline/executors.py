"""Where shard tasks run: inline, local worker processes, or dask.distributed (a LocalCluster or a scheduler)."""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

from .config import ExecutionParams

log = logging.getLogger(__name__)


class ExecutorError(RuntimeError):
    """The execution backend itself failed (e.g. an unreachable scheduler)."""


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent dies, so no orphan writes without the store lock."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _init_worker(threads: int, parent: int) -> None:
    import signal

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent decides (cancel what has not started, let running
    # shards commit); a worker interrupted mid-shard would only leave a temporary behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # set before any numeric library loads in this fresh process, so workers do not oversubscribe cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, threads)))


class Executor:
    """Runs shard tasks; keeps its process pool or dask client alive across the stages of one run."""

    def __init__(self) -> None:
        self._pools: dict[int, ProcessPoolExecutor] = {}
        self._clients: dict[tuple[str | None, int], Any] = {}
        self._clusters: list[Any] = []

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Shut down every pool, client and cluster this executor started."""
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients.values():
            client.close()
        for cluster in self._clusters:
            cluster.close()
        self._pools, self._clients, self._clusters = {}, {}, []

    def run(self, fn: Callable[..., Any], tasks: Sequence[Any], execution: ExecutionParams,
            on_result: Callable[[Any], None]) -> None:
        """Run `fn(task)` for every task, calling `on_result` in this process as each one finishes. In this
        process, one task after another, `fn(task, following)` learns the task that comes next (to start
        its input while this one computes)."""
        if not tasks:
            return
        if execution.executor == "dask" or execution.scheduler:
            self._run_dask(fn, tasks, execution, on_result)
        elif execution.workers <= 1 or len(tasks) == 1:
            for t, following in zip(tasks, [*tasks[1:], None]):
                on_result(fn(t, following))
        else:
            self._run_processes(fn, tasks, execution, on_result)

    def _run_processes(self, fn: Callable[[Any], Any], tasks: Sequence[Any], execution: ExecutionParams,
                       on_result: Callable[[Any], None]) -> None:
        n = execution.workers
        if n not in self._pools:
            threads = max(1, (multiprocessing.cpu_count() or 1) // n)
            self._pools[n] = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(threads, os.getpid()))
        pending = {self._pools[n].submit(fn, t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)  # progress per finished shard
                failed = [fut for fut in done if fut.exception() is not None]
                for fut in done:
                    if fut.exception() is None:
                        on_result(fut.result())  # every shard that committed counts, even beside a failure
                if failed:
                    failed[0].result()  # re-raises the worker's exception here
        finally:
            # on error or interrupt: drop what has not started, and let running shards finish (they
            # commit or leave only temporaries) before the caller releases the store lock
            for fut in pending:
                fut.cancel()
            wait(pending)
            for fut in pending:  # shards that committed meanwhile still count
                if not fut.cancelled() and fut.exception() is None:
                    on_result(fut.result())

    def _run_dask(self, fn: Callable[[Any], Any], tasks: Sequence[Any], execution: ExecutionParams,
                  on_result: Callable[[Any], None]) -> None:
        from dask.distributed import Client, LocalCluster, as_completed

        key = (execution.scheduler, max(1, execution.workers))
        if key not in self._clients:
            if execution.scheduler:
                log.info("connecting to dask scheduler %s", execution.scheduler)
                try:
                    self._clients[key] = Client(execution.scheduler, timeout="10s")
                except OSError as e:
                    raise ExecutorError(f"cannot reach the dask scheduler at {execution.scheduler} ({e}); "
                                        "start one with `dask scheduler` or drop --scheduler") from None
            else:
                cluster = LocalCluster(n_workers=key[1], threads_per_worker=1, processes=True,
                                       dashboard_address=None)
                self._clusters.append(cluster)
                self._clients[key] = Client(cluster)
        client = self._clients[key]
        futures = client.map(fn, tasks, pure=False)
        reported: set[str] = set()
        finished = False
        try:
            for fut in as_completed(futures):
                on_result(fut.result())
                reported.add(fut.key)
            finished = True
        finally:
            if not finished:
                from dask.distributed import wait as dask_wait

                client.cancel([f for f in futures if f.status == "pending"])
                dask_wait(futures)  # running shards finish before the store lock is released
                for f in futures:  # shards that committed meanwhile still count
                    if f.status == "finished" and f.key not in reported:
                        on_result(f.result())
