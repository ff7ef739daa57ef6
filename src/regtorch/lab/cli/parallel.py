"""Several studies at once: a pool of worker processes, each with its share of the CPUs.

Small models use two cores poorly from one process (their ops are too short to split), so two
studies side by side finish sooner than one after the other with two threads each. The parent
shows every worker's progress and is otherwise idle, so it does what a finished study still needs
(``on_done``: drawing its report) while the others train.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from rich.console import Console

from regtorch.lab.cli._process import available_cpus, keep_freed_memory
from regtorch.lab.present.console import study_progress
from regtorch.lab.study.spec import DataSpec, Study

__all__ = ["run_in_processes", "work"]

_R = TypeVar("_R")


def run_in_processes(job: Callable[..., _R], jobs: Sequence[tuple], workers: int,
                     labels: Sequence[str], *, costs: Sequence[float], stderr: Console,
                     on_done: Callable[[_R], None] | None = None) -> list[_R]:
    """Run ``job(on_epoch, *args)`` for every ``args`` of ``jobs`` in ``workers`` processes, each
    with its share of the CPUs as torch threads; return the results in the given order (a
    worker's error is raised here).

    Args:
        job: a module-level function (it is pickled); its first argument is the
            ``on_epoch(done, total)`` progress callback.
        jobs: the arguments of each job.
        workers: processes.
        labels: a progress-bar label per job.
        costs: a rough cost per job: the longest start first, so that no worker is left with a
            long job at the end.
        stderr: where the progress bars go.
        on_done: called in this process with each result, as the jobs finish.

    On Ctrl-C the workers are terminated; a worker stopped mid-write removes its temporary file
    (``SIGTERM`` unwinds through :func:`regtorch.lab.atomic.atomic_writer`).
    """
    threads = max(1, available_cpus() // workers)
    # fork: the workers inherit the imported modules (spawn imports torch again in each, ~1.5 s).
    # A forked child may not use an OpenMP pool its parent had started, so fork only workers
    # that run single-threaded; otherwise spawn.
    method = "fork" if sys.platform.startswith("linux") and threads == 1 else "spawn"
    context = multiprocessing.get_context(method)
    updates = context.Queue()
    pool = context.Pool(workers, initializer=_worker_start, initargs=(updates, threads))
    try:
        order = sorted(range(len(jobs)), key=lambda i: -costs[i])
        started = {i: pool.apply_async(_worker_job, (job, i, *jobs[i])) for i in order}
        pending = [started[i] for i in range(len(jobs))]
        done: set[int] = set()
        with study_progress(stderr, labels) as update:
            while len(done) < len(pending):
                _drain(updates, update, timeout=0.1)
                for i, result in enumerate(pending):
                    if i not in done and result.ready():
                        done.add(i)
                        if on_done is not None:
                            on_done(result.get())
            _drain(updates, update, timeout=0.0)
        results = [result.get() for result in pending]
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return results


def work(study: Study) -> float:
    """A rough cost: member-epochs × examples seen per epoch (training + evaluation) × model
    size (inputs times the widest layer, a proxy for the parameter count)."""
    members = sum(len(v.strengths) for v in study.variants) * study.seeds
    data = study.data
    if isinstance(data, DataSpec):
        examples = 1797 if data.kind == "digits" else data.train + data.val + data.test
        inputs = 64 if data.kind == "digits" else data.features
    else:  # the user's data: its size is known once loaded; a middling guess
        examples, inputs = 1000, 64
    widths = [inputs, *study.model.hidden, 10]
    size = sum(a * b for a, b in itertools.pairwise(widths))
    return members * study.train.epochs * examples * size


def _drain(updates: Any, update: Callable[[int, int, int], None], timeout: float) -> None:
    """Apply every progress message waiting in ``updates`` (waiting up to ``timeout`` s)."""
    try:
        message = updates.get(timeout=timeout) if timeout else updates.get_nowait()
        while True:
            update(*message)
            message = updates.get_nowait()
    except queue.Empty:
        return


_UPDATES: Any = None  # in a worker: the queue of (job index, member-epochs done, total)


def _worker_start(updates: Any, threads: int) -> None:
    global _UPDATES
    _UPDATES = updates
    torch.set_num_threads(threads)
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _exit_on_term)


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through atomic_writer: no temporary file left


def _worker_job(job: Callable[..., Any], index: int, *args: Any) -> Any:
    def on_epoch(done: int, total: int) -> None:
        _UPDATES.put((index, done, total))

    return job(on_epoch, *args)
