"""One function over many items in worker processes, results in the items' order.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies (the OOM
killer, a segfault in a native library, a ``kill``), every pending future fails with
``BrokenProcessPool``, so one bad checkpoint would fail the batch. Here each worker holds one
item at a time; a worker that dies fails only that item (``on_crash`` says how) and is
replaced, and the batch goes on.

Workers are started from a fork server (a clean process without the parent's threads, such
as the progress bar's) and live for the whole run, so the imports they need are paid once
per worker. They ignore Ctrl-C: the parent stops them, and the per-checkpoint guarantees
(temporaries, locks released by the kernel) make a stopped worker harmless.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """The CPUs this process may run on (a Slurm allocation or ``taskset`` counts, not the
    machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _serve(connection: Connection, function: Callable[[T], R],
           finish: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Stopped mid-item (the parent was interrupted): unwind, so the item's temporaries are
    # removed and its lock released, instead of dying where it stands.
    signal.signal(signal.SIGTERM, _exit_on_term)
    while True:
        task = connection.recv()
        if task is None:
            if finish is not None:
                finish()
            connection.send(None)  # finished: the parent waits for this before stopping us
            return
        index, item = task
        connection.send((index, function(item)))


@dataclass
class _Worker(Generic[T, R]):
    process: BaseProcess
    connection: Connection
    index: int | None = None  # the item it holds


def _stop(worker: _Worker[Any, Any]) -> None:
    worker.index = None
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5)
    worker.connection.close()


def run_ordered(function: Callable[[T], R], items: Sequence[T], jobs: int,
                on_result: Callable[[R], None],
                on_crash: Callable[[T, int | None], R],
                preload: Sequence[str] = (),
                finish: Callable[[], None] | None = None) -> list[R]:
    """``[function(item) for item in items]`` over ``jobs`` worker processes.

    ``function`` must be picklable (a module-level function or a ``functools.partial`` of
    one) and must not raise: it returns its failures as results. ``preload`` names modules
    the fork server imports once for every worker; ``finish`` (picklable) runs in each
    worker after its last item. ``on_result`` sees every
    result in the items' order, as soon as it and all before it are done. A worker that dies
    holding an item gives ``on_crash(item, exitcode)`` as that item's result.
    """
    # The fork server and the resource tracker start as ``python -c``, which puts the current
    # folder first on sys.path: a numpy.py or multiprocessing.py lying there would run.
    # PYTHONSAFEPATH (Python 3.11+) keeps it off; older Pythons convert in this process.
    if sys.version_info < (3, 11):
        return [_in_process(function, item, on_result) for item in items]
    safe_path = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    # typeshed types get_context() as BaseContext, which lacks Process
    context: Any = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    if preload and hasattr(context, "set_forkserver_preload"):
        context.set_forkserver_preload(list(preload))
    pending = deque(range(len(items)))
    results: dict[int, R] = {}
    ordered: list[R] = []
    workers: list[_Worker[T, R]] = []

    def start() -> _Worker[T, R]:
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, function, finish), daemon=True,
                                  name="ckptctl-worker")
        process.start()
        child.close()
        return _Worker(process, parent)

    def settle(index: int, result: R) -> None:
        results[index] = result
        while len(ordered) in results:
            done = results.pop(len(ordered))
            ordered.append(done)
            on_result(done)

    try:
        workers = [start() for _ in range(max(1, min(jobs, len(items))))]
        while len(ordered) < len(items):
            for slot, worker in enumerate(workers):
                if worker.index is None and pending:
                    index = pending.popleft()
                    try:
                        worker.connection.send((index, items[index]))
                    except OSError:  # it died while idle (nothing lost): replace, retry
                        pending.appendleft(index)
                        _stop(worker)
                        workers[slot] = start()
                        continue
                    worker.index = index
            busy = [w for w in workers if w.index is not None]
            wait([w.connection for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                # A result that arrived counts even if the worker died right after sending it.
                if worker.connection.poll(0):
                    try:
                        index, result = worker.connection.recv()
                    except (EOFError, OSError):
                        pass  # it died while sending: a crash, below
                    else:
                        worker.index = None
                        settle(index, result)
                        continue
                if not worker.process.is_alive():
                    worker.process.join(1)
                    held = worker.index
                    assert held is not None
                    workers[workers.index(worker)] = start()
                    _stop(worker)
                    settle(held, on_crash(items[held], worker.process.exitcode))
        return ordered
    finally:
        stopping = []
        for worker in workers:
            if worker.process.is_alive() and worker.index is None:
                with contextlib.suppress(OSError):
                    worker.connection.send(None)
                    stopping.append(worker)
            elif worker.process.is_alive():
                worker.process.terminate()  # interrupted while it held an item
        for worker in stopping:  # let each finish (fsync its folders) before it exits
            with contextlib.suppress(EOFError, OSError):
                if worker.connection.poll(60):
                    worker.connection.recv()
        for worker in workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        if safe_path is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = safe_path


def _in_process(function: Callable[[T], R], item: T, on_result: Callable[[R], None]) -> R:
    result = function(item)
    on_result(result)
    return result
